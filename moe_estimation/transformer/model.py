"""The backbone: a pre-LN transformer encoder over a short token sequence, classifying by mean pool.

Parameters are a plain pytree (dicts of arrays), so freezing is structural: prefix-tuning differentiates
only the prefix pytree and passes the backbone as a constant. Shapes: tokens ``(T,)`` integers for one
sequence (callers vmap over sequences); width ``D``, ``H`` heads of size ``D / H``.

Attention with a prefix (one layer, per head): with queries q_t, keys [p^K_1..p^K_L', k_1..k_T] and values
[p^V_1..p^V_L', v_1..v_T], row t is softmax_j(q_t . key_j / sqrt(d_head)) over all L' + T keys, applied to
the values; it is exactly the softmax-gated MoE of docs/maths.md, *The regression model* (see the bridge test).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class BackboneConfig(NamedTuple):
    vocab: int = 16
    seq_len: int = 8
    width: int = 32
    heads: int = 2
    layers: int = 2
    mlp: int = 64
    classes: int = 4

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


DTYPE = jnp.float32
"""The transformer's dtype, whatever ``jax_enable_x64`` says: parameters, activations and data are float32
(token ids int32). That alone does not give the same bits in a process that estimates in float64 (Python
numbers in the programs then compute in float64): :func:`moe_estimation.transformer.train.run_transformer`
also turns the flag off while it runs."""


def init_backbone(key: jax.Array, cfg: BackboneConfig, dtype=DTYPE) -> dict:
    """Random initial backbone parameters in ``dtype`` (scaled normal; embeddings of scale 0.5)."""
    D = cfg.width
    ks = iter(jax.random.split(key, 4 + 6 * cfg.layers))
    nrm = lambda k, shape, fan_in: jax.random.normal(k, shape, jnp.float32) / jnp.sqrt(fan_in)
    layers = []
    for _ in range(cfg.layers):
        layers.append(dict(
            ln1=dict(g=jnp.ones(D), b=jnp.zeros(D)), ln2=dict(g=jnp.ones(D), b=jnp.zeros(D)),
            W_Q=nrm(next(ks), (D, D), D), W_K=nrm(next(ks), (D, D), D), W_V=nrm(next(ks), (D, D), D),
            W_O=nrm(next(ks), (D, D), D) / jnp.sqrt(2 * cfg.layers),
            W_1=nrm(next(ks), (D, cfg.mlp), D), b_1=jnp.zeros(cfg.mlp),
            W_2=nrm(next(ks), (cfg.mlp, D), cfg.mlp) / jnp.sqrt(2 * cfg.layers), b_2=jnp.zeros(D),
        ))
    params = dict(
        tok=0.5 * jax.random.normal(next(ks), (cfg.vocab, D), jnp.float32),
        pos=0.5 * jax.random.normal(next(ks), (cfg.seq_len, D), jnp.float32),
        layers=layers, ln_f=dict(g=jnp.ones(D), b=jnp.zeros(D)),
        head=nrm(next(ks), (D, cfg.classes), D), head_b=jnp.zeros(cfg.classes),
    )
    return jax.tree.map(lambda a: a.astype(dtype), params)


def _ln(p, x):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + 1e-5) * p["g"] + p["b"]


def attention(W_Q, W_K, W_V, x, heads: int, prefix_k=None, prefix_v=None, prefix_b=None, with_weights: bool = False):
    """Multi-head attention of tokens ``x`` ``(T, D)`` with optional prefix keys and values
    ``(heads, L', d_head)`` (already in each head's key/value space) and optional prefix gate biases
    ``(heads, L')`` added to the prefixes' scores (the b_i of the MoE model; plain prefix-tuning has none).
    Returns ``(T, D)`` before W_O; with ``with_weights``, also the attention weights ``(heads, T, L' + T)``
    (prefix slots first)."""
    T, D = x.shape
    dh = W_Q.shape[1] // heads
    split = lambda a: a.reshape(T, heads, dh).transpose(1, 0, 2)  # (H, T, dh)
    q, k, v = split(x @ W_Q), split(x @ W_K), split(x @ W_V)
    if prefix_k is not None:
        k = jnp.concatenate([prefix_k, k], axis=1)
        v = jnp.concatenate([prefix_v, v], axis=1)
    scores = jnp.einsum("htd,hsd->hts", q, k) / jnp.sqrt(dh)
    if prefix_b is not None:
        scores = scores.at[:, :, : prefix_b.shape[-1]].add(prefix_b[:, None, :].astype(scores.dtype))
    w = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("hts,hsd->htd", w, v).transpose(1, 0, 2).reshape(T, heads * dh)
    return (out, w) if with_weights else out


def hidden_states(backbone: dict, tokens: jax.Array, cfg: BackboneConfig, prefix=None) -> jax.Array:
    """The final residual stream ``(T, D)`` (before the last layer norm) for one sequence. ``prefix``: per
    layer a tuple ``(keys, values)`` each ``(heads, L', d_head)``, or ``(keys, values, biases)`` with gate
    biases ``(heads, L')``; None for the plain backbone."""
    return _residual_stream(backbone, tokens, cfg, prefix)[0]


def prefix_attention_mass(backbone: dict, tokens: jax.Array, cfg: BackboneConfig, prefix) -> jax.Array:
    """The attention mass each prefix receives on one sequence ``tokens`` ``(T,)``: per layer, head and prefix,
    the attention weight on that prefix's slot averaged over the T query positions (``(layers, heads, L')``;
    a prefix with a large gate bias but a key no query meets has mass near 0). ``prefix`` as in
    :func:`hidden_states` (not None)."""
    if prefix is None:
        raise ValueError("prefix: the attention mass of prefixes needs prefixes (per layer (keys, values[, biases])), got None")
    return _residual_stream(backbone, tokens, cfg, prefix)[1]


def _residual_stream(backbone, tokens, cfg, prefix):
    """The final residual stream and, with a prefix, the prefix slots' attention mass per layer."""
    x = backbone["tok"][tokens] + backbone["pos"][: tokens.shape[0]]
    masses = []
    for i, lp in enumerate(backbone["layers"]):
        pk, pv, pb = (None, None, None) if prefix is None else (tuple(prefix[i]) + (None,))[:3]
        a, w = attention(lp["W_Q"], lp["W_K"], lp["W_V"], _ln(lp["ln1"], x), cfg.heads, pk, pv, pb, with_weights=True)
        if pk is not None:
            masses.append(w[:, :, : pk.shape[1]].mean(axis=1))  # (heads, L')
        x = x + a @ lp["W_O"]
        h = _ln(lp["ln2"], x)
        x = x + jax.nn.gelu(h @ lp["W_1"] + lp["b_1"]) @ lp["W_2"] + lp["b_2"]
    return x, (jnp.stack(masses) if masses else None)


def forward(backbone: dict, tokens: jax.Array, cfg: BackboneConfig, prefix=None) -> jax.Array:
    """Class logits ``(classes,)`` for one sequence ``tokens`` ``(T,)``; ``prefix`` as in :func:`hidden_states`."""
    pooled = _ln(backbone["ln_f"], hidden_states(backbone, tokens, cfg, prefix)).mean(0)
    return pooled @ backbone["head"] + backbone["head_b"]
