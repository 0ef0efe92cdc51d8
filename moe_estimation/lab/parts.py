"""The parts a mixture of experts is assembled from: gates, experts, input laws (docs/maths.md, *The lab*).

A mixture of K components maps an input x in R^d to

    f(x) = sum_k pi_k(x; g_k) h(x; e_k)          (least squares: Y = f(X) + noise)
    p(y | x) = sum_k pi_k(x; g_k) N(y; h(x; e_k), sigma_k^2 I)      (the Gaussian mixture of experts)

with a gate ``pi`` (its parameters g_k per component) and an expert ``h`` (its parameters e_k). A part is a
small frozen class with one job: it declares how many parameters a component has, computes its values for
one input (callers batch with ``vmap``), declares the box the estimator keeps its parameters in, and for a
gate, the weight each component carries in a Voronoi loss (:mod:`moe_estimation.lab.losses`). A new gate or
expert is one subclass; nothing else in the package changes (a test defines one in its own file).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ..prefix.model import expert_summary
from ..prefix.structures import NON_SHARED, STRUCTURES, key_value
from ..prefix.structures import ACTIVATIONS as STRUCTURE_ACTIVATIONS


# ------------------------------------------------------------------------------------------------
# gates: (K, gate_size) parameters and an input -> K mixture weights


@dataclasses.dataclass(frozen=True)
class Gate:
    """A gate: ``size(d)`` parameters a component, ``weights(theta (K, size), x (d,)) -> (K,)`` the mixture
    weights at x, ``atom_weight(theta) -> (K,)`` each component's weight in a Voronoi loss, ``atom(theta)`` the
    part of a component's atom that the loss measures, and its ``box`` for K components. ``sums_to_one``: the
    weights of the K components sum to one at every x (a conditional density needs it)."""

    name = "gate"
    sums_to_one = False

    def size(self, d: int) -> int:
        raise NotImplementedError

    def weights(self, theta: jax.Array, x: jax.Array) -> jax.Array:
        raise NotImplementedError

    def atom_weight(self, theta: jax.Array) -> jax.Array:
        raise NotImplementedError

    def atom(self, theta: jax.Array) -> jax.Array:
        return theta[..., :-1]

    def canonical(self, theta: jax.Array) -> jax.Array:
        """The representative of ``theta`` (K, size) that a Voronoi loss compares: itself, unless the gate leaves a
        direction of its parameters unidentified (a softmax without an extra reference)."""
        return theta

    def blocks(self, d: int) -> dict:
        """The named pieces of a component's atom (:meth:`atom`) a Voronoi loss can measure apart, each a slice:
        ``gate.NAME`` in a loss declaration. None by default (the whole ``gate`` block, and ``gate.bias``)."""
        return {}

    def split_bias(self, bias: jax.Array, share) -> jax.Array:
        """The bias of one of ``share`` components that split a true one's weight equally (a start of an
        over-specified fit): exp-weighted gates subtract log(share)."""
        return bias - jnp.log(share)

    def pin(self, theta: jax.Array) -> jax.Array:
        """The same gate in the parameterisation the box allows (a gate with a pinned component moves every
        row so that the pinned one is 0); itself for most gates."""
        return theta

    def box(self, d: int, bound: float, K: int) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), each ``(K, size)``."""
        size = self.size(d)
        return np.full((K, size), -bound), np.full((K, size), bound)


REFERENCES = ("pinned", "extra", "none")


