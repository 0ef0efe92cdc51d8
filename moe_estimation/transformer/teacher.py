"""Teacher-student prefix estimation: how fast are a transformer's prefixes estimated (docs/maths.md,
*The transformer: a teacher*)?

The teacher is the project's frozen pre-trained backbone with a known set of L prefixes in every layer.
Its regression function is the final residual stream of a token sequence (every position, before the last
layer norm: ``T x D`` real numbers), and the data are ``Y = f*(tokens) + noise`` with Gaussian noise of
standard deviation ``noise_sd``. Students with L' = L (exact) or L' > L (over-specified) prefixes of one
parameterisation fit it by least squares on n sequences, the backbone frozen, with the project's solver
(:func:`moe_estimation.solver.solve`: box-constrained Levenberg-Marquardt, its stopping tests and status).

Prefix gate biases. Every prefix carries a scalar gate bias per head (the b_i of the MoE model, added to
the prefix's attention score), in teacher and students alike; the teacher's are zero. Without it an
over-specified student could not represent the teacher at all: two prefixes with one key take twice the
attention mass of one, and nothing can split it.

Three truths, drawn from one set of vectors p*_i (entries ``truth_scale * N(0, 1)``):

- ``shared``: key = p*_i W_K and value = p*_i W_V through the layer's frozen projections (a virtual token);
- ``free``: the same keys, values q*_i W_V from an independent draw q*_i (of the same scale): key and value
  need not come from one vector;
- ``frozen-map``: every layer's keys and values from one vector per prefix (the first layer's p*_i) through a
  deep-share network frozen at a random map (:func:`frozen_map`).

The students (:data:`moe_estimation.transformer.PARAMETERISATIONS`): ``no-share`` (free keys and values),
``simple-share`` (one vector per prefix and layer through W_K, W_V) and ``deep-share`` (a trained
Linear-Tanh-Linear network from one vector per prefix to every layer's key and value). A simple-share
student cannot represent a free truth (its value is fixed by its key), so that pair is not run; the
``frozen-map`` student (the frozen network, only the vectors estimated) fits the frozen-map truth alone.

Measured per fit: the yardstick D_2 on the (key, value) atoms of each head (the same formula as the MoE
study, :func:`moe_estimation.prefix.voronoi.voronoi_parts`), summed over the heads of a layer (``kv_layer_<l>``)
and over layers (``loss_key_value``), with its key and value parts and the identified part
(:func:`moe_estimation.prefix.voronoi.identified_parts`); and the excess risk, the mean over held-out sequences of
||f_student - f*||^2. Rates come from the same code as the MoE study's (:func:`moe_estimation.experiments.results.rate_entries`).
"""

from __future__ import annotations

import json
import time
from functools import partial
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.flatten_util import ravel_pytree

from .._checks import make_out_dir
from ..prefix.data import fold_key
from ..rates import theory_slope as moe_theory
from ..experiments.results import RATE_LOSSES as STUDY_RATE_LOSSES
from ..experiments.results import (CellTable, RunLog, StudyLock, check_same_study, loss_matrix, plain_dict, rate_entries, versions,
                       write_config, write_csv)
from ..experiments.runner import fit_missing, load_cells
from ..solver import STATUS_LABELS, SolverSettings, Status, is_converged, normal_equations, solve
from ..prefix.voronoi import IDENTIFIED_NAMES, identified_parts, voronoi_parts
from ..experiments.workers import resolve_workers
from .model import BackboneConfig, hidden_states, prefix_attention_mass
from ..prefix.structures import NON_SHARED, SHARED_LINEAR, SHARED_NONLINEAR
from .prefixes import PARAMETERISATIONS, init_prefix, prefix_kv
from .train import prepare_backbone

TRUTHS = ("shared", "free", "frozen-map")
SPECIFICATIONS = ("exact", "over")
STUDENTS = PARAMETERISATIONS + ("frozen-map",)
"""The students: the three parameterisations, and ``frozen-map``: deep-share's network frozen at a fixed random
map (:func:`frozen_map`), only the vectors estimated: the known shared structure of a ``frozen-map`` truth."""


class TeacherStudy(NamedTuple):
    """A teacher-student study. The backbone fields (``backbone``, ``pretrain_*``, ``test_size``) are
    those of :class:`moe_estimation.transformer.train.TransformerStudy`: the backbone is pre-trained the
    same way, on the synthetic pre-training task."""

    backbone: BackboneConfig = BackboneConfig(vocab=16, seq_len=4, width=8, heads=2, layers=2, mlp=16, classes=4)
    seed: int = 0
    pretrain_steps: int = 600
    pretrain_batch: int = 256
    pretrain_lr: float = 3e-3
    num_prefixes: int = 2  #: L, the teacher's prefixes per layer
    extra_prefixes: int = 1  #: L' - L for the over-specified students
    truth_scale: float = 0.5
    noise_sd: float = 1e-4  #: small enough that the exact fits are in their asymptotic regime (docs/maths.md)
    bound: float = 3.0  #: every prefix and network parameter in [-bound, bound]
    bias_bounds: tuple = (-4.0, 2.0)  #: the gate biases' box
    deep_hidden: int = 4  #: the deep-share network's hidden width (a bottleneck below the model width)
    ns: tuple = (8, 16, 32, 64, 128, 256)
    seeds: int = 5
    restarts: int = 2
    max_steps: int = 3000  #: a no-share or over-specified fit can need 1000-2000 steps to meet ftol
    tol: float = 1e-8  #: ftol = xtol = gtol of the solver
    test_size: int = 512
    cases: tuple = (("shared", "no-share"), ("shared", "simple-share"))
    specifications: tuple = SPECIFICATIONS
    num_bootstrap: int = 2000

    @property
    def solver(self) -> SolverSettings:
        return SolverSettings(max_steps=self.max_steps, ftol=self.tol, xtol=self.tol, gtol=self.tol)

    def num_prompts(self, specification: str) -> int:
        return self.num_prefixes + (self.extra_prefixes if specification == "over" else 0)


TEACHER_PRESETS = {
    "teacher-quick": TeacherStudy(),
    "teacher": TeacherStudy(
        ns=(8, 16, 32, 64, 128, 256, 512, 1024), seeds=20, restarts=4,
        cases=(("shared", "no-share"), ("shared", "simple-share"), ("shared", "deep-share"), ("free", "no-share"),
               ("free", "deep-share"))),
    "teacher-more": TeacherStudy(  # teacher-quick's design for the students and truth it leaves out (CPU: hours)
        cases=(("shared", "deep-share"), ("free", "no-share"), ("free", "deep-share"))),
    "teacher-noise": TeacherStudy(  # the over-specified students again at three times the noise (a design check)
        noise_sd=3e-4, ns=(8, 16, 32, 64, 128), specifications=("over",)),
    # teacher-quick with 4 starts a fit, n to 128 (a design check). Its first 2 starts are teacher-quick's
    # own (jax.random.split(k, 4)[:2] equals split(k, 2)): in one process no fit's objective comes out
    # higher; across machines or thread counts the same start may land a solver tolerance away.
    "teacher-starts": TeacherStudy(restarts=4, ns=(8, 16, 32, 64, 128)),
    # teacher-quick's design (data, starts, box, tolerances) for the exactly specified students of both truths
    # at n = 64 ... 4096: where do the controls (D_2 at -1/2, excess risk at -1) pass, over 1.5 decades? CPU: about
    # 3.5 hours with two workers (the grid grew from 2048 to 4096 when 64 ... 2048 left the excess risk's interval
    # just short of -1; a run of the smaller grid resumes into this one).
    "teacher-controls": TeacherStudy(
        ns=(64, 128, 256, 512, 1024, 2048, 4096), specifications=("exact",),
        cases=(("shared", "no-share"), ("shared", "simple-share"), ("free", "no-share"))),
    # teacher-quick's and teacher-more's over-specified students again, now with the attention mass, cells by
    # key and every fit's prefixes recorded: the anatomy of the extra prefix. CPU: about 7 hours.
    "teacher-anatomy": TeacherStudy(
        specifications=("over",),
        cases=(("shared", "no-share"), ("shared", "simple-share"), ("shared", "deep-share"), ("free", "no-share"),
               ("free", "deep-share"))),
    # controls for deep-share: a truth made by a frozen random deep-share network, fitted by no-share students, by
    # deep-share students (their network trained) and by frozen-map students (the known network, only the vectors
    # estimated): does a known nonlinear structure stay estimable where a trained one does not? (The frozen map
    # that reproduces simple-share's structure is simple-share itself: W_K, W_V frozen.) CPU: hours.
    "teacher-frozen": TeacherStudy(
        cases=(("frozen-map", "no-share"), ("frozen-map", "deep-share"), ("frozen-map", "frozen-map"))),
    "teacher-tiny": TeacherStudy(pretrain_steps=50, ns=(16, 32), seeds=2, max_steps=20, test_size=64,
                                 cases=(("shared", "no-share"), ("shared", "simple-share")), num_bootstrap=50),
}


