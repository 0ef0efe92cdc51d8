"""One Levenberg-Marquardt step of the teacher-student fits, its sums over sequences whole or in row blocks,
timed side by side in one run.

    taskset -c 1 python benchmarks/teacher_step.py --json benchmarks/teacher-step-cpu.json

A step of :func:`moe_estimation.solver.solve` in the teacher study costs one linearisation of the students'
least-squares problem (:func:`moe_estimation.transformer.teacher.student_linearize`: the residuals of n
sequences, their forward-mode Jacobian with respect to the prefixes, J^T J and J^T r) and a Cholesky solve of
a (P x P) system (P about 100: negligible beside it). The variants, on the same data, start and core:

- ``whole``: J of all n sequences at once (the fits of every table committed up to n = 512);
- ``blocks-B``: J^T J and J^T r summed over blocks of B sequences in a ``lax.scan`` (what the fits do on a
  CPU above :data:`moe_estimation.transformer.teacher.BLOCK_FROM` sequences, with B =
  :data:`~moe_estimation.transformer.teacher.BLOCK_ROWS`).

Each time is the best of ``--calls`` calls, the variants taken in turn ``--rounds`` times so that a drift of
the machine hits them alike. The largest relative difference of H from the whole one is printed beside it
(the same numbers up to the order of a float sum). The backbone is the committed teacher-controls run's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

jax.config.update("jax_enable_x64", True)

from jax.flatten_util import ravel_pytree  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from moe_estimation.transformer import teacher as T  # noqa: E402
from moe_estimation.transformer.train import load_backbone  # noqa: E402


def time_steps(kinds, ns, blocks, rounds: int, calls: int) -> list[dict]:
    study = T.TEACHER_PRESETS["teacher-controls"]
    cfg = study.backbone
    backbone32 = load_backbone(ROOT / "tables" / "teacher-controls" / "backbone.npz", cfg)
    if backbone32 is None:
        raise SystemExit("tables/teacher-controls/backbone.npz: missing or made with another configuration")
    backbone, teachers, _ = T._context(study, backbone32)
    records = []
    for kind in kinds:
        for n in ns:
            tokens = jax.random.randint(jax.random.key(1), (n, cfg.seq_len), 0, cfg.vocab, dtype=jnp.int32)
            Y = T.features(backbone, tokens, cfg, teachers["shared"])
            theta, unravel = ravel_pytree(T.initial_student(jax.random.key(2), study, kind, study.num_prefixes, backbone))
            variants = {"whole": None, **{f"blocks-{b}": b for b in blocks if b < n}}
            fns = {name: jax.jit(T.student_linearize(kind, unravel, backbone, cfg, tokens, Y, rows=rows))
                   for name, rows in variants.items()}
            outs = {name: jax.block_until_ready(f(theta)) for name, f in fns.items()}  # compiled here
            best = dict.fromkeys(fns, float("inf"))
            for _ in range(rounds):
                for name, f in fns.items():
                    for _ in range(calls):
                        t0 = time.perf_counter()
                        jax.block_until_ready(f(theta))
                        best[name] = min(best[name], time.perf_counter() - t0)
            H0 = outs["whole"].H
            for name in fns:
                diff = float(jnp.max(jnp.abs(outs[name].H - H0)) / jnp.max(jnp.abs(H0)))
                records.append(dict(kind=kind, n=n, variant=name, parameters=int(theta.shape[0]),
                                    ms_per_step=best[name] * 1e3, speedup_vs_whole=best["whole"] / best[name],
                                    max_rel_diff_H=diff))
                print(f"{kind:13s} n={n:5d} {name:10s} {best[name] * 1e3:9.1f} ms a step  "
                      f"x{best['whole'] / best[name]:4.2f} vs whole  rel. diff. of H {diff:.1e}", flush=True)
    return records


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--kinds", nargs="+", default=["no-share", "simple-share", "deep-share"])
    p.add_argument("--ns", type=int, nargs="+", default=[256, 512, 1024, 2048])
    p.add_argument("--blocks", type=int, nargs="+", default=[16, 32, 64, 128])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--calls", type=int, default=3)
    p.add_argument("--json", help="write the records here")
    a = p.parse_args(argv)
    records = time_steps(a.kinds, a.ns, a.blocks, a.rounds, a.calls)
    if a.json:
        meta = dict(rounds=a.rounds, calls=a.calls, backend=jax.default_backend(), jax=jax.__version__,
                    xla_flags=os.environ.get("XLA_FLAGS", ""), records=records)
        Path(a.json).write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