@dataclasses.dataclass(frozen=True)
class SoftmaxGate(Gate):
    """pi_k(x) = softmax_k(w_k^T x + b_k). A softmax is unchanged when every score moves by one affine function
    of x, so something must pin that direction down, the ``reference``:

    - ``pinned`` (the default): the last component's (w, b) are fixed at 0 (its box is the point 0): the K
      scores, one of them 0; the weights sum to one;
    - ``extra``: one more score fixed at 0 whose component outputs 0, as the frozen experts pin the prefix
      model's scores (the prefix model with one frozen expert of output 0); the K weights sum to less than one;
    - ``none``: no reference: the parameters are identified only up to that shift, and a Voronoi loss of them
      means little.

    Parameters (w_k, b_k); Voronoi weight exp(b_k); the loss measures w_k."""

    reference: str = "pinned"
    name = "softmax"

    def __post_init__(self):
        if self.reference not in REFERENCES:
            raise ValueError(f"reference: expected one of {REFERENCES}, got {self.reference!r}")

    @property
    def sums_to_one(self):
        return self.reference != "extra"

    def size(self, d):
        return d + 1

    def weights(self, theta, x):
        scores = theta[:, :-1] @ x + theta[:, -1]
        if self.reference == "extra":
            return jax.nn.softmax(jnp.concatenate([scores, jnp.zeros(1, scores.dtype)]))[:-1]
        return jax.nn.softmax(scores)

    def atom_weight(self, theta):
        return jnp.exp(theta[..., -1])

    def box(self, d, bound, K):
        lo, hi = super().box(d, bound, K)
        if self.reference == "pinned":
            lo[-1], hi[-1] = 0.0, 0.0
        return lo, hi

    def pin(self, theta):
        """With reference ``pinned``: every row minus the last (the same weights; the last row then 0)."""
        return theta - theta[-1] if self.reference == "pinned" else theta

    def canonical(self, theta):
        """Without an extra reference, (w_k, b_k) and (w_k + t, b_k + s) give one gate for every (t, s), and with
        a pinned component the same gate has K parameterisations (any component can be the pinned one). The
        representative: the biases shifted to logsumexp_k b_k = 0 (the weights exp(b_k) then sum to one) and the
        slopes to sum_k exp(b_k) w_k = 0; it does not depend on the order of the components."""
        if self.reference == "extra":
            return theta
        b = theta[:, -1] - jax.nn.logsumexp(theta[:, -1])
        w = theta[:, :-1] - jnp.exp(b) @ theta[:, :-1]
        return jnp.concatenate([w, b[:, None]], axis=1)


@dataclasses.dataclass(frozen=True)
class SigmoidGate(Gate):
    """pi_k(x) = sigmoid(w_k^T x + b_k), each component on its own (the weights need not sum to one; Nguyen et al.
    2024's sigmoid gating). Parameters (w_k, b_k); Voronoi weight sigmoid(b_k)."""

    name = "sigmoid"

    def size(self, d):
        return d + 1

    def weights(self, theta, x):
        return jax.nn.sigmoid(theta[:, :-1] @ x + theta[:, -1])

    def atom_weight(self, theta):
        return jax.nn.sigmoid(theta[..., -1])

    def split_bias(self, bias, share):
        p = jax.nn.sigmoid(bias) / share
        return jnp.log(p) - jnp.log1p(-p)


@dataclasses.dataclass(frozen=True)
class NormalisedSigmoidGate(SigmoidGate):
    """pi_k(x) = sigmoid(w_k^T x + b_k) / sum_j sigmoid(w_j^T x + b_j): sigmoid scores, normalised to sum to
    one (the DeepSeekMoE-style router). Parameters, Voronoi weight and split as the sigmoid gate's."""

    name = "normalised-sigmoid"
    sums_to_one = True

    def weights(self, theta, x):
        s = super().weights(theta, x)
        return s / jnp.sum(s)


