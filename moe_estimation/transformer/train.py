"""Pre-training, prefix-tuning with a frozen backbone, the learning-rate search and the learning curves.

Prefix-tuning differentiates a loss with respect to the prefix pytree only (the backbone enters as a
constant: it receives no gradient and no optimiser state, so it stays bitwise frozen). All three
parameterisations use the same optimiser (optax Adam, full batch, a fixed number of steps), the same
number of prefixes and the same data; each gets the learning rate that minimises the validation loss on a
declared grid at a declared sample size (a validation set drawn apart from the test set, which the search
never sees).
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
    tune_steps: int = 300
    ns: tuple = (16, 32, 64, 128, 256, 512)
    seeds: int = 5
    lr_grid: tuple = (3e-3, 1e-2, 3e-2, 1e-1)
    lr_search_n: int = 128
    test_size: int = 4000


TRANSFORMER_PRESETS = {
    "quick": TransformerStudy(),
    "tiny": TransformerStudy(pretrain_steps=150, tune_steps=20, ns=(16, 32), seeds=2, lr_grid=(1e-2,),
                             lr_search_n=16, test_size=256),
}


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


@partial(jax.jit, static_argnames=("kind", "cfg", "steps", "num_prefixes"))
def tune(key, kind: str, backbone, cfg: BackboneConfig, tokens, labels, lr, steps: int, num_prefixes: int):
    """Prefix-tune on (tokens, labels) with the backbone frozen; returns the trained prefix parameters."""
    params = init_prefix(key, kind, cfg, num_prefixes)
    opt = optax.adam(jnp.asarray(lr, jnp.float32))
    state = opt.init(params)
    frozen = jax.lax.stop_gradient(backbone)

    def loss_fn(p):
        prefix = prefix_kv(kind, p, frozen, cfg)
        return cross_entropy(jax.vmap(lambda t: forward(frozen, t, cfg, prefix))(tokens), labels)

    def step(carry, _):
        p, s = carry
        loss, g = jax.value_and_grad(loss_fn)(p)
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), loss

    (params, _), losses = jax.lax.scan(step, (params, state), None, length=steps)
    return params, losses


def _curve_point(backbone, study: TransformerStudy, kind: str, lr: float, n: int, seed_keys, test):
    cfg = study.backbone

    def one(k):
        tokens, labels = sample(jax.random.fold_in(k, 0), "downstream", n, cfg)
        params, losses = tune(jax.random.fold_in(k, 1), kind, backbone, cfg, tokens, labels, lr, study.tune_steps,
                              study.num_prefixes)
        loss, acc = evaluate(backbone, cfg, *test, prefix_kv(kind, params, backbone, cfg))
        return loss, acc, losses[-1]

    return jax.lax.map(one, seed_keys)


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


def search_learning_rates(backbone, study: TransformerStudy, val, *, log=print) -> tuple[dict, list[dict]]:
    """Each parameterisation's learning rate: the one of ``study.lr_grid`` with the lowest validation loss
    after tuning on ``study.lr_search_n`` samples. Returns ``{parameterisation: lr}`` and every score."""
    cfg = study.backbone
    root = jax.random.key(study.seed)
    lrs, search = {}, []
    for kind in PARAMETERISATIONS:
        scores = []
        for lr in study.lr_grid:
            k = jax.random.fold_in(jax.random.fold_in(root, 6), PARAMETERISATIONS.index(kind))
            tokens, labels = sample(jax.random.fold_in(k, 0), "downstream", study.lr_search_n, cfg)
            params, _ = tune(jax.random.fold_in(k, 1), kind, backbone, cfg, tokens, labels, lr, study.tune_steps,
                             study.num_prefixes)
            vloss, _ = evaluate(backbone, cfg, *val, prefix_kv(kind, params, backbone, cfg))
            scores.append(float(vloss))
            search.append(dict(parameterisation=kind, lr=lr, validation_loss=float(vloss)))
        lrs[kind] = study.lr_grid[int(np.nanargmin(scores))]
    log("learning rates by validation loss: " + ", ".join(f"{k} {v:g}" for k, v in lrs.items()))
    return lrs, search


CURVE_COLUMNS = ["parameterisation", "n", "seed", "heldout_loss", "accuracy", "train_loss", "steps", "lr", "seconds"]


def learning_curves(backbone, study: TransformerStudy, lrs: dict, test, out: Path, *, progress: bool = True,
                    log=print):
    """Prefix-tune ``study.seeds`` data sets per (parameterisation, n) and score them on ``test``; the table
    ``out/curves.csv`` is written after every cell (:class:`moe_estimation.results.CellTable`) and a run
    started again resumes from it (cells tuned with other learning rates are made again)."""
    from tqdm.auto import tqdm

    from ..results import CellTable

    root = jax.random.key(study.seed)
    table = CellTable(out / "curves.csv", CURVE_COLUMNS, ["parameterisation", "n"], study.seeds)
    table.load()
    done = table.frame()
    same_lr = np.array([lrs.get(k) == lr for k, lr in zip(done["parameterisation"], done["lr"])], bool)
    if len(done) and not same_lr.all():
        table.write(done[same_lr])  # tuned with other learning rates: those cells are made again
    finished = {(k, int(n)) for k, n in table.finished()}
    cells = [(kind, n) for n in study.ns for kind in PARAMETERISATIONS]
    if finished:
        log(f"resuming: {len(finished)} of {len(cells)} cells already in {table.path}")
    todo = [c for c in cells if c not in finished]
    for kind, n in tqdm(todo, disable=not progress, unit="cell", desc="prefix-tuning"):
        seed_keys = jax.vmap(lambda s: jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(root, 7), n), s))(
            jnp.arange(study.seeds))
        t0 = time.perf_counter()
        loss, acc, train_loss = jax.device_get(_curve_point(backbone, study, kind, lrs[kind], n, seed_keys, test))
        sec = (time.perf_counter() - t0) / study.seeds
        table.add(dict(parameterisation=kind, n=n, seed=np.arange(study.seeds), heldout_loss=loss.astype(float),
                       accuracy=acc.astype(float), train_loss=train_loss.astype(float), steps=study.tune_steps,
                       lr=lrs[kind], seconds=sec))
    order = {k: i for i, k in enumerate(PARAMETERISATIONS)}
    curves = table.frame()
    curves = curves.assign(_k=curves["parameterisation"].map(order)).sort_values(["_k", "n", "seed"]).drop(columns="_k")
    curves = curves.reset_index(drop=True)
    table.write(curves)
    return curves


def curve_rates(curves, study: TransformerStudy):
    """The slope of log held-out loss on log n per parameterisation (mean and median over seeds), with
    bootstrap intervals: the same code as the study's rates (:func:`moe_estimation.results.rate_entries`)."""
    import pandas as pd

    from ..results import loss_matrix, rate_entries

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


