"""A box-constrained Levenberg-Marquardt solver for least squares with few parameters and many residuals.

    minimise  F(theta) = 1/2 ||r(theta)||^2   over the box  lower <= theta <= upper

The caller supplies the residual structure as a function ``linearize(theta) -> Normal(F, g, H)`` with
g = J^T r and H = J^T J (P numbers and a P x P matrix, whatever the number of residuals);
:func:`normal_equations` builds one from a residual-and-Jacobian function, summing over row blocks when
asked. Each step holds the coordinates that sit on the box and are pushed outward by the gradient fixed,
solves the damped system ``(H + lambda diag(H)) delta = -g`` on the others by Cholesky, projects the
candidate ``theta + delta`` onto the box and accepts it when the actual reduction of F is a fair share
of the predicted one; the damping follows Nielsen's rule. The solve is one ``lax.while_loop``: traceable,
``vmap``-able (a solve that has stopped stays frozen while the rest of its batch runs on) and ``jit``-able.

Stopping tests (those of MINPACK, as in ``scipy.optimize.least_squares(method="lm")``), in
:class:`SolverSettings`:

- ``ftol``: the actual and the predicted relative reductions of F both at most ftol;
- ``xtol``: an accepted step no longer than ``xtol * (xtol + ||theta||)``;
- ``gtol``: the largest cosine between the residual and a free column of J at most gtol (a column is not
  free when its coordinate sits on the box and the gradient pushes it outward).

The same solver minimises an objective that is not a sum of squares when its caller supplies a model Hessian
(the lab's maximum likelihood: the negative log-likelihood with the outer product of the per-row scores). Such an
objective can be negative (a density above one), so the relative tests take its size |F| where a sum of squares
has F itself: for F > 0 nothing changes, and an objective that is 0 or below is never read as an exact fit.

The outcome is a :class:`Status`; :func:`is_converged` is the one test of convergence in the project.
"""

from __future__ import annotations

import enum
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp


class Status(enum.IntEnum):
    """Why a solve stopped. The tables of a study write :attr:`label` (``"ftol"``, ``"max_steps"``...)."""

    RUNNING = 0  #: not stopped (never returned by a finished solve)
    FTOL = 1  #: converged: relative reduction of the objective below ftol
    XTOL = 2  #: converged: relative step below xtol
    GTOL = 3  #: converged: residual orthogonal to the free Jacobian columns within gtol
    MAX_STEPS = 4  #: used every step allowed, not converged
    STALLED = 5  #: the damping blew up (lambda > 1e16) without an accepted step, not converged
    NONFINITE = 6  #: the result holds a NaN or an inf (set by the estimator, never by the solver itself)

    @property
    def label(self) -> str:
        return self.name.lower()

    @property
    def converged(self) -> bool:
        return bool(is_converged(int(self)))

    @classmethod
    def from_label(cls, label: str) -> Status:
        try:
            return cls[label.upper()]
        except KeyError:
            raise ValueError(f"status: expected one of {[s.label for s in cls]}, got {label!r}") from None


STATUS_LABELS = tuple(s.label for s in Status)


def is_converged(status):
    """True for the stopping codes of a converged solve (ftol, xtol, gtol); works on ints and arrays of
    codes, traced or not."""
    return (status >= Status.FTOL) & (status <= Status.GTOL)


class SolverSettings(NamedTuple):
    """Stopping rules and step of :func:`solve` (hashable: a static argument under ``jit``).

    ``active_set``: coordinates on the box whose gradient pushes them outward are held fixed and the damped
    system is solved on the others (a projected Newton step). ``False`` solves the full system and clips the
    candidate onto the box, the step of this package before version 0.2: with a bound active it crawls (the
    step is computed for a coordinate that cannot move) and can meet the ftol test far from the constrained
    minimum; kept only to reproduce tables made with it."""

    max_steps: int = 400
    ftol: float = 1e-8
    xtol: float = 1e-8
    gtol: float = 1e-8
    active_set: bool = True


