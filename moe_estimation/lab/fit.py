"""One estimator for every assembly (docs/maths.md, *The lab*).

Least squares minimises (1/2) sum_i ||Y_i - f(X_i)||^2 by Gauss-Newton; the Gaussian likelihood minimises the
negative log-likelihood sum_i -log p(Y_i | X_i) with the outer product of the per-sample scores as its model
Hessian (Fisher scoring in its empirical form, positive semi-definite by construction). Both go through the
project's box-constrained Levenberg-Marquardt solver (:func:`moe_estimation.solver.solve`), with every
derivative by forward- or reverse-mode autodiff of the one-sample functions of :mod:`moe_estimation.lab.model`,
so a new gate or expert needs no derivative written by hand. Where a closed form pays, it is a registered fast path
(:data:`FAST_PATHS`, :func:`register_fast_path`): the prefix model's assemblies (a prompt structure, with or
without a frozen block) use the closed-form Jacobian of :mod:`moe_estimation.prefix.estimator`, summed in row
blocks for large n, checked against autodiff in the tests; ``LabFitSettings.derivatives = "autodiff"`` turns fast
paths off. The starting-point schedules, restarts and statuses are the prefix estimator's, and the best-of-restarts
rule is the one every estimator shares (:func:`moe_estimation.solver.solve_starts`).

The reported ``objective`` is per row: the mean squared residual (1/n) sum_i ||Y_i - f(X_i)||^2 for least
squares, as in the prefix study, and the mean negative log-likelihood for the Gaussian likelihood.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ..prefix.estimator import INITS, FitSettings, prepare_data
from ..prefix.estimator import linearization as prefix_linearization
from ..solver import Normal, SolverSettings, batch_map, is_converged, normal_equations, solve_starts
from .model import Assembly, Mixture, log_density, mean


class LabFitSettings(NamedTuple):
    """num_components: K' (routed); num_shared: K1', the shared experts (0 unless the assembly has some).
    restarts, init (``random``: uniform over the fraction ``init_scale`` of the box; ``near-truth``: truth + Gaussian
    noise of sd ``init_scale * n^(-init_rate)`` on every parameter, extra components split from true ones; rate 0, the
    default, is a fixed scale, a positive rate the shrinking schedules of the published rate studies), and the
    solver's stopping rules (as :class:`moe_estimation.FitSettings`). derivatives: ``auto`` (a registered fast path
    where one applies, else autodiff) or ``autodiff``."""

    num_components: int
    num_shared: int = 0
    restarts: int = 8
    init: str = "random"
    init_scale: float = 0.5
    init_rate: float = 0.0
    max_steps: int = 400
    ftol: float = 1e-8
    xtol: float = 1e-8
    gtol: float = 1e-8
    batching: str = "auto"
    derivatives: str = "auto"


def check_settings(s: LabFitSettings) -> None:
    for name in ("num_components", "restarts", "max_steps"):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name}: must be an integer >= 1, got {v!r}")
    if s.init not in INITS and s.init not in STARTS:
        raise ValueError(f"init: expected one of {INITS + tuple(STARTS)}, got {s.init!r}")
    if s.derivatives not in DERIVATIVES:
        raise ValueError(f"derivatives: expected one of {DERIVATIVES}, got {s.derivatives!r}")
    for name in ("init_scale", "init_rate", "ftol", "xtol", "gtol"):
        v = getattr(s, name)
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and np.isfinite(v) and v >= 0):
            raise ValueError(f"{name}: must be a finite number >= 0, got {v!r}")
    if isinstance(s.num_shared, bool) or not isinstance(s.num_shared, (int, np.integer)) or s.num_shared < 0:
        raise ValueError(f"num_shared: must be an integer >= 0, got {s.num_shared!r}")
    if s.init == "random" and not 0 < s.init_scale <= 1:
        raise ValueError(f"init_scale: with init='random' it is the fraction of the box, in (0, 1], got {s.init_scale!r}")
    if s.init == "random" and s.init_rate:
        raise ValueError(f"init_rate: a random start knows no truth to shrink toward; it goes with init='near-truth', got "
                         f"{s.init_rate!r}")


def check_shared(model: Assembly, s: LabFitSettings) -> None:
    """The settings' shared experts agree with the assembly's."""
    if model.shared is None and s.num_shared:
        raise ValueError(f"num_shared: the model has no shared experts, got {s.num_shared}")
    if model.shared is not None and s.num_shared < 1:
        raise ValueError(f"num_shared: the model has shared experts ({model.shared.name}); fit at least 1, got "
                         f"{s.num_shared}")


def check_fit_inputs(model: Assembly, s: LabFitSettings, X, Y, truth: Mixture | None):
    """The checks of every fit of one data set (the direct fit's and EM's): the settings, the shared experts, X and
    Y (shapes, finite, enough rows for the parameters) and the truth (checked against the model; a placeholder
    when none is given and none is needed). Returns (X, Y, truth) as float64 arrays."""
    if not isinstance(model, Assembly):
        raise ValueError(f"model: expected a lab.Assembly, got {type(model).__name__}")
    check_settings(s)
    check_shared(model, s)
    X, Y = jnp.asarray(X, jnp.float64), jnp.asarray(Y, jnp.float64)
    if X.ndim != 2 or X.shape[1] != model.d or Y.shape != (X.shape[0], model.d_out):
        raise ValueError(f"Shape mismatch in X, Y: expected (n, {model.d}) and (n, {model.d_out}), got {X.shape} and {Y.shape}")
    if s.init != "random" and truth is None:
        raise ValueError(f"truth: {s.init} starts need the true mixture; pass truth=... or init='random'")
    if not (bool(jnp.all(jnp.isfinite(X))) and bool(jnp.all(jnp.isfinite(Y)))):
        raise ValueError("X, Y: contain NaN or inf")
    P = model.num_params(s.num_components, s.num_shared)
    if X.shape[0] * model.d_out < P:
        raise ValueError(f"n: {X.shape[0]} rows give fewer residuals than the {P} parameters: the fit is not determined")
    if truth is not None:
        return X, Y, model.check(truth)
    z = lambda *shape: jnp.zeros(shape)
    truth = Mixture(z(1, model.gate_size), z(1, model.expert_size), z(1))
    if model.shared is not None:
        truth = truth._replace(shared_logit=z(1), shared_expert=z(1, model.shared_size), shared_log_var=z(1))
    return X, Y, truth


DERIVATIVES = ("auto", "autodiff")


@dataclasses.dataclass(frozen=True)
class _PrefixView:
    """The fields of a :class:`moe_estimation.Problem` that the prefix estimator's closed form reads."""

    A: jax.Array
    a: jax.Array
    H: jax.Array
    B: jax.Array
    C: jax.Array
    W1: jax.Array | None
    W2: jax.Array | None
    structure: str
    activation: str
    atom_dim: int


