"""The least-squares estimator of the mixing measure (docs/maths.md, *The regression model*).

    G_hat = argmin over measures with L' atoms in the box of  sum_i ||Y_i - f_G(X_i)||^2

Solver: a projected Levenberg-Marquardt on the small normal equations. The parameter vector theta (the
L' atoms and L' biases, tens of numbers) is tiny and the residual vector (n * d_v) long, so each step
forms J^T J (P x P) and J^T r from the closed-form Jacobian (``_jacobian_analytic``; the tests check it
against forward-mode autodiff), summed over row blocks for large n on the CPU, solves the damped system
``(J^T J + lambda diag(J^T J)) delta = -J^T r`` by Cholesky, and projects the candidate onto the box
[-atom_bound, atom_bound] x [bias_lo, bias_hi] (the compact parameter set of the theory: without it the
over-specified non-shared fit is unbounded; docs/maths.md, *Identifiability and the flat direction*).
Damping follows Nielsen's rule. Each fit is a ``lax.while_loop``; replicates and restarts run one after
another on a CPU (``lax.map``) and in lockstep under ``vmap`` on an accelerator (``FitSettings.batching``),
a fit that has stopped frozen while the rest of its batch runs on.

Stopping (the MINPACK tests, as in ``scipy.optimize.least_squares(method="lm")``):

- ``ftol``: actual and predicted relative reductions of the objective both below ftol;
- ``xtol``: an accepted step shorter than ``xtol * (xtol + ||theta||)``;
- ``gtol``: the largest cosine between the residual and a free Jacobian column below gtol.

A fit that meets one of these has ``converged = True``. One that used ``max_steps`` steps, or whose
damping blew up without progress (``stalled``), or whose best restart holds a NaN or inf (``nonfinite``:
every restart's objective overflowed, say for data of absurd scale), has ``converged = False`` and keeps
its status code, so that a study can count it instead of averaging it in silently.

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

from ._checks import check_data
from .model import Params, expert_summary, regression_from_summary
from .structures import key_value

INITS = ("near-truth", "random")
STATUS = {0: "running", 1: "ftol", 2: "xtol", 3: "gtol", 4: "max_steps", 5: "stalled", 6: "nonfinite"}
_FTOL, _XTOL, _GTOL, _MAXSTEPS, _STALLED, _NONFINITE = 1, 2, 3, 4, 5, 6


class FitSettings(NamedTuple):
    """Static settings of the estimator (hashable, so a change of settings is a new compilation).

    These defaults are the project's one source of them: ``fit``, ``fit_batch``, a study configuration
    (its ``[fit]`` table and schedules) and the benchmark all start from them, and a preset states only
    the values where it differs (``max_steps = 600`` for the full study, say). Every check of a field is
    :func:`validate_settings`, which the configuration calls too."""

    num_prompts: int
    restarts: int = 4
    init: str = "near-truth"
    init_scale: float = 0.5
    init_rate: float = 0.25
    max_steps: int = 400
    ftol: float = 1e-8
    xtol: float = 1e-8
    gtol: float = 1e-8
    batching: str = "auto"


BATCHINGS = ("auto", "vmap", "map")


def is_converged(status):
    """True for the stopping codes of a converged fit (ftol, xtol, gtol); works on arrays of codes."""
    return (status >= _FTOL) & (status <= _GTOL)


def _resolve_batching(mode: str) -> str:
    """``auto`` -> ``map`` on a CPU, ``vmap`` on an accelerator; other modes unchanged."""
    if mode == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return mode


def _batch(f, xs, mode: str):
    """Apply f over the leading axis: ``vmap`` (all fits in lockstep: what an accelerator wants) or ``map``
    (one fit after another, each stopping on its own: what a CPU wants, where lockstep only wastes the
    steps of fits that have already stopped). ``auto`` picks by the default backend."""
    mode = _resolve_batching(mode)
    return jax.vmap(f)(xs) if mode == "vmap" else jax.lax.map(f, xs)


class FitResult(NamedTuple):
    """The estimate and how it was reached (one fit; fields gain a leading axis when batched).

    params: the best restart's :class:`Params`.
    objective: its mean squared residual ``(1/n) sum_i ||Y_i - f_G(X_i)||^2``.
    converged: True when it stopped on ftol, xtol or gtol; False on the step limit or a stall.
    status: the stopping code, a key of ``moe_estimation.fit.STATUS``.
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


