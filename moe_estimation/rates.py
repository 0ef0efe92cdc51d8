"""Empirical convergence rates and the theory's reference slopes (docs/maths.md, *Rates and intervals*).

The empirical rate is the OLS slope of log(statistic of the loss over replicates) on log(n). Its 95%
interval is a percentile bootstrap over replicates: resample the R replicates within each n (with
replacement), recompute the statistic at every n, refit the slope; repeat.

The statistic is the mean, the median, or any quantile (``"q90"``: the 90% quantile over replicates): an
O_P statement says every quantile shrinks, so a claim about a rate is checked on the upper quantiles too.
Beside the rates:

- :func:`paired_rate_difference`: the difference of two slopes measured on the same data sets (replicate r
  of one arm and of the other share their data), with a bootstrap that resamples the data sets jointly;
- :func:`binomial_interval`, :func:`trend_test`: the fraction of fits that fail (a loss above a declared
  threshold) at each n, with its exact interval, and whether that fraction moves with log n.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
from scipy.stats import beta, norm

from .prefix.structures import NON_SHARED, STRUCTURES

STATISTICS = ("mean", "median")  # and "qP", the P% quantile over replicates (0 < P < 100), e.g. "q90"


def statistic_quantile(statistic: str) -> float | None:
    """The quantile a statistic names (``"median"``: 0.5, ``"q90"``: 0.9), or None for the mean; a
    ValueError naming the rule for anything else."""
    if statistic == "mean":
        return None
    if statistic == "median":
        return 0.5
    if isinstance(statistic, str) and statistic[:1] == "q":
        try:
            p = float(statistic[1:])
        except ValueError:
            p = float("nan")
        if 0 < p < 100:
            return p / 100
    raise ValueError(f"statistic: expected 'mean', 'median' or 'qP' (the P% quantile over replicates, 0 < P < 100, "
                     f"e.g. 'q90'), got {statistic!r}")


def quantile_statistic(q: float) -> str:
    """The statistic's name for the quantile ``q`` (0.5: ``"median"``, 0.9: ``"q90"``, 0.975: ``"q97.5"``)."""
    if not 0 < q < 1:
        raise ValueError(f"quantile: must lie strictly between 0 and 1, got {q!r}")
    return "median" if q == 0.5 else f"q{100 * q:g}"


class Rate(NamedTuple):
    """slope with its bootstrap interval [ci_low, ci_high], the intercept (log scale) and the sizes used."""

    slope: float
    ci_low: float
    ci_high: float
    intercept: float
    n_min: int
    n_max: int


def _stat(x: np.ndarray, statistic: str, axis: int) -> np.ndarray:
    q = statistic_quantile(statistic)
    with warnings.catch_warnings():  # a bootstrap row resampled to all-NaN gives NaN; the caller falls back
        warnings.simplefilter("ignore", RuntimeWarning)
        if q is None:
            return np.nanmean(x, axis=axis)
        return np.nanmedian(x, axis=axis) if q == 0.5 else nan_quantile(x, q, axis=axis)


def nan_quantile(x: np.ndarray, q: float, axis: int = -1) -> np.ndarray:
    """``np.nanquantile(x, q, axis)`` (linear interpolation, NaN ignored, NaN where nothing is left), computed
    in one sort: numpy's own loops over every row when a NaN is present, 100-200x slower on a bootstrap's
    ``(B, m, R)`` array."""
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    xs = np.sort(x, axis=-1)  # NaN sorts last
    k = np.sum(~np.isnan(x), axis=-1)
    pos = np.maximum(k - 1, 0) * q
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(k - 1, 0))
    a = np.take_along_axis(xs, lo[..., None], axis=-1)[..., 0]
    b = np.take_along_axis(xs, hi[..., None], axis=-1)[..., 0]
    out = a + (pos - lo) * (b - a)
    return np.where(k > 0, out, np.nan)