def _prefix_applies(model: Assembly, K1: int) -> bool:
    return model.structure is not None and model.likelihood == "least-squares" and K1 == 0


def _prefix_fast_path(model: Assembly, K: int, X, Y, w, K1: int = 0):
    """The closed-form least-squares normal equations of :func:`moe_estimation.prefix.estimator.linearization`, its
    parameters (every prompt, then every bias) permuted to the lab's (p_i, b_i) a component. Without a frozen block,
    the extra reference is one frozen expert of score 0 and output 0."""
    st, fr = model.structure, model.frozen
    d, dv = model.d, model.d_out
    A, a, H = (fr.A, fr.a, fr.H) if fr is not None else (jnp.zeros((1, d, d)), jnp.zeros(1), jnp.zeros((1, dv, d)))
    view = _PrefixView(A, a, H, st.B, st.C, st.W1, st.W2, st.structure, st.activation, st.atom_dim)
    D = st.atom_dim
    perm = np.concatenate([(np.arange(K)[:, None] * (D + 1) + np.arange(D)).ravel(), np.arange(K) * (D + 1) + D])
    inv = np.argsort(perm)
    lin = prefix_linearization(view, FitSettings(num_prompts=K), prepare_data(view, X, Y, w))

    def linearize(theta):
        out = lin(theta[perm])
        return Normal(out.F, out.g[inv], out.H[inv][:, inv])

    return linearize


