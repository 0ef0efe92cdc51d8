"""The speed benchmark: our batched estimator against what a user would otherwise write.

``moe-estimation bench`` (:func:`run_bench`): on the same problem, the same simulated data sets and the
same starting points (one start per fit), with the same stopping tolerances (1e-8), it times:

- ``ours``: the batched projected Levenberg-Marquardt of :mod:`moe_estimation.solver` as the estimator runs it, vmapped over
  fits;
- ``scipy``: ``scipy.optimize.least_squares(method="lm")`` in a Python loop over fits, with a jitted JAX
  residual and a jitted forward-mode JAX Jacobian;
- ``optimistix``: ``optimistix.least_squares`` with ``LevenbergMarquardt`` (rtol = atol = 1e-8), jitted
  and vmapped over fits.

Every method is compiled ahead of the timed run (JAX's ahead-of-time ``lower().compile()``, and one call of
scipy's jitted residual and Jacobian), so compilation is not counted. The
problems are the over-specified shared-linear and non-shared presets (L = 2, L' = 3; 9 and 15
parameters), started near the truth: the fits the rate study spends most of its time on. The parameter box
is widened (atoms in [-30, 30], biases in [-30, 30]) so that it never binds: scipy's and optimistix's LM
are unconstrained, and all three must solve the same problem. Speed counts only at equal objectives: the table flags a method whose mean
objective is better than ours by more than a relative ``EQUAL_RTOL`` = 1e-4. Over-specified least
squares has flat valleys and several local minima, and different solvers stop at different points of
them (per fit, differences of a few parts per million either way); 1e-4 lies well below the statistical
resolution of the objective, about P / (2 n) relative (5.6e-4 for P = 9 at n = 8000), so a difference
under it changes no estimate that a study could see. The table also reports the worst per-fit difference.

``moe-estimation bench --step`` (:func:`run_step_bench`): one solver step of ours against its floor, the
bytes it must read over this device's measured bandwidth or its operations over the measured
matrix-product rate.

``moe-estimation bench --workers`` (:func:`run_workers_bench`): one study in one process against the same
study in pinned single-threaded worker processes, in one run, with the tables compared.

``moe-estimation bench --precision`` (:func:`run_precision_bench`): the same fits in float64 and float32.
"""

from __future__ import annotations

import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import least_squares

from .config import parse_config
from ..prefix.data import simulate_rows
from ..prefix.estimator import FitSettings, flatten_params, initial_params, prepare_data, solve_dataset, unflatten_params
from ..prefix.model import predict
from ..prefix.problems import preset
from ..solver import Status, batch_map, is_converged, resolve_batching, resolve_blocking
from .study import bucket_size, run_study
from ..prefix.voronoi import voronoi_loss
from .workers import default_workers

TOL = FitSettings._field_defaults["ftol"]  # the estimator's own defaults, as a study runs it
EQUAL_RTOL = 1e-4
PROBLEMS = {"shared-linear": 3, "non-shared": 3}
MAX_STEPS = FitSettings._field_defaults["max_steps"]


def _setup(n: int, fits: int, problem_name: str = "shared-linear", num_prompts: int = 3, seed: int = 0):
    """The problem (box widened so that it never binds), settings, data and starting points of one shape."""
    prob = preset(problem_name).replace(atom_bound=30.0, bias_bounds=(-30.0, 30.0))
    settings = FitSettings(num_prompts=num_prompts, restarts=1, max_steps=MAX_STEPS, ftol=TOL, xtol=TOL, gtol=TOL)
    keys = jax.random.split(jax.random.key(seed), fits)
    X, Y = jax.vmap(lambda k: simulate_rows(prob, jax.random.fold_in(k, 0), n))(keys)
    theta0 = jax.vmap(lambda k: flatten_params(initial_params(jax.random.fold_in(k, 1), prob, settings,
                                                              jnp.asarray(float(n)))))(keys)
    return prob, settings, X, Y, theta0


def _compiled_solver(prob, settings, X, Y, theta0, n=None):
    """Our solver over a batch of fits as the study runs it (``settings.batching`` and ``blocking``), compiled
    ahead for these arrays: ``(X, Y, theta0) -> (theta, objective, status, steps)``, each with a leading fit
    axis. Rows from ``n`` on are padding (weight 0)."""
    rows = X.shape[1]
    n = rows if n is None else n

    @jax.jit
    def run(X, Y, theta0):
        def one(x, y, t0):
            w = (jnp.arange(rows) < n).astype(x.dtype)
            theta, F, status, steps = solve_dataset(prob, settings, prepare_data(prob, x, y, w), t0)
            return theta, 2 * F / jnp.sum(w), status, steps

        return batch_map(lambda a: one(*a), (X, Y, theta0), settings.batching)

    return run.lower(X, Y, theta0).compile()


