"""Problems: the known pre-trained part, the prompt structure and the true mixing measure.

A :class:`Problem` is a frozen pytree (arrays are leaves; names and bounds are static), so it can be passed
straight into jitted and vmapped functions. Building one validates it (docs/maths.md, *Identifiability and the flat direction*): shapes agree, the
known maps are injective where identifiability needs it, the true atoms are distinct, the noise is
positive, and the truth lies inside the compact parameter box that the estimator is confined to. Every
failure is a ``ValueError`` whose message names the argument, the value and the rule.

Use :func:`make_problem` to build one from your own matrices (or from a seed), and :func:`preset` for the
named problems that the studies and the tests use.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .structures import (
    ACTIVATIONS,
    NON_SHARED,
    PROMPT_TUNING,
    SHARED_LINEAR,
    SHARED_NONLINEAR,
    STRUCTURES,
    atom_dim,
    is_shared,
    key_value,
)

INPUT_DISTRIBUTIONS = ("uniform", "normal")


@dataclasses.dataclass(frozen=True)
class Problem:
    """A prefix-MoE regression problem (docs/maths.md, *The regression model*).

    Arrays (pytree leaves):
      A: ``(N, d, d)`` symmetric quadratic gating matrices of the pre-trained experts.
      a: ``(N,)`` their gating biases.
      H: ``(N, d_v, d)`` their linear experts.
      B: ``(d, d_k)`` key read-out; C: ``(d_v, d_k2)`` value read-out.
      W1: ``(d_k, d_p)``, W2: ``(d_k2, d_p)`` reparameterisation maps (``None`` for ``non-shared``).
      true_atoms: ``(L, atom_dim)`` true prompts; true_biases: ``(L,)`` their gating biases b*.

    Static fields: ``structure``, ``activation``, ``noise_var`` (nu, the variance of each output
    coordinate), ``input_dist`` (``uniform`` on [-input_scale, input_scale]^d, or ``normal`` with that
    standard deviation, clipped to 3 of them so X stays bounded), ``atom_bound`` (atoms live in
    [-atom_bound, atom_bound]^atom_dim) and ``bias_bounds`` (biases in [lo, hi]).
    """

    A: jax.Array
    a: jax.Array
    H: jax.Array
    B: jax.Array
    C: jax.Array
    W1: jax.Array | None
    W2: jax.Array | None
    true_atoms: jax.Array
    true_biases: jax.Array
    structure: str = SHARED_LINEAR
    activation: str = "tanh"
    noise_var: float = 0.01
    input_dist: str = "uniform"
    input_scale: float = 1.0
    atom_bound: float = 3.0
    bias_bounds: tuple[float, float] = (-3.0, 3.0)

    # -- sizes -------------------------------------------------------------------------------------
    @property
    def d(self) -> int:
        """Input dimension."""
        return int(self.A.shape[1])

    @property
    def d_v(self) -> int:
        """Output dimension."""
        return int(self.H.shape[1])

    @property
    def num_experts(self) -> int:
        """N, the number of pre-trained experts."""
        return int(self.A.shape[0])

    @property
    def num_true_prompts(self) -> int:
        """L, the number of prompts in the truth."""
        return int(self.true_atoms.shape[0])

    @property
    def atom_dim(self) -> int:
        """Length of one atom (``d_k + d_k2`` for non-shared, ``d_p`` otherwise)."""
        return int(self.true_atoms.shape[1])

    @property
    def key_dim(self) -> int:
        """Length of the key part p^K of a non-shared atom (``d_k``); the value part follows it."""
        return int(self.B.shape[1])

    @property
    def dtype(self):
        """The floating dtype of every array of the problem (and of fits and data made from it)."""
        return self.true_atoms.dtype

    def true_key_value(self) -> tuple[jax.Array, jax.Array]:
        """The true prefix keys ``(L, d)`` and values ``(L, d_v)``."""
        return key_value(self, self.true_atoms)

    def replace(self, **changes: Any) -> "Problem":
        """A copy with some fields changed, validated again."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["dtype"] = self.dtype
        fields.update(changes)
        return make_problem(**fields)


