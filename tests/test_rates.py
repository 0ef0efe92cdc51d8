import numpy as np
import pytest

import moe_estimation as me


def test_recovers_known_slope_and_interval_covers_it():
    rng = np.random.default_rng(0)
    ns = np.array([100, 200, 400, 800, 1600, 3200])
    losses = 2.0 * ns[:, None] ** -0.5 * rng.lognormal(0, 0.3, size=(6, 40))
    rate = me.empirical_rate(ns, losses)
    assert rate.slope == pytest.approx(-0.5, abs=0.05)
    assert rate.ci_low < -0.5 < rate.ci_high
    assert rate.ci_high - rate.ci_low < 0.2
    med = me.empirical_rate(ns, losses, statistic="median")
    assert med.slope == pytest.approx(-0.5, abs=0.06)


def test_exact_power_law_has_zero_width_interval():
    ns = np.array([10, 100, 1000])
    rate = me.empirical_rate(ns, np.tile((ns ** -0.25)[:, None], (1, 5)))
    assert rate.slope == pytest.approx(-0.25, abs=1e-12)
    assert rate.ci_low == pytest.approx(-0.25, abs=1e-12) and rate.ci_high == pytest.approx(-0.25, abs=1e-12)


def test_ols_line_is_the_least_squares_line_and_the_same_bits_in_any_layout():
    """ols_line is numpy's least-squares line (weights multiply the squared residuals), and a copy of the data
    at another address, or a strided view of it, gives the same bits (committed tables are rebuilt and
    compared as text)."""
    from moe_estimation.rates import ols_line

    rng = np.random.default_rng(4)
    x, y, w = rng.normal(size=12), rng.normal(size=12), rng.integers(1, 40, size=12).astype(float)
    slope, intercept = ols_line(x, y)
    assert np.allclose([slope, intercept], np.polyfit(x, y, 1), rtol=1e-12, atol=0)
    assert np.isclose(ols_line(x, y, weights=w)[0], np.polyfit(x, y, 1, w=np.sqrt(w))[0], rtol=1e-12, atol=0)
    wide = np.zeros((12, 3))
    wide[:, 1] = y
    assert ols_line(x, wide[:, 1]) == (slope, intercept) == ols_line(x.copy(), y.copy())
    assert ols_line([1, 2, 3], [2, 4, 6]) == (2.0, 0.0)


def test_bootstrap_is_reproducible():
    rng = np.random.default_rng(1)
    ns = [10, 20, 40]
    losses = rng.lognormal(size=(3, 10))
    assert me.empirical_rate(ns, losses, seed=3) == me.empirical_rate(ns, losses, seed=3)


@pytest.mark.parametrize(
    "ns, losses, word",
    [
        ([10], [[1.0]], "two distinct"),
        ([10, 0], [[1.0], [1.0]], ">= 1"),
        ([10, 20], [[1.0], [-1.0]], ">= 0"),
        ([10, 20], [[1.0, 2.0]], "Shape mismatch"),
        ([10, 20], [[np.nan], [1.0]], "finite loss"),
    ],
)
def test_rejects_bad_input(ns, losses, word):
    with pytest.raises(ValueError, match=word):
        me.empirical_rate(ns, losses)


def test_theory_slopes():
    assert me.theory_slope("shared-linear") == -0.5
    assert me.theory_slope("non-shared") == 0.0
    assert me.theory_slope("non-shared", specification="exact") == -0.5
    with pytest.raises(ValueError, match="structure"):
        me.theory_slope("other")