@dataclasses.dataclass(frozen=True)
class LaplaceGate(Gate):
    """pi_k(x) = softmax_k(-||W_k - x|| + b_k) (the Laplace gate of FuseMoE). The weights do not change when every
    b_k moves by one constant; ``reference`` pins that shift:

    - ``extra`` (the default): a reference score fixed at -||x|| (the component at W = 0 with bias 0, outputting
      0), so the K weights sum to less than one;
    - ``pinned``: the softmax over the K components alone (a mixture density's weights, summing to one), the
      last bias fixed at 0 by the box; a Voronoi loss compares the canonical biases (logsumexp_k b_k = 0), so
      that exp(b_k) is the weight of component k at equal distances.

    Parameters (W_k, b_k); Voronoi weight exp(b_k); the loss measures W_k."""

    reference: str = "extra"
    name = "laplace"

    def __post_init__(self):
        if self.reference not in ("extra", "pinned"):
            raise ValueError(f"reference: expected 'extra' or 'pinned', got {self.reference!r}")

    @property
    def sums_to_one(self):
        return self.reference == "pinned"

    def size(self, d):
        return d + 1

    def weights(self, theta, x):
        dist = jnp.sqrt(jnp.sum((theta[:, :-1] - x) ** 2, axis=-1) + 1e-12)
        if self.reference == "pinned":
            return jax.nn.softmax(-dist + theta[:, -1])
        ref = -jnp.sqrt(jnp.sum(x**2) + 1e-12)
        scores = jnp.concatenate([-dist + theta[:, -1], ref[None]])
        return jax.nn.softmax(scores)[:-1]

    def atom_weight(self, theta):
        return jnp.exp(theta[..., -1])

    def canonical(self, theta):
        return theta.at[:, -1].add(-jax.nn.logsumexp(theta[:, -1])) if self.reference == "pinned" else theta

    def box(self, d, bound, K):
        lo, hi = super().box(d, bound, K)
        if self.reference == "pinned":
            lo[-1, -1], hi[-1, -1] = 0.0, 0.0
        return lo, hi

    def pin(self, theta):
        """With reference ``pinned``: every bias minus the last (the same weights; the last bias then 0)."""
        return theta.at[:, -1].add(-theta[-1, -1]) if self.reference == "pinned" else theta


LOG_VAR_BOX = (float(np.log(1e-4)), float(np.log(1e2)))  # the box of every log-variance the lab estimates


@dataclasses.dataclass(frozen=True)
class GaussianGate(Gate):
    """pi_k(x) = exp(b_k) N(x; c_k, diag(s_k)) / sum_j exp(b_j) N(x; c_j, diag(s_j)): the Gaussian density gate of
    the Gaussian-gated mixture of experts (the posterior of the component given x when x comes from the mixture
    sum_k pi_k N(c_k, diag(s_k)) with pi = softmax(b)). Parameters (c_k, log s_k, b_k): a mean, a diagonal
    log-variance and a bias, 2d + 1 a component. The gate is unchanged when every b_k moves by one constant; the
    canonical representative has logsumexp_k b_k = 0, so that the Voronoi weight exp(b_k) is the mixture weight
    pi_k. The loss measures (c_k, s_k), the variances themselves (not their logs)."""

    name = "gaussian"
    sums_to_one = True

    def size(self, d):
        return 2 * d + 1

    def log_joint_scores(self, theta, x):
        """log pi_k + log N(x; c_k, diag(s_k)), pi = softmax(b): the log-density of (component k, x) in the
        gate's own mixture (the joint likelihood's)."""
        d = x.shape[0]
        c, log_s, b = theta[:, :d], theta[:, d:2 * d], theta[:, -1]
        log_pdf = -0.5 * jnp.sum((x - c) ** 2 / jnp.exp(log_s) + log_s + jnp.log(2 * jnp.pi), axis=-1)
        return jax.nn.log_softmax(b) + log_pdf

    def weights(self, theta, x):
        return jax.nn.softmax(self.log_joint_scores(theta, x))

    def draw_input(self, component, key, dtype):
        """x ~ N(c, diag(s)) for one component's parameters (c, log s, b)."""
        d = (component.shape[0] - 1) // 2
        return component[:d] + jnp.exp(0.5 * component[d:2 * d]) * jax.random.normal(key, (d,), dtype)

    def atom_weight(self, theta):
        return jnp.exp(theta[..., -1])

    def atom(self, theta):
        d = (theta.shape[-1] - 1) // 2
        return jnp.concatenate([theta[..., :d], jnp.exp(theta[..., d:2 * d])], axis=-1)

    def blocks(self, d):
        """``mean`` (c) and ``variance`` (s, the diagonal variances) of the atom (c, s)."""
        return {"mean": slice(0, d), "variance": slice(d, 2 * d)}

    def canonical(self, theta):
        return theta.at[:, -1].add(-jax.nn.logsumexp(theta[:, -1]))

    def box(self, d, bound, K):
        lo, hi = super().box(d, bound, K)
        lo[:, d:2 * d], hi[:, d:2 * d] = LOG_VAR_BOX
        return lo, hi


