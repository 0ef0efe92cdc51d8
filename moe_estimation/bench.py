"""The speed benchmark: our batched estimator against what a user would otherwise write.

On the same problem, the same simulated data sets and the same starting points (one start per fit),
with the same stopping tolerances (1e-8), it times:

- ``ours``: the batched projected Levenberg-Marquardt of :mod:`moe_estimation.fit`, vmapped over fits;
- ``scipy``: ``scipy.optimize.least_squares(method="lm")`` in a Python loop over fits, with a jitted JAX
  residual and a jitted forward-mode JAX Jacobian;
- ``optimistix``: ``optimistix.least_squares`` with ``LevenbergMarquardt`` (rtol = atol = 1e-8), jitted
  and vmapped over fits.

Every method is compiled ahead of the timed run (JAX's ahead-of-time ``lower().compile()``, and one call of
scipy's jitted residual and Jacobian), so compilation is not counted. The
problem is the over-specified shared-linear preset (L = 2, L' = 3, 9 parameters), started near the truth,
the case the rate study spends most of its time on. The parameter box is widened (atoms in [-30, 30],
biases in [-30, 30]) so that it never binds: scipy's and optimistix's LM are unconstrained, and all three
must solve the same problem. Speed counts only at equal objectives: the table flags a method whose mean
objective is better than ours by more than a relative ``EQUAL_RTOL`` = 1e-4. Over-specified least
squares has flat valleys and several local minima, and different solvers stop at different points of
them (per fit, differences of a few parts per million either way); 1e-4 lies well below the statistical
resolution of the objective, about P / (2 n) relative (5.6e-4 for P = 9 at n = 8000), so a difference
under it changes no estimate that a study could see. The table also reports the worst per-fit difference.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from .data import simulate_rows
from .fit import FitSettings, _batch, _flatten, _solve_one, _unflatten, initial_params
from .model import expert_summary, predict
from .problems import preset

TOL = 1e-8
EQUAL_RTOL = 1e-4
PROBLEMS = {"shared-linear": 3, "non-shared": 3}
MAX_STEPS = 400


def _setup(n: int, fits: int, problem_name: str = "shared-linear", num_prompts: int = 3, seed: int = 0):
    """The problem (box widened so that it never binds), settings, data and starting points of one shape."""
    prob = preset(problem_name).replace(atom_bound=30.0, bias_bounds=(-30.0, 30.0))
    settings = FitSettings(num_prompts=num_prompts, restarts=1, max_steps=MAX_STEPS, ftol=TOL, xtol=TOL, gtol=TOL)
    keys = jax.random.split(jax.random.key(seed), fits)
    X, Y = jax.vmap(lambda k: simulate_rows(prob, jax.random.fold_in(k, 0), n))(keys)
    theta0 = jax.vmap(lambda k: _flatten(initial_params(jax.random.fold_in(k, 1), prob, settings, jnp.asarray(float(n)))))(keys)
    return prob, settings, X, Y, theta0


def _ours(prob, settings, X, Y, theta0):
    @jax.jit
    def run(X, Y, theta0):
        def one(x, y, t0):
            w = jnp.ones(x.shape[0], x.dtype)
            lse, mean = jax.vmap(expert_summary, in_axes=(None, 0))(prob, x)
            theta, F, status, steps = _solve_one(prob, settings, (x.T, y.T, w, lse, mean.T), t0)
            return theta, 2 * F / x.shape[0]

        return _batch(lambda a: one(*a), (X, Y, theta0), settings.batching)

    compiled = run.lower(X, Y, theta0).compile()  # compile ahead: only the solve is timed
    return lambda: jax.block_until_ready(compiled(X, Y, theta0))[1]


def _residual_fn(prob, settings):
    def residual(theta, x, y):
        return (predict(prob, _unflatten(theta, settings.num_prompts, prob.atom_dim), x) - y).ravel()

    return residual


def _scipy(prob, settings, X, Y, theta0):
    from scipy.optimize import least_squares

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
    import optimistix as optx

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
    if json_path:
        with open(json_path, "w") as f:
            json.dump(records, f, indent=2)
    return records
