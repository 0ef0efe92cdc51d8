"""Synthetic classification tasks on token sequences (made here; nothing is downloaded).

Tokens are uniform on {0..vocab-1}; each token has a class c(t) in {0..classes-1}; the label of a sequence
is its majority class (ties to the smaller class). The tasks differ only in the token-to-class map:

- ``pretrain``: c(t) = t mod classes;
- ``downstream``: c(t) = floor(t * classes / vocab) (contiguous blocks of tokens), a different grouping of
  the same tokens into the same label space, so that the frozen head can still be read: the prefixes
  must regroup the tokens, which is what a prefix (a new expert gated on the query token) can do.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

TASKS = ("pretrain", "downstream")


def token_classes(task: str, vocab: int, classes: int) -> jax.Array:
    t = jnp.arange(vocab)
    if task == "pretrain":
        return t % classes
    if task == "downstream":
        return (t * classes) // vocab
    raise ValueError(f"task: expected one of {TASKS}, got {task!r}")


def sample(key: jax.Array, task: str, n: int, cfg) -> tuple[jax.Array, jax.Array]:
    """n sequences ``(n, T)`` and their labels ``(n,)``."""
    tokens = jax.random.randint(key, (n, cfg.seq_len), 0, cfg.vocab, dtype=jnp.int32)
    cls = token_classes(task, cfg.vocab, cfg.classes)[tokens]
    counts = jax.nn.one_hot(cls, cfg.classes, dtype=jnp.int32).sum(1)
    return tokens, jnp.argmax(counts, axis=1).astype(jnp.int32)