FAST_PATHS = [(_prefix_applies, _prefix_fast_path)]
"""Registered fast paths: ``(applies(model, K1) -> bool, build(model, K, X, Y, w, K1) -> theta -> Normal)``; the
first that applies replaces autodiff (``LabFitSettings.derivatives = "auto"``)."""


def register_fast_path(applies, build) -> None:
    """Register a closed-form ``build`` for the assemblies ``applies`` accepts (checked against autodiff by its
    author's tests, as the prefix model's is); it is tried before those already registered."""
    if not (callable(applies) and callable(build)):
        raise ValueError(f"applies, build: expected two callables, got {applies!r} and {build!r}")
    FAST_PATHS.insert(0, (applies, build))


def linearization(model: Assembly, K: int, X, Y, w, K1: int = 0, derivatives: str = "auto"):
    """``theta -> Normal(F, g, H)`` for one data set (rows weighted by ``w``: 1 a real row, 0 padding), by a
    registered fast path where one applies (``derivatives = "auto"``), else by autodiff."""
    if derivatives == "auto":
        for applies, build in FAST_PATHS:
            if applies(model, K1):
                return build(model, K, X, Y, w, K1)
    if model.likelihood == "least-squares":
        f = jax.vmap(mean, in_axes=(None, None, 0))

        def residual_jacobian(data, theta):
            X, Y, w = data

            def r(t):
                return (f(model, model.unflatten(t, K, K1), X) - Y) * w[:, None]

            res, jvp = jax.linearize(r, theta)
            return res, jax.vmap(jvp)(jnp.eye(theta.shape[0], dtype=theta.dtype))

        return normal_equations(residual_jacobian, (X, Y, w))

    def nll(t, x, y):
        return -log_density(model, model.unflatten(t, K, K1), x, y)

    per_row = jax.vmap(jax.value_and_grad(nll), in_axes=(None, 0, 0))

    def linearize(theta):
        values, grads = per_row(theta, X, Y)
        values, grads = values * w, grads * w[:, None]
        return Normal(jnp.sum(values), jnp.sum(grads, axis=0), grads.T @ grads)

    return linearize


def objective(model: Assembly, F, n):
    """The per-row objective from the solver's F (1/2 RSS, or the summed NLL)."""
    return 2 * F / n if model.likelihood == "least-squares" else F / n


STARTS = {}
"""Start schedules registered by name (:func:`register_start`) beside ``near-truth`` and ``random``: ``name ->
fn(key, model, settings, truth, dtype, n_eff) -> flat theta`` (projected onto the box by :func:`start`)."""


def register_start(name: str, fn, *, replace: bool = False) -> None:
    """Make ``init = name`` draw its starts with ``fn(key, model, settings, truth, dtype, n_eff)`` (a flat parameter
    vector; :func:`start` clips it to the box): a published study's own initialisation, say
    (:mod:`moe_estimation.lab.published`). Register it at the import of its module, so that worker processes know
    it too."""
    if not isinstance(name, str) or not name or name in INITS:
        raise ValueError(f"name: a start schedule's name must be a new non-empty string (not {INITS}), got {name!r}")
    if not callable(fn):
        raise ValueError(f"fn: must be callable, got {fn!r}")
    if name in STARTS and not replace:
        raise ValueError(f"name: a start schedule named {name!r} exists already; pass replace=True to replace it")
    STARTS[name] = fn


