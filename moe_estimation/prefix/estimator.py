"""The least-squares estimator of the mixing measure (docs/maths.md, *The regression model*).

    G_hat = argmin over measures with L' atoms in the box of  sum_i ||Y_i - f_G(X_i)||^2

Solver: the projected Levenberg-Marquardt of :mod:`moe_estimation.solver` on the small normal equations.
The parameter vector theta (the L' atoms and L' biases, tens of numbers; :func:`flatten_params`) is tiny
and the residual vector (n * d_v) long, so each step forms J^T J (P x P) and J^T r from the closed-form
Jacobian (:func:`residuals_and_jacobian`; the tests check it against forward-mode autodiff), summed over
row blocks for large n on the CPU (``FitSettings.blocking``, ``block_rows``), and keeps theta in the box
[-atom_bound, atom_bound] x [bias_lo, bias_hi] (:func:`box`: the compact parameter set of the theory;
without it the over-specified non-shared fit is unbounded; docs/maths.md, *Identifiability and the flat
direction*). Replicates and restarts run one after another on a CPU (``lax.map``) and in lockstep under
``vmap`` on an accelerator (``FitSettings.batching``).

Stopping: the MINPACK tests ``ftol``, ``xtol``, ``gtol`` of :mod:`moe_estimation.solver`. A fit that meets
one of them has ``converged = True``. One that used ``max_steps`` steps, or whose damping blew up without
progress (``Status.STALLED``), or whose best restart holds a NaN or inf (``Status.NONFINITE``: every
restart's objective overflowed, say for data of absurd scale), has ``converged = False`` and keeps its
:class:`~moe_estimation.solver.Status`, so that a study can count it instead of averaging it in silently.

Layers, for a user who wants less than :func:`fit`: :func:`fit_dataset` (one data set, every restart,
traceable: put it inside your own ``jit``), :func:`solve_dataset` (one solve from a given start),
:func:`linearization` and :func:`residuals_and_jacobian` (the residual structure).

Starting points (the *starting-point schedule*; docs/maths.md, *Starting-point schedules*), recorded in
:class:`FitResult` and, in a study, per fit in ``fits.csv``:

- ``near-truth`` with scale c = ``init_scale`` and rate alpha = ``init_rate``: fitted atom i starts at true
  atom ``i mod L`` (every true atom covered; the extra atoms of an over-specified fit split from a true
  atom, the weight exp(b*_j) shared equally between the atoms of its cell), plus Gaussian noise of
  standard deviation ``c * n^(-alpha)`` on every coordinate and bias. alpha = 1/4 (the default) and 1/12
  are the schedules of peer rate studies; they move the start toward the truth as n grows. alpha = 0 is
  a fixed scale. Along a flat direction of the objective the fit stays roughly where it started, so a
  shrinking schedule can manufacture a decay that the estimator does not have: never let it carry a
  conclusion alone.
- ``random`` over a region of the box: atoms uniform in ``[-c, c] * atom_bound`` and biases uniform in the
  middle fraction c of the bias interval, with c = ``init_scale`` in (0, 1] (c = 1: the whole box). It does
  not know the truth, and with enough ``restarts`` approximates the global least-squares estimate.
  ``init_rate`` does not apply to it.

Restart r of a fit starts from ``fold_in(key, r)``: a fit with more restarts sees the same first starts.
The best of ``restarts`` starts (by final objective) is returned, with its starting point.
"""

from __future__ import annotations

import warnings
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_data
from .model import Params, expert_summary, regression_from_summary
from ..solver import (
    BATCHINGS,
    BLOCKINGS,
    Solution,
    SolverSettings,
    batch_map,
    is_converged,
    normal_equations,
    resolve_blocking,
    solve,
    solve_starts,
)
from .structures import key_value

INITS = ("near-truth", "random")