def validate_study(study: TeacherStudy) -> None:
    """Clear errors for a study that cannot run (each names the field, the value and the rule)."""
    for truth, kind in study.cases:
        if truth not in TRUTHS:
            raise ValueError(f"cases: truth must be one of {TRUTHS}, got {truth!r}")
        if kind not in STUDENTS:
            raise ValueError(f"cases: parameterisation must be one of {STUDENTS}, got {kind!r}")
        if truth in ("free", "frozen-map") and kind == "simple-share":
            raise ValueError(f"cases: a simple-share student cannot represent a {truth} truth (its value is fixed by its "
                             f"key through W_K, W_V); leave ('{truth}', 'simple-share') out")
        if kind == "frozen-map" and truth != "frozen-map":
            raise ValueError(f"cases: a frozen-map student makes its keys and values by the frozen network and cannot "
                             f"represent a {truth} truth; pair it with the frozen-map truth")
    for spec in study.specifications:
        if spec not in SPECIFICATIONS:
            raise ValueError(f"specifications: expected a subset of {SPECIFICATIONS}, got {spec!r}")
    if len(set(study.ns)) < 2 or min(study.ns) < 1:
        raise ValueError(f"ns: need at least two distinct sample sizes >= 1, got {study.ns}")
    for name in ("num_prefixes", "seeds", "restarts", "max_steps", "deep_hidden", "test_size"):
        if getattr(study, name) < 1:
            raise ValueError(f"{name}: must be >= 1, got {getattr(study, name)}")
    if study.extra_prefixes < 1 and "over" in study.specifications:
        raise ValueError(f"extra_prefixes: must be >= 1 for over-specified students, got {study.extra_prefixes}")
    for name in ("noise_sd", "truth_scale", "bound", "tol"):
        if not getattr(study, name) > 0:
            raise ValueError(f"{name}: must be > 0, got {getattr(study, name)}")
    lo, hi = study.bias_bounds
    if not lo < 0 < hi:
        raise ValueError(f"bias_bounds: need lo < 0 < hi (the teacher's biases are 0), got {study.bias_bounds}")


# ------------------------------------------------------------------------------------------------
# the teacher and the students


def _heads(a, cfg):
    """``(L, D)`` -> ``(heads, L, d_head)``."""
    return a.reshape(a.shape[0], cfg.heads, cfg.head_dim).transpose(1, 0, 2)


def frozen_map(study: TeacherStudy, dtype=jnp.float64) -> dict:
    """The frozen network of the ``frozen-map`` truth and student: a deep-share network (Linear-Tanh-Linear from one
    vector per prefix to every layer's key and value, :func:`moe_estimation.transformer.prefixes.init_prefix`) at
    its usual random initialisation from the study's seed, never trained. Every layer's keys and values are then a
    fixed affine map of one bounded latent per prefix, tanh(p W1 + b1) (``deep_hidden`` numbers, below the
    vector's width, so p itself is not identified and the yardstick is on (key, value)): a known shared structure
    of the deep-share shape, beside the trained deep-share student a known map against a learned one."""
    net = init_prefix(fold_key(jax.random.key(study.seed), "frozen-map"), "deep-share", study.backbone, 1,
                      hidden=study.deep_hidden, dtype=dtype)
    return {k: v for k, v in net.items() if k != "p"}


def with_frozen_map(study: TeacherStudy, backbone: dict) -> dict:
    """``backbone`` with the frozen map beside it (key ``frozen_map``) when a case needs it (a constant of every
    fit, as the backbone is); unchanged otherwise."""
    if not any("frozen-map" in case for case in study.cases):
        return backbone
    return dict(backbone, frozen_map=frozen_map(study, backbone["tok"].dtype))


def _truth_vectors(study: TeacherStudy, backbone: dict, truth: str):
    """The truth's draws ``(p, q)``, each ``(layers, L, width)``: every layer's keys are p @ W_K and values
    q @ W_V (q is p for the shared truth; the frozen-map truth takes p's first layer through its network)."""
    cfg = study.backbone
    kp, kq = jax.random.split(fold_key(jax.random.key(study.seed), "truth"))
    shape = (cfg.layers, study.num_prefixes, cfg.width)
    p = study.truth_scale * jax.random.normal(kp, shape, backbone["tok"].dtype)
    q = p if truth == "shared" else study.truth_scale * jax.random.normal(kq, shape, backbone["tok"].dtype)
    return p, q


def truth_student(study: TeacherStudy, backbone: dict, truth: str, kind: str) -> dict | None:
    """The exactly specified ``kind`` student's parameters at the truth (gate biases 0), or None when that
    student cannot represent the truth: no-share any truth, simple-share the shared truth, frozen-map the
    frozen-map truth (deep-share none: no network weights are known to give the truth). Where it exists it is the start of the truth-started fit of each data set
    (:func:`run_teacher`: ``truth_starts.csv``), the positive control of the fits from random starts."""
    if truth not in TRUTHS:
        raise ValueError(f"truth: expected one of {TRUTHS}, got {truth!r}")
    if kind not in STUDENTS:
        raise ValueError(f"kind: expected one of {STUDENTS}, got {kind!r}")
    cfg, dtype = study.backbone, backbone["tok"].dtype
    p, q = _truth_vectors(study, backbone, truth)
    if kind == "no-share":  # every layer's keys and values themselves, the heads put side by side again
        merge = lambda a: a.transpose(1, 0, 2).reshape(a.shape[1], cfg.width)
        teacher = make_teacher(study, backbone, truth)
        params = dict(pk=jnp.stack([merge(k) for k, _, _ in teacher]), pv=jnp.stack([merge(v) for _, v, _ in teacher]))
    elif kind == "simple-share" and truth == "shared":
        params = dict(p=p)
    elif kind == "frozen-map" and truth == "frozen-map":
        params = dict(p=p[0])
    else:
        return None
    params["b"] = jnp.zeros((cfg.layers, cfg.heads, study.num_prefixes), dtype)
    return params


def make_teacher(study: TeacherStudy, backbone: dict, truth: str) -> list[tuple]:
    """The teacher's prefixes: per layer ``(keys, values, biases)``, keys and values ``(heads, L, d_head)``,
    biases ``(heads, L)`` (zero). Raises when the truth does not lie inside the students' box."""
    cfg = study.backbone
    if truth not in TRUTHS:
        raise ValueError(f"truth: expected one of {TRUTHS}, got {truth!r}")
    p, q = _truth_vectors(study, backbone, truth)
    out = []
    if truth == "frozen-map":  # one vector per prefix (the first layer's draw) through the frozen network
        net = frozen_map(study, backbone["tok"].dtype)
        p = p[0]
        zero = jnp.zeros((cfg.heads, study.num_prefixes), p.dtype)
        out = [(k, v, zero) for k, v in prefix_kv("deep-share", dict(p=p, **net), backbone, cfg)]
    for i, lp in enumerate(backbone["layers"] if truth != "frozen-map" else []):
        k, v = p[i] @ lp["W_K"], q[i] @ lp["W_V"]
        out.append((_heads(k, cfg), _heads(v, cfg), jnp.zeros((cfg.heads, study.num_prefixes), k.dtype)))
    biggest = max(float(jnp.abs(jnp.concatenate([k.ravel(), v.ravel()])).max()) for k, v, _ in out)
    if biggest >= study.bound or float(jnp.abs(p).max()) >= study.bound:
        raise ValueError(f"bound: the {truth} truth has an entry of size {max(biggest, float(jnp.abs(p).max())):.3g}, "
                         f"not inside the box [-{study.bound}, {study.bound}]; raise bound or lower truth_scale")
    return out


