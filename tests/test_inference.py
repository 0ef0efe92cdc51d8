"""Distributions, failing fractions, paired differences and power (moe_estimation.rates, moe_estimation.experiments.inference)."""

import shutil

import numpy as np
import pandas as pd
import pytest

from conftest import REFERENCE, reference_toml
from moe_estimation.experiments.config import parse_config
from moe_estimation.experiments.inference import failing_table, log_residuals, quantiles_table, rate_power
from moe_estimation.rates import (
    binomial_interval,
    empirical_rate,
    nan_quantile,
    paired_rate_difference,
    quantile_statistic,
    statistic_quantile,
    trend_test,
)
from moe_estimation.experiments.results import RATE_LOSSES

NS = np.array([500, 1000, 2000, 4000, 8000])


def test_statistic_names():
    assert statistic_quantile("mean") is None and statistic_quantile("median") == 0.5
    assert statistic_quantile("q90") == pytest.approx(0.9) and statistic_quantile("q2.5") == pytest.approx(0.025)
    for q in (0.25, 0.5, 0.9, 0.975):
        assert statistic_quantile(quantile_statistic(q)) == pytest.approx(q)
    for bad in ("q0", "q100", "qx", "p90", "", 3):
        with pytest.raises(ValueError, match="statistic: expected 'mean', 'median' or 'qP'"):
            statistic_quantile(bad)
    with pytest.raises(ValueError, match="quantile: must lie strictly between 0 and 1"):
        quantile_statistic(1.0)


@pytest.mark.parametrize("statistic", ["mean", "median", "q25", "q75", "q90"])
def test_every_statistic_recovers_a_slope_shared_by_all_quantiles(statistic):
    """The same scatter at every n: every quantile falls at the slope, and the interval is a point."""
    scatter = np.random.default_rng(0).lognormal(0, 0.8, size=9)
    losses = NS[:, None] ** -0.5 * scatter[None]
    r = empirical_rate(NS, losses, statistic=statistic, num_bootstrap=200)
    assert r.slope == pytest.approx(-0.5, abs=1e-12)


def test_upper_quantile_sees_a_fraction_that_never_converges():
    """7 fits in 10 at the parametric rate, 3 stuck at a constant: the median falls at -1/2, the 90% quantile
    does not fall at all (what a mean slope would blur into one number)."""
    good = NS[:, None] ** -0.5 * np.linspace(0.5, 1.5, 7)[None]
    stuck = np.full((NS.size, 3), 2.0)
    losses = np.hstack([good, stuck])
    assert empirical_rate(NS, losses, statistic="median", num_bootstrap=200).slope == pytest.approx(-0.5, abs=1e-12)
    assert empirical_rate(NS, losses, statistic="q90", num_bootstrap=200).slope == pytest.approx(0.0, abs=1e-12)
    assert -0.5 < empirical_rate(NS, losses, statistic="mean", num_bootstrap=200).slope < 0


def test_nan_quantile_is_numpys():
    rng = np.random.default_rng(1)
    x = rng.lognormal(size=(300, 4, 7))
    x[rng.random(x.shape) < 0.3] = np.nan
    x[0, 0] = np.nan  # a row with nothing left
    with pytest.warns(RuntimeWarning):
        want = np.nanquantile(x, [0.1, 0.25, 0.9, 0.999], axis=2)
    for q, w in zip([0.1, 0.25, 0.9, 0.999], want):
        np.testing.assert_allclose(nan_quantile(x, q, axis=2), w, rtol=1e-14, atol=0, equal_nan=True)


def test_paired_difference_cancels_the_common_data():
    """Two arms with the same per-data-set scatter: their slopes differ by exactly 1/4 on every resample, so
    the paired interval is a point, while each arm's own interval is wide."""
    scatter = np.random.default_rng(2).lognormal(0, 1.0, size=(NS.size, 8))
    a, b = NS[:, None] ** -0.5 * scatter, NS[:, None] ** -0.25 * scatter
    d = paired_rate_difference(NS, a, b, num_bootstrap=500)
    assert d.difference == pytest.approx(-0.25, abs=1e-12)
    assert d.ci_low == pytest.approx(-0.25, abs=1e-12) and d.ci_high == pytest.approx(-0.25, abs=1e-12)
    ra = empirical_rate(NS, a, num_bootstrap=500)
    assert ra.ci_high - ra.ci_low > 0.2 and d.slope_a == pytest.approx(ra.slope, abs=1e-12)
    # independent data in the two arms: no cancellation, and the interval holds the true difference
    other = np.random.default_rng(3).lognormal(0, 1.0, size=(NS.size, 8))
    d = paired_rate_difference(NS, a, NS[:, None] ** -0.25 * other, num_bootstrap=500)
    assert d.ci_high - d.ci_low > 0.2
    with pytest.raises(ValueError, match="losses_b: must have the shape of losses_a"):
        paired_rate_difference(NS, a, b[:, :5])
    with pytest.raises(ValueError, match="losses_b: every loss must be >= 0"):
        paired_rate_difference(NS, a, -b)


