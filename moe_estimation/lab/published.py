"""The published rate studies' own pieces, for rebuilding them in the lab (README *The published simulations*).

Each source's initialisation is a registered start schedule (:func:`moe_estimation.lab.fit.register_start`), so a
lab configuration names it (``[fit] init = "sgame-source"``) and every other part of the study stays the lab's.

``sgame-source``: the near-true start of the softmax-gated Gaussian mixture of linear experts study (CRPE-SGaME,
run through the R package meteoritsSim, ``ParamNMoE$initParam`` with ``nearTrue = TRUE``), for K fitted
components of a truth of K* with the last component the gate's reference:

- an assignment s of the K fitted components to the true ones, uniform over those with s_K = K* (the fitted
  reference on the true reference) that cover every true component;
- fitted gate i < K: the true gate of s_i (of the reference: 0) plus one scalar draw e ~ N(0, (0.005 n^-0.083)^2)
  added to its slope and its intercept alike; the fitted reference stays (0, 0); no split of the weight between
  the components sharing a true one;
- fitted expert i: the true expert of s_i plus one scalar draw N(0, (0.05 n^-0.083)^2) added to its slope and its
  intercept alike;
- fitted variance i: the true *standard deviation* of s_i plus |N(0, (0.005 n^-0.25)^2)|, used as a variance
  (the source passes the standard deviations where its start reads variances: a quirk kept here, so that the
  faithful rebuild starts where the source did).

It needs a softmax gate with a pinned reference, linear experts and the Gaussian likelihood (the model of that
study); other assemblies are refused.

``gmoe-source``: the near-true start of the Gaussian-gated mixture of linear experts study (CRPE-GMoE,
``init_params_GLLiM``), for K fitted components of a truth of K*:

- an assignment s, uniform over the K-tuples of true components that cover every one (the source draws uniform
  tuples until one covers: the same law);
- fitted i, with m the number of fitted components on s_i: weight pi*_{s_i} / m; mean c*_{s_i} + N(0, (0.005
  n^-0.083)^2) a coordinate; diagonal variances s*_{s_i} + |N(0, (0.0005 n^-0.25)^2)| a coordinate; expert
  slopes and intercept + N(0, (0.005 n^-0.083)^2) an entry; noise variance + |N(0, (0.0005 n^-0.25)^2)|.

It needs the Gaussian gate, linear experts and the joint likelihood (that study's model).
"""

from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from .fit import register_start
from .model import Assembly, Mixture
from .parts import GaussianGate, LinearExpert, SoftmaxGate


def _assignments(K: int, Kt: int, last_on_last: bool = True) -> np.ndarray:
    """Every assignment of K fitted components to Kt true ones covering all (with ``last_on_last``, the last on
    the last): (A, K)."""
    if last_on_last:
        rows = [s + (Kt - 1,) for s in itertools.product(range(Kt), repeat=K - 1) if set(s + (Kt - 1,)) == set(range(Kt))]
    else:
        rows = [s for s in itertools.product(range(Kt), repeat=K) if set(s) == set(range(Kt))]
    if not rows:
        raise ValueError(f"num_components: {K} fitted components cannot cover {Kt} true ones")
    return np.asarray(rows)


def sgame_source_start(key, model: Assembly, s, truth: Mixture, dtype, n_eff) -> jax.Array:
    """The source's near-true start (module docstring); a flat parameter vector of ``model``."""
    if not (isinstance(model.gate, SoftmaxGate) and model.gate.reference == "pinned"
            and isinstance(model.expert, LinearExpert) and model.likelihood == "gaussian" and model.shared is None):
        raise ValueError("init: 'sgame-source' is the start of a softmax-gated (pinned reference) Gaussian mixture of "
                         "linear experts; this assembly is another model")
    K, Kt = s.num_components, truth.gate.shape[0]
    table = jnp.asarray(_assignments(K, Kt))
    ka, kg, ke, kv = jax.random.split(key, 4)
    assign = table[jax.random.randint(ka, (), 0, table.shape[0])]
    n = jnp.asarray(n_eff, dtype)
    e_gate = 0.005 * n ** -0.083 * jax.random.normal(kg, (K, 1), dtype)
    e_expert = 0.05 * n ** -0.083 * jax.random.normal(ke, (K, 1), dtype)
    gate = jnp.where((assign < Kt - 1)[:, None], truth.gate[assign], 0.0) + e_gate
    gate = gate.at[-1].set(0.0)
    expert = truth.expert[assign] + e_expert
    sd = jnp.exp(0.5 * truth.log_var[assign])
    var = sd + jnp.abs(0.005 * n ** -0.25 * jax.random.normal(kv, (K,), dtype))
    return model.flatten(Mixture(gate, expert, jnp.log(var)))


register_start("sgame-source", sgame_source_start)


def gmoe_source_start(key, model: Assembly, s, truth: Mixture, dtype, n_eff) -> jax.Array:
    """The Gaussian-gated study's near-true start (module docstring); a flat parameter vector of ``model``."""
    if not (isinstance(model.gate, GaussianGate) and isinstance(model.expert, LinearExpert)
            and model.likelihood == "joint-gaussian"):
        raise ValueError("init: 'gmoe-source' is the start of the Gaussian-gated mixture of linear experts (joint "
                         "likelihood); this assembly is another model")
    K, Kt, d = s.num_components, truth.gate.shape[0], model.d
    table = jnp.asarray(_assignments(K, Kt, last_on_last=False))
    ka, kc, ks, ke, kv = jax.random.split(key, 5)
    assign = table[jax.random.randint(ka, (), 0, table.shape[0])]
    count = jnp.sum(assign[:, None] == assign[None, :], axis=1)
    n = jnp.asarray(n_eff, dtype)
    t = truth.gate[assign]
    c = t[:, :d] + 0.005 * n ** -0.083 * jax.random.normal(kc, (K, d), dtype)
    var = jnp.exp(t[:, d:2 * d]) + jnp.abs(0.0005 * n ** -0.25 * jax.random.normal(ks, (K, d), dtype))
    log_pi = jax.nn.log_softmax(truth.gate[:, -1])[assign] - jnp.log(count.astype(dtype))
    gate = jnp.concatenate([c, jnp.log(var), log_pi[:, None]], axis=1)
    expert = truth.expert[assign] + 0.005 * n ** -0.083 * jax.random.normal(ke, truth.expert[assign].shape, dtype)
    noise = jnp.exp(truth.log_var[assign]) + jnp.abs(0.0005 * n ** -0.25 * jax.random.normal(kv, (K,), dtype))
    return model.flatten(Mixture(gate, expert, jnp.log(noise)))


register_start("gmoe-source", gmoe_source_start)