def ols_line(x, y, weights=None) -> tuple[float, float]:
    """Slope and intercept of the least-squares line of ``y`` on ``x`` (weighted: each squared residual
    times ``weights``), in closed form from elementwise products and sums: the same bits whatever the BLAS,
    its threads or the memory layout (a LAPACK least-squares solve, as ``np.polyfit`` makes, can differ in
    the last bit between runs, and a committed table is compared with its rebuild)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    w = np.ones_like(x) if weights is None else np.asarray(weights, dtype=float)
    xm, ym = np.sum(w * x) / np.sum(w), np.sum(w * y) / np.sum(w)
    xc = x - xm
    slope = np.sum(w * xc * (y - ym)) / np.sum(w * xc * xc)
    return float(slope), float(ym - slope * xm)


def _ols(logn: np.ndarray, logy: np.ndarray) -> tuple[float, float]:
    return ols_line(logn, logy)


def _checked(ns, losses, statistic, level, num_bootstrap, seed, name="losses"):
    """The arguments of :func:`empirical_rate`, validated: ``(ns, losses)`` as float arrays, losses 2-d."""
    ns = np.asarray(ns, dtype=float)
    losses = np.asarray(losses, dtype=float)
    if ns.ndim != 1 or ns.size < 2 or np.unique(ns).size < 2:
        raise ValueError(f"ns: need at least two distinct sample sizes, got {ns.tolist()}")
    if np.any(~np.isfinite(ns)) or np.any(ns < 1):
        raise ValueError(f"ns: every sample size must be a finite number >= 1, got {ns.tolist()}")
    if losses.ndim == 1:
        losses = losses[:, None]
    if losses.ndim != 2 or losses.shape[0] != ns.size:
        raise ValueError(f"Shape mismatch in {name}: expected ({ns.size}, R) (one row per n), got {losses.shape}")
    if np.any(np.isinf(losses)):
        i, j = np.argwhere(np.isinf(losses))[0]
        raise ValueError(f"{name}: must be finite (NaN marks a missing replicate), got {losses[i, j]} at n = "
                         f"{ns[i]:g}, replicate {j}")
    finite = np.isfinite(losses)
    if np.any(finite.sum(axis=1) == 0):
        raise ValueError(f"{name}: every sample size needs at least one finite loss")
    if np.any(losses[finite] < 0):
        raise ValueError(f"{name}: every loss must be >= 0 (zeros are values and are kept), got {losses[finite].min()}")
    statistic_quantile(statistic)
    if not (0 < level < 1):
        raise ValueError(f"level: must lie in (0, 1), got {level}")
    if isinstance(num_bootstrap, bool) or not isinstance(num_bootstrap, (int, np.integer)) or num_bootstrap < 1:
        raise ValueError(f"num_bootstrap: must be an integer >= 1, got {num_bootstrap!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0 (the bootstrap's generator seed), got {seed!r}")
    if np.any(finite.sum(axis=1) < 2):
        i = int(np.argmax(finite.sum(axis=1) < 2))
        raise ValueError(f"{name}: every sample size needs at least two finite losses (replicates) for a bootstrap "
                         f"interval, got {int(finite[i].sum())} at n = {ns[i]:g} (one replicate resamples to itself: "
                         "an interval of width zero)")
    point = _stat(losses, statistic, axis=1)
    if np.any(point <= 0):
        zero = [float(n) for n, p in zip(ns, point) if p <= 0]
        raise ValueError(f"{name}: the {statistic} over replicates is 0 at n = {zero} (its log is -inf): no slope; "
                         "a zero is a value and is kept, so a statistic of mostly exact zeros has no rate")
    return ns, losses


def empirical_rate(
    ns,
    losses,
    *,
    statistic: str = "mean",
    num_bootstrap: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> Rate:
    """Slope of log(statistic of losses) on log(n), with a bootstrap interval over replicates.

    Args:
      ns: ``(m,)`` sample sizes, at least two distinct, each >= 1.
      losses: ``(m, R)`` losses, row i holding the R replicates at ``ns[i]``; NaN marks a missing
        replicate (it is ignored), every row needs at least one finite value and all must be > 0; an inf
        is refused (it is no missing value, and its log would make the slope NaN).
      statistic: ``"mean"``, ``"median"`` or ``"qP"`` (the P% quantile, e.g. ``"q90"``) over replicates.
      num_bootstrap: bootstrap resamples (>= 1); level: the interval's coverage.
      seed: seed of the bootstrap, an integer >= 0 (the interval is reproducible).
    """
    ns, losses = _checked(ns, losses, statistic, level, num_bootstrap, seed)
    logn = np.log(ns)
    slope, intercept = _ols(logn, np.log(_stat(losses, statistic, axis=1)))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, losses.shape[1], size=(num_bootstrap, ns.size, losses.shape[1]))
    lo, hi = _interval(_boot_slopes(logn, losses, statistic, idx), level)
    return Rate(slope, lo, hi, intercept, int(ns.min()), int(ns.max()))


def _boot_slopes(logn: np.ndarray, losses: np.ndarray, statistic: str, idx: np.ndarray) -> np.ndarray:
    """The slope of every bootstrap resample ``idx`` ``(B, m, R)`` (replicate indices within each n)."""
    boot = np.take_along_axis(losses[None], idx, axis=2)  # (B, m, R)
    stat = _stat(boot, statistic, axis=2)  # (B, m); a row resampled to all-NaN falls back to the point value
    point = _stat(losses, statistic, axis=1)
    stat = np.where(np.isfinite(stat), stat, point[None])
    zero = np.any(stat <= 0, axis=1)  # a resample whose statistic is 0 at some n (exact zeros drawn): no slope
    with np.errstate(divide="ignore"):
        ly = np.log(np.where(zero[:, None], 1.0, stat))
    xc = logn - logn.mean()
    slopes = np.sum((ly - ly.mean(axis=1, keepdims=True)) * xc, axis=1) / np.sum(xc * xc)  # as ols_line, per row
    return np.where(zero, np.nan, slopes)


def _interval(slopes: np.ndarray, level: float) -> tuple[float, float]:
    """The equal-tailed ``level`` interval of bootstrap slopes. A NaN slope (a resample with no slope: its
    statistic 0 at some n) is counted in both tails, as -inf below and +inf above: the interval then covers
    whichever way it would have gone, and is infinite on a side where such resamples exceed that tail."""
    a = (1 - level) / 2
    undefined = np.isnan(slopes)
    if not undefined.any():
        lo, hi = np.quantile(slopes, [a, 1 - a])
        return float(lo), float(hi)
    k, B = int(undefined.sum()), slopes.size
    finite = np.sort(slopes[~undefined])
    if not finite.size:
        return float("-inf"), float("inf")

    def at(pos):  # numpy's linear interpolation on the finite slopes, at position pos of their sorted array
        lo_i = int(np.floor(pos))
        hi_i = min(lo_i + 1, finite.size - 1)
        return float(finite[lo_i] + (pos - lo_i) * (finite[hi_i] - finite[lo_i]))

    q_lo, q_hi = a * (B - 1), (1 - a) * (B - 1)  # positions in the sorted B slopes
    lo = float("-inf") if q_lo < k else at(q_lo - k)  # the k undefined resamples first, as -inf
    hi = float("inf") if q_hi > B - 1 - k else at(q_hi)  # and last, as +inf
    return lo, hi


class RateDifference(NamedTuple):
    """``difference`` = slope_a - slope_b, with its bootstrap interval [ci_low, ci_high]."""

    difference: float
    ci_low: float
    ci_high: float
    slope_a: float
    slope_b: float
    n_min: int
    n_max: int


def paired_rate_difference(
    ns,
    losses_a,
    losses_b,
    *,
    statistic: str = "mean",
    num_bootstrap: int = 2000,
    level: float = 0.95,
    seed: int = 0,
) -> RateDifference:
    """The difference of two empirical rates measured on the same data sets, with a paired bootstrap.

    ``losses_a[i, r]`` and ``losses_b[i, r]`` are two estimators' (or two schedules') losses on data set r at
    ``ns[i]``. Each bootstrap resample draws the data sets once and takes both arms on them, so the
    interval of ``slope_a - slope_b`` keeps the correlation the common data give (two marginal intervals
    that overlap can still hold a difference whose interval excludes 0, and the other way round). Arguments
    as for :func:`empirical_rate`; both arrays have one shape.
    """
    ns, a = _checked(ns, losses_a, statistic, level, num_bootstrap, seed, name="losses_a")
    _, b = _checked(ns, losses_b, statistic, level, num_bootstrap, seed, name="losses_b")
    if a.shape != b.shape:
        raise ValueError(f"losses_b: must have the shape of losses_a {a.shape} (data set r in row i of both), got "
                         f"{b.shape}")
    logn = np.log(ns)
    sa = _ols(logn, np.log(_stat(a, statistic, axis=1)))[0]
    sb = _ols(logn, np.log(_stat(b, statistic, axis=1)))[0]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, a.shape[1], size=(num_bootstrap, ns.size, a.shape[1]))
    lo, hi = _interval(_boot_slopes(logn, a, statistic, idx) - _boot_slopes(logn, b, statistic, idx), level)
    return RateDifference(sa - sb, lo, hi, sa, sb, int(ns.min()), int(ns.max()))


def binomial_interval(k, m, level: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The exact (Clopper-Pearson) interval of a binomial proportion: ``k`` successes in ``m`` trials
    (arrays of one shape, 0 <= k <= m, m >= 1). It covers at least ``level`` for every true proportion."""
    k, m = np.asarray(k, dtype=float), np.asarray(m, dtype=float)
    if np.any(m < 1) or np.any(k < 0) or np.any(k > m) or np.any(k != np.round(k)) or np.any(m != np.round(m)):
        raise ValueError(f"k, m: need integers 0 <= k <= m with m >= 1, got k = {k.tolist()}, m = {m.tolist()}")
    if not (0 < level < 1):
        raise ValueError(f"level: must lie in (0, 1), got {level}")
    a = (1 - level) / 2
    with np.errstate(invalid="ignore"):
        lo = np.where(k == 0, 0.0, beta.ppf(a, k, m - k + 1))
        hi = np.where(k == m, 1.0, beta.ppf(1 - a, k + 1, m - k))
    return lo, hi