class Normal(NamedTuple):
    """The least-squares problem linearised at theta: ``F = 1/2 ||r||^2``, ``g = J^T r``, ``H = J^T J``."""

    F: jax.Array
    g: jax.Array
    H: jax.Array


class Solution(NamedTuple):
    """value: the final theta; objective: F = 1/2 ||r||^2 there; status: a :class:`Status` code (int
    array); steps: the number of steps taken."""

    value: jax.Array
    objective: jax.Array
    status: jax.Array
    steps: jax.Array


# ------------------------------------------------------------------------------------------------
# execution: batching and row blocks

BATCHINGS = ("auto", "vmap", "map")
BLOCKINGS = ("auto", "whole", "blocks")
AUTO_BLOCK_FROM = 32768
"""With ``blocking="auto"``, rows are summed in blocks on a CPU above this many rows. ``moe-estimation bench
--step`` times both paths at large shapes in one run (README, *Performance*): at 32768 rows and below the
gain was 1.3x or less, so those shapes keep the whole-array path. Accelerators keep the whole-array path:
one big kernel is what they want."""


def resolve_batching(mode: str) -> str:
    """``auto`` -> ``map`` on a CPU, ``vmap`` on an accelerator; ``vmap`` and ``map`` unchanged."""
    if mode not in BATCHINGS:
        raise ValueError(f"batching: expected one of {BATCHINGS}, got {mode!r}")
    if mode == "auto":
        return "map" if jax.default_backend() == "cpu" else "vmap"
    return mode


def batch_map(f: Callable, xs, mode: str):
    """Apply f over the leading axis of the pytree ``xs``: ``vmap`` (all in lockstep: what an accelerator
    wants) or ``map`` (one after another, each stopping on its own: what a CPU wants, where lockstep wastes
    the steps of solves that have already stopped); ``auto`` picks by the default backend."""
    return jax.vmap(f)(xs) if resolve_batching(mode) == "vmap" else jax.lax.map(f, xs)


def resolve_blocking(mode: str, rows: int) -> bool:
    """Whether ``rows`` rows are summed in blocks: ``blocks`` always, ``whole`` never, ``auto`` on a CPU
    above :data:`AUTO_BLOCK_FROM` rows."""
    if mode not in BLOCKINGS:
        raise ValueError(f"blocking: expected one of {BLOCKINGS}, got {mode!r}")
    if mode == "auto":
        return jax.default_backend() == "cpu" and rows > AUTO_BLOCK_FROM
    return mode == "blocks"


def row_blocks(data, block_rows: int):
    """The pytree ``data`` (every leaf with the rows on its last axis) as ``ceil(rows / block_rows)`` blocks on a
    new leading axis, the last block padded with zero rows. The residual function must give zero residuals
    and Jacobian rows on zero rows (a weight leaf of zeros does it)."""
    rows = jax.tree.leaves(data)[0].shape[-1]
    nb = -(-rows // block_rows)
    pad = nb * block_rows - rows
    data = jax.tree.map(lambda a: jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(0, pad)]), data)
    return jax.tree.map(lambda a: jnp.moveaxis(a.reshape(a.shape[:-1] + (nb, block_rows)), -2, 0), data)


def normal_equations(residual_jacobian: Callable, data, *, block_rows: int | None = None) -> Callable:
    """``theta -> Normal(F, g, H)`` from ``residual_jacobian(data, theta) -> (r, J)``, with r of any shape and
    J of shape ``(P,) + r.shape``. With ``block_rows``, ``data``'s leaves hold the rows on their last axis and
    F, g, H are summed over blocks of that many rows in a ``lax.scan`` (the Jacobian of one block stays in
    cache instead of the whole of it going through memory); the blocks are made here, once."""

    def whole(d, theta):
        r, J = residual_jacobian(d, theta)
        Jm = J.reshape(J.shape[0], -1)
        rv = r.reshape(-1)
        return Normal(0.5 * rv @ rv, Jm @ rv, Jm @ Jm.T)

    if block_rows is None:
        return lambda theta: whole(data, theta)
    blocks = row_blocks(data, block_rows)

    def blocked(theta):
        P = theta.shape[0]
        zero = Normal(jnp.zeros((), theta.dtype), jnp.zeros(P, theta.dtype), jnp.zeros((P, P), theta.dtype))
        add = lambda acc, block: (jax.tree.map(jnp.add, acc, whole(block, theta)), None)
        return jax.lax.scan(add, zero, blocks)[0]

    return blocked