def _write_json(path, records) -> None:
    if path:
        with open(path, "w") as f:
            json.dump(records, f, indent=2)


def _ours(prob, settings, X, Y, theta0):
    compiled = _compiled_solver(prob, settings, X, Y, theta0)  # compiled ahead: only the solve is timed
    return lambda: jax.block_until_ready(compiled(X, Y, theta0))[1]


def _residual_fn(prob, settings):
    def residual(theta, x, y):
        return (predict(prob, unflatten_params(theta, settings.num_prompts, prob.atom_dim), x) - y).ravel()

    return residual


def _scipy(prob, settings, X, Y, theta0):
    residual = _residual_fn(prob, settings)
    fun = jax.jit(residual)
    jac = jax.jit(jax.jacfwd(residual))
    Xs, Ys, T0 = (np.asarray(a) for a in (X, Y, theta0))
    jax.block_until_ready((fun(T0[0], Xs[0], Ys[0]), jac(T0[0], Xs[0], Ys[0])))  # compile ahead

    def run():
        objs = []
        for x, y, t0 in zip(Xs, Ys, T0):
            sol = least_squares(
                lambda t: np.asarray(fun(t, x, y)), t0, jac=lambda t: np.asarray(jac(t, x, y)), method="lm",
                ftol=TOL, xtol=TOL, gtol=TOL, max_nfev=MAX_STEPS * 10,
            )
            objs.append(2 * sol.cost / x.shape[0])
        return np.array(objs)

    return run


def _optimistix(prob, settings, X, Y, theta0):
    import optimistix as optx  # an optional dependency (the bench extra): imported only where used

    residual = _residual_fn(prob, settings)
    solver = optx.LevenbergMarquardt(rtol=TOL, atol=TOL)

    @jax.jit
    def run(X, Y, theta0):
        def one(x, y, t0):
            sol = optx.least_squares(lambda t, args: residual(t, *args), solver, t0, args=(x, y),
                                     max_steps=MAX_STEPS, throw=False)
            r = residual(sol.value, x, y)
            return jnp.sum(r * r) / x.shape[0]

        return jax.vmap(one)(X, Y, theta0)

    compiled = run.lower(X, Y, theta0).compile()
    return lambda: jax.block_until_ready(compiled(X, Y, theta0))


METHODS = {"ours": _ours, "scipy": _scipy, "optimistix": _optimistix}


def run_bench(sizes=(1000, 8000, 100000), fits: int = 16, json_path=None, methods=("ours", "scipy", "optimistix"),
              problems=tuple(PROBLEMS), large_fits: int = 4, log=print) -> list[dict]:
    """Time each method on each (problem, size); print a table; optionally write JSON records
    ``{shape, method, fits, seconds, fits_per_second, mean_objective, ...}``. Sizes of 50,000 and more use
    ``large_fits`` fits (the same ones for every method): optimistix needs about a minute a fit there."""
    records = []
    log(f"device: {jax.devices()[0]}, x64: {jax.config.jax_enable_x64}, fits per method: {fits} "
        f"({large_fits} at n >= 50000), tol: {TOL}")
    for problem_name in problems:
        for n in sizes:
            num = PROBLEMS[problem_name]
            k = large_fits if n >= 50_000 else fits
            prob, settings, X, Y, theta0 = _setup(n, k, problem_name, num)
            shape = f"{problem_name} L'={num} P={num * (prob.atom_dim + 1)} n={n}"
            objs = {}
            for m in methods:
                run = METHODS[m](prob, settings, X, Y, theta0)  # compiles ahead; only solving is timed
                t0 = time.perf_counter()
                objs[m] = np.asarray(run())
                sec = time.perf_counter() - t0
                records.append(dict(shape=shape, problem=problem_name, n=n, method=m, fits=k, seconds=sec,
                                    fits_per_second=k / sec, mean_objective=float(np.mean(objs[m]))))
            if "ours" in objs:
                for r in records[-len(methods):]:
                    per_fit = (objs[r["method"]] - objs["ours"]) / objs["ours"]
                    r["worst_fit_rel_diff_vs_ours"] = float(per_fit.min())
    log(f"{'shape':34s} {'method':11s} {'fits/s':>9s} {'ours x':>7s} {'mean objective':>18s} {'worst fit':>10s}  equal?")
    for shape in dict.fromkeys(r["shape"] for r in records):
        rows = [r for r in records if r["shape"] == shape]
        ours = next((r for r in rows if r["method"] == "ours"), None)
        for r in rows:
            speed = ours["fits_per_second"] / r["fits_per_second"] if ours else float("nan")
            rel = (r["mean_objective"] - ours["mean_objective"]) / ours["mean_objective"] if ours else 0.0
            r["ours_speedup"] = speed
            r["objective_rel_diff_vs_ours"] = rel
            ok = "yes" if rel >= -EQUAL_RTOL else f"NO (ours worse by {-rel:.1e})"
            log(f"{shape:34s} {r['method']:11s} {r['fits_per_second']:9.2f} {speed:7.1f} {r['mean_objective']:18.12g}"
                f" {r.get('worst_fit_rel_diff_vs_ours', 0.0):10.1e}  {ok}")
    _write_json(json_path, records)
    return records


