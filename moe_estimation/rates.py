"""Empirical convergence rates and the theory's reference slopes (docs/maths.md, *Rates and intervals*).

The empirical rate is the OLS slope of log(statistic of the loss over replicates) on log(n). Its 95%
interval is a percentile bootstrap over replicates: resample the R replicates within each n (with
replacement), recompute the statistic at every n, refit the slope; repeat.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np

from .structures import NON_SHARED, STRUCTURES

STATISTICS = ("mean", "median")


class Rate(NamedTuple):
    """slope with its bootstrap interval [ci_low, ci_high], the intercept (log scale) and the sizes used."""

    slope: float
    ci_low: float
    ci_high: float
    intercept: float
    n_min: int
    n_max: int


def _stat(x: np.ndarray, statistic: str, axis: int) -> np.ndarray:
    with warnings.catch_warnings():  # a bootstrap row resampled to all-NaN gives NaN; the caller falls back
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(x, axis=axis) if statistic == "mean" else np.nanmedian(x, axis=axis)


def _ols(logn: np.ndarray, logy: np.ndarray) -> tuple[float, float]:
    slope, intercept = np.polyfit(logn, logy, 1)
    return float(slope), float(intercept)


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
      statistic: ``"mean"`` or ``"median"`` over replicates.
      num_bootstrap: bootstrap resamples (>= 1); level: the interval's coverage.
      seed: seed of the bootstrap, an integer >= 0 (the interval is reproducible).
    """
    ns = np.asarray(ns, dtype=float)
    losses = np.asarray(losses, dtype=float)
    if ns.ndim != 1 or ns.size < 2 or np.unique(ns).size < 2:
        raise ValueError(f"ns: need at least two distinct sample sizes, got {ns.tolist()}")
    if np.any(~np.isfinite(ns)) or np.any(ns < 1):
        raise ValueError(f"ns: every sample size must be a finite number >= 1, got {ns.tolist()}")
    if losses.ndim == 1:
        losses = losses[:, None]
    if losses.ndim != 2 or losses.shape[0] != ns.size:
        raise ValueError(f"Shape mismatch in losses: expected ({ns.size}, R) (one row per n), got {losses.shape}")
    if np.any(np.isinf(losses)):
        i, j = np.argwhere(np.isinf(losses))[0]
        raise ValueError(f"losses: must be finite (NaN marks a missing replicate), got {losses[i, j]} at n = "
                         f"{ns[i]:g}, replicate {j}")
    finite = np.isfinite(losses)
    if np.any(finite.sum(axis=1) == 0):
        raise ValueError("losses: every sample size needs at least one finite loss")
    if np.any(losses[finite] <= 0):
        raise ValueError("losses: must be > 0 to take logs, got a loss <= 0")
    if statistic not in STATISTICS:
        raise ValueError(f"statistic: expected one of {STATISTICS}, got {statistic!r}")
    if not (0 < level < 1):
        raise ValueError(f"level: must lie in (0, 1), got {level}")
    if isinstance(num_bootstrap, bool) or not isinstance(num_bootstrap, (int, np.integer)) or num_bootstrap < 1:
        raise ValueError(f"num_bootstrap: must be an integer >= 1, got {num_bootstrap!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed: must be an integer >= 0 (the bootstrap's generator seed), got {seed!r}")
    logn = np.log(ns)
    slope, intercept = _ols(logn, np.log(_stat(losses, statistic, axis=1)))
    rng = np.random.default_rng(seed)
    R = losses.shape[1]
    idx = rng.integers(0, R, size=(num_bootstrap, ns.size, R))
    boot = np.take_along_axis(losses[None], idx, axis=2)  # (B, m, R)
    stat = _stat(boot, statistic, axis=2)  # (B, m); a row resampled to all-NaN falls back to the point value
    point = _stat(losses, statistic, axis=1)
    stat = np.where(np.isfinite(stat), stat, point[None])
    ly = np.log(stat)
    xc = logn - logn.mean()
    slopes = (ly - ly.mean(axis=1, keepdims=True)) @ xc / (xc @ xc)
    a = (1 - level) / 2
    lo, hi = np.quantile(slopes, [a, 1 - a])
    return Rate(slope, float(lo), float(hi), intercept, int(ns.min()), int(ns.max()))


def theory_slope(structure: str, loss: str = "own", specification: str = "over") -> float:
    """The reference log-log slope (docs/maths.md, *Rates and intervals*) for a structure, a loss and a specification.

    ``loss`` is ``"own"`` (D_2 for the shared structures, D_{1,r} for non-shared), ``"key_value"`` (D_2 on
    the (key, value) atoms) or ``"identified"`` (a term of :func:`moe_estimation.identified_parts`: the
    weight sums, the cells' weight-averaged keys and values, the spreads inside cells). Shared structures: -1/2 on both (D_2 converges at sqrt(log n / n), and for an
    injective smooth map D_2 on (k, v) is within constants of D_2 on p). Non-shared, over-specified: 0.0,
    the reference for "slower than every polynomial" (the minimax bound allows 1/log n, whose log-log slope
    tends to 0). Exactly specified (L' = L), every structure is a regular parametric model: -1/2.
    The identified terms: -1/2 wherever the loss's own rate is -1/2 (each is bounded by the D_2 terms it
    splits); for the over-specified non-shared fit the theory states none, and the reference is NaN.
    """
    if specification not in ("exact", "over"):
        raise ValueError(f"specification: expected 'exact' or 'over', got {specification!r}")
    if structure not in STRUCTURES:
        raise ValueError(f"structure: expected one of {STRUCTURES}, got {structure!r}")
    if loss not in ("own", "key_value", "identified"):
        raise ValueError(f"loss: expected 'own', 'key_value' or 'identified', got {loss!r}")
    if structure == NON_SHARED and specification == "over":
        return float("nan") if loss == "identified" else 0.0
    return -0.5