class FitSettings(NamedTuple):
    """Static settings of the estimator (hashable, so a change of settings is a new compilation).

    These defaults are the project's one source of them: ``fit``, ``fit_batch``, a study configuration
    (its ``[fit]`` table and schedules) and the benchmark all start from them, and a preset states only
    the values where it differs (``max_steps = 600`` for the full study, say). Every check of a field is
    :func:`validate_settings`, which the configuration calls too.

    num_prompts: L', the number of fitted prompts.
    restarts, init, init_scale, init_rate: the starting-point schedule (module docstring).
    max_steps, ftol, xtol, gtol, active_set: the stopping rules and the step
      (:class:`moe_estimation.solver.SolverSettings`).
    batching: ``"auto"``, ``"vmap"`` or ``"map"``: how restarts and data sets of a batch run
      (:func:`moe_estimation.solver.batch_map`; auto: map on a CPU, vmap on an accelerator).
    blocking, block_rows: ``"auto"``, ``"whole"`` or ``"blocks"``: whether J^T J and J^T r are summed over
      blocks of ``block_rows`` rows (:func:`moe_estimation.solver.resolve_blocking`; auto: on a CPU above
      32768 rows). Batching and blocking change the order of floating-point sums, not the algorithm.
    """

    num_prompts: int
    restarts: int = 4
    init: str = "near-truth"
    init_scale: float = 0.5
    init_rate: float = 0.25
    max_steps: int = 400
    ftol: float = 1e-8
    xtol: float = 1e-8
    gtol: float = 1e-8
    active_set: bool = True
    batching: str = "auto"
    blocking: str = "auto"
    block_rows: int = 2048


def solver_settings(settings: FitSettings) -> SolverSettings:
    """The stopping rules of ``settings``, as :func:`moe_estimation.solver.solve` takes them."""
    return SolverSettings(**{k: getattr(settings, k) for k in SolverSettings._fields})


class FitResult(NamedTuple):
    """The estimate and how it was reached (one fit; fields gain a leading axis when batched).

    params: the best restart's :class:`Params`.
    objective: its mean squared residual ``(1/n) sum_i ||Y_i - f_G(X_i)||^2``.
    converged: True when it stopped on ftol, xtol or gtol; False on the step limit or a stall.
    status: the stopping code, a :class:`moe_estimation.solver.Status` (an int array; ``Status(int(code))``
      names it).
    steps: the number of LM steps it took.
    at_bound: True when some parameter sits on the box boundary.
    restart_objectives: the final objective of every restart, ``(restarts,)``.
    start: the starting point of the best restart (:class:`Params`), after projection onto the box.
    """

    params: Params
    objective: jax.Array
    converged: jax.Array
    status: jax.Array
    steps: jax.Array
    at_bound: jax.Array
    restart_objectives: jax.Array
    start: Params


def check_residuals(problem, num_prompts: int, n: int, name: str = "n") -> None:
    """A data set of ``n`` rows gives n d_v residuals; a fit of ``num_prompts`` prompts has
    num_prompts (atom_dim + 1) parameters. With fewer residuals than parameters the least-squares problem has
    a continuum of exact solutions and its "converged" would mean nothing: ``ValueError`` naming ``name``."""
    P = num_prompts * (problem.atom_dim + 1)
    if n * problem.d_v < P:
        raise ValueError(f"{name}: a data set of {n} rows gives {n * problem.d_v} residuals (n d_v, d_v = {problem.d_v}), "
                         f"fewer than the {P} parameters of {num_prompts} prompts ({problem.atom_dim} atom coordinates "
                         f"and a bias each): the fit is not determined; use n >= {-(-P // problem.d_v)}")


def _validate_settings(problem, s: FitSettings) -> None:
    L = problem.num_true_prompts
    if isinstance(s.num_prompts, bool) or not isinstance(s.num_prompts, (int, np.integer)) or s.num_prompts < L:
        raise ValueError(
            f"num_prompts: must be an integer >= L = {L}, the number of true prompts (L' = L exactly specified,"
            f" L' > L over-specified), got {s.num_prompts!r}"
        )
    validate_settings(s)


