"""EM for the softmax-gated Gaussian mixture of linear experts, and for the joint likelihood of the Gaussian-gated
one: what the field runs (docs/maths.md, *The lab*).

For p(y | x) = sum_k pi_k(x; g) N(y; A_k x + c_k, sigma_k^2 I), one iteration from the current parameters:

- E-step: responsibilities r_ik = pi_k(x_i) N(y_i; h_k(x_i), sigma_k^2 I) / p(y_i | x_i);
- M-step, experts and variances in closed form: (A_k, c_k) by least squares weighted by r_ik, and
  sigma_k^2 = sum_i r_ik ||y_i - h_k(x_i)||^2 / (d_out sum_i r_ik);
- M-step, gate: the weighted multinomial log-likelihood sum_ik r_ik log pi_k(x_i) raised by ``gate_steps``
  damped Newton steps of the project's solver (its exact Hessian, positive semi-definite for a softmax; the
  pinned component's parameters held at 0 by the box).

For the joint likelihood of the Gaussian-gated model (``likelihood = "joint-gaussian"``, linear experts) every
M-step is closed form (:func:`_joint_iteration`): the gate's weights, means and diagonal variances are the
responsibility-weighted proportions, means and variances of x. ``max_steps = 1`` is one E-step and one M-step
from the start, the estimator the released code of the Gaussian-gated study runs in fact.

The log-likelihood never falls from one iteration to the next (up to the gate's inexact M-step, which only
raises its part); the iterations stop when it rises by less than ``tol`` relative, or after ``max_iter``.
Experts and variances are clipped to the box after their update, as the direct fit's are held in it. The
result is a :class:`moe_estimation.lab.fit.LabFit` with the mean negative log-likelihood as its objective and
the EM iterations as its steps, so that EM and the direct maximum-likelihood fit of :func:`moe_estimation.lab.fit`
compare on the same data and starts.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from ..solver import Normal, SolverSettings, Status, batch_map, is_converged, solve
from .fit import LabFit, LabFitSettings, check_fit_inputs, start
from .model import Assembly, Mixture, log_density
from .parts import LaplaceGate, LinearExpert, SoftmaxGate


GATE_STEPS = ("newton", "coordinate")


def check_em_model(model: Assembly, gate_step: str = "newton") -> None:
    if model.likelihood == "joint-gaussian" and isinstance(model.expert, LinearExpert):
        return  # the Gaussian-gated model's EM: every M-step in closed form (_joint_iteration)
    gate_ok = ((isinstance(model.gate, SoftmaxGate) and model.gate.reference != "extra")
               or (gate_step == "coordinate" and isinstance(model.gate, LaplaceGate) and model.gate.reference == "pinned"))
    if model.likelihood != "gaussian" or not gate_ok or not isinstance(model.expert, LinearExpert) \
            or model.shared is not None:
        raise ValueError("model: EM here is for the Gaussian likelihood with a softmax gate (reference 'pinned' or "
                         "'none'; or, with the coordinate gate step, a Laplace gate with reference 'pinned') and "
                         "linear experts, no shared ones, or the joint likelihood of the Gaussian-gated "
                         f"model with linear experts; got {model.likelihood} with a {model.gate.name} gate and "
                         f"{model.expert.name} experts" + (f" and shared {model.shared.name} experts" if model.shared else ""))


def _iteration(model: Assembly, K: int, X, Y, w, gate_steps: int, theta, gate_tol=0.0, gate_step: str = "newton"):
    lo, hi = (jnp.asarray(a, X.dtype) for a in model.box(K))
    m = model.unflatten(theta, K)
    # E-step
    def comps(x, y):
        pi = model.gate.weights(m.gate, x)
        h = model.expert.outputs(m.expert, x, model.d_out)
        var = jnp.exp(m.log_var)
        return jnp.log(pi) - 0.5 * jnp.sum((y - h) ** 2, -1) / var - 0.5 * model.d_out * jnp.log(2 * jnp.pi * var)

    logc = jax.vmap(comps)(X, Y)  # (n, K)
    r = jnp.exp(logc - jax.nn.logsumexp(logc, axis=1, keepdims=True)) * w[:, None]
    # M-step: experts and variances
    Xt = jnp.concatenate([X, jnp.ones((X.shape[0], 1), X.dtype)], axis=1)  # (n, d + 1)

    def expert(rk):
        G = (Xt * rk[:, None]).T @ Xt + 1e-10 * jnp.eye(Xt.shape[1], dtype=X.dtype)
        coef = jnp.linalg.solve(G, (Xt * rk[:, None]).T @ Y)  # (d + 1, d_out)
        resid = jnp.sum((Y - Xt @ coef) ** 2, axis=1)
        var = jnp.sum(rk * resid) / (model.d_out * jnp.maximum(jnp.sum(rk), 1e-300))
        return jnp.concatenate([coef[:-1].T.ravel(), coef[-1]]), jnp.log(jnp.maximum(var, 1e-300))

    expert_params, log_var = jax.vmap(expert, in_axes=1)(r)
    # M-step: the gate, by damped Newton steps on -sum_ik r_ik log pi_k(x_i)
    g0 = m.gate.ravel()
    glo, ghi = lo[: g0.size], hi[: g0.size]

    def gate_loss(g):
        logpi = jax.vmap(lambda x: jnp.log(model.gate.weights(g.reshape(K, -1), x)))(X)
        return -jnp.sum(r * logpi)

    if gate_step == "coordinate":
        gate = _coordinate_gate(gate_loss, g0, glo, ghi, gate_steps, gate_tol)
    else:
        def linearize(g):
            value, grad = jax.value_and_grad(gate_loss)(g)
            return Normal(value, grad, jax.hessian(gate_loss)(g))

        gate = solve(linearize, g0, glo, ghi, SolverSettings(max_steps=gate_steps, ftol=gate_tol, xtol=0.0, gtol=0.0)).value
    new = jnp.concatenate([gate, expert_params.ravel(), log_var])
    return jnp.clip(new, lo, hi)


def _coordinate_gate(loss, g0, lo, hi, sweeps: int, tol):
    """Coordinate descent on the gate's M-step objective ``loss`` (the FuseMoE source's "simple coordinate gradient
    descent"; its step rule is unstated, so chosen here): ``sweeps`` passes over the gate's coordinates, each a
    Newton step along that coordinate (the gradient over the curvature, or the gradient itself where the curvature
    is not positive), halved until the objective does not rise (at most 30 halvings, else no step), clipped to the
    box (a pinned coordinate stays); the passes stop early when one lowers the objective by less than ``tol``
    relative. The objective never rises."""
    grad, hess_diag = jax.grad(loss), lambda g, j: jax.grad(lambda t: jax.grad(loss)(g.at[j].set(t))[j])(g[j])

    def coordinate(j, state):
        g, f = state
        d1 = grad(g)[j]
        d2 = hess_diag(g, j)
        step = jnp.where(d2 > 0, d1 / jnp.where(d2 > 0, d2, 1.0), d1)

        def halve(c):
            t, _, _ = c
            return t * 0.5, *trial(t * 0.5)

        def trial(t):
            new = g.at[j].set(jnp.clip(g[j] - t * step, lo[j], hi[j]))
            return new, loss(new)

        t, new, f_new = jax.lax.while_loop(lambda c: (c[2] > f) & (c[0] > 2.0 ** -30), halve, (1.0, *trial(1.0)))
        ok = f_new <= f
        return jnp.where(ok, new, g), jnp.where(ok, f_new, f)

    def sweep(state):
        g, f, _, k = state
        g, f_new = jax.lax.fori_loop(0, g.size, coordinate, (g, f))
        return g, f_new, f, k + 1

    f0 = loss(g0)
    g, *_ = jax.lax.while_loop(lambda c: (c[3] < sweeps) & ~((c[3] > 0) & (c[2] - c[1] <= tol * jnp.abs(c[2]))),
                               sweep, (g0, f0, jnp.inf, 0))
    return g


def _joint_iteration(model: Assembly, K: int, X, Y, w, theta):
    """One EM iteration of the joint likelihood of the Gaussian-gated mixture of linear experts (the GLLiM-type
    model): E-step r_ik proportional to pi_k N(x_i; c_k, diag(s_k)) N(y_i; A_k x_i + c'_k, sigma_k^2); M-step in
    closed form: pi_k = r_k / n, c_k and s_k the r-weighted mean and (per coordinate) variance of x, (A_k, c'_k)
    by r-weighted least squares, sigma_k^2 the r-weighted mean squared residual. The gate's biases are log pi_k."""
    lo, hi = (jnp.asarray(a, X.dtype) for a in model.box(K))
    m = model.unflatten(theta, K)
    d = model.d

    def comps(x, y):
        h = model.expert.outputs(m.expert, x, model.d_out)
        var = jnp.exp(m.log_var)
        return model.gate.log_joint_scores(m.gate, x) - 0.5 * jnp.sum((y - h) ** 2, -1) / var \
            - 0.5 * model.d_out * jnp.log(2 * jnp.pi * var)

    logc = jax.vmap(comps)(X, Y)
    r = jnp.exp(logc - jax.nn.logsumexp(logc, axis=1, keepdims=True)) * w[:, None]
    Xt = jnp.concatenate([X, jnp.ones((X.shape[0], 1), X.dtype)], axis=1)

    def component(rk):
        total = jnp.maximum(jnp.sum(rk), 1e-300)
        c = rk @ X / total
        s = rk @ (X - c) ** 2 / total
        G = (Xt * rk[:, None]).T @ Xt + 1e-10 * jnp.eye(d + 1, dtype=X.dtype)
        coef = jnp.linalg.solve(G, (Xt * rk[:, None]).T @ Y)
        resid = jnp.sum((Y - Xt @ coef) ** 2, axis=1)
        var = jnp.sum(rk * resid) / (model.d_out * total)
        gate = jnp.concatenate([c, jnp.log(jnp.maximum(s, 1e-300)), jnp.log(total / jnp.sum(w))[None]])
        return gate, jnp.concatenate([coef[:-1].T.ravel(), coef[-1]]), jnp.log(jnp.maximum(var, 1e-300))

    gate, expert, log_var = jax.vmap(component, in_axes=1)(r)
    return jnp.clip(jnp.concatenate([gate.ravel(), expert.ravel(), log_var]), lo, hi)


def _nll(model, K, X, Y, w, theta):
    ll = jax.vmap(log_density, in_axes=(None, None, 0, 0))(model, model.unflatten(theta, K), X, Y)
    return -jnp.sum(ll * w) / jnp.sum(w)


def em_dataset(key, model: Assembly, s: LabFitSettings, X, Y, w, truth: Mixture, tol: float, gate_steps: int,
               gate_tol: float = 0.0, abort_after: int = 0, gate_step: str = "newton") -> LabFit:
    """Every restart of ``s`` by EM (``s.max_steps`` iterations at most) on one data set; the best by mean NLL.
    ``gate_tol``: the gate's M-step stops early when a Newton step lowers its objective by less than this relative
    amount (0: always ``gate_steps`` steps).

    ``abort_after`` = 0 (the default): an iteration stops EM when the log-likelihood rises by less than ``tol``
    relative, a fall included. ``abort_after`` = m > 0 is the stopping rule of the softmax-gated source's EM: stop
    when the log-likelihood changes by at most ``tol`` relative either way (a larger fall goes on); count the
    iterations whose log-likelihood L = sum_i w_i log p(y_i | x_i) falls by more than 1e-5, and abort a try at the
    count's (m + 1)-th, the count running on across tries (the source never resets it: once it passes m, every
    later try stops at its first such fall). The tries then run one after another; an aborted try keeps its last
    parameters, competes for the best by its likelihood and reports ``stalled`` (not converged).

    ``gate_step``: the gate's M-step, ``"newton"`` (damped Newton steps of the project's solver) or
    ``"coordinate"`` (coordinate descent, :func:`_coordinate_gate`: the FuseMoE source's, for its Laplace gate)."""
    if gate_step not in GATE_STEPS:
        raise ValueError(f"gate_step: expected one of {GATE_STEPS}, got {gate_step!r}")
    if isinstance(abort_after, bool) or not isinstance(abort_after, (int, np.integer)) or abort_after < 0:
        raise ValueError(f"abort_after: must be an integer >= 0 (0: no abort rule), got {abort_after!r}")
    K = s.num_components
    starts = jax.vmap(lambda r: start(jax.random.fold_in(key, r), model, s, truth, X.dtype, jnp.sum(w)))(
        jnp.arange(s.restarts))
    if abort_after:
        return _em_counted(model, s, X, Y, w, tol, gate_steps, gate_tol, abort_after, starts, gate_step)

    def run(theta0):
        def cond(state):
            _, f, f_old, it = state
            return (it < s.max_steps) & ~((it > 0) & (f_old - f <= tol * jnp.abs(f_old)))

        def body(state):
            theta, f, _, it = state
            new = (_joint_iteration(model, K, X, Y, w, theta) if model.likelihood == "joint-gaussian"
                   else _iteration(model, K, X, Y, w, gate_steps, theta, gate_tol, gate_step))
            return new, _nll(model, K, X, Y, w, new), f, it + 1

        f0 = _nll(model, K, X, Y, w, theta0)
        theta, f, f_old, it = jax.lax.while_loop(cond, body, (theta0, f0, jnp.inf, jnp.asarray(0)))
        status = jnp.where(f_old - f <= tol * jnp.abs(f_old), Status.FTOL, Status.MAX_STEPS)
        return theta, f, status, it

    theta, f, status, steps = batch_map(run, starts, s.batching)
    rank = jnp.where(jnp.isfinite(f), f, jnp.inf)
    best = jnp.argmin(rank)
    finite = jnp.isfinite(f[best]) & jnp.all(jnp.isfinite(theta[best]))
    code = jnp.where(finite, status[best], Status.NONFINITE)
    return LabFit(model.unflatten(theta[best], K), f[best], is_converged(code), code, steps[best], f)


def _em_counted(model, s, X, Y, w, tol, gate_steps, gate_tol, abort_after, starts, gate_step="newton") -> LabFit:
    """:func:`em_dataset` under the source's stopping and abort rule (its docstring), the tries in sequence."""
    K = s.num_components
    theta, f, status, steps = _em_tries(model, s, X, Y, w, tol, gate_steps, gate_tol, abort_after, starts, gate_step)
    rank = jnp.where(jnp.isfinite(f), f, jnp.inf)
    best = jnp.argmin(rank)
    finite = jnp.isfinite(f[best]) & jnp.all(jnp.isfinite(theta[best]))
    code = jnp.where(finite, status[best], Status.NONFINITE)
    return LabFit(model.unflatten(theta[best], K), f[best], is_converged(code), code, steps[best], f)


def _em_tries(model, s, X, Y, w, tol, gate_steps, gate_tol, abort_after, starts, gate_step="newton"):
    """Every try's (parameters, mean NLL, status, iterations) under the source's rule, the tries in sequence with
    the fall counter carried from one to the next."""
    K = s.num_components
    total = jnp.sum(w)

    def step(theta):
        return (_joint_iteration(model, K, X, Y, w, theta) if model.likelihood == "joint-gaussian"
                else _iteration(model, K, X, Y, w, gate_steps, theta, gate_tol, gate_step))

    def run(top, theta0):
        def cond(state):
            _, f, f_old, it, _, aborted = state
            converged = (it > 0) & (jnp.abs(f_old - f) <= tol * jnp.abs(f_old))
            return (it < s.max_steps) & ~converged & ~aborted

        def body(state):
            theta, f, _, it, top, _ = state
            new = step(theta)
            f_new = _nll(model, K, X, Y, w, new)
            fell = total * (f_new - f) > 1e-5  # L = -total * f fell by more than 1e-5
            top = top + fell.astype(top.dtype)
            return new, f_new, f, it + 1, top, fell & (top > abort_after)

        f0 = _nll(model, K, X, Y, w, theta0)
        theta, f, f_old, it, top, aborted = jax.lax.while_loop(
            cond, body, (theta0, f0, jnp.inf, jnp.asarray(0), top, jnp.asarray(False)))
        status = jnp.where(aborted, Status.STALLED,
                           jnp.where(jnp.abs(f_old - f) <= tol * jnp.abs(f_old), Status.FTOL, Status.MAX_STEPS))
        return top, (theta, f, status, it)

    return jax.lax.scan(run, jnp.asarray(0), starts)[1]


@partial(jax.jit, static_argnames=("model", "s", "gate_steps", "abort_after", "gate_step"))
def _em_batch(keys, model, s, X, Y, w, truth, tol, gate_steps, abort_after=0, gate_step="newton", gate_tol=0.0):
    return batch_map(lambda a: em_dataset(a[0], model, s, a[1], a[2], a[3], truth, tol, gate_steps, gate_tol,
                                          abort_after=abort_after, gate_step=gate_step), (keys, X, Y, w), s.batching)


def em(key, model: Assembly, X, Y, num_components: int, *, truth: Mixture | None = None, tol: float = 1e-8,
       gate_steps: int = 5, gate_tol: float = 0.0, abort_after: int = 0, gate_step: str = "newton",
       **options) -> LabFit:
    """EM for K' = ``num_components`` components on one data set (module docstring). ``options``: the fields of
    :class:`moe_estimation.lab.LabFitSettings`, ``max_steps`` being the EM iterations; the same starts as
    :func:`moe_estimation.lab.fit` draws from the same key. ``abort_after`` > 0: the softmax-gated source's
    stopping and abort rule (:func:`em_dataset`); ``gate_step``: ``"newton"`` or ``"coordinate"`` (its docstring);
    ``gate_steps``, ``gate_tol``: the gate M-step's steps (or sweeps) and its relative stopping tolerance."""
    if gate_step not in GATE_STEPS:
        raise ValueError(f"gate_step: expected one of {GATE_STEPS}, got {gate_step!r}")
    check_em_model(model, gate_step)
    s = LabFitSettings(num_components=num_components, **options)
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (np.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol: must be a finite number >= 0, got {tol!r}")
    if isinstance(gate_steps, bool) or not isinstance(gate_steps, (int, np.integer)) or gate_steps < 1:
        raise ValueError(f"gate_steps: must be an integer >= 1, got {gate_steps!r}")
    if isinstance(gate_tol, bool) or not isinstance(gate_tol, (int, float)) or not (np.isfinite(gate_tol) and gate_tol >= 0):
        raise ValueError(f"gate_tol: must be a finite number >= 0, got {gate_tol!r}")
    if isinstance(abort_after, bool) or not isinstance(abort_after, (int, np.integer)) or abort_after < 0:
        raise ValueError(f"abort_after: must be an integer >= 0 (0: no abort rule), got {abort_after!r}")
    X, Y, truth = check_fit_inputs(model, s, X, Y, truth)
    out = _em_batch(jnp.asarray(key)[None], model, s, X[None], Y[None], jnp.ones((1, X.shape[0])), truth,
                    jnp.asarray(tol), gate_steps, int(abort_after), gate_step, jnp.asarray(float(gate_tol)))
    return jax.tree.map(lambda a: a[0], out)
