"""The lab's autodiff path against its registered closed-form fast path, on the prefix presets, in one run.

Each prefix preset is a lab assembly (``lab.from_problem``: the frozen block, prompts through the structure);
the lab estimator's least-squares normal equations come from the registered fast path (the prefix estimator's
closed-form Jacobian, ``derivatives="auto"``) or from autodiff of the one-sample regression function
(``derivatives="autodiff"``); tests/test_lab.py shows the two agree. Both are timed here on the same data and
parameters (an over-specified fit, L' = L + 1): one evaluation of (F, g, J^T J), jitted, the median of
``--repeats`` calls after a warm-up, at each row count.

    python benchmarks/lab_autodiff.py --rows 1024 8192 32768 --json benchmarks/lab-autodiff-cpu.json

Run it pinned to one core with single-threaded XLA for numbers of one core (as the other benchmarks are).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import moe_estimation as me  # noqa: E402
import moe_estimation.lab as lab  # noqa: E402
from moe_estimation.lab.fit import linearization  # noqa: E402


def _time(fn, arg, repeats):
    jax.block_until_ready(fn(arg))
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(arg))
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main(args) -> int:
    records = []
    for name in args.presets:
        prob = me.preset(name)
        model, truth = lab.from_problem(prob)
        Lp = prob.num_true_prompts + 1
        idx = np.arange(Lp) % prob.num_true_prompts
        theta = model.flatten(lab.from_params(me.Params(prob.true_atoms[idx] * 0.9, prob.true_biases[idx] - 0.5)))
        for rows in args.rows:
            X, Y = me.simulate(jax.random.key(rows), prob, rows)
            w = jnp.ones(rows)
            fast = jax.jit(linearization(model, Lp, X, Y, w))
            auto = jax.jit(linearization(model, Lp, X, Y, w, derivatives="autodiff"))
            t_fast, t_auto = _time(fast, theta, args.repeats), _time(auto, theta, args.repeats)
            records.append(dict(problem=name, rows=rows, parameters=int(theta.shape[0]), closed_form_seconds=t_fast,
                                autodiff_seconds=t_auto, ratio=t_auto / t_fast, device=str(jax.devices()[0]),
                                platform=platform.platform()))
            print(f"{name}, rows {rows}: closed form {t_fast * 1e3:.3f} ms, autodiff {t_auto * 1e3:.3f} ms, "
                  f"autodiff / closed form {t_auto / t_fast:.2f}x", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="+", default=["non-shared", "shared-tanh"], choices=list(me.PRESETS))
    p.add_argument("--rows", type=int, nargs="+", default=[1024, 8192, 32768])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--json", help="write the records here")
    raise SystemExit(main(p.parse_args()))