def initial_student(key, study: TeacherStudy, kind: str, num_prompts: int, backbone: dict) -> dict:
    """A start that knows nothing of the truth or of n: keys and values from a fresh draw of the truth's
    distribution (no-share: key and value from independent draws; simple-share: one vector), the
    deep-share network at its usual initialisation; gate biases 0. Clipped into the box."""
    cfg, dtype = study.backbone, backbone["tok"].dtype
    k1, k2 = jax.random.split(key)
    shape = (cfg.layers, num_prompts, cfg.width)
    draw = lambda k: study.truth_scale * jax.random.normal(k, shape, dtype)
    if kind == "frozen-map":
        params = dict(p=draw(k1)[0])  # one vector per prefix, as the frozen-map truth's
    elif kind == "no-share":
        pk, pv = draw(k1), draw(k2)
        params = dict(pk=jnp.stack([pk[i] @ lp["W_K"] for i, lp in enumerate(backbone["layers"])]),
                      pv=jnp.stack([pv[i] @ lp["W_V"] for i, lp in enumerate(backbone["layers"])]))
    elif kind == "simple-share":
        params = dict(p=draw(k1))
    else:
        params = init_prefix(k1, kind, cfg, num_prompts, hidden=study.deep_hidden, dtype=dtype)
    params = jax.tree.map(lambda a: jnp.clip(a, -study.bound, study.bound), params)
    params["b"] = jnp.zeros((cfg.layers, cfg.heads, num_prompts), dtype)
    return params


def student_prefix(kind: str, params: dict, backbone: dict, cfg) -> list[tuple]:
    """A student's per-layer ``(keys, values, biases)``; the backbone enters as a constant (no gradient)."""
    frozen = jax.lax.stop_gradient(backbone)
    if kind == "frozen-map":
        kv = prefix_kv("deep-share", dict(p=params["p"], **frozen["frozen_map"]), frozen, cfg)
    else:
        kv = prefix_kv(kind, {k: v for k, v in params.items() if k != "b"}, frozen, cfg)
    return [(k, v, params["b"][i]) for i, (k, v) in enumerate(kv)]


def features(backbone: dict, tokens, cfg, prefix) -> jax.Array:
    """The regression function on sequences ``tokens`` ``(n, T)``: the final residual streams ``(n, T, D)``."""
    return jax.vmap(lambda t: hidden_states(backbone, t, cfg, prefix))(tokens)


def box(params: dict, study: TeacherStudy) -> tuple[dict, dict]:
    """Lower and upper bounds with the structure of ``params``."""
    lo = {k: jnp.full_like(v, study.bias_bounds[0] if k == "b" else -study.bound) for k, v in params.items()}
    hi = {k: jnp.full_like(v, study.bias_bounds[1] if k == "b" else study.bound) for k, v in params.items()}
    return lo, hi


def prefix_losses(prefix, teacher, cfg, *, cells: str = "atom", weights=None, true_weights=None) -> dict:
    """The yardstick between a student's and the teacher's prefixes: per head of every layer, D_2 on the
    atoms (key, value) with weights exp(bias) (:func:`moe_estimation.prefix.voronoi.voronoi_parts`, the value
    part starting at d_head) and the identified part; heads summed within a layer, layers summed. Returns
    the parts of :func:`voronoi_parts` (``d2``, ``weight``, ``key_single``...), ``id_<name>`` for the
    identified terms and ``layer`` ``(layers,)``, the D_2 of each layer.

    ``cells``: ``"atom"`` (Voronoi cells on (key, value)) or ``"key"`` (on the key alone). ``weights`` and
    ``true_weights``: each prefix's weight per layer ``(layers, heads, L')`` in place of exp(bias), e.g.
    the attention mass it receives (:func:`attention_mass`): exp(b) is a prefix's mixture weight only when its
    gate exp(q . k + b) is bounded away from 0 on the data, and a key no query meets makes exp(b) large for a
    prefix that carries no mass."""
    per_layer = []
    for i, ((k, v, b), (tk, tv, tb)) in enumerate(zip(prefix, teacher)):
        atoms, true_atoms = jnp.concatenate([k, v], -1), jnp.concatenate([tk, tv], -1)
        w = jnp.exp(b) if weights is None else weights[i]
        tw = jnp.exp(tb) if true_weights is None else true_weights[i]
        vp = jax.vmap(lambda w, a, tw, ta: voronoi_parts(w, a, tw, ta, split=cfg.head_dim, cells=cells))(
            w, atoms, tw, true_atoms)
        ip = jax.vmap(lambda w, a, tw, ta: identified_parts(w, a, tw, ta, split=cfg.head_dim, cells=cells))(
            w, atoms, tw, true_atoms)
        per_layer.append({**{n: x.sum(0) for n, x in vp.items()}, **{f"id_{n}": x.sum(0) for n, x in ip.items()}})
    out = {n: sum(layer[n] for layer in per_layer) for n in per_layer[0]}
    out["layer"] = jnp.stack([layer["d2"] for layer in per_layer])
    return out


def attention_mass(backbone: dict, tokens, cfg, prefix) -> jax.Array:
    """Each prefix's data-averaged share of attention, ``(layers, heads, L')``: the attention weight on its
    slot, averaged over the query positions of every sequence in ``tokens`` ``(n, T)``
    (:func:`moe_estimation.transformer.model.prefix_attention_mass`)."""
    return jnp.mean(jax.vmap(lambda t: prefix_attention_mass(backbone, t, cfg, prefix))(tokens), axis=0)


# ------------------------------------------------------------------------------------------------
# one cell: simulate, fit, score


def data_key(seed: int, n: int, replicate: int):
    """Replicate r's data at size n, from ``(seed, n, r)`` alone: every truth, student and specification
    sees the same sequences and the same noise (common random numbers)."""
    return fold_key(jax.random.key(seed), "data", n, replicate)


def start_key(seed: int, truth: str, kind: str, specification: str, n: int, replicate: int):
    return fold_key(jax.random.key(seed), "start", truth, kind, specification, n, replicate)


BLOCK_FROM = 512
"""On a CPU the students' J^T J and J^T r are summed over blocks of :data:`BLOCK_ROWS` sequences when a fit has more
than this many (:func:`block_rows`): the same numbers up to the order of a float sum (relative 1e-15), about half
the time at n = 1024 (``benchmarks/teacher_step.py``). Every table committed before blocking existed stops at
n <= 512, so each of its fits is still the same computation bit for bit."""
BLOCK_ROWS = 32


def block_rows(n: int) -> int | None:
    """The row block a fit on n sequences sums over: :data:`BLOCK_ROWS` on a CPU above :data:`BLOCK_FROM`
    sequences, else None (the whole Jacobian at once: what an accelerator wants)."""
    return BLOCK_ROWS if jax.default_backend() == "cpu" and n > BLOCK_FROM else None


def _summed(residual_jacobian, tokens, Y, rows: int | None):
    """:func:`moe_estimation.solver.normal_equations` over the sequences ``tokens`` ``(n, T)`` and targets ``Y``
    ``(n, T, D)``; with ``rows``, summed over blocks of that many sequences (rows on the last axis there, a
    weight of 0 on the padding rows of the last block, so they add nothing)."""
    if rows is None:
        return normal_equations(residual_jacobian, (tokens, Y))

    def by_column(data, x):
        toks, y, w = data
        r, J = residual_jacobian((toks.T, jnp.moveaxis(y, -1, 0)), x)
        w = w[:, None, None]
        return r * w, J * w

    return normal_equations(by_column, (tokens.T, jnp.moveaxis(Y, 0, -1), jnp.ones(tokens.shape[0], Y.dtype)),
                            block_rows=rows)


