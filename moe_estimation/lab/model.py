"""A mixture of experts assembled from parts, its data and its likelihood (docs/maths.md, *The lab*).

:class:`Assembly` holds the parts (a gate, an expert, a likelihood, an input law) and the sizes (d, d_out);
:class:`Mixture` a measure of K components (gate parameters, expert parameters and, for the Gaussian
likelihood, log-variances), a pytree. Every function is written for one input and batched with ``vmap``:

- :func:`mean` f(x) = sum_k pi_k(x) h_k(x), the regression function;
- :func:`log_density` log p(y | x) = log sum_k pi_k(x) N(y; h_k(x), sigma_k^2 I) (the gate's weights sum to one:
  :class:`Assembly` checks); for the joint likelihood of the Gaussian-gated model, log p(x, y) =
  log sum_k pi_k N(x; c_k, diag(s_k)) N(y; h_k(x), sigma_k^2 I), pi = softmax(b);
- :func:`simulate_rows` data from a true mixture: least squares draws Y = f(X) + N(0, noise_var I); the
  Gaussian likelihood draws a component k with probability pi_k(X) and Y ~ N(h_k(X), sigma_k^2 I); the joint
  likelihood draws k with probability pi_k, X ~ N(c_k, diag(s_k)) and Y ~ N(h_k(X), sigma_k^2 I) (the input law
  is ``gate``: X comes from the gate's own mixture).

Why a joint likelihood: in p(y | x) a Gaussian gate enters only through the differences of its log-scores,
quadratic functions of x, so (c_k, s_k, b_k) are not identified by the conditional density (with equal
variances two components' scores differ by a linear function, whose slope (c_1 - c_2) / s is all the data
tell); the density of x as well pins them down, which is why the Gaussian-gated literature maximises the joint
likelihood.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_n
from .parts import LOG_VAR_BOX, ConstantExpert, Expert, FrozenExperts, GaussianGate, Gate, InputLaw, PromptStructure, SoftmaxGate

LIKELIHOODS = ("least-squares", "gaussian", "joint-gaussian")


class Mixture(NamedTuple):
    """K routed components: ``gate`` ``(K, gate size)``, ``expert`` ``(K, expert size)``, ``log_var`` ``(K,)``
    (the Gaussian likelihoods' per-expert log-variances; ignored by least squares); and, for an assembly with
    shared experts, K1 shared components: ``shared_logit`` ``(K1,)`` (their weights are softmax(shared_logit);
    the last logit is pinned at 0 by the box), ``shared_expert`` ``(K1, shared expert size)``,
    ``shared_log_var`` ``(K1,)``. Without shared experts the last three stay ``None``."""

    gate: jax.Array
    expert: jax.Array
    log_var: jax.Array
    shared_logit: jax.Array | None = None
    shared_expert: jax.Array | None = None
    shared_log_var: jax.Array | None = None

    @property
    def num_shared(self) -> int:
        return 0 if self.shared_logit is None else int(np.shape(self.shared_logit)[-1])


@dataclasses.dataclass(frozen=True)
class Assembly:
    """A model from parts. ``noise_var``: the known noise variance of least squares (data are simulated with it);
    ``bound``: the estimator's box, every gate and expert parameter in [-bound, bound] and the log-variances in
    [log 1e-4, log 1e2].

    ``shared``: an expert part for shared experts beside the routed ones (None: none), with the fixed weight
    ``share`` of the shared part: f(x) = share sum_i omega_i h1(x; kappa_i) + (1 - share) sum_k pi_k(x) h(x; e_k),
    omega = softmax(shared_logit) (the DeepSeekMoE-style model; the split is declared, never estimated), and for
    the Gaussian likelihood p(y | x) = share sum_i omega_i N(y; h1_i, tau_i) + (1 - share) sum_k pi_k N(y; h_k,
    sigma_k^2).

    The prefix model's parts (least squares, a softmax gate with reference ``extra``, constant experts):
    ``frozen`` (:class:`FrozenExperts`): pre-trained experts that join the softmax as one more component in place
    of the extra reference's score 0 and output 0; ``structure`` (:class:`PromptStructure`): a component's free
    parameters are a prompt p and a bias b, mapped to its gate (k(p), b) and its constant expert v(p)
    (:meth:`effective`); the box is the structure's. :func:`moe_estimation.lab.from_problem` builds the assembly
    of a :class:`moe_estimation.Problem`."""

    gate: Gate
    expert: Expert
    input: InputLaw
    d_out: int = 1
    likelihood: str = "least-squares"
    noise_var: float = 0.01
    bound: float = 10.0
    shared: Expert | None = None
    share: float = 0.5
    frozen: FrozenExperts | None = None
    structure: PromptStructure | None = None

    def __post_init__(self):
        for name, kind in (("gate", Gate), ("expert", Expert), ("input", InputLaw)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name}: expected a lab.{kind.__name__} instance, got {getattr(self, name)!r}")
        if self.likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood: expected one of {LIKELIHOODS}, got {self.likelihood!r}")
        if self.likelihood == "gaussian" and not self.gate.sums_to_one:
            raise ValueError(f"gate: the Gaussian likelihood is a mixture density and needs weights that sum to one; the "
                             f"{self.gate.name} gate's do not (use softmax with reference 'pinned' or 'none', normalised-sigmoid, "
                             "gaussian, or laplace with reference 'pinned')")
        if self.likelihood == "joint-gaussian" and not isinstance(self.gate, GaussianGate):
            raise ValueError(f"gate: the joint likelihood models x by the gate's own mixture and needs the gaussian gate, "
                             f"got {self.gate.name}")
        if (self.likelihood == "joint-gaussian") != (self.input.law == "gate"):
            raise ValueError(f"input.law: 'gate' (x from the gate's own mixture) goes with the joint likelihood and only "
                             f"with it, got law {self.input.law!r} with likelihood {self.likelihood!r}")
        if isinstance(self.d_out, bool) or not isinstance(self.d_out, (int, np.integer)) or self.d_out < 1:
            raise ValueError(f"d_out: must be an integer >= 1, got {self.d_out!r}")
        if isinstance(self.share, bool) or not (isinstance(self.share, (int, float)) and 0 < self.share < 1):
            raise ValueError(f"share: the shared part's fixed weight must be a number in (0, 1), got {self.share!r}")
        if self.shared is not None:
            if not isinstance(self.shared, Expert):
                raise ValueError(f"shared: expected an expert part (or None), got {self.shared!r}")
            if self.likelihood == "joint-gaussian":
                raise ValueError("shared: the joint likelihood of the Gaussian-gated model has no shared experts here")
        for name in ("noise_var", "bound"):
            v = getattr(self, name)
            if isinstance(v, bool) or not (isinstance(v, (int, float)) and np.isfinite(v) and v > 0):
                raise ValueError(f"{name}: must be a finite number > 0, got {v!r}")
        for name, kind in (("frozen", FrozenExperts), ("structure", PromptStructure)):
            part = getattr(self, name)
            if part is None:
                continue
            if not isinstance(part, kind):
                raise ValueError(f"{name}: expected a lab.{kind.__name__} (or None), got {part!r}")
            if not (isinstance(self.gate, SoftmaxGate) and self.gate.reference == "extra") \
                    or self.likelihood != "least-squares" or self.shared is not None:
                raise ValueError(f"{name}: the prefix model's parts go with a softmax gate of reference 'extra', least "
                                 f"squares and no shared experts; got a {self.gate.name} gate, {self.likelihood}"
                                 + (", shared experts" if self.shared is not None else ""))
            if (part.d, part.d_out) != (self.d, self.d_out):
                raise ValueError(f"{name}: made for d = {part.d}, d_out = {part.d_out}; the assembly has d = {self.d}, "
                                 f"d_out = {self.d_out}")
        if self.structure is not None and not isinstance(self.expert, ConstantExpert):
            raise ValueError(f"expert: a prompt structure's experts are the constant values v(p); got {self.expert.name}")

    @property
    def has_variances(self) -> bool:
        """Whether the components carry log-variances (the Gaussian likelihoods; not least squares)."""
        return self.likelihood != "least-squares"

    @property
    def d(self) -> int:
        return self.input.d

    @property
    def gate_size(self) -> int:
        """The parameters of a component's gate (with a structure: the prompt p and the bias b)."""
        return self.structure.atom_dim + 1 if self.structure is not None else self.gate.size(self.d)

    @property
    def expert_size(self) -> int:
        """The parameters of a component's expert (with a structure: none, the value comes from p)."""
        return 0 if self.structure is not None else self.expert.size(self.d, self.d_out)

    def effective(self, m: Mixture) -> Mixture:
        """The mixture the gate and the expert parts see: with a structure, each component's (k(p), b) and v(p);
        itself without one."""
        if self.structure is None:
            return m
        k, v = self.structure.key_value(m.gate[:, :-1])
        return m._replace(gate=jnp.concatenate([k, m.gate[:, -1:]], axis=1), expert=v)

    @property
    def shared_size(self) -> int:
        return 0 if self.shared is None else self.shared.size(self.d, self.d_out)

    def num_params(self, K: int, K1: int = 0) -> int:
        v = 1 if self.has_variances else 0
        return K * (self.gate_size + self.expert_size + v) + K1 * (1 + self.shared_size + v)

    def flatten(self, m: Mixture) -> jax.Array:
        parts = [m.gate.ravel(), m.expert.ravel()] + ([m.log_var] if self.has_variances else [])
        if self.shared is not None:
            parts += [m.shared_logit, m.shared_expert.ravel()] + ([m.shared_log_var] if self.has_variances else [])
        return jnp.concatenate(parts)

    def unflatten(self, theta: jax.Array, K: int, K1: int = 0) -> Mixture:
        """The flat parameters of :meth:`flatten` as a :class:`Mixture` of K routed and K1 shared components."""
        g, e = K * self.gate_size, K * self.expert_size
        v = K if self.has_variances else 0
        log_var = theta[g + e:g + e + v] if self.has_variances else jnp.zeros(K, theta.dtype)
        m = Mixture(theta[:g].reshape(K, self.gate_size), theta[g:g + e].reshape(K, self.expert_size), log_var)
        if self.shared is None:
            return m
        rest = theta[g + e + v:]
        se = K1 * self.shared_size
        slv = rest[K1 + se:K1 + se + K1] if self.has_variances else jnp.zeros(K1, theta.dtype)
        return m._replace(shared_logit=rest[:K1], shared_expert=rest[K1:K1 + se].reshape(K1, self.shared_size),
                          shared_log_var=slv)

    def box(self, K: int, K1: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper) of the flat parameters of K routed and K1 shared components (the last shared logit
        pinned at 0: the shared weights softmax(logit) are unchanged by a common shift)."""
        if self.structure is not None:
            glo, ghi = self.structure.box(K)
            elo, ehi = np.zeros((K, 0)), np.zeros((K, 0))
        else:
            glo, ghi = self.gate.box(self.d, self.bound, K)
            elo, ehi = self.expert.box(self.d, self.d_out, self.bound, K)
        lo, hi = [glo.ravel(), elo.ravel()], [ghi.ravel(), ehi.ravel()]
        if self.has_variances:
            lo.append(np.full(K, LOG_VAR_BOX[0]))
            hi.append(np.full(K, LOG_VAR_BOX[1]))
        if self.shared is not None:
            llo, lhi = np.full(K1, -self.bound), np.full(K1, self.bound)
            llo[-1:], lhi[-1:] = 0.0, 0.0
            slo, shi = self.shared.box(self.d, self.d_out, self.bound, K1)
            lo += [llo, slo.ravel()]
            hi += [lhi, shi.ravel()]
            if self.has_variances:
                lo.append(np.full(K1, LOG_VAR_BOX[0]))
                hi.append(np.full(K1, LOG_VAR_BOX[1]))
        return np.concatenate(lo), np.concatenate(hi)

    def check(self, m: Mixture, name: str = "truth") -> Mixture:
        """A mixture's arrays as float64 of the right shapes, inside the box (``ValueError`` naming ``name``)."""
        gate, expert, log_var = (np.asarray(a, dtype=float) for a in (m.gate, m.expert, m.log_var))
        K = gate.shape[0] if gate.ndim == 2 else -1
        if self.structure is not None and expert.size == 0:
            expert = expert.reshape(K, 0)
        for part, arr, size in (("gate", gate, self.gate_size), ("expert", expert, self.expert_size)):
            if arr.ndim != 2 or arr.shape != (K, size):
                what = (f"the {self.structure.structure} prompts and biases" if part == "gate" else "no expert parameters "
                        "(the values come from the prompts)") if self.structure is not None else \
                    f"the {getattr(self, part).name} {part}"
                raise ValueError(f"Shape mismatch in {name}.{part}: expected (K, {size}) for {what} on d = {self.d}, "
                                 f"d_out = {self.d_out}, got {arr.shape}")
        if log_var.shape != (K,):
            raise ValueError(f"Shape mismatch in {name}.log_var: expected ({K},), got {log_var.shape}")
        if not self.has_variances and np.any(log_var != 0):
            raise ValueError(f"{name}.log_var: least squares has no per-expert variances (its noise_var is known); leave "
                             f"log_var at 0, got {log_var.tolist()}")
        out = Mixture(gate, expert, log_var)
        K1 = 0
        if self.shared is None:
            if any(x is not None for x in (m.shared_logit, m.shared_expert, m.shared_log_var)):
                raise ValueError(f"{name}: has shared components, but the model has no shared experts (shared=None)")
        else:
            if m.shared_logit is None or m.shared_expert is None:
                raise ValueError(f"{name}: the model has shared experts; give shared_logit (K1,) and shared_expert")
            logit, sexp = np.asarray(m.shared_logit, float), np.asarray(m.shared_expert, float)
            K1 = logit.shape[0] if logit.ndim == 1 and logit.shape[0] >= 1 else -1
            if K1 < 1:
                raise ValueError(f"Shape mismatch in {name}.shared_logit: expected (K1,) with K1 >= 1, got {logit.shape}")
            if sexp.shape != (K1, self.shared_size):
                raise ValueError(f"Shape mismatch in {name}.shared_expert: expected ({K1}, {self.shared_size}) for the "
                                 f"{self.shared.name} expert, got {sexp.shape}")
            if m.shared_log_var is None and self.has_variances:
                raise ValueError(f"{name}.shared_log_var: the {self.likelihood} likelihood needs the shared experts' "
                                 f"log-variances, ({K1},)")
            slv = np.asarray(m.shared_log_var if m.shared_log_var is not None else np.zeros(K1), float)
            if not self.has_variances and np.any(slv != 0):
                raise ValueError(f"{name}.shared_log_var: least squares has no per-expert variances; leave it at 0")
            if slv.shape != (K1,):
                raise ValueError(f"Shape mismatch in {name}.shared_log_var: expected ({K1},), got {slv.shape}")
            out = out._replace(shared_logit=logit - logit[-1], shared_expert=sexp, shared_log_var=slv)
        lo, hi = self.box(K, K1)
        theta = np.asarray(self.flatten(out))
        if not np.all(np.isfinite(theta)) or np.any(theta < lo) or np.any(theta > hi):
            box = (f"|prompt| <= {self.structure.atom_bound}, bias in {tuple(self.structure.bias_bounds)}"
                   if self.structure is not None else f"|gate|, |expert|, |shared_logit| <= {self.bound}; log-variances "
                   "in [log 1e-4, log 1e2]")
            raise ValueError(f"{name}: every parameter must be finite and inside the box ({box})")
        return jax.tree.map(jnp.asarray, out)



def mean(model: Assembly, m: Mixture, x: jax.Array) -> jax.Array:
    """f(x) = sum_k pi_k(x) h_k(x), ``(d_out,)`` (with shared experts, share sum_i omega_i h1_i(x) + (1 - share)
    times that)."""
    m = model.effective(m)
    if model.frozen is not None:  # the frozen block first, as the prefix model orders its scores
        score, output = model.frozen.summary(x)
        w = jax.nn.softmax(jnp.concatenate([score[None], m.gate[:, :-1] @ x + m.gate[:, -1]]))
        return w[0] * output + w[1:] @ model.expert.outputs(m.expert, x, model.d_out)
    routed = model.gate.weights(m.gate, x) @ model.expert.outputs(m.expert, x, model.d_out)
    if model.shared is None:
        return routed
    shared = jax.nn.softmax(m.shared_logit) @ model.shared.outputs(m.shared_expert, x, model.d_out)
    return model.share * shared + (1 - model.share) * routed


def log_density(model: Assembly, m: Mixture, x: jax.Array, y: jax.Array) -> jax.Array:
    """log p(y | x) of the Gaussian mixture of experts (the gate's weights sum to one: :class:`Assembly` checks);
    log p(x, y) for the joint likelihood (module docstring)."""
    h = model.expert.outputs(m.expert, x, model.d_out)  # (K, d_out)
    var = jnp.exp(m.log_var)
    comp = -0.5 * jnp.sum((y - h) ** 2, axis=-1) / var - 0.5 * model.d_out * jnp.log(2 * jnp.pi * var)
    if model.likelihood == "joint-gaussian":
        return jax.nn.logsumexp(comp + model.gate.log_joint_scores(m.gate, x))
    routed = comp + jnp.log(model.gate.weights(m.gate, x))
    if model.shared is None:
        return jax.nn.logsumexp(routed)
    h1 = model.shared.outputs(m.shared_expert, x, model.d_out)
    tau = jnp.exp(m.shared_log_var)
    comp1 = -0.5 * jnp.sum((y - h1) ** 2, axis=-1) / tau - 0.5 * model.d_out * jnp.log(2 * jnp.pi * tau)
    shared = comp1 + jax.nn.log_softmax(m.shared_logit)
    return jax.nn.logsumexp(jnp.concatenate([jnp.log(model.share) + shared, jnp.log1p(-model.share) + routed]))


def simulate_rows(model: Assembly, truth: Mixture, key: jax.Array, rows: int, n=None) -> tuple[jax.Array, jax.Array]:
    """``rows`` samples; row i from ``(key, i)`` alone (a padded data set holds the same first rows). ``n``: the data
    set's size when ``rows`` pads it (default ``rows``), which the ``linspace`` input law spreads its points by."""
    n = rows if n is None else n

    def one(i):
        kx, kc, ke = jax.random.split(jax.random.fold_in(key, i), 3)
        eps = jax.random.normal(ke, (model.d_out,), truth.expert.dtype)
        if model.likelihood == "joint-gaussian":  # k from softmax(b), then x from its Gaussian
            k = jax.random.categorical(kc, truth.gate[:, -1])
            x = model.gate.draw_input(truth.gate[k], kx, truth.expert.dtype)
            h = model.expert.outputs(truth.expert, x, model.d_out)[k]
            return x, h + jnp.exp(0.5 * truth.log_var[k]) * eps
        x = model.input.row(kx, truth.expert.dtype, i, n)
        if model.likelihood == "least-squares":
            return x, mean(model, truth, x) + jnp.sqrt(model.noise_var) * eps
        k = jax.random.categorical(kc, jnp.log(model.gate.weights(truth.gate, x)))
        h = model.expert.outputs(truth.expert, x, model.d_out)[k]
        y = h + jnp.exp(0.5 * truth.log_var[k]) * eps
        if model.shared is None:
            return x, y
        # the shared part with probability share, then one of its components by omega
        ks, kj = jax.random.split(jax.random.fold_in(kc, 1))
        j = jax.random.categorical(kj, truth.shared_logit)
        y1 = model.shared.outputs(truth.shared_expert, x, model.d_out)[j] + jnp.exp(0.5 * truth.shared_log_var[j]) * eps
        return x, jnp.where(jax.random.uniform(ks, (), truth.expert.dtype) < model.share, y1, y)

    return jax.vmap(one)(jnp.arange(rows))


def simulate(key: jax.Array, model: Assembly, truth: Mixture, n: int) -> tuple[jax.Array, jax.Array]:
    """n samples (X ``(n, d)``, Y ``(n, d_out)``) from the true mixture ``truth`` (checked against the model)."""
    n = check_n(n)
    truth = model.check(truth)
    return _simulate_jit(model, truth, key, n)


_simulate_jit = jax.jit(simulate_rows, static_argnums=(0, 3))