# ------------------------------------------------------------------------------------------------
# the solve


class _State(NamedTuple):
    theta: jax.Array
    F: jax.Array
    g: jax.Array
    H: jax.Array
    lam: jax.Array
    nu: jax.Array
    steps: jax.Array
    status: jax.Array


def _check_box(theta0, lower, upper) -> None:
    """Eager checks of :func:`solve`'s start and box (skipped for traced values)."""
    if any(isinstance(x, jax.core.Tracer) for x in (theta0, lower, upper)):
        return
    t, lo, hi = (jnp.asarray(x) for x in (theta0, lower, upper))
    if t.ndim != 1 or lo.shape != t.shape or hi.shape != t.shape:
        raise ValueError(f"Shape mismatch in lower, upper: expected the start's shape {t.shape}, got {lo.shape} and "
                         f"{hi.shape}")
    if bool(jnp.any(lo > hi)):
        i = int(jnp.argmax(lo > hi))
        raise ValueError(f"lower, upper: every lower bound must be <= its upper bound, got lower[{i}] = {float(lo[i])} > "
                         f"upper[{i}] = {float(hi[i])}")
    if not bool(jnp.all(jnp.isfinite(t))):
        raise ValueError("theta0: the start must be finite, got NaN or inf")


def solve(linearize: Callable, theta0: jax.Array, lower: jax.Array, upper: jax.Array,
          settings: SolverSettings = SolverSettings()) -> Solution:
    """Minimise 1/2 ||r(theta)||^2 over the box [lower, upper] from ``theta0`` (assumed inside it).

    Args:
      linearize: ``theta -> Normal(F, g, H)`` (see :func:`normal_equations`).
      theta0: the start, ``(P,)``; projected onto the box (a start outside it begins at its nearest point).
      lower, upper: the box, ``(P,)`` each, lower <= upper.
      settings: the stopping rules.

    Returns a :class:`Solution`; traceable and vmappable. Called with concrete arrays, it raises
    ``ValueError`` for shapes that disagree, a box with some lower bound above its upper bound, or a
    non-finite start (under ``jit`` or ``vmap`` these cannot be checked: a box with lower > upper then
    gives a solution with status ``stalled`` and 0 steps, never a converged one).
    """
    _check_box(theta0, lower, upper)
    empty = jnp.any(lower > upper)
    theta0 = jnp.clip(theta0, lower, upper)
    F0, g0, H0 = linearize(theta0)
    tiny = jnp.finfo(theta0.dtype).tiny
    eps = jnp.finfo(theta0.dtype).eps

    def held(theta, g):  # on the box, and pushed outward by the gradient
        return ((theta <= lower) & (g > 0)) | ((theta >= upper) & (g < 0))

    def free_gradient(theta, g):
        return jnp.where(held(theta, g), 0.0, g)

    def gtol_met(theta, F, g, H):  # |F|: an objective that is not a sum of squares can be negative (module docstring)
        gf = free_gradient(theta, g)
        size = jnp.abs(F)
        cos = jnp.abs(gf) / (jnp.sqrt(jnp.maximum(jnp.diag(H), tiny)) * jnp.sqrt(jnp.maximum(2 * size, tiny)))
        return (jnp.max(cos) <= settings.gtol) | (size <= tiny)

    def body(s: _State) -> _State:
        D = jnp.maximum(jnp.diag(s.H), eps * jnp.max(jnp.diag(s.H)) + tiny)
        if settings.active_set:  # coordinates on the box pushed outward stay put; the step is solved on the rest
            free = ~held(s.theta, s.g)
            both = free[:, None] & free[None, :]
            A = jnp.where(both, s.H + s.lam * jnp.diag(D), jnp.diag(jnp.where(free, 0.0, 1.0)))
            chol = jnp.linalg.cholesky(A)
            delta = -jax.scipy.linalg.cho_solve((chol, True), jnp.where(free, s.g, 0.0))
        else:
            chol = jnp.linalg.cholesky(s.H + s.lam * jnp.diag(D))
            delta = -jax.scipy.linalg.cho_solve((chol, True), s.g)
        cand = jnp.clip(s.theta + delta, lower, upper)
        step = cand - s.theta
        F1, g1, H1 = linearize(cand)
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
        Fs = jnp.maximum(jnp.abs(s.F), tiny)
        ftol = accept & (jnp.abs(actual) <= settings.ftol * Fs) & (pred <= settings.ftol * Fs) & (rho <= 2)
        xtol = accept & (jnp.linalg.norm(step) <= settings.xtol * (settings.xtol + jnp.linalg.norm(theta)))
        gtol = accept & gtol_met(theta, F, g, H)
        status = jnp.select(
            [ftol, xtol, gtol, lam > 1e16, steps >= settings.max_steps],
            [Status.FTOL, Status.XTOL, Status.GTOL, Status.STALLED, Status.MAX_STEPS],
            Status.RUNNING,
        )
        new = _State(theta, F, g, H, lam, nu, steps, status)
        # a solve that has stopped stays frozen while the rest of its batch runs on
        return jax.tree.map(lambda a, b: jnp.where(s.status == Status.RUNNING, a, b), new, s)

    status0 = jnp.where(empty, Status.STALLED, jnp.where(gtol_met(theta0, F0, g0, H0), Status.GTOL, Status.RUNNING))
    s0 = _State(theta0, F0, g0, H0, jnp.asarray(1e-3, theta0.dtype), jnp.asarray(2.0, theta0.dtype), jnp.asarray(0),
                status0)
    s = jax.lax.while_loop(lambda s: s.status == Status.RUNNING, body, s0)
    return Solution(s.theta, s.F, s.status, s.steps)


