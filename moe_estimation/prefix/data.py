"""Simulation of (X, Y) from a problem: X bounded (docs/maths.md, *The regression model*), Y = f_{G*}(X) + N(0, nu I)."""

from __future__ import annotations

import zlib

import jax
import jax.numpy as jnp

from .._checks import check_memory, check_n
from .model import predict, true_params


def fold_key(key: jax.Array, *parts) -> jax.Array:
    """``key`` folded with each of ``parts`` in turn (integers as they are, strings by their CRC-32): keys
    from coordinates alone (docs/maths.md, *Common random numbers and keys*)."""
    for part in parts:
        key = jax.random.fold_in(key, (zlib.crc32(part.encode()) if isinstance(part, str) else int(part)) & 0x7FFFFFFF)
    return key


def _row(problem, key: jax.Array, index: jax.Array) -> tuple[jax.Array, jax.Array]:
    kx, ke = jax.random.split(jax.random.fold_in(key, index))
    if problem.input_dist == "uniform":
        x = jax.random.uniform(kx, (problem.d,), minval=-problem.input_scale, maxval=problem.input_scale)
    else:
        x = problem.input_scale * jnp.clip(jax.random.normal(kx, (problem.d,)), -3.0, 3.0)
    eps = jnp.sqrt(problem.noise_var) * jax.random.normal(ke, (problem.d_v,))
    return x, eps


def simulate_rows(problem, key: jax.Array, rows: int) -> tuple[jax.Array, jax.Array]:
    """``rows`` samples, traceable (``rows`` is a static size). Row i depends on ``(key, i)`` alone, so the
    first n rows are the same whatever ``rows`` is: padding a data set to a larger bucket does not change
    the data it holds."""
    X, eps = jax.vmap(_row, in_axes=(None, None, 0))(problem, key, jnp.arange(rows))
    return X, predict(problem, true_params(problem), X) + eps


def simulate(key: jax.Array, problem, n: int) -> tuple[jax.Array, jax.Array]:
    """Draw n i.i.d. samples: X ``(n, d)`` from the problem's input distribution, Y ``(n, d_v)``.

    Args:
      key: a JAX PRNG key.
      problem: a :class:`moe_estimation.Problem`.
      n: the sample size, an integer >= 1.

    Raises ``ValueError`` when the problem's inputs are so large that f_G overflows (when called eagerly;
    under ``jit`` or ``vmap`` the check is skipped, and a fit of such data reports status ``nonfinite``).
    """
    n = check_n(n)
    # X, the noise, the gating scores and Y of every row, twice over for the intermediates
    check_memory(2 * 8 * n * (2 * problem.d + 2 * problem.d_v + problem.num_experts + problem.num_true_prompts + 4),
                 "n", n, "its rows")
    X, Y = _simulate_jit(problem, key, n)
    # checked eagerly; under jit or vmap the value is not known here, and a fit of it reports `nonfinite`
    if not isinstance(Y, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(Y))):
        raise ValueError(
            f"input_scale: the problem's inputs (scale {problem.input_scale:g}) make f_G overflow (non-finite Y); "
            "the gating scores X^T A_j X must stay within float range: use a smaller input_scale"
        )
    return X, Y


_simulate_jit = jax.jit(simulate_rows, static_argnums=2)