def student_linearize(kind: str, unravel, backbone, cfg, tokens, Y, *, rows: int | None = None):
    """The students' least-squares problem linearised at theta (``theta -> Normal(F, g, H)``, the solver's
    input; Gauss-Newton H = J^T J). The model depends on theta only through the prefixes z(theta) (every
    layer's keys, values and gate biases, K numbers). When theta has more entries than z (deep-share: the
    network's weights) the Jacobian is taken with respect to z and chained, J = J_z dz/dtheta, so that the
    transformer is differentiated in K directions rather than P: g = A^T g_z and H = A^T H_z A with
    A = dz/dtheta (K x P). The same numbers up to rounding, at about K/P of the cost. With ``rows``, the sums
    over sequences run in blocks of that many (:func:`block_rows`)."""

    def prefix_vector(theta):
        return ravel_pytree(student_prefix(kind, unravel(theta), backbone, cfg))[0]

    def residual_jacobian(data, x, model):
        toks, y = data
        J = jax.jacfwd(lambda w: model(w, toks))(x)  # (n, T, D, dim x)
        return model(x, toks) - y, jnp.moveaxis(J, -1, 0)

    def model_theta(theta, toks):
        return features(backbone, toks, cfg, student_prefix(kind, unravel(theta), backbone, cfg))

    direct = _summed(partial(residual_jacobian, model=model_theta), tokens, Y, rows)

    def chained(theta):
        z, unravel_z = ravel_pytree(student_prefix(kind, unravel(theta), backbone, cfg))
        at_z = _summed(partial(residual_jacobian, model=lambda w, toks: features(backbone, toks, cfg, unravel_z(w))),
                       tokens, Y, rows)(z)
        A = jax.jacfwd(prefix_vector)(theta)  # (K, P)
        return at_z._replace(g=A.T @ at_z.g, H=A.T @ at_z.H @ A)

    def linearize(theta):
        P, K = theta.shape[0], jax.eval_shape(prefix_vector, theta).shape[0]
        return chained(theta) if K < P else direct(theta)

    return linearize


@partial(jax.jit, static_argnames=("study", "kind", "num_prompts", "n"))
def fit_cell(study: TeacherStudy, kind: str, num_prompts: int, n: int, backbone, teacher, test_tokens, dkeys, skeys,
             start_at=None):
    """Fit the replicates of one cell (``dkeys``, ``skeys``: raw key data, one row per replicate) and score
    them. Returns a dict of arrays with a leading replicate axis. With ``start_at`` (a raveled theta), every
    replicate is fitted once from it instead of from ``study.restarts`` random starts."""
    cfg = study.backbone
    truth_test = features(backbone, test_tokens, cfg, teacher)
    truth_mass = attention_mass(backbone, test_tokens, cfg, teacher)

    def one(keys):
        dk, sk = (jax.random.wrap_key_data(k) for k in keys)
        kt, ke = jax.random.split(dk)
        tokens = jax.random.randint(kt, (n, cfg.seq_len), 0, cfg.vocab, dtype=jnp.int32)
        f_true = features(backbone, tokens, cfg, teacher)
        Y = f_true + study.noise_sd * jax.random.normal(ke, f_true.shape, f_true.dtype)
        template = initial_student(sk, study, kind, num_prompts, backbone)
        _, unravel = ravel_pytree(template)
        lo, hi = (ravel_pytree(b)[0] for b in box(template, study))

        linearize = student_linearize(kind, unravel, backbone, cfg, tokens, Y, rows=block_rows(n))

        def restart(k):
            theta0 = ravel_pytree(initial_student(k, study, kind, num_prompts, backbone))[0]
            return solve(linearize, theta0, lo, hi, study.solver), theta0

        if start_at is None:
            sols, starts = jax.lax.map(restart, jax.random.split(sk, study.restarts))
        else:
            sols, starts = jax.lax.map(lambda t: (solve(linearize, t, lo, hi, study.solver), t), start_at[None])
        finite = jnp.isfinite(sols.objective) & jnp.all(jnp.isfinite(sols.value), axis=1)
        best = jnp.argmin(jnp.where(finite, sols.objective, jnp.inf))
        sol = jax.tree.map(lambda a: a[best], sols)
        status = jnp.where(finite[best], sol.status, Status.NONFINITE)
        params = unravel(sol.value)
        prefix = student_prefix(kind, params, backbone, cfg)
        losses = prefix_losses(prefix, teacher, cfg)
        mass = attention_mass(backbone, test_tokens, cfg, prefix)
        by_mass = dict(weights=mass, true_weights=truth_mass)
        more = dict(by_key=prefix_losses(prefix, teacher, cfg, cells="key")["d2"],
                    mass=prefix_losses(prefix, teacher, cfg, **by_mass),
                    mass_by_key=prefix_losses(prefix, teacher, cfg, cells="key", **by_mass)["d2"])
        start = prefix_losses(student_prefix(kind, unravel(starts[best]), backbone, cfg), teacher, cfg)
        excess = jnp.mean(jnp.sum((features(backbone, test_tokens, cfg, prefix) - truth_test) ** 2, axis=(1, 2)))
        at_bound = jnp.any((sol.value <= lo) | (sol.value >= hi))
        kvb = [jnp.stack(x) for x in zip(*prefix)]  # keys, values (layers, heads, L', d_head); biases
        return dict(losses=losses, **more, attention_mass=mass, keys=kvb[0], values=kvb[1], biases=kvb[2],
                    start=start["d2"], excess=excess, objective=sol.objective, status=status, steps=sol.steps,
                    at_bound=at_bound, converged=is_converged(status))

    return jax.lax.map(one, (dkeys, skeys)), truth_mass


# ------------------------------------------------------------------------------------------------
# the study


def fits_columns(study: TeacherStudy) -> list[str]:
    parts = ("weight", "key_single", "key_multi", "value_single", "value_multi")
    return (["truth", "parameterisation", "specification", "num_prefixes", "n", "seed", "restarts", "loss_key_value"]
            + [f"kv_{p}" for p in parts] + [f"kv_layer_{i}" for i in range(study.backbone.layers)]
            + [f"id_{p}" for p in IDENTIFIED_NAMES]
            + ["kvk_key_value", "mass_key_value", "mass_weight", "massk_key_value"]
            + [f"mass_layer_{i}" for i in range(study.backbone.layers)]
            + [f"mass_id_{p}" for p in IDENTIFIED_NAMES]
            + ["excess_risk", "start_key_value", "objective", "mean_square_residual", "converged", "status", "steps",
               "at_bound", "seconds", "params", "attention_mass", "true_attention_mass"])


CELL = ["truth", "parameterisation", "specification", "n"]
RATE_LOSSES = {  # the study's yardstick columns (same names in both tables), and the excess risk; the
    # study's identified parts by key and its largest split-cell atom error are not computed for the teacher's fits
    **{loss: cols for loss, cols in STUDY_RATE_LOSSES.items()
       if loss != "own" and not loss.endswith("_by_key") and loss != "max_multi_error"},
    "excess_risk": ("excess_risk",),
    # D_2 with cells drawn by key alone; D_2 with each prefix weighted by the attention mass it receives
    # (its weight part, its identified parts) and by mass with cells by key. Runs begun before these were
    # measured lack the columns and rate without them.
    "key_value_by_key": ("kvk_key_value",),
    "mass_key_value": ("mass_key_value",),
    "mass_weight": ("mass_weight",),
    "mass_key_value_by_key": ("massk_key_value",),
    "mass_identified_key": ("mass_id_key",),
    "mass_identified_value": ("mass_id_value",),
    "mass_spread_value": ("mass_id_spread_value",),
}


def theory_slope(kind: str, loss: str, specification: str) -> float:
    """The MoE theory's reference slope for the student's structure (docs/maths.md, *Rates and intervals*):
    no-share is the non-shared structure, simple-share the shared-linear one, frozen-map (a known map shared by
    all layers) a shared one; deep-share, whose network is trained rather than known, has no counterpart (NaN).
    The excess risk ||f - f*||^2: -1 for every student (the regression function is estimated at the parametric
    rate). Exactly specified: -1/2. A loss weighted by attention mass (``mass_<name>``) takes its term's slope."""
    if loss == "excess_risk":
        return -1.0
    if specification == "exact":
        return -0.5
    if kind == "deep-share":
        return float("nan")
    structure = {"no-share": NON_SHARED, "simple-share": SHARED_LINEAR, "frozen-map": SHARED_NONLINEAR}[kind]
    base = loss.removeprefix("mass_")  # weighted by attention mass: the same term of the yardstick
    identified = base.startswith(("identified", "spread")) or base == "weight"
    return moe_theory(structure, "identified" if identified else "key_value", "over")


