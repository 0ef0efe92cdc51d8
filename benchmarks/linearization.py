"""Variants of one linearisation (F, g = J^T r, H = J^T J at one theta), timed against each other in one run.

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \
        taskset -c 0 python benchmarks/linearization.py --json benchmarks/linearization-cpu.json

What the estimator does (``moe_estimation.prefix.estimator.residuals_and_jacobian`` and
``moe_estimation.solver.normal_equations``), against the changes proposed to speed it up:

- ``kernels``: ``einsum`` (the estimator's: the small contractions over d and L' as dots) or
  ``elementwise`` (each written as a sum of broadcast products, unrolled over the small dimension);
- ``product``: ``separate`` (J J^T, J r and r r, the estimator's), ``stacked`` (one product of [J; r]
  with itself, F, g and H read off it) or ``moments`` (no J at all: every block of J^T J and J^T r from
  weighted moments of the inputs, :func:`moments`; with the ``einsum`` kernels only);
- ``rows``: ``whole`` (one array), ``scan`` (blocks of ``--block-rows`` in a ``lax.scan``, the estimator's
  path above ``AUTO_BLOCK_FROM``), ``scan-barrier`` (the same with an optimisation barrier on each block,
  so that XLA cannot fuse the block's slice into the Jacobian kernel) or ``slices`` (a Python loop of
  fixed slices, unrolled).

Every variant is checked against the estimator's (relative difference of F, g, H) and timed in three
rounds over all variants of a shape (so that a drift of the machine hits them alike), each the best of two
runs of enough calls to take a tenth of a second or so.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np


def elementwise_rj(problem, Lp: int, data, theta):
    """The estimator's closed-form residuals and Jacobian, with the small contractions written out."""
    from moe_estimation.prefix.estimator import unflatten_params
    from moe_estimation.prefix.structures import key_value

    Xt, Yt, w, lse, meant = data
    p = unflatten_params(theta, Lp, problem.atom_dim)
    kv_one = lambda a: tuple(x[0] for x in key_value(problem, a[None]))
    K, V = key_value(problem, p.atoms)
    Jk, Jv = jax.vmap(jax.jacfwd(kv_one))(p.atoms)
    d, n = Xt.shape
    dv, D = Yt.shape[0], Jk.shape[2]
    s = p.biases[:, None] + sum(K[:, j, None] * Xt[j] for j in range(d))
    m = jnp.maximum(jnp.max(s, axis=0), lse)
    e0, e = jnp.exp(lse - m), jnp.exp(s - m)
    den = e0 + jnp.sum(e, axis=0)
    pi0, pi = e0 / den, e / den
    f = pi0 * meant + sum(V[l, :, None] * pi[l] for l in range(Lp))
    G = pi[:, None, :] * (V[:, :, None] - f[None])
    xk = jnp.stack([sum(Jk[:, j, a, None] * Xt[j] for j in range(d)) for a in range(D)], axis=1)
    Ja = G[:, None] * xk[:, :, None] + pi[:, None, None, :] * jnp.transpose(Jv, (0, 2, 1))[..., None]
    J = jnp.concatenate([Ja.reshape(Lp * D, dv, n), G], axis=0)
    return (f - Yt) * w, J * w


def separate(rj, d, theta):
    from moe_estimation.solver import Normal

    r, J = rj(d, theta)
    Jm, rv = J.reshape(J.shape[0], -1), r.reshape(-1)
    return Normal(0.5 * rv @ rv, Jm @ rv, Jm @ Jm.T)


def stacked(rj, d, theta):
    from moe_estimation.solver import Normal

    r, J = rj(d, theta)
    P = J.shape[0]
    M = jnp.concatenate([J.reshape(P, -1), r.reshape(1, -1)], axis=0)
    MM = M @ M.T
    return Normal(0.5 * MM[P, P], MM[:P, P], MM[:P, :P])


