"""Pre-training, prefix-tuning with a frozen backbone, the learning-rate search and the learning curves.

Prefix-tuning differentiates a loss with respect to the prefix pytree only (the backbone enters as a
constant: it receives no gradient and no optimiser state, so it stays bitwise frozen). All three
parameterisations use the same optimiser (optax Adam, full batch, a cosine-decayed learning rate), the same
number of prefixes, the same data and the same stopping rule: train until the training loss is flat
(:func:`tune`). Each gets, at every sample size, the learning rate that minimises the validation loss (a
validation set drawn apart from the test set, which the search never sees) on a wide grid scored whole at
every searched size, widened only if its best rate still sits on its edge (:func:`search_learning_rates`).

Every tuning of the search and the curves is one *member*: a (learning rate, key) pair at a (parameterisation,
n); :func:`score_members` runs a list of them through one compiled program per (parameterisation, n), either
one member per call or ``batch`` members vmapped together (:func:`tune` is written so that a member that has
stopped keeps its state bit for bit while the others go on). On a CPU one member per call is the faster and
gives the bits of the code before members (one ``lax.map`` over seeds per rate): the vmapped program gains
nothing at n = 16 and is 1.6 times slower per member at n = 64 (a larger working set per kernel, and every
member runs until the last one stops); the standard preset cut to n = 16, 32 took 2.1 times the CPU time (one
core). It also sums in another order: rates up to 0.1 agree to 1e-5 in validation loss, but from a rate of 1
on 1000 steps amplify the rounding to 0.01 - 0.4, and that moved 5 of those 6 choices. So it is kept for
accelerators (``batch``).
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
import optax
import pandas as pd

from .._checks import make_out_dir
from ..experiments.results import (CellTable, atomic_write, check_same_study, loss_matrix, plain_dict, rate_entries,
                                   read_columns, write_csv)
from ..experiments.runner import fit_missing, load_cells
from ..experiments.workers import resolve_workers
from .model import BackboneConfig, forward, init_backbone
from .prefixes import PARAMETERISATIONS, init_prefix, prefix_kv
from .tasks import sample


class TransformerStudy(NamedTuple):
    backbone: BackboneConfig = BackboneConfig()
    seed: int = 0
    pretrain_steps: int = 1500
    pretrain_batch: int = 256
    pretrain_lr: float = 3e-3
    num_prefixes: int = 4
    deep_hidden: int = 16  #: deep-share bottleneck width (half the model width, as 512 of 1024 in Li and Liang)
    min_steps: int = 200  #: training runs at least this long ...
    max_steps: int = 1000  #: ... and at most this long (a multiple of check_every; the rate decays to 0 over it) ...
    check_every: int = 100  #: ... stopping at the first multiple of check_every where the loss is flat:
    flat_tol: float = 2e-3  #: |change of the training loss over the last tenth of the steps| <= flat_tol * max(loss, 1)
    ns: tuple = (16, 32, 64, 128, 256, 512)  #: 1.5 decades (to 32, every method is still worse than uniform)
    seeds: int = 5
    #: the grid, scored whole at every searched size (four decades: the validation loss is not monotone in the
    #: rate on either side of its minimum, so a narrow grid widened only past its edge can miss the best rate)
    lr_grid: tuple = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 10.0)
    #: the sizes searched at (default: every n of ns; given a subset, log lr is interpolated in log n between)
    lr_search_ns: tuple = ()
    lr_search_seeds: int = 2  #: data sets averaged per searched (learning rate, size)
    lr_widen: int = 2  #: times the grid may be widened (by sqrt(10) beyond an edge) while its best rate is on the edge
    test_size: int = 4000

    @property
    def search_ns(self) -> tuple:
        return tuple(self.lr_search_ns) or tuple(self.ns)


TRANSFORMER_PRESETS = {
    # The main command's: n to 256, the search at every size on a grid of whole decades with one data set a
    # rate, so that the quick reproduction fits in minutes on a 2-core CPU (README, *The prefix-tuned
    # transformer*, measures what it changes against ``standard``).
    "quick": TransformerStudy(ns=(16, 32, 64, 128, 256), lr_grid=(1e-3, 1e-2, 1e-1, 1.0, 10.0), lr_search_seeds=1),
    # The README's learning-curve table: n to 512, the half-decade grid, two data sets a rate (19 minutes on
    # a 2-core CPU with two workers).
    "standard": TransformerStudy(),
    "tiny": TransformerStudy(pretrain_steps=150, min_steps=20, max_steps=40, check_every=20, ns=(16, 32), seeds=2,
                             lr_grid=(1e-2, 3e-2), lr_search_seeds=1, lr_widen=1, test_size=256),
}


def validate_study(study: TransformerStudy) -> None:
    """Raise a ValueError naming the field, its value and the rule."""
    for name in ("num_prefixes", "deep_hidden", "min_steps", "max_steps", "check_every", "seeds", "lr_search_seeds",
                 "test_size"):
        if int(getattr(study, name)) < 1:
            raise ValueError(f"{name}: must be a positive integer, got {getattr(study, name)!r}")
    if study.max_steps % study.check_every or study.min_steps > study.max_steps:
        raise ValueError(f"max_steps: must be a multiple of check_every ({study.check_every}) and at least "
                         f"min_steps ({study.min_steps}), got {study.max_steps}")
    if not study.flat_tol > 0:
        raise ValueError(f"flat_tol: must be positive, got {study.flat_tol!r}")
    if study.lr_widen < 0:
        raise ValueError(f"lr_widen: must be 0 or more, got {study.lr_widen!r}")
    if not study.lr_grid or any(not lr > 0 for lr in study.lr_grid) or list(study.lr_grid) != sorted(set(study.lr_grid)):
        raise ValueError(f"lr_grid: must be positive learning rates in increasing order, got {study.lr_grid!r}")
    if len(study.ns) < 2 or any(int(n) < 2 for n in study.ns) or list(study.ns) != sorted(set(study.ns)):
        raise ValueError(f"ns: need at least two increasing sample sizes of 2 or more, got {study.ns!r}")
    bad = [n for n in study.search_ns if not min(study.ns) <= n <= max(study.ns)]
    if bad:
        raise ValueError(f"lr_search_ns: {bad} outside the range of ns {study.ns}; the rate at each n is interpolated "
                         "between searched sizes, never extrapolated")


def cross_entropy(logits, labels):
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def evaluate(backbone, cfg: BackboneConfig, tokens, labels, prefix=None) -> tuple[jax.Array, jax.Array]:
    """Mean cross-entropy and accuracy on a data set."""
    logits = jax.vmap(lambda t: forward(backbone, t, cfg, prefix))(tokens)
    return cross_entropy(logits, labels), jnp.mean(jnp.argmax(logits, -1) == labels)


@partial(jax.jit, static_argnames=("cfg", "steps", "batch"))
def _pretrain(key, cfg: BackboneConfig, steps: int, batch: int, lr: float):
    k_init, k_data = jax.random.split(key)
    params = init_backbone(k_init, cfg)
    schedule = optax.cosine_decay_schedule(lr, steps)
    opt = optax.adamw(lambda count: schedule(count).astype(jnp.float32), weight_decay=1e-4)
    state = opt.init(params)

    def step(carry, k):
        params, state = carry
        tokens, labels = sample(k, "pretrain", batch, cfg)
        loss, g = jax.value_and_grad(lambda p: cross_entropy(jax.vmap(lambda t: forward(p, t, cfg))(tokens), labels))(params)
        upd, state = opt.update(g, state, params)
        return (optax.apply_updates(params, upd), state), loss

    (params, _), losses = jax.lax.scan(step, (params, state), jax.random.split(k_data, steps))
    return params, losses


def pretrain(key, study: TransformerStudy):
    """Pre-train the backbone on the ``pretrain`` task with fresh batches every step."""
    return _pretrain(key, study.backbone, study.pretrain_steps, study.pretrain_batch, study.pretrain_lr)


def save_backbone(path: Path, params: dict, cfg: BackboneConfig) -> None:
    leaves = jax.tree.leaves(params)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, config=json.dumps(cfg._asdict()), **{f"leaf{i}": np.asarray(x) for i, x in enumerate(leaves)})
    tmp.replace(path)


def load_backbone(path: Path, cfg: BackboneConfig) -> dict | None:
    """The saved backbone, or None when there is none or it was made with another configuration."""
    if not path.is_file():
        return None
    z = np.load(path)
    if json.loads(str(z["config"])) != cfg._asdict():
        return None
    treedef = jax.tree.structure(init_backbone(jax.random.key(0), cfg))
    return jax.tree.unflatten(treedef, [jnp.asarray(z[f"leaf{i}"]) for i in range(treedef.num_leaves)])


class Tuned(NamedTuple):
    """What :func:`tune` returns: the trained prefix parameters, the training loss at every step taken
    (NaN after the last), the steps taken, the final training loss, its change over the last tenth of the
    steps (loss then minus loss now) and whether that change met the flatness rule."""

    params: dict
    losses: jax.Array
    steps: jax.Array
    train_loss: jax.Array
    change: jax.Array
    flat: jax.Array


@partial(jax.jit, static_argnames=("kind", "cfg", "num_prefixes", "hidden", "min_steps", "max_steps", "check_every"))
def tune(key, kind: str, backbone, cfg: BackboneConfig, tokens, labels, lr, num_prefixes: int, *, hidden: int = 16,
         min_steps: int = 200, max_steps: int = 1000, check_every: int = 100, flat_tol: float = 2e-3) -> Tuned:
    """Prefix-tune on (tokens, labels) with the backbone frozen: full-batch Adam, its learning rate ``lr``
    decayed to 0 over ``max_steps`` on a cosine (a constant rate large enough to train fast never settles),
    in blocks of ``check_every`` steps, until the training loss is flat (after t >= ``min_steps`` steps,
    ``|loss[t - t//10] - loss[t]| <= flat_tol * max(loss[t], 1)``) or ``max_steps`` steps have run.

    Safe under ``jax.vmap`` (several learning rates, keys or data sets at once): each member stops by its
    own rule and, once stopped, stays exactly as it was while the others train on, so its result is what it
    would be alone up to the float32 rounding of the batched kernels."""
    if check_every < 1 or max_steps % check_every or not 1 <= min_steps <= max_steps:
        raise ValueError(f"max_steps: must be a multiple of check_every ({check_every}) and at least min_steps "
                         f"({min_steps}), got {max_steps}")
    params = init_prefix(key, kind, cfg, num_prefixes, hidden=hidden)
    peak = jnp.asarray(lr, jnp.float32)
    opt = optax.adam(lambda count: peak * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(count, max_steps) / max_steps)))
    frozen = jax.lax.stop_gradient(backbone)

    def loss_fn(p):
        prefix = prefix_kv(kind, p, frozen, cfg)
        return cross_entropy(jax.vmap(lambda t: forward(frozen, t, cfg, prefix))(tokens), labels)

    def step(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), loss

    def change(t, hist):
        return hist[t - 1 - t // 10] - hist[t - 1]

    def flat(t, hist):
        return (t >= min_steps) & (jnp.abs(change(t, hist)) <= flat_tol * jnp.maximum(hist[t - 1], 1.0))

    def running(carry):
        return (carry[2] < max_steps) & ~flat(carry[2], carry[3])

    def block(carry):
        p, s, t, hist = carry
        (p, s), losses = jax.lax.scan(step, (p, s), None, length=check_every)
        new = (p, s, t + check_every, jax.lax.dynamic_update_slice(hist, losses, (t,)))
        # Alone, the loop enters a block only while running, so this selects ``new`` (the same bits). Under
        # vmap the loop goes on while any member runs and every member goes through the block: one that has
        # stopped keeps its parameters, optimiser state, step count and history (hence its flat flag) as
        # they were, whatever the block computed for it (NaN from a diverged rate included).
        stop = ~running(carry)
        return jax.tree.map(lambda old, upd: jnp.where(stop, old, upd), carry, new)

    hist0 = jnp.full(max_steps, jnp.nan, jnp.float32)
    params, _, t, hist = jax.lax.while_loop(running, block, (params, opt.init(params), jnp.asarray(0), hist0))
    return Tuned(params, hist, t, hist[t - 1], change(t, hist), flat(t, hist))


def _tune(study: TransformerStudy, key, kind: str, backbone, tokens, labels, lr) -> Tuned:
    """:func:`tune` with the study's stopping rule and deep-share width."""
    return tune(key, kind, backbone, study.backbone, tokens, labels, lr, study.num_prefixes, hidden=study.deep_hidden,
                min_steps=study.min_steps, max_steps=study.max_steps, check_every=study.check_every,
                flat_tol=study.flat_tol)


class Scored(NamedTuple):
    """One tuning scored on held-out data (each field one value per member when batched): the held-out
    loss and accuracy, and from :class:`Tuned` the final training loss, its change over the last tenth of
    the steps, whether that met the flatness rule and the steps taken."""

    heldout_loss: jax.Array
    accuracy: jax.Array
    train_loss: jax.Array
    change: jax.Array
    flat: jax.Array
    steps: jax.Array


def _tune_and_score(backbone, study: TransformerStudy, kind: str, n: int, lr, key, heldout) -> Scored:
    """One member: draw a data set of size n from ``fold_in(key, 0)``, prefix-tune on it at ``lr`` from the
    initial prefix of ``fold_in(key, 1)`` (:func:`tune`) and score the result on ``heldout``."""
    cfg = study.backbone
    tokens, labels = sample(jax.random.fold_in(key, 0), "downstream", n, cfg)
    tuned = _tune(study, jax.random.fold_in(key, 1), kind, backbone, tokens, labels, lr)
    loss, acc = evaluate(backbone, cfg, *heldout, prefix_kv(kind, tuned.params, backbone, cfg))
    return Scored(loss, acc, tuned.train_loss, tuned.change, tuned.flat, tuned.steps)


@partial(jax.jit, static_argnames=("study", "kind", "n"))
def tune_and_score(backbone, study: TransformerStudy, kind: str, n: int, lr, key, heldout) -> Scored:
    """One member (:func:`_tune_and_score`), compiled once per (kind, n): the learning rate, the key and the
    held-out set are arguments, so the search and the curves share the program. A pure function of its
    arguments (a worker process can call it)."""
    return _tune_and_score(backbone, study, kind, n, lr, key, heldout)


@partial(jax.jit, static_argnames=("study", "kind", "n"))
def tune_and_score_batch(backbone, study: TransformerStudy, kind: str, n: int, lrs, keys, heldout) -> Scored:
    """Members ``(lrs[i], keys[i])`` vmapped in one program (compiled once per kind, n and member count):
    each stops by its own rule and stays frozen once stopped (:func:`tune`), so the result is, up to float32
    rounding, that of :func:`tune_and_score` member by member. A pure function of its arguments."""
    return jax.vmap(lambda lr, key: _tune_and_score(backbone, study, kind, n, lr, key, heldout))(lrs, keys)


def resolve_batch(batch) -> int | None:
    """``batch`` of :func:`score_members`: ``"auto"`` (one member per call on a CPU, where vmapping is the
    slower, all members of a call at once elsewhere: None), None (all at once) or an integer >= 1."""
    if isinstance(batch, str):
        if batch != "auto":
            raise ValueError(f"batch: expected 'auto', None or an integer >= 1, got {batch!r}")
        return 1 if jax.default_backend() == "cpu" else None
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1):
        raise ValueError(f"batch: expected 'auto', None or an integer >= 1, got {batch!r}")
    return None if batch is None else int(batch)


def score_members(backbone, study: TransformerStudy, kind: str, n: int, lrs, keys, heldout, *, batch="auto",
                  on_done=None) -> dict:
    """Tune and score the members ``(lrs[i], keys[i])`` at (kind, n) (:func:`tune_and_score`) and return
    their :class:`Scored` fields as numpy arrays, in member order.

    ``batch`` (:func:`resolve_batch`): members per compiled call; 1 runs them one by one (the same bits as
    a member alone), more vmaps them (:func:`tune_and_score_batch`; the last call takes the remainder).
    Every call is dispatched before any result is read. ``on_done(i, j)``, if given, is called once the
    members ``i:j`` are fetched (a progress bar's hook)."""
    lrs = np.asarray(lrs, np.float32).reshape(-1)
    if len(keys) != len(lrs):
        raise ValueError(f"keys: expected one key per learning rate ({len(lrs)}), got {len(keys)}")
    size = resolve_batch(batch) or max(len(lrs), 1)
    calls = []
    for i in range(0, len(lrs), size):
        j = min(i + size, len(lrs))
        if size == 1:
            calls.append((i, j, tune_and_score(backbone, study, kind, n, lrs[i], keys[i], heldout)))
        else:
            calls.append((i, j, tune_and_score_batch(backbone, study, kind, n, jnp.asarray(lrs[i:j]), keys[i:j],
                                                     heldout)))
    parts = []
    for i, j, out in calls:
        parts.append([np.atleast_1d(np.asarray(x)) for x in jax.device_get(out)])
        if on_done is not None:
            on_done(i, j)
    if not parts:
        return {f: np.empty(0) for f in Scored._fields}
    return {f: np.concatenate([p[k] for p in parts]) for k, f in enumerate(Scored._fields)}


def prepare_backbone(study: TransformerStudy, out: Path, *, log=print) -> tuple[dict, dict]:
    """The pre-trained backbone: ``out/backbone.npz`` when it was made with this configuration, else trained
    now and saved there. Returns it with its loss and accuracy on held-out pre-training data."""
    cfg = study.backbone
    root = jax.random.key(study.seed)
    bb_path = out / "backbone.npz"
    backbone = load_backbone(bb_path, cfg)
    if backbone is None:
        t0 = time.perf_counter()
        backbone, losses = pretrain(jax.random.fold_in(root, 1), study)
        save_backbone(bb_path, backbone, cfg)
        log(f"pre-trained the backbone in {time.perf_counter() - t0:.1f}s (final batch loss {float(losses[-1]):.3f})")
    base_tokens, base_labels = sample(jax.random.fold_in(root, 3), "pretrain", study.test_size, cfg)
    pre_loss, pre_acc = evaluate(backbone, cfg, base_tokens, base_labels)
    return backbone, dict(loss=float(pre_loss), accuracy=float(pre_acc), trivial_loss=float(np.log(cfg.classes)))


SEARCH_COLUMNS = ["parameterisation", "n", "lr", "validation_loss", "steps", "flat", "chosen", "widened", "on_edge"]


class GridSearch(NamedTuple):
    """The outcome of :func:`grid_search`: the final grid, the score of each rate on it, the best rate,
    how many times the grid was widened and whether the best rate is still on its edge."""

    grid: list
    scores: dict
    best: float
    widened: int
    on_edge: bool


def grid_search(score, grid, widen: int, factor: float = float(np.sqrt(10)), *, batched: bool = False) -> GridSearch:
    """Minimise ``score(lr)`` over ``grid`` (increasing); while the best rate sits on an edge of the grid,
    add the rate one ``factor`` beyond that edge, at most ``widen`` times in all. Non-finite scores never
    win; all of them non-finite raises.

    ``batched``: ``score`` takes the list of rates not scored yet and returns their scores in that order,
    so that the whole grid is scored in one call (then each added edge rate in one call of its own); the
    rates scored and the choice are the same as rate by rate."""
    grid, scores, widened = list(grid), {}, 0
    while True:
        new = [lr for lr in grid if lr not in scores]
        if batched and new:
            got = [float(v) for v in score(new)]
            if len(got) != len(new):
                raise ValueError(f"score: batched, it must return one score per rate ({len(new)}), got {len(got)}")
            scores.update(zip(new, got))
        elif not batched:
            scores.update((lr, float(score(lr))) for lr in new)
        finite = {lr: v for lr, v in scores.items() if np.isfinite(v)}
        if not finite:
            raise RuntimeError(f"learning-rate search: every rate of {grid} gave a non-finite validation loss; "
                               "lower lr_grid")
        best = min(finite, key=finite.get)
        on_edge = len(grid) > 1 and best in (grid[0], grid[-1])
        if not on_edge or widened >= widen:
            return GridSearch(grid, scores, best, widened, on_edge)
        grid = [grid[0] / factor] + grid if best == grid[0] else grid + [grid[-1] * factor]
        widened += 1


def interpolate_rates(chosen: dict, ns) -> dict:
    """``{n: lr}`` for every n of ``ns`` from the rates chosen at the searched sizes (``{size: lr}``): log lr
    linear in log n between searched sizes, constant beyond them."""
    sizes = sorted(chosen)
    logs = np.log([chosen[m] for m in sizes])
    return {int(n): float(np.exp(np.interp(np.log(n), np.log(sizes), logs))) for n in ns}


def _search_keys(root, study: TransformerStudy, kind: str, n: int):
    """The keys of the search's data sets at (kind, n), one per ``study.lr_search_seeds`` (drawn apart from
    the curves' keys, :func:`_curve_keys`)."""
    base = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(root, 6), PARAMETERISATIONS.index(kind)), n)
    return jax.vmap(lambda s: jax.random.fold_in(base, s))(jnp.arange(study.lr_search_seeds))