def validate_settings(s: FitSettings) -> None:
    """Check every field of ``s`` but ``num_prompts`` (which needs the problem); ``ValueError`` naming the
    field, the value and the rule."""
    if s.batching not in BATCHINGS:
        raise ValueError(f"batching: expected one of {BATCHINGS}, got {s.batching!r}")
    if not isinstance(s.active_set, (bool, np.bool_)):
        raise ValueError(f"active_set: must be True or False, got {s.active_set!r}")
    if s.blocking not in BLOCKINGS:
        raise ValueError(f"blocking: expected one of {BLOCKINGS}, got {s.blocking!r}")
    if isinstance(s.block_rows, bool) or not (isinstance(s.block_rows, (int, np.integer)) and s.block_rows >= 1):
        raise ValueError(f"block_rows: must be an integer >= 1, got {s.block_rows!r}")
    if s.init not in INITS:
        raise ValueError(f"init: expected one of {INITS}, got {s.init!r}")
    if isinstance(s.restarts, bool) or not (isinstance(s.restarts, (int, np.integer)) and s.restarts >= 1):
        raise ValueError(f"restarts: must be an integer >= 1, got {s.restarts!r}")
    if isinstance(s.max_steps, bool) or not (isinstance(s.max_steps, (int, np.integer)) and s.max_steps >= 1):
        raise ValueError(f"max_steps: must be an integer >= 1, got {s.max_steps!r}")
    for name in ("init_scale", "init_rate", "ftol", "xtol", "gtol"):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not (np.isfinite(v) and v >= 0):
            raise ValueError(f"{name}: must be a finite number >= 0, got {v!r}")
    if s.init == "random" and not 0 < s.init_scale <= 1:
        raise ValueError(
            f"init_scale: with init='random' it is the fraction of the box that starts are drawn from, in (0, 1],"
            f" got {s.init_scale!r}"
        )


# ------------------------------------------------------------------------------------------------
# parameter vector <-> Params, box


def flatten_params(p: Params) -> jax.Array:
    """The flat parameter vector theta of the solver: the atoms row by row, then the biases."""
    return jnp.concatenate([p.atoms.ravel(), p.biases])


def unflatten_params(theta: jax.Array, num_prompts: int, atom_dim: int) -> Params:
    """The inverse of :func:`flatten_params`."""
    k = num_prompts * atom_dim
    return Params(theta[:k].reshape(num_prompts, atom_dim), theta[k:])


def box(problem, num_prompts: int, dtype) -> tuple[jax.Array, jax.Array]:
    """The box of theta, ``(lower, upper)``: atoms in ``[-atom_bound, atom_bound]``, biases in ``bias_bounds``."""
    k = num_prompts * problem.atom_dim
    lo, hi = problem.bias_bounds
    b = problem.atom_bound
    lower = jnp.concatenate([jnp.full(k, -b, dtype), jnp.full(num_prompts, lo, dtype)])
    upper = jnp.concatenate([jnp.full(k, b, dtype), jnp.full(num_prompts, hi, dtype)])
    return lower, upper


def bound_coordinates(problem, params: Params) -> list[str]:
    """Which coordinates of fitted ``params`` sit on the box (one fit, or a batch with a leading axis):
    per fit a list of names, ``b{i}`` for prompt i's bias and ``p{i}[j]`` for coordinate j of its atom
    (prompts counted from 0 in the order fitted), each followed by ``-`` on the lower bound or ``+`` on the
    upper; ``"none"`` when no coordinate is on the box. The ``at_bound`` of :class:`FitResult` is true
    exactly when this is not ``"none"``. Host-side (numpy)."""
    atoms, biases = np.asarray(params.atoms), np.asarray(params.biases)
    batched = biases.ndim == 2
    atoms, biases = (atoms, biases) if batched else (atoms[None], biases[None])
    num_prompts, D = atoms.shape[1:]
    lower, upper = (np.asarray(a) for a in box(problem, num_prompts, atoms.dtype))
    names = [f"p{i}[{j}]" for i in range(num_prompts) for j in range(D)] + [f"b{i}" for i in range(num_prompts)]
    out = []
    for theta in np.concatenate([atoms.reshape(len(atoms), -1), biases], axis=1):
        hit = [name + ("-" if t <= lo else "+") for name, t, lo, hi in zip(names, theta, lower, upper)
               if t <= lo or t >= hi]
        out.append(" ".join(hit) if hit else "none")
    return out if batched else out[0]


def start_scale(settings: FitSettings, n_eff, start=None):
    """The standard deviation of a near-truth start's noise at sample size n: ``init_scale * n^(-init_rate)``
    (``start``: those two as traced values, see :func:`split_start`)."""
    c, rate = (settings.init_scale, settings.init_rate) if start is None else (start[0], start[1])
    return c * n_eff ** (-rate)


