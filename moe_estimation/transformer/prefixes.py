"""The three prefix parameterisations of docs/maths.md, *The transformer* (same number L' of prefixes in each).

- ``no-share``: free prefix keys and values at every layer, ``pk, pv`` ``(layers, L', D)``.
- ``simple-share``: one vector per prefix and layer, ``p`` ``(layers, L', D)``; key = p W_K and
  value = p W_V through that layer's frozen projections (the prefix is a virtual token).
- ``deep-share``: one vector per prefix, ``p`` ``(L', D)``, through one trainable Linear-Tanh-Linear
  bottleneck (``D -> hidden -> layers * 2 * D``, hidden below D) whose output holds every layer's key and
  value: the shape of Li and Liang's language code (one network for all layers; the vision code uses one
  per layer). One network for all layers is the reparameterisation the theory calls deep-share: every
  layer's prompts come from one shared set of vectors.

:func:`prefix_kv` turns trainable parameters into the per-layer ``(keys, values)`` that
:func:`moe_estimation.transformer.forward` takes, each ``(heads, L', d_head)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

PARAMETERISATIONS = ("no-share", "simple-share", "deep-share")


def init_prefix(key: jax.Array, kind: str, cfg, num_prefixes: int, hidden: int | None = None,
                dtype=jnp.float32) -> dict:
    """Initial trainable parameters in ``dtype``. The scales are chosen so that the initial prefix keys and
    values of the three parameterisations have about the same size (entries of order 0.5). ``hidden``: the
    deep-share bottleneck's width, by default half the model width."""
    hidden = cfg.width // 2 if hidden is None else hidden
    if kind == "deep-share" and not 1 <= hidden:
        raise ValueError(f"hidden: the deep-share bottleneck needs a positive width, got {hidden!r}")
    return jax.tree.map(lambda a: a.astype(dtype), _init_prefix(key, kind, cfg, num_prefixes, hidden))


def _init_prefix(key, kind, cfg, num_prefixes, hidden):
    L, D = cfg.layers, cfg.width
    k1, k2, k3 = jax.random.split(key, 3)
    normal = lambda k, shape: jax.random.normal(k, shape, jnp.float32)
    if kind == "no-share":
        return dict(pk=0.5 * normal(k1, (L, num_prefixes, D)), pv=0.5 * normal(k2, (L, num_prefixes, D)))
    if kind == "simple-share":
        return dict(p=0.5 * normal(k1, (L, num_prefixes, D)))
    if kind == "deep-share":
        return dict(
            p=normal(k1, (num_prefixes, D)),
            W1=normal(k2, (D, hidden)) / jnp.sqrt(D), b1=jnp.zeros(hidden),
            W2=0.5 * normal(k3, (hidden, L * 2 * D)) / jnp.sqrt(hidden), b2=jnp.zeros(L * 2 * D),
        )
    raise ValueError(f"kind: expected one of {PARAMETERISATIONS}, got {kind!r}")


def prefix_kv(kind: str, params: dict, backbone: dict, cfg) -> list[tuple[jax.Array, jax.Array]]:
    """Per-layer prefix keys and values, each ``(heads, L', d_head)``."""
    H, dh = cfg.heads, cfg.head_dim
    heads = lambda a: a.reshape(a.shape[0], H, dh).transpose(1, 0, 2)
    out = []
    if kind == "deep-share":
        z = jnp.tanh(params["p"] @ params["W1"] + params["b1"]) @ params["W2"] + params["b2"]  # (L', layers*2*D)
        z = z.reshape(-1, cfg.layers, 2, cfg.width)
    for i, lp in enumerate(backbone["layers"]):
        if kind == "no-share":
            k, v = params["pk"][i], params["pv"][i]
        elif kind == "simple-share":
            k, v = params["p"][i] @ lp["W_K"], params["p"][i] @ lp["W_V"]
        elif kind == "deep-share":
            k, v = z[:, i, 0], z[:, i, 1]
        else:
            raise ValueError(f"kind: expected one of {PARAMETERISATIONS}, got {kind!r}")
        out.append((heads(k), heads(v)))
    return out