def _curve_keys(root, study: TransformerStudy, n: int):
    """The keys of the curves' ``study.seeds`` data sets at size n (the same for every parameterisation)."""
    return jax.vmap(lambda s: jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(root, 7), n), s))(
        jnp.arange(study.seeds))


def search_size(backbone, study: TransformerStudy, kind: str, n: int, val, batch=1, *, on_done=None) -> tuple:
    """The learning-rate search at one (parameterisation, size): every rate of the grid, widened while the best
    sits on its edge (:func:`grid_search`), each scored by the mean validation loss over the search's data
    sets. Returns ``(GridSearch, {lr: (mean steps, fraction of tunings flat)})``. A pure function of its
    arguments (numpy or JAX arrays), run with ``jax_enable_x64`` off, in the lead process or in a worker
    (:mod:`moe_estimation.experiments.workers`). ``batch``: tunings per compiled call (:func:`score_members`);
    ``on_done(text)``, if given, hears how far the round has come (a progress bar's hook)."""
    with jax.enable_x64(False):
        keys = _search_keys(jax.random.key(study.seed), study, kind, n)
        seeds = study.lr_search_seeds
        tuned = {}

        def score(rates):
            what = f"{kind} n={n}, " + ("the grid" if not tuned else f"edge rate {rates[0]:.3g}")
            hook = None if on_done is None else (
                lambda i, j: on_done(f"{what}: {j} of {len(rates) * seeds} tunings"))
            got = score_members(backbone, study, kind, n, np.repeat(np.asarray(rates, float), seeds),
                                jnp.concatenate([keys] * len(rates)), val, batch=batch, on_done=hook)
            out = []
            for r, lr in enumerate(rates):  # member r * seeds + s: rate r on data set s
                part = slice(r * seeds, (r + 1) * seeds)
                tuned[lr] = (float(np.mean(got["steps"][part])), float(np.mean(got["flat"][part])))
                out.append(np.mean(got["heldout_loss"][part]))
            return out

        try:
            res = grid_search(score, study.lr_grid, study.lr_widen, batched=True)
        except RuntimeError as e:
            raise RuntimeError(f"{e} ({kind} at n = {n})") from None
        return res, tuned


