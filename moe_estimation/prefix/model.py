"""The softmax-gated regression function f_G (docs/maths.md, *The regression model*).

    f_G(X) = [ sum_j exp(X^T A_j X + a_j) H_j X + sum_i exp(k_i^T X + b_i) v_i ]
             / [ sum_j exp(X^T A_j X + a_j) + sum_i exp(k_i^T X + b_i) ]

The N + L' gating scores go through ``jax.nn.softmax`` (max-subtracted), never through a raw ``exp``, so
the result is finite for every finite parameter and does not change when one constant is added to every
score. :func:`regression_function` is written for one sample and batched by the caller's ``vmap``;
:func:`predict` is that ``vmap`` over rows.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from .structures import key_value


class Params(NamedTuple):
    """A mixing measure G = sum_i exp(b_i) delta_{atom_i}: ``atoms`` ``(L', atom_dim)``, ``biases`` ``(L',)``."""

    atoms: jax.Array
    biases: jax.Array


def true_params(problem) -> Params:
    """The true mixing measure G* of ``problem`` as :class:`Params`."""
    return Params(problem.true_atoms, problem.true_biases)


def gating_scores(problem, params: Params, x: jax.Array) -> jax.Array:
    """The N + L' gating scores for one input ``x`` ``(d,)``: experts first, then prompts."""
    keys, _ = key_value(problem, params.atoms)
    expert = jnp.einsum("i,jik,k->j", x, problem.A, x) + problem.a
    prompt = keys @ x + params.biases
    return jnp.concatenate([expert, prompt])


def regression_function(problem, params: Params, x: jax.Array) -> jax.Array:
    """f_G(x) ``(d_v,)`` for one input ``x`` ``(d,)``."""
    _, values = key_value(problem, params.atoms)
    weights = jax.nn.softmax(gating_scores(problem, params, x))
    experts = problem.H @ x  # (N, d_v)
    outputs = jnp.concatenate([experts, values], axis=0)  # (N + L', d_v)
    return weights @ outputs


def expert_summary(problem, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The pre-trained block for one input, which no fitted parameter touches: the log-sum-exp of the
    N expert scores and the experts' softmax-weighted output ``(d_v,)``. With it the N experts act as one
    expert of score ``lse`` and value ``mean``; the estimator computes it once per data set."""
    scores = jnp.einsum("i,jik,k->j", x, problem.A, x) + problem.a
    return jax.nn.logsumexp(scores), jax.nn.softmax(scores) @ (problem.H @ x)


def regression_from_summary(problem, params: Params, x: jax.Array, lse: jax.Array, mean: jax.Array) -> jax.Array:
    """f_G(x) from :func:`expert_summary` ``(lse, mean)``: equal to :func:`regression_function`."""
    keys, values = key_value(problem, params.atoms)
    weights = jax.nn.softmax(jnp.concatenate([lse[None], keys @ x + params.biases]))
    return weights[0] * mean + weights[1:] @ values


def predict(problem, params: Params, X: jax.Array) -> jax.Array:
    """f_G on every row of ``X`` ``(n, d)``; returns ``(n, d_v)``."""
    return jax.vmap(regression_function, in_axes=(None, None, 0))(problem, params, X)