jax.tree_util.register_dataclass(
    Problem,
    data_fields=["A", "a", "H", "B", "C", "W1", "W2", "true_atoms", "true_biases"],
    meta_fields=[
        "structure",
        "activation",
        "noise_var",
        "input_dist",
        "input_scale",
        "atom_bound",
        "bias_bounds",
    ],
)


# ------------------------------------------------------------------------------------------------
# validation


def has_bool(value: Any) -> bool:
    """True when ``value`` (a number, a nested list, an array) holds a boolean: True is no number here."""
    if isinstance(value, (bool, np.bool_)):
        return True
    if isinstance(value, np.ndarray):
        return value.dtype == bool or (value.dtype == object and any(has_bool(v) for v in value.ravel()))
    if isinstance(value, (list, tuple)):
        return any(has_bool(v) for v in value)
    return False


def _arr(name: str, value: Any, ndim: int) -> np.ndarray:
    if has_bool(value):
        raise ValueError(f"{name}: expected a numeric array, got a boolean in {value!r}")
    try:
        out = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: expected a numeric array, got {type(value).__name__} ({e})") from None
    if out.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-dimensional array, got shape {out.shape}")
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name}: every entry must be finite, got NaN or inf")
    return out


def _shape(name: str, x: np.ndarray, expected: tuple[int, ...], what: str) -> None:
    if x.shape != expected:
        raise ValueError(f"Shape mismatch in {name}: expected {expected} ({what}), got {x.shape}")


def _full_column_rank(name: str, M: np.ndarray, rule: str) -> None:
    rank = int(np.linalg.matrix_rank(M))
    if rank < M.shape[1]:
        raise ValueError(
            f"{name} is not injective: shape {M.shape}, rank {rank} < {M.shape[1]} columns. {rule} "
            "The problem is not identifiable (docs/maths.md, *Identifiability and the flat direction*)."
        )


def make_problem(
    *,
    A: Any,
    a: Any,
    H: Any,
    B: Any,
    C: Any,
    true_atoms: Any,
    true_biases: Any,
    W1: Any = None,
    W2: Any = None,
    structure: str = SHARED_LINEAR,
    activation: str = "tanh",
    noise_var: float = 0.01,
    input_dist: str = "uniform",
    input_scale: float = 1.0,
    atom_bound: float = 3.0,
    bias_bounds: tuple[float, float] = (-3.0, 3.0),
    dtype: Any = "float64",
) -> Problem:
    """Build and validate a :class:`Problem` from explicit arrays (see its docstring for shapes).

    Raises ``ValueError`` naming the argument and the rule when the problem is malformed or not
    identifiable: shapes that disagree, a non-symmetric ``A``, non-finite entries, a value map that is
    not injective (``C W2`` for shared-linear and prompt-tuning, ``W2`` and ``C`` for shared-nonlinear,
    ``B`` and ``C`` for non-shared), true atoms (or their key/value pairs) that coincide, a zero true key
    in a shared structure, a non-positive noise variance, or a truth outside the parameter box.

    ``dtype`` (float64 by default; estimation is meant to run in it) is the dtype of every array; float64
    needs ``jax.config.update("jax_enable_x64", True)``, and without it this raises instead of silently
    building a float32 problem.
    """
    dtype, lo, hi = _check_options(dtype, structure, activation, input_dist, noise_var, input_scale, atom_bound,
                                   bias_bounds)
    A_, a_, H_, B_, C_, W1_, W2_, d_k, d_k2, d_p = _check_maps(structure, A, a, H, B, C, W1, W2)
    atoms_, biases_, L = _check_truth(structure, true_atoms, true_biases, d_k, d_k2, d_p, atom_bound, lo, hi)

    out = Problem(
        A=jnp.asarray(A_, dtype),
        a=jnp.asarray(a_, dtype),
        H=jnp.asarray(H_, dtype),
        B=jnp.asarray(B_, dtype),
        C=jnp.asarray(C_, dtype),
        W1=None if W1_ is None else jnp.asarray(W1_, dtype),
        W2=None if W2_ is None else jnp.asarray(W2_, dtype),
        true_atoms=jnp.asarray(atoms_, dtype),
        true_biases=jnp.asarray(biases_, dtype),
        structure=structure,
        activation=activation,
        noise_var=float(noise_var),
        input_dist=input_dist,
        input_scale=float(input_scale),
        atom_bound=float(atom_bound),
        bias_bounds=(lo, hi),
    )

    _check_truth_separated(out, atoms_, L, structure)
    return out