def curve_cell(backbone, study: TransformerStudy, kind: str, n: int, lr: float, test, batch=1) -> tuple[dict, float]:
    """One cell of the learning curves: ``study.seeds`` data sets of size n tuned at ``lr`` and scored on
    ``test`` (:func:`score_members`, ``batch`` tunings per compiled call). Returns the :class:`Scored` fields as
    numpy arrays and the seconds per tuning. A pure function of its arguments, run with ``jax_enable_x64`` off,
    here or in a worker."""
    with jax.enable_x64(False):
        t0 = time.perf_counter()
        got = score_members(backbone, study, kind, n, np.full(study.seeds, lr),
                            _curve_keys(jax.random.key(study.seed), study, n), test, batch=batch)
        return got, (time.perf_counter() - t0) / study.seeds


def _cost(study: TransformerStudy, kind: str, n: int) -> float:
    """A rough relative cost of tuning at (kind, n), to start the costliest tasks first."""
    return n * (2.0 if kind == "deep-share" else 1.0)


def search_learning_rates(backbone, study: TransformerStudy, val, out: Path | None = None, *, batch="auto",
                          progress: bool = True, log=print, workers: int = 1, repair: bool = False):
    """Each parameterisation's learning rate at each sample size.

    At every size of ``study.search_ns``: tune on ``study.lr_search_seeds`` data sets of that size (drawn
    apart from the curves' data) at every rate of ``study.lr_grid`` and score the mean validation loss. The
    whole grid is scored every time: the validation loss need not be monotone in the rate on either side of
    its minimum, so the grid must be wide from the start (the quick preset's spans four decades) rather than
    grown from a narrow one. Only while the best rate sits on the grid's edge is the next rate beyond that
    edge added (a factor sqrt(10)), at most ``study.lr_widen`` times in all (:func:`grid_search`); a rate
    still on the edge after that is recorded as such (``on_edge``), never hidden. Between searched sizes
    log lr is interpolated linearly in log n.

    The (rate, data set) tunings of one round (the whole grid, then each added rate) go to
    :func:`score_members` together, ``batch`` of them per compiled call; a progress bar counts the searched
    (parameterisation, size) pairs. With ``workers`` above 1 the (parameterisation, size) pairs are searched
    in that many worker processes (:func:`search_size`, the largest sizes first; one tuning per call there),
    this process writing the table.

    Returns ``({parameterisation: {n: lr}}, search)``, ``search`` a table with one row per scored (size,
    rate) (:data:`SEARCH_COLUMNS`: the mean validation loss, the mean steps and the fraction of tunings
    that ended flat), in a canonical order (parameterisation, n, lr) whatever order the sizes finished in.
    With ``out`` it is kept in ``out/lr_search.csv`` after every size and a run started again reuses the
    sizes already searched, through the runner every study uses (:mod:`moe_estimation.experiments.runner`): a damaged
    table (a searched size without exactly one chosen rate, other columns, unreadable) is refused unless
    ``repair``, which searches those sizes again."""
    path = Path(out) / "lr_search.csv" if out is not None else Path("lr_search.csv")
    table = CellTable(path, SEARCH_COLUMNS, ["parameterisation", "n"], 0, check=_check_search)
    finished = {(k, int(n)) for k, n in load_cells(table, repair=repair, log=log)} if out is not None else set()
    cells = [(kind, n) for kind in PARAMETERISATIONS for n in study.search_ns]
    todo = [c for c in cells if c not in finished]
    notes = []  # said after the bar, not through it

    def rows(cell, result):
        (kind, n), (res, tuned) = cell, result
        if res.on_edge:
            notes.append(f"learning-rate search: {kind} at n = {n} chose {res.best:g}, still on the edge of the grid "
                         f"{res.grid[0]:g} .. {res.grid[-1]:g} after widening it {res.widened} times (recorded as "
                         "on_edge)")
        return pd.DataFrame(dict(parameterisation=kind, n=n, lr=res.grid, validation_loss=[res.scores[x] for x in res.grid],
                                 steps=[tuned[x][0] for x in res.grid], flat=[tuned[x][1] for x in res.grid],
                                 chosen=[x == res.best for x in res.grid], widened=res.widened, on_edge=res.on_edge))

    many = workers > 1 and len(todo) > 1
    bb, vv = (jax.tree.map(np.asarray, backbone), jax.tree.map(np.asarray, val)) if many else (backbone, val)
    fit_missing(table, todo, total=len(cells), work=search_size,
                args=lambda c: (bb, study, c[0], c[1], vv, 1 if many else batch), rows=rows,
                describe=lambda c: f"learning-rate search {c[0]} n={c[1]}", cost=lambda c: _cost(study, *c),
                workers=workers, progress=progress, log=log, unit="searched sizes", write=out is not None)
    order = {k: i for i, k in enumerate(PARAMETERISATIONS)}
    search = table.frame()
    search = search.assign(_k=search["parameterisation"].map(order)).sort_values(["_k", "n", "lr"]).drop(columns="_k")
    search = search.reset_index(drop=True)
    if out is not None:
        table.write(search)
    for note in notes:
        log(note)
    chosen = {kind: {} for kind in PARAMETERISATIONS}
    for r in search[search["chosen"].astype(bool)].itertuples():
        chosen[r.parameterisation][int(r.n)] = float(r.lr)
    lrs = {kind: interpolate_rates(chosen[kind], study.ns) for kind in PARAMETERISATIONS}
    log("learning rates by validation loss: " + "; ".join(
        f"{k} " + ", ".join(f"{v[m]:.3g} (n={m})" for m in study.search_ns) for k, v in lrs.items()))
    return lrs, search


