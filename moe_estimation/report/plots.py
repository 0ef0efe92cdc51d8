"""Figures from a study's tables (the only module that imports matplotlib).

- ``rates_<problem>.png``: for one problem, a 2 x 2 grid (rows: the structure's own loss, the key/value
  yardstick; columns: exact, over-specified): mean over replicates with the interquartile band of the
  replicates and their 90% quantile, the median, the OLS line with its slope and 95% bootstrap interval in the legend, and the theory slope
  drawn through the first mean. Fits that stopped on the step limit are counted in each panel's title.
- ``side_by_side.png``: every problem on the key/value yardstick, over-specified, with the key part
  and the value part of the loss drawn apart.
- ``parts_<problem>_<specification>.png``: how the yardstick and its identified part fall with n under each
  starting-point schedule of the study (one colour a schedule; mean solid, median dashed; the slope of
  the mean in the legend): the yardstick, its key and value parts and the yardstick of the starting point
  (row 1); the error of the weight sums, of the weight-averaged keys and values, and the spread of keys
  and values inside cells (row 2). A study with several schedules draws these and one
  ``side_by_side_<schedule>.png`` per schedule instead of ``rates_<problem>.png`` and ``side_by_side.png``.
- ``minimax_<loss>.png`` (a study with truths that move with n, drawn instead of the figures above): the
  worst case over each family of truths against n, beside every member's curve (``minimax.csv``).
- ``geometry.png`` (a study of drawn geometries, drawn instead of the figures above): the failing fraction
  and the slopes against each factor of the geometry (:func:`plot_geometry`).
- ``failing_<loss>.png``: the fraction of fits whose loss exceeds its declared threshold against n, with
  exact 95% intervals and the trend test (``failing.csv``).
- ``inverse.png`` and ``le_cam.png`` (an ``inverse-bound`` run): m(delta) against delta per loss, and the Le
  Cam table's n m / sigma^2 against n (:func:`plot_inverse`).
- ``transformer_curves.png``: held-out loss and accuracy against n for the three prefix
  parameterisations (mean over seeds with the seed range, fitted slopes in the legend).
- ``combined.png``: the MoE rate panels (key/value yardstick, over-specified) beside the transformer's
  learning curves.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .._checks import check_out_dir, make_out_dir  # noqa: E402
from ..experiments.inference import with_best_of_all  # noqa: E402
from ..rates import ols_line  # noqa: E402
from ..experiments.results import RATE_LOSSES, describe_schedule, fits_file  # noqa: E402
from ..transformer.teacher import RATE_LOSSES as TEACHER_LOSSES  # noqa: E402
from ..transformer.teacher import load_runs  # noqa: E402

LOSS_LABELS = {"own": "own loss (D_2 on p, or D_1,r on (pK, pV))", "key_value": "key/value yardstick D_2 on (k, v)"}


def _loss_values(g: pd.DataFrame, loss: str, losses=None) -> np.ndarray:
    cols = (losses or RATE_LOSSES)[loss]
    return g[list(cols)].sum(axis=1, min_count=len(cols)).to_numpy(float)  # a missing loss stays NaN, never 0


def _panel(ax, g: pd.DataFrame, rates: pd.DataFrame, loss: str, color="C0", label_prefix="", losses=None):
    """Mean and median of ``loss`` against n, the interquartile band and the 90% quantile over replicates,
    the fitted rate and the theory's slope. ``losses``: how each loss is read from the rows (default: a
    study's ``RATE_LOSSES``)."""
    ns = np.sort(g["n"].unique())
    vals = [_loss_values(g[g["n"] == n], loss, losses) for n in ns]
    vals = [v[np.isfinite(v)] for v in vals]
    mean = np.array([np.mean(v) for v in vals])
    med = np.array([np.median(v) for v in vals])
    q25, q75, q90 = (np.array([np.quantile(v, q) for v in vals]) for q in (0.25, 0.75, 0.9))
    ax.fill_between(ns, q25, q75, color=color, alpha=0.18, lw=0, label=f"{label_prefix}25-75% of replicates")
    ax.plot(ns, q90, "v:", color=color, ms=3, lw=1, alpha=0.8, label=f"{label_prefix}90% quantile")
    ax.plot(ns, mean, "o-", color=color, ms=4, label=f"{label_prefix}mean")
    ax.plot(ns, med, "s--", color=color, ms=3, alpha=0.7, label=f"{label_prefix}median")
    row = rates[(rates["loss"] == loss) & (rates["statistic"] == "mean")]
    if len(row):
        r = row.iloc[0]
        if np.isfinite(r["slope"]):
            window = (ns >= r["n_min"]) & (ns <= r["n_max"])
            nw = ns[window]
            intercept = np.mean(np.log(mean[window])) - r["slope"] * np.mean(np.log(nw))
            ax.plot(nw, np.exp(intercept) * nw ** r["slope"], "-", color="k", lw=1,
                    label=f"{label_prefix}fit {r['slope']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]")
        if np.isfinite(r["theory_slope"]):
            ax.plot(ns, mean[0] * (ns / ns[0]) ** r["theory_slope"], ":", color="gray", lw=1.5,
                    label=f"theory {r['theory_slope']:g}" if r["theory_slope"] else "theory: slower than any n^-a")
    _log_axes(ax, ns)


PARTS_PANELS = (
    # (title, fits.csv columns summed, row)
    ("yardstick D_2 on (k, v)", ("loss_key_value",)),
    ("its key part", RATE_LOSSES["key_value_key_part"]),
    ("its value part", RATE_LOSSES["key_value_value_part"]),
    ("yardstick of the start", ("start_key_value",)),
    ("identified: weight sums  sum_j |W_j - w*_j|", RATE_LOSSES["identified_weight"]),
    ("identified: averaged keys  sum_j |kbar_j - k*_j|", RATE_LOSSES["identified_key"]),
    ("identified: averaged values  sum_j |vbar_j - v*_j|", RATE_LOSSES["identified_value"]),
    ("spread in cells: values (solid), keys (dotted)", RATE_LOSSES["spread_value"]),
)


