"""Study configurations: TOML in, a validated :class:`StudyConfig` out.

Every key is checked before any work starts; a wrong key, type or value raises ``ValueError`` naming the
file, the key and the rule. The layout (all sections optional except ``[grid]``)::

    seed = 0                                   # root seed of the study

    [grid]
    ns = [500, 1000, 2000]                     # sample sizes, integers >= 1
    replicates = 8                             # R >= 2
    problems = ["shared-linear", "non-shared"] # preset names or names of [problems.*] tables
    specifications = ["exact", "over"]         # L' = L, or L' = L + extra_prompts
    extra_prompts = 1

    [fit]                                      # the fields of moe_estimation.FitSettings
    restarts = 4
    init = "near-truth"
    max_steps = 400
    ftol = 1e-8

    [rates]
    num_bootstrap = 2000
    n_min = 500                                # the fitting window, declared here, never tuned per run
    n_max = 100000

    [problems.my-problem]                      # a user-defined problem
    preset = "shared-linear"                   # start from a preset (optional) ...
    noise_var = 0.04                           # ... and change any make_problem argument
"""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from .fit import INITS, FitSettings
from .problems import PRESETS, Problem, make_problem, preset

SPECIFICATIONS = ("exact", "over")


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
    num_bootstrap: int
    n_min: int
    n_max: int
    problem_tables: dict

    def problem(self, name: str) -> Problem:
        """The :class:`Problem` called ``name`` (a preset or a ``[problems.name]`` table)."""
        return build_problem(name, self.problem_tables.get(name), "<config>")

    def num_prompts(self, problem: Problem, specification: str) -> int:
        return problem.num_true_prompts + (self.extra_prompts if specification == "over" else 0)

    def fit_settings(self, num_prompts: int) -> FitSettings:
        return FitSettings(num_prompts=num_prompts, **self.fit)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_FIT_TYPES = {
    "restarts": int, "init": str, "init_scale": float, "max_steps": int, "ftol": float, "xtol": float, "gtol": float,
}
_DEFAULT_FIT = dict(restarts=4, init="near-truth", init_scale=0.5, max_steps=400, ftol=1e-8, xtol=1e-8, gtol=1e-8)


def _err(source: str, key: str, rule: str) -> ValueError:
    return ValueError(f"{source}: {key}: {rule}")


def _check_keys(source: str, section: str, table: dict, allowed) -> None:
    unknown = sorted(set(table) - set(allowed))
    if unknown:
        raise _err(source, f"{section}{unknown[0]}", f"unknown key; allowed keys are {sorted(allowed)}")


