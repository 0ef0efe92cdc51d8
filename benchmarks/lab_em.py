"""EM against the direct maximum-likelihood fit, on the same data and the same starts, in one run.

The model is the softmax-gated Gaussian mixture of linear experts (d = 1, scalar output), the one the field
fits by EM: a true mixture of two components, fitted with K' = 2 (exactly specified) and K' = 3
(over-specified). For each (K', n), ``--datasets`` data sets are drawn and each is fitted once from one
random start over half the box, by the lab's direct fit (the project's Levenberg-Marquardt solver on the
negative log-likelihood, outer-product model Hessian) and by EM (closed-form experts and variances, damped
Newton gate steps), both from that start. Reported per method: the median and the mean negative
log-likelihood reached (a few fits stuck far off move the mean), on how many data sets it reached the lower
of the two (within 1e-7 relative), by how much it missed it at worst, how often it stopped by its
own convergence test, the median number of steps (solver steps or EM iterations), and the seconds a fit
(jitted, compilation excluded: the median of ``--repeats`` timed calls of the whole batch, divided by the
number of data sets).

    python benchmarks/lab_em.py --json benchmarks/lab-em-cpu.json

Run it pinned to one core with single-threaded XLA for numbers of one core (as the other benchmarks are).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import moe_estimation as me  # noqa: E402
import moe_estimation.lab as lab  # noqa: E402
from moe_estimation.lab.em import _em_batch  # noqa: E402
from moe_estimation.lab.fit import LabFitSettings, _fit_batch  # noqa: E402

TIE = 1e-7  # two mean NLLs within this relative distance are one maximum


def problem():
    model = lab.Assembly(gate=lab.SoftmaxGate("pinned"), expert=lab.LinearExpert(), likelihood="gaussian",
                         input=lab.InputLaw("uniform", d=1, low=-1.0, high=1.0), bound=10.0)
    truth = model.check(lab.Mixture(gate=[[2.0, 0.3], [0.0, 0.0]], expert=[[1.5, 0.5], [-1.0, -0.5]],
                                    log_var=np.log([0.1, 0.2])))
    return model, truth


def _time(fn, repeats):
    jax.block_until_ready(fn())
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def main(args) -> int:
    model, truth = problem()
    rows = []
    print(f"{'K':>2s} {'n':>6s} {'method':7s} {'median NLL':>12s} {'mean NLL':>12s} {'lowest':>7s} {'worst miss':>10s} "
          f"{'stopped':>8s} {'steps':>6s} {'s/fit':>8s}")
    for K in args.components:
        for n in args.ns:
            R = args.datasets
            keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(args.seed), r))(jnp.arange(R))
            X, Y = jax.vmap(lambda k: lab.simulate_rows(model, truth, k, n))(keys)
            w = jnp.ones((R, n))
            start_keys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
            s = LabFitSettings(num_components=K, restarts=1, init="random", init_scale=0.5, max_steps=args.max_steps)
            s_em = s._replace(max_steps=args.em_iterations)
            methods = {
                "direct": lambda: _fit_batch(start_keys, model, s, X, Y, w, truth),
                "em": lambda: _em_batch(start_keys, model, s_em, X, Y, w, truth, jnp.asarray(args.em_tol),
                                        args.gate_steps),
            }
            results, seconds = {}, {}
            for name, fn in methods.items():
                seconds[name] = _time(fn, args.repeats) / R
                results[name] = jax.device_get(fn())
            low = np.minimum(results["direct"].objective, results["em"].objective)
            for name, res in results.items():
                obj = np.asarray(res.objective)
                rec = dict(components=K, n=n, method=name, datasets=R, median_nll=float(np.median(obj)),
                           mean_nll=float(np.mean(obj)), reached_lowest=int(np.sum(obj <= low + TIE * np.abs(low))),
                           worst_miss=float(np.max(obj - low)), nll=[float(v) for v in obj],
                           stopped_by_test=int(np.sum(np.asarray(res.converged))),
                           median_steps=float(np.median(np.asarray(res.steps))), seconds_per_fit=seconds[name])
                rows.append(rec)
                print(f"{K:2d} {n:6d} {name:7s} {rec['median_nll']:12.8f} {rec['mean_nll']:12.8f} "
                      f"{rec['reached_lowest']:4d}/{R:<2d} {rec['worst_miss']:10.2e} "
                      f"{rec['stopped_by_test']:5d}/{R:<2d} {rec['median_steps']:6.0f} {rec['seconds_per_fit']:8.4f}",
                      flush=True)
            write(args, rows)  # after every (K', n): a run stopped part-way keeps what it measured
    write(args, rows, done=True)
    return 0


def write(args, rows, done=False) -> None:
    if not args.json:
        return
    meta = dict(command="python benchmarks/lab_em.py " + " ".join(args.argv), jax=jax.__version__,
                moe_estimation=me.__version__, python=platform.python_version(), machine=platform.machine(),
                devices=[str(d) for d in jax.devices()], tie_relative=TIE, finished=done)
    with open(args.json + ".tmp", "w") as f:
        json.dump(dict(meta=meta, rows=rows), f, indent=1)
    os.replace(args.json + ".tmp", args.json)
    if done:
        print(f"wrote {args.json}")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--components", type=int, nargs="+", default=[2, 3], help="K' fitted (the truth has 2)")
    p.add_argument("--ns", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--datasets", type=int, default=16)
    p.add_argument("--max-steps", type=int, default=400, help="the direct fit's solver steps at most")
    p.add_argument("--em-iterations", type=int, default=2000, help="EM iterations at most")
    p.add_argument("--em-tol", type=float, default=1e-8, help="EM stops when the mean NLL falls by less, relative")
    p.add_argument("--gate-steps", type=int, default=5, help="Newton steps of EM's gate M-step")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    argv = sys.argv[1:] if argv is None else argv
    args = p.parse_args(argv)
    args.argv = argv
    return args


if __name__ == "__main__":
    raise SystemExit(main(parse()))