def _check_options(dtype, structure, activation, input_dist, noise_var, input_scale, atom_bound, bias_bounds):
    """The scalar options of :func:`make_problem`; returns (the dtype, the bias bounds as floats)."""
    try:
        dtype = np.dtype(dtype)
    except TypeError:
        raise ValueError(f"dtype: expected 'float64' or 'float32', got {dtype!r}") from None
    if dtype not in (np.float64, np.float32):
        raise ValueError(f"dtype: expected 'float64' or 'float32', got {dtype!r}")
    if dtype == np.float64 and not jax.config.jax_enable_x64:
        raise ValueError(
            "dtype: float64 (the default) needs jax_enable_x64; call jax.config.update('jax_enable_x64', True) "
            "first, or pass dtype='float32' (float32 fits stall short of the optimum; see bench --precision)")
    if structure not in STRUCTURES:
        raise ValueError(f"structure: expected one of {STRUCTURES}, got {structure!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"activation: expected one of {tuple(ACTIVATIONS)} (an injective activation), got {activation!r}"
        )
    if input_dist not in INPUT_DISTRIBUTIONS:
        raise ValueError(f"input_dist: expected one of {INPUT_DISTRIBUTIONS}, got {input_dist!r}")
    for name, val in (("noise_var", noise_var), ("input_scale", input_scale), ("atom_bound", atom_bound)):
        if isinstance(val, (bool, np.bool_)) or not (isinstance(val, (int, float, np.floating)) and np.isfinite(val) and val > 0):
            raise ValueError(f"{name}: must be a finite number > 0, got {val!r}")
    try:
        if has_bool(bias_bounds):
            raise TypeError
        lo, hi = (float(v) for v in bias_bounds)
    except (TypeError, ValueError):
        raise ValueError(f"bias_bounds: expected a pair of numbers (lo, hi), got {bias_bounds!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"bias_bounds: expected finite lo < hi, got {bias_bounds!r}")

    return dtype, lo, hi


def _check_maps(structure, A, a, H, B, C, W1, W2):
    """The known arrays of :func:`make_problem`: shapes, symmetry, and injective value maps (the problem must be
    identifiable). Returns them as numpy arrays with the dimensions."""
    A_, a_, H_ = _arr("A", A, 3), _arr("a", a, 1), _arr("H", H, 3)
    N, d = A_.shape[0], A_.shape[1]
    if N < 1:
        raise ValueError(f"A: need at least one pre-trained expert (N >= 1), got N = {N}")
    _shape("A", A_, (N, d, d), "N square d x d matrices")
    if not np.allclose(A_, np.swapaxes(A_, 1, 2), atol=1e-10):
        raise ValueError("A: every A_j must be symmetric (the gating score is X^T A_j X); got a non-symmetric A")
    _shape("a", a_, (N,), "one bias per expert, N from A")
    d_v = H_.shape[1]
    _shape("H", H_, (N, d_v, d), "N experts of shape d_v x d, N and d from A")
    B_, C_ = _arr("B", B, 2), _arr("C", C, 2)
    d_k, d_k2 = B_.shape[1], C_.shape[1]
    _shape("B", B_, (d, d_k), "d rows, d from A")
    _shape("C", C_, (d_v, d_k2), "d_v rows, d_v from H")

    if structure == NON_SHARED:
        if W1 is not None or W2 is not None:
            raise ValueError(
                "W1, W2: the non-shared structure has no shared vector to map (key B p^K, value C p^V); leave them out"
            )
        W1_ = W2_ = None
        d_p = 0
        _full_column_rank("B", B_, "The key map B must have full column rank to recover p^K from the key.")
        _full_column_rank("C", C_, "The value map C must have full column rank to recover p^V from the value.")
    else:
        if W1 is None or W2 is None:
            raise ValueError(f"W1, W2: required for structure {structure!r} (the shared vector p -> key, value)")
        W1_, W2_ = _arr("W1", W1, 2), _arr("W2", W2, 2)
        d_p = W1_.shape[1]
        _shape("W1", W1_, (d_k, d_p), "d_k rows (columns of B)")
        _shape("W2", W2_, (d_k2, d_p), "d_k2 rows (columns of C), d_p columns as W1")
        if structure in (SHARED_LINEAR, PROMPT_TUNING):
            _full_column_rank(
                "C @ W2", C_ @ W2_, "The values C W2 p must determine p: C W2 needs at least d_p rows and rank d_p."
            )
        else:
            _full_column_rank("W2", W2_, "W2 must be injective for s(W2 p) to determine p.")
            _full_column_rank("C", C_, "C must be injective for C s(W2 p) to determine s(W2 p).")

    return A_, a_, H_, B_, C_, W1_, W2_, d_k, d_k2, d_p


def _check_truth(structure, true_atoms, true_biases, d_k, d_k2, d_p, atom_bound, lo, hi):
    """The true atoms and biases: shapes, and inside the parameter box."""
    D = atom_dim(structure, d_k, d_k2, d_p)
    atoms_ = _arr("true_atoms", true_atoms, 2)
    L = atoms_.shape[0]
    if L < 1:
        raise ValueError(f"true_atoms: need at least one true prompt (L >= 1), got L = {L}")
    _shape("true_atoms", atoms_, (L, D), f"L atoms of length {D} for {structure}")
    biases_ = _arr("true_biases", true_biases, 1)
    _shape("true_biases", biases_, (L,), "one bias per true atom")
    if np.any(np.abs(atoms_) > atom_bound):
        raise ValueError(
            f"true_atoms: must lie in the parameter box [-atom_bound, atom_bound] = [{-atom_bound}, {atom_bound}],"
            f" got max |atom| = {np.abs(atoms_).max():.4g}"
        )
    if np.any(biases_ < lo) or np.any(biases_ > hi):
        raise ValueError(f"true_biases: must lie in bias_bounds [{lo}, {hi}], got {biases_.tolist()}")

    return atoms_, biases_, L


def _check_truth_separated(out, atoms_, L: int, structure: str) -> None:
    """Distinct true atoms and (key, value) pairs, and a non-zero key in the shared structures."""
    keys, values = (np.asarray(x) for x in out.true_key_value())
    if L > 1:
        sep = np.linalg.norm(atoms_[:, None] - atoms_[None], axis=-1) + np.eye(L)
        if sep.min() < 1e-6:
            i, j = np.unravel_index(np.argmin(sep), sep.shape)
            raise ValueError(f"true_atoms: true atoms must be distinct, but atoms {i} and {j} coincide")
        kv = np.concatenate([keys, values], axis=1)
        sep = np.linalg.norm(kv[:, None] - kv[None], axis=-1) + np.eye(L)
        if sep.min() < 1e-6:
            i, j = np.unravel_index(np.argmin(sep), sep.shape)
            raise ValueError(
                f"true_atoms: atoms {i} and {j} give the same (key, value); the true prompts must be distinct"
            )
    if is_shared(structure):
        norms = np.linalg.norm(keys, axis=1)
        if norms.min() < 1e-8:
            raise ValueError(
                f"true_atoms: the key of true atom {int(np.argmin(norms))} is zero; the shared structures need "
                "B W1 p*_j != 0 (docs/maths.md, *Identifiability and the flat direction*), else the gating cannot separate the prompt from its bias"
            )


# ------------------------------------------------------------------------------------------------
# presets


def _orthogonalish(rng: np.random.Generator, rows: int, cols: int, scale: float = 1.0) -> np.ndarray:
    """A well-conditioned random matrix: Q from a QR, rescaled so singular values lie in [0.7, 1.3] * scale."""
    q, _ = np.linalg.qr(rng.normal(size=(max(rows, cols), max(rows, cols))))
    s = np.linspace(1.3, 0.7, min(rows, cols))
    m = q[:rows, : min(rows, cols)] * s
    q2, _ = np.linalg.qr(rng.normal(size=(cols, cols)))
    return scale * (m @ q2[: min(rows, cols), :])


def _check_seed(seed) -> None:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0, got {seed!r}")


def random_pretrained(seed: int, *, d: int = 2, d_v: int = 2, num_experts: int = 2, scale: float = 1.0) -> dict:
    """Draw a pre-trained part (A, a, H) from a seed: symmetric A_j with entries ~ N(0, scale^2 / 4),
    a_j = 0, H_j with entries ~ N(0, scale^2). Returns a dict of numpy arrays for :func:`make_problem`."""
    _check_seed(seed)
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(num_experts, d, d)) * scale / 2
    A = (M + np.swapaxes(M, 1, 2)) / 2
    return dict(A=A, a=np.zeros(num_experts), H=rng.normal(size=(num_experts, d_v, d)) * scale)