def _check_search(path: Path) -> tuple[pd.DataFrame, list[str]]:
    """The check of ``lr_search.csv`` on resume: its columns, and exactly one chosen rate a searched size."""
    df, problems = read_columns(path, SEARCH_COLUMNS)
    if problems or not len(df):
        return df, problems
    picked = df.groupby(["parameterisation", "n"], sort=False)["chosen"].transform(
        lambda c: int(c.astype(str).str.lower().eq("true").sum()))
    bad = picked != 1
    if bad.any():
        return df[~bad].reset_index(drop=True), [f"{int(bad.sum())} row(s) of searched sizes without exactly one "
                                                  "chosen rate (dropped)"]
    return df, []


CURVE_COLUMNS = ["parameterisation", "n", "seed", "heldout_loss", "accuracy", "train_loss", "train_change", "flat",
                 "steps", "lr", "seconds"]


def learning_curves(backbone, study: TransformerStudy, lrs: dict, test, out: Path, *, batch="auto",
                    progress: bool = True, log=print, workers: int = 1, repair: bool = False):
    """Prefix-tune ``study.seeds`` data sets per (parameterisation, n) at that cell's learning rate
    (``lrs[kind][n]``) and score them on ``test`` (:func:`score_members`, ``batch`` tunings per compiled
    call: the program is the search's at the same (kind, n)); the table ``out/curves.csv``
    (:data:`CURVE_COLUMNS`: held-out loss and accuracy, the final training loss, its change over the last
    tenth of the steps, whether that met the flatness rule, the steps taken) is written after every cell
    (:class:`moe_estimation.experiments.results.CellTable`) and a run started again resumes from it (cells tuned with
    other learning rates are made again), through the runner every study uses (:mod:`moe_estimation.experiments.runner`;
    a damaged table is refused unless ``repair``). With ``workers`` above 1 the cells are tuned in that many
    worker processes (:func:`curve_cell`, the costliest first), this process writing the table."""
    table = CellTable(out / "curves.csv", CURVE_COLUMNS, ["parameterisation", "n"], study.seeds)
    load_cells(table, repair=repair, log=log)
    done = table.frame()
    same_lr = np.array([np.isclose(lrs.get(k, {}).get(int(n), np.nan), lr, rtol=1e-9, atol=0)
                        for k, n, lr in zip(done["parameterisation"], done["n"], done["lr"])], bool)
    if len(done) and not same_lr.all():
        table.write(done[same_lr])  # tuned with other learning rates: those cells are made again
    finished = {(k, int(n)) for k, n in table.finished()}
    cells = [(kind, n) for n in study.ns for kind in PARAMETERISATIONS]
    todo = [c for c in cells if c not in finished]

    def rows(cell, result):
        (kind, n), (got, sec) = cell, result
        return dict(parameterisation=kind, n=n, seed=np.arange(study.seeds),
                    heldout_loss=got["heldout_loss"].astype(float), accuracy=got["accuracy"].astype(float),
                    train_loss=got["train_loss"].astype(float), train_change=got["change"].astype(float),
                    flat=got["flat"].astype(bool), steps=got["steps"].astype(int), lr=lrs[kind][n], seconds=sec)

    many = workers > 1 and len(todo) > 1  # worker processes tune one member a call; this process batches them
    bb, tt = (jax.tree.map(np.asarray, backbone), jax.tree.map(np.asarray, test)) if many else (backbone, test)
    fit_missing(table, todo, total=len(cells), work=curve_cell,
                args=lambda c: (bb, study, c[0], c[1], lrs[c[0]][c[1]], tt, 1 if many else batch), rows=rows,
                describe=lambda c: f"prefix-tuning {c[0]} n={c[1]}", cost=lambda c: _cost(study, *c),
                workers=workers, progress=progress, log=log)
    order = {k: i for i, k in enumerate(PARAMETERISATIONS)}
    curves = table.frame()
    curves = curves.assign(_k=curves["parameterisation"].map(order)).sort_values(["_k", "n", "seed"]).drop(columns="_k")
    curves = curves.reset_index(drop=True)
    table.write(curves)
    not_flat = int((~curves["flat"].astype(bool)).sum())
    if not_flat:
        log(f"{not_flat} of {len(curves)} tunings stopped at max_steps = {study.max_steps} before the training loss was "
            "flat (curves.csv: flat, train_change)")
    return curves


