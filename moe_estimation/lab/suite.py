"""One model, several estimators and start schedules on the same data sets: a suite of lab studies, and the
named presets of the rebuilt published studies (README *The published simulations, rebuilt*).

A suite is a lab configuration (:mod:`moe_estimation.lab.study`) whose ``[fit]`` table is replaced by one table
``[fits.NAME]`` a way of fitting, each a ``[fit]`` table with a ``label`` (its description in the tables) and,
optionally, ``specifications`` (a subset of ``grid.specifications`` it fits), ``extra_components`` (its own
number of components added when over-specified; ways are compared only with those fitting as many), and ``model``,
``truth`` and ``rates`` tables whose keys replace the study's (another gate or expert fitted to the same data, its truth
the same regression function in its own parameters; its fits pair with the others' data set by data set, and a
best of all pools only the ways of one model):

    [fits.source]
    label = "the source's EM and start"
    estimator = "em"
    init = "sgame-source"
    restarts = 1
    [fits.random]
    label = "direct ML, random starts"
    init = "random"
    init_scale = 1.0
    restarts = 8

``moe-estimation study --config FILE --out DIR`` runs each into ``DIR/NAME``, a lab study of its own (resumable,
its config.json the resolved single study), in the order written; every one draws its data from the same seed,
so the suite's fits pair data set by data set. Then ``DIR/comparison.md`` (:func:`suite_markdown`): per declared
loss and specification, each way's mean and median slopes and the best-of-all fit per data set (the lowest
objective of all ways, each the same mean negative log-likelihood or mean squared residual of the same data), and
the paired comparisons (:func:`paired_table`): how often each way's fit is the best one on a data set, and the
difference of two ways' slopes with a bootstrap interval that resamples data sets, not fits.

Presets: the TOML files in this package's ``presets`` folder, by name (:data:`LAB_PRESETS`); a preset's ``[full]``
table holds the source-sized settings (its own grid, replicates), run as ``NAME-full``
(:func:`lab_preset`).
"""

from __future__ import annotations

import copy
import itertools
import json
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd

from ..experiments.results import atomic_write, loss_matrix, rate_entries
from ..rates import ols_line, statistic_of

PRESET_DIR = Path(__file__).with_name("presets")
LAB_PRESETS = tuple(sorted(p.stem for p in PRESET_DIR.glob("*.toml")))
"""The rebuilt published studies, CPU-sized; each also as ``NAME-full`` (the source's own grid)."""
LAB_PRESET_NAMES = LAB_PRESETS + tuple(f"{name}-full" for name in LAB_PRESETS)


def lab_preset(name: str) -> dict:
    """The parsed configuration of a preset (``NAME`` or ``NAME-full``: ``[full]``'s tables replace the CPU-sized
    ones, key by key at the top level of each table)."""
    base = name[:-5] if name.endswith("-full") and name[:-5] in LAB_PRESETS else name
    if base not in LAB_PRESETS:
        raise ValueError(f"--preset: no lab preset named {name!r}; the presets are {list(LAB_PRESET_NAMES)}")
    data = tomllib.loads((PRESET_DIR / f"{base}.toml").read_text())
    full = data.pop("full", {})
    if base != name:
        if not full:
            raise ValueError(f"--preset: {base!r} declares no [full] size")
        for table, values in full.items():
            data[table] = {**data.get(table, {}), **values} if isinstance(values, dict) else values
    return data


def is_suite(data: dict) -> bool:
    return "fits" in data


