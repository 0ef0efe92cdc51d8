"""Summary tables of finished runs, as markdown: what the README prints and `moe-estimation summarize` shows.

Each function takes a run's folder (or its tables) and returns a markdown table with a line on its design:
:func:`study_table` (the own loss and the yardstick of every problem, specification and schedule),
:func:`failing_markdown`, :func:`differences_markdown`, :func:`control_markdown`, :func:`spread_markdown`,
:func:`by_key_markdown`, :func:`bounds_markdown`, :func:`lowest_markdown` (beyond one slope), :func:`robust_table`
and :func:`parts_table` (several schedules), :func:`minimax_markdown` (truths that move with n),
:func:`geometry_markdown` (drawn geometries), :func:`inverse_markdown` and :func:`le_cam_markdown` (the inverse
bound), :func:`power_markdown`, :func:`transformer_table`, :func:`teacher_table`, and the benchmarks'
:func:`bench_table`, :func:`step_table`, :func:`workers_table`, :func:`precision_table`; :func:`summarize`
chooses the tables for any run folder. A folder's fits may be compressed (fits.csv.gz); it is read as it is.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..experiments.inference import with_best_of_all
from ..rates import empirical_rate, is_composite
from ..experiments.results import RATE_LOSSES, describe_schedule, fits_file, loss_matrix, rate_entries
from ..transformer.teacher import load_runs


def study_table(path: Path) -> str:
    """The own loss, the yardstick and the losses the study declares (``[rates.losses.NAME]``) of every (problem,
    specification) and, in a study of several schedules,
    every schedule (a column then names it; the best-of-all arm last): mean and median slopes, the reference,
    the mean loss at the largest n, and that arm's fits not converged and on the box."""
    r = pd.read_csv(path / "rates.csv")
    f = pd.read_csv(fits_file(path))
    several = r["schedule"].nunique() > 1
    out = ["| problem | spec | " + ("schedule | " if several else "") + "loss | mean: slope [95% CI] | median: slope "
           "[95% CI] | theory | mean loss at n_max | fits not converged | fits at box bound |",
           "|---|---|" + ("---|" if several else "") + "---|---|---|---|---|---|---|"]
    if several:
        f = with_best_of_all(f)
    for (prob, spec, sched, loss), g in r.groupby(["problem", "specification", "schedule", "loss"], sort=False):
        if loss not in ("own", "key_value") and loss in RATE_LOSSES:  # the study's own two, and every declared one
            continue
        m = g[g["statistic"] == "mean"].iloc[0]
        md = g[g["statistic"] == "median"].iloc[0]
        ff = f[(f["problem"] == prob) & (f["specification"] == spec) & (f["schedule"] == sched)]
        out.append(f"| {prob} | {spec} | " + (f"{sched} | " if several else "") + f"{loss}{' (composite)' if m.get('composite', False) else ''} | {m.slope:.2f} [{m.ci_low:.2f}, {m.ci_high:.2f}] | "
                   f"{md.slope:.2f} [{md.ci_low:.2f}, {md.ci_high:.2f}] | {_theory_text(m)} | {m.mean_loss_at_n_max:.3g} | "
                   f"{int(m.fits_not_converged)}/{len(ff)} | {int(ff['at_bound'].sum())}/{len(ff)} |")
    n = sorted(f["n"].unique())
    out.append("")
    schedules = [s for s in f["schedule"].unique() if s != "best-of-all"]
    out.append(f"n = {', '.join(str(x) for x in n)}; {f['replicate'].nunique()} replicates; starts: "
               f"{'; '.join(_schedule_text(f[f['schedule'] == s].iloc[0]) for s in schedules)}"
               + ("; best-of-all: each data set's lowest objective over them" if several else "") + ".")
    return "\n".join(out)


def _theory_text(row) -> str:
    """A rates.csv row's reference slope as the README prints it: the over-specified non-shared fit's 0 is no
    fixed-truth rate but the reading of the lower bound over truths (docs/maths.md, *Rates and intervals*)."""
    t = row["theory_slope"]
    if row["structure"] == "non-shared" and row["specification"] == "over" and t == 0:
        return "0 (worst-case reading)"
    return f"{t:g}"


def _schedule_text(row) -> str:
    return f"{row['schedule']} ({describe_schedule(row)})"


def _rate(r, prob, spec, sched, loss, stat="mean") -> str:
    row = r[(r["problem"] == prob) & (r["specification"] == spec) & (r["schedule"] == sched) & (r["loss"] == loss)
            & (r["statistic"] == stat)]
    if not len(row) or not pd.notna(row.iloc[0]["slope"]):
        return "-"
    return _ci(row.iloc[0])


