"""Voronoi losses between a fitted and the true mixing measure (docs/maths.md, *Voronoi losses*).

Cells: V_j = {i : atom_i is nearer to true atom j than to any other}, ties to the lower j. With
Delta_ij = atom_i - atom*_j and weights w_i = exp(b_i):

    D_2     = sum_j |sum_{i in V_j} w_i - w*_j|                       (weight part)
            + sum_{j: |V_j| = 1} sum_{i in V_j} w_i ||Delta_ij||      (singleton cells)
            + sum_{j: |V_j| > 1} sum_{i in V_j} w_i ||Delta_ij||^2    (cells with several fitted atoms)

    D_{1,r} = sum_j |sum_{i in V_j} w_i - w*_j| + sum_j sum_{i in V_j} w_i (||Delta^K_ij||^r + ||Delta^V_ij||^r)

An empty cell contributes its w*_j through the weight part. All functions are pure JAX (jit and vmap them
freely) and invariant to permuting the fitted atoms. Besides the totals, :func:`voronoi_parts` returns
each part, and the singleton and multi-atom parts split into a key half and a value half, so that a
reader can see where a loss comes from.

The identified part (docs/maths.md, *The identified part*). Where f_G cannot tell the atoms of one cell apart (two non-shared
atoms with equal keys: only w_1 + w_2 and w_1 v_1 + w_2 v_2 enter f_G), a loss of the individual atoms
need not go to zero even when f_G converges. :func:`identified_parts` reports, per true atom's cell, what
f_G pins down: the weight sum W_j = sum_{i in V_j} w_i and the weight-averaged key and value
kbar_j = sum_{i in V_j} w_i k_i / W_j (likewise vbar_j), as errors against the truth, and the spread of the
keys and of the values inside each cell, sum_{i in V_j} w_i ||k_i - kbar_j||^2. For each cell,

    sum_{i in V_j} w_i ||k_i - k*_j||^2 = W_j ||kbar_j - k*_j||^2 + sum_{i in V_j} w_i ||k_i - kbar_j||^2,

so the multi-atom part of D_2 splits exactly into an identified term and a spread term.

:func:`voronoi_loss` is each structure's own loss (D_2 on p for the shared structures, D_{1,r} on
(p^K, p^V) for non-shared); :func:`key_value_loss` is the one yardstick for all structures: D_2 on the
atoms (k_i, v_i) that the attention head actually uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .model import Params
from .structures import NON_SHARED, key_value


def _as_measure(weights, atoms, true_weights, true_atoms, split=None, r=None):
    """Arrays from array-likes, with eager checks of shapes, ``split`` and ``r`` (each message names the
    argument, the value and the rule). Non-finite values are not refused here (the functions are traced
    inside studies); they make every loss NaN, never a finite score."""
    weights, atoms, true_weights, true_atoms = (jnp.asarray(x) for x in (weights, atoms, true_weights, true_atoms))
    for name, x, nd in (("weights", weights, 1), ("atoms", atoms, 2), ("true_weights", true_weights, 1),
                        ("true_atoms", true_atoms, 2)):
        if x.ndim != nd:
            raise ValueError(f"Shape mismatch in {name}: expected a {nd}-dimensional array, got shape {x.shape}")
    if weights.shape[0] != atoms.shape[0]:
        raise ValueError(f"Shape mismatch in weights: expected one weight per fitted atom ({atoms.shape[0]},), got {weights.shape}")
    if true_weights.shape[0] != true_atoms.shape[0]:
        raise ValueError(f"Shape mismatch in true_weights: expected ({true_atoms.shape[0]},), got {true_weights.shape}")
    if atoms.shape[1] != true_atoms.shape[1]:
        raise ValueError(f"Shape mismatch in atoms: expected atoms of width {true_atoms.shape[1]} (the true atoms'),"
                         f" got {atoms.shape}")
    if split is not None and (isinstance(split, bool) or not isinstance(split, (int, np.integer))
                              or not 0 <= split <= atoms.shape[1]):
        raise ValueError(f"split: must be an integer in [0, {atoms.shape[1]}] (the atom's width), got {split!r}")
    if r is not None and not isinstance(r, jax.core.Tracer) and not (np.isfinite(r) and r >= 1):
        raise ValueError(f"r: D_(1,r) needs a finite r >= 1, got {r!r}")
    for name, x in (("weights", weights), ("true_weights", true_weights)):  # a mixing measure's weights
        if not isinstance(x, jax.core.Tracer) and bool(jnp.any(x < 0)):
            raise ValueError(f"{name}: the weights of a mixing measure must be >= 0 (exp of the biases), got "
                             f"{float(jnp.min(x))}")
    return weights, atoms, true_weights, true_atoms


def _nan_unless_finite(out: dict, *arrays, weights=()) -> dict:
    """Every float entry NaN when any input is NaN or inf, or any of ``weights`` negative (under ``jit``,
    where :func:`_as_measure` cannot refuse it): a non-finite parameter or a negative weight never scores as
    a finite (let alone zero or negative) loss."""
    ok = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in arrays] + [jnp.all(w >= 0) for w in weights]))
    return {k: (jnp.where(ok, v, jnp.nan) if jnp.issubdtype(v.dtype, jnp.floating) else v) for k, v in out.items()}


CELL_RULES = ("atom", "key")


def voronoi_cells(atoms, true_atoms, width: int | None = None) -> jax.Array:
    """The cell of each fitted atom: the index of the nearest true atom (ties to the lower index), on the
    first ``width`` coordinates (default: all of them). ``(L', D)``, ``(L, D)`` -> ``(L',)``."""
    width = atoms.shape[-1] if width is None else width
    dist = jnp.linalg.norm(atoms[:, None, :width] - true_atoms[None, :, :width], axis=-1)  # (L', L)
    return jnp.argmin(dist, axis=1)  # first minimum: ties go to the lower j


def voronoi_parts(
    weights: jax.Array,
    atoms: jax.Array,
    true_weights: jax.Array,
    true_atoms: jax.Array,
    split: int | None = None,
    r: float = 1.0,
    smooth: float = 0.0,
    cells: str = "atom",
) -> dict[str, jax.Array]:
    """All parts of D_2 and D_{1,r} for fitted ``(weights (L',), atoms (L', D))`` against the truth
    ``(true_weights (L,), true_atoms (L, D))``.

    ``cells``: ``"atom"`` (the default, the loss as the theory defines it) draws the Voronoi cells on the
    whole atom; ``"key"`` on the key part ``[:split]`` alone, as :func:`identified_parts` can (an atom whose
    key sits on a true key but whose value wanders is then scored against that key's atom).

    ``split`` cuts each atom into a key part ``[:split]`` and a value part ``[split:]`` (default: the
    whole atom is the key part and the value parts are zero). Returns a dict with ``d2``, ``d1r``,
    ``weight``, ``single``, ``multi`` and ``key_single``, ``key_multi``, ``value_single``, ``value_multi``
    (the singleton and multi-atom parts computed on the key and value halves alone), ``max_multi`` (the
    largest atom error ||Delta_ij|| of an atom in a cell holding several: 0 when no cell does),
    ``num_cells_multi`` (cells holding more than one fitted atom) and ``num_cells_empty``.

    ``max_multi`` is no term of a loss: it is the quantity the multi-atom part of D_2 controls only through
    its square. When every fitted weight is at least w_min (a box on the biases gives w_min = exp(lower
    bound)), w_min max_multi^2 <= D_2, so a D_2 at n^(-1/2) puts max_multi at n^(-1/4): slower than the
    parametric rate, the project's positive control (docs/maths.md, *A positive control*).

    ``smooth`` > 0 (or a traced value) replaces every norm ||x|| and absolute value |x| of the losses by the
    smooth sqrt(x^2 + smooth^2) - smooth (at most ``smooth`` below it, and differentiable at 0), and a squared
    norm by the sum of squares itself: for optimisation under a constraint on the loss
    (:mod:`moe_estimation.experiments.inverse`), never for scoring; 0 (the default) is the loss itself.

    Array-likes (lists) are accepted. A NaN or inf anywhere in the inputs makes every loss NaN. Raises
    ``ValueError`` for shapes that disagree, a negative weight (under ``jit``: every loss NaN), a ``split``
    outside ``[0, D]`` or an ``r`` below 1.
    """
    weights, atoms, true_weights, true_atoms = _as_measure(weights, atoms, true_weights, true_atoms, split, r)
    if cells not in CELL_RULES:
        raise ValueError(f"cells: expected one of {CELL_RULES}, got {cells!r}")
    L = true_atoms.shape[0]
    split = atoms.shape[-1] if split is None else split
    if cells == "key" and split == 0:
        raise ValueError("cells: 'key' needs a key part (split >= 1), got split = 0")
    cell = voronoi_cells(atoms, true_atoms, split if cells == "key" else None)
    onehot = jax.nn.one_hot(cell, L, dtype=weights.dtype)  # (L', L)
    counts = onehot.sum(0)
    if not isinstance(smooth, jax.core.Tracer) and not (isinstance(smooth, (int, float, np.floating))
                                                         and np.isfinite(smooth) and smooth >= 0):
        raise ValueError(f"smooth: must be a finite number >= 0, got {smooth!r}")
    smoothing = isinstance(smooth, jax.core.Tracer) or smooth > 0  # a traced value is taken as > 0
    delta = atoms - true_atoms[cell]
    single = counts[cell] == 1

    def norm(x):
        sq = jnp.sum(x**2, axis=-1)
        if smoothing:
            return jnp.sqrt(sq + smooth**2) - smooth
        # sqrt of a sum with a safe zero: no NaN if anyone differentiates through a loss at the truth
        return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)

    def square(x):
        return jnp.sum(x**2, axis=-1) if smoothing else norm(x) ** 2

    diff = onehot.T @ weights - true_weights
    weight = jnp.sum(jnp.sqrt(diff**2 + smooth**2) - smooth) if smoothing else jnp.sum(jnp.abs(diff))
    n_all, n_k, n_v = norm(delta), norm(delta[:, :split]), norm(delta[:, split:])
    w_single, w_multi = jnp.where(single, weights, 0.0), jnp.where(single, 0.0, weights)
    parts = dict(
        weight=weight,
        single=w_single @ n_all,
        multi=w_multi @ square(delta),
        key_single=w_single @ n_k,
        key_multi=w_multi @ square(delta[:, :split]),
        value_single=w_single @ n_v,
        value_multi=w_multi @ square(delta[:, split:]),
        max_multi=jnp.max(jnp.where(single, 0.0, n_all)),
        d1r=weight + weights @ (n_k**r + n_v**r),
        num_cells_multi=jnp.sum(counts > 1),
        num_cells_empty=jnp.sum(counts == 0),
    )
    parts["d2"] = weight + parts["single"] + parts["multi"]
    return _nan_unless_finite(parts, weights, atoms, true_weights, true_atoms, weights=(weights, true_weights))


def d2_loss(weights, atoms, true_weights, true_atoms) -> jax.Array:
    """D_2(G, G*) for weights ``(L',)``, atoms ``(L', D)`` against ``(L,)``, ``(L, D)``."""
    return voronoi_parts(weights, atoms, true_weights, true_atoms)["d2"]


def d1r_loss(weights, atoms, true_weights, true_atoms, split: int, r: float = 1.0) -> jax.Array:
    """D_{1,r}(G, G*) with atoms cut into key ``[:split]`` and value ``[split:]`` parts."""
    return voronoi_parts(weights, atoms, true_weights, true_atoms, split=split, r=r)["d1r"]


def structure_parts(problem, params: Params, r: float = 1.0, smooth: float = 0.0) -> dict[str, jax.Array]:
    """:func:`voronoi_parts` on the structure's own atoms (p, or the pair (p^K, p^V) split at d_k)."""
    split = problem.key_dim if problem.structure == NON_SHARED else None
    out = voronoi_parts(
        jnp.exp(params.biases), params.atoms, jnp.exp(problem.true_biases), problem.true_atoms, split=split, r=r,
        smooth=smooth,
    )
    return _nan_unless_finite(out, params.atoms, params.biases)  # a bias of -inf is no finite parameter either


def _key_value_measure(problem, params: Params):
    """(weights, (k, v) atoms, true weights, true (k, v) atoms, split) of a fitted measure and the truth."""
    k, v = key_value(problem, params.atoms)
    tk, tv = problem.true_key_value()
    return (jnp.exp(params.biases), jnp.concatenate([k, v], axis=-1), jnp.exp(problem.true_biases),
            jnp.concatenate([tk, tv], axis=-1), k.shape[-1])


def key_value_parts(problem, params: Params, smooth: float = 0.0) -> dict[str, jax.Array]:
    """:func:`voronoi_parts` on the atoms (k_i, v_i), the prefix keys and values, split into key and value."""
    *measure, split = _key_value_measure(problem, params)
    return _nan_unless_finite(voronoi_parts(*measure, split=split, smooth=smooth), params.atoms, params.biases)


def voronoi_loss(problem, params: Params, r: float = 1.0, smooth: float = 0.0) -> jax.Array:
    """The structure's own loss: D_2 on p (shared structures) or D_{1,r} on (p^K, p^V) (non-shared).
    ``smooth``: as in :func:`voronoi_parts` (0: the loss itself)."""
    parts = structure_parts(problem, params, r=r, smooth=smooth)
    return parts["d1r"] if problem.structure == NON_SHARED else parts["d2"]


def key_value_loss(problem, params: Params, smooth: float = 0.0) -> jax.Array:
    """The common yardstick: D_2 on the (key, value) atoms, the same formula for every structure.
    ``smooth``: as in :func:`voronoi_parts` (0: the loss itself)."""
    return key_value_parts(problem, params, smooth=smooth)["d2"]


IDENTIFIED_NAMES = ("weight", "key", "value", "spread_key", "spread_value")



def identified_parts(weights, atoms, true_weights, true_atoms, split: int, cells: str = "atom"
                     ) -> dict[str, jax.Array]:
    """The identified part of a fitted measure, on atoms cut into a key ``[:split]`` and a value ``[split:]``.

    ``cells``: ``"atom"`` (the default) takes the Voronoi cells of the whole atom, as :func:`voronoi_parts`
    does; ``"key"`` the Voronoi cells of the key part alone (fitted atoms merged by key proximity). The two
    differ for a fit whose values spread far along the zero set of f_G: an atom whose key sits on true atom
    j's key but whose value lies nearer true atom l's (key, value) is in l's cell by atom and in j's by key,
    and only the cells by key put it with the atoms f_G cannot tell it apart from. Returns

    - ``weight``: sum_j |W_j - w*_j| with W_j = sum_{i in V_j} w_i (an empty cell counts w*_j);
    - ``key``, ``value``: sum_j ||kbar_j - k*_j|| (likewise for values) over the non-empty cells, kbar_j the
      W-weighted average of the cell's keys;
    - ``spread_key``, ``spread_value``: sum_j sum_{i in V_j} w_i ||k_i - kbar_j||^2 (likewise for values):
      zero when every cell holds one atom, and what an unidentified direction leaves behind.

    Inputs as in :func:`voronoi_parts` (a NaN or inf makes every entry NaN).
    """
    weights, atoms, true_weights, true_atoms = _as_measure(weights, atoms, true_weights, true_atoms, split)
    if cells not in CELL_RULES:
        raise ValueError(f"cells: expected one of {CELL_RULES}, got {cells!r}")
    L = true_atoms.shape[0]
    cut = atoms.shape[-1] if cells == "atom" else split
    if cut == 0:
        raise ValueError("cells: 'key' needs a key part (split >= 1), got split = 0")
    cell = voronoi_cells(atoms, true_atoms, cut)
    onehot = jax.nn.one_hot(cell, L, dtype=weights.dtype)  # (L', L)
    W = onehot.T @ weights  # (L,)
    safe_W = jnp.where(W > 0, W, 1.0)
    mean = (onehot * weights[:, None]).T @ atoms / safe_W[:, None]  # (L, D) weighted average per cell
    err = jnp.where((W > 0)[:, None], mean - true_atoms, 0.0)
    shared_cell = (onehot.sum(0) > 1)[cell]
    dev = jnp.where(shared_cell[:, None], atoms - mean[cell], 0.0)  # against the cell's average; 0 when alone

    def norm(x):
        sq = jnp.sum(x**2, axis=-1)
        return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)

    out = dict(
        weight=jnp.sum(jnp.abs(W - true_weights)),
        key=jnp.sum(norm(err[:, :split])),
        value=jnp.sum(norm(err[:, split:])),
        spread_key=weights @ jnp.sum(dev[:, :split] ** 2, axis=-1),
        spread_value=weights @ jnp.sum(dev[:, split:] ** 2, axis=-1),
    )
    return _nan_unless_finite(out, weights, atoms, true_weights, true_atoms, weights=(weights, true_weights))


def identified_key_value(problem, params: Params, cells: str = "atom") -> dict[str, jax.Array]:
    """:func:`identified_parts` on the (key, value) atoms: with the cells of the yardstick
    :func:`key_value_loss` (``cells="atom"``), or by key (``cells="key"``)."""
    *measure, split = _key_value_measure(problem, params)
    return _nan_unless_finite(identified_parts(*measure, split=split, cells=cells), params.atoms, params.biases)
