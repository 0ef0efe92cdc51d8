"""Prompt structures: how one fitted atom becomes a prefix key and a prefix value.

docs/maths.md, *The structures*. With ``B`` (d x d_k), ``C`` (d_v x d_k2), ``W1`` (d_k x d_p), ``W2`` (d_k2 x d_p):

============================  =================  ==================  ===================
structure                     atom               key ``k``           value ``v``
============================  =================  ==================  ===================
``non-shared``                (p^K, p^V)         ``B p^K``           ``C p^V``
``shared-linear``             p                  ``B W1 p``          ``C W2 p``
``shared-nonlinear``          p                  ``B s(W1 p)``       ``C s(W2 p)``
``prompt-tuning``             p                  ``W_K p``           ``W_V p``
============================  =================  ==================  ===================

Prompt-tuning is shared-linear with ``W1 = W_K``, ``W2 = W_V`` and ``B``, ``C`` identities; it is kept as its
own name because its known maps come from a frozen attention head rather than from a reparameterisation
network. The functions here act on arrays of atoms of shape ``(L, atom_dim)`` and take any object with the
fields of :class:`moe_estimation.Problem` (they do not import it, so the problem module can use them to
validate itself).
"""

from __future__ import annotations

import jax.numpy as jnp
import jax

NON_SHARED = "non-shared"
SHARED_LINEAR = "shared-linear"
SHARED_NONLINEAR = "shared-nonlinear"
PROMPT_TUNING = "prompt-tuning"
STRUCTURES = (NON_SHARED, SHARED_LINEAR, SHARED_NONLINEAR, PROMPT_TUNING)

ACTIVATIONS = {
    # Only injective activations: s must be one-to-one for the values to identify p (docs/maths.md, *Identifiability and the flat direction*).
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "softsign": jax.nn.soft_sign,
}


def is_shared(structure: str) -> bool:
    """True for the structures whose key and value come from one shared vector p."""
    return structure != NON_SHARED


def atom_dim(structure: str, d_k: int, d_k2: int, d_p: int) -> int:
    """Length of one atom: ``d_k + d_k2`` for the non-shared pair (p^K, p^V), else ``d_p``."""
    return d_k + d_k2 if structure == NON_SHARED else d_p


def key_value(problem, atoms: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Map atoms ``(L, atom_dim)`` to prefix keys ``(L, d)`` and prefix values ``(L, d_v)``. ``ValueError`` for
    atoms of another width (another structure's, say): the shapes are known even under ``jit``."""
    width = problem.B.shape[1] + problem.C.shape[1] if problem.structure == NON_SHARED else problem.W1.shape[1]
    if jnp.shape(atoms)[-1:] != (width,):
        raise ValueError(f"Shape mismatch in atoms: a {problem.structure} problem's atoms have {width} coordinates, got "
                         f"shape {jnp.shape(atoms)}: parameters of another structure or problem?")
    if problem.structure == NON_SHARED:
        d_k = problem.B.shape[1]
        pk, pv = atoms[..., :d_k], atoms[..., d_k:]
        return pk @ problem.B.T, pv @ problem.C.T
    hk = atoms @ problem.W1.T
    hv = atoms @ problem.W2.T
    if problem.structure == SHARED_NONLINEAR:
        s = ACTIVATIONS[problem.activation]
        hk, hv = s(hk), s(hv)
    return hk @ problem.B.T, hv @ problem.C.T