def run_teacher(study: TeacherStudy, out, *, progress: bool = True, log=print, workers: int | str = 1,
                repair: bool = False):
    """Run (or resume) a teacher-student study into ``out``: ``fits.csv`` (one row per fit, written after
    every cell), ``rates.csv``, ``config.json`` (the provenance of the run that began it) and ``runs.jsonl``
    (one line per run); the backbone is pre-trained once into ``backbone.npz`` (or reused). Then
    ``truth_starts.csv`` (:data:`TRUTH_STARTS`): each exactly specified data set fitted once more from the truth
    where the student can represent it (:func:`truth_student`), also a cell at a time. Estimation runs in
    float64 (call ``jax.config.update('jax_enable_x64', True)`` first). ``workers``: processes fitting cells
    at once (:mod:`moe_estimation.experiments.workers`; 1 here, in this process; ``"auto"``, the command line's default,
    one per core on a CPU); the tables do not depend on it. Above n = :data:`BLOCK_FROM` they depend on the
    backend to rounding (a CPU sums in row blocks). A damaged ``fits.csv`` or ``truth_starts.csv`` is refused
    unless ``repair`` (its damaged cells are then computed again), as every study's
    (:mod:`moe_estimation.experiments.runner`)."""
    workers = resolve_workers(workers)
    if not jax.config.jax_enable_x64:
        raise ValueError("run_teacher: the students are fitted in float64; call "
                         "jax.config.update('jax_enable_x64', True) first")
    validate_study(study)
    out = make_out_dir(out)
    with StudyLock(out, log=log):
        return _run_teacher(study, out, progress=progress, log=log, workers=workers, repair=repair)


def _context(study: TeacherStudy, backbone32):
    """The float64 backbone, the teachers and the test tokens of a study (made alike in every process)."""
    backbone = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), backbone32)  # estimation in float64
    backbone = with_frozen_map(study, backbone)
    teachers = {truth: make_teacher(study, backbone, truth) for truth in dict.fromkeys(t for t, _ in study.cases)}
    test_tokens = jax.random.randint(fold_key(jax.random.key(study.seed), "test"),
                                     (study.test_size, study.backbone.seq_len), 0, study.backbone.vocab,
                                     dtype=jnp.int32)
    return backbone, teachers, test_tokens


def teacher_cell(study: TeacherStudy, backbone32, truth: str, kind: str, spec: str, n: int,
                 from_truth: bool = False) -> dict:
    """Fit and score the replicates of one cell of a teacher study: its rows of ``fits.csv`` (numpy arrays
    and lists). A pure function of its arguments (keys from the coordinates), run in the lead process or in
    a worker (:mod:`moe_estimation.experiments.workers`); ``backbone32`` is the pre-trained backbone as saved.
    ``from_truth``: each data set fitted once from the truth (:func:`truth_student`; exactly specified cells
    whose student can represent the truth): the rows of ``truth_starts.csv``, ``restarts`` 0."""
    backbone, teachers, test_tokens = _context(study, backbone32)
    L = study.num_prompts(spec)
    start = None
    if from_truth:
        at_truth = truth_student(study, backbone, truth, kind)
        if spec != "exact" or at_truth is None:
            raise ValueError(f"from_truth: the {spec} {kind} student cannot start at the {truth} truth")
        start = ravel_pytree(at_truth)[0]
    dkeys = jnp.stack([jax.random.key_data(data_key(study.seed, n, r)) for r in range(study.seeds)])
    skeys = jnp.stack([jax.random.key_data(start_key(study.seed, truth, kind, spec, n, r))
                       for r in range(study.seeds)])
    t0 = time.perf_counter()
    res, truth_mass = jax.device_get(fit_cell(study, kind, L, n, backbone, teachers[truth], test_tokens, dkeys, skeys,
                                              start))
    seconds = (time.perf_counter() - t0) / study.seeds
    ls, ms = res["losses"], res["mass"]
    params = [json.dumps(dict(keys=res["keys"][r].tolist(), values=res["values"][r].tolist(),
                              biases=res["biases"][r].tolist())) for r in range(study.seeds)]
    return dict(
        truth=truth, parameterisation=kind, specification=spec, num_prefixes=L, n=n, seed=np.arange(study.seeds),
        restarts=0 if from_truth else study.restarts, loss_key_value=ls["d2"], kv_weight=ls["weight"],
        **{f"kv_{p}": ls[p] for p in ("key_single", "key_multi", "value_single", "value_multi")},
        **{f"kv_layer_{i}": ls["layer"][:, i] for i in range(study.backbone.layers)},
        **{f"id_{p}": ls[f"id_{p}"] for p in IDENTIFIED_NAMES},
        kvk_key_value=res["by_key"], mass_key_value=ms["d2"], mass_weight=ms["weight"],
        massk_key_value=res["mass_by_key"], **{f"mass_layer_{i}": ms["layer"][:, i] for i in range(study.backbone.layers)},
        **{f"mass_id_{p}": ms[f"id_{p}"] for p in IDENTIFIED_NAMES},
        excess_risk=res["excess"], start_key_value=res["start"], objective=2 * res["objective"] / n,
        mean_square_residual=2 * res["objective"] / (n * study.backbone.seq_len * study.backbone.width),
        converged=res["converged"], status=[STATUS_LABELS[int(s)] for s in res["status"]], steps=res["steps"],
        at_bound=res["at_bound"], seconds=seconds, params=params,
        attention_mass=[json.dumps(m.tolist()) for m in res["attention_mass"]],
        true_attention_mass=[json.dumps(np.asarray(truth_mass).tolist())] * study.seeds)


def per_row_objective(fits: pd.DataFrame, seq_len: int, width: int) -> tuple[pd.DataFrame, int]:
    """``objective`` as every study here writes it: per row (a row is a sequence), (1/n) sum_i ||Y_i - f(X_i)||^2
    = 2F/n, F the solver's (1/2) RSS. Tables written by earlier versions held F itself; their rows are found
    exactly (``objective`` / ``mean_square_residual`` is n seq_len width / 2 for F, seq_len width for 2F/n; at
    n = 2 the two readings are one number) and converted. Returns the table and how many rows changed."""
    if not len(fits):
        return fits, 0
    n, obj, msr = (fits[c].to_numpy(float) for c in ("n", "objective", "mean_square_residual"))
    old = np.isclose(obj, msr * n * seq_len * width / 2, rtol=1e-9, atol=0) & (n != 2) & (msr > 0)
    if not old.any():
        return fits, 0
    fits = fits.copy()
    fits.loc[old, "objective"] = 2 * obj[old] / n[old]
    return fits, int(old.sum())


def grown_grid(out: Path, study: TeacherStudy) -> list[int]:
    """The sizes by which ``study``'s grid extends the one ``out/config.json`` records, when that is all that
    differs (every old size kept, nothing else changed); else ``[]``. A teacher-student cell is a function of its
    own coordinates (data and starts from (seed, n, replicate); the teacher, backbone and test sequences from the
    seed), so the fits at the old sizes are the ones the larger grid would make, and a run may grow to larger n."""
    cfg_path = out / "config.json"
    try:
        old = json.loads(cfg_path.read_text()).get("study")
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return []  # no config, or not one (check_same_study says so)
    new = plain_dict(study)
    if not isinstance(old, dict) or not isinstance(old.get("ns"), list) or old["ns"] == new["ns"]:
        return []
    same = {k: v for k, v in old.items() if k != "ns"} == {k: v for k, v in new.items() if k != "ns"}
    return sorted(set(new["ns"]) - set(old["ns"])) if same and set(old["ns"]) < set(new["ns"]) else []