PRESETS = (NON_SHARED, SHARED_LINEAR, "shared-tanh", PROMPT_TUNING)  # one truth in (key, value) space
PRESET_NAMES = PRESETS + ("shared-nonlinear",)  # every name preset() takes


def preset(name: str, *, seed: int = 0, noise_var: float = 0.01, dtype: Any = "float64") -> Problem:
    """A named, identifiable problem; the four of :data:`PRESETS` are comparable.

    All four share one pre-trained part (d = 2 inputs, d_v = 2 outputs, N = 2 quadratic-gated linear
    experts, drawn from ``seed``), the key map B, the value map C and one map W = W1 = W2, and their L = 2
    true prompts have the same true keys ``B q_j`` and values ``C q_j`` (with q_1 = (0.8, -0.5),
    q_2 = (-0.6, 0.7)) and the same biases b* = (0, 0.3):

    - ``non-shared``: atoms (p^K, p^V) = (q_j, q_j);
    - ``shared-linear``: p_j = W^{-1} q_j, so that W p_j = q_j;
    - ``shared-tanh`` (shared-nonlinear, s = tanh): p_j = W^{-1} artanh(q_j), so that tanh(W p_j) = q_j.
      With W1 = W2 its value is a *linear* function of its key, v = C B^{-1} k for every p: its (key, value)
      model is shared-linear's in another parameterisation, not a nonlinear map;
    - ``prompt-tuning``: W_K = B W, W_V = C W, B = C = I, p_j = W^{-1} q_j.

    And one more, with the same pre-trained part, B, C and true keys but other true values:

    - ``shared-nonlinear``: k = B tanh(W p), v = C tanh(W2 p) with a second map W2 (drawn after the others,
      W2 W^{-1} not diagonal), p_j = W^{-1} artanh(q_j): the keys are the presets' ``B q_j`` and the values
      ``C tanh(W2 p_j)``. Here v = C tanh(W2 W^{-1} artanh(B^{-1} k)) is a nonlinear function of k: the
      shared structure with a map that is nonlinear in fact.

    The estimators are all confined to atoms in [-3, 3] and biases in [-3, 3] (weights exp(b) in [0.05, 20]).
    """
    if name not in PRESET_NAMES:
        raise ValueError(f"name: unknown preset {name!r}; expected one of {PRESET_NAMES}")
    _check_seed(seed)
    rng = np.random.default_rng(seed)
    pre = random_pretrained(seed)
    B = _orthogonalish(rng, 2, 2, 1.5)
    C = _orthogonalish(rng, 2, 2, 1.5)
    W = _orthogonalish(rng, 2, 2, 1.0)
    q = np.array([[0.8, -0.5], [-0.6, 0.7]])
    b = np.array([0.0, 0.3])
    Winv = np.linalg.inv(W)
    common = dict(true_biases=b, noise_var=noise_var, dtype=dtype, **pre)
    if name == NON_SHARED:
        return make_problem(structure=NON_SHARED, B=B, C=C, true_atoms=np.concatenate([q, q], axis=1), **common)
    if name == SHARED_LINEAR:
        return make_problem(structure=SHARED_LINEAR, B=B, C=C, W1=W, W2=W, true_atoms=q @ Winv.T, **common)
    if name == "shared-tanh":
        return make_problem(
            structure=SHARED_NONLINEAR, activation="tanh", B=B, C=C, W1=W, W2=W,
            true_atoms=np.arctanh(q) @ Winv.T, **common,
        )
    if name == "shared-nonlinear":
        W2 = _orthogonalish(rng, 2, 2, 1.0)  # drawn after B, C, W: the other presets are unchanged
        return make_problem(
            structure=SHARED_NONLINEAR, activation="tanh", B=B, C=C, W1=W, W2=W2,
            true_atoms=np.arctanh(q) @ Winv.T, **common,
        )
    return make_problem(
        structure=PROMPT_TUNING, B=np.eye(2), C=np.eye(2), W1=B @ W, W2=C @ W, true_atoms=q @ Winv.T, **common
    )