def moments(problem, Lp: int):
    """``(rj, data, theta) -> Normal(F, g, H)`` from weighted moments of the inputs, never forming J (``rj`` is
    not used). With per-row quantities G (L', d_v) = df/db, pi (L'), x (d), r (d_v) and row weight w^2:
    J's atom rows are G_lc (Jk_l^T x)_a + pi_l (Jv_l)_ca, so every block of J^T J and J^T r is a small
    contraction of Jk, Jv with sums over the rows of products of S = G G^T, pi, G, x and r (up to 4 of
    them at once), e.g. the key-key block sum_i w^2 S_ll' x x^T. Those sums are over L'^2 d^2 and
    L'^2 d d_v numbers per row instead of P^2 d_v for J J^T."""
    from moe_estimation.prefix.estimator import unflatten_params
    from moe_estimation.solver import Normal
    from moe_estimation.prefix.structures import key_value

    def whole(rj, data, theta):
        Xt, Yt, w, lse, meant = data
        p = unflatten_params(theta, Lp, problem.atom_dim)
        kv_one = lambda a: tuple(x[0] for x in key_value(problem, a[None]))
        K, V = key_value(problem, p.atoms)
        Jk, Jv = jax.vmap(jax.jacfwd(kv_one))(p.atoms)  # (L', d, D), (L', d_v, D)
        s = K @ Xt + p.biases[:, None]
        m = jnp.maximum(jnp.max(s, axis=0), lse)
        e0, e = jnp.exp(lse - m), jnp.exp(s - m)
        den = e0 + jnp.sum(e, axis=0)
        pi0, pi = e0 / den, e / den
        f = pi0 * meant + V.T @ pi
        G = pi[:, None, :] * (V[:, :, None] - f[None])  # (L', d_v, n)
        r = f - Yt  # (d_v, n), unweighted
        om = w * w
        S = jnp.einsum("lci,mci->lmi", G, G)
        R = jnp.einsum("lci,ci->li", G, r)
        Sw, piw, Rw = S * om, pi * om, R * om
        B1 = jnp.einsum("lmi,di,ei->lmde", Sw, Xt, Xt)
        B2 = jnp.einsum("lci,mi,di->lmdc", G, piw, Xt)
        B3 = jnp.einsum("li,mi->lm", piw, pi)
        A1 = jnp.einsum("lmi,di->lmd", Sw, Xt)
        A2 = jnp.einsum("li,mci->lmc", piw, G)
        H_aa = (jnp.einsum("lda,meb,lmde->lamb", Jk, Jk, B1) + jnp.einsum("lda,mcb,lmdc->lamb", Jk, Jv, B2)
                + jnp.einsum("lca,meb,mlec->lamb", Jv, Jk, B2) + jnp.einsum("lca,mcb,lm->lamb", Jv, Jv, B3))
        H_aG = jnp.einsum("lda,lmd->lam", Jk, A1) + jnp.einsum("lca,lmc->lam", Jv, A2)
        H_GG = jnp.sum(Sw, axis=-1)
        D = Jk.shape[2]
        PA = Lp * D
        H = jnp.block([[H_aa.reshape(PA, PA), H_aG.reshape(PA, Lp)], [H_aG.reshape(PA, Lp).T, H_GG]])
        g_a = jnp.einsum("lda,ld->la", Jk, jnp.einsum("li,di->ld", Rw, Xt)) + jnp.einsum(
            "lca,lc->la", Jv, jnp.einsum("li,ci->lc", piw, r))
        g = jnp.concatenate([g_a.reshape(PA), jnp.sum(Rw, axis=-1)])
        return Normal(0.5 * jnp.sum(r * r * om), g, H)

    return whole


def linearisation(whole, rj, data, rows_mode: str, block_rows: int):
    from moe_estimation.solver import Normal, row_blocks

    if rows_mode == "whole":
        return lambda theta: whole(rj, data, theta)
    if rows_mode == "slices":
        rows = data[2].shape[-1]

        def sliced(theta):
            parts = [whole(rj, jax.tree.map(lambda a: a[..., i:i + block_rows], data), theta)
                     for i in range(0, rows, block_rows)]
            return jax.tree.map(lambda *a: sum(a[1:], a[0]), *parts)

        return sliced
    blocks = row_blocks(data, block_rows)
    barrier = rows_mode == "scan-barrier"

    def scanned(theta):
        P = theta.shape[0]
        zero = Normal(jnp.zeros((), theta.dtype), jnp.zeros(P, theta.dtype), jnp.zeros((P, P), theta.dtype))

        def add(acc, block):
            if barrier:
                block = jax.lax.optimization_barrier(block)
            return jax.tree.map(jnp.add, acc, whole(rj, block, theta)), None

        return jax.lax.scan(add, zero, blocks)[0]

    return scanned