class Trend(NamedTuple):
    """The Cochran-Armitage test of a trend in a proportion: ``z`` (> 0: the proportion grows with the score,
    < 0: it falls), its two-sided ``p_value``, and the OLS slope of the proportion on the score per unit
    (here per unit of log n)."""

    z: float
    p_value: float
    slope: float


def trend_test(scores, k, m) -> Trend:
    """Does a proportion move with a score? ``k[i]`` of ``m[i]`` trials at ``scores[i]`` (for a failing
    fraction: the failing fits at each n, scores log n). The Cochran-Armitage statistic: with p the pooled
    proportion, ``z = sum_i s_i (k_i - m_i p) / sqrt(p (1-p) (sum_i m_i s_i^2 - (sum_i m_i s_i)^2 / M))``,
    normal under no trend. With no failure, or nothing but failures, there is nothing to test: z = 0, p = 1.
    """
    s, k, m = (np.asarray(x, dtype=float) for x in (scores, k, m))
    if not (s.ndim == 1 and s.shape == k.shape == m.shape) or s.size < 2 or np.unique(s).size < 2:
        raise ValueError(f"scores, k, m: need one-dimensional arrays of one length with at least two distinct "
                         f"scores, got shapes {s.shape}, {k.shape}, {m.shape}")
    binomial_interval(k, m)  # the same rules for k and m
    M, p = m.sum(), k.sum() / m.sum()
    slope = ols_line(s, k / m, weights=m)[0]
    if p in (0.0, 1.0):
        return Trend(0.0, 1.0, slope)
    var = p * (1 - p) * (np.sum(m * s**2) - np.sum(m * s) ** 2 / M)
    z = float(np.sum(s * (k - m * p)) / np.sqrt(var))
    return Trend(z, float(2 * norm.sf(abs(z))), slope)