GATES = {cls.name: cls for cls in (SoftmaxGate, SigmoidGate, NormalisedSigmoidGate, LaplaceGate, GaussianGate)}


# ------------------------------------------------------------------------------------------------
# experts: (K, expert_size) parameters and an input -> (K, d_out) expert outputs


@dataclasses.dataclass(frozen=True)
class Expert:
    """An expert: ``size(d, d_out)`` parameters a component and ``outputs(theta (K, size), x (d,)) -> (K, d_out)``."""

    name = "expert"

    def size(self, d: int, d_out: int) -> int:
        raise NotImplementedError

    def outputs(self, theta: jax.Array, x: jax.Array, d_out: int) -> jax.Array:
        raise NotImplementedError

    def box(self, d: int, d_out: int, bound: float, K: int) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), each ``(K, size)``."""
        size = self.size(d, d_out)
        return np.full((K, size), -bound), np.full((K, size), bound)

    def canonical(self, theta: jax.Array, d_out: int) -> jax.Array:
        """The representative of ``theta`` (K, size) that a Voronoi loss compares: itself, unless two parameter
        values give one expert function (a one-neuron ReLU or tanh expert)."""
        return theta

    def blocks(self, d: int, d_out: int) -> dict:
        """The named pieces of a component's (canonical) parameters a Voronoi loss can measure apart, each a
        slice: ``expert.NAME`` in a loss declaration. None by default (the whole ``expert`` block only)."""
        return {}


@dataclasses.dataclass(frozen=True)
class ConstantExpert(Expert):
    """h(x) = a_k, a constant in R^{d_out} (the prefix model's new experts)."""

    name = "constant"

    def size(self, d, d_out):
        return d_out

    def outputs(self, theta, x, d_out):
        return theta


@dataclasses.dataclass(frozen=True)
class LinearExpert(Expert):
    """h(x) = A_k x + c_k, A_k in R^{d_out x d} (row-major in the parameters, then c_k)."""

    name = "linear"

    def size(self, d, d_out):
        return d_out * d + d_out

    def outputs(self, theta, x, d_out):
        K, d = theta.shape[0], x.shape[0]
        A = theta[:, : d_out * d].reshape(K, d_out, d)
        return A @ x + theta[:, d_out * d:]

    def blocks(self, d, d_out):
        """``slope`` (A) and ``intercept`` (c): the linear-expert losses give them different exponents."""
        return {"slope": slice(0, d_out * d), "intercept": slice(d_out * d, d_out * d + d_out)}


ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "sigmoid": jax.nn.sigmoid, "tanh": jnp.tanh}