def start(key, model: Assembly, s: LabFitSettings, truth: Mixture | None, dtype, n_eff=1.0) -> jax.Array:
    """One flat starting point of the schedule for a data set of ``n_eff`` rows, in the box."""
    K, K1 = s.num_components, s.num_shared
    lo, hi = (jnp.asarray(a, dtype) for a in model.box(K, K1))
    if s.init in STARTS:
        return jnp.clip(STARTS[s.init](key, model, s, truth, dtype, n_eff), lo, hi)
    if s.init == "random":
        half = (hi - lo) / 2
        mid = (hi + lo) / 2
        return mid + s.init_scale * half * jax.random.uniform(key, lo.shape, dtype, -1.0, 1.0)
    Kt = truth.gate.shape[0]
    assign = np.arange(K) % Kt
    share = np.bincount(assign, minlength=Kt)[assign]
    gate = truth.gate[assign]
    gate = gate.at[:, -1].set(model.gate.split_bias(gate[:, -1], jnp.asarray(share, dtype)))
    m = Mixture(model.gate.pin(gate), truth.expert[assign], truth.log_var[assign])
    if model.shared is not None:  # the shared components split the same way (their logits shifted to a last 0)
        a1 = np.arange(K1) % truth.shared_logit.shape[0]
        logit = truth.shared_logit[a1] - jnp.log(jnp.asarray(np.bincount(a1)[a1], dtype))
        m = m._replace(shared_logit=logit - logit[-1], shared_expert=truth.shared_expert[a1],
                       shared_log_var=truth.shared_log_var[a1])
    base = model.flatten(m)
    scale = s.init_scale * jnp.asarray(n_eff, dtype) ** (-s.init_rate)
    return jnp.clip(base + scale * jax.random.normal(key, base.shape, dtype), lo, hi)


class LabFit(NamedTuple):
    """The best restart: ``params`` (a :class:`Mixture`), ``objective`` (per row), ``converged``, ``status``,
    ``steps``, ``restart_objectives``; fields gain a leading axis when batched."""

    params: Mixture
    objective: jax.Array
    converged: jax.Array
    status: jax.Array
    steps: jax.Array
    restart_objectives: jax.Array


def fit_dataset(key, model: Assembly, s: LabFitSettings, X, Y, w, truth: Mixture | None = None) -> LabFit:
    """Every restart of ``s`` on one data set; the best by objective. Traceable."""
    K, K1 = s.num_components, s.num_shared
    lo, hi = (jnp.asarray(a, X.dtype) for a in model.box(K, K1))
    starts = jax.vmap(lambda r: start(jax.random.fold_in(key, r), model, s, truth, X.dtype, jnp.sum(w)))(
        jnp.arange(s.restarts))
    lin = linearization(model, K, X, Y, w, K1, s.derivatives)
    solver = SolverSettings(max_steps=s.max_steps, ftol=s.ftol, xtol=s.xtol, gtol=s.gtol)
    n = jnp.sum(w)
    best = solve_starts(lin, starts, lo, hi, solver, s.batching, lambda F: objective(model, F, n))
    return LabFit(model.unflatten(best.value, K, K1), best.objective, is_converged(best.status), best.status, best.steps,
                  best.objectives)


@partial(jax.jit, static_argnames=("model", "s"))
def _fit_batch(keys, model, s, X, Y, w, truth):
    return batch_map(lambda a: fit_dataset(a[0], model, s, a[1], a[2], a[3], truth), (keys, X, Y, w), s.batching)


def fit(key, model: Assembly, X, Y, num_components: int, *, truth: Mixture | None = None, **options) -> LabFit:
    """Fit K' = ``num_components`` components to one data set X ``(n, d)``, Y ``(n, d_out)`` (least squares or
    maximum likelihood, as ``model.likelihood`` says). ``options``: the fields of :class:`LabFitSettings`
    (``num_shared``: K1', for an assembly with shared experts); ``truth`` is needed by near-truth starts only."""
    s = LabFitSettings(num_components=num_components, **options)
    X, Y, truth = check_fit_inputs(model, s, X, Y, truth)
    out = _fit_batch(jnp.asarray(key)[None], model, s, X[None], Y[None], jnp.ones((1, X.shape[0])), truth)
    return jax.tree.map(lambda a: a[0], out)