def curve_rates(curves, study: TransformerStudy):
    """The slope of log held-out loss on log n per parameterisation (mean and median over seeds), with
    bootstrap intervals: the same code as the study's rates (:func:`moe_estimation.experiments.results.rate_entries`)."""
    rates = []
    for kind in PARAMETERISATIONS:
        g = curves[curves["parameterisation"] == kind]
        ns, mat = loss_matrix(g, "heldout_loss", replicate="seed")
        acc = g[g["n"] == ns[-1]]["accuracy"].mean()
        for e in rate_entries(ns, mat, num_bootstrap=2000, seed=study.seed):
            rates.append(dict(parameterisation=kind, statistic=e["statistic"], slope=e["slope"], ci_low=e["ci_low"],
                              ci_high=e["ci_high"], n_min=int(ns.min()), n_max=int(ns.max()), seeds=study.seeds,
                              mean_loss_at_n_max=float(np.nanmean(mat[-1])), mean_accuracy_at_n_max=float(acc)))
    return pd.DataFrame(rates)


def run_transformer(study: TransformerStudy, out, *, batch="auto", progress: bool = True, log=print,
                    workers: int | str = 1, repair: bool = False):
    """Pre-train (or reuse OUT/backbone.npz), search learning rates (``lr_search.csv``), and write the
    learning curves (``curves.csv``), their slopes (``curve_rates.csv``) and ``config.json`` into ``out``.
    A run started again with the same study resumes; ``out`` holding another study is refused. ``batch``:
    tunings per compiled call (:func:`score_members`; not part of the study). ``workers``: processes that
    search and tune at once (:mod:`moe_estimation.experiments.workers`; 1 here, in this process; ``"auto"``, the
    command line's default, one per core on a CPU), each (parameterisation, size) of the search and each
    cell of the curves a task; the lead process writes the tables.

    The run is made with ``jax_enable_x64`` off whatever the process has set (and the setting restored
    after): the arrays are float32 either way, but with the flag on, Python-number arithmetic inside the
    programs (the learning-rate schedules) is done in float64, and the pre-trained backbone came out 1e-5
    away, enough to change learning-rate choices. So ``reproduce.py``, which runs a float64 study first in
    the same process, and ``moe-estimation transformer`` give the same bits. ``repair``: damaged cells of
    ``lr_search.csv`` or ``curves.csv`` are searched or tuned again instead of refused."""
    workers = resolve_workers(workers)
    with jax.enable_x64(False):
        return _run_transformer(study, out, batch=batch, progress=progress, log=log, workers=workers, repair=repair)