def best_time(f, x) -> float:
    jax.block_until_ready(f(x))
    t0 = time.perf_counter()
    jax.block_until_ready(f(x))
    reps = max(1, int(0.1 / max(time.perf_counter() - t0, 1e-6)))
    best = np.inf
    for _ in range(2):
        t0 = time.perf_counter()
        for _ in range(reps):
            out = f(x)
        jax.block_until_ready(out)
        best = min(best, (time.perf_counter() - t0) / reps)
    return best


def main(args) -> list[dict]:
    jax.config.update("jax_enable_x64", True)
    from moe_estimation.experiments.bench import PROBLEMS, _setup
    from moe_estimation.prefix.estimator import prepare_data, residuals_and_jacobian

    records = []
    for name in args.problems:
        Lp = PROBLEMS[name]
        for rows in args.rows:
            prob, _, X, Y, theta0 = _setup(rows, 1, name, Lp)
            data = prepare_data(prob, X[0], Y[0], jnp.ones(rows, X.dtype))
            theta = theta0[0]
            kernels = {"einsum": lambda d, t: residuals_and_jacobian(prob, Lp, d, t),
                       "elementwise": lambda d, t: elementwise_rj(prob, Lp, d, t)}
            products = {"separate": separate, "stacked": stacked, "moments": moments(prob, Lp)}
            modes = ["whole"] + (["scan", "scan-barrier", "slices"] if rows > args.block_rows else [])
            ref = jax.jit(linearisation(separate, kernels["einsum"], data, "whole", args.block_rows))(theta)
            variants = []
            for mode in modes:
                for kname, rj in kernels.items():
                    for pname, prod in products.items():
                        if pname == "moments" and kname != "einsum":
                            continue  # the moments build no Jacobian: one variant per row mode
                        f = jax.jit(linearisation(prod, rj, data, mode, args.block_rows))
                        out = f(theta)
                        err = max(float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b))) for a, b in zip(out, ref))
                        variants.append((f, dict(problem=name, rows=rows, rows_mode=mode, kernels=kname, product=pname,
                                                 seconds=np.inf, rel_diff=err,
                                                 estimator=(kname, pname) == ("einsum", "separate"))))
            for _ in range(3):  # rounds over every variant, so that a drift of the machine hits them all alike
                for f, rec in variants:
                    rec["seconds"] = min(rec["seconds"], best_time(f, theta))
            records.extend(rec for _, rec in variants)
            base = {r["rows_mode"]: r["seconds"] for r in records[-len(modes) * 5:] if r["estimator"]}
            fastest = min(records[-len(modes) * 5:], key=lambda r: r["seconds"])
            for r in records[-len(modes) * 5:]:
                r["vs_estimator_same_rows"] = base[r["rows_mode"]] / r["seconds"]
                print(f"{name:14s} rows {rows:7d} {r['rows_mode']:12s} {r['kernels']:11s} {r['product']:8s} "
                      f"{r['seconds'] * 1e3:9.4f} ms  x{r['vs_estimator_same_rows']:4.2f} vs the estimator's kernels "
                      f"on these rows  rel. diff {r['rel_diff']:.1e}{'  <- fastest' if r is fastest else ''}",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(records, f, indent=2)
    return records


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--problems", nargs="+", default=["shared-linear", "non-shared"])
    p.add_argument("--rows", type=int, nargs="+", default=[1024, 8192, 32768, 131072])
    p.add_argument("--block-rows", type=int, default=2048)
    p.add_argument("--json")
    main(p.parse_args())