def _run_teacher(study: TeacherStudy, out: Path, *, progress: bool, log, workers: int = 1, repair: bool = False):
    cfg_path = out / "config.json"
    grown = grown_grid(out, study)
    if grown:
        log(f"{out}: the grid grows by n = {grown}; the fits at the sizes already run are kept (a cell depends on "
            "its own n alone)")
    check_same_study(out, plain_dict(study), reread=("ns",) if grown else (), log=lambda *_: None)
    columns = fits_columns(study)
    table = CellTable(out / "fits.csv", columns, CELL, study.seeds)
    finished = {(t, k, s, int(n)) for t, k, s, n in load_cells(table, repair=repair, log=log)}
    started = CellTable(out / TRUTH_STARTS, columns, CELL, study.seeds)  # checked now, not after days of fitting
    started_done = {(t, k, s, int(n)) for t, k, s, n in load_cells(started, repair=repair, log=log)}
    converted, changed = per_row_objective(table.frame(), study.backbone.seq_len, study.backbone.width)
    if changed:
        log(f"{table.path}: the objective of {changed} fit(s) written as (1/2) RSS is now per row, 2F/n (as every "
            "study's)")
        table.write(converted)
    backbone32, pretrain_test = prepare_backbone(study, out, log=log)
    backbone, teachers, test_tokens = _context(study, backbone32)
    provenance = dict(versions=versions(), device=str(jax.devices()[0]))
    meta = dict(study=plain_dict(study), backbone_pretrain_test=pretrain_test, **provenance,
                teacher={t: [dict(keys=np.asarray(k).tolist(), values=np.asarray(v).tolist()) for k, v, _ in p]
                         for t, p in teachers.items()})
    write_config(cfg_path, meta, provenance)

    cells = [(t, k, s, n) for n in study.ns for t, k in study.cases for s in study.specifications]
    todo = [c for c in cells if c not in finished]
    run_log = RunLog(out / "runs.jsonl")
    run_log.append("start", **provenance, cells_finished_before=len(cells) - len(todo), cells_to_fit=len(todo),
                   repair=repair, workers=workers, **(dict(grid_grown_by=grown) if grown else {}))
    shipped = jax.tree.map(np.asarray, backbone32)
    fit_missing(table, todo, total=len(cells), work=teacher_cell, args=lambda c: (study, shipped, *c),
                rows=lambda c, result: result, describe=lambda c: "{} truth, {} {} n={}".format(*c),
                cost=lambda c: c[3] * study.num_prompts(c[2]), workers=workers, progress=progress, log=log)
    fits = _canonical(table.frame(), study)
    table.write(fits)
    write_csv(out / "rates.csv", teacher_rates(fits, study))
    # the positive control: each exactly specified data set fitted again from the truth, where the student can
    # represent it (the best fit of the data set that the random starts are to find)
    truth_cells = [c for c in cells if c[2] == "exact" and truth_student(study, backbone, c[0], c[1]) is not None]
    truth_todo = [c for c in truth_cells if c not in started_done]
    fit_missing(started, truth_todo, total=len(truth_cells), work=teacher_cell,
                args=lambda c: (study, shipped, *c, True), rows=lambda c, result: result,
                describe=lambda c: "{} truth, {} {} n={} from the truth".format(*c), cost=lambda c: c[3],
                workers=workers, progress=progress, log=log, unit="truth-started cells")
    if truth_cells:
        started.write(_canonical(started.frame(), study))
    run_log.append("end", cells_fitted=len(todo), truth_started_cells_fitted=len(truth_todo))
    return fits


TRUTH_STARTS = "truth_starts.csv"
"""A teacher run's truth-started fits (the columns of ``fits.csv``, ``restarts`` 0): each exactly specified data set
fitted once from the truth, where the student can represent it (:func:`truth_student`)."""


def _canonical(fits, study: TeacherStudy):
    order = {c: i for i, c in enumerate(study.cases)}
    spec = {s: i for i, s in enumerate(SPECIFICATIONS)}
    key = fits.apply(lambda r: (order.get((r["truth"], r["parameterisation"]), 99), spec[r["specification"]]), axis=1)
    return (fits.assign(_c=[k[0] for k in key], _s=[k[1] for k in key]).sort_values(["_c", "_s", "n", "seed"])
            .drop(columns=["_c", "_s"]).reset_index(drop=True))


def teacher_rates(fits, study: TeacherStudy):
    """One row per (truth, parameterisation, specification, loss, statistic): the slope of log loss on
    log n with its bootstrap interval, the theory's slope, and the fits that did not converge."""
    out = []
    for (truth, kind, spec), g in fits.groupby(["truth", "parameterisation", "specification"], sort=False):
        for loss, cols in RATE_LOSSES.items():
            if not set(cols) <= set(g.columns):
                continue  # a run begun before the measure existed
            values = g[list(cols)].sum(axis=1, min_count=len(cols)).to_numpy()  # a NaN part: no value, never 0
            if not np.any(values != 0):
                continue  # e.g. no spread when no cell holds two prefixes
            ns, mat = loss_matrix(g, values, replicate="seed")
            last = mat[-1][np.isfinite(mat[-1]) & (mat[-1] > 0)]
            for e in rate_entries(ns, mat, num_bootstrap=study.num_bootstrap, seed=study.seed):
                out.append(dict(truth=truth, parameterisation=kind, specification=spec, loss=loss,
                                statistic=e["statistic"], slope=e["slope"], ci_low=e["ci_low"], ci_high=e["ci_high"],
                                theory_slope=theory_slope(kind, loss, spec), n_min=int(ns.min()), n_max=int(ns.max()),
                                seeds=study.seeds, restarts=study.restarts,
                                fits_not_converged=int((~g["converged"].astype(bool)).sum()),
                                fits_at_bound=int(g["at_bound"].astype(bool).sum()),
                                mean_loss_at_n_max=float(last.mean()) if len(last) else 0.0, note=e["note"]))
    return pd.DataFrame(out)


def study_from_config(study: dict) -> TeacherStudy:
    """The :class:`TeacherStudy` a run's config.json records (its ``study``), tuples restored."""
    fields = dict(study)
    fields["backbone"] = BackboneConfig(**fields["backbone"])
    for name in ("ns", "bias_bounds", "specifications"):
        fields[name] = tuple(fields[name])
    fields["cases"] = tuple(tuple(c) for c in fields["cases"])
    return TeacherStudy(**fields)


def run_teachers(dirs) -> tuple[dict, int | None]:
    """The teachers that the runs ``dirs`` (one directory or several, as :func:`load_runs` takes) recorded in their
    config.json (truth -> per-layer ``{"keys", "values"}``), and their heads' width (one design: ``load_runs``
    checks it)."""
    dirs = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    teacher, head_dim = {}, None
    for d in dirs:
        cfg = json.loads((d / "config.json").read_text())
        teacher.update(cfg.get("teacher", {}))
        head_dim = cfg["study"]["backbone"]["width"] // cfg["study"]["backbone"]["heads"]
    return teacher, head_dim


def load_runs(dirs, arg: str = "--results") -> tuple:
    """The fits and rates of one teacher-student run (``dirs``: its directory) or of several runs of one
    design (a list of directories), as one pair of tables: runs that split the cases of one study between
    them (``teacher-quick`` and ``teacher-more``) are drawn and tabulated together. Raises a ValueError
    (naming the command-line argument ``arg``) when two runs differ in anything but their cases (another
    teacher, noise or design: their numbers are not comparable in one table), or both hold one case."""
    dirs = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    fits, rates, design, seen = [], [], None, {}
    for d in dirs:
        cfg_path = d / "config.json"
        if not cfg_path.is_file():
            raise ValueError(f"{arg}: {d} holds fits.csv but no config.json; cannot tell which teacher it fitted")
        study = json.loads(cfg_path.read_text())["study"]
        mine = {k: v for k, v in study.items() if k != "cases"}
        if design is None:
            design = (d, mine)
        elif mine != design[1]:
            differ = sorted(k for k in set(mine) | set(design[1]) if mine.get(k) != design[1].get(k))
            raise ValueError(f"{arg}: the teacher runs {design[0]} and {d} differ in {', '.join(differ)} (not only "
                             "in their cases), so their numbers do not belong in one figure or table; plot or "
                             "summarize them separately")
        f, _ = per_row_objective(pd.read_csv(d / "fits.csv"), study["backbone"]["seq_len"], study["backbone"]["width"])
        for case in dict.fromkeys(zip(f["truth"], f["parameterisation"])):
            if case in seen:
                raise ValueError(f"{arg}: {seen[case]} and {d} both hold the {case[0]} truth's {case[1]} students")
            seen[case] = d
        fits.append(f)
        # a run stopped part-way has fits.csv but no rates.csv yet: rate what it has, as the run would
        rates.append(pd.read_csv(d / "rates.csv") if (d / "rates.csv").is_file()
                     else teacher_rates(f, study_from_config(study)))
    return pd.concat(fits, ignore_index=True), pd.concat(rates, ignore_index=True)