def split_start(settings: FitSettings) -> tuple[FitSettings, jax.Array]:
    """The settings with the start's scale and rate taken out, and those two as an array: compiled code then
    depends on the kind of start (``init``, ``restarts``) only, so that schedules differing in scale or
    rate share one compilation."""
    return settings._replace(init_scale=-1.0, init_rate=-1.0), jnp.asarray([settings.init_scale, settings.init_rate])


def initial_params(key: jax.Array, problem, settings: FitSettings, n_eff: jax.Array, start=None) -> Params:
    """One starting point of ``settings``' schedule (see the module docstring) for a data set of ``n_eff``
    rows, projected onto the box; traceable. ``start`` ``(init_scale, init_rate)``, traced values, replaces
    those two fields of ``settings`` (see :func:`split_start`)."""
    Lp, L, D = settings.num_prompts, problem.num_true_prompts, problem.atom_dim
    ka, kb = jax.random.split(key)
    dtype = problem.dtype
    if settings.init == "near-truth":
        assign = np.arange(Lp) % L
        share = np.bincount(assign, minlength=L)[assign]
        scale = start_scale(settings, jnp.asarray(n_eff, dtype), start)
        atoms = problem.true_atoms[assign] + scale * jax.random.normal(ka, (Lp, D), dtype)
        biases = problem.true_biases[assign] - jnp.log(share.astype(dtype)) + scale * jax.random.normal(kb, (Lp,), dtype)
    else:
        c = settings.init_scale if start is None else start[0]  # the fraction of the box
        lo, hi = problem.bias_bounds
        mid, half = (lo + hi) / 2, c * (hi - lo) / 2
        atoms = jax.random.uniform(ka, (Lp, D), dtype, -c * problem.atom_bound, c * problem.atom_bound)
        biases = jax.random.uniform(kb, (Lp,), dtype, mid - half, mid + half)
    lower, upper = box(problem, Lp, dtype)
    return unflatten_params(jnp.clip(flatten_params(Params(atoms, biases)), lower, upper), Lp, D)


# ------------------------------------------------------------------------------------------------
# the residual structure of one data set


def prepare_data(problem, X, Y, w) -> tuple:
    """One data set as the residual function takes it: ``(X^T (d, n), Y^T (d_v, n), w (n,), lse (n,),
    mean^T (d_v, n))``, with the frozen experts' summary (``lse``, ``mean``) computed once. Rows travel
    last: the CPU then vectorises over samples, and J comes out as ``(P, d_v, n)``, so that J^T J is one
    matrix product. ``w`` is 1 on a real row and 0 on padding."""
    lse, mean = jax.vmap(expert_summary, in_axes=(None, 0))(problem, X)
    return (X.T, Y.T, w, lse, mean.T)


def residuals_and_jacobian(problem, num_prompts: int, data, theta, *, autodiff: bool = False):
    """Residuals r ``(d_v, n)`` (``(f_G(X) - Y) w``) and Jacobian J ``(P, d_v, n)`` at the flat parameter
    vector theta, for data from :func:`prepare_data`.

    In closed form (the default): with gates pi = softmax(lse, k_i^T x + b_i) and
    f = pi_0 mean + sum_i pi_i v_i,  df/db_i = pi_i (v_i - f) and
    df/da_i = pi_i (v_i - f) x^T dk_i/da_i + pi_i dv_i/da_i, where the per-atom Jacobians dk/da, dv/da come
    from autodiff once per step (they do not depend on the sample). ``autodiff=True``: by forward-mode
    autodiff of the regression function (the reference the tests check the closed form against)."""
    Xt, Yt, w, lse, meant = data
    if autodiff:
        f = jax.vmap(regression_from_summary, in_axes=(None, None, 0, 0, 0))

        def residual(t):
            return (f(problem, unflatten_params(t, num_prompts, problem.atom_dim), Xt.T, lse, meant.T).T - Yt) * w

        r, jvp = jax.linearize(residual, theta)
        return r, jax.vmap(jvp)(jnp.eye(theta.shape[0], dtype=theta.dtype))
    p = unflatten_params(theta, num_prompts, problem.atom_dim)
    kv_one = lambda a: tuple(x[0] for x in key_value(problem, a[None]))
    K, V = key_value(problem, p.atoms)  # (L', d), (L', d_v)
    Jk, Jv = jax.vmap(jax.jacfwd(kv_one))(p.atoms)  # (L', d, D), (L', d_v, D)
    s = K @ Xt + p.biases[:, None]  # (L', n)
    m = jnp.maximum(jnp.max(s, axis=0), lse)
    e0, e = jnp.exp(lse - m), jnp.exp(s - m)
    den = e0 + jnp.sum(e, axis=0)
    pi0, pi = e0 / den, e / den  # (n,), (L', n)
    f = pi0 * meant + V.T @ pi  # (d_v, n)
    G = pi[:, None, :] * (V[:, :, None] - f[None])  # (L', d_v, n) = df/db
    xk = jnp.einsum("ldD,dn->lDn", Jk, Xt)  # (L', D, n)
    Ja = G[:, None] * xk[:, :, None] + pi[:, None, None, :] * jnp.transpose(Jv, (0, 2, 1))[..., None]  # (L', D, d_v, n)
    Lp, D, dv, n = Ja.shape
    J = jnp.concatenate([Ja.reshape(Lp * D, dv, n), G], axis=0)
    return (f - Yt) * w, J * w