# ------------------------------------------------------------------------------------------------
# truths that move with n


def merge_factor(n: int, beta: float, c: float) -> float:
    """The factor ``c n^(-beta)`` by which :func:`move_truth` scales a pair's separation at sample size n."""
    return float(c) * float(n) ** (-float(beta))


def move_truth(problem: Problem, factor: float, pair: tuple[int, int] = (0, 1)) -> Problem:
    """The problem with two of its true prompts brought closer: ``factor`` times their separation, about
    their midpoint, along the line between them (``factor = 1`` gives the problem back unchanged).

    What moves is what the structure shares. A non-shared atom (p^K, p^V) moves its key part only: the two
    true keys ``B p^K`` come ``factor`` times as close and the values stay where they were. A shared atom p
    moves as a whole, so its key and its value come close together (for the linear maps both exactly
    ``factor`` times as close; for a nonlinear map nearly so). Since every structure's key is linear in the
    moved coordinates where the maps are linear, the presets' non-shared, shared-linear and prompt-tuning
    truths keep the same true keys as one another at every factor.

    With ``factor = c n^(-beta)`` (:func:`merge_factor`) this is the truth G*_n of a family that moves with
    the sample size (docs/maths.md, *Truths that move with n*). The result is validated like any problem
    (distinct atoms, inside the box)."""
    i, j = (int(x) for x in pair)
    L = problem.num_true_prompts
    if not (0 <= i < L and 0 <= j < L and i != j):
        raise ValueError(f"pair: expected two distinct true prompts among 0..{L - 1}, got {tuple(pair)!r}")
    if not (np.isfinite(factor) and factor > 0):
        raise ValueError(f"factor: must be a finite number > 0, got {factor!r}")
    atoms = np.array(problem.true_atoms, dtype=float)
    cols = slice(0, problem.key_dim) if problem.structure == NON_SHARED else slice(None)
    ai, aj = atoms[i, cols].copy(), atoms[j, cols].copy()
    near, far = (1 + factor) / 2, (1 - factor) / 2  # midpoint +- factor * half the difference (exact at 1)
    atoms[i, cols], atoms[j, cols] = near * ai + far * aj, far * ai + near * aj
    return problem.replace(true_atoms=atoms)