def run_transformer(study: TransformerStudy, out, *, progress: bool = True, log=print):
    """Pre-train (or reuse OUT/backbone.npz), search learning rates, and write the learning curves
    (``curves.csv``), their slopes (``curve_rates.csv``) and ``config.json`` into ``out``."""
    from .._checks import make_out_dir
    from ..results import atomic_write, write_csv

    out = make_out_dir(out)
    cfg = study.backbone
    root = jax.random.key(study.seed)
    backbone, pretrain_test = prepare_backbone(study, out, log=log)
    test = sample(jax.random.fold_in(root, 4), "downstream", study.test_size, cfg)
    val = sample(jax.random.fold_in(root, 5), "downstream", study.test_size, cfg)
    zero_loss, zero_acc = evaluate(backbone, cfg, *test)  # the frozen backbone on the new task, no prefix
    lrs, search = search_learning_rates(backbone, study, val, log=log)
    curves = learning_curves(backbone, study, lrs, test, out, progress=progress, log=log)
    write_csv(out / "curve_rates.csv", curve_rates(curves, study))
    meta = dict(
        study={k: (v._asdict() if hasattr(v, "_asdict") else v) for k, v in study._asdict().items()},
        learning_rates=lrs, lr_search=search, backbone_pretrain_test=pretrain_test,
        downstream_without_prefix=dict(loss=float(zero_loss), accuracy=float(zero_acc)),
        device=str(jax.devices()[0]), jax=jax.__version__,
    )
    atomic_write(out / "config.json", json.dumps(meta, indent=2))
    return curves