def _typed(source: str, key: str, value: Any, kind: type) -> Any:
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise _err(source, key, f"expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def build_problem(name: str, table: dict | None, source: str) -> Problem:
    """A preset, or a ``[problems.name]`` table: ``preset`` (optional), ``seed`` and make_problem arguments."""
    if table is None:
        if name not in PRESETS:
            raise _err(source, "grid.problems", f"{name!r} is neither a preset {PRESETS} nor a [problems.{name}] table")
        return preset(name)
    table = dict(table)
    base = table.pop("preset", None)
    seed = table.pop("seed", 0)
    fields = {f.name for f in dataclasses.fields(Problem)}
    _check_keys(source, f"problems.{name}.", table, fields)
    for key in ("A", "a", "H", "B", "C", "W1", "W2", "true_atoms", "true_biases"):
        if key in table:
            table[key] = np.asarray(table[key], dtype=float)
    if "bias_bounds" in table:
        table["bias_bounds"] = tuple(table["bias_bounds"])
    try:
        if base is not None:
            noise = table.pop("noise_var", 0.01)
            prob = preset(base, seed=seed, noise_var=noise)
            return prob.replace(**table) if table else prob
        return make_problem(**table)
    except (ValueError, TypeError) as e:
        raise _err(source, f"problems.{name}", str(e)) from None


def parse_config(data: dict, source: str = "<config>") -> StudyConfig:
    """Validate a configuration dict (the parsed TOML) into a :class:`StudyConfig`."""
    _check_keys(source, "", data, {"seed", "grid", "fit", "rates", "problems"})
    seed = _typed(source, "seed", data.get("seed", 0), int)
    grid = data.get("grid")
    if not isinstance(grid, dict):
        raise _err(source, "grid", "the [grid] table is required (ns, replicates, problems)")
    _check_keys(source, "grid.", grid, {"ns", "replicates", "problems", "specifications", "extra_prompts"})
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
    problems = grid.get("problems", list(PRESETS))
    if not isinstance(problems, list) or not problems or not all(isinstance(p, str) for p in problems):
        raise _err(source, "grid.problems", "expected a non-empty list of problem names")
    specs = grid.get("specifications", list(SPECIFICATIONS))
    if not isinstance(specs, list) or not specs or any(s not in SPECIFICATIONS for s in specs):
        raise _err(source, "grid.specifications", f"expected a non-empty list drawn from {SPECIFICATIONS}, got {specs!r}")
    extra = _typed(source, "grid.extra_prompts", grid.get("extra_prompts", 1), int)
    if extra < 1:
        raise _err(source, "grid.extra_prompts", f"L' - L for the over-specified fit must be >= 1, got {extra}")

    fit_table = data.get("fit", {})
    _check_keys(source, "fit.", fit_table, _FIT_TYPES)
    fit = dict(_DEFAULT_FIT)
    for key, value in fit_table.items():
        fit[key] = _typed(source, f"fit.{key}", value, _FIT_TYPES[key])
    if fit["init"] not in INITS:
        raise _err(source, "fit.init", f"expected one of {INITS}, got {fit['init']!r}")
    for key in ("restarts", "max_steps"):
        if fit[key] < 1:
            raise _err(source, f"fit.{key}", f"must be >= 1, got {fit[key]}")
    for key in ("init_scale", "ftol", "xtol", "gtol"):
        if not (np.isfinite(fit[key]) and fit[key] >= 0):
            raise _err(source, f"fit.{key}", f"must be a finite number >= 0, got {fit[key]}")

    rates = data.get("rates", {})
    _check_keys(source, "rates.", rates, {"num_bootstrap", "n_min", "n_max"})
    nb = _typed(source, "rates.num_bootstrap", rates.get("num_bootstrap", 2000), int)
    if nb < 100:
        raise _err(source, "rates.num_bootstrap", f"must be >= 100, got {nb}")
    n_min = _typed(source, "rates.n_min", rates.get("n_min", min(ns)), int)
    n_max = _typed(source, "rates.n_max", rates.get("n_max", max(ns)), int)
    if sum(n_min <= n <= n_max for n in ns) < 2:
        raise _err(source, "rates.n_min", f"the window [{n_min}, {n_max}] must hold at least two of grid.ns")

    tables = data.get("problems", {})
    if not isinstance(tables, dict):
        raise _err(source, "problems", "expected tables [problems.NAME]")
    for name in problems:  # every problem builds and validates before any work starts
        build_problem(name, tables.get(name), source)
    return StudyConfig(
        seed=seed, ns=tuple(sorted(ns)), replicates=reps, problems=tuple(problems), specifications=tuple(specs),
        extra_prompts=extra, fit=fit, num_bootstrap=nb, n_min=n_min, n_max=n_max,
        problem_tables={k: v for k, v in tables.items() if k in problems},
    )


def load_config(path: str | Path) -> StudyConfig:
    """Read and validate a TOML study configuration."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: configuration file not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: not valid TOML ({e})") from None
    return parse_config(data, str(path))


STUDY_PRESETS = {
    # CPU, minutes: every structure, both specifications, a short grid.
    "quick": dict(
        seed=0,
        grid=dict(ns=[500, 1000, 2000, 4000, 8000], replicates=8, problems=list(PRESETS)),
        fit=dict(restarts=2, max_steps=400),
    ),
    # GPU-sized: n from 1e3 to 1e5 at 12 sizes, 40 replicates.
    "full": dict(
        seed=0,
        grid=dict(ns=[int(round(x)) for x in np.geomspace(1e3, 1e5, 12)], replicates=40, problems=list(PRESETS)),
        fit=dict(restarts=4, max_steps=600),
    ),
    # a few seconds: the smoke tests
    "tiny": dict(
        seed=0,
        grid=dict(ns=[200, 400], replicates=2, problems=["shared-linear", "non-shared"]),
        fit=dict(restarts=1, max_steps=30),
        rates=dict(num_bootstrap=200),
    ),
}


def study_preset(name: str) -> StudyConfig:
    """The named study configuration: ``quick``, ``full`` or ``tiny``."""
    if name not in STUDY_PRESETS:
        raise ValueError(f"--preset: expected one of {tuple(STUDY_PRESETS)}, got {name!r}")
    return parse_config(STUDY_PRESETS[name], f"preset {name}")