def robust_table(path: Path) -> str:
    """Per (problem, specification, schedule): slopes of the yardstick, its value part, the identified
    value and the value spread; levels at the largest n; and which schedule reached the lowest objective
    on each (paired) data set."""
    r = pd.read_csv(path / "rates.csv")
    f = pd.read_csv(fits_file(path))
    nmax = f["n"].max()
    val = f[list(RATE_LOSSES["key_value_value_part"])].sum(axis=1)
    f = f.assign(value_part=val)
    key = ["problem", "specification", "n", "replicate"]
    best = f.groupby(key)["objective"].transform("min")
    f = f.assign(lowest=(f["objective"] - best) <= 1e-9 * best)
    out = ["| problem | spec | schedule | yardstick slope (mean) | value part slope (mean) | value part slope (median) | "
           "identified value slope (mean) | value spread slope (mean) | yardstick mean / median at n_max | value spread "
           "mean at n_max | lowest objective on the data set | at box bound |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (prob, spec, sched), g in f.groupby(["problem", "specification", "schedule"], sort=False):
        top = g[g["n"] == nmax]
        out.append(
            f"| {prob} | {spec} | {sched} | {_rate(r, prob, spec, sched, 'key_value')} | "
            f"{_rate(r, prob, spec, sched, 'key_value_value_part')} | "
            f"{_rate(r, prob, spec, sched, 'key_value_value_part', 'median')} | "
            f"{_rate(r, prob, spec, sched, 'identified_value')} | {_rate(r, prob, spec, sched, 'spread_value')} | "
            f"{top['loss_key_value'].mean():.3g} / {top['loss_key_value'].median():.3g} | "
            f"{top['id_spread_value'].mean():.3g} | {int(g['lowest'].sum())}/{len(g)} | {int(g['at_bound'].sum())}/{len(g)} |")
    out.append("")
    out.append(f"n = {', '.join(str(x) for x in sorted(f['n'].unique()))}; {f['replicate'].nunique()} replicates, the "
               f"same data sets under every schedule; schedules: "
               f"{'; '.join(_schedule_text(f[f['schedule'] == s].iloc[0]) for s in f['schedule'].unique())}. "
               "'lowest objective': the data sets on which this schedule's fit reached the lowest objective of all "
               "schedules (ties within 1e-9 relative count for each).")
    return "\n".join(out)


def parts_table(path: Path) -> str:
    """Key and value parts of the yardstick, over-specified, mean and median at the largest n."""
    f = pd.read_csv(fits_file(path))
    f = f[f["specification"] == "over"]
    f = f[f["n"] == f["n"].max()]
    part = lambda loss: f[list(RATE_LOSSES[loss])].sum(axis=1)  # the parts as rates.csv defines them
    f = f.assign(key=part("key_value_key_part"), value=part("key_value_value_part"))
    out = ["| problem (over, n = %d) | weight part mean | key part mean / median | value part mean / median | max value part "
           "| identified value mean / median | value spread mean / median |" % f["n"].max(),
           "|---|---|---|---|---|---|---|"]
    for prob, g in f.groupby("problem", sort=False):
        out.append(f"| {prob} | {g['kv_weight'].mean():.3g} | {g['key'].mean():.3g} / {g['key'].median():.3g} | "
                   f"{g['value'].mean():.3g} / {g['value'].median():.3g} | {g['value'].max():.3g} | "
                   f"{g['id_value'].mean():.3g} / {g['id_value'].median():.3g} | "
                   f"{g['id_spread_value'].mean():.3g} / {g['id_spread_value'].median():.3g} |")
    return "\n".join(out)


def transformer_table(path: Path) -> str:
    r = pd.read_csv(path / "curve_rates.csv")
    meta = json.loads((path / "config.json").read_text())
    c = pd.read_csv(path / "curves.csv")
    search = pd.read_csv(path / "lr_search.csv")
    chosen = search[search["chosen"].astype(bool)]
    out = ["| parameterisation | lr (validation) at searched n | slope of mean held-out loss [95% CI] | held-out loss at n_max "
           "| accuracy at n_max | accuracy at n_min | tunings flat | median steps |",
           "|---|---|---|---|---|---|---|---|"]
    for _, m in r[r["statistic"] == "mean"].iterrows():
        g = c[c["parameterisation"] == m.parameterisation]
        ch = chosen[chosen["parameterisation"] == m.parameterisation].sort_values("n")  # searched in any order
        lrs = ", ".join(f"{x.lr:.3g} (n={x.n}{', on edge' if x.on_edge else ''}{f', widened {x.widened}x' if x.widened else ''})"
                        for x in ch.itertuples())
        out.append(f"| {m.parameterisation} | {lrs} | {m.slope:.2f} [{m.ci_low:.2f}, {m.ci_high:.2f}] | "
                   f"{m.mean_loss_at_n_max:.3f} | {m.mean_accuracy_at_n_max:.3f} | {g[g['n'] == g['n'].min()]['accuracy'].mean():.3f} | "
                   f"{int(g['flat'].astype(bool).sum())} of {len(g)} | {int(g['steps'].median())} |")
    pre = meta["backbone_pretrain_test"]
    zero = meta["downstream_without_prefix"]
    st = meta["study"]
    out.append("")
    out.append(f"Backbone on its pre-training task (held out): loss {pre['loss']:.4f} (trivial {pre['trivial_loss']:.3f}), "
               f"accuracy {pre['accuracy']:.3f}. Frozen backbone on the downstream task with no prefix: loss "
               f"{zero['loss']:.2f}, accuracy {zero['accuracy']:.3f}. n = {', '.join(str(x) for x in sorted(c['n'].unique()))}; "
               f"{c['seed'].nunique()} seeds per size; full-batch Adam from {st['min_steps']} to {st['max_steps']} steps, "
               f"stopped when the training loss changed by at most {st['flat_tol']:g} x max(loss, 1) over the last tenth; "
               f"deep-share bottleneck width {st['deep_hidden']} (model width {st['backbone']['width']}).")
    return "\n".join(out)


def bench_table(path: Path) -> str:
    recs = json.loads(path.read_text())
    out = ["| shape | method | fits/s | ours / this | mean objective | worst fit vs ours |", "|---|---|---|---|---|---|"]
    for r in recs:
        out.append(f"| {r['shape']} | {r['method']} | {r['fits_per_second']:.2f} | {r['ours_speedup']:.1f}x | "
                   f"{r['mean_objective']:.10g} | {r.get('worst_fit_rel_diff_vs_ours', 0):.1e} |")
    return "\n".join(out)


def step_table(path: Path) -> str:
    """The README's step table (moe-estimation bench --step): one row per (shape, path)."""
    recs = json.loads(path.read_text())
    r0 = recs[0]
    out = [f"Device: {r0['device']}; measured streaming bandwidth {r0['measured_bandwidth'] / 1e9:.1f} GB/s, "
           f"matrix-product rate {r0['measured_flops'] / 1e9:.1f} GFLOP/s.", "",
           "| shape | rows | one step | old floor | step / old floor | measured floor (exp + build + product) "
           "| step / measured floor |",
           "|---|---|---|---|---|---|---|"]
    for r in recs:
        mark = " (the study's)" if r.get("study_path", r.get("path")) == r.get("path") else ""
        if "measured_floor_seconds" in r:
            measured = (f"{r['measured_floor_seconds'] * 1e3:.3f} ms ({r['exp_seconds'] * 1e3:.3f} + "
                        f"{r['build_seconds'] * 1e3:.3f} + {r['product_seconds'] * 1e3:.3f}) | "
                        f"{r['times_measured_floor']:.1f}x")
        else:
            measured = "- | -"
        out.append(f"| {r['shape'].split(' n=')[0]} n={r['n']} | {r['rows']} {r.get('path', 'whole')}{mark} | "
                   f"{r['step_seconds'] * 1e3:.3f} ms | {r['floor_seconds'] * 1e3:.4f} ms | {r['times_floor']:.1f}x | "
                   f"{measured} |")
    return "\n".join(out)


def workers_table(path: Path) -> str:
    recs = json.loads(path.read_text())
    out = ["| side | processes | fits | seconds | fits/s | speed-up | same table |", "|---|---|---|---|---|---|---|"]
    for r in recs:
        out.append(f"| {r['side']} | {r['workers']} | {r['fits']} | {r['seconds']:.1f} | {r['fits_per_second']:.3f} | "
                   f"{r['speedup']:.2f}x | {'yes' if r['same_table'] else 'NO'} |")
    return "\n".join(out)


def lab_em_table(path: Path) -> str:
    """``benchmarks/lab_em.py``'s table: EM against the direct maximum-likelihood fit, per (K', n) and method."""
    rows = json.loads(path.read_text())["rows"]
    out = ["| K' | n | method | median NLL | mean NLL | reached the lower of the two | worst miss (nats) | stopped by its "
           "test | median steps | seconds a fit |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['components']} | {r['n']} | {r['method']} | {r['median_nll']:.6f} | {r['mean_nll']:.4f} | "
                   f"{r['reached_lowest']} of {r['datasets']} | {r['worst_miss']:.2g} | {r['stopped_by_test']} of "
                   f"{r['datasets']} | {r['median_steps']:.0f} | {r['seconds_per_fit']:.3g} |")
    return "\n".join(out)


def precision_table(path: Path) -> str:
    recs = json.loads(path.read_text())
    out = ["| shape | converged float64 / float32 (stalled) | loss rel. diff median | max | objective rel. diff max |",
           "|---|---|---|---|---|"]
    for r in recs:
        out.append(f"| {r['shape']} | {r['converged_float64']}/{r['fits']} / {r['converged_float32']}/{r['fits']} "
                   f"({r['stalled_float32']}) | {r['loss_rel_diff_median']:.1e} | {r['loss_rel_diff_max']:.1e} | "
                   f"{r['objective_rel_diff_max']:.1e} |")
    return "\n".join(out)


def compare_table(a: Path, b: Path) -> str:
    """Two runs of the same study (say float64 and float32): per cell, the relative difference of the mean
    loss, and per rate, the two slopes."""
    fa, fb = pd.read_csv(fits_file(a)), pd.read_csv(fits_file(b))
    keys = ["problem", "specification", "schedule", "n", "replicate"]
    m = fa.merge(fb, on=keys, suffixes=("_a", "_b"))
    if not len(m):
        raise ValueError(f"--compare: {a} and {b} share no fit")
    same = len(m) == len(fa) == len(fb)  # a run stopped part-way is compared on the cells both hold
    cell = m.groupby(["problem", "specification", "schedule", "n"])[["loss_own_a", "loss_own_b"]].mean()
    rel = (cell["loss_own_b"] - cell["loss_own_a"]).abs() / cell["loss_own_a"]
    fit_rel = (m["loss_own_b"] - m["loss_own_a"]).abs() / m["loss_own_a"]
    ra, rb = pd.read_csv(a / "rates.csv"), pd.read_csv(b / "rates.csv")
    r = ra.merge(rb, on=["problem", "specification", "schedule", "loss", "statistic"], suffixes=("_a", "_b"))
    r = r[(r["loss"] == "own") & (r["statistic"] == "mean")] if same else r.iloc[:0]
    out = [f"Compared {len(m)} fits: mean own loss per cell differs by at most {rel.max():.2g} relative (median "
           f"{rel.median():.2g}); single fits by at most {fit_rel.max():.2g} (median {fit_rel.median():.2g}); "
           f"fits converged {int(m['converged_a'].sum())} vs {int(m['converged_b'].sum())}.", ""]
    if not same:
        out.append(f"(The runs hold different cells, {len(fa)} and {len(fb)} fits: these are the {len(m)} they share. Their "
                   "slopes cover different sizes and are not compared.)")
        return "\n".join(out)
    out += [f"| problem | spec | own-loss slope, {a.name} | own-loss slope, {b.name} |", "|---|---|---|---|"]
    for _, x in r.iterrows():
        out.append(f"| {x.problem} | {x.specification} | {x.slope_a:.3f} [{x.ci_low_a:.2f}, {x.ci_high_a:.2f}] | "
                   f"{x.slope_b:.3f} [{x.ci_low_b:.2f}, {x.ci_high_b:.2f}] |")
    return "\n".join(out)


def paired_runs_markdown(a: Path, b: Path, loss: str = "key_value") -> str:
    """Two runs of one grid under different fit settings (a stopping rule, a solver step) on the same data
    sets: per (problem, specification, schedule), on the fits both hold, how far the objective moved from a
    to b (relative, b - a over a: negative when b went lower), how many fits changed ``loss`` more than
    twofold, and the mean and median slopes of ``loss`` in each run on those fits alone."""
    keys = ["problem", "specification", "schedule", "n", "replicate"]
    fa, fb = (pd.read_csv(fits_file(x)) for x in (a, b))
    m = fa.merge(fb, on=keys, suffixes=("_a", "_b"))
    if not len(m):
        raise ValueError(f"--paired: {a} and {b} share no fit (the same problem, specification, schedule, n and replicate)")
    col = "loss_" + loss
    out = [f"| problem | spec | schedule | fits in both | objective, (b - a) / a: median / lowest / highest | {loss} "
           f"changed more than twofold | mean slope: {a.name} / {b.name} | median slope: {a.name} / {b.name} |",
           "|---|---|---|---|---|---|---|---|"]
    for (prob, spec, sched), g in m.groupby(["problem", "specification", "schedule"], sort=False):
        rel = (g["objective_b"] - g["objective_a"]) / g["objective_a"]
        ratio = g[col + "_b"] / g[col + "_a"]
        ns = np.array(sorted(g["n"].unique()))
        cells = []
        for st in ("mean", "median"):
            pair = []
            for side in ("a", "b"):
                wide = g.pivot(index="n", columns="replicate", values=f"{col}_{side}").loc[ns]
                r = empirical_rate(ns, wide.to_numpy(), statistic=st)
                pair.append(f"{r.slope:.2f} [{r.ci_low:.2f}, {r.ci_high:.2f}]")
            tag = " (composite)" if is_composite(g["structure_a"].iloc[0], loss, spec) else ""
            cells.append(" / ".join(pair) + tag)
        out.append(f"| {prob} | {spec} | {sched} | {len(g)} | {rel.median():.2g} / {rel.min():.2g} / {rel.max():.2g} | "
                   f"{int(((ratio > 2) | (ratio < 0.5)).sum())} | {cells[0]} | {cells[1]} |")
    return "\n".join(out)


def teacher_table(paths) -> str:
    """Teacher-student prefix estimation: per (truth, student, specification) the slopes of the prefix
    yardstick (mean and median), weighted by attention mass and with cells by key (runs that recorded them; "-"
    otherwise), its identified key and value parts and the excess risk. ``paths``: one run, or runs of one design
    that split its cases (teacher-quick and teacher-more)."""
    f, r = load_runs(paths, arg="--teacher")
    cell = lambda g, loss, stat: g[(g["loss"] == loss) & (g["statistic"] == stat)]
    fmt = lambda row: (f"{row['slope']:.2f} [{row['ci_low']:.2f}, {row['ci_high']:.2f}]" if len(row) else "-")
    out = ["| truth | student | spec | D_2 (k, v), mean: slope [95% CI] | median | D_2 by attention mass (mean) | "
           "D_2, cells by key (mean) | identified key (mean) | identified value (mean) | excess risk (mean) | "
           "theory (D_2) | D_2 at n_max: mean / median | fits not converged |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for (truth, kind, spec), g in r.groupby(["truth", "parameterisation", "specification"], sort=False):
        kv = cell(g, "key_value", "mean")
        row = lambda loss, stat="mean": fmt(cell(g, loss, stat).iloc[0]) if len(cell(g, loss, stat)) else "-"
        theory = kv.iloc[0]["theory_slope"]
        fits = f[(f["truth"] == truth) & (f["parameterisation"] == kind) & (f["specification"] == spec)]
        out.append(f"| {truth} | {kind} | {spec} | {row('key_value')} | {row('key_value', 'median')} | "
                   f"{row('mass_key_value')} | {row('key_value_by_key')} | {row('identified_key')} | {row('identified_value')} | {row('excess_risk')} | "
                   f"{'-' if pd.isna(theory) else ('0 (worst-case reading)' if kind == 'no-share' and spec == 'over' and theory == 0 else f'{theory:g}')} | {kv.iloc[0]['mean_loss_at_n_max']:.3g} / "
                   f"{fits.loc[fits['n'] == fits['n'].max(), 'loss_key_value'].median():.3g} | "
                   f"{int((~fits['converged'].astype(bool)).sum())} of {len(fits)} |")
    ns = sorted(f["n"].unique())
    out.append(f"\nn = {', '.join(map(str, ns))}; {f['seed'].nunique()} seeds per size; best of "
               f"{int(f['restarts'].iloc[0])} starts.")
    return "\n".join(out)


def teacher_windows_table(paths, min_decades: float = 1.5, num_bootstrap: int = 2000) -> str:
    """Do the teacher-student study's controls pass, and in which window of n? Per (truth, student, specification)
    and per window of the grid ending at its largest n (at least 3 sizes): the mean slopes of D_2 (key, value), of
    D_2 weighted by attention mass and of the excess risk, with their intervals, the window's width in decades,
    and ``controls`` (exactly specified students only): ``pass`` when the window spans at least ``min_decades``,
    the D_2 interval holds the theory's -1/2 and the excess-risk interval holds -1, both below 0; ``uninformative``
    when they hold the theory's slopes but one also reaches 0 (no fall cannot be ruled out); ``fail`` when it
    spans that much and either misses; ``too narrow`` otherwise. Rated by the common rate code (bootstrap over
    seeds).

    Where a run has its truth-started fits (``truth_starts.csv``), each exactly specified row gains ``missed``
    (the window's fits whose objective lies above their data set's truth-started fit's:
    :func:`moe_estimation.transformer.teacher.best_fits`) and, after the study's windows, rows ``best fit``: the
    same rates of each data set's better of the two fits, the positive control that tells a slow rate from a
    missed minimum (shown once every fit has its truth-started one)."""
    from ..transformer.teacher import best_fits, load_truth_starts

    f, _ = load_runs(paths, arg="--teacher")
    best = best_fits(f, load_truth_starts(paths))
    seed = 0
    out = ["| truth | student | spec | fit | window (n) | decades | D_2 (k, v), mean [95% CI] | D_2 by attention mass | "
           "excess risk | missed | controls |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda e: f"{e['slope']:.2f} [{e['ci_low']:.2f}, {e['ci_high']:.2f}]" if np.isfinite(e["slope"]) else "-"

    def rows(truth, kind, spec, g, label, missed):
        ns = np.sort(g["n"].unique())
        for i in range(len(ns) - 2):
            w = g[g["n"] >= ns[i]]
            rate = {}
            for col in ("loss_key_value", "mass_key_value", "excess_risk"):
                if col not in w.columns or w[col].isna().all():
                    rate[col] = None
                    continue
                wn, mat = loss_matrix(w, col, replicate="seed")
                rate[col] = next(e for e in rate_entries(wn, mat, num_bootstrap=num_bootstrap, seed=seed,
                                                         statistics=("mean",)))
            decades = float(np.log10(ns[-1] / ns[i]))
            verdict = "-"
            if spec == "exact":
                kv, ex = rate["loss_key_value"], rate["excess_risk"]
                finite = all(np.isfinite([e["ci_low"], e["ci_high"]]).all() for e in (kv, ex))
                holds = finite and kv["ci_low"] <= -0.5 <= kv["ci_high"] and ex["ci_low"] <= -1.0 <= ex["ci_high"]
                sharp = finite and kv["ci_high"] < 0 and ex["ci_high"] < 0  # a fall, told from no fall at all
                verdict = ("too narrow" if decades < min_decades - 1e-9 else "no rate" if not finite
                           else "fail" if not holds else "pass" if sharp else "uninformative")
            cell = lambda c: fmt(rate[c]) if rate[c] is not None else "-"
            m = missed[missed["n"] >= ns[i]] if missed is not None else None
            miss = "-" if m is None or not len(m) else f"{int(m['missed'].sum())}/{len(m)}"
            out.append(f"| {truth} | {kind} | {spec} | {label} | {ns[i]} ... {ns[-1]} | {decades:.1f} | "
                       f"{cell('loss_key_value')} | {cell('mass_key_value')} | {cell('excess_risk')} | {miss} | {verdict} |")

    for (truth, kind, spec), g in f.groupby(["truth", "parameterisation", "specification"], sort=False):
        b = best[(best["truth"] == truth) & (best["parameterisation"] == kind) & (best["specification"] == spec)]
        complete = len(b) == len(g)  # every fit has its truth-started one (a run part-way through them: not yet)
        rows(truth, kind, spec, g, f"best of {int(g['restarts'].iloc[0])} starts", b if complete else None)
        if complete and len(b):
            rows(truth, kind, spec, b, "best fit", None)
    out.append(f"\n{f['seed'].nunique()} seeds per size; a window spans at least {min_decades} decades to count. "
               "*pass*: both intervals hold the theory's slope (-1/2, -1) and lie below 0; *uninformative*: they "
               "hold it but reach 0. *best of k starts*: the study's fits (random starts); *best fit*: each data "
               "set's lower-objective fit "
               "of that one and one started at the truth; *missed*: fits above their truth-started fit's objective "
               "(relative 1e-6).")
    return "\n".join(out)


def teacher_efficiency_table(paths) -> str:
    """The level of the exactly specified students' excess risk against the parametric one: per (truth, student,
    n), n x excess risk / sigma^2 (mean over seeds, and its range), which a well-specified least-squares fit
    brings to p, the number of directions the data identify
    (:func:`moe_estimation.transformer.teacher.identified_dimension`), as n grows. Each data set's best fit
    where the run has its truth-started fits (:func:`moe_estimation.transformer.teacher.best_fits`), else the
    study's fits."""
    from ..transformer.teacher import best_fits, identified_dimension, load_truth_starts

    dirs = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(d) for d in paths]
    out = ["| truth | student | fits | n | n x excess risk / sigma^2, mean (range) | identified p (of parameters) | "
           "mean / p |", "|---|---|---|---|---|---|---|"]
    for d in dirs:
        f, _ = load_runs(d, arg="--teacher")
        sigma2 = json.loads((d / "config.json").read_text())["study"]["noise_sd"] ** 2
        best = best_fits(f, load_truth_starts(d))
        for (truth, kind), dim in identified_dimension(d).items():
            mine = lambda t: t[(t["truth"] == truth) & (t["parameterisation"] == kind) & (t["specification"] == "exact")]
            g, label = (mine(best), "best fit") if len(mine(best)) == len(mine(f)) and len(mine(f)) else (mine(f), "study's")
            for n, h in g.groupby("n"):
                r = n * h["excess_risk"].to_numpy(float) / sigma2
                out.append(f"| {truth} | {kind} | {label} | {n} | {r.mean():.1f} ({r.min():.1f} - {r.max():.1f}) | "
                           f"{dim['rank']} ({dim['parameters']}) | {r.mean() / dim['rank']:.2f} |")
    out.append("\nsigma: the noise's standard deviation on each output; p: the rank of J^T J at the truth on the held-out "
               "sequences. A least-squares fit of a well-specified model reaches sigma^2 p / n as n grows.")
    return "\n".join(out)


def teacher_weak_table(paths, count: int = 2) -> str:
    """The directions the data identify least (:func:`moe_estimation.transformer.teacher.weak_directions`): per
    exactly specified (truth, student) of each run, the ``count`` smallest eigenvalues of J^T J at the truth (over
    the largest), the next one up, and where each eigenvector lies."""
    from ..transformer.teacher import weak_directions

    dirs = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(d) for d in paths]
    out = ["| truth | student | direction | eigenvalue / largest | next one up | weight of the direction on | largest "
           "coordinates |", "|---|---|---|---|---|---|---|"]
    for d in dirs:
        for r in weak_directions(d, count=count).itertuples(index=False):
            out.append(f"| {r.truth} | {r.parameterisation} | {r.direction + 1} | {r.eigenvalue:.1e} | "
                       f"{r.next_eigenvalue:.1e} | {r.loadings} | {r.largest} |")
    out.append("\nJ^T J at the truth on the run's held-out sequences. Along a direction of eigenvalue lambda a fit's error "
               "has variance sigma^2 / (n lambda).")
    return "\n".join(out)


def teacher_anatomy_table(paths) -> str:
    """The extra prefix of the over-specified students, per (truth, student, n), from every fit's recorded
    prefixes (:func:`moe_estimation.transformer.teacher.prefix_anatomy`): medians of its attention mass as a
    share of its cell's true prefix's, of its key's distance to the nearest true key and of its value's error,
    the share of extra prefixes with mass below 1% of their cell's (invisible) and whose cell by key differs from
    their cell by (key, value), and the fits' median spread of values and D_2 by exp(bias) and by mass."""
    from ..transformer.teacher import extra_prefix_summary, prefix_anatomy, recorded_fits, run_teachers

    f, _ = load_runs(paths, arg="--teacher")
    over = recorded_fits(f[f["specification"] == "over"])  # the fits the anatomy reads, and their medians alone
    anatomy = extra_prefix_summary(prefix_anatomy(over, run_teachers(paths)[0]))
    if not len(anatomy):
        return "(no over-specified fit recorded its prefixes)"
    med = over.groupby(["truth", "parameterisation", "n"])[["id_spread_value", "loss_key_value", "mass_key_value"]].median()
    out = ["| truth | student | n | extra prefixes | mass share (median) | invisible (< 1%) | key to nearest true key | "
           "value error | cell by key differs | spread of values | D_2 | D_2 by mass |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in anatomy.itertuples(index=False):
        m = med.loc[(r.truth, r.parameterisation, r.n)]
        out.append(f"| {r.truth} | {r.parameterisation} | {r.n} | {r.extra_prefixes} | {r.mass_share:.2f} | "
                   f"{r.invisible:.2f} | {r.key_to_nearest_true_key:.3g} | {r.value_error:.3g} | {r.moved_cell:.2f} | "
                   f"{m['id_spread_value']:.3g} | {m['loss_key_value']:.3g} | {m['mass_key_value']:.3g} |")
    return "\n".join(out)


def teacher_layer_table(paths, specification: str = "exact") -> str:
    """Each layer's D_2 split into its parts, per (truth, student, n), medians over the fits that recorded their
    prefixes (:func:`moe_estimation.transformer.teacher.layer_parts`): the weight part sum_j |W_j - w*_j|, the key
    and value parts, by exp(bias), and D_2 by attention mass. Which part holds a slow layer's D_2 up: the first
    layer's weight part is where gate biases and keys can be confounded when its queries take few values."""
    from ..transformer.teacher import SPECIFICATIONS, layer_parts, run_teachers

    if specification not in SPECIFICATIONS:
        raise ValueError(f"specification: expected one of {SPECIFICATIONS}, got {specification!r}")
    f, _ = load_runs(paths, arg="--teacher")
    teacher, head_dim = run_teachers(paths)
    parts = layer_parts(f[f["specification"] == specification], teacher, head_dim)
    if not len(parts):
        return "(no fit recorded its prefixes)"
    parts = parts.assign(key=parts["key_single"] + parts["key_multi"], value=parts["value_single"] + parts["value_multi"])
    bias = parts[parts["weighting"] == "bias"].groupby(["truth", "parameterisation", "n", "layer"], sort=False)
    mass = parts[parts["weighting"] == "mass"].groupby(["truth", "parameterisation", "n", "layer"], sort=False)["d2"].median()
    out = ["| truth | student | n | layer | D_2 (median) | weight part | key part | value part | D_2 by attention mass |",
           "|---|---|---|---|---|---|---|---|---|"]
    for key, g in bias:
        out.append(f"| {key[0]} | {key[1]} | {key[2]} | {key[3]} | {g['d2'].median():.3g} | {g['weight'].median():.3g} | "
                   f"{g['key'].median():.3g} | {g['value'].median():.3g} | {mass.loc[key]:.3g} |")
    return "\n".join(out)


def _ci(x, digits=2) -> str:
    """A slope and its interval; a composite loss's (rates.csv ``composite``) says so: it is no rate."""
    tag = " (composite)" if str(x.get("composite", False)) == "True" else ""
    return f"{x['slope']:.{digits}f} [{x['ci_low']:.{digits}f}, {x['ci_high']:.{digits}f}]{tag}"


def _row(r, prob, spec, sched, loss, stat="mean"):
    x = r[(r["problem"] == prob) & (r["specification"] == spec) & (r["schedule"] == sched) & (r["loss"] == loss)
          & (r["statistic"] == stat)]
    return x.iloc[0] if len(x) else None


def _slope_cell(r, prob, spec, sched, loss, stat="mean") -> str:
    x = _row(r, prob, spec, sched, loss, stat)
    return "-" if x is None or not pd.notna(x["slope"]) else _ci(x)


def control_markdown(path: Path) -> str:
    """The positive control (docs/maths.md, *A positive control*): per problem and schedule, the slopes of the
    largest split-cell atom error of the over-specified fit (theory -1/4 for shared structures) beside the
    exactly specified fit's own loss (theory -1/2)."""
    r = pd.read_csv(path / "rates.csv")
    out = ["| problem | schedule | over: largest split-cell atom error, mean | median | 90% quantile | theory | exact: own loss, mean | theory |",
           "|---|---|---|---|---|---|---|---|"]
    for (prob, sched), g in r[r["loss"] == "max_multi_error"].groupby(["problem", "schedule"], sort=False):
        if not (g["specification"] == "over").any():
            continue
        x = _row(r, prob, "over", sched, "max_multi_error")
        e = _row(r, prob, "exact", sched, "own")
        theory = "none" if not pd.notna(x["theory_slope"]) else f"{x['theory_slope']:g}"
        out.append(f"| {prob} | {sched} | " + " | ".join(_slope_cell(r, prob, "over", sched, "max_multi_error", st)
                                                       for st in ("mean", "median", "q90"))
                   + f" | {theory} | {'-' if e is None else _ci(e)} | {'-' if e is None else format(e['theory_slope'], 'g')} |")
    return "\n".join(out)


def by_key_markdown(path: Path) -> str:
    """The identified part with cells by (key, value) atom and by key alone (docs/maths.md, *Cells by key*):
    mean slopes of the identified weight sums and values, and their means at the largest n, over-specified."""
    r = pd.read_csv(path / "rates.csv")
    q = pd.read_csv(path / "quantiles.csv")
    out = ["| problem | schedule | identified weight: by atom / by key (mean slope) | identified value: by atom / by key "
           "(mean slope) | identified value mean at n_max: by atom / by key |", "|---|---|---|---|---|"]
    over = r[(r["specification"] == "over") & (r["loss"] == "identified_value")]
    for (prob, sched), _ in over.groupby(["problem", "schedule"], sort=False):
        qq = q[(q["problem"] == prob) & (q["specification"] == "over") & (q["schedule"] == sched)]
        top = qq[qq["n"] == qq["n"].max()].set_index("loss")["mean"]
        cells = [f"{_slope_cell(r, prob, 'over', sched, loss)} / {_slope_cell(r, prob, 'over', sched, loss + '_by_key')}"
                 for loss in ("identified_weight", "identified_value")]
        out.append(f"| {prob} | {sched} | {cells[0]} | {cells[1]} | "
                   f"{top.get('identified_value', float('nan')):.3g} / {top.get('identified_value_by_key', float('nan')):.3g} |")
    return "\n".join(out)


def spread_markdown(path: Path) -> str:
    """What converges in an over-specified fit and what does not (docs/maths.md, *The identified part*): per
    problem and schedule, the slopes of the mean, the median and the 90% quantile of the identified value
    (the weight-averaged value of each cell) and of the value spread inside cells, cells by key."""
    r = pd.read_csv(path / "rates.csv")
    stats = ("mean", "median", "q90")
    out = ["| problem | schedule | identified value (cells by key): mean / median / 90% quantile slope | "
           "value spread (cells by key): mean / median / 90% quantile slope |", "|---|---|---|---|"]
    over = r[(r["specification"] == "over") & (r["loss"] == "identified_value_by_key")]
    for (prob, sched), _ in over.groupby(["problem", "schedule"], sort=False):
        if not (r[(r["problem"] == prob) & (r["loss"] == "spread_value_by_key")]["slope"].notna().any()):
            continue
        cells = [" / ".join(_slope_cell(r, prob, "over", sched, loss, st) for st in stats)
                 for loss in ("identified_value_by_key", "spread_value_by_key")]
        out.append(f"| {prob} | {sched} | {cells[0]} | {cells[1]} |")
    return "\n".join(out)


def bounds_markdown(path: Path) -> str:
    """bounds.csv summed over n: per arm, the fits with a coordinate on the box, and which."""
    b = pd.read_csv(path / "bounds.csv")
    cols = ["fits", "at_bound", "bias_low_shared", "bias_low_alone", "bias_high", "atom_shared", "atom_alone"]
    out = ["| problem | spec | schedule | fits on the box | bias at the lower bound: prompt sharing its cell / alone | "
           "bias at the upper bound | atom coordinate on the box: prompt sharing its cell / alone |",
           "|---|---|---|---|---|---|---|"]
    for (prob, spec, sched), g in b.groupby(["problem", "specification", "schedule"], sort=False):
        t = g[cols].sum()
        out.append(f"| {prob} | {spec} | {sched} | {t['at_bound']}/{t['fits']} | {t['bias_low_shared']} / "
                   f"{t['bias_low_alone']} | {t['bias_high']} | {t['atom_shared']} / {t['atom_alone']} |")
    return "\n".join(out)


def lowest_markdown(path: Path) -> str:
    """lowest.csv: per arm and n, on how many data sets each schedule reached the lowest objective of all."""
    lo = pd.read_csv(path / "lowest.csv")
    ns = sorted(lo["n"].unique())
    out = [f"| problem | spec | schedule | lowest objective at n = {', '.join(map(str, ns))} | largest miss (F - F_min) / F_min |",
           "|---|---|---|---|---|"]
    for (prob, spec, sched), g in lo.groupby(["problem", "specification", "schedule"], sort=False):
        g = g.sort_values("n")
        counts = ", ".join(f"{int(k)}/{int(m)}" for k, m in zip(g["lowest"], g["data_sets"]))
        out.append(f"| {prob} | {spec} | {sched} | {counts} | {g['max_excess'].max():.2g} |")
    return "\n".join(out)


def failing_markdown(path: Path, loss: str = "key_value") -> str:
    """Per (problem, specification, schedule): the failing fraction at every n (failing.csv), its trend in
    log n, and the slopes of the median, the 90% quantile and the mean of the same loss (rates.csv)."""
    f = pd.read_csv(path / "failing.csv")
    r = pd.read_csv(path / "rates.csv")
    f = f[f["loss"] == loss]
    ns = sorted(f["n"].unique())
    threshold = f["threshold"].iloc[0]
    out = [f"| problem | spec | schedule | failing ({loss} > {threshold:g}) at n = {', '.join(map(str, ns))} | trend z (p) | "
           "median slope | 90% quantile slope | mean slope |",
           "|---|---|---|---|---|---|---|---|"]
    for (prob, spec, sched), g in f.groupby(["problem", "specification", "schedule"], sort=False):
        g = g.sort_values("n")
        rr = r[(r["problem"] == prob) & (r["specification"] == spec) & (r["schedule"] == sched) & (r["loss"] == loss)]
        slopes = [_ci(rr[rr["statistic"] == st].iloc[0]) if (rr["statistic"] == st).any() else "-"
                  for st in ("median", "q90", "mean")]
        counts = ", ".join(f"{int(k)}/{int(m)}" for k, m in zip(g["failing"], g["fits"]))
        t = g.iloc[0]
        out.append(f"| {prob} | {spec} | {sched} | {counts} | {t['trend_z']:.2f} ({t['trend_p']:.2g}) | "
                   + " | ".join(slopes) + " |")
    return "\n".join(out)


def differences_markdown(path: Path, loss: str = "key_value", axes=("problem", "specification", "schedule"),
                         reference: str = "non-shared") -> str:
    """The paired slope differences of differences.csv for one loss: every pair against a reference arm
    (problem: ``reference`` against each other structure; specification: exact against over; schedule: each
    against the last), mean and median; ``axes``: which comparisons."""
    d = pd.read_csv(path / "differences.csv", keep_default_na=False)
    d = d[(d["loss"] == loss) & d["axis"].isin(axes)]
    r = pd.read_csv(path / "rates.csv")
    composite = {(p, s) for p, s, c, l in zip(r["problem"], r["specification"], r["composite"], r["loss"])
                 if c and l == loss}
    schedule = d["axis"] == "schedule"
    last = d.loc[schedule, "b"].iloc[-1] if schedule.any() else None  # the study's last schedule
    keep = ((d["axis"] == "problem") & (d["a"] == reference)) | (d["axis"] == "specification") | (
        schedule & (d["b"] == last))
    out = ["| compared | held fixed | mean: slope a - slope b [paired 95% CI] | median: slope a - slope b [paired 95% CI] | pairs |",
           "|---|---|---|---|---|"]
    for (axis, a, b, prob, spec, sched), g in d[keep].groupby(["axis", "a", "b", "problem", "specification", "schedule"],
                                                             sort=False):
        fixed = ", ".join(x for x in (prob, spec, sched) if x)
        arms = [(a if axis == "problem" else prob, x if axis == "specification" else spec) for x in (a, b)]
        tag = " (composite)" if any(arm in composite for arm in arms) else ""
        cells = []
        for st in ("mean", "median"):
            x = g[g["statistic"] == st].iloc[0]
            cells.append(f"{x['slope_a']:.2f} - ({x['slope_b']:.2f}) = {x['difference']:.2f} [{x['ci_low']:.2f}, {x['ci_high']:.2f}]")
        out.append(f"| {a} - {b}{tag} | {fixed} | {cells[0]} | {cells[1]} | {int(g['pairs'].iloc[0])} |")
    return "\n".join(out)


def power_markdown(path: Path, loss: str = "key_value", schedules=None, problems=None) -> str:
    """A power table (moe-estimation power --out): for each source of scatter and statistic, the power to
    tell -1/2 from -1/4 (either way round; by scaling, also -1/4 from 0), and the coverage of the interval
    at -1/2."""
    p = pd.read_csv(path, keep_default_na=False)
    p = p[(p["loss"] == loss) | (p["source"] == "lognormal")]
    if schedules is not None:  # only these schedules' scatter
        p = p[(p["source"] == "lognormal") | p["schedule"].isin(schedules)]
    if problems is not None:  # only these problems' scatter
        p = p[(p["source"] == "lognormal") | p["problem"].isin(problems)]
    out = ["| scatter of | sigma of log loss | statistic | power: slope -1/2, interval excludes -1/4 | power: slope -1/4, "
           "interval excludes -1/2 | coverage at -1/2 |", "|---|---|---|---|---|---|"]
    for (source, prob, spec, sched, sigma, st), g in p.groupby(
            ["source", "problem", "specification", "schedule", "sigma", "statistic"], sort=False):
        cell = {(t, a): x for t, a, x in zip(g["truth"], g["alternative"], g["power"])}
        cover = g[g["truth"] == -0.5]["coverage"].iloc[0]
        what = f"{prob} {spec} ({sched} starts)" if source == "fits" else "log-normal"
        out.append(f"| {what} | {sigma:.2f} | {st} | {cell[(-0.5, -0.25)]:.2f} | {cell[(-0.25, -0.5)]:.2f} | {cover:.2f} |")
    g = p.iloc[0]
    out.append(f"\nDesign: n = {g['ns']}, {int(g['replicates'])} replicates a size; {int(g['sims'])} simulated studies a "
               "contrast; power: how often the 95% bootstrap interval excludes the second slope when the first is true.")
    return "\n".join(out)


def minimax_markdown(path: Path, loss: str = "key_value") -> str:
    """Truths that move with n (minimax.csv, minimax_rates.csv, rates.csv): per family and specification, the
    worst case over the family of the mean loss at the smallest and largest n with the member attaining it,
    the slope of the worst case (mean and 90% quantile), and beside it the slope of the mean of the fixed
    truth (beta = 0, c = 1, the preset itself) and of the fastest-merging member at c = 1."""
    mm, mr, r = (pd.read_csv(path / f) for f in ("minimax.csv", "minimax_rates.csv", "rates.csv"))
    mm, mr = mm[mm["loss"] == loss], mr[mr["loss"] == loss]
    out = ["| family | specification | worst mean at n_min (member) | worst mean at n_max (member) | slope of the worst mean | of the worst 90% quantile | fixed truth (beta 0), mean | beta 1/2, c 1, mean |",
           "|---|---|---|---|---|---|---|---|"]
    for (fam, spec), g in mm[mm["statistic"] == "mean"].groupby(["family", "specification"], sort=False):
        g = g.sort_values("n")
        lo, hi = g.iloc[0], g.iloc[-1]
        cells = []
        for stat in ("mean", "q90"):
            x = mr[(mr["family"] == fam) & (mr["specification"] == spec) & (mr["statistic"] == stat)]
            cells.append("-" if not len(x) or not pd.notna(x["slope"].iloc[0]) else _ci(x.iloc[0]))
        sched = g["schedule"].iloc[0]
        fixed = _slope_cell(r, f"{fam}-b0-c1", spec, sched, loss)
        fast = _slope_cell(r, f"{fam}-b0.5-c1", spec, sched, loss)
        member = lambda row: row["worst_problem"].removeprefix(fam + "-")
        out.append(f"| {fam} | {spec} | {lo['worst']:.3g} at {int(lo['n'])} ({member(lo)}) | {hi['worst']:.3g} at "
                   f"{int(hi['n'])} ({member(hi)}) | {cells[0]} | {cells[1]} | {fixed} | {fast} |")
    return "\n".join(out)


def inverse_markdown(path: Path) -> str:
    """An inverse-bound run (inverse.csv, inverse_summary.csv): per problem, specification and loss, m(delta) at
    each delta (0 where it is at or below the zero floor: the zero set), the local slope and min m / delta^2."""
    t, s = pd.read_csv(path / "inverse.csv"), pd.read_csv(path / "inverse_summary.csv")
    deltas = sorted(t["delta"].unique())
    out = ["| problem | specification | loss | " + " | ".join(f"m at {d:.3g}" for d in deltas)
           + " | slope over delta <= window | min m / delta^2 over it |", "|" + "---|" * (len(deltas) + 5)]
    for (prob, spec, loss), g in t.groupby(["problem", "specification", "loss"], sort=False):
        x = s[(s["problem"] == prob) & (s["specification"] == spec) & (s["loss"] == loss)].iloc[0]
        by = dict(zip(g["delta"], g["m"]))
        ms = ["-" if not pd.notna(by.get(d)) else ("0" if by[d] <= x["zero_floor"] else f"{by[d]:.2e}") for d in deltas]
        slope = f"{x['slope']:.2f}" if pd.notna(x["slope"]) else ("- (zero set)" if x["zeros"] else "-")
        ratio = f"{x['m_over_delta2_min']:.3g}" if pd.notna(x["m_over_delta2_min"]) else "0"
        out.append(f"| {prob} | {spec} | {loss} | " + " | ".join(ms) + f" | {slope} | {ratio} |")
    w = s["window"].iloc[0]
    out.append(f"\nm at or below the zero floor (1e-16 of the truth's signal) is written 0; window: delta <= {w:g}.")
    return "\n".join(out)


def le_cam_markdown(path: Path) -> str:
    """The Le Cam table of an inverse-bound run (le_cam.csv): per problem, beta, c and loss value delta, the
    signal-to-noise ratio n m_n(delta) / sigma^2 of the nearest measure at that loss from the truth G_n, at
    every n."""
    t = pd.read_csv(path / "le_cam.csv")
    ns = sorted(t["n"].unique())
    out = ["| problem | beta | c | D(G', G_n) | " + " | ".join(f"n = {n:g}" for n in ns) + " |",
           "|" + "---|" * (len(ns) + 4)]
    for (prob, beta, c, delta), g in t.groupby(["problem", "beta", "c", "delta"], sort=False):
        by = dict(zip(g["n"], g["snr"]))
        out.append(f"| {prob} | {beta:g} | {c:g} | {delta:g} | "
                   + " | ".join("-" if not pd.notna(by.get(n)) else f"{by[n]:.3g}" for n in ns) + " |")
    out.append("\nEach entry: n ||f_G' - f_G_n||^2 / sigma^2 for the measure G' nearest to the truth G_n (its two "
               "prompts c n^-beta as far apart as the preset's) among those at loss D(G', G_n) = delta (the "
               "structure's own loss, exactly specified). Below 1, no data set of size n tells G' from G_n.")
    return "\n".join(out)


def geometry_markdown(path: Path) -> str:
    """A study of drawn geometries (geometry.csv, geometry_effects.csv): per specification, factor and level,
    pooled over the other factors, the failing fits at the smallest and the largest n of the window and the
    slope of the median loss (its median over cells, with the smallest and the largest), the two structures
    side by side; and the exact fits' median-slope intervals that hold -1/2."""
    g, e = pd.read_csv(path / "geometry.csv"), pd.read_csv(path / "geometry_effects.csv")
    structures = list(dict.fromkeys(e["structure"]))
    lo, hi = int(g["n_min"].iloc[0]), int(g["n_max"].iloc[0])
    head = ["specification", "factor", "level"]
    for s in structures:
        head += [f"{s}: failing at n = {lo} / {hi}", f"{s}: median slope, median over cells [range]"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(row) -> list[str]:
        if row is None:
            return ["-", "-"]
        return [f"{int(row['failing_n_min'])}/{int(row['fits_n_min'])} / {int(row['failing_n_max'])}/{int(row['fits_n_max'])}",
                f"{row['median_slope_median']:.2f} [{row['median_slope_min']:.2f}, {row['median_slope_max']:.2f}]"]

    for (spec, factor, level), h in e.groupby(["specification", "factor", "level"], sort=False):
        cells = []
        for s in structures:
            x = h[h["structure"] == s]
            cells += cell(x.iloc[0] if len(x) else None)
        out.append(f"| {spec} | {factor} | {level:g} | " + " | ".join(cells) + " |")
    # the two factors that matter, crossed: the key separation and L' - L, pooled over the rest
    out += ["", "| specification | key separation | L' - L | " + " | ".join(head[3:]) + " |", "|" + "---|" * len(head)]
    for (spec, sep, x), h in g.groupby(["specification", "key_separation", "extra_prompts"], sort=True):
        cells = []
        for s in structures:
            k = h[h["structure"] == s]
            if not len(k):
                cells += ["-", "-"]
                continue
            sl = k["median_slope"].dropna()
            cells += [f"{int(k['failing_n_min'].sum())}/{int(k['fits_n_min'].sum())} / "
                      f"{int(k['failing_n_max'].sum())}/{int(k['fits_n_max'].sum())}",
                      f"{sl.median():.2f} [{sl.min():.2f}, {sl.max():.2f}]"]
        out.append(f"| {spec} | {sep:g} | {int(x)} | " + " | ".join(cells) + " |")
    totals = []
    for (s, spec), h in g.groupby(["structure", "specification"], sort=False):
        holding = int(((h["median_ci_low"] <= -0.5) & (h["median_ci_high"] >= -0.5)).sum())
        totals.append(f"{s} {spec}: {int(h['failing_n_min'].sum())}/{int(h['fits_n_min'].sum())} failing at n = {lo}, "
                      f"{int(h['failing_n_max'].sum())}/{int(h['fits_n_max'].sum())} at n = {hi}; median-slope interval "
                      f"holds -1/2 in {holding} of {len(h)} cells")
    out.append("\nAll cells: " + "; ".join(totals) + ".")
    return "\n".join(out)


def lab_markdown(path: Path) -> str:
    """A lab study's rates: per specification and declared loss, the mean and median slopes with their
    intervals, the declared theory slope, the mean loss at the largest n and the fits not converged."""
    r = pd.read_csv(path / "rates.csv")
    out = ["| specification | K' | loss | mean: slope [95% CI] | median: slope [95% CI] | theory | mean loss at n_max "
           "| fits not converged |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda row: f"{row.slope:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]" if np.isfinite(row.slope) else "-"
    for (spec, loss), g in r.groupby(["specification", "loss"], sort=False):
        m, md = g[g["statistic"] == "mean"].iloc[0], g[g["statistic"] == "median"].iloc[0]
        theory = f"{m.theory_slope:g}" if np.isfinite(m.theory_slope) else "-"
        out.append(f"| {spec} | {int(m.num_components)} | {loss} | {fmt(m)} | {fmt(md)} | {theory} | "
                   f"{m.mean_loss_at_n_max:.3g} | {int(m.fits_not_converged)} |")
    return "\n".join(out)


def _lab_design(path: Path) -> str:
    """A lab study's estimator and starts in words, from its config.json."""
    fit = json.loads((Path(path) / "config.json").read_text())["study"].get("fit", {})
    est = "EM" if fit.get("estimator") == "em" else "direct ML"
    init = fit.get("init", "random")
    scale = fit.get("init_scale", 0.5)
    if init == "random":
        start = "random over the whole box" if scale == 1 else f"random over {scale:g} of the box"
    elif init == "near-truth":
        rate = fit.get("init_rate", 0.0)
        start = f"truth + N(0, {scale:g}" + (f" n^-{rate:g}" if rate else "") + ")"
    else:
        start = f"{init} start"
    if est == "EM" and fit.get("max_steps") == 1:  # the one-iteration estimator: never converged, by its design
        return f"one EM iteration (not run to convergence, by design), {start}, best of {fit.get('restarts', 8)}"
    return f"{est}, {start}, best of {fit.get('restarts', 8)}"


PUBLISHED = {  # the rebuilt published studies: source -> (the loss its table rates, [suite folders under tables/published])
    "sgame": ("paper", ["sgame-exact", "sgame-over"]),
    "gmoe-1": ("paper", ["gmoe-1"]), "gmoe-2": ("paper", ["gmoe-2"]), "gmoe-3": ("paper", ["gmoe-3"]),
    "gmoe-4": ("paper", ["gmoe-4"]),
    "deepseek-t1": ("D1", ["deepseek-t1"]), "deepseek-t2": ("D2", ["deepseek-t2"]), "deepseek-t3": ("D3", ["deepseek-t3"]),
    "deepseek-t4": ("D4", ["deepseek-t4"]),
    "fusemoe": ("paper", ["fusemoe"]),
    "sigmoid-vs-softmax-relu": ("d2", ["sigmoid-vs-softmax-relu"]),
    "sigmoid-vs-softmax-linear": ("d2", ["sigmoid-vs-softmax-linear"]),
}


def published_runs(source: str, tables: Path) -> tuple[str, list]:
    """(loss, [(label, run folder)]) of a rebuilt published study (:data:`PUBLISHED`): every way of fitting of its
    suites (:mod:`moe_estimation.lab.suite`) under ``tables``."""
    from ..lab.suite import suite_ways

    loss, suites = PUBLISHED[source]
    return loss, [way for folder in suites for way in suite_ways(Path(tables) / folder)[0]]


def published_table(runs, loss: str, num_bootstrap: int = 2000) -> str:
    """Rebuilt published studies side by side: ``runs`` ``[(label, path), ...]``, lab studies fitted on the same
    data sets (one seed); per (specification, K', run) the design, the mean and median slopes of ``loss`` with
    their intervals, the theory slope, the median loss at the largest n and the fits not converged; and per
    (specification, K') and model a row ``best of all``: each data set's fit of lowest objective over the runs of
    that model (every run's objective is the same mean negative log-likelihood, or mean squared residual, of the
    same data), rated the same way (the bootstrap seeded by the first run's seed)."""
    seed = json.loads((Path(runs[0][1]) / "config.json").read_text())["study"].get("seed", 0)
    out = ["| spec | run | estimator, starts | mean: slope [95% CI] | median: slope [95% CI] | theory | median loss at "
           "n_max | fits not converged |", "|---|---|---|---|---|---|---|---|"]
    fmt = lambda e: f"{e['slope']:.2f} [{e['ci_low']:.2f}, {e['ci_high']:.2f}]" if np.isfinite(e["slope"]) else "-"
    fits = [pd.read_csv(Path(p) / "fits.csv") for _, p in runs]
    rates = [pd.read_csv(Path(p) / "rates.csv") for _, p in runs]
    model_of = {label: lab_model(path) for label, path in runs}
    for *spec_key, spec in spec_groups(fits):
        pooled = []
        for (label, path), f, r in zip(runs, fits, rates):
            g = f[(f["specification"] == spec_key[0]) & (f["num_components"] == spec_key[1])]
            if not len(g):
                continue
            pooled.append(g.assign(_run=label))
            rr = r[(r["specification"] == spec_key[0]) & (r["loss"] == loss) & (r["num_components"] == spec_key[1])]
            m, md = (rr[rr["statistic"] == s].iloc[0] for s in ("mean", "median"))
            theory = f"{m.theory_slope:g}" if np.isfinite(m.theory_slope) else "-"
            med = g[g["n"] == g["n"].max()][f"loss_{loss}"].median()
            out.append(f"| {spec} | {label} | {_lab_design(path)} | {fmt(m)} | {fmt(md)} | {theory} | {med:.3g} | "
                       f"{int((~g['converged'].astype(bool)).sum())} of {len(g)} |")
        groups = list(dict.fromkeys(model_of[g["_run"].iloc[0]] for g in pooled))
        for group in groups:  # a best of all over the ways of one model (other models' objectives are other fits)
            same = [g for g in pooled if model_of[g["_run"].iloc[0]] == group]
            out += _best_of_all(same, spec, loss, seed, num_bootstrap, fmt,
                                f" ({group})" if len(groups) > 1 else "")
    return "\n".join(out)


def reported_table(tables) -> str:
    """What each rebuilt source reports, beside our slope under its design (``tables``: the folder holding
    ``published/reported.csv`` and the suites). Per row of reported.csv: the source's number as its text or
    figure states it (its regressor: n, or log(n)/n, whose powers the DeepSeekMoE study quotes), where it was
    read, and ours from the way that rebuilds the source's design (its folder ``way``): the slope of log mean
    loss on log n with its interval, the same mean read in the source's regressor (a point estimate: the least
    squares slope of log mean loss on log(n / log n)), the median slope and the theory. A number the source
    prints only inside a figure's image is not read and says so."""
    from ..lab.suite import suite_ways
    from ..rates import ols_line

    tables = Path(tables)
    reported = pd.read_csv(tables / "published" / "reported.csv", dtype={"num_components": "Int64"})
    out = ["| source | spec | loss | reported by the source | where | ours, the source's design | mean: slope [95% CI] "
           "| ours in the source's regressor | median: slope [95% CI] | theory |", "|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda e: f"{e['slope']:.2f} [{e['ci_low']:.2f}, {e['ci_high']:.2f}]" if np.isfinite(e["slope"]) else "-"
    for row in reported.itertuples(index=False):
        folder = tables / "published" / row.way
        if not (folder / "rates.csv").is_file():
            raise ValueError(f"reported.csv: way {row.way!r} of {row.source} names no finished way of a committed suite "
                             f"({folder} has no rates.csv)")
        labels = dict((Path(p).name, label) for label, p in suite_ways(folder.parent)[0])
        f, r = pd.read_csv(folder / "fits.csv"), pd.read_csv(folder / "rates.csv")
        sel = (f["specification"] == row.specification)
        rsel = (r["specification"] == row.specification) & (r["loss"] == row.loss)
        spec = row.specification
        if not pd.isna(row.num_components):
            sel &= f["num_components"] == row.num_components
            rsel &= r["num_components"] == row.num_components
            spec = f"{spec}, K' = {row.num_components}"
        if not (rsel & (r["statistic"] == "mean")).any() or not sel.any():
            raise ValueError(f"reported.csv: {row.way} has no {row.loss!r} rate for {spec} (source {row.source})")
        m, md = (r[rsel & (r["statistic"] == s)].iloc[0] for s in ("mean", "median"))
        ns, mat = loss_matrix(f[sel], f"loss_{row.loss}", replicate="replicate")
        mean = np.array([np.nanmean(v[np.isfinite(v)]) for v in mat])
        if row.regressor == "log(n)/n":
            x, unit = np.log(ns / np.log(ns)), "log(n)/n"
        elif row.regressor == "n":
            x, unit = np.log(ns), "n"
        else:
            raise ValueError(f"reported.csv: regressor must be 'n' or 'log(n)/n', got {row.regressor!r}")
        ours = f"{ols_line(x, np.log(mean))[0]:.2f} (in {unit})" if unit != "n" else "the same"
        rep = (f"{row.reported_slope:g} (in {row.regressor})" if np.isfinite(row.reported_slope)
               else "not read")
        theory = f"{m.theory_slope:g}" if np.isfinite(m.theory_slope) else "-"
        out.append(f"| {row.source} | {spec} | {row.loss} | {rep} | {row.reference}; {row.read_from} | "
                   f"{labels[folder.name]} | {fmt(m)} | {ours} | {fmt(md)} | {theory} |")
    return "\n".join(out)


def spec_groups(frames) -> list[tuple[str, int, str]]:
    """The (specification, K') pairs that the fits tables ``frames`` hold, in order of first appearance, each with
    its label: the specification, or ``"<spec>, K' = <K'>"`` where one specification is fitted at several K'."""
    keys = list(dict.fromkeys((s, int(k)) for f in frames for s, k in zip(f["specification"], f["num_components"])))
    several = {s for s, _ in keys if sum(1 for t, _ in keys if t == s) > 1}
    return [(s, k, s if s not in several else f"{s}, K' = {k}") for s, k in keys]


def lab_model(path) -> str:
    """A lab run's model in a few words (its gate and expert), from its config.json."""
    model = json.loads((Path(path) / "config.json").read_text())["study"].get("model", {})
    return f"{model.get('gate', 'softmax')} gate, {model.get('expert', 'linear')} experts"


def _best_of_all(pooled, spec, loss, seed, num_bootstrap, fmt, suffix) -> list[str]:
    """The row ``best of all`` (none for fewer than two runs): each data set's fit of lowest objective over
    ``pooled`` (runs of one model on common data sets), rated as every run."""
    if len(pooled) < 2:
        return []
    both = pd.concat(pooled, ignore_index=True)
    common = both.groupby(["n", "replicate"])["_run"].transform("nunique") == len(pooled)
    best = both[common].assign(_o=both["objective"].where(np.isfinite(both["objective"]), np.inf)).sort_values(
        ["n", "replicate", "_o"], kind="stable").groupby(["n", "replicate"], sort=False).head(1)
    if not len(best):
        return []
    ns, mat = loss_matrix(best, f"loss_{loss}", replicate="replicate")
    e = {x["statistic"]: x for x in rate_entries(ns, mat, num_bootstrap=num_bootstrap, seed=seed)}
    share = ", ".join(f"{k} {v}" for k, v in best["_run"].value_counts().items())
    return [f"| {spec} | best of all{suffix} | each data set's lowest objective ({share}) | {fmt(e['mean'])} | "
            f"{fmt(e['median'])} | - | {best[best['n'] == best['n'].max()][f'loss_{loss}'].median():.3g} | "
            f"{int((~best['converged'].astype(bool)).sum())} of {len(best)} |"]


def run_kind(path: Path) -> str:
    """What a run folder holds: ``study``, ``lab`` (a lab study of an assembly), ``suite`` (several ways of fitting
    one lab study, :mod:`moe_estimation.lab.suite`), ``teacher``, ``transformer`` or ``inverse`` (``ValueError``
    naming the folder when none)."""
    path = Path(path)
    if (path / "suite.json").is_file():
        return "suite"
    if (path / "inverse.csv").is_file() and (path / "inverse_summary.csv").is_file():
        return "inverse"
    if fits_file(path).is_file():
        try:
            columns = pd.read_csv(fits_file(path), nrows=0).columns
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, EOFError, OSError) as e:
            columns, unreadable = (), str(e).splitlines()[0]
        else:
            unreadable = None
        if "truth" in columns:
            return "teacher"  # a teacher run part-way, without rates.csv yet, is rated from its fits
        if not (path / "rates.csv").is_file():
            raise ValueError(f"summarize: {path} holds fits but no rates.csv: rebuild its tables first "
                             f"(`moe-estimation study ... --out {path} --tables-only`)")
        if unreadable is not None:
            raise ValueError(f"summarize: {fits_file(path)} is not a readable table ({unreadable})")
        return "lab" if "num_components" in columns else "study"
    if (path / "curves.csv").is_file():
        return "transformer"
    raise ValueError(f"summarize: {path} holds no run's tables (fits.csv or fits.csv.gz of a study or a teacher run, "
                     "curves.csv of a transformer run, inverse.csv of an inverse-bound run)")


def summarize(path: Path) -> str:
    """Every summary table a run folder gives, in markdown (``moe-estimation summarize``): for a study its rates
    (every schedule, and their best of all), its failing fractions, and as they apply its paired differences,
    positive control, spread, lowest objectives per schedule, worst case over moving truths and findings by
    geometry; for a transformer, teacher or inverse-bound run its own tables."""
    path = Path(path)
    kind = run_kind(path)
    if kind == "inverse":
        parts = [inverse_markdown(path)] + ([le_cam_markdown(path)] if (path / "le_cam.csv").is_file() else [])
    elif kind == "teacher":
        parts = [teacher_table([path]), teacher_windows_table([path])]
        specs = pd.read_csv(fits_file(path), usecols=lambda c: c == "specification")["specification"]
        if (specs == "exact").any() and (path / "backbone.npz").is_file():
            parts.append(teacher_efficiency_table([path]))
        if (specs == "over").any():
            parts.append(teacher_anatomy_table([path]))
    elif kind == "lab":
        parts = [lab_markdown(path)]
    elif kind == "suite":
        from ..lab.suite import suite_markdown

        parts = [suite_markdown(path)]
    elif kind == "transformer":
        parts = [transformer_table(path)]
    elif (path / "geometry.csv").is_file():  # hundreds of problems: their findings by factor
        parts = [geometry_markdown(path)]
    else:
        parts = [study_table(path)]
        if (path / "failing.csv").is_file() and len(pd.read_csv(path / "failing.csv", nrows=1)):
            parts.append(failing_markdown(path))
        if (path / "minimax.csv").is_file():
            parts.append(minimax_markdown(path))
        else:
            rates = pd.read_csv(path / "rates.csv")
            if (rates["loss"] == "max_multi_error").any():
                parts.append(control_markdown(path))
            if ((rates["loss"] == "spread_value_by_key") & (rates["specification"] == "over")).any():
                parts.append(spread_markdown(path))
            if (path / "differences.csv").is_file() and len(pd.read_csv(path / "differences.csv", nrows=1)):
                parts.append(differences_markdown(path))
            if (path / "lowest.csv").is_file() and pd.read_csv(path / "lowest.csv")["schedule"].nunique() > 1:
                parts.append(lowest_markdown(path))
    return f"## {path} ({kind})\n\n" + "\n\n".join(parts)


def study_summary(path: Path, fits: pd.DataFrame) -> str:
    """What ``moe-estimation study`` prints at its end: the fits and their convergence, the mean slopes of the
    own loss and the yardstick per arm (a geometry study: per structure and specification, pooled), and where
    the tables are."""
    path = Path(path)
    bad = int((~fits["converged"].astype(bool)).sum())
    out = [f"wrote {len(fits)} fits to {fits_file(path)}: {bad} not converged, {int(fits['at_bound'].astype(bool).sum())} "
           "with a coordinate on the box"]
    rates = pd.read_csv(path / "rates.csv") if (path / "rates.csv").is_file() else pd.DataFrame()
    if len(rates) and not (path / "geometry.csv").is_file():
        r = rates[(rates["statistic"] == "mean") & rates["loss"].isin(["own", "key_value"])]
        for (prob, spec, sched), g in r.groupby(["problem", "specification", "schedule"], sort=False):
            cells = [f"{loss} {'-' if not pd.notna(x['slope']) else _ci(x)}" for loss, x in
                     ((row["loss"], row) for _, row in g.iterrows())]
            out.append(f"  {prob} {spec} {sched}: mean slope " + "; ".join(cells))
    tables = sorted(p.name for p in path.glob("*.csv"))
    out.append(f"tables in {path}: {', '.join(tables)}; `moe-estimation summarize {path}` for the summary, "
               f"`moe-estimation plot --results {path} --out FIGURES` for the figures")
    return "\n".join(out)
