"""What a study's fits say beyond one slope: distributions, failing fractions, paired differences.

Every table here is computed from ``fits.csv`` alone (``moe-estimation study --tables-only`` rebuilds them
without fitting), over the configuration's declared quantiles, thresholds and rate window
(:class:`moe_estimation.experiments.config.StudyConfig`), the same for every row: nothing is tuned per row.

- :func:`quantiles_table` (``quantiles.csv``): per (problem, specification, schedule, loss, n), the mean and
  the declared quantiles of the loss over replicates. The shared theorem is an O_P statement: every
  quantile must shrink, the upper ones included; ``rates.csv`` carries a slope per quantile.
- :func:`failing_table` (``failing.csv``): per (problem, specification, schedule, loss, n), the fraction of
  fits whose loss exceeds the loss's declared threshold (a non-finite fit fails), its exact binomial 95%
  interval, and a trend test of that fraction in log n over the rate window. A mean slope cannot tell "the
  loss shrinks slowly" from "a fixed fraction of fits never converges"; the failing fraction can.
- :func:`with_best_of_all`: the least-squares estimate of each data set, as far as the study can say: of
  every schedule's fit of one data set (every restart of each), the one with the lowest objective, as an
  arm of its own (schedule ``best-of-all``) in every table of a study with several schedules. It uses no
  knowledge of the truth. :func:`lowest_table` (``lowest.csv``): how often each schedule reached that
  lowest objective, and by how much it missed it otherwise.
- :func:`bounds_table` (``bounds.csv``): ``at_bound`` resolved: per arm and n, how many fits have a bias on
  the lower bound of the box (a prompt switched down to the smallest weight the box allows), a bias on the
  upper bound, or an atom coordinate on the box, each told apart by the prompt's cell: alone in its
  (key, value) cell or sharing it with another fitted prompt.
- :func:`differences_table` (``differences.csv``): for every pair of arms that share their data sets (two
  problems, two specifications or two schedules, the rest held fixed), the difference of their slopes with
  a paired bootstrap interval (:func:`moe_estimation.rates.paired_rate_difference`). The presets share one
  regression function and replicate r's data do not depend on the arm, so these comparisons are paired.
"""

from __future__ import annotations

from itertools import combinations
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..lab.prefix import from_params, from_problem
from ..prefix.model import Params
from .config import StudyConfig
from ..rates import (Trend, binomial_interval, empirical_rate, ols_line, paired_rate_difference, percentile_interval,
                    quantile_statistic, statistic_of, trend_test)
from .results import RATE_LOSSES, SCHEDULE_COLUMNS, loss_matrix, parse_params
from ..prefix.structures import key_value
from ..prefix.voronoi import voronoi_cells

ARM = ["problem", "specification", "schedule"]
BEST = "best-of-all"
# two objectives within this relative distance are one minimum (the solver stops at ftol = 1e-8)
TIE = 1e-9


def _loss(g: pd.DataFrame, loss: str) -> np.ndarray:
    cols = RATE_LOSSES.get(loss, (f"loss_{loss}",))  # a declared loss: its column (with_declared_losses)
    return g[list(cols)].sum(axis=1, min_count=len(cols)).to_numpy(float)