@dataclasses.dataclass(frozen=True)
class ActivationExpert(Expert):
    """h(x) = a_k act(b_k^T x + c_k), a_k in R^{d_out}, b_k in R^d, c_k scalar, act one of :data:`ACTIVATIONS`
    (ReLU, GELU, sigmoid, tanh): the one-neuron experts of the nonlinear-expert rate papers. ``bias = False``:
    h(x) = a_k act(b_k^T x), no c_k (the routed ReLU experts of the DeepSeekMoE study, eta_2 ReLU(eta_1 x))."""

    activation: str = "relu"
    bias: bool = True
    name = "activation"

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation: expected one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
        if not isinstance(self.bias, bool):
            raise ValueError(f"bias: expected True or False, got {self.bias!r}")

    def size(self, d, d_out):
        return d_out + d + int(self.bias)

    def outputs(self, theta, x, d_out):
        a, b = theta[:, :d_out], theta[:, d_out:d_out + x.shape[0]]
        z = b @ x + (theta[:, -1] if self.bias else 0.0)
        return a * ACTIVATIONS[self.activation](z)[:, None]

    def blocks(self, d, d_out):
        """``scale`` (a), ``slope`` (b) and, with a bias, ``intercept`` (c) of a act(b^T x + c)."""
        out = {"scale": slice(0, d_out), "slope": slice(d_out, d_out + d)}
        return out | ({"intercept": slice(d_out + d, d_out + d + 1)} if self.bias else {})

    def canonical(self, theta, d_out):
        """ReLU is positively homogeneous: a relu(b^T x + c) = (t a) relu((b^T x + c) / t) for every t > 0, so the
        representative has ||(b, c)|| = 1 (the scale moved into a). tanh is odd: a tanh(z) = (-a) tanh(-z), so the
        representative has the first nonzero entry of (b, c) positive. GELU and sigmoid have neither symmetry."""
        a, inner = theta[:, :d_out], theta[:, d_out:]
        if self.activation == "relu":
            norm = jnp.sqrt(jnp.sum(inner**2, axis=1, keepdims=True))
            safe = jnp.where(norm > 0, norm, 1.0)
            return jnp.concatenate([a * norm, inner / safe], axis=1)
        if self.activation == "tanh":
            lead = jnp.take_along_axis(inner, jnp.argmax(inner != 0, axis=1)[:, None], axis=1)
            sign = jnp.where(lead < 0, -1.0, 1.0)
            return jnp.concatenate([a * sign, inner * sign], axis=1)
        return theta


EXPERTS = {"constant": ConstantExpert, "linear": LinearExpert} | {
    act: (lambda a=act: ActivationExpert(activation=a)) for act in ACTIVATIONS}


# ------------------------------------------------------------------------------------------------
# names a configuration builds parts by, and parts registered from outside the package


GATE_NAMES = {"softmax": lambda: SoftmaxGate("pinned"), "softmax-extra": lambda: SoftmaxGate("extra"),
              "softmax-free": lambda: SoftmaxGate("none"), "sigmoid": SigmoidGate,
              "normalised-sigmoid": NormalisedSigmoidGate, "laplace": LaplaceGate,
              "laplace-pinned": lambda: LaplaceGate("pinned"), "gaussian": GaussianGate}
EXPERT_NAMES = {"constant": ConstantExpert, "linear": LinearExpert} | {
    a: (lambda a=a: ActivationExpert(activation=a)) for a in ACTIVATIONS} | {
    f"{a}-nobias": (lambda a=a: ActivationExpert(activation=a, bias=False)) for a in ACTIVATIONS}


def _register(kind: str, names: dict, name, factory, replace: bool, part) -> None:
    if not isinstance(name, str) or not name:
        raise ValueError(f"name: a {kind}'s name must be a non-empty string, got {name!r}")
    if not callable(factory):
        raise ValueError(f"factory: must be callable (a class or a function of no arguments), got {factory!r}")
    try:
        made = factory()
    except Exception as e:  # noqa: BLE001 (whatever the factory raises, the user is told which factory)
        raise ValueError(f"factory: calling it with no arguments failed ({type(e).__name__}: {e})") from None
    if not isinstance(made, part):
        raise ValueError(f"factory: must build a lab.{part.__name__}, built {made!r}")
    if name in names and not replace:
        raise ValueError(f"name: a {kind} named {name!r} exists already; pass replace=True to replace it")
    names[name] = factory