def window_slope(ns, y, window=None):
    """The slope of log y on log n over the rate window ``(n_min, n_max)`` (default: every n), as rates.csv
    takes it: NaN when y is not positive and finite at every n of the window (a zero has no log)."""
    lo, hi = window or (-np.inf, np.inf)
    keep = (ns >= lo) & (ns <= hi)
    y = np.asarray(y, float)[keep]
    if keep.sum() < 2 or not np.all(np.isfinite(y) & (y > 0)):
        return np.nan
    return ols_line(np.log(ns[keep]), np.log(y))[0]


def _schedule_lines(ax, g: pd.DataFrame, cols, schedules, dotted_cols=None, window=None):
    for k, sched in enumerate(schedules):
        gs = g[g["schedule"] == sched]
        ns = np.sort(gs["n"].unique()).astype(float)
        vals = [gs[gs["n"] == n][list(cols)].sum(axis=1).to_numpy() for n in ns]
        mean, med = np.array([v.mean() for v in vals]), np.array([np.median(v) for v in vals])
        if not np.any(mean > 0):
            continue
        color = f"C{k}"
        ax.plot(ns, np.where(mean > 0, mean, np.nan), "o-", color=color, ms=3,
                label=f"{sched}: slope {window_slope(ns, mean, window):.2f}")
        ax.plot(ns, np.where(med > 0, med, np.nan), "--", color=color, lw=1, alpha=0.7)
        if dotted_cols is not None:
            extra = np.array([gs[gs["n"] == n][list(dotted_cols)].sum(axis=1).mean() for n in ns])
            ax.plot(ns, np.where(extra > 0, extra, np.nan), ":", color=color, lw=1.5)
    _log_axes(ax, np.sort(g["n"].unique()))