def test_binomial_interval_is_exact():
    lo, hi = binomial_interval([0, 10, 3], [10, 10, 8])
    assert lo[0] == 0 and hi[0] == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-10)
    assert hi[1] == 1 and lo[1] == pytest.approx(0.025 ** (1 / 10), rel=1e-10)
    # coverage at least 95% for a true proportion, by enumeration of every outcome of 8 trials
    from scipy.stats import binom

    k = np.arange(9)
    lo, hi = binomial_interval(k, np.full(9, 8))
    for p in (0.05, 0.3, 0.5, 0.9):
        assert binom.pmf(k, 8, p)[(lo <= p) & (p <= hi)].sum() >= 0.95
    with pytest.raises(ValueError, match="k, m: need integers 0 <= k <= m"):
        binomial_interval([3], [2])


def test_trend_test_by_hand():
    t = trend_test([0.0, 1.0], [0, 5], [5, 5])  # p = 1/2: z = 2.5 / sqrt(0.25 (5 - 25/10))
    assert t.z == pytest.approx(2.5 / np.sqrt(0.625), rel=1e-12) and t.p_value < 0.01 and t.slope == pytest.approx(1.0)
    assert trend_test([0.0, 1.0], [5, 0], [5, 5]).z == pytest.approx(-t.z)
    assert trend_test(np.log(NS), [0] * 5, [8] * 5) == (0.0, 1.0, 0.0)  # nothing fails: nothing to test
    flat = trend_test(np.log(NS), [3] * 5, [8] * 5)
    assert flat.z == pytest.approx(0.0, abs=1e-12) and flat.p_value == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least two distinct scores"):
        trend_test([1.0, 1.0], [0, 1], [2, 2])


def test_power_grows_with_the_design_and_the_interval_covers():
    tight = rate_power(NS, 8, 0.05, sims=40, num_bootstrap=200)
    assert all(p.power == 1.0 for p in tight)
    # the losses scale exactly: -1/4 against 0 has the power of -1/2 against -1/4, draw for draw
    wide = rate_power(NS, 8, 1.0, contrasts=((-0.5, -0.25), (-0.25, 0.0)), sims=40, num_bootstrap=200)
    assert wide[0].power == wide[1].power and 0 < wide[0].power < 1
    loose = rate_power(NS, 8, 3.0, contrasts=((-0.5, -0.25),), sims=40, num_bootstrap=200)[0]
    assert loose.power < 0.5
    more = rate_power(NS, 64, 3.0, contrasts=((-0.5, -0.25),), sims=40, num_bootstrap=200)[0]
    assert more.power > loose.power
    assert all(p.coverage >= 0.8 for p in tight + [loose, more])
    res = log_residuals(NS, NS[:, None] ** -0.5 * np.random.default_rng(4).lognormal(0, 0.5, size=(5, 8)))
    assert res.shape == (40,) and abs(res.mean()) < 1e-12
    assert rate_power(NS, 8, res, contrasts=((-0.5, -0.25),), sims=20, num_bootstrap=200)[0].sims == 20
    with pytest.raises(ValueError, match="replicates: need an integer >= 2"):
        rate_power(NS, 1, 0.5)
    with pytest.raises(ValueError, match="dispersion: a standard deviation of log loss must be a finite number > 0"):
        rate_power(NS, 8, 0.0)


@pytest.mark.parametrize(
    "rates, word",
    [
        (dict(quantiles=[]), "rates.quantiles: expected a non-empty list"),
        (dict(quantiles=[0.5, 1.0]), "rates.quantiles"),
        (dict(quantiles=[True]), "rates.quantiles"),
        (dict(quantiles=[0.5, 0.5]), "rates.quantiles"),
        (dict(fail_thresholds=dict(nonsense=1.0)), "rates.fail_thresholds.nonsense: unknown key"),
        (dict(fail_thresholds=dict(key_value=-1.0)), "rates.fail_thresholds.key_value: must be a finite number > 0"),
        (dict(fail_thresholds=dict(key_value=True)), "rates.fail_thresholds.key_value: expected float"),
        (dict(fail_thresholds=0.5), "rates.fail_thresholds: expected a table"),
    ],
)
def test_rate_settings_are_checked(rates, word):
    with pytest.raises(ValueError, match=word):
        parse_config(dict(REFERENCE, rates=dict(REFERENCE["rates"], **rates)))