# ------------------------------------------------------------------------------------------------
# drawn problems: more than one truth and shape

DRAW_STRUCTURES = (NON_SHARED, SHARED_LINEAR)


def draw_problem(structure: str, *, seed: int, d: int = 2, d_v: int = 2, key_separation: float = 1.0,
                 num_experts: int = 2, noise_var: float = 0.01, dtype: Any = "float64") -> Problem:
    """A problem drawn from ``seed`` at a declared shape and key separation, for studies over geometries.

    Built like :func:`preset`, with other sizes: a pre-trained part of ``num_experts`` quadratic-gated
    linear experts on ``d`` inputs and ``d_v`` outputs (:func:`random_pretrained`), well-conditioned maps B
    ``(d, d_p)``, C ``(d_v, d_p)`` and W ``(d_p, d_p)`` with d_p = min(d, d_v) (the largest prompt the values
    identify), and L = 2 true prompts q_1, q_2 in R^{d_p}: a midpoint m drawn uniformly in the ball of radius
    0.3 and a direction u uniform on the sphere, q_{1,2} = m +- t u with t chosen so that the true keys
    B q_1 and B q_2 lie exactly ``key_separation`` apart. Biases b* = (0, 0.3), as the presets'.

    ``structure`` ``non-shared`` takes atoms (q_j, q_j), ``shared-linear`` atoms W^{-1} q_j with W1 = W2 = W:
    the two have the same true keys B q_j and values C q_j, so at one (seed, d, d_v, key_separation) they
    share one regression function and, in a study, one data set per replicate. The pre-trained part, the maps,
    m and u come from ``(seed, d, d_v, num_experts)`` alone, so ``key_separation`` moves the two true prompts
    along one line and changes nothing else. The draw is refused (``ValueError``) when its truth leaves the
    box."""
    if structure not in DRAW_STRUCTURES:
        raise ValueError(f"structure: a drawn problem is one of {DRAW_STRUCTURES}, got {structure!r}")
    for name, v, low in (("d", d, 1), ("d_v", d_v, 1), ("num_experts", num_experts, 1), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
            raise ValueError(f"{name}: must be an integer >= {low}, got {v!r}")
    if isinstance(key_separation, bool) or not (isinstance(key_separation, (int, float, np.floating))
                                                 and np.isfinite(key_separation) and key_separation > 0):
        raise ValueError(f"key_separation: must be a finite number > 0, got {key_separation!r}")
    d_p = min(d, d_v)
    # one stream per (seed, d, d_v): the separation scales the pair's distance and changes nothing else, so
    # two separations of one draw are the same geometry with its true keys nearer or farther apart
    rng = np.random.default_rng([int(seed), int(d), int(d_v), int(num_experts)])
    pre = random_pretrained(int(rng.integers(2**31)), d=d, d_v=d_v, num_experts=num_experts)
    B = _orthogonalish(rng, d, d_p, 1.5)
    C = _orthogonalish(rng, d_v, d_p, 1.5)
    W = _orthogonalish(rng, d_p, d_p, 1.0)
    u = rng.normal(size=d_p)
    u /= np.linalg.norm(u)
    m = rng.normal(size=d_p)
    m *= 0.3 * rng.uniform() ** (1 / d_p) / np.linalg.norm(m)
    t = float(key_separation) / (2 * np.linalg.norm(B @ u))
    q = np.stack([m + t * u, m - t * u])
    common = dict(true_biases=np.array([0.0, 0.3]), noise_var=noise_var, dtype=dtype, B=B, C=C, **pre)
    try:
        if structure == NON_SHARED:
            return make_problem(structure=NON_SHARED, true_atoms=np.concatenate([q, q], axis=1), **common)
        return make_problem(structure=SHARED_LINEAR, W1=W, W2=W, true_atoms=q @ np.linalg.inv(W).T, **common)
    except ValueError as e:
        raise ValueError(f"key_separation: the draw (seed {seed}, d = {d}, d_v = {d_v}, key separation "
                         f"{key_separation}) gives no valid truth: {e}") from None