def _flatten(p: Params) -> jax.Array:
    return jnp.concatenate([p.atoms.ravel(), p.biases])


def _unflatten(theta: jax.Array, num_prompts: int, atom_dim: int) -> Params:
    k = num_prompts * atom_dim
    return Params(theta[:k].reshape(num_prompts, atom_dim), theta[k:])


def _box(problem, num_prompts: int, dtype) -> tuple[jax.Array, jax.Array]:
    k = num_prompts * problem.atom_dim
    lo, hi = problem.bias_bounds
    b = problem.atom_bound
    lower = jnp.concatenate([jnp.full(k, -b, dtype), jnp.full(num_prompts, lo, dtype)])
    upper = jnp.concatenate([jnp.full(k, b, dtype), jnp.full(num_prompts, hi, dtype)])
    return lower, upper


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
    dtype = problem.true_atoms.dtype
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
    lower, upper = _box(problem, Lp, dtype)
    return _unflatten(jnp.clip(_flatten(Params(atoms, biases)), lower, upper), Lp, D)


# ------------------------------------------------------------------------------------------------
# one Levenberg-Marquardt solve


class _State(NamedTuple):
    theta: jax.Array
    F: jax.Array  # 0.5 * ||r||^2
    g: jax.Array  # J^T r
    H: jax.Array  # J^T J
    lam: jax.Array
    nu: jax.Array
    steps: jax.Array
    status: jax.Array


# The data of one fit travel sample-last, ``(X^T (d, n), Y^T (d_v, n), w (n,), lse (n,), mean^T (d_v, n))``:
# with the long axis innermost the CPU vectorises over samples, and J comes out as ``(P, d_v, n)`` so
# that J^T J is one matrix product.


def _jacobian_autodiff(problem, settings, data, theta):
    """Residuals r ``(d_v, n)`` and Jacobian J ``(P, d_v, n)`` by forward-mode autodiff (the reference)."""
    Xt, Yt, w, lse, meant = data
    f = jax.vmap(regression_from_summary, in_axes=(None, None, 0, 0, 0))

    def residual(t):
        p = _unflatten(t, settings.num_prompts, problem.atom_dim)
        return (f(problem, p, Xt.T, lse, meant.T).T - Yt) * w

    r, jvp = jax.linearize(residual, theta)
    return r, jax.vmap(jvp)(jnp.eye(theta.shape[0], dtype=theta.dtype))


def _jacobian_analytic(problem, settings, data, theta):
    """Residuals and Jacobian in closed form. With gates pi = softmax(lse, k_i^T x + b_i) and
    f = pi_0 mean + sum_i pi_i v_i:  df/db_i = pi_i (v_i - f),
    df/da_i = pi_i (v_i - f) x^T dk_i/da_i + pi_i dv_i/da_i,  where the per-atom Jacobians dk/da, dv/da
    come from autodiff once per step (they do not depend on the sample)."""
    Xt, Yt, w, lse, meant = data
    p = _unflatten(theta, settings.num_prompts, problem.atom_dim)
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


# Above BLOCK_FROM rows (on the CPU), F, g and H are accumulated over blocks of BLOCK_ROWS rows in a
# ``lax.scan``, so that the Jacobian of a block, (P, d_v, 2048) numbers, stays in cache instead of the whole
# (P, d_v, n) going through memory (the rows are padded with zero-weight rows to whole blocks, once per fit).
# `moe-estimation bench --step` times both paths at the large shapes in one run (README, performance). At
# 32768 rows and below the gain we saw was 1.3x or less, and the threshold keeps those shapes on the
# whole-array path, so the tables of studies up to n = 32768 are unchanged by it. Accelerators keep the
# whole-array path: one big kernel is what they want.
BLOCK_ROWS = 2048
BLOCK_FROM = 32768


def _linearize_whole(problem, settings, data, theta, jacobian=_jacobian_analytic):
    r, J = jacobian(problem, settings, data, theta)
    Jm = J.reshape(J.shape[0], -1)
    rv = r.reshape(-1)
    return 0.5 * rv @ rv, Jm @ rv, Jm @ Jm.T