def _n_axis(ax, ns) -> None:
    """A log n axis with the sample sizes themselves as the ticks (at most seven of them)."""
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ticks = ns[:: max(1, -(-len(ns) // 7))]
    ax.set_xticks(ticks, [f"{int(n):,}" for n in ticks], fontsize=7)


def _log_axes(ax, ns) -> None:
    """Log-log axes with the sample sizes themselves as the x ticks (at most seven of them)."""
    _n_axis(ax, ns)
    ax.set_yscale("log")
    ax.grid(True, which="both", alpha=0.2)


def plot_parts(fits: pd.DataFrame, out: Path, window=None) -> list[Path]:
    """``parts_<problem>_<specification>.png`` for every (problem, specification) of a study; the slopes in the
    legends are taken over the rate window ``(n_min, n_max)`` (default: every n), as in rates.csv."""
    schedules = list(dict.fromkeys(fits["schedule"]))
    written = []
    for (prob, spec), g in fits.groupby(["problem", "specification"], sort=False):
        fig, axes = plt.subplots(2, 4, figsize=(18, 7.8))
        for ax, (title, cols) in zip(axes.ravel(), PARTS_PANELS):
            dotted = RATE_LOSSES["spread_key"] if cols == RATE_LOSSES["spread_value"] else None
            _schedule_lines(ax, g, cols, schedules, dotted, window)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("n")
            if ax.lines:
                ax.legend(fontsize=7)
            else:
                ax.text(0.5, 0.5, "zero in every fit", transform=ax.transAxes, ha="center", color="gray")
        desc = "; ".join(_schedule_text(g[g["schedule"] == s].iloc[0]) for s in schedules)
        span = "" if window is None else f"; slopes of the mean over n = {window[0]:,}..{window[1]:,}"
        fig.suptitle(f"{prob}, {spec}-specified (L'={int(g['num_prompts'].iloc[0])}): mean (solid) and median (dashed) over "
                     f"{g['replicate'].nunique()} replicates; {_failures(g)}{span}\n{desc}", fontsize=10)
        fig.tight_layout()
        path = out / f"parts_{prob}_{spec}.png"
        _save(fig, path)
        written.append(path)
    return written


def _failures(g: pd.DataFrame) -> str:
    """The fits of a panel that did not converge: step limit or stall, and non-finite results (which have no
    loss and so are missing from the lines above them)."""
    bad = int((~g["converged"].astype(bool)).sum())
    nonfinite = int((g["status"] == "nonfinite").sum())
    return f"step limit/stall: {bad - nonfinite}/{len(g)}" + (f", NON-FINITE: {nonfinite}" if nonfinite else "")


def _schedule_text(row) -> str:
    return f"{row['schedule']}: {describe_schedule(row)}"


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _rates_figure(fits, rates, prob, specs, title_suffix=""):
    fig, axes = plt.subplots(2, len(specs), figsize=(5.2 * len(specs), 7.5), squeeze=False)
    for j, spec in enumerate(specs):
        g = fits[(fits["problem"] == prob) & (fits["specification"] == spec)]
        rr = rates[(rates["problem"] == prob) & (rates["specification"] == spec)]
        for i, loss in enumerate(("own", "key_value")):
            ax = axes[i, j]
            _panel(ax, g, rr, loss)
            L = int(g["num_prompts"].iloc[0])
            ax.set_title(f"{spec} (L'={L}); {_failures(g)}", fontsize=9)
            ax.set_ylabel(LOSS_LABELS[loss], fontsize=8)
            ax.set_xlabel("n")
            ax.legend(fontsize=7)
    fig.suptitle(f"{prob}: loss against n ({_schedule_text(g.iloc[0])})")
    fig.tight_layout()
    return fig


def _side_by_side(fits, rates, problems, specs, title_suffix=""):
    spec = "over" if "over" in specs else specs[0]
    problems = [p for p in problems if len(fits[(fits["problem"] == p) & (fits["specification"] == spec)])]
    single = len(problems) == 1  # one panel: the legend goes beside it, not over the data
    fig, axes = plt.subplots(1, len(problems), figsize=(8.0 if single else 4.2 * len(problems), 4.6), squeeze=False,
                             sharey=True)
    for ax, prob in zip(axes[0], problems):
        g = fits[(fits["problem"] == prob) & (fits["specification"] == spec)]
        rr = rates[(rates["problem"] == prob) & (rates["specification"] == spec)]
        _panel(ax, g, rr, "key_value")
        for loss, color, lab in (("key_value_key_part", "C1", "key part "), ("key_value_value_part", "C2", "value part ")):
            ns = np.sort(g["n"].unique())
            ax.plot(ns, [np.mean(_loss_values(g[g["n"] == n], loss)) for n in ns], "^-", color=color, ms=3, lw=1,
                    label=f"{lab}mean")
        ax.set_title(f"{prob}\n{_failures(g)}", fontsize=9)
        ax.set_xlabel("n")
        if single:
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
        else:
            ax.legend(fontsize=6)
    axes[0, 0].set_ylabel("D_2 on (key, value) atoms")
    fig.suptitle(f"Structures side by side, {spec}-specified, on one yardstick{title_suffix}", fontsize=10)
    fig.tight_layout()
    return fig


def _rate_window(results: Path):
    """The study's rate window ``(n_min, n_max)`` from its config.json (None without one)."""
    try:
        study = json.loads((Path(results) / "config.json").read_text())["study"]
        return int(study["n_min"]), int(study["n_max"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def plot_study(results: str | Path, out: str | Path) -> list[Path]:
    """Draw every study figure from ``results/fits.csv`` and ``results/rates.csv`` into ``out``; a study with
    several schedules draws its best fit of each data set over all of them as one more schedule
    (``best-of-all``, :func:`moe_estimation.experiments.inference.with_best_of_all`)."""
    results, out = Path(results), Path(out)
    for path in (fits_file(results), results / "rates.csv"):
        if not path.is_file():
            raise ValueError(f"--results: {results} has no {path.name}; run `moe-estimation study --out {results}` first")
    fits = with_best_of_all(pd.read_csv(fits_file(results)))
    rates = pd.read_csv(results / "rates.csv")
    make_out_dir(out)
    if (results / "minimax.csv").is_file():  # truths that move with n: the worst case over each family
        return plot_minimax(pd.read_csv(results / "minimax.csv"), pd.read_csv(results / "quantiles.csv"),
                            pd.read_csv(results / "minimax_rates.csv"), out)
    if (results / "geometry_effects.csv").is_file():  # many drawn geometries: their findings by factor
        return plot_geometry(pd.read_csv(results / "geometry.csv"), pd.read_csv(results / "geometry_effects.csv"), out)
    written = []
    problems = list(dict.fromkeys(fits["problem"]))
    specs = list(dict.fromkeys(fits["specification"]))
    schedules = list(dict.fromkeys(fits["schedule"]))
    if len(schedules) == 1:
        for prob in problems:
            pspecs = list(dict.fromkeys(fits[fits["problem"] == prob]["specification"]))
            path = out / f"rates_{prob}.png"
            _save(_rates_figure(fits, rates, prob, pspecs), path)
            written.append(path)
        path = out / "side_by_side.png"
        _save(_side_by_side(fits, rates, problems, specs, f" ({schedules[0]} starts)"), path)
        written.append(path)
    else:
        for sched in schedules:
            f, r = fits[fits["schedule"] == sched], rates[rates["schedule"] == sched]
            path = out / f"side_by_side_{sched}.png"
            _save(_side_by_side(f, r, problems, specs, f"\n{_schedule_text(f.iloc[0])}"), path)
            written.append(path)
    written += plot_parts(fits, out, _rate_window(results))
    if (results / "failing.csv").is_file():
        failing = pd.read_csv(results / "failing.csv")
        if len(failing):
            written += plot_failing(failing, out)
    if (results / "declared.csv").is_file():
        written += plot_declared(pd.read_csv(results / "declared.csv"), rates, out)
    return written


def plot_declared(declared: pd.DataFrame, rates: pd.DataFrame, out: Path) -> list[Path]:
    """``declared_<loss>.png`` for each loss a study declares (``[rates.losses.NAME]``; ``declared.csv``, written
    with the study's tables): one panel a (problem, specification, schedule), the loss's mean, median,
    interquartile band and 90% quantile against n, the fitted slope and the declared theory."""
    written = []
    arms = list(declared.groupby(["problem", "specification", "schedule"], sort=False).groups)
    cols = min(len(arms), 4)
    rows = -(-len(arms) // cols)
    for loss in [c[len("loss_"):] for c in declared.columns if c.startswith("loss_")]:
        fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 4.0 * rows), squeeze=False)
        for ax, (prob, spec, sched) in zip(axes.ravel(), arms):
            g = declared[(declared["problem"] == prob) & (declared["specification"] == spec)
                         & (declared["schedule"] == sched)]
            r = rates[(rates["problem"] == prob) & (rates["specification"] == spec) & (rates["schedule"] == sched)]
            _panel(ax, g, r, loss, losses={loss: (f"loss_{loss}",)})
            ax.set_title(f"{prob} {spec}, {sched} starts; {_failures(g)}", fontsize=9)
            ax.set_xlabel("n")
            ax.set_ylabel(loss)
            ax.legend(fontsize=7)
        for ax in axes.ravel()[len(arms):]:
            ax.axis("off")
        fig.tight_layout()
        path = Path(out) / f"declared_{loss}.png"
        _save(fig, path)
        written.append(path)
    return written


GEOMETRY_LABELS = {"d": "d (input dimension)", "d_v": "d_v (output dimension)", "draw": "draw of the truth",
                   "key_separation": "separation of the true keys", "noise_var": "noise variance",
                   "extra_prompts": "L' - L"}


def plot_geometry(geometry: pd.DataFrame, effects: pd.DataFrame, out: Path) -> list[Path]:
    """``geometry.png`` (a study of drawn geometries, ``geometry.csv`` and ``geometry_effects.csv``), one column a
    factor: the pooled failing fraction at the largest n of the window against the factor's level, with its exact
    95% interval, and at the smallest n dotted (row 1); every cell's slope of the median loss, with the median
    over cells joined (row 2); one colour a (structure, specification)."""
    factors = list(dict.fromkeys(effects["factor"]))
    arms = list(dict.fromkeys(zip(effects["structure"], effects["specification"], effects["schedule"])))
    fig, axes = plt.subplots(2, len(factors), figsize=(3.4 * len(factors), 7), squeeze=False, sharey="row")
    for j, factor in enumerate(factors):
        e = effects[effects["factor"] == factor]
        levels = sorted(e["level"].unique())
        x = np.arange(len(levels))
        for i, (structure, spec, sched) in enumerate(arms):
            color, off = f"C{i}", (i - (len(arms) - 1) / 2) * 0.08
            h = e[(e["structure"] == structure) & (e["specification"] == spec) & (e["schedule"] == sched)]
            h = h.set_index("level").reindex(levels)
            ax = axes[0, j]
            ax.errorbar(x + off, h["fraction_n_max"], yerr=[h["fraction_n_max"] - h["ci_low_n_max"],
                                                            h["ci_high_n_max"] - h["fraction_n_max"]],
                        fmt="o-", color=color, capsize=2, label=f"{structure} {spec}")
            ax.plot(x + off, h["fraction_n_min"], ":", color=color)
            g = geometry[(geometry["structure"] == structure) & (geometry["specification"] == spec)
                         & (geometry["schedule"] == sched)]
            ax = axes[1, j]
            for k, level in enumerate(levels):
                s = g[g[factor] == level]["median_slope"]
                ax.plot(np.full(len(s), x[k] + off), s, ".", color=color, alpha=0.4)
            ax.plot(x + off, h["median_slope_median"], "o-", color=color)
        for ax in axes[:, j]:
            ax.set_xticks(x, [f"{v:g}" for v in levels])
            ax.set_xlabel(GEOMETRY_LABELS.get(factor, factor))
            ax.grid(True, alpha=0.2)
        axes[1, j].axhline(-0.5, color="0.5", lw=0.8, ls="--")
        axes[1, j].axhline(0.0, color="0.7", lw=0.8)
    threshold = geometry["threshold"].iloc[0]
    axes[0, 0].set_ylabel(f"failing fraction ({geometry['loss'].iloc[0]} > {threshold:g})\nat n = "
                          f"{int(geometry['n_max'].iloc[0])} (dotted: n = {int(geometry['n_min'].iloc[0])})")
    axes[1, 0].set_ylabel("slope of the median loss (dots: cells)")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Findings against the geometry of the truth, pooled over the other factors", fontsize=10)
    fig.tight_layout()
    path = Path(out) / "geometry.png"
    _save(fig, path)
    return [path]


def plot_minimax(minimax: pd.DataFrame, quantiles: pd.DataFrame, rates: pd.DataFrame, out: Path) -> list[Path]:
    """``minimax_<loss>.png`` for the structure's own loss and the key/value yardstick: one panel a
    specification (columns) and statistic (rows: mean, 90% quantile); per family (one colour) the worst case
    over its truths against n (thick, its slope and 95% interval in the legend) and every member's own curve
    (thin; solid for c = 1, dashed for smaller c), with a slope -1/2 guide through the first worst case."""
    written = []
    families = list(dict.fromkeys(minimax["family"]))
    specs = [s for s in ("exact", "over") if s in set(minimax["specification"])]
    stats = [s for s in ("mean", "q90") if s in set(minimax["statistic"])]
    for loss in ("own", "key_value"):
        fig, axes = plt.subplots(len(stats), len(specs), figsize=(5.4 * len(specs), 4.2 * len(stats)),
                                 squeeze=False)
        for i, stat in enumerate(stats):
            for j, spec in enumerate(specs):
                ax = axes[i, j]
                for k, fam in enumerate(families):
                    w = minimax[(minimax["family"] == fam) & (minimax["specification"] == spec)
                                & (minimax["loss"] == loss) & (minimax["statistic"] == stat)].sort_values("n")
                    if not len(w):
                        continue
                    r = rates[(rates["family"] == fam) & (rates["specification"] == spec) & (rates["loss"] == loss)
                              & (rates["statistic"] == stat)]
                    slope = (f": slope {r['slope'].iloc[0]:.2f} [{r['ci_low'].iloc[0]:.2f}, {r['ci_high'].iloc[0]:.2f}]"
                             if len(r) and np.isfinite(r["slope"].iloc[0]) else "")
                    ax.plot(w["n"], w["worst"], "o-", color=f"C{k}", lw=2.2, ms=4, label=f"{fam}, worst case{slope}")
                    q = quantiles[(quantiles["specification"] == spec) & (quantiles["loss"] == loss)]
                    col = "mean" if stat == "mean" else stat
                    for name, g in q[q["problem"].str.startswith(fam + "-b")].groupby("problem", sort=False):  # moving_family's names
                        g = g.sort_values("n")
                        ax.plot(g["n"], g[col], "--" if not name.endswith("-c1") else "-", color=f"C{k}", lw=0.7,
                                alpha=0.55)
                    ns = w["n"].to_numpy(float)
                    if k == 0:
                        ax.plot(ns, w["worst"].iloc[0] * (ns / ns[0]) ** -0.5, ":", color="gray", lw=1,
                                label="slope -1/2")
                _log_axes(ax, np.sort(minimax["n"].unique()))
                ax.set_xlabel("n")
                ax.set_title(f"{'exactly specified' if spec == 'exact' else 'over-specified'}: {stat} over replicates",
                             fontsize=9)
                ax.legend(fontsize=6.5)
            axes[i, 0].set_ylabel(LOSS_LABELS[loss], fontsize=8)
        fig.suptitle("Truths that move with n: the worst case over each family (thick) and its members (thin; "
                     "dashed: the smaller c)", fontsize=10)
        fig.tight_layout()
        path = out / f"minimax_{loss}.png"
        _save(fig, path)
        written.append(path)
    return written


def plot_failing(failing: pd.DataFrame, out: Path) -> list[Path]:
    """``failing_<loss>.png`` for every loss of ``failing.csv`` with a threshold: the fraction of fits above
    it against n with its exact 95% interval; one panel a (specification, schedule), one colour a problem,
    the trend test over the rate window in the legend."""
    written = []
    for loss, gl in failing.groupby("loss", sort=False):
        specs = [s for s in ("exact", "over") if s in set(gl["specification"])]
        schedules = list(dict.fromkeys(gl["schedule"]))
        problems = list(dict.fromkeys(gl["problem"]))
        fig, axes = plt.subplots(len(specs), len(schedules), figsize=(4.6 * len(schedules), 3.6 * len(specs)),
                                 squeeze=False, sharey=True)
        for i, spec in enumerate(specs):
            for j, sched in enumerate(schedules):
                ax = axes[i, j]
                gs = gl[(gl["specification"] == spec) & (gl["schedule"] == sched)]
                for k, prob in enumerate(problems):
                    g = gs[gs["problem"] == prob].sort_values("n")
                    if not len(g):
                        continue
                    ns, f = g["n"].to_numpy(float), g["fraction"].to_numpy()
                    shift = ns * 1.04 ** (k - (len(problems) - 1) / 2)  # side by side, not on top of each other
                    err = np.vstack([f - g["ci_low"].to_numpy(), g["ci_high"].to_numpy() - f])
                    r = g.iloc[0]
                    ax.errorbar(shift, f, yerr=err, fmt="o-", ms=3, lw=1, capsize=2, color=f"C{k}",
                                label=f"{prob}: trend z {r['trend_z']:.2f}, p {r['trend_p']:.2g}")
                _n_axis(ax, np.sort(gl["n"].unique()))
                ax.set_ylim(-0.02, 1.3)
                ax.set_yticks([0, 0.25, 0.5, 0.75, 1])
                ax.grid(True, alpha=0.2)
                ax.set_xlabel("n")
                ax.set_title(f"{'exactly specified' if spec == 'exact' else 'over-specified'}, {sched} starts", fontsize=9)
                if ax.lines:
                    ax.legend(fontsize=6.5, loc="upper right")
            axes[i, 0].set_ylabel(f"fraction with {loss} > {gl['threshold'].iloc[0]:g}")
        title = (f"Failing fits: {loss} above {gl['threshold'].iloc[0]:g} (or not finite), exact 95% intervals; "
                 "trend in log n over the rate window (Cochran-Armitage)")
        width = int(11 * fig.get_figwidth())  # characters of 10-point text a line holds
        fig.suptitle("\n".join(textwrap.wrap(title, width)), fontsize=10)
        fig.tight_layout()
        path = out / f"failing_{loss}.png"
        _save(fig, path)
        written.append(path)
    return written


PARAM_COLORS = {"no-share": "C3", "simple-share": "C0", "deep-share": "C2"}


def _curve_panel(ax, curves: pd.DataFrame, crates: pd.DataFrame | None, column: str = "heldout_loss"):
    for kind, color in PARAM_COLORS.items():
        g = curves[curves["parameterisation"] == kind]
        if not len(g):
            continue
        ns = np.sort(g["n"].unique())
        vals = [g[g["n"] == n][column].to_numpy() for n in ns]
        label = kind
        if crates is not None and column == "heldout_loss":
            r = crates[(crates["parameterisation"] == kind) & (crates["statistic"] == "mean")].iloc[0]
            label = f"{kind}: slope {r['slope']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        ax.fill_between(ns, [v.min() for v in vals], [v.max() for v in vals], color=color, alpha=0.15, lw=0)
        ax.plot(ns, [v.mean() for v in vals], "o-", color=color, ms=4, label=label)
    ax.set_xscale("log")
    if column == "heldout_loss":
        ax.set_yscale("log")
    _sizes_axis(ax, curves["n"], "training samples n", 7)


def _sizes_axis(ax, n, label: str, legend_size) -> None:
    """A log-n axis labelled at the sample sizes ``n`` drawn, a grid and the legend."""
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ns = np.sort(pd.unique(n))
    ax.set_xticks(ns, [str(int(v)) for v in ns], fontsize=7)
    ax.set_xlabel(label)
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(fontsize=legend_size)


def plot_curves(results: Path, out: Path) -> list[Path]:
    """``transformer_curves.png`` from a transformer run's ``curves.csv``: held-out loss and accuracy against
    n, and (with ``lr_search.csv``) the learning rate each parameterisation was tuned with at each n (hollow
    markers: a searched rate still on the edge of its widened grid)."""
    curves = pd.read_csv(results / "curves.csv")
    crates = pd.read_csv(results / "curve_rates.csv") if (results / "curve_rates.csv").exists() else None
    search = pd.read_csv(results / "lr_search.csv") if (results / "lr_search.csv").exists() else None
    fig, axes = plt.subplots(1, 3 if search is not None else 2, figsize=(16 if search is not None else 11, 4.2))
    _curve_panel(axes[0], curves, crates, "heldout_loss")
    axes[0].set_ylabel("held-out cross-entropy")
    _curve_panel(axes[1], curves, None, "accuracy")
    axes[1].set_ylabel("held-out accuracy")
    if search is not None:
        ax = axes[2]
        for kind, color in PARAM_COLORS.items():
            g = curves[curves["parameterisation"] == kind].groupby("n")["lr"].first()
            ch = search[(search["parameterisation"] == kind) & search["chosen"].astype(bool)]
            if not len(g):
                continue
            ax.plot(g.index, g.to_numpy(), "-", color=color, label=f"{kind} (used)")
            edge = ch["on_edge"].astype(bool).to_numpy()
            ax.plot(ch["n"][~edge], ch["lr"][~edge], "o", color=color, ms=6)
            ax.plot(ch["n"][edge], ch["lr"][edge], "o", mfc="none", color=color, ms=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ns = np.sort(curves["n"].unique())
        ax.set_xticks(ns, [str(int(n)) for n in ns], fontsize=7)
        ax.set_xlabel("training samples n")
        ax.set_ylabel("learning rate")
        ax.set_title("dots: searched; hollow: still on the widened grid's edge", fontsize=8)
        ax.grid(True, which="both", alpha=0.2)
        ax.legend(fontsize=7)
    fig.suptitle("Prefix-tuning a frozen transformer: learning curves (mean and range over seeds)")
    fig.tight_layout()
    path = out / "transformer_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def _teacher_cases(fits: pd.DataFrame) -> list[tuple[str, str]]:
    return list(dict.fromkeys(zip(fits["truth"], fits["parameterisation"])))


def plot_teacher(results, out: Path) -> list[Path]:
    """``teacher.png`` from a teacher-student run, or from runs of one design that split its cases
    (:func:`moe_estimation.transformer.teacher.load_runs`): per (truth, student) the prefix yardstick D_2
    on the (key, value) atoms, exact and over-specified, and the excess risk, against n."""
    fits, rates = load_runs(results)
    cases = _teacher_cases(fits)
    fig, axes = plt.subplots(2, len(cases), figsize=(4.0 * len(cases), 7.5), squeeze=False)
    for j, (truth, kind) in enumerate(cases):
        for i, loss in enumerate(("key_value", "excess_risk")):
            ax = axes[i, j]
            for spec, color in (("exact", "C0"), ("over", "C3")):
                g = fits[(fits["truth"] == truth) & (fits["parameterisation"] == kind) & (fits["specification"] == spec)]
                rr = rates[(rates["truth"] == truth) & (rates["parameterisation"] == kind)
                           & (rates["specification"] == spec)]
                if len(g):
                    _panel(ax, g, rr, loss, color=color, label_prefix=f"{spec}: ", losses=TEACHER_LOSSES)
            ax.set_title(f"{truth} truth, {kind} student", fontsize=9)
            ax.set_xlabel("n (sequences)")
            ax.set_ylabel("D_2 on the prefixes' (key, value)" if loss == "key_value" else "excess risk ||f - f*||^2")
            ax.legend(fontsize=6)
    fig.suptitle("Teacher-student prefix estimation in a frozen transformer")
    fig.tight_layout()
    path = out / "teacher.png"
    _save(fig, path)
    return [path]


def plot_teacher_anatomy(results, out: Path) -> list[Path]:
    """``teacher_anatomy.png``: the extra prefix of every over-specified student, against n, from the fits'
    recorded prefixes (:func:`moe_estimation.transformer.teacher.prefix_anatomy`; runs that recorded none draw
    nothing): its attention mass as a share of its cell's true prefix's (an invisible prefix falls to 0), its
    key's distance to the nearest true key, its value's error, and the students' D_2 weighted by exp(bias)
    (solid) and by attention mass (dashed); medians, with the quartiles shaded."""
    from ..transformer.teacher import prefix_anatomy, run_teachers

    fits, _ = load_runs(results)
    over = fits[fits["specification"] == "over"]
    anatomy = prefix_anatomy(over, run_teachers(results)[0])
    if not len(anatomy):
        return []
    extra = anatomy[anatomy["extra"].astype(bool)].assign(mass_share=lambda d: d["mass"] / d["true_mass"])
    if not len(extra):
        return []
    panels = (("mass_share", "extra prefix: mass / its cell's true mass"),
              ("key_to_nearest_true_key", "extra prefix: key to the nearest true key"),
              ("value_error", "extra prefix: value to its cell's true value"), (None, "D_2: by exp(bias) (solid), by mass (dashed)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False)
    cases = list(dict.fromkeys(zip(extra["truth"], extra["parameterisation"])))
    for (col, title), ax in zip(panels, axes[0]):
        for c, (truth, kind) in enumerate(cases):
            color = f"C{c}"
            if col is None:
                g = over[(over["truth"] == truth) & (over["parameterisation"] == kind)].dropna(subset=["mass_key_value"])
                for name, style in (("loss_key_value", "-"), ("mass_key_value", "--")):
                    q = g.groupby("n")[name].quantile([0.25, 0.5, 0.75]).unstack()
                    ax.plot(q.index, q[0.5], style, color=color, marker="o", ms=3,
                            label=f"{kind}, {truth}" if style == "-" else None)
            else:
                g = extra[(extra["truth"] == truth) & (extra["parameterisation"] == kind)]
                q = g.groupby("n")[col].quantile([0.25, 0.5, 0.75]).unstack()
                ax.fill_between(q.index, q[0.25], q[0.75], color=color, alpha=0.15, lw=0)
                ax.plot(q.index, q[0.5], "o-", color=color, ms=3, label=f"{kind}, {truth}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=8)
        _sizes_axis(ax, over["n"], "n (sequences)", 6)
    fig.suptitle("The extra prefix of over-specified students: invisible, or spread along its cell? (medians, quartiles)",
                 fontsize=10)
    fig.tight_layout()
    path = out / "teacher_anatomy.png"
    _save(fig, path)
    return [path]


def plot_combined(study: Path, transformer: Path | None, out: Path, teacher=None) -> Path:
    """The MoE rate panels (key/value yardstick, over-specified) beside the teacher-student transformer's
    (same loss, over-specified students of the shared truth, the MoE study's counterpart; ``teacher``: one
    run's directory or a list of them, as in :func:`plot_teacher`) and the transformer learning curves
    (when given)."""
    fits = pd.read_csv(fits_file(study))
    rates = pd.read_csv(study / "rates.csv")
    problems = [p for p in dict.fromkeys(fits["problem"])]
    if teacher:
        tfits, trates = load_runs(teacher)
    cases = [c for c in _teacher_cases(tfits) if c[0] == "shared"] if teacher else []
    ncol = len(problems) + len(cases) + (transformer is not None)
    fig, axes = plt.subplots(1, ncol, figsize=(4.0 * ncol, 4.2), squeeze=False)
    for ax in axes[0, 1:len(problems)]:
        ax.sharey(axes[0, 0])  # one y-scale for the MoE panels, so that their levels compare
    for j, (truth, kind) in enumerate(cases):
        ax = axes[0, len(problems) + j]
        if j:
            ax.sharey(axes[0, len(problems)])  # and one for the transformer's
        sel = (tfits["truth"] == truth) & (tfits["parameterisation"] == kind) & (tfits["specification"] == "over")
        rsel = (trates["truth"] == truth) & (trates["parameterisation"] == kind) & (trates["specification"] == "over")
        _panel(ax, tfits[sel], trates[rsel], "key_value", losses=TEACHER_LOSSES)
        ax.set_title(f"transformer: {kind} student, {truth} truth (over)", fontsize=8)
        ax.set_xlabel("n (sequences)")
        ax.legend(fontsize=6)
    for ax, prob in zip(axes[0], problems):
        g = fits[(fits["problem"] == prob) & (fits["specification"] == "over")]
        rr = rates[(rates["problem"] == prob) & (rates["specification"] == "over")]
        _panel(ax, g, rr, "key_value")
        ax.set_title(f"MoE: {prob} (over-specified)", fontsize=9)
        ax.set_xlabel("n")
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel("D_2 on (key, value) atoms")
    if transformer is not None:
        ax = axes[0, -1]
        _curve_panel(ax, pd.read_csv(transformer / "curves.csv"), pd.read_csv(transformer / "curve_rates.csv"),
                     "heldout_loss")
        ax.set_title("transformer: prefix-tuning held-out loss", fontsize=9)
    fig.suptitle("Shared vs free prefixes: MoE estimation rates (left)"
                 + (", a teacher's prefixes estimated in a transformer" if teacher else "")
                 + (", and prefix-tuning learning curves (right)" if transformer is not None else ""))
    fig.tight_layout()
    path = out / "combined.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_lab(results: Path, out: Path) -> list[Path]:
    """``lab_<loss>.png`` for a lab study (moe_estimation.lab): one panel a specification, each loss's mean,
    median, interquartile band and 90% quantile over replicates against n, with the fitted slope."""
    results = Path(results)
    fits, rates = pd.read_csv(results / "fits.csv"), pd.read_csv(results / "rates.csv")
    written = []
    for loss in [c[len("loss_"):] for c in fits.columns if c.startswith("loss_")]:
        specs = list(dict.fromkeys(fits["specification"]))
        fig, axes = plt.subplots(1, len(specs), figsize=(5.2 * len(specs), 4.2), squeeze=False)
        for ax, spec in zip(axes[0], specs):
            g = fits[fits["specification"] == spec]
            r = rates[(rates["specification"] == spec)]
            _panel(ax, g, r, loss, losses={loss: (f"loss_{loss}",)})
            shared = f", K1' = {int(g['num_shared'].iloc[0])} shared" if "num_shared" in g else ""
            ax.set_title(f"{spec} (K' = {int(g['num_components'].iloc[0])}{shared}), {g['estimator'].iloc[0]} fit; "
                         f"{_failures(g)}", fontsize=9)
            ax.set_xlabel("n")
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = Path(out) / f"lab_{loss}.png"
        _save(fig, path)
        written.append(path)
    return written


def plot_published(runs, loss: str, out: Path, name: str) -> list[Path]:
    """``<name>_<spec>.png`` for rebuilt published studies (``runs`` ``[(label, path), ...]``, lab studies on the
    same data sets; ``<name>_<spec>_k<K'>.png`` where a specification is fitted at several K'): one panel a run
    that fitted the specification, the loss's mean, median, interquartile band and
    90% quantile against n with its fitted slope and the declared theory, on one y-scale."""
    from .summary import spec_groups

    fits = [(label, pd.read_csv(Path(p) / "fits.csv"), pd.read_csv(Path(p) / "rates.csv")) for label, p in runs]
    written = []
    for spec, K, spec_label in spec_groups([f for _, f, _ in fits]):
        pick = lambda t: (t["specification"] == spec) & (t["num_components"] == K)
        mine = [(label, f[pick(f)], r[pick(r)]) for label, f, r in fits if pick(f).any()]
        fig, axes = plt.subplots(1, len(mine), figsize=(4.6 * len(mine), 4.0), squeeze=False, sharey=True)
        for ax, (label, g, r) in zip(axes[0], mine):
            _panel(ax, g, r, loss, losses={loss: (f"loss_{loss}",)})
            ax.set_title(f"{label}\n{spec} (K' = {int(g['num_components'].iloc[0])}); {_failures(g)}", fontsize=9)
            ax.set_xlabel("n")
            ax.legend(fontsize=6)
        axes[0][0].set_ylabel(loss)
        fig.tight_layout()
        path = Path(out) / (f"{name}_{spec}_k{K}.png" if spec_label != spec else f"{name}_{spec}.png")
        _save(fig, path)
        written.append(path)
    return written


def plot_inverse(results: Path, out: Path) -> list[Path]:
    """``inverse.png``: m(delta) against delta on log-log axes, one panel a loss, one line a (problem,
    specification), with the slope 2 of m of order delta^2 drawn through each line's smallest delta; an m at
    zero (at or below the run's zero floor, the zero set) is drawn on the panel's floor with an open marker.
    ``le_cam.png`` (when the run has a Le Cam table): n m / sigma^2 against n, one panel a problem, one line a
    (beta, c, delta)."""
    results = Path(results)
    table = pd.read_csv(results / "inverse.csv")
    summary = pd.read_csv(results / "inverse_summary.csv")
    floors = summary.groupby("problem")["zero_floor"].first()
    written = []
    losses = list(dict.fromkeys(table["loss"]))
    fig, axes = plt.subplots(1, len(losses), figsize=(6 * len(losses), 4.6), squeeze=False)
    positive = table["m"][table["m"] > table["problem"].map(floors)]
    low = positive.min() / 30 if len(positive) else 1e-12
    for ax, loss in zip(axes[0], losses):
        for i, ((prob, spec), g) in enumerate(table[table["loss"] == loss].groupby(["problem", "specification"], sort=False)):
            g = g.sort_values("delta")
            zero = g["m"] <= floors[prob]
            color = f"C{i}"
            row = summary[(summary["problem"] == prob) & (summary["specification"] == spec) & (summary["loss"] == loss)]
            slope = row["slope"].iloc[0] if len(row) else np.nan
            label = f"{prob} {spec}" + (f": slope {slope:.2f}" if np.isfinite(slope) else "")
            if zero.all():
                label += ": m = 0 (zero set)"
            ax.plot(g["delta"][~zero], g["m"][~zero], "o-", color=color, label=label)
            ax.plot(g["delta"][zero], np.full(int(zero.sum()), low), "o", mfc="none", color=color)
            if (~zero).any():
                d0, m0 = g["delta"][~zero].iloc[0], g["m"][~zero].iloc[0]
                ax.plot(g["delta"], m0 * (g["delta"] / d0) ** 2, ":", color=color, lw=1)
        ax.axhline(low, color="0.6", lw=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("delta = D(G, G*)")
        ax.set_ylabel("m(delta) = min ||f_G - f_G*||^2")
        ax.set_title(f"{LOSS_LABELS.get(loss, loss)}\n(dotted: slope 2; open markers on the grey line: m = 0)",
                     fontsize=9)
        ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, Path(out) / "inverse.png")
    written.append(Path(out) / "inverse.png")
    lecam_path = results / "le_cam.csv"
    lecam = pd.read_csv(lecam_path) if lecam_path.is_file() else pd.DataFrame()
    if len(lecam):
        probs = list(dict.fromkeys(lecam["problem"]))
        fig, axes = plt.subplots(1, len(probs), figsize=(6 * len(probs), 4.6), squeeze=False, sharey=True)
        for ax, prob in zip(axes[0], probs):
            g = lecam[lecam["problem"] == prob]
            deltas = sorted(g["delta"].unique())
            cs = sorted(g["c"].unique(), reverse=True)
            for (beta, c, delta), h in g.groupby(["beta", "c", "delta"], sort=False):
                h = h.sort_values("n")
                # colour: the loss value; line: solid for the moving truth, dashed for the fixed one; marker: c
                ax.plot(h["n"], h["snr"].clip(lower=1e-12), ("osD^v"[cs.index(c) % 5]) + ("-" if beta > 0 else "--"),
                        color=f"C{deltas.index(delta)}", label=f"beta {beta:g}, c {c:g}, D = {delta:g}")
            ax.axhline(1.0, color="0.5", lw=0.8)
            _log_axes(ax, sorted(g["n"].unique()))
            ax.set_ylabel("n ||f_G' - f_G_n||^2 / sigma^2")
            ax.set_title(f"{prob}: the nearest measure at loss D from the truth G_n\n(below the grey line: no data set "
                         "of size n tells them apart)", fontsize=9)
        # one legend under the panels: every panel draws the same (beta, c, D) lines
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=7, frameon=False)
        fig.tight_layout(rect=(0, 0.04 + 0.035 * -(-len(labels) // 6), 1, 1))
        _save(fig, Path(out) / "le_cam.png")
        written.append(Path(out) / "le_cam.png")
    return written


def plot_results(results, out) -> list[Path]:
    """Every figure for the given result directories (rate studies and/or transformer runs)."""
    out = check_out_dir(out)
    dirs = [Path(r) for r in ([results] if isinstance(results, (str, Path)) else results)]
    studies, transformers, teachers, inverse, labs = [], [], [], [], []
    for d in dirs:
        if (d / "inverse.csv").is_file() and (d / "inverse_summary.csv").is_file():
            inverse.append(d)
        elif (d / "fits.csv").is_file() and "num_components" in pd.read_csv(d / "fits.csv", nrows=0).columns:
            labs.append(d)
        elif fits_file(d).is_file() and "truth" in pd.read_csv(fits_file(d), nrows=0).columns:
            teachers.append(d)
        elif fits_file(d).is_file():
            studies.append(d)
        elif (d / "curves.csv").is_file():
            transformers.append(d)
        else:
            raise ValueError(f"--results: {d} holds neither fits.csv (a study), curves.csv (a transformer run) nor "
                             "inverse.csv with inverse_summary.csv (an inverse-bound run)")
    for kind, found in (("rate studies", studies), ("transformer runs", transformers), ("inverse-bound runs", inverse),
                        ("lab studies", labs)):
        if len(found) > 1:  # their figures have the same names: the second would overwrite the first
            raise ValueError(f"--results: {found[0]} and {found[1]} are both {kind}, whose figures have the same file "
                             "names (one would overwrite the other); draw them into separate --out folders")
    make_out_dir(out)
    written = []
    for d in studies:
        written += plot_study(d, out)
    for d in transformers:
        written += plot_curves(d, out)
    for d in inverse:
        written += plot_inverse(d, out)
    for d in labs:
        written += plot_lab(d, out)
    if teachers:  # several teacher runs: one design split over its cases, drawn as one (else refused)
        written += plot_teacher(teachers, out)
        written += plot_teacher_anatomy(teachers, out)
    single = [d for d in studies if pd.read_csv(fits_file(d), usecols=["schedule"])["schedule"].nunique() == 1]
    if single and (transformers or teachers):  # the combined figure shows one schedule's rates
        written.append(plot_combined(single[0], transformers[0] if transformers else None, out,
                                     teacher=teachers or None))
    return written