def linearization(problem, settings: FitSettings, data):
    """``theta -> Normal(F, g, H)`` for one data set (from :func:`prepare_data`), summed in row blocks of
    ``settings.block_rows`` when ``settings.blocking`` asks for them (:func:`moe_estimation.solver.resolve_blocking`)."""
    rows = data[2].shape[-1]
    block_rows = settings.block_rows if resolve_blocking(settings.blocking, rows) else None
    rj = lambda d, theta: residuals_and_jacobian(problem, settings.num_prompts, d, theta)
    return normal_equations(rj, data, block_rows=block_rows)


def solve_dataset(problem, settings: FitSettings, data, theta0) -> Solution:
    """One projected Levenberg-Marquardt solve (:func:`moe_estimation.solver.solve`) of one data set from the
    flat start ``theta0``, in the problem's box; traceable."""
    lower, upper = box(problem, settings.num_prompts, theta0.dtype)
    return solve(linearization(problem, settings, data), theta0, lower, upper, solver_settings(settings))


# ------------------------------------------------------------------------------------------------
# batched entry points


def fit_dataset(key, problem, settings: FitSettings, X, Y, w, start=None) -> FitResult:
    """One data set ``X`` ``(m, d)``, ``Y`` ``(m, d_v)`` with row weights ``w`` ``(m,)`` (1: a real row, 0:
    padding), every restart of ``settings``; the best restart is returned. Traceable (no checks: validate
    the settings with :func:`validate_settings` and the data yourself, or call :func:`fit_batch`).
    ``start``: the ``(init_scale, init_rate)`` array of :func:`split_start`, when those two are traced."""
    n_eff = jnp.sum(w)
    starts = jax.vmap(lambda r: flatten_params(initial_params(jax.random.fold_in(key, r), problem, settings, n_eff,
                                                              start)))(jnp.arange(settings.restarts))
    data = prepare_data(problem, X, Y, w)  # the frozen experts' summary once per data set
    lower, upper = box(problem, settings.num_prompts, starts.dtype)
    # the restart rule every estimator shares (a NaN or inf result is never reported as converged)
    best = solve_starts(linearization(problem, settings, data), starts, lower, upper, solver_settings(settings),
                        settings.batching, lambda F: 2 * F / n_eff)
    tb = best.value
    return FitResult(
        params=unflatten_params(tb, settings.num_prompts, problem.atom_dim),
        objective=best.objective,
        converged=is_converged(best.status),
        status=best.status,
        steps=best.steps,
        at_bound=jnp.any((tb <= lower) | (tb >= upper)),
        restart_objectives=best.objectives,
        start=unflatten_params(starts[best.index], settings.num_prompts, problem.atom_dim),
    )


@partial(jax.jit, static_argnames=("settings",))
def _fit_batch_jit(problem, keys, X, Y, w, start, settings: FitSettings) -> FitResult:
    return batch_map(lambda a: fit_dataset(a[0], problem, settings, *a[1:], start), (keys, X, Y, w), settings.batching)