def split_suite(data: dict, source: str = "<config>") -> list[tuple[str, str, dict]]:
    """``[(name, label, configuration of one lab study)]`` of a suite, in the order written; ``ValueError`` naming
    the key for a suite that is not one."""
    fits = data.get("fits")
    if "fit" in data:
        raise ValueError(f"{source}: fit: a suite declares its ways of fitting as [fits.NAME] tables, not [fit]")
    if not isinstance(fits, dict) or not fits:
        raise ValueError(f"{source}: fits: expected one or more tables [fits.NAME], each a [fit] table with a label")
    specs = data.get("grid", {}).get("specifications", ["exact", "over"])
    out, labels = [], {}
    for name, table in fits.items():
        if not isinstance(table, dict):
            raise ValueError(f"{source}: fits.{name}: expected a table (a [fit] table with a label), got {table!r}")
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise ValueError(f"{source}: fits.{name}: a way's name becomes a folder: letters, digits, '-' and '_' only")
        table = dict(table)
        label = table.pop("label", name)
        if not isinstance(label, str) or not label:
            raise ValueError(f"{source}: fits.{name}.label: expected a non-empty string, got {label!r}")
        if label in labels:  # the tables tell the ways apart by their labels
            raise ValueError(f"{source}: fits.{name}.label: {label!r} labels fits.{labels[label]} already; give each way "
                             "its own")
        labels[label] = name
        single = copy.deepcopy({k: v for k, v in data.items() if k != "fits"})
        for part in ("model", "truth", "rates"):  # a way of another model on the same data (its own truth's parameters)
            if part in table:
                own_part = table.pop(part)
                if not isinstance(own_part, dict):
                    raise ValueError(f"{source}: fits.{name}.{part}: expected a table of [{part}] keys to replace, got "
                                     f"{own_part!r}")
                single[part] = {**single.get(part, {}), **copy.deepcopy(own_part)}
        own = table.pop("specifications", None)
        if own is not None:
            if not isinstance(own, list) or not own or any(s not in specs for s in own):
                raise ValueError(f"{source}: fits.{name}.specifications: expected a non-empty subset of grid.specifications "
                                 f"{specs}, got {own!r}")
            single.setdefault("grid", {})["specifications"] = [s for s in specs if s in own]
            theory = single.get("rates", {}).get("theory", {})
            for loss, value in theory.items():  # a theory table of specifications this way does not fit
                if isinstance(value, dict):
                    theory[loss] = {s: v for s, v in value.items() if s in own}
        extra = table.pop("extra_components", None)
        if extra is not None:  # a way fitting another number of components (compared only with its like)
            if isinstance(extra, bool) or not isinstance(extra, int) or extra < 1:
                raise ValueError(f"{source}: fits.{name}.extra_components: expected an integer >= 1, got {extra!r}")
            single.setdefault("grid", {})["extra_components"] = extra
        single["fit"] = table
        out.append((name, label, single))
    return out


def run_lab_suite(data: dict, out, source: str = "<config>", *, log=print, **options) -> dict:
    """Run (or resume) every way of a suite into ``out/NAME`` (:func:`moe_estimation.lab.study.run_lab_study`
    with ``options``), then write ``out/suite.json`` and ``out/comparison.md``. Every way's configuration is
    checked before the first is fitted. Returns ``{name: fits}``."""
    from .study import parse_lab_config, run_lab_study

    ways = [(name, label, parse_lab_config(single, f"{source} [fits.{name}]")) for name, label, single in
            split_suite(data, source)]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fits = {}
    for name, label, study in ways:
        log(f"{out / name}: {label}")
        fits[name] = run_lab_study(study, out / name, log=log, **options)
    atomic_write(out / "suite.json", json.dumps({"ways": [{"name": n, "label": lab} for n, lab, _ in ways],
                                                "losses": list(ways[0][2].losses)}, indent=2) + "\n")
    atomic_write(out / "comparison.md", suite_markdown(out) + "\n")
    return fits


def suite_ways(path) -> tuple[list[tuple[str, Path]], list[str]]:
    """(``[(label, folder)]``, declared losses) of a finished suite folder (its suite.json)."""
    path = Path(path)
    meta = json.loads((path / "suite.json").read_text())
    return [(w["label"], path / w["name"]) for w in meta["ways"]], meta["losses"]