def _num_blocks(rows: int) -> int:
    """1 (the whole-array path) or the number of row blocks that ``_row_blocks`` makes."""
    if jax.default_backend() != "cpu" or rows <= BLOCK_FROM:
        return 1
    return -(-rows // BLOCK_ROWS)


def _row_blocks(data):
    """The data of one fit as row blocks with a leading block axis, padded with zero-weight rows; or the data
    unchanged when the whole-array path is faster."""
    rows = data[2].shape[0]
    nb = _num_blocks(rows)
    if nb == 1:
        return data
    pad = nb * BLOCK_ROWS - rows
    data = jax.tree.map(lambda a: jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)]), data)  # w = 0 on padding
    return jax.tree.map(lambda a: jnp.moveaxis(a.reshape(a.shape[:-1] + (nb, BLOCK_ROWS)), -2, 0), data)


def _linearize_blocks(problem, settings, blocks, theta, jacobian=_jacobian_analytic):
    if blocks[2].ndim == 1:  # not blocked
        return _linearize_whole(problem, settings, blocks, theta, jacobian)

    def add(acc, block):
        return jax.tree.map(jnp.add, acc, _linearize_whole(problem, settings, block, theta, jacobian)), None

    P = theta.shape[0]
    zero = (jnp.zeros((), theta.dtype), jnp.zeros(P, theta.dtype), jnp.zeros((P, P), theta.dtype))
    return jax.lax.scan(add, zero, blocks)[0]


def _linearize(problem, settings, data, theta, jacobian=_jacobian_analytic):
    """F = 0.5 ||r||^2, g = J^T r, H = J^T J at theta, with r the masked residuals (rows summed in
    blocks when that is faster; see ``BLOCK_ROWS``)."""
    return _linearize_blocks(problem, settings, _row_blocks(data), theta, jacobian)


def _solve_one(problem, settings: FitSettings, data, theta0):
    lower, upper = _box(problem, settings.num_prompts, theta0.dtype)
    lin = partial(_linearize_blocks, problem, settings, _row_blocks(data))  # blocked once, not per step
    F0, g0, H0 = lin(theta0)
    tiny = jnp.finfo(theta0.dtype).tiny
    eps = jnp.finfo(theta0.dtype).eps

    def free_gradient(theta, g):
        blocked = ((theta <= lower) & (g > 0)) | ((theta >= upper) & (g < 0))
        return jnp.where(blocked, 0.0, g)

    def gtol_met(theta, F, g, H):
        gf = free_gradient(theta, g)
        cos = jnp.abs(gf) / (jnp.sqrt(jnp.maximum(jnp.diag(H), tiny)) * jnp.sqrt(jnp.maximum(2 * F, tiny)))
        return (jnp.max(cos) <= settings.gtol) | (F <= tiny)

    def body(s: _State) -> _State:
        D = jnp.maximum(jnp.diag(s.H), eps * jnp.max(jnp.diag(s.H)) + tiny)
        A = s.H + s.lam * jnp.diag(D)
        chol = jnp.linalg.cholesky(A)
        delta = -jax.scipy.linalg.cho_solve((chol, True), s.g)
        cand = jnp.clip(s.theta + delta, lower, upper)
        step = cand - s.theta
        F1, g1, H1 = lin(cand)
        pred = -(step @ s.g + 0.5 * step @ (s.H @ step))
        actual = s.F - F1
        ok = jnp.isfinite(F1) & jnp.all(jnp.isfinite(delta)) & (pred > 0)
        rho = jnp.where(ok, actual / jnp.where(pred > 0, pred, 1.0), -1.0)
        accept = ok & (rho > 1e-4)
        # Nielsen's damping update
        lam = jnp.where(accept, s.lam * jnp.maximum(1 / 3, 1 - (2 * rho - 1) ** 3), s.lam * s.nu)
        nu = jnp.where(accept, 2.0, 2 * s.nu)
        theta = jnp.where(accept, cand, s.theta)
        F = jnp.where(accept, F1, s.F)
        g = jnp.where(accept, g1, s.g)
        H = jnp.where(accept, H1, s.H)
        steps = s.steps + 1
        Fs = jnp.maximum(s.F, tiny)
        ftol = accept & (jnp.abs(actual) <= settings.ftol * Fs) & (pred <= settings.ftol * Fs) & (rho <= 2)
        xtol = accept & (jnp.linalg.norm(step) <= settings.xtol * (settings.xtol + jnp.linalg.norm(theta)))
        gtol = accept & gtol_met(theta, F, g, H)
        status = jnp.select(
            [ftol, xtol, gtol, lam > 1e16, steps >= settings.max_steps],
            [_FTOL, _XTOL, _GTOL, _STALLED, _MAXSTEPS],
            0,
        )
        new = _State(theta, F, g, H, lam, nu, steps, status)
        # a fit that has stopped stays frozen while the rest of the batch runs on
        return jax.tree.map(lambda a, b: jnp.where(s.status == 0, a, b), new, s)

    status0 = jnp.where(gtol_met(theta0, F0, g0, H0), _GTOL, 0)
    s0 = _State(theta0, F0, g0, H0, jnp.asarray(1e-3, theta0.dtype), jnp.asarray(2.0, theta0.dtype), jnp.asarray(0), status0)
    s = jax.lax.while_loop(lambda s: s.status == 0, body, s0)
    return s.theta, s.F, s.status, s.steps


