"""Figures from a study's tables (the only module that imports matplotlib).

- ``rates_<problem>.png``: for one problem, a 2 x 2 grid (rows: the structure's own loss, the key/value
  yardstick; columns: exact, over-specified): mean over replicates with the 10-90% replicate band, the
  median, the OLS line with its slope and 95% bootstrap interval in the legend, and the theory slope
  drawn through the first mean. Fits that stopped on the step limit are counted in each panel's title.
- ``side_by_side.png``: every problem on the key/value yardstick, over-specified, with the key part
  and the value part of the loss drawn apart.
- ``transformer_curves.png``: held-out loss and accuracy against n for the three prefix
  parameterisations (mean over seeds with the seed range, fitted slopes in the legend).
- ``combined.png``: the MoE rate panels (key/value yardstick, over-specified) beside the transformer's
  learning curves.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from .study import RATE_LOSSES  # noqa: E402

LOSS_LABELS = {"own": "own loss (D_2 on p, or D_1,r on (pK, pV))", "key_value": "key/value yardstick D_2 on (k, v)"}


def _loss_values(g: pd.DataFrame, loss: str) -> np.ndarray:
    return g[list(RATE_LOSSES[loss])].sum(axis=1).to_numpy()


def _panel(ax, g: pd.DataFrame, rates: pd.DataFrame, loss: str, color="C0", label_prefix=""):
    ns = np.sort(g["n"].unique())
    vals = [_loss_values(g[g["n"] == n], loss) for n in ns]
    mean = np.array([np.mean(v) for v in vals])
    med = np.array([np.median(v) for v in vals])
    lo = np.array([np.quantile(v, 0.1) for v in vals])
    hi = np.array([np.quantile(v, 0.9) for v in vals])
    ax.fill_between(ns, lo, hi, color=color, alpha=0.15, lw=0)
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
        ax.plot(ns, mean[0] * (ns / ns[0]) ** r["theory_slope"], ":", color="gray", lw=1.5,
                label=f"theory {r['theory_slope']:g}" if r["theory_slope"] else "theory: slower than any n^-a")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xticks(ns[:: max(1, len(ns) // 6)], [f"{int(n):,}" for n in ns[:: max(1, len(ns) // 6)]], fontsize=7)
    ax.grid(True, which="both", alpha=0.2)


def plot_study(results: str | Path, out: str | Path) -> list[Path]:
    """Draw every study figure from ``results/fits.csv`` and ``results/rates.csv`` into ``out``."""
    results, out = Path(results), Path(out)
    for name in ("fits.csv", "rates.csv"):
        if not (results / name).is_file():
            raise ValueError(f"--results: {results} has no {name}; run `moe-estimation study --out {results}` first")
    fits = pd.read_csv(results / "fits.csv")
    rates = pd.read_csv(results / "rates.csv")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    problems = list(dict.fromkeys(fits["problem"]))
    specs = list(dict.fromkeys(fits["specification"]))
    for prob in problems:
        fig, axes = plt.subplots(2, len(specs), figsize=(5.2 * len(specs), 7.5), squeeze=False)
        for j, spec in enumerate(specs):
            g = fits[(fits["problem"] == prob) & (fits["specification"] == spec)]
            rr = rates[(rates["problem"] == prob) & (rates["specification"] == spec)]
            bad = int((~g["converged"].astype(bool)).sum())
            for i, loss in enumerate(("own", "key_value")):
                ax = axes[i, j]
                _panel(ax, g, rr, loss)
                L = int(g["num_prompts"].iloc[0])
                ax.set_title(f"{spec} (L'={L}); step limit/stall: {bad}/{len(g)}", fontsize=9)
                ax.set_ylabel(LOSS_LABELS[loss], fontsize=8)
                ax.set_xlabel("n")
                ax.legend(fontsize=7)
        fig.suptitle(f"{prob}: loss against n ({g['init'].iloc[0]} init)")
        fig.tight_layout()
        path = out / f"rates_{prob}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    spec = "over" if "over" in specs else specs[0]
    fig, axes = plt.subplots(1, len(problems), figsize=(4.2 * len(problems), 4.2), squeeze=False, sharey=True)
    for ax, prob in zip(axes[0], problems):
        g = fits[(fits["problem"] == prob) & (fits["specification"] == spec)]
        rr = rates[(rates["problem"] == prob) & (rates["specification"] == spec)]
        _panel(ax, g, rr, "key_value")
        for loss, color, lab in (("key_value_key_part", "C1", "key part "), ("key_value_value_part", "C2", "value part ")):
            ns = np.sort(g["n"].unique())
            ax.plot(ns, [np.mean(_loss_values(g[g["n"] == n], loss)) for n in ns], "^-", color=color, ms=3, lw=1,
                    label=f"{lab}mean")
        bad = int((~g["converged"].astype(bool)).sum())
        ax.set_title(f"{prob}\nstep limit/stall: {bad}/{len(g)}", fontsize=9)
        ax.set_xlabel("n")
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel("D_2 on (key, value) atoms")
    fig.suptitle(f"Structures side by side, {spec}-specified, on one yardstick")
    fig.tight_layout()
    path = out / "side_by_side.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
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
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ns = np.sort(curves["n"].unique())
    ax.set_xticks(ns, [str(int(n)) for n in ns], fontsize=7)
    ax.set_xlabel("training samples n")
    ax.grid(True, which="both", alpha=0.2)
    ax.legend(fontsize=7)


def plot_curves(results: Path, out: Path) -> list[Path]:
    """``transformer_curves.png`` from a transformer run's ``curves.csv``."""
    curves = pd.read_csv(results / "curves.csv")
    crates = pd.read_csv(results / "curve_rates.csv") if (results / "curve_rates.csv").exists() else None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    _curve_panel(axes[0], curves, crates, "heldout_loss")
    axes[0].set_ylabel("held-out cross-entropy")
    _curve_panel(axes[1], curves, None, "accuracy")
    axes[1].set_ylabel("held-out accuracy")
    fig.suptitle("Prefix-tuning a frozen transformer: learning curves (mean and range over seeds)")
    fig.tight_layout()
    path = out / "transformer_curves.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_combined(study: Path, transformer: Path, out: Path) -> Path:
    """The MoE rate panels (key/value yardstick, over-specified) beside the transformer learning curves."""
    fits = pd.read_csv(study / "fits.csv")
    rates = pd.read_csv(study / "rates.csv")
    curves = pd.read_csv(transformer / "curves.csv")
    crates = pd.read_csv(transformer / "curve_rates.csv")
    problems = [p for p in dict.fromkeys(fits["problem"])]
    fig, axes = plt.subplots(1, len(problems) + 1, figsize=(4.0 * (len(problems) + 1), 4.2), squeeze=False)
    for ax in axes[0, 1:-1]:
        ax.sharey(axes[0, 0])  # one y-scale for the MoE panels, so that their levels compare
    for ax, prob in zip(axes[0], problems):
        g = fits[(fits["problem"] == prob) & (fits["specification"] == "over")]
        rr = rates[(rates["problem"] == prob) & (rates["specification"] == "over")]
        _panel(ax, g, rr, "key_value")
        ax.set_title(f"MoE: {prob} (over-specified)", fontsize=9)
        ax.set_xlabel("n")
        ax.legend(fontsize=6)
    axes[0, 0].set_ylabel("D_2 on (key, value) atoms")
    ax = axes[0, -1]
    _curve_panel(ax, curves, crates, "heldout_loss")
    ax.set_title("transformer: prefix-tuning held-out loss", fontsize=9)
    fig.suptitle("Shared vs free prefixes: MoE estimation rates (left) and a prefix-tuned transformer (right)")
    fig.tight_layout()
    path = out / "combined.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_results(results, out) -> list[Path]:
    """Every figure for the given result directories (rate studies and/or transformer runs)."""
    out = Path(out)
    dirs = [Path(r) for r in ([results] if isinstance(results, (str, Path)) else results)]
    studies, transformers = [], []
    for d in dirs:
        if (d / "fits.csv").is_file():
            studies.append(d)
        elif (d / "curves.csv").is_file():
            transformers.append(d)
        else:
            raise ValueError(f"--results: {d} holds neither fits.csv (a study) nor curves.csv (a transformer run)")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for d in studies:
        written += plot_study(d, out)
    for d in transformers:
        written += plot_curves(d, out)
    if studies and transformers:
        written.append(plot_combined(studies[0], transformers[0], out))
    return written