# ------------------------------------------------------------------------------------------------
# one solver step against its floor


def _measured_peaks(dtype) -> dict:
    """What this device can do, measured here: streaming bandwidth (a jitted sum over a large array: the
    bytes read over the time) and arithmetic rate (a jitted square matrix product in ``dtype``: 2 m^3 over
    the time). Both are best-of-5 after a compiled warm-up."""
    cpu = jax.default_backend() == "cpu"
    big = jnp.ones((1 << (25 if cpu else 28),), dtype)  # 256 MiB (CPU) or 2 GiB (accelerator) in float64
    m = 2048 if cpu else 8192
    A = jax.random.normal(jax.random.key(0), (m, m), dtype)
    total = jax.jit(jnp.sum)
    matmul = jax.jit(lambda a: a @ a)

    def best(f, x):
        jax.block_until_ready(f(x))
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            jax.block_until_ready(f(x))
            times.append(time.perf_counter() - t0)
        return min(times)

    return dict(bandwidth=big.nbytes / best(total, big), flops=2 * m**3 / best(matmul, A))


def step_floor(rows: int, num_params: int, d: int, d_v: int, itemsize: int) -> tuple[int, int]:
    """Bytes and floating-point operations that one Levenberg-Marquardt step of one fit cannot avoid.

    Bytes: the step must read the fit's data once, ``rows * (d + 2 d_v + 2)`` numbers (X, Y, the weights,
    and the experts' log-sum-exp and mixed output). Operations: forming J^T J (symmetric, P(P+1)/2 entries),
    J^T r and r^T r over ``rows * d_v`` residuals, two per multiply-add; building J itself, the exponentials
    and the P x P solve are left out, so the floor is a lower bound."""
    P = num_params
    return rows * (d + 2 * d_v + 2) * itemsize, rows * d_v * (P * (P + 1) + 2 * P + 2)


def _best_time(f, *args, repeat: int = 5) -> float:
    """The best of ``repeat`` timed calls of the compiled ``f`` after one warm-up call."""
    jax.block_until_ready(f(*args))
    best = np.inf
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        best = min(best, time.perf_counter() - t0)
    return best