# ------------------------------------------------------------------------------------------------
# batched entry points


def _fit_one_dataset(problem, settings: FitSettings, key, X, Y, w, start):
    """One data set, every restart; ``start`` is the ``(init_scale, init_rate)`` array of :func:`split_start`."""
    n_eff = jnp.sum(w)
    starts = jax.vmap(lambda r: _flatten(initial_params(jax.random.fold_in(key, r), problem, settings, n_eff, start)))(
        jnp.arange(settings.restarts)
    )
    lse, mean = jax.vmap(expert_summary, in_axes=(None, 0))(problem, X)  # once per data set
    data = (X.T, Y.T, w, lse, mean.T)
    theta, F, status, steps = _batch(lambda t0: _solve_one(problem, settings, data, t0), starts, settings.batching)
    obj = 2 * F / n_eff
    obj_rank = jnp.where(jnp.isfinite(obj), obj, jnp.inf)
    best = jnp.argmin(obj_rank)
    lower, upper = _box(problem, settings.num_prompts, theta.dtype)
    tb = theta[best]
    # a result with a NaN or inf in it is never reported as converged, whatever its stopping test said
    finite = jnp.isfinite(obj[best]) & jnp.all(jnp.isfinite(tb))
    code = jnp.where(finite, status[best], _NONFINITE)
    return FitResult(
        params=_unflatten(tb, settings.num_prompts, problem.atom_dim),
        objective=obj[best],
        converged=is_converged(code),
        status=code,
        steps=steps[best],
        at_bound=jnp.any((tb <= lower) | (tb >= upper)),
        restart_objectives=obj,
        start=_unflatten(starts[best], settings.num_prompts, problem.atom_dim),
    )


@partial(jax.jit, static_argnames=("settings",))
def _fit_batch_jit(problem, keys, X, Y, w, start, settings: FitSettings) -> FitResult:
    return _batch(lambda a: _fit_one_dataset(problem, settings, *a, start), (keys, X, Y, w), settings.batching)


def fit_batch(keys, problem, X, Y, num_prompts: int, *, mask=None, **options) -> FitResult:
    """Fit R data sets at once: ``keys`` ``(R,)``, X ``(R, m, d)``, Y ``(R, m, d_v)``.

    ``mask`` ``(R, m)`` (1 for a real row, 0 for padding) lets data sets of different sizes share one
    padded shape, hence one compilation. ``options`` are the fields of :class:`FitSettings`. Every field
    of the returned :class:`FitResult` has a leading axis R.
    """
    settings = FitSettings(num_prompts=num_prompts, **options)
    _validate_settings(problem, settings)
    if problem.true_atoms.dtype != jnp.float64:
        warnings.warn(
            f"fitting in {problem.true_atoms.dtype}: fits stall short of the float64 optimum, and over-specified "
            "losses differ from float64 ones by tens of percent (`moe-estimation bench --precision`); call "
            "jax.config.update('jax_enable_x64', True) before building the problem", stacklevel=2)
    check_data(problem, X, Y, batched=True)
    X = jnp.asarray(X, problem.true_atoms.dtype)
    Y = jnp.asarray(Y, problem.true_atoms.dtype)
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
    out = fit_batch(jnp.asarray(key)[None], problem, jnp.asarray(X)[None], jnp.asarray(Y)[None], num_prompts, **options)
    return jax.tree.map(lambda a: a[0], out)