def theory_slope(structure: str, loss: str = "own", specification: str = "over") -> float:
    """The reference log-log slope (docs/maths.md, *Rates and intervals*) for a structure, a loss and a specification.

    ``loss`` is ``"own"`` (D_2 for the shared structures, D_{1,r} for non-shared), ``"key_value"`` (D_2 on
    the (key, value) atoms), ``"identified"`` (a term of :func:`moe_estimation.identified_parts`: the
    weight sums, the cells' weight-averaged keys and values, the spreads inside cells) or ``"max_multi"``
    (the largest atom error in a cell holding several atoms, ``voronoi_parts``' ``max_multi``). Shared
    structures: -1/2 on the losses (D_2 converges at sqrt(log n / n), and for an injective smooth map D_2 on
    (k, v) is within constants of D_2 on p). Non-shared, over-specified: 0.0, the reference for "slower
    than every polynomial" (the minimax bound allows 1/log n, whose log-log slope tends to 0). Exactly
    specified (L' = L), every structure is a regular parametric model: -1/2.
    The identified terms: -1/2 wherever the loss's own rate is -1/2 (each is bounded by the D_2 terms it
    splits); for the over-specified non-shared fit the theory states none, and the reference is NaN.
    ``max_multi``: -1/4 for an over-specified shared fit (the square of an atom error enters D_2, and the
    box keeps every weight above exp(lower bias bound)): the positive control, a rate slower than -1/2;
    NaN elsewhere (exactly specified fits have no multi-atom cell in the limit; for over-specified
    non-shared ones the theory states none).
    """
    if specification not in ("exact", "over"):
        raise ValueError(f"specification: expected 'exact' or 'over', got {specification!r}")
    if structure not in STRUCTURES:
        raise ValueError(f"structure: expected one of {STRUCTURES}, got {structure!r}")
    if loss not in ("own", "key_value", "identified", "max_multi"):
        raise ValueError(f"loss: expected 'own', 'key_value', 'identified' or 'max_multi', got {loss!r}")
    if loss == "max_multi":
        return -0.25 if structure != NON_SHARED and specification == "over" else float("nan")
    if structure == NON_SHARED and specification == "over":
        return float("nan") if loss == "identified" else 0.0
    return -0.5


