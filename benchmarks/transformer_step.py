"""One prefix-tuning step of the learning-curve transformer, timed in its variants in one run.

    taskset -c 0 python benchmarks/transformer_step.py --json benchmarks/transformer-step-cpu.json

A step is what :func:`moe_estimation.transformer.train.tune` repeats up to 1000 times per tuning: the loss
of the frozen backbone with a prefix on n sequences, its gradient with respect to the prefix, an Adam
update. The variants, each timed on the same data, the same prefix and the same core:

- ``estimator``: the step as ``tune`` takes it (one member; the model code of
  :mod:`moe_estimation.transformer.model`);
- ``vmap-4``: four members in one vmapped program, as ``score_members(batch=4)`` runs them (the time per
  member-step, so that it compares with ``estimator``);
- ``split-prefix``: attention with the prefix scores and the token scores as separate contractions (the
  prefix keys never broadcast to every sequence);
- ``elementwise``: attention written as broadcast products and sums instead of batched dots;
- XLA flags (each in a process of its own, as flags are read once): XNNPACK dot fusion, YNNPACK dot
  fusion, oneDNN dot fusion, XNNPACK off, fast math.

What it answers: whether the learning-rate search and curves of the transformer could run their
protocol in fewer CPU seconds, or whether only a smaller protocol fits the main command's budget (README,
*The prefix-tuned transformer* and *Performance*). Every variant runs in a process of its own, all of them in
turn, twice (``--rounds``); each time is the best of 3 calls of 100 steps in each of those processes. The
loss after 100 steps is printed to show that the variants compute the same thing (to float32 rounding).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

BASE_FLAGS = "--xla_cpu_multi_thread_eigen=false"
FLAG_VARIANTS = {
    "xnn-dot": "--xla_cpu_experimental_xnn_fusion_type=dot",
    "ynn-dot": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "onednn-dot": "--xla_cpu_experimental_onednn_fusion_type=dot",
    "no-xnnpack": "--xla_cpu_use_xnnpack=false",
    "fast-math": "--xla_cpu_enable_fast_math=true",
}


def _attention_split(W_Q, W_K, W_V, x, heads, prefix_k=None, prefix_v=None, prefix_b=None):
    import jax
    import jax.numpy as jnp

    T, _ = x.shape
    dh = W_Q.shape[1] // heads
    q, k, v = ((x @ W).reshape(T, heads, dh) for W in (W_Q, W_K, W_V))
    s = jnp.concatenate([jnp.einsum("thd,hld->htl", q, prefix_k), jnp.einsum("thd,shd->hts", q, k)], -1)
    w = jax.nn.softmax(s / jnp.sqrt(dh), axis=-1)
    L = prefix_k.shape[1]
    out = jnp.einsum("htl,hld->thd", w[..., :L], prefix_v) + jnp.einsum("hts,shd->thd", w[..., L:], v)
    return out.reshape(T, heads * dh)


def _attention_elementwise(W_Q, W_K, W_V, x, heads, prefix_k=None, prefix_v=None, prefix_b=None):
    import jax
    import jax.numpy as jnp

    T, _ = x.shape
    dh = W_Q.shape[1] // heads
    q, k, v = ((x @ W).reshape(T, heads, dh).transpose(1, 0, 2) for W in (W_Q, W_K, W_V))
    k = jnp.concatenate([prefix_k, k], axis=1)
    v = jnp.concatenate([prefix_v, v], axis=1)
    w = jax.nn.softmax((q[:, :, None, :] * k[:, None, :, :]).sum(-1) / jnp.sqrt(dh), axis=-1)
    return (w[..., None] * v[:, None, :, :]).sum(2).transpose(1, 0, 2).reshape(T, heads * dh)


def time_variants(variants, ns, kinds, rounds: int = 3, steps: int = 100) -> list[dict]:
    """Time each model variant in this process (the flags it was started with)."""
    import jax
    import jax.numpy as jnp
    import optax

    from moe_estimation.transformer import model as M
    from moe_estimation.transformer.prefixes import init_prefix, prefix_kv
    from moe_estimation.transformer.tasks import sample
    from moe_estimation.transformer.train import TransformerStudy, cross_entropy, pretrain

    study = TransformerStudy(pretrain_steps=50)
    cfg = study.backbone
    backbone, _ = pretrain(jax.random.key(0), study)
    attention = M.attention
    records = []
    for variant in variants:
        M.attention = {"split-prefix": _attention_split, "elementwise": _attention_elementwise}.get(variant, attention)
        members = 4 if variant == "vmap-4" else 1
        for kind in kinds:
            for n in ns:
                tokens, labels = sample(jax.random.key(1), "downstream", n, cfg)
                opt = optax.adam(1e-2)

                def run(p0):
                    def loss_fn(p):
                        prefix = prefix_kv(kind, p, backbone, cfg)
                        return cross_entropy(jax.vmap(lambda t: M.forward(backbone, t, cfg, prefix))(tokens), labels)

                    def step(carry, _):
                        p, s = carry
                        loss, g = jax.value_and_grad(loss_fn)(p)
                        upd, s = opt.update(g, s, p)
                        return (optax.apply_updates(p, upd), s), loss

                    return jax.lax.scan(step, (p0, opt.init(p0)), None, length=steps)[1][-1]

                keys = jax.random.split(jax.random.key(2), members)
                p0 = jax.vmap(lambda k: init_prefix(k, kind, cfg, study.num_prefixes, hidden=study.deep_hidden))(keys)
                f = jax.jit(jax.vmap(run)) if members > 1 else jax.jit(run)
                p0 = p0 if members > 1 else jax.tree.map(lambda a: a[0], p0)
                loss = jax.block_until_ready(f(p0))
                best = float("inf")
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    jax.block_until_ready(f(p0))
                    best = min(best, time.perf_counter() - t0)
                records.append(dict(variant=variant, kind=kind, n=n, members=members,
                                    ms_per_member_step=best / steps / members * 1e3,
                                    final_loss=float(jnp.ravel(loss)[0])))
    M.attention = attention
    return records


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ns", type=int, nargs="+", default=[64, 512])
    p.add_argument("--kinds", nargs="+", default=["no-share", "deep-share"])
    p.add_argument("--rounds", type=int, default=2, help="times every variant is run, in turn (best kept)")
    p.add_argument("--json", help="write the records here")
    p.add_argument("--child", help=argparse.SUPPRESS)  # one model variant, timed in a process of its own
    a = p.parse_args()
    if a.child:
        print(json.dumps(time_variants([a.child], a.ns, a.kinds)))
        return
    # every variant in a process of its own (XLA reads its flags once), all of them in turn, ``rounds`` times,
    # so that a drift of the machine hits them alike
    variants = [(v, BASE_FLAGS) for v in ("estimator", "vmap-4", "split-prefix", "elementwise")]
    variants += [(name, f"{BASE_FLAGS} {flag}") for name, flag in FLAG_VARIANTS.items()]
    best = {}
    for _ in range(a.rounds):
        for name, flags in variants:
            model = name if name in ("estimator", "vmap-4", "split-prefix", "elementwise") else "estimator"
            out = subprocess.run([sys.executable, __file__, "--child", model, "--ns", *map(str, a.ns), "--kinds", *a.kinds],
                                 env=dict(os.environ, XLA_FLAGS=flags), capture_output=True, text=True, check=True)
            for r in json.loads(out.stdout.strip().splitlines()[-1]):
                key = name, r["kind"], r["n"]
                if key not in best or r["ms_per_member_step"] < best[key]["ms_per_member_step"]:
                    best[key] = dict(r, variant=name, xla_flags=flags)
    records = list(best.values())
    base = {(r["kind"], r["n"]): r["ms_per_member_step"] for r in records if r["variant"] == "estimator"}
    for r in records:
        r["speedup_vs_estimator"] = base[r["kind"], r["n"]] / r["ms_per_member_step"]
        print(f"{r['variant']:13s} {r['kind']:12s} n={r['n']:4d}  {r['ms_per_member_step']:7.3f} ms per member-step  "
              f"x{r['speedup_vs_estimator']:.2f} vs the estimator's  loss after 100 steps {r['final_loss']:.6f}",
              flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(rounds=a.rounds, records=records), f, indent=1)


if __name__ == "__main__":
    main()