MISSED_RTOL = 1e-6
"""A fit has missed its data set's best fit when its objective exceeds the truth-started fit's by more than this,
relative (the solver stops at a relative change of 1e-8: two fits of one minimum agree far closer)."""


def load_truth_starts(dirs) -> pd.DataFrame:
    """The truth-started fits (``truth_starts.csv``) of the runs ``dirs`` (as :func:`load_runs` takes them), one
    table; empty (no rows) when no run has them (a run begun before they existed: running it again adds them)."""
    dirs = [Path(dirs)] if isinstance(dirs, (str, Path)) else [Path(d) for d in dirs]
    have = [pd.read_csv(d / TRUTH_STARTS) for d in dirs if (d / TRUTH_STARTS).is_file()]
    return pd.concat(have, ignore_index=True) if have else pd.DataFrame(columns=CELL + ["seed"])


def best_fits(fits: pd.DataFrame, started: pd.DataFrame) -> pd.DataFrame:
    """Each data set's best fit, for the data sets with a fit in ``fits`` and a truth-started fit in ``started``
    (the exactly specified ones whose student can represent the truth): the truth-started row where the fit
    missed, the fit's own row otherwise. Columns: those of ``fits``, and ``missed`` (the fit's objective is above
    the truth-started one's by more than :data:`MISSED_RTOL`, relative, or not finite where that one is: the
    random starts did not find the data set's best fit) and ``relative_gap`` ((F_fit - F_truth-started) /
    |F_truth-started|; NaN where either is not finite). A truth-started fit that is not finite is never taken.
    Raises a ValueError when a data set appears twice in either table."""
    key = CELL + ["seed"]
    if not len(started):
        return fits.iloc[:0].assign(missed=pd.Series(dtype=bool), relative_gap=pd.Series(dtype=float))
    for name, t in (("fits", fits), ("started", started)):
        twice = t.duplicated(key)
        if twice.any():
            raise ValueError(f"{name}: {int(twice.sum())} data set(s) appear more than once "
                             f"(first: {t.loc[twice, key].iloc[0].to_dict()}); one row per data set")
    pair = fits.merge(started, on=key, suffixes=("", "_truth_started"), validate="one_to_one")
    f_fit = pair["objective"].to_numpy(float)
    f_truth = pair["objective_truth_started"].to_numpy(float)
    with np.errstate(all="ignore"):
        gap = (f_fit - f_truth) / np.abs(f_truth)
    use = np.isfinite(f_truth) & ~(gap <= MISSED_RTOL)  # NaN gap with a finite truth-started fit: the fit failed
    best = pair[list(fits.columns)].copy()
    for c in fits.columns:
        other = f"{c}_truth_started"
        if c not in key and other in pair.columns:
            best[c] = np.where(use, pair[other].to_numpy(), pair[c].to_numpy())
    return best.assign(missed=use, relative_gap=np.where(np.isfinite(gap), gap, np.nan))


RANK_RTOL = 1e-14
"""An eigenvalue of J^T J counts towards the identified dimension above this fraction of the largest (about P
float64 epsilons: below it an eigenvalue is rounding; a direction above it, however weak, is identified)."""


def truth_information(run) -> list[tuple]:
    """Per exactly specified (truth, student) of the run in directory ``run`` whose student can represent the truth
    (:func:`truth_student`): ``(truth, kind, params, H)``, params the student at the truth and H = J^T J there on the
    run's held-out sequences (float64, as the fits)."""
    from .train import load_backbone

    run = Path(run)
    study = study_from_config(json.loads((run / "config.json").read_text())["study"])
    backbone32 = load_backbone(run / "backbone.npz", study.backbone)
    if backbone32 is None:
        raise ValueError(f"run: {run / 'backbone.npz'} is missing or was made for another backbone")
    was = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)  # float32 would blur eigenvalues below 1e-7 of the largest
    try:
        backbone, teachers, test_tokens = _context(study, backbone32)
        out = []
        for truth, kind in study.cases:
            at_truth = truth_student(study, backbone, truth, kind)
            if "exact" not in study.specifications or at_truth is None:
                continue
            theta, unravel = ravel_pytree(at_truth)
            Y = features(backbone, test_tokens, study.backbone, teachers[truth])
            H = student_linearize(kind, unravel, backbone, study.backbone, test_tokens, Y)(theta).H
            out.append((truth, kind, jax.tree.map(np.asarray, at_truth), np.asarray(H, np.float64)))
    finally:
        jax.config.update("jax_enable_x64", was)
    return out


def identified_dimension(run) -> dict:
    """Per exactly specified (truth, student) of the run in directory ``run`` whose student can represent the
    truth (:func:`truth_student`): the rank of J^T J at the truth on the run's held-out sequences (eigenvalues
    above :data:`RANK_RTOL` of the largest), the number of directions the data identify, and the smallest
    kept eigenvalue over the largest. For a well-specified least-squares fit with Gaussian noise of variance
    sigma^2 on each output, the excess risk on data like the training data is sigma^2 p / n to first order
    (p that rank): the level the exactly specified students' excess risk must reach once n is large."""
    out = {}
    for truth, kind, params, H in truth_information(run):
        ev = np.sort(np.linalg.eigvalsh(H))[::-1]
        kept = ev > RANK_RTOL * ev[0]
        out[(truth, kind)] = dict(parameters=int(H.shape[0]), rank=int(kept.sum()), smallest=float(ev[kept][-1] / ev[0]))
    return out


def _coordinates(params: dict) -> list[tuple[str, str]]:
    """Per raveled coordinate of a student's parameters (ravel_pytree's order): its group (``biases``, ``keys``,
    ``values`` or ``vectors``, with the layer where the parameter has one) and a description of the coordinate."""
    what = {"b": "bias", "pk": "key", "pv": "value", "p": "vector"}
    plural = {"b": "biases", "pk": "keys", "pv": "values", "p": "vectors"}
    out = []
    for k in sorted(params):
        a = np.asarray(params[k])
        layered = a.ndim == 3  # biases (layers, heads, L); keys, values, vectors (layers, L, width)
        for idx in np.ndindex(*a.shape):
            group = plural.get(k, k) + (f" layer {idx[0]}" if layered else "")
            if k == "b":
                where = f"layer {idx[0]}, head {idx[1]}, prefix {idx[2]}"
            else:
                where = (f"layer {idx[0]}, prefix {idx[1]}, " if layered else f"prefix {idx[0]}, ") + f"coordinate {idx[-1]}"
            out.append((group, f"{what.get(k, k)} ({where})"))
    return out


WEAK_COLUMNS = ["truth", "parameterisation", "direction", "eigenvalue", "next_eigenvalue", "loadings", "largest"]


def weak_directions(run, count: int = 2) -> pd.DataFrame:
    """The directions the data identify least, per exactly specified (truth, student) of the run in ``run`` whose
    student can represent the truth: the ``count`` eigenvectors of J^T J at the truth with the smallest
    eigenvalues above :data:`RANK_RTOL` of the largest (the identified directions: :func:`identified_dimension`;
    ``eigenvalue`` over the largest, ``next_eigenvalue`` the one above it), with ``loadings`` (the
    eigenvector's squared weight on each group of coordinates, groups above 2%, as text) and ``largest`` (its two
    largest coordinates, signed, with their layer, head and prefix where they are gate biases). A fit's error
    along a direction of eigenvalue lambda has variance sigma^2 / (n lambda): where lambda is far below the rest,
    that direction alone holds the fit away from the truth until n is large."""
    rows = []
    for truth, kind, params, H in truth_information(run):
        ev, V = np.linalg.eigh(H)
        coordinates = _coordinates(params)
        first = int(np.sum(ev <= RANK_RTOL * ev[-1]))  # directions the data do not identify at all: not weak ones
        for j in range(first, min(first + count, len(ev))):
            w = V[:, j] ** 2
            groups = {}
            for (group, _), x in zip(coordinates, w):
                groups[group] = groups.get(group, 0.0) + float(x)
            loads = ", ".join(f"{g} {x:.2f}" for g, x in sorted(groups.items(), key=lambda t: -t[1]) if x > 0.02)
            top = np.argsort(-np.abs(V[:, j]))[:2]
            largest = "; ".join(f"{coordinates[i][1]} {V[i, j]:+.2f}" for i in top)
            rows.append(dict(truth=truth, parameterisation=kind, direction=j - first, eigenvalue=float(ev[j] / ev[-1]),
                             next_eigenvalue=float(ev[j + 1] / ev[-1]) if j + 1 < len(ev) else np.nan,
                             loadings=loads, largest=largest))
    return pd.DataFrame(rows, columns=WEAK_COLUMNS)


