"""The benchmark's contract: its records, its equal-objective rule, and the step floor."""

import json

import numpy as np
import pytest

from moe_estimation.experiments.bench import EQUAL_RTOL, run_bench, step_floor


@pytest.mark.study
def test_bench_records_and_equal_objectives(tmp_path):
    path = tmp_path / "bench.json"
    records = run_bench(sizes=(300,), fits=3, problems=("shared-linear",), json_path=path, log=lambda *a: None)
    saved = json.loads(path.read_text())
    assert saved == json.loads(json.dumps(records))
    assert {r["method"] for r in saved} == {"ours", "scipy", "optimistix"}
    for r in saved:
        assert {"shape", "method", "fits", "seconds", "fits_per_second", "mean_objective"} <= set(r)
        assert r["fits"] == 3 and r["seconds"] > 0
        np.testing.assert_allclose(r["fits_per_second"], r["fits"] / r["seconds"])
    ours = next(r for r in saved if r["method"] == "ours")["mean_objective"]
    for r in saved:  # same data, same starts, same tolerances: the same least-squares minimum
        assert abs(r["mean_objective"] - ours) <= EQUAL_RTOL * ours, r


def test_step_floor_by_hand():
    # 10 rows, P = 3, d = d_v = 2, float64: reads 10 * (2 + 4 + 2) numbers; 10 * 2 * (3*4 + 6 + 2) flops
    assert step_floor(10, 3, 2, 2, 8) == (640, 400)


@pytest.mark.study
def test_step_bench_cli(tmp_path, cli):
    path = tmp_path / "step.json"
    out = cli("bench", "--step", "--sizes", "100", "--fits", "2", "--steps", "3", "--problems", "non-shared",
              "--json", path)
    assert out.returncode == 0, out.stderr
    (r,) = json.loads(path.read_text())
    assert r["rows"] == 128 and r["steps_taken"] == 2 * 3
    assert r["step_seconds"] > 0 and r["floor_seconds"] > 0
    np.testing.assert_allclose(r["times_floor"], r["step_seconds"] / r["floor_seconds"])
    bad = cli("bench", "--step", "--steps", "0")
    assert bad.returncode == 2 and "--steps" in bad.stderr


@pytest.mark.study
def test_precision_bench_records(tmp_path):
    from moe_estimation.experiments.bench import run_precision_bench

    recs = run_precision_bench(sizes=(200,), fits=2, problems=("shared-linear",), json_path=tmp_path / "p.json",
                               log=lambda *a: None)
    assert [r["specification"] for r in recs] == ["exact", "over"]
    assert json.loads((tmp_path / "p.json").read_text()) == json.loads(json.dumps(recs))
    exact = recs[0]
    assert exact["converged_float64"] == 2
    # same data, same starts, exactly specified: float32 lands on the float64 estimate to float32 accuracy
    assert exact["loss_rel_diff_max"] < 0.05 and exact["objective_rel_diff_max"] < 1e-4