def test_tables_are_the_fits_read_again(reference_study):
    """quantiles.csv and failing.csv say what fits.csv holds; differences.csv's slopes are rates.csv's."""
    cfg = parse_config(REFERENCE)
    fits = pd.read_csv(reference_study / "fits.csv")
    q = pd.read_csv(reference_study / "quantiles.csv")
    pd.testing.assert_frame_equal(q, quantiles_table(fits, cfg), check_dtype=False)
    row = q[(q["specification"] == "over") & (q["loss"] == "key_value") & (q["n"] == 120)].iloc[0]
    v = fits[(fits["specification"] == "over") & (fits["n"] == 120)]["loss_key_value"]
    assert row["q90"] == pytest.approx(np.quantile(v, 0.9), rel=1e-14) and row["mean"] == pytest.approx(v.mean())
    f = pd.read_csv(reference_study / "failing.csv")
    pd.testing.assert_frame_equal(f, failing_table(fits, cfg), check_dtype=False)
    assert set(f["loss"]) == set(cfg.fail_thresholds) == {"key_value"}
    for r in f.itertuples():
        v = fits[(fits["specification"] == r.specification) & (fits["n"] == r.n)]["loss_key_value"]
        assert r.failing == int((v > r.threshold).sum()) and r.fits == len(v)
        boxed = fits[(fits["specification"] == r.specification) & (fits["n"] == r.n)]["bound_coordinates"] != "none"
        assert r.failing_at_bound == int(((v > r.threshold) & boxed).sum()) <= r.failing
    d = pd.read_csv(reference_study / "differences.csv")
    assert set(d["axis"]) == {"specification"}  # one problem, one schedule: exact against over
    rates = pd.read_csv(reference_study / "rates.csv")
    for r in d[d["loss"].isin(["own", "key_value"])].itertuples():
        want = rates[(rates["specification"] == r.a) & (rates["loss"] == r.loss) & (rates["statistic"] == r.statistic)]
        assert r.slope_a == pytest.approx(want["slope"].iloc[0], abs=1e-12)
        assert r.difference == pytest.approx(r.slope_a - r.slope_b, abs=1e-12) and r.ci_low <= r.ci_high
    assert set(rates["statistic"]) == {"mean", "median", "q25", "q75", "q90"}
    assert set(q["loss"]) <= set(RATE_LOSSES)


def test_new_rate_settings_rebuild_the_tables_and_refit_nothing(tmp_path, reference_study, cli):
    out = tmp_path / "s"
    shutil.copytree(reference_study, out)
    fits = (out / "fits.csv").read_bytes()
    conf = reference_toml(tmp_path / "r.toml")
    conf.write_text(conf.read_text().replace("[rates]\n", "[rates]\nquantiles = [0.5, 0.95]\nfail_thresholds = { own = 0.01 }\n"))
    r = cli("study", "--config", conf, "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "the fits are kept and every table is rebuilt" in r.stdout and "resuming: 4 of 4 cells" in r.stdout
    assert (out / "fits.csv").read_bytes() == fits
    assert set(pd.read_csv(out / "rates.csv")["statistic"]) == {"mean", "median", "q95"}
    assert {"median", "q95"} <= set(pd.read_csv(out / "quantiles.csv").columns)
    assert set(pd.read_csv(out / "failing.csv")["loss"]) == {"own"}


def test_power_command(tmp_path, cli, reference_study):
    conf = reference_toml(tmp_path / "r.toml")
    r = cli("power", "--config", conf, "--sigma", "0.3", "--sims", "20", "--out", tmp_path / "p.csv")
    assert r.returncode == 0, r.stderr
    assert "design: n = 100 120, 3 replicates" in r.stdout
    p = pd.read_csv(tmp_path / "p.csv")
    assert len(p) == 2 * 2 and set(p["source"]) == {"lognormal"} and p["power"].between(0, 1).all()
    r = cli("power", "--config", conf, "--results", reference_study, "--sims", "10")
    assert r.returncode == 0, r.stderr
    assert "shared-linear" in r.stdout
    for args, word in [(["--sims", "5"], "--sims: need at least 10"), (["--sigma", "-1"], "--sigma"),
                       (["--results", tmp_path], "has no fits.csv")]:
        r = cli("power", "--config", conf, *args)
        assert r.returncode == 2 and word in r.stderr, (args, r.stderr)
    assert cli("power", "--sims", "20").returncode == 2  # no design


def test_failing_figure(tmp_path, reference_study):
    import matplotlib

    matplotlib.use("Agg")
    from moe_estimation.report.plots import plot_study

    names = {p.name for p in plot_study(reference_study, tmp_path / "f")}
    assert "failing_key_value.png" in names


def test_a_study_stopped_before_its_second_size_still_gets_its_tables(tmp_path, reference_study):
    """--tables-only after the first size only: every table is written, the slopes and trends empty with a
    note, nothing refused (the fits are what was finished)."""
    from moe_estimation.experiments.study import run_study

    out = tmp_path / "s"
    shutil.copytree(reference_study, out)
    fits = pd.read_csv(out / "fits.csv")
    fits[fits["n"] == 100].to_csv(out / "fits.csv", index=False, float_format="%.17g", na_rep="nan")
    run_study(parse_config(REFERENCE), out, progress=False, tables_only=True, log=lambda *a: None)
    rates = pd.read_csv(out / "rates.csv")
    assert rates["slope"].isna().all() and rates["note"].str.contains("one sample size so far").all()
    assert pd.read_csv(out / "failing.csv")["trend_z"].isna().all()
    assert len(pd.read_csv(out / "differences.csv")) == 0 and len(pd.read_csv(out / "quantiles.csv")) > 0