# ------------------------------------------------------------------------------------------------
# the anatomy of a fit's prefixes

ANATOMY_COLUMNS = ["truth", "parameterisation", "specification", "n", "seed", "layer", "head", "prefix", "mass",
                   "true_mass", "exp_bias", "cell", "cell_by_key", "cell_size", "key_to_nearest_true_key",
                   "key_error", "value_error", "extra"]


def recorded_fits(fits: pd.DataFrame) -> pd.DataFrame:
    """The fits that recorded their prefixes and attention masses (runs begun before these were kept have no such
    columns, or empty ones in a table joined with newer runs)."""
    cols = ("params", "attention_mass", "true_attention_mass")
    if not set(cols) <= set(fits.columns):
        return fits.iloc[:0]
    return fits[np.all([fits[c].map(lambda x: isinstance(x, str)).to_numpy() for c in cols], axis=0)]


def _recorded_arrays(row) -> tuple:
    """A recorded fit's keys and values ``(layers, heads, L', d_head)``, biases, attention masses and its truth's
    masses ``(layers, heads, L')``, from its fits.csv row."""
    p = json.loads(row.params)
    keys, values, biases = (np.asarray(p[k], float) for k in ("keys", "values", "biases"))
    return (keys, values, biases, np.asarray(json.loads(row.attention_mass), float),
            np.asarray(json.loads(row.true_attention_mass), float))


def prefix_anatomy(fits: pd.DataFrame, teacher: dict) -> pd.DataFrame:
    """One row per prefix of every fit that recorded its prefixes (``params``, ``attention_mass``: runs from
    teacher-controls and teacher-anatomy on; older rows are skipped), per layer and head: its attention mass and
    the mass of the true prefix of its cell (``true_mass``), exp(bias), its Voronoi cell on (key, value) and on the
    key alone, the size of its cell, its key's distance to the nearest true key, and its key's and value's distance
    to its cell's true key and value. ``teacher``: per truth the per-layer ``{"keys", "values"}`` of config.json.

    ``extra`` marks, per head of an over-specified student (more prefixes than the truth), the prefix of least
    attention mass relative to its cell's true prefix's (its extra prefix, whether it shares a cell or sits alone). Read across n it decides between
    two mechanisms for an over-specified student's slow yardstick: an *invisible* extra prefix (mass near 0,
    anywhere: exp(bias) weighs a prefix no query attends to) or *values spread along a zero set* (the MoE
    mechanism: the extra prefix keeps a share of its cell's mass, its key near the true key, its value away)."""
    rows = []
    have = recorded_fits(fits)
    if not len(have):
        return pd.DataFrame(columns=ANATOMY_COLUMNS)
    for r in have.itertuples(index=False):
        keys, values, biases, mass, true_mass = _recorded_arrays(r)
        for layer, t in enumerate(teacher[r.truth]):
            tk, tv = np.asarray(t["keys"], float), np.asarray(t["values"], float)
            for h in range(keys.shape[1]):
                k, v = keys[layer, h], values[layer, h]
                atoms, true_atoms = np.concatenate([k, v], -1), np.concatenate([tk[h], tv[h]], -1)
                cell = np.argmin(np.linalg.norm(atoms[:, None] - true_atoms[None], axis=-1), axis=1)
                cell_key = np.argmin(np.linalg.norm(k[:, None] - tk[h][None], axis=-1), axis=1)
                size = np.bincount(cell, minlength=len(true_atoms))[cell]
                m = mass[layer, h]
                share = m / true_mass[layer, h, cell]
                extra = int(np.argmin(share)) if len(k) > len(tk[h]) else -1
                near = np.linalg.norm(k[:, None] - tk[h][None], axis=-1).min(axis=1)
                for i in range(len(k)):
                    rows.append(dict(
                        truth=r.truth, parameterisation=r.parameterisation, specification=r.specification, n=r.n,
                        seed=r.seed, layer=layer, head=h, prefix=i, mass=m[i], true_mass=true_mass[layer, h, cell[i]],
                        exp_bias=float(np.exp(biases[layer, h, i])), cell=int(cell[i]), cell_by_key=int(cell_key[i]),
                        cell_size=int(size[i]), key_to_nearest_true_key=near[i],
                        key_error=float(np.linalg.norm(k[i] - tk[h][cell[i]])),
                        value_error=float(np.linalg.norm(v[i] - tv[h][cell[i]])), extra=i == extra))
    return pd.DataFrame(rows, columns=ANATOMY_COLUMNS)


def extra_prefix_summary(anatomy: pd.DataFrame) -> pd.DataFrame:
    """Per (truth, student, n): the extra prefixes of the over-specified fits (one per head and fit), medians of
    their mass as a share of their cell's true prefix's mass, their exp(bias), key distance to the nearest true
    key, key and value errors, the share of them whose cell by key differs from their cell by (key, value), and
    the share whose mass is below 1% of their cell's true mass (*invisible*)."""
    if not len(anatomy):
        return pd.DataFrame()
    x = anatomy[anatomy["extra"].astype(bool)].assign(
        mass_share=lambda d: d["mass"] / d["true_mass"], moved_cell=lambda d: d["cell"] != d["cell_by_key"],
        invisible=lambda d: d["mass"] < 0.01 * d["true_mass"])
    if not len(x):
        return pd.DataFrame()
    g = x.groupby(["truth", "parameterisation", "n"], sort=False)
    return g.agg(extra_prefixes=("mass", "size"), mass_share=("mass_share", "median"), exp_bias=("exp_bias", "median"),
                 key_to_nearest_true_key=("key_to_nearest_true_key", "median"), key_error=("key_error", "median"),
                 value_error=("value_error", "median"), moved_cell=("moved_cell", "mean"),
                 invisible=("invisible", "mean")).reset_index()


LAYER_PART_COLUMNS = ["truth", "parameterisation", "specification", "n", "seed", "layer", "weighting", "d2", "weight",
                      "key_single", "key_multi", "value_single", "value_multi"]


def layer_parts(fits: pd.DataFrame, teacher: dict, head_dim: int) -> pd.DataFrame:
    """D_2 of every layer split into its parts (weight, key and value, single and multi), per fit that recorded its
    prefixes, with the prefixes weighted by exp(bias) (``weighting = "bias"``, the yardstick) and by attention mass
    (``"mass"``); heads summed. Over n it shows which part holds a layer's D_2 up (the first layer's weight part,
    where gate biases and keys may be confounded by the few distinct queries the first layer sees)."""
    have = recorded_fits(fits)
    if not len(have):
        return pd.DataFrame(columns=LAYER_PART_COLUMNS)
    with jax.enable_x64(True):  # the fits' own precision, whatever the caller's flag
        return _layer_parts(have, teacher, head_dim)


def _layer_parts(have, teacher, head_dim):
    parts = jax.jit(jax.vmap(lambda w, a, tw, ta: voronoi_parts(w, a, tw, ta, split=head_dim)))
    rows = []
    for r in have.itertuples(index=False):
        keys, values, biases, mass, true_mass = _recorded_arrays(r)
        for layer, t in enumerate(teacher[r.truth]):
            tk, tv = np.asarray(t["keys"], float), np.asarray(t["values"], float)
            atoms, true_atoms = np.concatenate([keys[layer], values[layer]], -1), np.concatenate([tk, tv], -1)
            for weighting, w, tw in (("bias", np.exp(biases[layer]), np.ones(true_atoms.shape[:2])),
                                     ("mass", mass[layer], true_mass[layer])):
                vp = jax.device_get(parts(w, atoms, tw, true_atoms))
                rows.append(dict(truth=r.truth, parameterisation=r.parameterisation, specification=r.specification,
                                 n=r.n, seed=r.seed, layer=layer, weighting=weighting,
                                 **{k: float(np.sum(vp[k])) for k in LAYER_PART_COLUMNS[7:]}))
    return pd.DataFrame(rows, columns=LAYER_PART_COLUMNS)
