"""Study configurations: TOML in, a validated :class:`StudyConfig` out.

Every key is checked before any work starts; a wrong key, type or value raises ``ValueError`` naming the
file, the key and the rule. The layout (all sections optional except ``[grid]``)::

    seed = 0                                   # root seed of the study

    [grid]
    ns = [500, 1000, 2000]                     # sample sizes, integers >= 1
    replicates = 8                             # R >= 2
    # block = 20                               # replicates fitted per task: a cell of many replicates at a
                                               # large n is fitted, written and resumed in blocks of this many
    problems = ["shared-linear", "non-shared"] # preset names or names of [problems.*] tables
    specifications = ["exact", "over"]         # L' = L, or L' = L + extra_prompts; or per problem:
    # specifications = { non-shared = ["over"], shared-linear = ["exact", "over"] }
    extra_prompts = 1                          # L' - L; or per problem: { non-shared = 2 } (the others 1)

    [fit]                                      # the fields of moe_estimation.FitSettings
    max_steps = 400
    ftol = 1e-8
    restarts = 4                               # without [schedules]: the one starting-point schedule,
    init = "near-truth"                        # named "default" in the tables
    init_scale = 0.5
    init_rate = 0.25
    # batching = "auto"; blocking = "auto"; block_rows = 2048   (how the solver runs; see FitSettings)

    [schedules.shrinking]                      # or several starting-point schedules, each run on every
    init = "near-truth"                        # (problem, specification, n) cell with the same data
    init_scale = 0.5                           # near-truth: noise init_scale * n^(-init_rate)
    init_rate = 0.25
    restarts = 2
    [schedules.random]
    init = "random"                            # random: uniform over the fraction init_scale of the box
    init_scale = 1.0
    restarts = 8

    [rates]                                    # how fits.csv is read; a change re-rates, it refits nothing
    num_bootstrap = 2000
    n_min = 500                                # the fitting window, declared here, never tuned per run
    n_max = 100000
    quantiles = [0.25, 0.5, 0.75, 0.9]         # tabulated per n (quantiles.csv) and rated (rates.csv)
    fail_thresholds = { key_value = 0.5 }      # a fit fails when the loss exceeds it (failing.csv)
    [rates.losses.by_cell_size]                # more losses, declared from the lab's grammar and measured on
    blocks = ["gate", "expert"]                # every fit's stored parameters (gate: the key k(p), expert: the
    terms = [{ blocks = ["gate"], multi = "r" }, { blocks = ["expert"], multi = "r/2" }]   # value v(p); prompt,
    theory = { exact = -0.5 }                  # prompt.key, prompt.value: p, p^K, p^V); rated like the others

    [problems.my-problem]                      # a user-defined problem
    preset = "shared-linear"                   # start from a preset (optional) ...
    noise_var = 0.04                           # ... and change any make_problem argument

    [problems.drawn]                           # or a problem drawn from a seed at a shape and key separation
    draw = { structure = "non-shared", seed = 1, d = 4, d_v = 2, key_separation = 0.5 }   # (draw_problem)
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from ..lab.losses import VoronoiLoss
from ..lab.prefix import from_problem
from ..prefix.estimator import FitSettings, check_residuals, validate_settings
from ..prefix.problems import (DRAW_STRUCTURES, PRESET_NAMES, PRESETS, Problem, draw_problem, has_bool, make_problem,
                       merge_factor, move_truth, preset)
from ..rates import quantile_statistic

SPECIFICATIONS = ("exact", "over")
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")
DEFAULT_QUANTILES = (0.25, 0.5, 0.75, 0.9)
# A fit fails when its key/value yardstick exceeds 0.5: above the 90% quantile of every exactly specified
# fit at n = 500 in the quick study, and below the spread-out fits of the over-specified non-shared ones.
DEFAULT_FAIL_THRESHOLDS = {"key_value": 0.5}
# The [rates] settings: how fits.csv is read into tables. A study resumed with other values refits nothing
# and rebuilds its tables (moe_estimation.experiments.results.check_same_study compares the rest).
RATE_FIELDS = ("num_bootstrap", "n_min", "n_max", "quantiles", "fail_thresholds", "losses")


RATE_LOSSES = {
    # rates.csv loss name -> how to read it from fits.csv (the columns summed)
    "own": ("loss_own",),
    "key_value": ("loss_key_value",),
    "key_value_key_part": ("kv_key_single", "kv_key_multi"),
    "key_value_value_part": ("kv_value_single", "kv_value_multi"),
    # the identified part on the (key, value) atoms (moe_estimation.prefix.voronoi.identified_parts)
    "identified_weight": ("id_weight",),
    "identified_key": ("id_key",),
    "identified_value": ("id_value",),
    "spread_key": ("id_spread_key",),
    "spread_value": ("id_spread_value",),
    # the same with the cells drawn by key alone (identified_parts(cells="key")): fits.csv's idk_<name>
    "identified_weight_by_key": ("idk_weight",),
    "identified_key_by_key": ("idk_key",),
    "identified_value_by_key": ("idk_value",),
    "spread_key_by_key": ("idk_spread_key",),
    "spread_value_by_key": ("idk_spread_value",),
    # the largest (key, value) atom error in a cell holding several atoms: the positive control (rate -1/4
    # for an over-specified shared fit; voronoi_parts)
    "max_multi_error": ("kv_max_multi",),
}


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """A resolved study: problems by name, the grid, the estimator settings and the rate settings."""

    seed: int
    ns: tuple[int, ...]
    replicates: int
    problems: tuple[str, ...]
    specifications: tuple[str, ...]
    extra_prompts: int
    fit: dict
    schedules: tuple[dict, ...]
    problem_specifications: dict
    num_bootstrap: int
    n_min: int
    n_max: int
    problem_tables: dict
    quantiles: tuple[float, ...] = DEFAULT_QUANTILES
    fail_thresholds: dict = dataclasses.field(default_factory=lambda: dict(DEFAULT_FAIL_THRESHOLDS))
    block: int | None = None  # replicates fitted per task (None: a whole cell at once)
    problem_extra_prompts: dict = dataclasses.field(default_factory=dict)  # L' - L per problem, where it differs
    losses: dict = dataclasses.field(default_factory=dict)  # [rates.losses.NAME]: declared losses, as read

    def declared_loss(self, name: str) -> VoronoiLoss:
        """The lab loss ``[rates.losses.NAME]`` declares (:meth:`moe_estimation.lab.VoronoiLoss.from_table`)."""
        return VoronoiLoss.from_table({k: v for k, v in self.losses[name].items() if k != "theory"})

    def declared_theory(self, name: str, spec: str) -> float:
        """The slope ``[rates.losses.NAME] theory`` gives specification ``spec`` (NaN: none declared)."""
        theory = self.losses[name].get("theory")
        if isinstance(theory, dict):
            theory = theory.get(spec)
        return float("nan") if theory is None else float(theory)

    @property
    def rate_losses(self) -> dict:
        """Every loss rated: :data:`RATE_LOSSES` and the declared ones (each read from its ``loss_NAME`` column,
        which the tables compute from the fits' stored parameters)."""
        return RATE_LOSSES | {name: (f"loss_{name}",) for name in self.losses}

    def problem(self, name: str, n: int | None = None) -> Problem:
        """The :class:`Problem` called ``name`` (a preset or a ``[problems.name]`` table); for a truth that
        moves with n (``moving``), its truth at sample size ``n`` (``n = None``: before it moves, the
        problem every sample size shares but for the truth)."""
        return build_problem(name, self.problem_tables.get(name), "<config>", n)

    def moving(self, name: str) -> dict | None:
        """Problem ``name``'s moving truth ``{beta, c, pair}`` (:func:`moving_truth`), None for a fixed one."""
        return moving_truth(name, self.problem_tables.get(name), "<config>")

    def family(self, name: str) -> str:
        """The name problem ``name``'s starting points are drawn under: its table's ``family``, else for a
        moving truth the preset it moves (so a family's members, and the fixed preset itself, start from the
        same points on the same data set), else ``name``."""
        table = self.problem_tables.get(name) or {}
        if "family" in table:
            return table["family"]
        if "moving" in table and isinstance(table.get("preset"), str):
            return table["preset"]
        return name

    def pairing(self, name: str) -> tuple:
        """What problem ``name``'s fits are paired on in ``differences.csv``: two problems with the same value
        share replicate r's inputs and noise draws (the same input law, d, d_v and noise variance: common random
        numbers) and, for problems drawn from a seed (``draw``), the same drawn truth, so that a factorial over
        geometries pairs the structures and L' - L at one truth rather than every two of its truths."""
        prob = self.problem(name)
        table = self.problem_tables.get(name) or {}
        draw = table.get("draw")
        truth = None if draw is None else tuple(sorted((k, v) for k, v in draw.items() if k != "structure"))
        return (prob.input_dist, prob.input_scale, prob.d, prob.d_v, prob.noise_var, truth)

    def num_prompts(self, problem: Problem, specification: str, name: str | None = None) -> int:
        """L' for ``problem`` (called ``name`` in the grid): L exactly specified, L + its extra prompts over."""
        return problem.num_true_prompts + (self.extra_prompts_of(name) if specification == "over" else 0)

    def extra_prompts_of(self, name: str | None) -> int:
        """L' - L of problem ``name``'s over-specified fit: ``[grid] extra_prompts``, for this problem if the
        grid names it, else the study's (1 unless set)."""
        return self.problem_extra_prompts.get(name, self.extra_prompts)

    def specifications_of(self, problem: str) -> tuple[str, ...]:
        """The specifications run for ``problem`` (all of ``specifications`` unless the grid names them)."""
        return tuple(self.problem_specifications.get(problem, self.specifications))

    @property
    def schedule_names(self) -> tuple[str, ...]:
        return tuple(sc["name"] for sc in self.schedules)

    def schedule(self, name: str) -> dict:
        """The starting-point schedule called ``name``: its ``init``, ``init_scale``, ``init_rate``, ``restarts``."""
        return next(sc for sc in self.schedules if sc["name"] == name)

    def fit_settings(self, num_prompts: int, schedule: str | None = None) -> FitSettings:
        """The estimator's settings for one cell: the study's [fit] table and the schedule's start."""
        sc = self.schedule(schedule or self.schedules[0]["name"])
        return FitSettings(num_prompts=num_prompts, **self.fit, **{k: sc[k] for k in SCHEDULE_KEYS})

    @property
    def statistics(self) -> tuple[str, ...]:
        """The statistics over replicates that rates.csv rates: the mean, the median and each declared quantile."""
        return ("mean", "median") + tuple(quantile_statistic(q) for q in self.quantiles if q != 0.5)

    @property
    def blocks(self) -> int:
        """How many tasks each cell's replicates are split into (``[grid] block``: replicates per task)."""
        return 1 if self.block is None else -(-self.replicates // self.block)

    @property
    def block_size(self) -> int:
        """Replicates per task: ``[grid] block``, or the whole cell's replicates."""
        return self.replicates if self.block is None else self.block

    def block_replicates(self, index: int) -> range:
        """The replicates of block ``index`` of a cell."""
        size = self.block_size
        return range(index * size, min((index + 1) * size, self.replicates))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["block"] is None:  # a study without blocks reads as it did before they existed (config.json)
            del d["block"]
        if not d["problem_extra_prompts"]:  # likewise a study with one L' - L for every problem
            del d["problem_extra_prompts"]
        if not d["losses"]:  # and one without declared losses
            del d["losses"]
        return d


_FIT_TYPES = {
    "restarts": int, "init": str, "init_scale": float, "init_rate": float, "max_steps": int, "ftol": float,
    "xtol": float, "gtol": float, "active_set": bool, "batching": str, "blocking": str,
    "block_rows": int,
}
SCHEDULE_KEYS = ("init", "init_scale", "init_rate", "restarts")
# one source of defaults; active_set is written into every config.json, so that a study begun with the
# earlier clip-after-solve step (no such key) is never resumed with the active-set one
_DEFAULT_FIT = {k: FitSettings._field_defaults[k] for k in ("max_steps", "ftol", "xtol", "gtol", "active_set")}
_DEFAULT_SCHEDULE = {k: FitSettings._field_defaults[k] for k in SCHEDULE_KEYS}


def _err(source: str, key: str, rule: str) -> ValueError:
    return ValueError(f"{source}: {key}: {rule}")


def _check_keys(source: str, section: str, table: dict, allowed) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise _err(source, f"{section}{unknown[0]}", f"unknown key; allowed keys are {sorted(allowed)}")


def _typed(source: str, key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        raise _err(source, key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


MOVING_KEYS = {"beta", "c", "pair"}


def moving_truth(name: str, table: dict | None, source: str) -> dict | None:
    """A problem table's ``moving = { beta, c, pair }`` validated (None for a fixed truth): true prompts
    ``pair`` (default [0, 1]) brought to ``c n^(-beta)`` times their separation at sample size n
    (:func:`moe_estimation.prefix.problems.move_truth`), beta >= 0 and c > 0."""
    if not isinstance(table, dict) or "moving" not in table:
        return None
    key = f"problems.{name}.moving"
    spec = table["moving"]
    if not isinstance(spec, dict):
        raise _err(source, key, f"expected a table {{ beta = ..., c = ... }}, got {spec!r}")
    _check_keys(source, key + ".", spec, MOVING_KEYS)
    if "beta" not in spec or "c" not in spec:
        raise _err(source, key, "give both beta (the exponent: separation c n^(-beta)) and c (its scale)")
    beta = _typed(source, key + ".beta", spec["beta"], float)
    c = _typed(source, key + ".c", spec["c"], float)
    if not (np.isfinite(beta) and beta >= 0):
        raise _err(source, key + ".beta", f"must be a finite number >= 0, got {spec['beta']!r}")
    if not (np.isfinite(c) and c > 0):
        raise _err(source, key + ".c", f"must be a finite number > 0, got {spec['c']!r}")
    pair = spec.get("pair", [0, 1])
    if (not isinstance(pair, list) or len(pair) != 2 or not all(isinstance(i, int) and not isinstance(i, bool)
                                                               for i in pair) or pair[0] == pair[1]):
        raise _err(source, key + ".pair", f"expected two distinct indices of true prompts, got {pair!r}")
    return dict(beta=beta, c=c, pair=list(pair))


def build_problem(name: str, table: dict | None, source: str, n: int | None = None) -> Problem:
    """A preset, or a ``[problems.name]`` table: ``preset`` (optional), ``seed`` and make_problem arguments,
    and optionally ``moving`` (:func:`moving_truth`; then ``n`` gives the truth at that sample size, and
    ``n = None`` the table's truth before it moves) and ``family`` (the name the moving truths of one family
    share: their starting points are drawn under it, so every member of a family starts where the others do)."""
    if table is None:
        if name not in PRESET_NAMES:
            raise _err(source, "grid.problems", f"{name!r} is neither a preset {PRESET_NAMES} nor a [problems.{name}] table")
        return preset(name)
    if not isinstance(table, dict):
        raise _err(source, f"problems.{name}", f"expected a table of make_problem arguments, got {type(table).__name__}")
    moving = moving_truth(name, table, source)
    if "family" in table and not (isinstance(table["family"], str) and table["family"]):
        raise _err(source, f"problems.{name}.family", f"expected a non-empty name, got {table['family']!r}")
    table = {k: v for k, v in table.items() if k not in ("moving", "family")}
    prob = _build_fixed(name, table, source)
    if moving is None or n is None:
        return prob
    try:
        return move_truth(prob, merge_factor(n, moving["beta"], moving["c"]), tuple(moving["pair"]))
    except ValueError as e:
        raise _err(source, f"problems.{name}.moving",
                   f"at n = {n} (separation factor {merge_factor(n, moving['beta'], moving['c']):.3g}): {e}") from None


DRAW_KEYS = {"structure": str, "seed": int, "d": int, "d_v": int, "key_separation": float, "num_experts": int}


def _draw(name: str, spec, source: str) -> dict:
    """A problem table's ``draw = { structure, seed, d, d_v, key_separation, num_experts }`` validated: the
    arguments of :func:`moe_estimation.prefix.problems.draw_problem` (``structure`` required, the rest defaulted)."""
    key = f"problems.{name}.draw"
    if not isinstance(spec, dict):
        raise _err(source, key, f"expected a table {{ structure = ..., d = ..., d_v = ..., key_separation = ... }}, "
                                f"got {spec!r}")
    _check_keys(source, key + ".", spec, DRAW_KEYS)
    if "structure" not in spec:
        raise _err(source, key + ".structure", f"required: one of {DRAW_STRUCTURES}")
    return {k: _typed(source, f"{key}.{k}", v, DRAW_KEYS[k]) for k, v in spec.items()}


def _build_fixed(name: str, table: dict, source: str) -> Problem:
    table = dict(table)
    base = table.pop("preset", None)
    draw = table.pop("draw", None)
    if draw is not None and "seed" in table:
        raise _err(source, f"problems.{name}.seed", "a drawn problem takes its seed from draw.seed; give it there")
    seed = table.pop("seed", 0)
    fields = {f.name for f in dataclasses.fields(Problem)}
    _check_keys(source, f"problems.{name}.", table, fields)
    if base is not None and not isinstance(base, str):
        raise _err(source, f"problems.{name}.preset", f"expected a preset name {PRESET_NAMES}, got {base!r}")
    if draw is not None:
        if base is not None:
            raise _err(source, f"problems.{name}.draw", "a problem is either a preset or a draw; give one of them")
        draw = _draw(name, draw, source)
        if "structure" in table:
            raise _err(source, f"problems.{name}.structure", "a drawn problem takes its structure from draw.structure")
    seed = _typed(source, f"problems.{name}.seed", seed, int)
    for key in ("A", "a", "H", "B", "C", "W1", "W2", "true_atoms", "true_biases"):
        if key in table:
            if has_bool(table[key]):
                raise _err(source, f"problems.{name}.{key}", f"expected a (nested) array of numbers, got a boolean in "
                                                             f"{table[key]!r}")
            try:
                table[key] = np.asarray(table[key], dtype=float)
            except (TypeError, ValueError):
                raise _err(source, f"problems.{name}.{key}",
                           f"expected a (nested) array of numbers, got {table[key]!r}") from None
    try:
        if "bias_bounds" in table:
            table["bias_bounds"] = tuple(table["bias_bounds"])
        if base is not None or draw is not None:
            noise = table.pop("noise_var", 0.01)
            prob = (preset(base, seed=seed, noise_var=noise) if draw is None
                    else draw_problem(noise_var=noise, **draw))
            return prob.replace(**table) if table else prob
        return make_problem(**table)
    except (ValueError, TypeError) as e:
        raise _err(source, f"problems.{name}", str(e)) from None


def _spec_list(source: str, key: str, specs) -> list:
    if not isinstance(specs, list) or not specs or any(s not in SPECIFICATIONS for s in specs) or len(set(specs)) < len(specs):
        raise _err(source, key, f"expected a non-empty list of distinct names drawn from {SPECIFICATIONS}, got {specs!r}")
    return [s for s in SPECIFICATIONS if s in specs]


def _schedule(source: str, name: str, table) -> dict:
    """One starting-point schedule: a name and the keys of :data:`SCHEDULE_KEYS` (defaults filled in)."""
    where = f"schedules.{name}" if name != "default" else "fit"
    if not SAFE_NAME.fullmatch(name):  # a schedule's name becomes part of file names (side_by_side_<schedule>.png)
        raise _err(source, where, f"{name!r} is not safe as part of a file name: use letters, digits, '.', '_' and '-', "
                   "not starting with '.' or '-'")
    if not isinstance(table, dict):
        raise _err(source, where, "expected a table of init, init_scale, init_rate, restarts")
    _check_keys(source, f"{where}.", table, SCHEDULE_KEYS)
    out = dict(_DEFAULT_SCHEDULE)
    for key, value in table.items():
        out[key] = _typed(source, f"{where}.{key}", value, _FIT_TYPES[key])
    if out["init"] == "random":  # every other rule is the estimator's own (validate_settings, in parse_config)
        if table.get("init_rate", 0) != 0:
            raise _err(source, f"{where}.init_rate", "does not apply to random starts (they do not depend on n); leave it out")
        out["init_rate"] = 0.0
    return dict(name=name, **out)


def parse_config(data: dict, source: str = "<config>") -> StudyConfig:
    """Validate a configuration dict (the parsed TOML) into a :class:`StudyConfig`."""
    _check_keys(source, "", data, {"seed", "grid", "fit", "schedules", "rates", "problems"})
    seed = _typed(source, "seed", data.get("seed", 0), int)
    if not 0 <= seed < 2**32:
        raise _err(source, "seed", f"must be an integer in [0, 2^32) (it seeds JAX's keys and the bootstrap), got {seed}")
    grid = data.get("grid")
    if not isinstance(grid, dict):
        raise _err(source, "grid", "the [grid] table is required (ns, replicates, problems)")
    _check_keys(source, "grid.", grid, {"ns", "replicates", "problems", "specifications", "extra_prompts", "block"})
    ns = grid.get("ns")
    if not isinstance(ns, list) or not ns:
        raise _err(source, "grid.ns", "expected a non-empty list of sample sizes")
    for n in ns:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise _err(source, "grid.ns", f"every sample size must be an integer >= 1, got {n!r}")
    if len(set(ns)) != len(ns):
        raise _err(source, "grid.ns", "sample sizes must be distinct")
    reps = _typed(source, "grid.replicates", grid.get("replicates", 8), int)
    if reps < 2:
        raise _err(source, "grid.replicates", f"need at least 2 replicates for a bootstrap interval, got {reps}")
    block = grid.get("block")
    if block is not None:
        block = _typed(source, "grid.block", block, int)
        if not 1 <= block <= reps:
            raise _err(source, "grid.block", f"replicates fitted per task must be an integer in [1, replicates = {reps}], "
                       f"got {block}")
        if block == reps:
            block = None  # one block a cell: the same study as without the key
    problems = grid.get("problems", list(PRESETS))
    if not isinstance(problems, list) or not problems or not all(isinstance(p, str) for p in problems):
        raise _err(source, "grid.problems", "expected a non-empty list of problem names")
    if len(set(problems)) != len(problems):
        raise _err(source, "grid.problems", f"problem names must be distinct, got {problems!r}")
    for name in problems:  # names become parts of file names (rates_<problem>.png): letters, digits, . _ - only
        if not SAFE_NAME.fullmatch(name):
            raise _err(source, "grid.problems", f"{name!r} is not safe as part of a file name: use letters, digits, "
                       "'.', '_' and '-', not starting with '.' or '-'")
    specs = grid.get("specifications", list(SPECIFICATIONS))
    per_problem = {}
    if isinstance(specs, dict):
        _check_keys(source, "grid.specifications.", specs, problems)
        for name in problems:
            if name not in specs:
                raise _err(source, f"grid.specifications.{name}", "missing: give every problem its specifications")
            per_problem[name] = _spec_list(source, f"grid.specifications.{name}", specs[name])
        specs = [s for s in SPECIFICATIONS if any(s in v for v in per_problem.values())]
    else:
        specs = _spec_list(source, "grid.specifications", specs)
    extra, per_problem_extra = grid.get("extra_prompts", 1), {}
    if isinstance(extra, dict):  # per problem: { name = L' - L }, the others 1
        _check_keys(source, "grid.extra_prompts.", extra, problems)
        per_problem_extra = {name: _typed(source, f"grid.extra_prompts.{name}", v, int) for name, v in extra.items()}
        extra = 1
    extra = _typed(source, "grid.extra_prompts", extra, int)
    for key, value in [("grid.extra_prompts", extra)] + [(f"grid.extra_prompts.{k}", v) for k, v in per_problem_extra.items()]:
        if value < 1:
            raise _err(source, key, f"L' - L for the over-specified fit must be >= 1, got {value}")

    fit_table = data.get("fit", {})
    if not isinstance(fit_table, dict):
        raise _err(source, "fit", "expected a table [fit]")
    _check_keys(source, "fit.", fit_table, _FIT_TYPES)
    fit = dict(_DEFAULT_FIT)
    for key, value in fit_table.items():
        fit[key] = _typed(source, f"fit.{key}", value, _FIT_TYPES[key])
    start = {k: fit.pop(k) for k in SCHEDULE_KEYS if k in fit}
    schedule_tables = data.get("schedules")
    if schedule_tables is None:
        schedule_tables = {"default": start}
    else:
        if not isinstance(schedule_tables, dict) or not schedule_tables:
            raise _err(source, "schedules", "expected one or more tables [schedules.NAME]")
        if start:
            raise _err(source, f"fit.{sorted(start)[0]}",
                       "with [schedules.NAME] tables, the starting point is set per schedule, not in [fit]")
        if "best-of-all" in schedule_tables:
            raise _err(source, "schedules.best-of-all", "the name is reserved for the tables' arm of the best fit "
                       "over every schedule; call the schedule something else")
    schedules = tuple(_schedule(source, name, table) for name, table in schedule_tables.items())
    for sc in schedules:
        try:  # the estimator's own rules, through the estimator's own check
            validate_settings(FitSettings(num_prompts=1, **fit, **{k: sc[k] for k in SCHEDULE_KEYS}))
        except ValueError as e:
            key, rule = str(e).split(": ", 1)
            where = "fit" if key in fit or sc["name"] == "default" else f"schedules.{sc['name']}"
            raise _err(source, f"{where}.{key}", rule) from None

    rates = data.get("rates", {})
    if not isinstance(rates, dict):
        raise _err(source, "rates", "expected a table [rates]")
    _check_keys(source, "rates.", rates, {"num_bootstrap", "n_min", "n_max", "quantiles", "fail_thresholds", "losses"})
    nb = _typed(source, "rates.num_bootstrap", rates.get("num_bootstrap", 2000), int)
    if nb < 100:
        raise _err(source, "rates.num_bootstrap", f"must be >= 100, got {nb}")
    n_min = _typed(source, "rates.n_min", rates.get("n_min", min(ns)), int)
    n_max = _typed(source, "rates.n_max", rates.get("n_max", max(ns)), int)
    if sum(n_min <= n <= n_max for n in ns) < 2:
        raise _err(source, "rates.n_min", f"the window [{n_min}, {n_max}] must hold at least two of grid.ns")
    quantiles = rates.get("quantiles", list(DEFAULT_QUANTILES))
    if (not isinstance(quantiles, list) or not quantiles
            or any(isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q < 1 for q in quantiles)
            or len(set(quantiles)) < len(quantiles)):
        raise _err(source, "rates.quantiles", f"expected a non-empty list of distinct numbers strictly between 0 and 1, "
                                              f"got {quantiles!r}")
    thresholds = rates.get("fail_thresholds", DEFAULT_FAIL_THRESHOLDS)
    if not isinstance(thresholds, dict):
        raise _err(source, "rates.fail_thresholds", f"expected a table {{ loss = threshold }}, got {thresholds!r}")
    declared = rates.get("losses", {})
    if not isinstance(declared, dict):
        raise _err(source, "rates.losses", f"expected tables [rates.losses.NAME], got {declared!r}")
    _check_keys(source, "rates.fail_thresholds.", thresholds, set(RATE_LOSSES) | set(declared))
    thresholds = dict(thresholds)
    for loss, t in thresholds.items():
        t = _typed(source, f"rates.fail_thresholds.{loss}", t, float)
        if not (np.isfinite(t) and t > 0):
            raise _err(source, f"rates.fail_thresholds.{loss}", f"must be a finite number > 0, got {t!r}")
        thresholds[loss] = t

    tables = data.get("problems", {})
    if not isinstance(tables, dict):
        raise _err(source, "problems", "expected tables [problems.NAME]")
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise _err(source, f"problems.{name}", f"expected a table of make_problem arguments, got {table!r}")
    built = {}
    for name in problems:  # every problem builds and validates before any work starts, at every n it moves to
        prob = built[name] = build_problem(name, tables.get(name), source)
        if moving_truth(name, tables.get(name), source) is not None:
            for n in ns:
                build_problem(name, tables.get(name), source, n)
        over = "over" in (per_problem.get(name) or specs)
        L = prob.num_true_prompts + (per_problem_extra.get(name, extra) if over else 0)
        try:  # the smallest n must determine the largest fit of the problem
            check_residuals(prob, L, min(ns), name="grid.ns")
        except ValueError as e:
            raise _err(source, "grid.ns", f"for problem {name!r}: " + str(e).split(": ", 1)[1]) from None
    for name, table in declared.items():  # declared losses: each checked on every problem's truth
        if not (isinstance(name, str) and re.fullmatch(r"[a-z][a-z0-9_]*", name)) or name in RATE_LOSSES:
            raise _err(source, f"rates.losses.{name}", f"a declared loss's name must be lower-case letters, digits and "
                                                       f"underscores, and not one of the study's own {sorted(RATE_LOSSES)}")
        if not isinstance(table, dict):
            raise _err(source, f"rates.losses.{name}", f"expected a table, got {table!r}")
        theory = table.get("theory")
        slopes = theory.values() if isinstance(theory, dict) else [theory] if theory is not None else []
        if (isinstance(theory, dict) and set(theory) - {"exact", "over"}) or any(
                isinstance(v, bool) or not isinstance(v, (int, float)) or not (np.isfinite(v) and v <= 0) for v in slopes):
            raise _err(source, f"rates.losses.{name}.theory", f"expected a slope <= 0 or a table {{ exact = .., over = .. }}"
                                                              f", got {theory!r}")
        try:
            loss = VoronoiLoss.from_table({k: v for k, v in table.items() if k != "theory"})
            if loss.part != "routed":
                raise ValueError(f"part: a prefix problem has no shared experts, got {loss.part!r}")
        except ValueError as e:
            raise _err(source, f"rates.losses.{name}", str(e)) from None
        for prob_name in problems:
            model, truth = from_problem(built[prob_name])
            try:
                loss(model, truth, truth)
            except ValueError as e:
                raise _err(source, f"rates.losses.{name}", f"for problem {prob_name!r}: {e}") from None
            over = "over" in (per_problem.get(prob_name) or specs)
            Lp = truth.gate.shape[0] + (per_problem_extra.get(prob_name, extra) if over else 0)
            try:  # an r(m) table must cover the largest cell a fit can make
                loss.check_cells(Lp, f"problem {prob_name!r}'s largest fit")
            except ValueError as e:
                raise _err(source, f"rates.losses.{name}.r_of_m", str(e).split(": ", 1)[1]) from None
    return StudyConfig(
        seed=seed, ns=tuple(sorted(ns)), replicates=reps, problems=tuple(problems), specifications=tuple(specs),
        extra_prompts=extra, fit=fit, schedules=schedules, problem_specifications=per_problem, num_bootstrap=nb, n_min=n_min, n_max=n_max,
        problem_tables={k: v for k, v in tables.items() if k in problems},
        quantiles=tuple(sorted(float(q) for q in quantiles)), fail_thresholds=dict(thresholds), block=block,
        problem_extra_prompts={k: v for k, v in per_problem_extra.items() if v != extra},
        losses={k: dict(v) for k, v in declared.items()},
    )


def read_toml(path: str | Path) -> dict:
    """A configuration file's contents (``ValueError`` naming the file when it is missing, not text or not TOML)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: configuration file not found")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text file (TOML is UTF-8 text: {e.reason} at byte {e.start})") from None


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a TOML study configuration."""
    return parse_config(read_toml(path), str(path))


_OVER_WITH_CONTROL = {name: ["over"] for name in PRESET_NAMES} | {"shared-linear": ["exact", "over"]}
_SCHEDULES = {
    # the peers' schedule: noise 0.5 n^(-1/4), shrinking toward the truth as n grows
    "shrinking": dict(init="near-truth", init_scale=0.5, init_rate=0.25, restarts=2),
    # the same noise draws at a scale that does not change with n: near (0.1, the shrinking scale at n = 625)
    # and far (0.5)
    "fixed-0.1": dict(init="near-truth", init_scale=0.1, init_rate=0.0, restarts=2),
    "fixed-0.5": dict(init="near-truth", init_scale=0.5, init_rate=0.0, restarts=2),
    # no knowledge of the truth: uniform over the whole box, best of 8
    "random": dict(init="random", init_scale=1.0, restarts=8),
}
MERGE_BETAS = (0.0, 0.125, 0.25, 0.375, 0.5)


def moving_family(bases, betas=MERGE_BETAS, cs=(1.0, 0.25)) -> tuple[list, dict]:
    """``(problem names, [problems] tables)`` of a family of truths that move with n for each preset in
    ``bases``: one problem ``<base>-b<beta>-c<c>`` per (beta, c), whose two true prompts are ``c n^(-beta)``
    times as far apart as the preset's (:func:`moe_estimation.prefix.problems.move_truth`). Every member of one
    base shares the base's data and starting points; beta = 0 with c = 1 is the preset itself."""
    names, tables = [], {}
    for base in bases:
        for c in cs:
            for beta in betas:
                name = f"{base}-b{beta:g}-c{c:g}"
                names.append(name)
                tables[name] = dict(preset=base, moving=dict(beta=float(beta), c=float(c)))
    return names, tables


def geometry_family(structures=("non-shared", "shared-linear"), ds=(2, 4), d_vs=(2, 4), draws=(0, 1),
                    separations=(0.5, 1.5, 3.0), noise_vars=(0.01, 0.04), extras=(1, 2)) -> tuple[list, dict, dict, dict]:
    """A factorial over drawn truths and shapes (:func:`moe_estimation.prefix.problems.draw_problem`): one problem
    per (structure, d, d_v, draw, key separation, noise variance, L' - L), named
    ``<structure>-d<d>v<d_v>-draw<seed>-sep<separation>-nu<noise>-x<L' - L>``. Returns ``(problem names,
    [problems] tables, per-problem specifications, per-problem extra prompts)``: the problems with L' - L = 1
    are fitted exactly (the control) and over-specified, the others over-specified only (an exact fit does not
    depend on L' - L). At one (d, d_v, draw, separation, noise) the structures share one regression function
    and every problem of one (d, d_v, noise) one input and noise draw per replicate (common random numbers)."""
    names, tables, specs, extra = [], {}, {}, {}
    for structure in structures:
        for d in ds:
            for d_v in d_vs:
                for seed in draws:
                    for sep in separations:
                        for nu in noise_vars:
                            for x in extras:
                                name = f"{structure}-d{d}v{d_v}-draw{seed}-sep{sep:g}-nu{nu:g}-x{x}"
                                names.append(name)
                                tables[name] = dict(draw=dict(structure=structure, seed=seed, d=d, d_v=d_v,
                                                              key_separation=float(sep)), noise_var=float(nu))
                                specs[name] = ["exact", "over"] if x == min(extras) else ["over"]
                                extra[name] = x
    return names, tables, specs, extra


_GEOMETRY = geometry_family()
_MINIMAX_QUICK = moving_family(["non-shared", "shared-linear"])
_MINIMAX = moving_family(["non-shared", "shared-linear", "shared-nonlinear"], cs=(1.0, 0.5, 0.25))

STUDY_PRESETS = {
    # The headline studies start at random over the whole box, best of 8: the schedule that does not know
    # the truth, does not change with n, and reached the lowest objective on most data sets of the
    # robustness study (README, "Does the verdict depend on where the solver starts?").
    # CPU, minutes: every structure, both specifications, a short grid.
    "quick": dict(
        seed=0,
        grid=dict(ns=[500, 1000, 2000, 4000, 8000], replicates=8, problems=list(PRESETS)),
        fit=dict(max_steps=400),
        schedules={"random": _SCHEDULES["random"]},
    ),
    # GPU-sized: n from 1e3 to 1e5 at 12 sizes, 40 replicates.
    "full": dict(
        seed=0,
        grid=dict(ns=[int(round(x)) for x in np.geomspace(1e3, 1e5, 12)], replicates=40, problems=list(PRESET_NAMES)),
        fit=dict(max_steps=600),
        schedules={"random": _SCHEDULES["random"]},
    ),
    # Does the verdict depend on where the solver starts? Every structure over-specified (shared-linear
    # exactly specified too, as a control) under four starting-point schedules, on the same data sets.
    "robust-quick": dict(
        seed=0,
        grid=dict(ns=[500, 1000, 2000, 4000, 8000], replicates=10, problems=list(PRESET_NAMES),
                  specifications=_OVER_WITH_CONTROL),
        fit=dict(max_steps=400),
        schedules=_SCHEDULES,
    ),
    # A shared map that is nonlinear in fact (shared-nonlinear: W2 != W1) beside shared-linear, on the full
    # study's design: its cells are the full study's cells of these two structures (the same seed, data sets
    # and settings), a smaller study for the one comparison.
    "nonlinear": dict(
        seed=0,
        grid=dict(ns=[int(round(x)) for x in np.geomspace(1e3, 1e5, 12)], replicates=40,
                  problems=["shared-linear", "shared-nonlinear"]),
        fit=dict(max_steps=600),
        schedules={"random": _SCHEDULES["random"]},
    ),
    # GPU-sized robustness study: n = 1e3..1e5, 40 replicates, the peers' two shrinking schedules (n^(-1/4),
    # n^(-1/12)), two fixed scales and random starts with 16 restarts; shared-nonlinear among the structures.
    "robust": dict(
        seed=0,
        grid=dict(ns=[int(round(x)) for x in np.geomspace(1e3, 1e5, 12)], replicates=40,
                  problems=list(PRESET_NAMES), specifications=_OVER_WITH_CONTROL),
        fit=dict(max_steps=600),
        schedules={
            "shrinking": dict(_SCHEDULES["shrinking"], restarts=4),
            "shrinking-slow": dict(init="near-truth", init_scale=0.5, init_rate=1 / 12, restarts=4),
            "fixed-0.1": dict(_SCHEDULES["fixed-0.1"], restarts=4),
            "fixed-0.5": dict(_SCHEDULES["fixed-0.5"], restarts=4),
            "random": dict(_SCHEDULES["random"], restarts=16),
        },
    ),
    # Does the best fit move when restarts grow? Random starts over the whole box, best of 8, 16 and 32, on
    # the same data sets; the starts are nested (restart r of every schedule is the same point), so best of 32
    # never ends above best of 16 or 8. The contested over-specified non-shared fit and its shared control. CPU,
    # about 5 minutes on one core.
    "restarts-quick": dict(
        seed=0,
        grid=dict(ns=[1000, 2000, 4000, 8000], replicates=10, problems=["non-shared", "shared-linear"],
                  specifications=["over"]),
        fit=dict(max_steps=400),
        rates=dict(n_min=1000),
        schedules={f"random-{r}": dict(_SCHEDULES["random"], restarts=r) for r in (8, 16, 32)},
    ),
    # The contested case at large n: the over-specified non-shared fit and its shared control, n to 2.5e5,
    # 100 replicates, fitted and resumed in blocks of 20; two schedules that know nothing of the truth (the
    # whole box, best of 8; its central half, best of 4), so that the best of all twelve restarts is the
    # least-squares estimate as far as the study can find it. CPU: about 4 hours on one core, resumable.
    "contested-quick": dict(
        seed=0,
        grid=dict(ns=[4000, 16000, 64000, 250000], replicates=100, block=20, problems=["non-shared", "shared-linear"],
                  specifications=["over"]),
        fit=dict(max_steps=400),
        rates=dict(n_min=4000, n_max=250000),
        schedules={"random": _SCHEDULES["random"], "random-half": dict(init="random", init_scale=0.5, restarts=4)},
    ),
    # GPU-sized: nine sizes from 1e3 to 2.5e5, 200 replicates, best of 16 and 8.
    "contested": dict(
        seed=0,
        grid=dict(ns=[int(round(x)) for x in np.geomspace(1e3, 2.5e5, 9)], replicates=200, block=50,
                  problems=["non-shared", "shared-linear"], specifications=["over"]),
        fit=dict(max_steps=600),
        rates=dict(n_min=1000, n_max=250000),
        schedules={"random": dict(_SCHEDULES["random"], restarts=16),
                   "random-half": dict(init="random", init_scale=0.5, restarts=8)},
    ),
    # Truths that move with n (docs/maths.md, *Truths that move with n*): for non-shared and shared-linear, the
    # presets' two true prompts brought to c n^(-beta) times their separation (beta = 0 .. 1/2, c = 1 and 1/4;
    # non-shared moves its keys only, shared its whole atom), fitted exactly and over-specified, every member
    # on the same data sets and starts; minimax.csv holds the worst case over each family. CPU: 16 minutes on
    # two cores, measured (10 of fitting, 5 for differences.csv).
    "minimax-quick": dict(
        seed=0,
        grid=dict(ns=[500, 1000, 2000, 4000, 8000], replicates=16, problems=_MINIMAX_QUICK[0]),
        fit=dict(max_steps=400),
        schedules={"random": _SCHEDULES["random"]},
        problems=_MINIMAX_QUICK[1],
    ),
    # GPU-sized: n from 1e3 to 1e5 at 8 sizes, 40 replicates, shared-nonlinear too, c = 1, 1/2, 1/4.
    "minimax": dict(
        seed=0,
        grid=dict(ns=[int(round(x)) for x in np.geomspace(1e3, 1e5, 8)], replicates=40, problems=_MINIMAX[0]),
        fit=dict(max_steps=600),
        schedules={"random": _SCHEDULES["random"]},
        problems=_MINIMAX[1],
    ),
    # More than one truth and shape (docs/maths.md, *More than one truth and shape*): a factorial over d and d_v in
    # {2, 4}, two random draws of the truth, each at three key separations (0.5, 1.5, 3: the presets' is 3.3),
    # two noise variances (0.01, 0.04) and L' - L in {1, 2}, non-shared and shared-linear on the same data sets,
    # the exact fit as each geometry's control; robust-quick's grid (n 500..8000, 10 replicates), random starts
    # over the whole box, best of 8. CPU: 83 minutes on two cores, measured (another process beside it for a
    # third of that time); resumable.
    "geometry": dict(
        seed=0,
        grid=dict(ns=[500, 1000, 2000, 4000, 8000], replicates=10, problems=_GEOMETRY[0],
                  specifications=_GEOMETRY[2], extra_prompts=_GEOMETRY[3]),
        fit=dict(max_steps=400),
        schedules={"random": _SCHEDULES["random"]},
        problems=_GEOMETRY[1],
    ),
    # a few seconds: the smoke tests
    "tiny": dict(
        seed=0,
        grid=dict(ns=[200, 256], replicates=2, problems=["shared-linear", "non-shared"]),  # one shape bucket
        fit=dict(restarts=1, max_steps=30),
        rates=dict(num_bootstrap=200),
    ),
}


def study_preset(name: str) -> StudyConfig:
    """The named study configuration (:data:`STUDY_PRESETS`): ``quick``, ``full``, ``nonlinear``,
    ``robust-quick``, ``robust``, ``restarts-quick``, ``contested-quick``, ``contested``, ``minimax-quick``,
    ``minimax``, ``geometry`` or ``tiny``."""
    if name not in STUDY_PRESETS:
        raise ValueError(f"--preset: expected one of {tuple(STUDY_PRESETS)}, got {name!r}")
    return parse_config(STUDY_PRESETS[name], f"preset {name}")
