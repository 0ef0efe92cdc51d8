"""The README's table makers (simulations/summarize.py) on small hand-made tables: each cell shows the row it
names (problem, specification, schedule, loss, statistic), composite losses say so, and nothing is summed or
picked from another arm. The README tests check the committed tables against these makers; these check the
makers themselves."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def s():
    spec = importlib.util.spec_from_file_location("summarize", ROOT / "simulations" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _rate(problem, spec, loss, stat, slope, composite=False, theory=-0.5, schedule="random"):
    return dict(problem=problem, specification=spec, schedule=schedule, loss=loss, statistic=stat, slope=slope,
                ci_low=slope - 0.1, ci_high=slope + 0.1, theory_slope=theory, composite=composite)


def test_spread_markdown_shows_each_statistic_of_its_own_loss(s, tmp_path):
    rows = []
    for k, st in enumerate(("mean", "median", "q90", "q25")):
        rows += [_rate("non-shared", "over", "identified_value_by_key", st, -0.5 - k / 100),
                 _rate("non-shared", "over", "spread_value_by_key", st, -0.2 - k / 100),
                 _rate("non-shared", "over", "identified_value", st, -0.9),  # by atom: not shown
                 _rate("non-shared", "exact", "identified_value_by_key", st, -0.7)]  # exact: not shown
    pd.DataFrame(rows).to_csv(tmp_path / "rates.csv", index=False)
    table = s.spread_markdown(tmp_path).splitlines()
    assert len(table) == 3
    assert table[2] == ("| non-shared | random | -0.50 [-0.60, -0.40] / -0.51 [-0.61, -0.41] / -0.52 [-0.62, -0.42] | "
                        "-0.20 [-0.30, -0.10] / -0.21 [-0.31, -0.11] / -0.22 [-0.32, -0.12] |")


def test_control_markdown_pairs_the_split_cell_error_with_the_exact_fit(s, tmp_path):
    rows = [_rate("shared-linear", "over", "max_multi_error", st, v, theory=-0.25)
            for st, v in (("mean", -0.27), ("median", -0.26), ("q90", -0.3))]
    rows += [_rate("non-shared", "over", "max_multi_error", "mean", -0.2, theory=float("nan")),
             _rate("shared-linear", "exact", "own", "mean", -0.51), _rate("non-shared", "exact", "own", "mean", -0.6)]
    pd.DataFrame(rows).to_csv(tmp_path / "rates.csv", index=False)
    table = s.control_markdown(tmp_path).splitlines()
    assert table[2] == ("| shared-linear | random | -0.27 [-0.37, -0.17] | -0.26 [-0.36, -0.16] | -0.30 [-0.40, -0.20] | "
                        "-0.25 | -0.51 [-0.61, -0.41] | -0.5 |")
    assert table[3] == "| non-shared | random | -0.20 [-0.30, -0.10] | - | - | none | -0.60 [-0.70, -0.50] | -0.5 |"


def test_composite_slopes_are_labelled(s, tmp_path):
    f = pd.DataFrame([dict(problem="non-shared", specification="over", schedule="random", loss="key_value",
                           threshold=0.5, n=n, fits=10, failing=k, trend_z=-2.0, trend_p=0.05)
                      for n, k in ((1000, 6), (2000, 3))])
    f.to_csv(tmp_path / "failing.csv", index=False)
    pd.DataFrame([_rate("non-shared", "over", "key_value", st, -0.3, composite=True, theory=0)
                  for st in ("mean", "median", "q90")]).to_csv(tmp_path / "rates.csv", index=False)
    row = s.failing_markdown(tmp_path).splitlines()[2]
    assert "6/10, 3/10" in row and "-2.00 (0.05)" in row
    assert row.count("(composite)") == 3


def test_bounds_and_lowest_markdown_sum_over_n_per_arm(s, tmp_path):
    base = dict(problem="p", specification="over", schedule="a")
    pd.DataFrame([dict(base, n=n, fits=10, at_bound=b, bias_low_shared=b - 1, bias_low_alone=0, bias_high=0,
                       atom_shared=1, atom_alone=0) for n, b in ((1000, 4), (2000, 6))]
                 + [dict(base, schedule="b", n=1000, fits=10, at_bound=1, bias_low_shared=1, bias_low_alone=0,
                         bias_high=0, atom_shared=0, atom_alone=0)]).to_csv(tmp_path / "bounds.csv", index=False)
    table = s.bounds_markdown(tmp_path).splitlines()
    assert table[2] == "| p | over | a | 10/20 | 8 / 0 | 0 | 2 / 0 |"
    assert table[3] == "| p | over | b | 1/10 | 1 / 0 | 0 | 0 / 0 |"
    pd.DataFrame([dict(base, n=n, data_sets=10, lowest=k, max_excess=e)
                  for n, k, e in ((2000, 9, 1e-3), (1000, 7, 2e-2))]).to_csv(tmp_path / "lowest.csv", index=False)
    assert s.lowest_markdown(tmp_path).splitlines()[2] == "| p | over | a | 7/10, 9/10 | 0.02 |"


def test_power_markdown_keeps_the_problems_asked_for(s, tmp_path):
    rows = []
    for source, prob in (("lognormal", ""), ("fits", "non-shared"), ("fits", "shared-linear"), ("fits", "shared-tanh")):
        for truth, alt, power in ((-0.5, -0.25, 0.9), (-0.25, -0.5, 0.8)):
            rows.append(dict(source=source, problem=prob, specification="over" if prob else "", schedule="random" if prob
                             else "", loss="key_value" if prob else "", sigma=0.5, statistic="mean", truth=truth,
                             alternative=alt, power=power, coverage=0.95, sims=200, ns="1000 2000", replicates=40))
    pd.DataFrame(rows).to_csv(tmp_path / "power.csv", index=False)
    table = s.power_markdown(tmp_path / "power.csv", problems=("non-shared", "shared-linear"))
    assert "non-shared over (random starts)" in table and "shared-linear over" in table
    assert "shared-tanh" not in table and "log-normal" in table
    assert "| 0.90 | 0.80 | 0.95 |" in table


def test_paired_runs_markdown_pairs_the_fits_both_runs_hold(s, tmp_path):
    """Two runs of one grid: only the (n, replicate) fits both hold are paired; the objective's relative move,
    the twofold changes and each run's slopes are of those fits alone."""
    import numpy as np

    ns, reps = [1000, 4000, 16000], 6
    rows = {"a": [], "b": []}
    rng = np.random.default_rng(0)
    for n in ns:
        for r in range(reps):
            base = dict(problem="non-shared", structure="non-shared", specification="over", schedule="random", n=n,
                        replicate=r)
            loss = n ** -0.5 * np.exp(rng.normal(0, 0.1))
            rows["a"].append(dict(base, objective=1.0, loss_key_value=loss))
            if r < 4:  # b holds four of the six replicates; one fit of b moves threefold and goes 1e-3 lower
                moved = 3 * loss if (n, r) == (4000, 1) else loss * 1.01
                rows["b"].append(dict(base, objective=1.0 - (1e-3 if (n, r) == (4000, 1) else 1e-9),
                                      loss_key_value=moved))
    for side in "ab":
        (tmp_path / side).mkdir()
        pd.DataFrame(rows[side]).to_csv(tmp_path / side / "fits.csv", index=False)
    row = s.paired_runs_markdown(tmp_path / "a", tmp_path / "b").splitlines()[2].split(" | ")
    assert row[3] == "12" and row[5] == "1"
    assert row[4] == "-1e-09 / -0.001 / -1e-09"
    mean_a = float(row[6].split(" [")[0])
    assert mean_a == pytest.approx(-0.5, abs=0.1) and row[6].endswith("(composite)")
    with pytest.raises(ValueError, match="share no fit"):
        other = tmp_path / "c"
        other.mkdir()
        pd.DataFrame([dict(rows["a"][0], replicate=99)]).to_csv(other / "fits.csv", index=False)
        s.paired_runs_markdown(tmp_path / "a", other)