def paired_table(runs, loss: str, num_bootstrap: int = 2000, seed: int = 0) -> pd.DataFrame:
    """The ways of fitting compared data set by data set (``runs`` ``[(label, folder)]`` on common data). Per
    specification and way: ``best_share``, the fraction of the data sets fitted by every way on which this way's
    objective is the lowest among the ways of its model (within 1e-9 relative; ties count for each);
    ``median_gap``, the median excess of its objective over that lowest. Per pair of ways (``way`` against ``other``): the difference of their mean-loss
    slopes with a bootstrap interval that resamples data sets (replicates) jointly for both, so that what the
    ways share (the data) cancels."""
    from ..report.summary import lab_model, spec_groups

    frames = []
    for label, p in runs:
        f = pd.read_csv(Path(p) / "fits.csv")
        frames.append(f.assign(_way=label, _model=lab_model(p)))
    both = pd.concat(frames, ignore_index=True)
    rows = []
    for spec_name, K, spec in spec_groups([both]):
        g = both[(both["specification"] == spec_name) & (both["num_components"] == K)]
        labels = list(dict.fromkeys(g["_way"]))
        if len(labels) < 2:
            continue
        common = g.groupby(["n", "replicate"])["_way"].transform("nunique") == len(labels)
        g = g[common]
        if not len(g):
            continue
        # the best objective of a data set among the ways of one model (another model's objective is another fit's)
        obj = g["objective"].where(np.isfinite(g["objective"]), np.inf)
        low = obj.groupby([g["_model"], g["n"], g["replicate"]]).transform("min")
        best = obj <= low + 1e-9 * np.abs(low)
        for label in labels:
            mine = g["_way"] == label
            rows.append(dict(specification=spec, way=label, other="", best_share=float(best[mine].mean()),
                             median_gap=float((obj - low)[mine].median()), slope_difference=np.nan, ci_low=np.nan,
                             ci_high=np.nan, data_sets=int(mine.sum()), note=""))
        mats = {}
        for label in labels:
            ns, mat = loss_matrix(g[g["_way"] == label], f"loss_{loss}", replicate="replicate")
            mats[label] = (ns, mat)
        rng = np.random.default_rng(seed)
        for a, b in itertools.combinations(labels, 2):
            (ns, ma), (_, mb) = mats[a], mats[b]
            point = _slope(ns, ma) - _slope(ns, mb)
            draws = []
            R = ma.shape[1]
            for _ in range(num_bootstrap):
                idx = rng.integers(0, R, size=(len(ns), R))
                ra, rb = np.take_along_axis(ma, idx, 1), np.take_along_axis(mb, idx, 1)
                draws.append(_slope(ns, ra) - _slope(ns, rb))
            draws = np.asarray(draws)
            bad = int((~np.isfinite(draws)).sum())
            draws = draws[np.isfinite(draws)]
            lo, hi = (np.quantile(draws, [0.025, 0.975]) if len(draws) > 0.9 * num_bootstrap else (np.nan, np.nan))
            note = f"{bad} of {num_bootstrap} resamples without a slope" + (" (no interval)" if np.isnan(lo) else "") \
                if bad else ""
            rows.append(dict(specification=spec, way=a, other=b, best_share=np.nan, median_gap=np.nan,
                             slope_difference=point, ci_low=float(lo), ci_high=float(hi), data_sets=int(R * len(ns)),
                             note=note))
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


PAIRED_COLUMNS = ["specification", "way", "other", "best_share", "median_gap", "slope_difference", "ci_low", "ci_high",
                  "data_sets", "note"]


def _slope(ns, mat) -> float:
    """The slope of log(mean finite loss) on log n (NaN where a size has no positive finite loss)."""
    m = np.where(np.isfinite(mat), mat, np.nan)
    with np.errstate(all="ignore"):
        point = statistic_of(m, "mean", axis=1)
    if not np.all(np.isfinite(point) & (point > 0)):
        return np.nan
    return float(ols_line(np.log(ns), np.log(point))[0])


def suite_markdown(path) -> str:
    """A suite's tables in markdown: per declared loss, the ways' slopes and their best of all
    (:func:`moe_estimation.report.summary.published_table`), then the paired comparisons (:func:`pairs_markdown`)."""
    from ..report.summary import published_table

    runs, losses = suite_ways(path)
    parts = [f"### loss {loss}\n\n" + published_table(runs, loss) for loss in losses]
    pairs = pairs_markdown(runs, losses[0])
    return "\n\n".join(parts + ([f"### the ways compared on common data sets (slopes of loss {losses[0]})\n\n" + pairs]
                                 if pairs else []))


def pairs_markdown(runs, loss: str) -> str:
    """The paired comparisons of ``runs`` ``[(label, folder)]`` (:func:`paired_table`, its bootstrap seeded by the
    first run's seed) in markdown: the share of data sets on which each way reaches its model's best objective,
    then the slope differences of every pair; empty when no specification has two ways."""
    seed = json.loads((Path(runs[0][1]) / "config.json").read_text())["study"].get("seed", 0)
    pairs = paired_table(runs, loss, seed=seed)
    if not len(pairs):
        return ""
    share = pairs[pairs["other"] == ""]
    lines = ["| spec | way | best fit on (share of data sets; best among its model's ways) | median objective above "
             "that best |", "|---|---|---|---|"]
    lines += [f"| {r.specification} | {r.way} | {r.best_share:.2f} | {r.median_gap:.3g} |" for r in share.itertuples()]
    diffs = pairs[pairs["other"] != ""]
    if len(diffs):
        lines += ["", "| spec | way | against | mean-loss slope difference [95% CI, data sets resampled] |", "|---|---|---|---|"]
        fmt = lambda r: ((f"{r.slope_difference:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}]"
                          if np.isfinite(r.slope_difference) else "-") + (f" ({r.note})" if r.note else ""))
        lines += [f"| {r.specification} | {r.way} | {r.other} | {fmt(r)} |" for r in diffs.itertuples()]
    return "\n".join(lines)