def is_composite(structure: str, loss: str, specification: str) -> bool:
    """True when a loss adds terms that the theory does not rate alike, so that its log-log slope is no
    rate of anything (docs/maths.md, *Composite losses*): the over-specified non-shared fit's D_{1,r}
    (``"own"``), its (key, value) D_2 (``"key_value"``) and their key and value halves (``"key_value_key_part"``,
    ``"key_value_value_part"``: a singleton cell's ||Delta|| beside a multi-atom cell's ||Delta||^2), each
    a sum of weight sums, which f_G identifies, and atom distances in split cells, which it need not.
    Everywhere else a loss's terms share one rate (D_2 is built so that they do), or it has one term."""
    if specification not in ("exact", "over"):
        raise ValueError(f"specification: expected 'exact' or 'over', got {specification!r}")
    return (structure == NON_SHARED and specification == "over"
            and loss in ("own", "key_value", "key_value_key_part", "key_value_value_part"))


def statistic_of(x, statistic: str, axis: int) -> np.ndarray:
    """The statistic (``"mean"``, ``"median"`` or ``"qP"``) of ``x`` along ``axis``, NaN ignored: the one
    :func:`empirical_rate` takes of each sample size's replicates."""
    return _stat(np.asarray(x, dtype=float), statistic, axis)


def percentile_interval(slopes, level: float = 0.95) -> tuple[float, float]:
    """The equal-tailed ``level`` interval of bootstrap ``slopes`` (as :func:`empirical_rate` reports)."""
    return _interval(np.asarray(slopes, dtype=float), level)