def measured_step_floor(rows: int, num_params: int, num_prompts: int, d_v: int, dtype, block_rows: int | None = None
                        ) -> dict:
    """What one linearisation must do, each part timed alone on this device at the step's own shapes.

    - ``exp_seconds``: the gate exponentials, ``rows * (num_prompts + 1)`` of them (one per prompt and the
      frozen experts' block), timed as one jitted ``exp`` over that many numbers;
    - ``build_seconds``: writing the Jacobian, ``num_params * d_v * rows`` numbers, each at least one
      multiply of numbers already at hand, timed as the broadcast product of a ``(num_params, 1, rows)``
      and a ``(1, d_v, rows)`` array (the inputs are ``num_params + d_v`` numbers a row, the output the
      Jacobian's size);
    - ``product_seconds``: J J^T, J r and r r, the skinny product of a ``(num_params + 1, d_v * rows)``
      matrix with itself, timed at that shape (per block of ``block_rows`` rows, times the blocks, where the
      step sums in blocks).

    ``floor_seconds`` is their sum: a step cannot do less than this work at these measured rates unless
    its kernels are fused beyond what XLA does (the residual kernels, the build and the product in one
    pass over the rows, a custom CPU kernel). The old floor (:func:`step_floor`) leaves out the exponentials
    and the build and takes the square-matrix rate for the product; this one does not."""
    rows_b = rows if block_rows is None or block_rows >= rows else block_rows
    blocks = -(-rows // rows_b)
    key = jax.random.key(0)
    e = jax.random.uniform(key, (rows_b * (num_prompts + 1),), dtype)
    a = jax.random.uniform(jax.random.fold_in(key, 1), (num_params, 1, rows_b), dtype)
    b = jax.random.uniform(jax.random.fold_in(key, 2), (1, d_v, rows_b), dtype)
    M = jax.random.normal(key, (num_params + 1, d_v * rows_b), dtype)
    t_exp = _best_time(jax.jit(jnp.exp), e) * blocks
    t_build = _best_time(jax.jit(lambda a, b: a * b), a, b) * blocks
    t_prod = _best_time(jax.jit(lambda m: m @ m.T), M) * blocks
    return dict(exp_seconds=t_exp, build_seconds=t_build, product_seconds=t_prod,
                floor_seconds=t_exp + t_build + t_prod)


def run_step_bench(sizes=(1000, 8000, 100000), fits: int = 16, problems=tuple(PROBLEMS), steps: int = 20,
                   json_path=None, log=print) -> list[dict]:
    """Time one solver step as the study runs it (padded rows, the batching of ``FitSettings``) and set it
    against two floors: :func:`step_floor` (bytes over the measured bandwidth, or its operations over the
    measured square-matrix rate) and :func:`measured_step_floor` (the exponentials, the Jacobian build and
    the skinny product, each timed at the step's shapes on this device).

    Each fit runs ``steps`` Levenberg-Marquardt steps with the stopping tests switched off (best of three
    runs); the time per step is the time over the number of steps taken (the longest fit's under vmap, where
    the batch moves in lockstep; the total under map, where fits run one after another). Wherever the rows
    exceed one block (``FitSettings.block_rows``), the row-blocked and the whole-array paths are both timed,
    in the same run, and ``study_path`` says which one the study takes there
    (:data:`moe_estimation.solver.AUTO_BLOCK_FROM`). Records: ``{shape, rows, fits, batching, path,
    study_path, step_seconds, floor_seconds, floor_bound, times_floor, measured_floor_seconds,
    times_measured_floor, exp_seconds, build_seconds, product_seconds, gflops, gbytes_per_second, ...}``."""
    dtype = jnp.zeros(()).dtype
    peaks = _measured_peaks(dtype)
    log(f"device: {jax.devices()[0]}, dtype: {dtype}, measured streaming bandwidth {peaks['bandwidth'] / 1e9:.1f} GB/s, "
        f"matrix-product rate {peaks['flops'] / 1e9:.1f} GFLOP/s")
    records = []
    for problem_name in problems:
        for n in sizes:
            rows = bucket_size(n)
            prob, settings, X, Y, theta0 = _setup(rows, fits, problem_name, PROBLEMS[problem_name])
            settings = settings._replace(max_steps=steps, ftol=0.0, xtol=0.0, gtol=0.0)
            mode = resolve_batching(settings.batching)
            settings = settings._replace(batching=mode)
            study_path = "blocked" if resolve_blocking(settings.blocking, rows) else "whole"
            paths = ["blocked", "whole"] if rows > settings.block_rows else ["whole"]
            for path in paths:
                compiled = _compiled_solver(prob, settings._replace(blocking="blocks" if path == "blocked" else "whole"),
                                            X, Y, theta0, n=n)
                jax.block_until_ready(compiled(X, Y, theta0))
                sec = np.inf
                for _ in range(3):  # best of three
                    t0 = time.perf_counter()
                    taken = np.asarray(jax.block_until_ready(compiled(X, Y, theta0))[3])
                    sec = min(sec, time.perf_counter() - t0)
                # per step of the whole batch: lockstep -> the longest fit's steps; one after another -> per fit
                step_sec = sec / taken.max() if mode == "vmap" else sec / taken.sum()
                batch = fits if mode == "vmap" else 1
                P = theta0.shape[1]
                nbytes, nflops = step_floor(rows, P, prob.d, prob.d_v, X.dtype.itemsize)
                nbytes, nflops = nbytes * batch, nflops * batch
                t_mem, t_ops = nbytes / peaks["bandwidth"], nflops / peaks["flops"]
                floor = max(t_mem, t_ops)
                measured = measured_step_floor(rows * batch, P, PROBLEMS[problem_name], prob.d_v, X.dtype,
                                               settings.block_rows if path == "blocked" else None)
                rec = dict(shape=f"{problem_name} P={P} n={n} rows={rows}", problem=problem_name, n=n, rows=rows,
                           fits=fits, batching=mode, path=path, study_path=study_path, fits_per_step=batch,
                           steps_taken=int(taken.sum()), step_seconds=step_sec, floor_seconds=floor,
                           floor_bound="memory" if t_mem >= t_ops else "compute", times_floor=step_sec / floor,
                           measured_floor_seconds=measured["floor_seconds"],
                           times_measured_floor=step_sec / measured["floor_seconds"],
                           exp_seconds=measured["exp_seconds"], build_seconds=measured["build_seconds"],
                           product_seconds=measured["product_seconds"],
                           gflops=nflops / step_sec / 1e9, gbytes_per_second=nbytes / step_sec / 1e9,
                           device=str(jax.devices()[0]), measured_bandwidth=peaks["bandwidth"],
                           measured_flops=peaks["flops"])
                records.append(rec)
                mark = "*" if path == study_path else " "
                log(f"{rec['shape']:38s} {mode:4s} x{batch:<4d} {path:7s}{mark} step {step_sec * 1e3:9.3f} ms   "
                    f"floor {floor * 1e3:8.4f} ms x{rec['times_floor']:6.1f}   measured floor "
                    f"{measured['floor_seconds'] * 1e3:8.4f} ms x{rec['times_measured_floor']:5.1f} "
                    f"(exp {measured['exp_seconds'] * 1e3:.3f}, build {measured['build_seconds'] * 1e3:.3f}, "
                    f"product {measured['product_seconds'] * 1e3:.3f})")
    log("* the path the study takes at that size")
    _write_json(json_path, records)
    return records


# ------------------------------------------------------------------------------------------------
# a study in one process against the same study in worker processes

WORKERS_STUDY = dict(
    seed=0,
    grid=dict(ns=[4000, 5000, 6000, 8000], replicates=4, problems=["non-shared"], specifications=["over"]),
    fit=dict(init="random", init_scale=1.0, restarts=8),
    rates=dict(num_bootstrap=200),
)
"""The study :func:`run_workers_bench` times by default: over-specified non-shared fits at n = 4000 to
8000 from random starts, best of 8, 4 data sets a size (16 fits in 4 cells, so that two workers can share
them evenly: the fits a rate study spends most of its time on)."""


def _timed_study(cfg, out, workers: int, cache: str) -> tuple[float, "object"]:
    saved = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", cache)
    try:
        t0 = time.perf_counter()
        fits = run_study(cfg, out, progress=False, log=lambda *a: None, workers=workers)
        return time.perf_counter() - t0, fits
    finally:
        jax.config.update("jax_compilation_cache_dir", saved)


def run_workers_bench(workers: int | None = None, config: dict | None = None, json_path=None, log=print) -> list[dict]:
    """Run one study twice in this run, into fresh folders with fresh compilation caches: in this process
    with XLA's default threading (``workers = 1``), then in ``workers`` worker processes (default one per
    core) pinned to a core each with single-threaded XLA. Reports the wall time of each (compilation
    included: both compile the same programs, the workers each their own) and fits per second, and checks
    that the two tables agree in every column but ``seconds``. Records ``{side, workers, cells, fits,
    seconds, fits_per_second, speedup, same_table}``."""
    if not jax.config.jax_enable_x64:
        raise ValueError("bench --workers: a study runs in float64; the command line enables jax_enable_x64")
    cfg = parse_config(dict(config or WORKERS_STUDY), "bench --workers")
    workers = default_workers() if workers is None else workers
    if workers < 2:
        raise ValueError(f"bench --workers: needs 2 or more workers to compare with one process, got {workers} "
                         "(this machine offers one core)")
    fits_total = len(cfg.ns) * cfg.replicates * sum(len(cfg.specifications_of(p)) for p in cfg.problems) * len(
        cfg.schedules)
    log(f"device: {jax.devices()[0]}; {fits_total} fits; one process (default threading) against {workers} pinned "
        "single-threaded workers, in this run")
    records, tables = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for side, w in (("one process", 1), ("workers", workers)):
            sec, tables[side] = _timed_study(cfg, f"{tmp}/{w}", w, f"{tmp}/cache-{w}")
            records.append(dict(side=side, workers=w, fits=fits_total, seconds=sec, fits_per_second=fits_total / sec))
    a, b = (t.drop(columns="seconds").reset_index(drop=True) for t in tables.values())
    same = bool(a.equals(b))
    for r in records:
        r["speedup"] = r["fits_per_second"] / records[0]["fits_per_second"]
        r["same_table"] = same
        log(f"{r['side']:12s} workers {r['workers']:2d}  {r['seconds']:8.1f} s  {r['fits_per_second']:6.3f} fits/s  "
            f"x{r['speedup']:.2f}")
    log("the two tables agree in every column but seconds" if same else "THE TWO TABLES DIFFER")
    _write_json(json_path, records)
    return records


# ------------------------------------------------------------------------------------------------
# float32 against float64 on the same fits


def run_precision_bench(sizes=(1000, 8000), fits: int = 16, problems=tuple(PROBLEMS), json_path=None,
                        log=print) -> list[dict]:
    """Would float32 do? The same data sets (simulated in float64) and the same starting points are fitted
    in float64 and in float32, exactly and over-specified, with the study's tolerances and box; both
    estimates are scored in float64 with the structure's own Voronoi loss. Records per shape: fits that
    converged in each precision, the median and largest relative difference of the loss and of the
    objective, and the seconds each took. Needs ``jax_enable_x64``."""
    if not jax.config.jax_enable_x64:
        raise ValueError("bench --precision: needs jax_enable_x64 (float64 is the reference)")
    records = []
    log(f"device: {jax.devices()[0]}, fits per shape: {fits}, tolerances 1e-8, study box, one near-truth start per fit")
    for problem_name in problems:
        prob64 = preset(problem_name)
        prob32 = preset(problem_name, dtype="float32")
        for spec, num in (("exact", prob64.num_true_prompts), ("over", prob64.num_true_prompts + 1)):
            for n in sizes:
                settings = FitSettings(num_prompts=num, restarts=1, max_steps=600, ftol=TOL, xtol=TOL, gtol=TOL)
                keys = jax.random.split(jax.random.key(n), fits)
                X, Y = jax.vmap(lambda k: simulate_rows(prob64, jax.random.fold_in(k, 0), n))(keys)
                theta0 = jax.vmap(lambda k: flatten_params(initial_params(jax.random.fold_in(k, 1), prob64, settings,
                                                                     jnp.asarray(float(n)))))(keys)
                rec = dict(shape=f"{problem_name} {spec} L'={num} n={n}", problem=problem_name, specification=spec,
                           n=n, fits=fits)
                out = {}
                for name, prob in (("float64", prob64), ("float32", prob32)):
                    dt = prob.true_atoms.dtype
                    args = (X.astype(dt), Y.astype(dt), theta0.astype(dt))
                    compiled = _compiled_solver(prob, settings, *args)
                    t0 = time.perf_counter()
                    theta, obj, status, _ = jax.block_until_ready(compiled(*args))
                    rec[f"seconds_{name}"] = time.perf_counter() - t0
                    params = jax.vmap(lambda t: unflatten_params(t.astype(jnp.float64), num, prob64.atom_dim))(theta)
                    loss = np.asarray(jax.vmap(voronoi_loss, in_axes=(None, 0))(prob64, params))
                    st = np.asarray(status)
                    out[name] = (loss, np.asarray(obj, np.float64))
                    rec[f"converged_{name}"] = int(is_converged(st).sum())
                    rec[f"stalled_{name}"] = int((st == Status.STALLED).sum())
                rel_loss = np.abs(out["float32"][0] - out["float64"][0]) / out["float64"][0]
                rel_obj = np.abs(out["float32"][1] - out["float64"][1]) / out["float64"][1]
                rec.update(loss_rel_diff_median=float(np.median(rel_loss)), loss_rel_diff_max=float(rel_loss.max()),
                           objective_rel_diff_max=float(rel_obj.max()),
                           mean_loss_float64=float(out["float64"][0].mean()),
                           mean_loss_float32=float(out["float32"][0].mean()))
                records.append(rec)
                log(f"{rec['shape']:36s} converged f64 {rec['converged_float64']:3d} f32 {rec['converged_float32']:3d} "
                    f"(stalled {rec['stalled_float32']:3d})  loss rel diff median {rec['loss_rel_diff_median']:.1e} "
                    f"max {rec['loss_rel_diff_max']:.1e}  objective max {rec['objective_rel_diff_max']:.1e}  "
                    f"s f64 {rec['seconds_float64']:.2f} f32 {rec['seconds_float32']:.2f}")
    _write_json(json_path, records)
    return records
