"""Convergence orders as unit tests: every preset and specification for which the theory gives a polynomial
rate, at CI size, against ``theory_slope`` within a stated band.

One study (the four presets, both specifications, n = 500..4000, 6 replicates, random starts over the
whole box, best of 4, the headline presets' kind of start) is run once; each case then checks the slope of
log(mean loss) on log n, on the structure's own loss and on the key/value yardstick. The over-specified
non-shared fit has no polynomial reference (the theory's 0 stands for "slower than any polynomial"), so it
is not a case here; the robustness study is where it is measured.
"""

import jax
import pandas as pd
import pytest

from moe_estimation import theory_slope
from moe_estimation.config import parse_config
from moe_estimation.problems import PRESETS
from moe_estimation.study import run_study

BAND = 0.2  # |measured - theory| <= BAND; at this size the measured slopes lie within 0.12 of -1/2
CASES = [(p, s, loss) for p in PRESETS for s in ("exact", "over") for loss in ("own", "key_value")
         if not (p == "non-shared" and s == "over")]


@pytest.fixture(scope="module")
def rates(tmp_path_factory):
    jax.config.update("jax_enable_x64", True)
    cfg = parse_config(dict(
        seed=1, grid=dict(ns=[500, 1000, 2000, 4000], replicates=6, problems=list(PRESETS)),
        fit=dict(max_steps=400), schedules={"random": dict(init="random", init_scale=1.0, restarts=4)},
        rates=dict(num_bootstrap=200)))
    out = tmp_path_factory.mktemp("orders") / "study"
    run_study(cfg, out, progress=False, log=lambda *a: None)
    return pd.read_csv(out / "rates.csv")


@pytest.mark.slow
@pytest.mark.parametrize("problem, spec, loss", CASES)
def test_convergence_order(rates, problem, spec, loss):
    row = rates[(rates["problem"] == problem) & (rates["specification"] == spec) & (rates["loss"] == loss)
                & (rates["statistic"] == "mean")].iloc[0]
    structure = row["structure"]
    want = theory_slope(structure, loss, spec)
    assert want == row["theory_slope"] == -0.5
    assert abs(row["slope"] - want) <= BAND, f"{problem} {spec} {loss}: slope {row['slope']:.3f}, theory {want}"
    assert row["fits_not_converged"] == 0