def fit_batch(keys, problem, X, Y, num_prompts: int, *, mask=None, **options) -> FitResult:
    """Fit R data sets at once: ``keys`` ``(R,)``, X ``(R, m, d)``, Y ``(R, m, d_v)``.

    ``mask`` ``(R, m)`` (1 for a real row, 0 for padding) lets data sets of different sizes share one
    padded shape, hence one compilation. ``options`` are the fields of :class:`FitSettings`. Every field
    of the returned :class:`FitResult` has a leading axis R.
    """
    settings = FitSettings(num_prompts=num_prompts, **options)
    _validate_settings(problem, settings)
    if not (hasattr(keys, "dtype") and (jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key)
                                        or (keys.dtype == jnp.uint32 and jnp.ndim(keys) >= 2))):
        raise ValueError(f"keys: expected JAX PRNG keys (jax.random.split(jax.random.key(seed), R); for fit, one "
                         f"jax.random.key(seed)), got {type(keys).__name__} {keys!r:.60}")
    if problem.dtype != jnp.float64:
        warnings.warn(
            f"fitting in {problem.dtype}: fits stall short of the float64 optimum, and over-specified "
            "losses differ from float64 ones by tens of percent (`moe-estimation bench --precision`); build the "
            "problem with dtype='float64' (the default), after jax.config.update('jax_enable_x64', True)",
            stacklevel=2)
    check_data(problem, X, Y, batched=True)
    X = jnp.asarray(X, problem.dtype)
    Y = jnp.asarray(Y, problem.dtype)
    if jnp.ndim(keys) == 0 or len(keys) != X.shape[0]:
        raise ValueError(f"Shape mismatch in keys: expected one key per data set ({X.shape[0]},), got {jnp.shape(keys)}")
    if mask is None:
        mask = jnp.ones(X.shape[:2], X.dtype)
    else:
        raw = np.asarray(mask)
        if raw.shape != X.shape[:2]:
            raise ValueError(f"Shape mismatch in mask: expected {X.shape[:2]} (the rows of X), got {raw.shape}")
        if raw.dtype != bool and not np.all((raw == 0) | (raw == 1)):
            odd = raw[~((raw == 0) | (raw == 1))].ravel()[0]
            raise ValueError(f"mask: every entry must be 0 (padding) or 1 (a real row), got {odd!r}; it selects rows,"
                             " it does not weight them")
        mask = jnp.asarray(raw, X.dtype)
        if bool(jnp.any(mask.sum(axis=1) < 1)):
            raise ValueError("mask: every data set needs n >= 1 unmasked rows")
    check_residuals(problem, settings.num_prompts, int(jnp.min(mask.sum(axis=1))))
    static, start = split_start(settings)
    return _fit_batch_jit(problem, keys, X, Y, mask, start.astype(X.dtype), static)


def fit(key, problem, X, Y, num_prompts: int, **options) -> FitResult:
    """Least-squares fit of a mixing measure with ``num_prompts`` (L' >= L) atoms to one data set.

    Args:
      key: PRNG key for the starting points.
      problem: the :class:`moe_estimation.Problem` (its known part, structure and box).
      X: ``(n, d)`` inputs; Y: ``(n, d_v)`` outputs.
      num_prompts: L', the number of fitted prompts (L' = L exactly specified, L' > L over-specified).
      **options: ``restarts`` (4), ``init`` ("near-truth" or "random"), ``init_scale`` (0.5: the noise
        scale c of a near-truth start, or the fraction of the box of a random one), ``init_rate`` (0.25: a
        near-truth start's noise is ``c * n^(-init_rate)``; 0 for a fixed scale), ``max_steps`` (400),
        ``ftol``, ``xtol``, ``gtol`` (1e-8 each: the tests a study stops on), ``batching`` ("auto": one fit
        after another on a CPU, all in lockstep under vmap on an accelerator); see :class:`FitSettings`.

    Returns a :class:`FitResult`. Raises ``ValueError`` for shapes that disagree with the problem, NaN or
    inf in the data, L' < L, or bad options.
    """
    check_data(problem, X, Y)
    if not (hasattr(key, "dtype") and (jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
                                       or (key.dtype == jnp.uint32 and jnp.shape(key) == (2,)))):
        raise ValueError(f"key: expected a JAX PRNG key (jax.random.key(seed)), got {type(key).__name__} {key!r:.60}")
    out = fit_batch(jnp.asarray(key)[None], problem, jnp.asarray(X)[None], jnp.asarray(Y)[None], num_prompts, **options)
    return jax.tree.map(lambda a: a[0], out)
