"""The speed benchmark: our batched estimator against what a user would otherwise write.

On the same problem, the same simulated data sets and the same starting points (one start per fit),
with the same stopping tolerances (1e-8), it times:

- ``ours``: the batched projected Levenberg-Marquardt of :mod:`moe_estimation.fit`, vmapped over fits;
- ``scipy``: ``scipy.optimize.least_squares(method="lm")`` in a Python loop over fits, with a jitted JAX
  residual and a jitted forward-mode JAX Jacobian;
- ``optimistix``: ``optimistix.least_squares`` with ``LevenbergMarquardt`` (rtol = atol = 1e-8), jitted
  and vmapped over fits.

Every method is run once on the same shapes before it is timed, so compilation is not counted. The
problem is the over-specified shared-linear preset (L = 2, L' = 3, 9 parameters), started near the truth,
the case the rate study spends most of its time on. Speed counts only at equal objectives: the table
flags a method whose mean objective is worse than ours by more than a relative 1e-6.
"""

from __future__ import annotations

import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from .data import simulate_rows
from .fit import FitSettings, _flatten, _jacobian_autodiff, _solve_one, _unflatten, initial_params
from .model import expert_summary, predict
from .problems import preset

TOL = 1e-8
MAX_STEPS = 400


def _setup(n: int, fits: int, problem_name: str = "shared-linear", num_prompts: int = 3, seed: int = 0):
    prob = preset(problem_name)
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
            theta, F, status, steps = _solve_one(prob, settings, (x, y, w, lse, mean), t0)
            return theta, 2 * F / x.shape[0]

        return jax.vmap(one)(X, Y, theta0)

    return lambda: jax.block_until_ready(run(X, Y, theta0))[1]


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

    return lambda: jax.block_until_ready(run(X, Y, theta0))


METHODS = {"ours": _ours, "scipy": _scipy, "optimistix": _optimistix}


def run_bench(sizes=(1000, 8000, 100000), fits: int = 16, json_path=None, methods=("ours", "scipy", "optimistix"),
              log=print) -> list[dict]:
    """Time each method on each size; print a table; optionally write JSON records
    ``{shape, method, fits, seconds, fits_per_second, mean_objective}``."""
    records = []
    log(f"device: {jax.devices()[0]}, x64: {jax.config.jax_enable_x64}, fits per method: {fits}, tol: {TOL}")
    for n in sizes:
        prob, settings, X, Y, theta0 = _setup(n, fits)
        shape = f"shared-linear over L'=3 P=9 n={n}"
        for m in methods:
            run = METHODS[m](prob, settings, X, Y, theta0)
            run()  # compile / warm up on the same shapes
            t0 = time.perf_counter()
            obj = np.asarray(run())
            sec = time.perf_counter() - t0
            records.append(dict(shape=shape, n=n, method=m, fits=fits, seconds=sec, fits_per_second=fits / sec,
                                mean_objective=float(np.mean(obj))))
    log(f"{'shape':38s} {'method':11s} {'fits/s':>10s} {'ours x':>8s} {'mean objective':>20s}  equal?")
    for n in sizes:
        rows = [r for r in records if r["n"] == n]
        ours = next((r for r in rows if r["method"] == "ours"), None)
        for r in rows:
            speed = ours["fits_per_second"] / r["fits_per_second"] if ours else float("nan")
            rel = (r["mean_objective"] - ours["mean_objective"]) / ours["mean_objective"] if ours else 0.0
            r["ours_speedup"] = speed
            r["objective_rel_diff_vs_ours"] = rel
            ok = "yes" if rel >= -1e-6 else f"NO (ours worse by {-rel:.1e})"
            log(f"{r['shape']:38s} {r['method']:11s} {r['fits_per_second']:10.2f} {speed:8.1f} "
                f"{r['mean_objective']:20.12g}  {ok}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump(records, f, indent=2)
    return records
