"""A Monte Carlo rate study of any assembly, from a configuration file (docs/maths.md, *The lab*).

    seed = 0
    [model]
    gate = "sigmoid"            # softmax (pinned reference) | softmax-extra | softmax-free | sigmoid
                                # | normalised-sigmoid | laplace | laplace-pinned | gaussian
    expert = "relu"             # constant | linear | relu | gelu | sigmoid | tanh, or relu-nobias ... (no inner bias)
    likelihood = "least-squares"  # or "gaussian" (maximum likelihood, per-expert variances), or "joint-gaussian"
                                  # (the gaussian gate's joint likelihood of (x, y), with input law "gate")
    input = { law = "uniform", low = -1.0, high = 1.0, d = 1 }
    d_out = 1
    noise_var = 0.01            # least squares: the known noise variance the data are simulated with
    [truth]                     # K true components
    gate = [[2.0, 0.5], [-2.0, 0.0]]
    expert = [[1.0, 1.0, 0.0], [-1.0, 1.0, 0.5]]
    log_var = [0.0, 0.0]        # the Gaussian likelihood's; ignored by least squares
    [loss.voronoi]              # one or more losses, each a VoronoiLoss declaration
    blocks = ["gate", "expert"]
    kind = "d2"                 # part = "routed" (default) | "shared" | "both", with shared experts
    [loss.by_cell_size]         # or term by term, exponents by the size m of the cell (r(m) from r_of_m)
    blocks = ["gate", "expert"]
    terms = [{ blocks = ["gate"], single = 1, multi = 2 }, { blocks = ["expert.slope"], single = 1, multi = "r/2" },
             { blocks = ["expert.intercept"], single = 1, multi = "r" }]
    r_of_m = [4, 6]             # r(2), r(3); weighted = true, weight_sum = "all" | "multi" | "none"
    [grid]
    ns = [500, 1000, 2000, 4000]
    replicates = 8
    specifications = ["exact", "over"]
    extra_components = 1
    [fit]                       # the fields of LabFitSettings (init, init_scale, init_rate, restarts, max_steps, ...)
    estimator = "direct"        # or "em" (the Gaussian likelihood's softmax and linear experts)
    [rates]                     # how fits are rated: changing it re-rates a finished study without refitting
    num_bootstrap = 2000
    theory = { voronoi = -0.5 } # optional: the slope a theorem gives each loss (or { exact = .., over = .. }),
                                # written to rates.csv and drawn on the figure beside the measured one

Shared experts beside the routed ones (the DeepSeekMoE-style model, :class:`moe_estimation.lab.Assembly`):
``[model] shared = "relu"`` (their expert part) and ``share = 0.5`` (the fixed weight of the shared part);
``[truth] shared_expert = [[...]]``, ``shared_weight = [...]`` (positive, summing to 1), ``shared_log_var``;
``[grid] extra_shared = 1`` (the shared experts added when over-specified).

``moe-estimation study --config FILE --out DIR`` runs it (a configuration with a ``[model]`` table is a lab
study). It is made of the project's pieces: keys from coordinates (replicate r's data from (n, r), its starts
from (specification, n, r)), one task a cell of (specification, n), fitted in worker processes on a CPU
(:func:`moe_estimation.experiments.workers.run_cells`), a ``fits.csv`` written after every cell and resumed, one writer a
folder (:class:`moe_estimation.experiments.results.StudyLock`), config.json checked on resume, ``runs.jsonl`` appended, and
``rates.csv`` by the rate code of every study (:func:`moe_estimation.experiments.results.rate_entries`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._checks import make_out_dir
from ..prefix.data import fold_key
from ..experiments.results import (CellTable, RunLog, StudyLock, check_same_study, loss_matrix, rate_entries, read_columns,
                                   versions, write_config, write_csv)
from ..solver import STATUS_LABELS
from ..experiments.runner import fit_missing, load_cells
from ..experiments.workers import resolve_workers
from .em import GATE_STEPS, check_em_model, em_dataset
from .fit import LabFitSettings, check_settings, fit_dataset
from .losses import VoronoiLoss
from .model import Assembly, Mixture, simulate_rows
from .parts import EXPERT_NAMES, GATE_NAMES, InputLaw

ESTIMATORS = ("direct", "em")
# EM's own options in [fit] (with estimator = "em"): the relative rise of the log-likelihood it stops at, the Newton
# steps of the gate's M-step and their relative stopping tolerance (0: always that many steps)
EM_DEFAULTS = {"em_tol": 1e-8, "em_gate_steps": 5, "em_gate_tol": 0.0, "em_abort": 0, "em_gate_step": "newton"}
EM_INTEGERS = {"em_gate_steps": 1, "em_abort": 0}  # the integer options and their least values
DEFAULT_LOSS = {"voronoi": {"blocks": ["gate", "expert"], "kind": "d2"}}  # a study without [loss] tables
LAB_CELL = ["specification", "n"]


@dataclasses.dataclass(frozen=True)
class LabStudy:
    """A resolved lab study (module docstring): the assembly and its truth, the losses, the grid, the fit and the
    rate settings. ``table`` is the configuration as read (config.json's record)."""

    model: Assembly
    truth: Mixture
    losses: dict
    theory: dict
    seed: int
    ns: tuple
    replicates: int
    specifications: tuple
    extra_components: int
    extra_shared: int
    fit: dict
    estimator: str
    num_bootstrap: int
    n_min: int
    n_max: int
    table: dict
    em_options: tuple = tuple(EM_DEFAULTS.items())  # (name, value) pairs: hashable, so the cell's jit can key on them

    def settings(self, spec: str) -> LabFitSettings:
        over = spec == "over"
        K = self.truth.gate.shape[0] + (self.extra_components if over else 0)
        K1 = self.truth.num_shared + (self.extra_shared if over and self.model.shared is not None else 0)
        return LabFitSettings(num_components=K, num_shared=K1, **self.fit)


def _err(source, key, rule):
    return ValueError(f"{source}: {key}: {rule}")


def _get(source, table, key, kind, default=None, where=""):
    v = table.get(key, default)
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if isinstance(v, bool) and kind is not bool or not isinstance(v, kind):
        raise _err(source, f"{where}{key}", f"expected {kind.__name__}, got {v!r}")
    return v


def _theory(source, key, value) -> dict:
    """A loss's declared theory slope: a number for every specification, or a table {exact = .., over = ..}."""
    if value is None:
        return {}
    table = value if isinstance(value, dict) else {"exact": value, "over": value}
    for spec, v in table.items():
        if spec not in ("exact", "over"):
            raise _err(source, f"{key}.{spec}", "expected the specifications 'exact' and/or 'over'")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v > 0:
            raise _err(source, key if not isinstance(value, dict) else f"{key}.{spec}",
                       f"expected a finite slope <= 0 (the log-log slope the theory gives the loss), got {v!r}")
    return {spec: float(v) for spec, v in table.items()}


def parse_lab_config(data: dict, source: str = "<config>") -> LabStudy:
    """Validate a lab configuration (the parsed TOML); every error names the file, the key and the rule."""
    allowed = {"seed", "model", "truth", "loss", "grid", "fit", "rates"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise _err(source, unknown[0], f"unknown key in a lab study; allowed keys are {sorted(allowed)}")
    seed = _get(source, data, "seed", int, 0)
    if not 0 <= seed < 2**32:
        raise _err(source, "seed", f"must be an integer in [0, 2^32), got {seed}")
    m = data.get("model")
    if not isinstance(m, dict):
        raise _err(source, "model", "expected a table [model] with gate, expert, likelihood and input")
    unknown = sorted(set(m) - {"gate", "expert", "likelihood", "input", "d_out", "noise_var", "bound", "shared", "share"})
    if unknown:
        raise _err(source, f"model.{unknown[0]}", "unknown key")
    gate = _get(source, m, "gate", str, "softmax", "model.")
    expert = _get(source, m, "expert", str, "linear", "model.")
    if gate not in GATE_NAMES:
        raise _err(source, "model.gate", f"expected one of {tuple(GATE_NAMES)}, got {gate!r}")
    if expert not in EXPERT_NAMES:
        raise _err(source, "model.expert", f"expected one of {tuple(EXPERT_NAMES)}, got {expert!r}")
    shared = _get(source, m, "shared", str, "", "model.")
    if shared and shared not in EXPERT_NAMES:
        raise _err(source, "model.shared", f"expected one of {tuple(EXPERT_NAMES)} (the shared experts), got {shared!r}")
    if "share" in m and not shared:
        raise _err(source, "model.share", "the fixed weight of shared experts; give model.shared too")
    inp = m.get("input", {})
    if not isinstance(inp, dict) or set(inp) - {"law", "d", "low", "high", "scale", "points", "means", "weights"}:
        raise _err(source, "model.input", f"expected a table {{ law, d, low, high, scale, points, means, weights }}, "
                                          f"got {inp!r}")
    sizes = dict(d_out=_get(source, m, "d_out", int, 1, "model."),
                 likelihood=_get(source, m, "likelihood", str, "least-squares", "model."),
                 noise_var=_get(source, m, "noise_var", float, 0.01, "model."),
                 bound=_get(source, m, "bound", float, 10.0, "model."), share=_get(source, m, "share", float, 0.5, "model."))
    try:
        law = InputLaw(**{k: (float(v) if k in ("low", "high", "scale") and not isinstance(v, bool) else v)
                          for k, v in inp.items()})
        model = Assembly(gate=GATE_NAMES[gate](), expert=EXPERT_NAMES[expert](), input=law,
                         shared=EXPERT_NAMES[shared]() if shared else None, **sizes)
    except (ValueError, TypeError) as e:
        raise _err(source, "model", str(e)) from None
    t = data.get("truth")
    if not isinstance(t, dict) or "gate" not in t or "expert" not in t:
        raise _err(source, "truth", "expected a table [truth] with gate and expert (and log_var for the Gaussian likelihood)")
    unknown = sorted(set(t) - {"gate", "expert", "log_var", "shared_expert", "shared_weight", "shared_log_var"})
    if unknown:
        raise _err(source, f"truth.{unknown[0]}", "unknown key")
    stray = sorted(k for k in ("shared_weight", "shared_log_var") if k in t and not shared)
    if stray:
        raise _err(source, f"truth.{stray[0]}", "the model has no shared experts (model.shared)")
    if bool(shared) != ("shared_expert" in t):
        raise _err(source, "truth.shared_expert", "give the true shared experts (shared_expert, shared_weight) exactly "
                                                  "when model.shared names their part")
    if shared and (not isinstance(t["shared_expert"], list) or not t["shared_expert"]):
        raise _err(source, "truth.shared_expert", f"expected a non-empty list of the shared experts' parameter lists, "
                                                  f"got {t['shared_expert']!r}")
    if shared and model.has_variances and "shared_log_var" not in t:
        raise _err(source, "truth.shared_log_var", f"the {model.likelihood} likelihood needs the shared experts' "
                                                   "log-variances")
    try:
        K = len(t["gate"])
        truth = Mixture(gate=np.asarray(t["gate"], float), expert=np.asarray(t["expert"], float),
                        log_var=np.asarray(t.get("log_var", [0.0] * K), float))
        if shared:
            K1 = len(t["shared_expert"])
            omega = np.asarray(t.get("shared_weight", [1.0 / K1] * K1), float)
            if omega.shape != (K1,) or np.any(omega <= 0) or not np.isclose(omega.sum(), 1.0):
                raise ValueError(f"shared_weight: expected {K1} positive weights summing to 1, got {t.get('shared_weight')!r}")
            truth = truth._replace(shared_logit=np.log(omega), shared_expert=np.asarray(t["shared_expert"], float),
                                   shared_log_var=np.asarray(t.get("shared_log_var", [0.0] * K1), float))
        truth = model.check(truth)
    except (ValueError, TypeError) as e:
        raise _err(source, "truth", str(e)) from None
    losses = data.get("loss", DEFAULT_LOSS)
    if not isinstance(losses, dict) or not losses:
        raise _err(source, "loss", "expected one or more tables [loss.NAME] with blocks and kind")
    declared = {}
    for name, spec in losses.items():
        try:
            declared[name] = VoronoiLoss.from_table(spec)
        except (ValueError, TypeError) as e:
            raise _err(source, f"loss.{name}", str(e)) from None
        if declared[name].part != "routed" and not shared:
            raise _err(source, f"loss.{name}.part", f"{declared[name].part!r} measures shared experts; the model has none")
        if "variance" in declared[name].blocks and not model.has_variances:
            raise _err(source, f"loss.{name}.blocks", "'variance' is a block of the Gaussian likelihoods' mixtures only")
        for summand in declared[name].summands():  # a term's cells name true atoms that exist
            top = truth.gate.shape[0] if summand.part == "routed" else truth.num_shared if summand.part == "shared" \
                else min(truth.gate.shape[0], truth.num_shared)
            for t in summand.declared_terms():
                if t.cells is not None and max(t.cells) >= top:
                    raise _err(source, f"loss.{name}.terms.cells", f"{list(t.cells)} names a true atom past the last: the "
                                                                   f"truth has {top} (indices 0 .. {top - 1})")
        try:  # every block the loss names is one of this model's: found now, not after the first cell's fits
            declared[name](model, truth, truth)
        except ValueError as e:
            raise _err(source, f"loss.{name}", str(e)) from None
    g = data.get("grid")
    if not isinstance(g, dict):
        raise _err(source, "grid", "the [grid] table is required (ns, replicates)")
    unknown = sorted(set(g) - {"ns", "replicates", "specifications", "extra_components", "extra_shared"})
    if unknown:
        raise _err(source, f"grid.{unknown[0]}", "unknown key")
    ns = g.get("ns")
    if not isinstance(ns, list) or len(ns) < 2 or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in ns) \
            or len(set(ns)) < len(ns):
        raise _err(source, "grid.ns", f"expected at least two distinct integers >= 1, got {ns!r}")
    reps = _get(source, g, "replicates", int, 8, "grid.")
    if reps < 2:
        raise _err(source, "grid.replicates", f"need at least 2 for a bootstrap interval, got {reps}")
    specs = g.get("specifications", ["exact", "over"])
    if not isinstance(specs, list) or not specs or any(s not in ("exact", "over") for s in specs) or len(set(specs)) < len(specs):
        raise _err(source, "grid.specifications", f"expected distinct names from ('exact', 'over'), got {specs!r}")
    extra = _get(source, g, "extra_components", int, 1, "grid.")
    if extra < 1:
        raise _err(source, "grid.extra_components", f"must be >= 1, got {extra}")
    extra_shared = _get(source, g, "extra_shared", int, 1 if shared else 0, "grid.")
    if extra_shared < 0 or (extra_shared and not shared):
        raise _err(source, "grid.extra_shared", f"the shared experts added when over-specified: >= 0, and 0 without "
                                                f"model.shared; got {extra_shared}")
    f = dict(data.get("fit", {}))
    estimator = f.pop("estimator", "direct")
    if estimator not in ESTIMATORS:
        raise _err(source, "fit.estimator", f"expected one of {ESTIMATORS}, got {estimator!r}")
    em_options = {k: f.pop(k) for k in list(f) if k in EM_DEFAULTS}
    if em_options and estimator != "em":
        raise _err(source, f"fit.{sorted(em_options)[0]}", "an option of EM; it goes with estimator = \"em\"")
    for k, v in em_options.items():
        if k == "em_gate_step":
            if v not in GATE_STEPS:
                raise _err(source, f"fit.{k}", f"expected one of {GATE_STEPS}, got {v!r}")
            continue
        kind = int if k in EM_INTEGERS else float
        least = EM_INTEGERS.get(k, 0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (kind is int and not isinstance(v, int)) \
                or not (np.isfinite(v) and v >= least):
            raise _err(source, f"fit.{k}", f"expected {f'an integer >= {least}' if kind is int else 'a finite number >= 0'}, "
                                           f"got {v!r}")
    em_options = EM_DEFAULTS | {k: v if k == "em_gate_step" else int(v) if k in EM_INTEGERS else float(v)
                                for k, v in em_options.items()}
    fields = set(LabFitSettings._fields) - {"num_components", "num_shared"}
    unknown = sorted(set(f) - fields)
    if unknown:
        raise _err(source, f"fit.{unknown[0]}", f"unknown key; allowed keys are "
                                                f"{sorted(fields | {'estimator'} | set(EM_DEFAULTS))}")
    try:
        check_settings(LabFitSettings(num_components=K, **f))
        if estimator == "em":
            check_em_model(model, em_options["em_gate_step"])
    except (ValueError, TypeError) as e:
        raise _err(source, "fit", str(e)) from None
    if f.get("init") == "near-truth" and "init_scale" not in f:
        f["init_scale"] = 0.5
    r = data.get("rates", {})
    if not isinstance(r, dict) or set(r) - {"num_bootstrap", "n_min", "n_max", "theory"}:
        raise _err(source, "rates", "expected a table with num_bootstrap, n_min, n_max, theory")
    th = r.get("theory", {})
    if not isinstance(th, dict) or set(th) - set(declared):
        raise _err(source, "rates.theory", f"expected a table of the declared losses {sorted(declared)}, each a slope or "
                                           f"{{ exact = .., over = .. }}, got {th!r}")
    theory = {name: _theory(source, f"rates.theory.{name}", th.get(name)) for name in declared}
    for name, table in theory.items():
        if not isinstance(th.get(name), dict):  # one slope for every specification: those the study fits
            theory[name] = {spec: v for spec, v in table.items() if spec in specs}
            continue
        for spec in table:
            if spec not in specs:
                raise _err(source, f"rates.theory.{name}.{spec}", f"the study fits only {specs}")
    nb = _get(source, r, "num_bootstrap", int, 2000, "rates.")
    if nb < 100:
        raise _err(source, "rates.num_bootstrap", f"must be >= 100, got {nb}")
    n_min, n_max = _get(source, r, "n_min", int, min(ns), "rates."), _get(source, r, "n_max", int, max(ns), "rates.")
    if sum(n_min <= n <= n_max for n in ns) < 2:
        raise _err(source, "rates.n_min", f"the window [{n_min}, {n_max}] must hold at least two of grid.ns")
    for spec in specs:
        Kp = K + (extra if spec == "over" else 0)
        K1p = truth.num_shared + (extra_shared if spec == "over" else 0)
        if min(ns) * model.d_out < model.num_params(Kp, K1p):
            raise _err(source, "grid.ns", f"n = {min(ns)} gives fewer residuals than the {model.num_params(Kp, K1p)} "
                                          f"parameters of {Kp} components" + (f" and {K1p} shared" if K1p else ""))
        for name, declared_loss in declared.items():  # an r(m) table must cover the largest cell a fit can make
            try:
                for loss in declared_loss.summands():
                    if loss.part != "shared":
                        loss.check_cells(Kp, f"the {spec} fit")
                    if loss.part != "routed":
                        loss.check_cells(K1p, f"the {spec} fit's shared part")
            except ValueError as e:
                raise _err(source, f"loss.{name}.r_of_m", str(e).split(": ", 1)[1]) from None
    return LabStudy(model=model, truth=truth, losses=declared, theory=theory, seed=seed, ns=tuple(sorted(ns)), replicates=reps,
                    specifications=tuple(s for s in ("exact", "over") if s in specs), extra_components=extra,
                    extra_shared=extra_shared,
                    fit=f, estimator=estimator, num_bootstrap=nb, n_min=n_min, n_max=n_max,
                    table=json.loads(json.dumps(data)), em_options=tuple(em_options.items()))


def _bucket(n: int) -> int:
    return max(64, 1 << (int(n) - 1).bit_length())


def lab_cell(study: LabStudy, spec: str, n: int):
    """One cell, every replicate: simulate (data keys from (seed, n, r)), fit (start keys from (seed, spec, n, r))
    and score; numpy arrays with a leading replicate axis and the seconds a fit. A pure function of its arguments
    (the same numbers in any process or order)."""
    s = study.settings(spec)
    rows = _bucket(n)
    reps = jnp.arange(study.replicates)
    dkeys = jax.vmap(lambda r: jax.random.fold_in(fold_key(jax.random.key(study.seed), "data", n), r))(reps)
    skeys = jax.vmap(lambda r: jax.random.fold_in(fold_key(jax.random.key(study.seed), "start", spec, n), r))(reps)
    t0 = time.perf_counter()
    res = _cell(study.model, s, study.estimator, study.truth, dkeys, skeys, n, rows, study.em_options)
    res = jax.device_get(res)
    seconds = (time.perf_counter() - t0) / study.replicates
    scores = {name: np.asarray(jax.vmap(lambda p: loss(study.model, p, study.truth))(res.params))
              for name, loss in study.losses.items()}
    return res, scores, seconds


def _cell_impl(model, s, estimator, truth, dkeys, skeys, n, rows, em_options=tuple(EM_DEFAULTS.items())):
    em = dict(em_options)

    def one(keys):
        dk, sk = keys
        X, Y = simulate_rows(model, truth, dk, rows, n)
        w = (jnp.arange(rows) < n).astype(X.dtype)
        if estimator == "em":
            return em_dataset(sk, model, s, X, Y, w, truth, em["em_tol"], em["em_gate_steps"], em["em_gate_tol"],
                              em.get("em_abort", 0), em.get("em_gate_step", "newton"))
        return fit_dataset(sk, model, s, X, Y, w, truth)

    return jax.lax.map(one, (dkeys, skeys))


_cell = jax.jit(_cell_impl, static_argnames=("model", "s", "estimator", "rows", "em_options"))

LAB_COLUMNS = ["specification", "num_components", "n", "replicate", "seed", "estimator", "init", "init_scale",
               "restarts", "objective", "converged", "status", "steps", "seconds", "params"]


def _columns(study: LabStudy, losses=None) -> list[str]:
    """fits.csv's columns, with a loss column for each of ``losses`` (default: the study's declared losses)."""
    shared = ["num_shared"] if study.model.shared is not None else []
    names = study.losses if losses is None else losses
    return LAB_COLUMNS[:2] + shared + LAB_COLUMNS[2:9] + [f"loss_{name}" for name in names] + LAB_COLUMNS[9:]


def rescore(fits: pd.DataFrame, study: LabStudy) -> pd.DataFrame:
    """``fits`` with its loss columns computed anew from each fit's stored parameters (the ``params`` column, full
    precision) by ``study``'s declared losses; the columns of losses no longer declared dropped. Scoring is not
    fitting: a loss declared after the fits is measured on them."""
    out = fits.drop(columns=[c for c in fits.columns if c.startswith("loss_")])
    shared = "num_shared" in fits.columns
    keys = ["num_components"] + (["num_shared"] if shared else [])
    scores = {name: np.full(len(fits), np.nan) for name in study.losses}
    for key, group in fits.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        K, K1 = int(key[0]), (int(key[1]) if shared else 0)
        idx = group.index
        theta = jnp.asarray(np.stack([np.array(str(p).split(), dtype=float) for p in fits.loc[idx, "params"]]))
        if theta.shape[1] != study.model.num_params(K, K1):
            raise ValueError(f"fits.csv: the stored parameters of {K} components have {theta.shape[1]} entries, not the "
                             f"{study.model.num_params(K, K1)} of this model; is it this study's table?")
        params = jax.vmap(lambda t: study.model.unflatten(t, K, K1))(theta)
        pos = fits.index.get_indexer(idx)
        for name, loss in study.losses.items():
            scores[name][pos] = np.asarray(jax.vmap(lambda p: loss(study.model, p, study.truth))(params))
    for name, v in scores.items():
        out[f"loss_{name}"] = v
    return out[_columns(study)]


def _check_lab_table(study: LabStudy, columns: list):
    """The damage check of a lab study's ``fits.csv`` (``CellTable(check=...)``): readable, ``columns`` exactly, the
    last row complete (the writer ends every row with a newline, so a table cut mid-row is seen), every row's
    ``params`` holding its model's parameter count, and every cell exactly its replicates; what fails is dropped
    and named."""

    def check(path: Path):
        empty = pd.DataFrame(columns=columns)
        try:
            text = path.read_text()
        except UnicodeDecodeError as e:
            return empty, [f"unreadable as a table ({e})"]
        problems = []
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
            problems.append("its last row cut mid-way (dropped)")
        df, wrong = read_columns(io.StringIO(text), columns)
        if wrong:
            return empty, problems + wrong
        if not len(df):
            return df, problems
        K1 = df["num_shared"] if "num_shared" in df else pd.Series(0, index=df.index)
        want = [study.model.num_params(int(k), int(k1)) if pd.notna(k) and pd.notna(k1) else -1
                for k, k1 in zip(df["num_components"], K1)]
        bad = df["params"].astype(str).str.split().str.len().to_numpy() != np.asarray(want)
        sizes = df.groupby(LAB_CELL, sort=False)["replicate"].transform("size").to_numpy()
        cell_bad = pd.Series(bad | (sizes != study.replicates), index=df.index).groupby(
            [df[c] for c in LAB_CELL], sort=False).transform("any").to_numpy()
        if bad.any():
            problems.append(f"{int(bad.sum())} row(s) whose params do not hold their model's parameter count")
        if (sizes != study.replicates).any():
            problems.append(f"cells without exactly {study.replicates} rows")
        if cell_bad.any():
            problems[-1] += f" ({int(cell_bad.sum())} row(s) of those cells dropped)"
        return df[~cell_bad].reset_index(drop=True), problems

    return check


def _rescore_if_losses_changed(out: Path, study: LabStudy, log, repair: bool) -> None:
    """When config.json records other losses than ``study`` declares, score the finished fits by the declared
    ones (:func:`rescore`) before the run goes on. The table is first read through the damage check with the
    columns of the losses it was written with (:func:`moe_estimation.experiments.runner.load_cells`): a damaged
    one is refused with nothing changed, unless ``repair`` (its damaged cells are then dropped and fitted anew)."""
    cfg, fits_path = out / "config.json", out / "fits.csv"
    if not (cfg.is_file() and fits_path.is_file()):
        return
    old = json.loads(cfg.read_text()).get("study", {})
    if old.get("loss") == study.table.get("loss"):
        return
    columns = _columns(study, old.get("loss") or DEFAULT_LOSS)
    recorded = CellTable(fits_path, columns, LAB_CELL, study.replicates, check=_check_lab_table(study, columns))
    load_cells(recorded, repair=repair, log=log)
    fits = recorded.frame()
    if not len(fits):
        return
    write_csv(fits_path, rescore(fits, study))
    log(f"{out}: the declared losses differ from config.json's; the {len(fits)} finished fits are scored by "
        f"{sorted(study.losses)} from their stored parameters (nothing refitted)")


def run_lab_study(study: LabStudy, out, *, progress: bool = True, log=print, workers=1, tables_only: bool = False,
                  repair: bool = False) -> pd.DataFrame:
    """Run (or resume) a lab study into ``out``: ``fits.csv`` after every cell, ``rates.csv``, ``config.json`` and
    ``runs.jsonl`` (module docstring). A damaged ``fits.csv`` is refused unless ``repair``, as every study's
    (:mod:`moe_estimation.experiments.runner`). Returns the fits."""
    if not jax.config.jax_enable_x64:
        raise ValueError("run_lab_study: estimation runs in float64; call jax.config.update('jax_enable_x64', True) first")
    out = make_out_dir(out)
    workers = resolve_workers(workers)
    with StudyLock(out, log=log):
        check_same_study(out, study.table, what="lab study", reread=("rates", "loss"), log=log)
        _rescore_if_losses_changed(out, study, log, repair)
        table = CellTable(out / "fits.csv", _columns(study), LAB_CELL, study.replicates,
                          check=_check_lab_table(study, _columns(study)))
        finished = {(s, int(m)) for s, m in load_cells(table, repair=repair, log=log)}
        write_config(out / "config.json", dict(study=study.table, versions=versions(), platform=platform.platform()),
                     ("versions", "platform"))
        cells = [(spec, n) for spec in study.specifications for n in sorted(study.ns, reverse=True)]
        if tables_only and not finished:
            raise ValueError(f"--tables-only: {out} holds no finished cell yet")
        todo = [] if tables_only else [c for c in cells if c not in finished]
        run_log = RunLog(out / "runs.jsonl")
        run_log.append("start", versions=versions(), platform=platform.platform(), cells_finished_before=len(finished),
                       cells_to_fit=len(todo), tables_only=tables_only, repair=repair, workers=workers)

        def rows(cell, result):
            (spec, n), (res, scores, seconds) = cell, result
            s = study.settings(spec)
            theta = np.asarray(jax.vmap(study.model.flatten)(res.params))
            shared = {"num_shared": s.num_shared} if study.model.shared is not None else {}
            return {"specification": spec, "num_components": s.num_components, **shared, "n": n,
                    "replicate": np.arange(study.replicates), "seed": study.seed, "estimator": study.estimator,
                    "init": s.init, "init_scale": float(s.init_scale), "restarts": s.restarts,
                    **{f"loss_{k}": v for k, v in scores.items()}, "objective": res.objective,
                    "converged": res.converged, "status": [STATUS_LABELS[int(c)] for c in res.status],
                    "steps": res.steps, "seconds": seconds,
                    "params": [" ".join(f"{x:.17g}" for x in t) for t in theta]}

        fit_missing(table, todo, total=len(finished) + len(todo), work=lab_cell, args=lambda c: (study, *c), rows=rows,
                    describe=lambda c: f"{c[0]} n={c[1]}", cost=lambda c: c[1], workers=workers, progress=progress,
                    log=log)
        fits = table.frame()
        order = {s: i for i, s in enumerate(study.specifications)}
        fits = fits.assign(_s=fits["specification"].map(order)).sort_values(["_s", "n", "replicate"]).drop(columns="_s")
        fits = fits.reset_index(drop=True)
        table.write(fits)
        write_csv(out / "rates.csv", lab_rates(fits, study))
        run_log.append("end", cells_fitted=len(todo))
        return fits


def lab_rates(fits: pd.DataFrame, study: LabStudy) -> pd.DataFrame:
    """One row per (specification, loss, statistic): the slope over the rate window with its bootstrap interval,
    as every study's rates (:func:`moe_estimation.experiments.results.rate_entries`), and the fits not converged."""
    out = []
    window = fits[(fits["n"] >= study.n_min) & (fits["n"] <= study.n_max)]
    for spec, g in window.groupby("specification", sort=False):
        for name in study.losses:
            ns, mat = loss_matrix(g, f"loss_{name}", replicate="replicate")
            for e in rate_entries(ns, mat, num_bootstrap=study.num_bootstrap, seed=study.seed):
                out.append(dict(specification=spec, num_components=int(g["num_components"].iloc[0]), loss=name,
                                statistic=e["statistic"], slope=e["slope"], ci_low=e["ci_low"], ci_high=e["ci_high"],
                                theory_slope=study.theory[name].get(spec, np.nan),  # as the configuration declares
                                n_min=int(ns.min()), n_max=int(ns.max()), replicates=study.replicates,
                                fits_not_converged=int((~g["converged"].astype(bool)).sum()),
                                mean_loss_at_n_max=float(np.nanmean(mat[-1])), note=e["note"]))
    return pd.DataFrame(out)
