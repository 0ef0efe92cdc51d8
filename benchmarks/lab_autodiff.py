"""The lab's autodiff path against the prefix estimator's closed form, on the same model, in one run.

The prefix model with B = C = I and one frozen expert of score 0 and output 0 is the lab assembly of a softmax
gate with an extra reference score and constant experts (tests/test_lab.py shows the two give the same
objective, gradient and Gauss-Newton matrix). Here both are timed on the same data and parameters: one
evaluation of (F, g, J^T J), jitted, the median of ``--repeats`` calls after a warm-up, at each row count.

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
from moe_estimation.estimator import linearization as prefix_linearization  # noqa: E402
from moe_estimation.estimator import prepare_data  # noqa: E402
from moe_estimation.lab.fit import linearization as lab_linearization  # noqa: E402

ORDER = np.array([0, 1, 12, 4, 5, 13, 8, 9, 14, 2, 3, 6, 7, 10, 11])  # the prefix layout -> the lab's, 3 prompts


def _time(fn, arg, repeats):
    jax.block_until_ready(fn(arg))
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(arg))
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main(args) -> int:
    rng = np.random.default_rng(0)
    prob = me.make_problem(structure="non-shared", A=np.zeros((1, 2, 2)), a=np.zeros(1), H=np.zeros((1, 2, 2)),
                           B=np.eye(2), C=np.eye(2), true_atoms=rng.uniform(-1, 1, (2, 4)), true_biases=[0.0, 0.3])
    model = lab.Assembly(gate=lab.SoftmaxGate(reference="extra"), expert=lab.ConstantExpert(), input=lab.InputLaw(d=2),
                         d_out=2)
    theta = jnp.asarray(np.concatenate([rng.uniform(-1, 1, 12), rng.uniform(-1, 1, 3)]))
    records = []
    for rows in args.rows:
        X = jnp.asarray(rng.uniform(-1, 1, (rows, 2)))
        Y = me.predict(prob, me.true_params(prob), X) + 0.1 * jnp.asarray(rng.normal(size=(rows, 2)))
        w = jnp.ones(rows)
        closed = jax.jit(prefix_linearization(prob, me.FitSettings(num_prompts=3, blocking="whole"), prepare_data(prob, X, Y, w)))
        auto = jax.jit(lab_linearization(model, 3, X, Y, w))
        t_closed, t_auto = _time(closed, theta, args.repeats), _time(auto, theta[ORDER], args.repeats)
        records.append(dict(rows=rows, parameters=15, closed_form_seconds=t_closed, autodiff_seconds=t_auto,
                            ratio=t_auto / t_closed, device=str(jax.devices()[0]), platform=platform.platform()))
        print(f"rows {rows}: closed form {t_closed * 1e3:.3f} ms, autodiff {t_auto * 1e3:.3f} ms, "
              f"autodiff / closed form {t_auto / t_closed:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, nargs="+", default=[1024, 8192, 32768])
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--json", help="write the records here")
    raise SystemExit(main(p.parse_args()))