# ------------------------------------------------------------------------------------------------
# the best of several starts: what every estimator of the project does with its restarts


class Best(NamedTuple):
    """The best of several solves: ``value`` (its theta), ``objective`` (per row), ``status`` (NONFINITE when the
    best holds a NaN or an inf, whatever its stopping test said), ``steps``, ``index`` (which start) and
    ``objectives`` (every start's, per row)."""

    value: jax.Array
    objective: jax.Array
    status: jax.Array
    steps: jax.Array
    index: jax.Array
    objectives: jax.Array


def solve_starts(linearize: Callable, starts: jax.Array, lower: jax.Array, upper: jax.Array, settings: SolverSettings,
                 batching: str, per_row: Callable) -> Best:
    """One solve (:func:`solve`) from each row of ``starts`` ``(R, P)`` (one after another or in lockstep, as
    ``batching`` says: :func:`batch_map`), each one's objective made per row by ``per_row(F)``, and the best by it
    (a NaN or inf objective ranks last). The one restart rule of the prefix estimator and the lab's; traceable."""
    sol = batch_map(lambda t0: solve(linearize, t0, lower, upper, settings), starts, batching)
    obj = per_row(sol.objective)
    best = jnp.argmin(jnp.where(jnp.isfinite(obj), obj, jnp.inf))
    theta = sol.value[best]
    finite = jnp.isfinite(obj[best]) & jnp.all(jnp.isfinite(theta))
    return Best(theta, obj[best], jnp.where(finite, sol.status[best], Status.NONFINITE), sol.steps[best], best, obj)