def register_gate(name: str, factory, *, replace: bool = False) -> None:
    """Make ``model.gate = name`` in a lab configuration build ``factory()`` (a :class:`moe_estimation.lab.Gate`).
    A gate defined in your own module joins the configurations this way without touching the package; register
    it at that module's import, so that worker processes (``--workers``) that import it know it too."""
    _register("gate", GATE_NAMES, name, factory, replace, Gate)


def register_expert(name: str, factory, *, replace: bool = False) -> None:
    """As :func:`register_gate`, for ``model.expert = name`` (a :class:`moe_estimation.lab.Expert`)."""
    _register("expert", EXPERT_NAMES, name, factory, replace, Expert)


# ------------------------------------------------------------------------------------------------
# the prefix model's parts: a frozen block of pre-trained experts, and prompts through a structure


def _array(name, value, ndim):
    a = np.asarray(value, dtype=float)
    if a.ndim != ndim or not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: expected a finite {ndim}-dimensional array, got shape {a.shape}")
    return jnp.asarray(a)


@dataclasses.dataclass(frozen=True, eq=False)
class FrozenExperts:
    """N pre-trained experts that no fit touches: quadratic gate scores x^T A_j x + a_j and linear outputs H_j x
    (``A`` (N, d, d), ``a`` (N,), ``H`` (N, d_out, d)). They join a softmax gate (reference ``extra``) as one
    component of score lse_j(x^T A_j x + a_j) and output the experts' softmax-weighted mean
    (:func:`moe_estimation.prefix.model.expert_summary`): the prefix model's pre-trained block. Compared by identity."""

    A: jax.Array
    a: jax.Array
    H: jax.Array
    name = "frozen"

    def __post_init__(self):
        A, a, H = _array("frozen.A", self.A, 3), _array("frozen.a", self.a, 1), _array("frozen.H", self.H, 3)
        if A.shape[1] != A.shape[2] or a.shape[0] != A.shape[0] or H.shape[0] != A.shape[0] or H.shape[2] != A.shape[1]:
            raise ValueError(f"Shape mismatch in frozen.A, frozen.a, frozen.H: expected (N, d, d), (N,), (N, d_out, d), "
                             f"got {A.shape}, {a.shape}, {H.shape}")
        for name, v in (("A", A), ("a", a), ("H", H)):
            object.__setattr__(self, name, v)

    @property
    def d(self) -> int:
        return int(self.A.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.H.shape[1])

    def summary(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(score, output ``(d_out,)``) of the block as one component at x."""
        return expert_summary(self, x)


@dataclasses.dataclass(frozen=True, eq=False)
class PromptStructure:
    """How a prompt's free vector becomes its gate and its expert (:mod:`moe_estimation.prefix.structures`): a
    component's parameters are (p, b), the prompt p and its gate bias b; its gate score is k(p)^T x + b and its
    expert the constant v(p), with (k, v) = (B p^K, C p^V) for ``non-shared`` (p = (p^K, p^V)), (B W1 p, C W2 p)
    for ``shared-linear`` and ``prompt-tuning`` and (B s(W1 p), C s(W2 p)) for ``shared-nonlinear``. The box:
    p in [-atom_bound, atom_bound], b in ``bias_bounds``. A Voronoi loss can measure ``prompt`` (p),
    ``prompt.key`` and ``prompt.value`` (p^K and p^V, non-shared), besides ``gate`` (k) and ``expert`` (v).
    Compared by identity."""

    structure: str
    B: jax.Array
    C: jax.Array
    W1: jax.Array | None = None
    W2: jax.Array | None = None
    activation: str = "tanh"
    atom_bound: float = 3.0
    bias_bounds: tuple = (-3.0, 3.0)
    name = "prompts"

    def __post_init__(self):
        if self.structure not in STRUCTURES:
            raise ValueError(f"structure: expected one of {STRUCTURES}, got {self.structure!r}")
        object.__setattr__(self, "B", _array("structure.B", self.B, 2))
        object.__setattr__(self, "C", _array("structure.C", self.C, 2))
        if self.structure == NON_SHARED:
            if self.W1 is not None or self.W2 is not None:
                raise ValueError("W1, W2: the non-shared structure has no reparameterisation maps; leave them None")
        else:
            W1, W2 = _array("structure.W1", self.W1, 2), _array("structure.W2", self.W2, 2)
            if W1.shape[0] != self.B.shape[1] or W2.shape[0] != self.C.shape[1] or W1.shape[1] != W2.shape[1]:
                raise ValueError(f"Shape mismatch in structure.W1, structure.W2: expected (d_k, d_p) and (d_k2, d_p) for "
                                 f"B {self.B.shape} and C {self.C.shape}, got {W1.shape} and {W2.shape}")
            object.__setattr__(self, "W1", W1)
            object.__setattr__(self, "W2", W2)
        if self.structure == "shared-nonlinear" and self.activation not in STRUCTURE_ACTIVATIONS:
            raise ValueError(f"activation: expected one of {tuple(STRUCTURE_ACTIVATIONS)}, got {self.activation!r}")
        try:
            lo, hi = (float(b) for b in self.bias_bounds)
            bound = float(self.atom_bound)
        except (TypeError, ValueError):
            raise ValueError(f"atom_bound, bias_bounds: expected a number and a pair (lo, hi), got {self.atom_bound!r}, "
                             f"{self.bias_bounds!r}") from None
        if not (np.isfinite(bound) and bound > 0 and np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(f"atom_bound, bias_bounds: expected a finite atom_bound > 0 and finite lo < hi, got "
                             f"{self.atom_bound!r}, {self.bias_bounds!r}")

    @property
    def d(self) -> int:
        return int(self.B.shape[0])

    @property
    def d_out(self) -> int:
        return int(self.C.shape[0])

    @property
    def key_dim(self) -> int:
        return int(self.B.shape[1])

    @property
    def atom_dim(self) -> int:
        return self.key_dim + int(self.C.shape[1]) if self.structure == NON_SHARED else int(self.W1.shape[1])

    def key_value(self, atoms: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Prompts ``(K, atom_dim)`` -> keys ``(K, d)`` and values ``(K, d_out)``."""
        return key_value(self, atoms)

    def blocks(self) -> dict:
        """The pieces of p a loss can measure: ``prompt``, and ``prompt.key``, ``prompt.value`` when non-shared."""
        out = {"prompt": slice(0, self.atom_dim)}
        if self.structure == NON_SHARED:
            out |= {"prompt.key": slice(0, self.key_dim), "prompt.value": slice(self.key_dim, self.atom_dim)}
        return out

    def box(self, K: int) -> tuple[np.ndarray, np.ndarray]:
        """(lower, upper), each ``(K, atom_dim + 1)``: the prompts, then the bias."""
        lo = np.concatenate([np.full((K, self.atom_dim), -self.atom_bound), np.full((K, 1), self.bias_bounds[0])], 1)
        hi = np.concatenate([np.full((K, self.atom_dim), self.atom_bound), np.full((K, 1), self.bias_bounds[1])], 1)
        return lo, hi


# ------------------------------------------------------------------------------------------------
# input laws


INPUT_LAWS = ("uniform", "normal", "grid", "linspace", "mixture", "gate")


@dataclasses.dataclass(frozen=True)
class InputLaw:
    """Where x comes from (row i from ``(key, i)`` alone: a longer draw extends a shorter one, as the study's
    padded data sets need):

    - ``uniform`` on [low, high]^d;
    - ``normal``: mean 0, sd ``scale``, clipped at three standard deviations;
    - ``grid``: a fixed design, ``points`` equally spaced values a coordinate on [low, high], row i the grid's
      point i mod points^d (no randomness);
    - ``linspace``: the fixed design of n equally spaced points on [low, high] for a data set of n rows, row i at
      low + (high - low) i / (n - 1), the same for every replicate (d = 1; the published softmax-gated
      Gaussian MoE study's X = linspace(0, 1, n)); it moves with n, so a data set of n rows is not the first rows
      of a larger one;
    - ``mixture``: a Gaussian mixture, component j with probability ``weights[j]`` and mean ``means[j]``
      (d-vectors), sd ``scale``, clipped at three standard deviations about its mean;
    - ``gate``: the Gaussian gate's own mixture of the true measure (the joint likelihood's; drawn by
      :func:`moe_estimation.lab.simulate_rows`, which knows the truth)."""

    law: str = "uniform"
    d: int = 1
    low: float = -1.0
    high: float = 1.0
    scale: float = 1.0
    points: int = 16
    means: tuple = ()
    weights: tuple = ()

    def __post_init__(self):
        if self.law not in INPUT_LAWS:
            raise ValueError(f"input.law: expected one of {INPUT_LAWS}, got {self.law!r}")
        if isinstance(self.d, bool) or not isinstance(self.d, (int, np.integer)) or self.d < 1:
            raise ValueError(f"input.d: must be an integer >= 1, got {self.d!r}")
        if self.law == "linspace" and self.d != 1:
            raise ValueError(f"input.d: the linspace design is for d = 1, got {self.d!r}")
        if self.law in ("uniform", "grid", "linspace") and not (np.isfinite(self.low) and np.isfinite(self.high)
                                                               and self.low < self.high):
            raise ValueError(f"input.low, input.high: expected finite low < high, got {self.low!r}, {self.high!r}")
        if self.law in ("normal", "mixture") and not (np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"input.scale: must be a finite number > 0, got {self.scale!r}")
        if self.law == "grid" and (isinstance(self.points, bool) or not isinstance(self.points, (int, np.integer))
                                   or self.points < 2):
            raise ValueError(f"input.points: must be an integer >= 2, got {self.points!r}")
        if self.law == "mixture":
            means, weights = np.asarray(self.means, float), np.asarray(self.weights, float)
            if means.ndim != 2 or means.shape[1] != self.d or not len(means) or not np.all(np.isfinite(means)):
                raise ValueError(f"input.means: expected a list of finite {self.d}-vectors, got {self.means!r}")
            if weights.shape != (len(means),) or np.any(weights <= 0) or not np.isclose(weights.sum(), 1.0):
                raise ValueError(f"input.weights: expected {len(means)} positive weights summing to 1, got {self.weights!r}")
            object.__setattr__(self, "means", tuple(map(tuple, means.tolist())))
            object.__setattr__(self, "weights", tuple(weights.tolist()))

    def row(self, key: jax.Array, dtype, index=None, n=None) -> jax.Array:
        """One input (``index``: the row's number, which a fixed grid uses instead of the key; ``n``: the data set's
        size, which the linspace design needs)."""
        if self.law == "gate":
            raise ValueError("input.law: 'gate' draws x from the true gate's mixture; simulate_rows does, knowing the truth")
        if self.law == "uniform":
            return jax.random.uniform(key, (self.d,), dtype, self.low, self.high)
        if self.law == "linspace":
            if n is None:
                raise ValueError("input.law: 'linspace' places n points; give the data set's size n")
            step = (self.high - self.low) / jnp.maximum(jnp.asarray(n, dtype) - 1, 1)
            return (self.low + step * index).astype(dtype)[None]
        if self.law == "grid":
            digits = (index // self.points ** jnp.arange(self.d)) % self.points
            return (self.low + (self.high - self.low) * digits / (self.points - 1)).astype(dtype)
        z = self.scale * jnp.clip(jax.random.normal(key, (self.d,), dtype), -3.0, 3.0)
        if self.law == "normal":
            return z
        kc = jax.random.fold_in(key, 1)
        j = jax.random.categorical(kc, jnp.log(jnp.asarray(self.weights, dtype)))
        return jnp.asarray(self.means, dtype)[j] + z