def with_declared_losses(fits: pd.DataFrame, cfg: StudyConfig) -> pd.DataFrame:
    """``fits`` with a column ``loss_NAME`` for every loss the configuration declares (``[rates.losses.NAME]``),
    each measured on the row's stored fit (``params``) against its stored truth (``true_params``: a truth that
    moves with n is the one the fit was scored against) through the problem's lab assembly
    (:func:`moe_estimation.lab.from_problem`). Scoring is not fitting: a loss declared after the fits is
    measured on them, and nothing is refitted. A fit with no finite parameters scores NaN."""
    if not cfg.losses or not len(fits):
        return fits
    out = fits.copy()
    values = {name: np.full(len(fits), np.nan) for name in cfg.losses}
    losses = {name: cfg.declared_loss(name) for name in cfg.losses}
    for (prob_name, Lp), g in fits.groupby(["problem", "num_prompts"], sort=False):
        model, _ = from_problem(cfg.problem(prob_name))
        D = model.structure.atom_dim
        fitted = [parse_params(t, int(Lp), D) for t in g["params"]]
        truths = [parse_params(t, len(str(t).split()) // (D + 1), D) for t in g["true_params"]]
        fm = from_params(Params(jnp.asarray(np.stack([p.atoms for p in fitted])),
                                jnp.asarray(np.stack([p.biases for p in fitted]))))
        tm = from_params(Params(jnp.asarray(np.stack([p.atoms for p in truths])),
                                jnp.asarray(np.stack([p.biases for p in truths]))))
        pos = fits.index.get_indexer(g.index)
        for name, loss in losses.items():
            values[name][pos] = np.asarray(jax.vmap(lambda f, t: loss(model, f, t))(fm, tm))
    for name, v in values.items():
        out[f"loss_{name}"] = v
    return out


def _groups(fits: pd.DataFrame):
    for (prob, spec, schedule), g in fits.groupby(ARM, sort=False):
        yield dict(problem=prob, structure=g["structure"].iloc[0], specification=spec,
                   **{c: g[c].iloc[0] for c in SCHEDULE_COLUMNS}), g


def _lowest(fits: pd.DataFrame) -> pd.Series:
    """Per row, its data set's lowest finite objective over the schedules (NaN when none is finite)."""
    obj = fits["objective"].where(np.isfinite(fits["objective"]))
    return obj.groupby([fits[c] for c in ("problem", "specification", "n", "replicate")]).transform("min")


def with_best_of_all(fits: pd.DataFrame) -> pd.DataFrame:
    """``fits`` and, when it holds two schedules or more, one more arm: schedule ``best-of-all``, whose fit
    of a data set (problem, specification, n, replicate) is the fit of lowest objective over every schedule
    that fitted it (ties to the schedule listed first; a data set with no finite objective keeps the first
    schedule's fit). Its ``init`` is ``best-of-all``, ``init_scale`` and ``init_rate`` are NaN, ``restarts``
    the sum of the schedules' and ``seconds`` the sum of their times; the chosen schedule is in
    ``best_schedule``. A data set that some schedule has not fitted yet (a study stopped part-way) has no
    best-of-all row, so that the arm never mixes a best of two with a best of five."""
    schedules = list(dict.fromkeys(fits["schedule"]))
    if len(schedules) < 2:
        return fits
    key = ["problem", "specification", "n", "replicate"]
    rank = fits["schedule"].map({s: i for i, s in enumerate(schedules)})
    obj = fits["objective"].where(np.isfinite(fits["objective"]), np.inf)
    order = fits.assign(_obj=obj, _rank=rank).sort_values(key + ["_obj", "_rank"], kind="stable")
    complete = order.groupby(key)["schedule"].transform("nunique") == len(schedules)
    best = order[complete].groupby(key, sort=False).head(1)
    totals = order[complete].groupby(key)[["restarts", "seconds"]].transform("sum")
    best = best.assign(best_schedule=best["schedule"], schedule=BEST, init=BEST, init_scale=np.nan, init_rate=np.nan,
                       restarts=totals.loc[best.index, "restarts"].astype(int), seconds=totals.loc[best.index, "seconds"])
    first = {c: {v: i for i, v in enumerate(dict.fromkeys(fits[c]))} for c in ("problem", "specification")}
    best = best.sort_values(["problem", "specification", "n", "replicate"], kind="stable",
                            key=lambda col: col.map(first[col.name]) if col.name in first else col)
    return pd.concat([fits, best.drop(columns=["_obj", "_rank"])], ignore_index=True)  # in the study's order


def lowest_table(fits: pd.DataFrame) -> pd.DataFrame:
    """One row per (problem, specification, schedule, n): ``data_sets``, ``lowest`` (data sets on which this
    schedule's fit reached the lowest objective of every schedule, within a relative 1e-9: ties count for
    each), ``median_excess`` and ``max_excess`` (its objective over the lowest, relative: (F - F_min) / F_min)
    and ``nonfinite`` (fits with no finite objective)."""
    low = _lowest(fits)
    excess = (fits["objective"] - low) / low
    out = []
    for (prob, spec, schedule, n), g in fits.assign(_excess=excess).groupby(
            ["problem", "specification", "schedule", "n"], sort=False):
        finite = np.isfinite(g["objective"])
        out.append(dict(problem=prob, structure=g["structure"].iloc[0], specification=spec, schedule=schedule,
                        **{c: g[c].iloc[0] for c in SCHEDULE_COLUMNS if c != "schedule"}, n=int(n),
                        data_sets=len(g), lowest=int((finite & (g["_excess"] <= TIE)).sum()),
                        median_excess=float(g["_excess"][finite].median()) if finite.any() else np.nan,
                        max_excess=float(g["_excess"][finite].max()) if finite.any() else np.nan,
                        nonfinite=int((~finite).sum())))
    return pd.DataFrame(out)


BOUND_COLUMNS = ("bias_low_shared", "bias_low_alone", "bias_high", "atom_shared", "atom_alone")


def bounds_table(fits: pd.DataFrame, cfg: StudyConfig) -> pd.DataFrame:
    """One row per (problem, specification, schedule, n): ``fits``, ``at_bound`` (fits with some coordinate
    on the box) and, from each fit's ``bound_coordinates`` and ``params``, the fits with a prompt whose bias
    is on the lower bound and which shares its (key, value) Voronoi cell with another fitted prompt
    (``bias_low_shared``: the extra prompt of a split cell switched down) or is alone in it
    (``bias_low_alone``), with a bias on the upper bound (``bias_high``), and with an atom coordinate on the
    box of a prompt that shares its cell (``atom_shared``) or is alone (``atom_alone``). A fit counts once
    in each column that applies to it."""
    problems = {name: cfg.problem(name) for name in fits["problem"].unique()}
    truths = {}  # (problem, n) -> the true (key, value) pairs there (a moving truth's depend on n)
    out = []
    for (prob_name, spec, schedule, n), g in fits.groupby(["problem", "specification", "schedule", "n"], sort=False):
        prob = problems[prob_name]
        if (prob_name, n) not in truths:
            at_n = cfg.problem(prob_name, int(n)) if cfg.moving(prob_name) else prob
            truths[prob_name, n] = np.concatenate([np.asarray(a) for a in at_n.true_key_value()], axis=1)
        truth = truths[prob_name, n]
        counts = dict.fromkeys(BOUND_COLUMNS, 0)
        for row in g.itertuples(index=False):
            if row.bound_coordinates == "none":
                continue
            p = parse_params(row.params, int(row.num_prompts), prob.atom_dim)
            k, v = (np.asarray(a) for a in key_value(prob, p.atoms))
            cell = np.asarray(voronoi_cells(np.concatenate([k, v], 1), truth))
            shared = np.bincount(cell, minlength=len(truth))[cell] > 1
            hit = set()
            for name in row.bound_coordinates.split():
                i = int(name[1:].split("[")[0].rstrip("+-"))
                role = "shared" if shared[i] else "alone"
                if name.startswith("b"):
                    hit.add(f"bias_low_{role}" if name.endswith("-") else "bias_high")
                else:
                    hit.add(f"atom_{role}")
            for c in hit:
                counts[c] += 1
        out.append(dict(problem=prob_name, structure=prob.structure, specification=spec,
                        **{c: g[c].iloc[0] for c in SCHEDULE_COLUMNS}, n=int(n), fits=len(g),
                        at_bound=int((g["bound_coordinates"] != "none").sum()), **counts))
    return pd.DataFrame(out)


def quantiles_table(fits: pd.DataFrame, cfg: StudyConfig) -> pd.DataFrame:
    """One row per (problem, specification, schedule, loss, n): ``fits`` (finite losses), ``zeros`` (exactly
    zero, kept: a zero is a value, not a missing fit), ``nonfinite``, ``mean`` and one column per declared
    quantile (``q25``, ``median``, ``q75``, ``q90`` by default) over the finite losses. Every n, not only the
    rate window. A loss that is zero in every fit of a group (the spread, when no cell holds two atoms) has
    no rows."""
    names = [quantile_statistic(q) for q in cfg.quantiles]
    out = []
    for keys, g in _groups(fits):
        for loss in cfg.rate_losses:
            values = _loss(g, loss)
            if not np.any(values[np.isfinite(values)] != 0):
                continue
            for n in sorted(g["n"].unique()):
                v = values[(g["n"] == n).to_numpy()]
                ok = v[np.isfinite(v)]
                row = dict(keys, loss=loss, n=int(n), fits=int(ok.size), zeros=int((ok == 0).sum()),
                           nonfinite=int((~np.isfinite(v)).sum()), mean=float(ok.mean()) if ok.size else np.nan)
                qs = np.quantile(ok, cfg.quantiles) if ok.size else np.full(len(names), np.nan)
                row.update({name: float(q) for name, q in zip(names, qs)})
                out.append(row)
    return pd.DataFrame(out)


def failing_table(fits: pd.DataFrame, cfg: StudyConfig) -> pd.DataFrame:
    """One row per (problem, specification, schedule, loss with a declared threshold, n): ``threshold``,
    ``fits``, ``failing`` (loss above the threshold, or not finite), ``failing_at_bound`` (of those, the fits
    with some coordinate on the box; the others are interior solutions), ``fraction`` with its exact 95%
    interval ``ci_low``, ``ci_high``; and, repeated on the rows of one group, the Cochran-Armitage test of a
    trend in log n over the rate window [n_min, n_max] (``trend_z`` < 0: the fraction falls with n;
    ``trend_p``, two-sided; ``trend_slope``: the change of the fraction per unit of log n) and
    ``in_window``, whether the row's n is in it; the trend is NaN while the window holds fewer than two
    finished sizes."""
    out = []
    for keys, g in _groups(fits):
        for loss, threshold in cfg.fail_thresholds.items():
            values = _loss(g, loss)
            ns = np.array(sorted(g["n"].unique()))
            at_n = [(g["n"] == n).to_numpy() for n in ns]  # each size's rows
            fail = ~(values <= threshold)  # NaN fails
            boxed = fail & (g["bound_coordinates"] != "none").to_numpy()
            m = np.array([int(rows.sum()) for rows in at_n])
            k = np.array([int(fail[rows].sum()) for rows in at_n])
            k_box = [int(boxed[rows].sum()) for rows in at_n]
            lo, hi = binomial_interval(k, m)
            window = (ns >= cfg.n_min) & (ns <= cfg.n_max)
            if window.sum() >= 2:
                trend = trend_test(np.log(ns[window]), k[window], m[window])
            else:  # a study stopped before two sizes of its window: no trend to test yet
                trend = Trend(np.nan, np.nan, np.nan)
            for i, n in enumerate(ns):
                out.append(dict(keys, loss=loss, threshold=float(threshold), n=int(n), fits=int(m[i]),
                                failing=int(k[i]), failing_at_bound=k_box[i], fraction=float(k[i] / m[i]),
                                ci_low=float(lo[i]),
                                ci_high=float(hi[i]), in_window=bool(window[i]), trend_z=trend.z,
                                trend_p=trend.p_value, trend_slope=trend.slope))
    return pd.DataFrame(out)


def paired_arms(fits: pd.DataFrame, cfg: StudyConfig):
    """Pairs of arms on common data: along one of problem, specification, schedule, the other two fixed; two
    problems only where they are paired on common data (:meth:`StudyConfig.pairing`)."""
    present = set(map(tuple, fits[ARM].drop_duplicates().to_numpy()))
    order = dict(problem=cfg.problems, specification=cfg.specifications, schedule=cfg.schedule_names + (BEST,))
    pairing = {name: cfg.pairing(name) for name in cfg.problems}
    for axis in ARM:
        others = [a for a in ARM if a != axis]
        fixed = sorted({tuple(x for a, x in zip(ARM, arm) if a != axis) for arm in present})
        for rest in fixed:
            values = [v for v in order[axis] if _arm(axis, v, others, rest) in present]
            for a, b in combinations(values, 2):
                if axis == "problem" and pairing[a] != pairing[b]:
                    continue
                yield axis, _arm(axis, a, others, rest), _arm(axis, b, others, rest)


def _arm(axis, value, others, rest) -> tuple:
    d = dict(zip(others, rest), **{axis: value})
    return tuple(d[a] for a in ARM)


def differences_table(fits: pd.DataFrame, cfg: StudyConfig, statistics=None) -> pd.DataFrame:
    """One row per pair of arms on common data sets (see the module docstring), loss and statistic: ``axis``
    (what differs: problem, specification or schedule), ``a`` and ``b`` (its two values), the fixed
    ``problem``/``specification``/``schedule`` (the differing one left empty), ``slope_a``, ``slope_b``,
    ``difference`` = slope_a - slope_b with its paired 95% bootstrap interval, ``pairs`` (replicates with a
    finite loss in both arms at every n; exact zeros are values and are kept). Over the rate window, with the
    same bootstrap settings as ``rates.csv``; a statistic that is 0 at some n in either arm (no log) has no
    row."""
    statistics = statistics or cfg.statistics
    window = fits[(fits["n"] >= cfg.n_min) & (fits["n"] <= cfg.n_max)]
    by_arm = {k: g for k, g in window.groupby(ARM, sort=False)}
    out = []
    for axis, arm_a, arm_b in paired_arms(window, cfg):
        ga, gb = by_arm[arm_a], by_arm[arm_b]
        fixed = {a: (v if a != axis else "") for a, v in zip(ARM, arm_a)}
        for loss in cfg.rate_losses:
            mats = []
            for g in (ga, gb):
                ns, mat = loss_matrix(g, _loss(g, loss), replicate="replicate")
                mats.append((ns, mat))
            (na, a), (nb, b) = mats
            if not np.array_equal(na, nb) or a.shape != b.shape or len(na) < 2:
                continue  # not the same grid (no pairing), or fewer than two sizes (no slope)
            a, b = a.copy(), b.copy()
            bad = ~(np.isfinite(a) & np.isfinite(b))
            a[bad], b[bad] = np.nan, np.nan  # a pair counts only where both arms have a finite loss (zeros kept)
            if np.any(np.sum(~bad, axis=1) < 2):
                continue  # a size with fewer than two pairs: no paired interval
            for stat in statistics:
                if np.any(statistic_of(a, stat, axis=1) <= 0) or np.any(statistic_of(b, stat, axis=1) <= 0):
                    continue  # a statistic of 0 at some n in either arm: no slope to compare
                d = paired_rate_difference(na, a, b, statistic=stat, num_bootstrap=cfg.num_bootstrap, seed=cfg.seed)
                out.append(dict(axis=axis, a=arm_a[ARM.index(axis)], b=arm_b[ARM.index(axis)], **fixed, loss=loss,
                                statistic=stat, slope_a=d.slope_a, slope_b=d.slope_b, difference=d.difference,
                                ci_low=d.ci_low, ci_high=d.ci_high, n_min=d.n_min, n_max=d.n_max,
                                pairs=int(np.all(~bad, axis=0).sum())))
    return pd.DataFrame(out, columns=DIFFERENCE_COLUMNS)


DIFFERENCE_COLUMNS = ["axis", "a", "b", *ARM, "loss", "statistic", "slope_a", "slope_b", "difference", "ci_low",
                      "ci_high", "n_min", "n_max", "pairs"]


# ------------------------------------------------------------------------------------------------
# power: what a design can tell apart

# (truth, alternative). The losses n^truth * exp(e) scale exactly, so the power depends on the gap and its sign
# alone: -1/4 against 0 is -1/2 against -1/4 shifted, the same number on the same draws.
CONTRASTS = ((-0.5, -0.25), (-0.25, -0.5))


class Power(NamedTuple):
    """Of ``sims`` synthetic studies with slope ``truth``: the fraction whose interval excludes
    ``alternative`` (the power to tell them apart) and the fraction whose interval holds ``truth``
    (the interval's coverage, a check of the simulation itself)."""

    truth: float
    alternative: float
    power: float
    coverage: float
    sims: int


def log_residuals(ns, losses) -> np.ndarray:
    """The scatter of a design's fits around their trend: log loss minus the mean log loss at its n, for every
    positive finite loss of ``losses`` ``(m, R)``, scaled by sqrt(R_i / (R_i - 1)) (deviations from a mean of
    R_i values are that much narrower than the values' own). A sample to draw synthetic losses from."""
    losses = np.asarray(losses, dtype=float)
    out = []
    for row in losses:
        v = np.log(row[np.isfinite(row) & (row > 0)])
        if v.size >= 2:
            out.append((v - v.mean()) * np.sqrt(v.size / (v.size - 1)))
    if not out:
        raise ValueError("losses: need at least two positive finite losses at some n to measure their scatter")
    return np.concatenate(out)


def rate_power(ns, replicates: int, dispersion, *, contrasts=CONTRASTS, statistic: str = "mean", sims: int = 200,
               num_bootstrap: int = 500, level: float = 0.95, seed: int = 0) -> list[Power]:
    """How often :func:`moe_estimation.rates.empirical_rate`, run on a design (sample sizes ``ns``, ``replicates``
    fits at each), tells a slope from another. Synthetic losses ``n^truth * exp(e)``: ``e`` drawn from
    ``dispersion``, a number (the standard deviation of log loss: log-normal scatter) or an array of log
    residuals to resample (:func:`log_residuals` of a study's own fits: its skew and heavy tail kept). Each
    contrast ``(truth, alternative)`` is simulated ``sims`` times with common draws across contrasts. Every
    statistic of ``n^truth * exp(e)`` is ``n^truth`` times that of ``exp(e)``, so the power depends only on
    ``alternative - truth``: (-1/2, -1/4) answers for (-1/4, 0) as well."""
    ns = np.asarray(ns, dtype=float)
    if isinstance(replicates, bool) or not isinstance(replicates, (int, np.integer)) or replicates < 2:
        raise ValueError(f"replicates: need an integer >= 2 (a bootstrap over one replicate has no spread), got "
                         f"{replicates!r}")
    if isinstance(sims, bool) or not isinstance(sims, (int, np.integer)) or sims < 1:
        raise ValueError(f"sims: must be an integer >= 1, got {sims!r}")
    rng = np.random.default_rng(seed)
    shape = (sims, ns.size, replicates)
    if np.ndim(dispersion) == 0:
        sigma = float(dispersion)
        if not (np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"dispersion: a standard deviation of log loss must be a finite number > 0, got {dispersion!r}")
        e = sigma * rng.standard_normal(shape)
    else:
        res = np.asarray(dispersion, dtype=float).ravel()
        if res.size < 2 or not np.all(np.isfinite(res)):
            raise ValueError(f"dispersion: need at least two finite log residuals, got {res.size}")
        e = rng.choice(res, size=shape, replace=True)
    out = []
    for truth, alternative in contrasts:
        hits = cover = 0
        for s in range(sims):
            r = empirical_rate(ns, ns[:, None] ** truth * np.exp(e[s]), statistic=statistic, num_bootstrap=num_bootstrap,
                               level=level, seed=seed + s)
            hits += not (r.ci_low <= alternative <= r.ci_high)
            cover += r.ci_low <= truth <= r.ci_high
        out.append(Power(float(truth), float(alternative), hits / sims, cover / sims, sims))
    return out


def power_table(cfg: StudyConfig, fits: pd.DataFrame | None = None, *, sigmas=(), losses=("own", "key_value"),
                statistics=("mean", "median"), contrasts=CONTRASTS, sims: int = 200, num_bootstrap: int = 500,
                seed: int = 0) -> pd.DataFrame:
    """The power of ``cfg``'s design (its sample sizes inside the rate window, its replicates) to tell each
    contrast's slopes apart (:func:`rate_power`), at the scatter of a study's own fits (``fits``: one set of
    rows per (problem, specification, schedule, loss), its log residuals resampled) and at each log-normal
    scatter in ``sigmas``. Columns: ``source`` (``fits`` or ``lognormal``), the arm and loss (empty for
    ``lognormal``), ``sigma`` (the standard deviation of log loss), ``statistic``, ``truth``,
    ``alternative``, ``power``, ``coverage``, ``sims``, ``ns`` and ``replicates`` of the design."""
    ns = np.array([n for n in cfg.ns if cfg.n_min <= n <= cfg.n_max], dtype=float)
    design = dict(ns=" ".join(str(int(n)) for n in ns), replicates=cfg.replicates)
    sources = [(dict(source="lognormal", problem="", specification="", schedule="", loss=""), float(s), float(s))
               for s in sigmas]
    if fits is not None:
        window = fits[(fits["n"] >= cfg.n_min) & (fits["n"] <= cfg.n_max)]
        for (prob, spec, schedule), g in window.groupby(ARM, sort=False):
            for loss in losses:
                values = _loss(g, loss)
                if not np.any(np.isfinite(values) & (values > 0)):
                    continue
                res = log_residuals(*loss_matrix(g, values, replicate="replicate"))
                sources.append((dict(source="fits", problem=prob, specification=spec, schedule=schedule, loss=loss),
                                res, float(res.std())))
    out = []
    for keys, dispersion, sigma in sources:
        for stat in statistics:
            for p in rate_power(ns, cfg.replicates, dispersion, contrasts=contrasts, statistic=stat, sims=sims,
                                num_bootstrap=num_bootstrap, seed=seed):
                out.append(dict(keys, sigma=sigma, statistic=stat, truth=p.truth, alternative=p.alternative,
                                power=p.power, coverage=p.coverage, sims=p.sims, **design))
    return pd.DataFrame(out)


MINIMAX_LOSSES = ("own", "key_value")


def _families(fits: pd.DataFrame, cfg: StudyConfig) -> dict:
    """family -> its members among the problems of ``fits`` whose truth moves with n (config order)."""
    out: dict = {}
    for name in cfg.problems:
        if cfg.moving(name) is not None and (fits["problem"] == name).any():
            out.setdefault(cfg.family(name), []).append(name)
    return out


def _member_matrices(fits, members, spec, schedule, loss, ns, R):
    """``(M, len(ns), R)`` losses of each member (replicate r in column r; NaN where missing or not finite)."""
    out = np.full((len(members), len(ns), R), np.nan)
    for i, name in enumerate(members):
        g = fits[(fits["problem"] == name) & (fits["specification"] == spec) & (fits["schedule"] == schedule)]
        v = _loss(g, loss)
        for j, n in enumerate(ns):
            rows = (g["n"] == n).to_numpy()
            out[i, j, g["replicate"].to_numpy()[rows]] = v[rows]
    out[~np.isfinite(out)] = np.nan
    return out


def minimax_tables(fits: pd.DataFrame, cfg: StudyConfig) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The empirical worst case over each family of truths that move with n (docs/maths.md, *Truths that
    move with n*): ``(minimax, minimax_rates)``.

    ``minimax.csv``: one row per (family, specification, schedule, loss, statistic, n): ``worst``, the largest
    value of the statistic (the mean, the median or a declared quantile over replicates) among the family's
    members at that n, the member that attains it (``worst_problem``, its ``worst_beta``, ``worst_c`` and
    separation factor ``worst_factor`` = c n^-beta), and ``members``. Each member's own statistics are in
    ``quantiles.csv``. A loss that is exactly zero stays a value; a non-finite fit is left out and counted in
    ``nonfinite``.

    ``minimax_rates.csv``: per (family, specification, schedule, loss, statistic) the slope of log worst on
    log n over the rate window, with a 95% bootstrap interval that resamples the replicates of each n
    jointly for every member (they share their data sets), so the maximum is taken afresh in each resample.
    Both are empty when no problem's truth moves."""
    families = _families(fits, cfg)
    rows, rates = [], []
    R = cfg.replicates
    rng_seed = cfg.seed
    for family, members in families.items():
        sub = fits[fits["problem"].isin(members)]
        structure = sub["structure"].iloc[0]
        moving = {m: cfg.moving(m) for m in members}
        for (spec, schedule), g in sub.groupby(["specification", "schedule"], sort=False):
            present = [m for m in members if (g["problem"] == m).any()]
            sched = {c: g[c].iloc[0] for c in SCHEDULE_COLUMNS}
            ns = np.array(sorted(g["n"].unique()))
            for loss in MINIMAX_LOSSES:
                mats = _member_matrices(g, present, spec, schedule, loss, ns, R)  # (M, m, R)
                nonfinite = [int(sum(((g["problem"] == p) & (g["n"] == n)).sum() for p in present)
                                 - np.isfinite(mats[:, j]).sum()) for j, n in enumerate(ns)]
                for stat in cfg.statistics:
                    values = statistic_of(mats, stat, axis=2)  # (M, m)
                    for j, n in enumerate(ns):
                        col = values[:, j]
                        if not np.any(np.isfinite(col)):
                            continue
                        w = int(np.nanargmax(col))
                        mv = moving[present[w]]
                        rows.append(dict(family=family, structure=structure, specification=spec, **sched, loss=loss,
                                         statistic=stat, n=int(n), worst=float(col[w]), worst_problem=present[w],
                                         worst_beta=mv["beta"], worst_c=mv["c"],
                                         worst_factor=float(mv["c"] * float(n) ** -mv["beta"]),
                                         members=int(np.isfinite(col).sum()), nonfinite=nonfinite[j]))
                    window = (ns >= cfg.n_min) & (ns <= cfg.n_max)
                    worst = np.nanmax(np.where(np.isfinite(values), values, -np.inf), axis=0)
                    entry = dict(family=family, structure=structure, specification=spec, **sched, loss=loss,
                                 statistic=stat, slope=np.nan, ci_low=np.nan, ci_high=np.nan,
                                 n_min=int(ns[window].min()) if window.any() else 0,
                                 n_max=int(ns[window].max()) if window.any() else 0,
                                 members=len(present), replicates=R, note="")
                    if window.sum() < 2:
                        entry["note"] = "fewer than two sample sizes in the rate window: no slope"
                    elif not np.all(worst[window] > 0):
                        entry["note"] = "a worst case that is zero or missing at some n of the window: no slope"
                    else:
                        logn = np.log(ns[window])
                        entry["slope"] = ols_line(logn, np.log(worst[window]))[0]
                        rng = np.random.default_rng(rng_seed)
                        idx = rng.integers(0, R, size=(cfg.num_bootstrap, int(window.sum()), R))
                        boot = np.take_along_axis(mats[:, window][:, None], idx[None], axis=3)  # (M, B, m, R)
                        bstat = statistic_of(boot, stat, axis=3)  # (M, B, m)
                        bworst = np.nanmax(np.where(np.isfinite(bstat), bstat, -np.inf), axis=0)  # (B, m)
                        bworst = np.where(bworst > 0, bworst, worst[window][None])
                        ly = np.log(bworst)
                        xc = logn - logn.mean()
                        slopes = np.sum((ly - ly.mean(axis=1, keepdims=True)) * xc, axis=1) / np.sum(xc * xc)
                        entry["ci_low"], entry["ci_high"] = percentile_interval(slopes, 0.95)
                    rates.append(entry)
    return pd.DataFrame(rows), pd.DataFrame(rates)


# ------------------------------------------------------------------------------------------------
# more than one truth and shape: the study's findings against the geometry of each problem

GEOMETRY_FACTORS = ("d", "d_v", "draw", "key_separation", "noise_var", "extra_prompts")
GEOMETRY_STATISTICS = ("mean", "median", "q90")


def problem_geometry(cfg: StudyConfig, name: str) -> dict:
    """The geometry of problem ``name``: ``d``, ``d_v``, ``draw`` (the seed of a problem drawn with ``draw``,
    -1 for any other), ``key_separation`` (the smallest distance between two true keys, computed from the truth),
    ``noise_var`` and ``extra_prompts`` (L' - L of its over-specified fit)."""
    prob = cfg.problem(name)
    keys = np.asarray(prob.true_key_value()[0])
    dist = np.linalg.norm(keys[:, None] - keys[None], axis=-1) + np.diag(np.full(len(keys), np.inf))
    draw = ((cfg.problem_tables.get(name) or {}).get("draw") or {}).get("seed", -1)
    # rounded to 10 significant digits: a drawn separation of 0.5 reads 0.5 whatever the last bits of its keys
    sep = float(f"{dist.min():.10g}") if len(keys) > 1 else np.nan
    return dict(d=prob.d, d_v=prob.d_v, draw=int(draw), key_separation=sep,
                noise_var=prob.noise_var, extra_prompts=cfg.extra_prompts_of(name))


def geometry_table(rates: pd.DataFrame, failing: pd.DataFrame, cfg: StudyConfig, loss: str = "key_value") -> pd.DataFrame:
    """``geometry.csv``: one row per (problem, specification, schedule) with the problem's geometry
    (:func:`problem_geometry`; ``extra_prompts`` is 0 for the exact fit) beside what the study found on ``loss``:
    the failing fraction at the smallest and the largest n of the rate window (``failing.csv``; its threshold)
    and the slopes of the mean, the median and the 90% quantile with their intervals (``rates.csv``)."""
    geo = {name: problem_geometry(cfg, name) for name in cfg.problems}
    out = []
    f = failing[(failing["loss"] == loss) & failing["in_window"].astype(bool)] if len(failing) else failing
    r = rates[rates["loss"] == loss] if len(rates) else rates
    for (prob, spec, sched), g in f.groupby(ARM, sort=False):
        g = g.sort_values("n")
        lo, hi = g.iloc[0], g.iloc[-1]
        row = dict(problem=prob, structure=lo["structure"], specification=spec, schedule=sched,
                   **dict(geo[prob], extra_prompts=geo[prob]["extra_prompts"] if spec == "over" else 0),
                   loss=loss, threshold=float(lo["threshold"]), n_min=int(lo["n"]), n_max=int(hi["n"]),
                   fits_n_min=int(lo["fits"]), failing_n_min=int(lo["failing"]),
                   fits_n_max=int(hi["fits"]), failing_n_max=int(hi["failing"]))
        rr = r[(r["problem"] == prob) & (r["specification"] == spec) & (r["schedule"] == sched)]
        for stat in GEOMETRY_STATISTICS:
            x = rr[rr["statistic"] == stat]
            for col in ("slope", "ci_low", "ci_high"):
                row[f"{stat}_{col}"] = float(x[col].iloc[0]) if len(x) else np.nan
        out.append(row)
    return pd.DataFrame(out)


def geometry_effects(geometry: pd.DataFrame, factors=GEOMETRY_FACTORS) -> pd.DataFrame:
    """``geometry_effects.csv``: how the failing fraction and the slopes depend on each factor of the geometry,
    one row per (structure, specification, schedule, factor, level), pooled over the other factors: ``cells``
    (problems at that level), the failing fits at the smallest and the largest n with exact 95% intervals of the
    pooled fraction, and over the cells the median, the smallest and the largest slope of the median loss and of
    its mean, and how many cells' median-slope interval holds -1/2 (``median_holding_half``) and lies below 0
    (``median_below_zero``). A factor with one level in the study is left out."""
    out = []
    for (structure, spec, sched), g in geometry.groupby(["structure", "specification", "schedule"], sort=False):
        for factor in factors:
            if factor not in g or g[factor].nunique() < 2:
                continue
            for level, h in g.groupby(factor, sort=True):
                row = dict(structure=structure, specification=spec, schedule=sched, factor=factor, level=level,
                           cells=len(h))
                for end in ("n_min", "n_max"):
                    k, m = int(h[f"failing_{end}"].sum()), int(h[f"fits_{end}"].sum())
                    lo, hi = binomial_interval(np.array([k]), np.array([m]))
                    row.update({f"failing_{end}": k, f"fits_{end}": m, f"fraction_{end}": k / m,
                                f"ci_low_{end}": float(lo[0]), f"ci_high_{end}": float(hi[0])})
                for stat in ("median", "mean"):
                    s = h[f"{stat}_slope"].dropna()
                    row.update({f"{stat}_slope_median": float(s.median()) if len(s) else np.nan,
                                f"{stat}_slope_min": float(s.min()) if len(s) else np.nan,
                                f"{stat}_slope_max": float(s.max()) if len(s) else np.nan})
                row["median_holding_half"] = int(((h["median_ci_low"] <= -0.5) & (h["median_ci_high"] >= -0.5)).sum())
                row["median_below_zero"] = int((h["median_ci_high"] < 0).sum())
                out.append(row)
    return pd.DataFrame(out)