def _run_transformer(study: TransformerStudy, out, *, batch, progress: bool, log, workers: int = 1,
                     repair: bool = False):
    validate_study(study)
    resolve_batch(batch)  # a bad batch fails before anything is made
    out = make_out_dir(out)
    cfg_path = out / "config.json"
    check_same_study(out, plain_dict(study), "transformer study")
    if not cfg_path.exists() and ((out / "curves.csv").exists() or (out / "lr_search.csv").exists()):
        raise ValueError(f"--out: {out} holds curves.csv or lr_search.csv but no config.json, so it cannot be told "
                         "whether they belong to this study; choose a new --out or delete them")
    atomic_write(cfg_path, json.dumps(dict(study=plain_dict(study)), indent=2))
    cfg = study.backbone
    root = jax.random.key(study.seed)
    backbone, pretrain_test = prepare_backbone(study, out, log=log)
    test = sample(jax.random.fold_in(root, 4), "downstream", study.test_size, cfg)
    val = sample(jax.random.fold_in(root, 5), "downstream", study.test_size, cfg)
    zero_loss, zero_acc = evaluate(backbone, cfg, *test)  # the frozen backbone on the new task, no prefix
    lrs, search = search_learning_rates(backbone, study, val, out, batch=batch, progress=progress, log=log,
                                        workers=workers, repair=repair)
    curves = learning_curves(backbone, study, lrs, test, out, batch=batch, progress=progress, log=log,
                             workers=workers, repair=repair)
    write_csv(out / "curve_rates.csv", curve_rates(curves, study))
    chosen = search[search["chosen"].astype(bool)]
    meta = dict(
        study=plain_dict(study),
        learning_rates={k: {str(n): lr for n, lr in v.items()} for k, v in lrs.items()},
        lr_choices=[dict(parameterisation=r.parameterisation, n=int(r.n), lr=float(r.lr), widened=int(r.widened),
                         on_edge=bool(r.on_edge)) for r in chosen.itertuples()],
        backbone_pretrain_test=pretrain_test,
        downstream_without_prefix=dict(loss=float(zero_loss), accuracy=float(zero_acc)),
        device=str(jax.devices()[0]), jax=jax.__version__,
    )
    atomic_write(cfg_path, json.dumps(meta, indent=2))
    return curves
