"""The inverse bound m(delta) and the Le Cam table: the theory's deterministic inequality, checked directly."""

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from moe_estimation.cli import main
from moe_estimation.prefix.estimator import flatten_params
from moe_estimation.experiments.inverse import (InverseSettings, InverseStudy, check_inverse_study, inputs, inverse_bound,
                                    inverse_slope, l2_distance, penalties, shrink, zero_floor)
from moe_estimation.prefix.model import Params
from moe_estimation.prefix.problems import preset
from moe_estimation.prefix.voronoi import voronoi_loss, voronoi_parts

SMALL = InverseSettings(points=256, starts=6)


def _zero_set_member(spread: float) -> Params:
    """Over-specified non-shared: true prompt 0 split in two with its key, its weight shared equally and the two
    values spread about the true value by +-spread: f_G = f_G* exactly, at a loss of order ``spread``."""
    p = preset("non-shared")
    atoms, b = np.asarray(p.true_atoms), np.asarray(p.true_biases)
    up, down = atoms[0].copy(), atoms[0].copy()
    up[2:] += spread
    down[2:] -= spread
    return Params(jnp.asarray(np.stack([up, down, atoms[1]])), jnp.asarray([b[0] - np.log(2), b[0] - np.log(2), b[1]]))


def test_the_zero_set_and_shrink():
    """A measure of the zero set has f_G = f_G* and a loss of order one; shrink keeps it in the zero set and
    scales its loss by the ratio."""
    p = preset("non-shared")
    X = inputs(p, 512)
    G = _zero_set_member(0.4)
    assert float(l2_distance(p, G, X)) < 1e-28
    loss = float(voronoi_loss(p, G))
    assert loss > 0.1
    half = shrink(p, flatten_params(G), 0.5, 3)
    H = Params(jnp.asarray(half[:12].reshape(3, 4)), jnp.asarray(half[12:]))
    assert float(l2_distance(p, H, X)) < 1e-28
    assert float(voronoi_loss(p, H)) == pytest.approx(0.5 * loss, rel=1e-9)


def test_smooth_loss_is_below_the_loss_by_at_most_its_scale_and_zero_smoothing_is_the_loss():
    rng = np.random.default_rng(0)
    w, a, tw, ta = rng.uniform(0.5, 1.5, 3), rng.normal(size=(3, 4)), rng.uniform(0.5, 1.5, 2), rng.normal(size=(2, 4))
    exact = voronoi_parts(w, a, tw, ta, split=2)
    assert voronoi_parts(w, a, tw, ta, split=2, smooth=0.0) == exact
    s = 1e-3
    smooth = voronoi_parts(w, a, tw, ta, split=2, smooth=s)
    for key in ("d2", "d1r"):
        assert float(exact[key]) - 10 * s * w.sum() <= float(smooth[key]) <= float(exact[key])
    with pytest.raises(ValueError, match="smooth: must be a finite number >= 0"):
        voronoi_parts(w, a, tw, ta, smooth=-1.0)


def test_penalties_and_the_study_checks():
    assert penalties(1e6) == (1.0, 1e2, 1e4, 1e6)
    assert penalties(50.0) == (50.0,)
    for change, rule in [(dict(problems=("nope",)), "--problem"), (dict(deltas=(0.1, -1.0)), "--deltas"),
                         (dict(losses=("d3",)), "--losses"), (dict(specifications=("under",)), "--specifications"),
                         (dict(le_cam_cs=(0.0,)), "--le-cam-cs"), (dict(le_cam_ns=(10.5,)), "--le-cam-ns"),
                         (dict(settings=InverseSettings(starts=1)), "starts"),
                         (dict(settings=InverseSettings(penalty=-1.0)), "penalty"), (dict(window=0.0), "--window")]:
        with pytest.raises(ValueError, match=rule):
            check_inverse_study(InverseStudy(**change))
    with pytest.raises(ValueError, match="num_prompts"):
        inverse_bound(preset("shared-linear"), [0.1], num_prompts=1, settings=SMALL)
    with pytest.raises(ValueError, match="deltas"):
        inverse_bound(preset("shared-linear"), [0.0], settings=SMALL)


@pytest.mark.statistical
def test_shared_inverse_bound_is_of_order_delta_squared():
    """Shared-linear, exactly specified, D_2: m(delta) falls like delta^2 near 0 (slope 2 within 0.2) and
    m / delta^2 stays bounded away from zero."""
    p = preset("shared-linear")
    deltas = [0.001, 0.003, 0.01]
    res = inverse_bound(p, deltas, settings=SMALL)
    assert np.all(res.feasible >= 1)
    np.testing.assert_allclose(res.achieved, deltas, rtol=SMALL.tolerance)
    assert 1.8 <= inverse_slope(deltas, res.m, zero_floor(p, SMALL)) <= 2.2
    assert np.all(res.m / np.square(deltas) > 1e-3)


@pytest.mark.statistical
def test_over_specified_non_shared_inverse_bound_is_zero_on_the_zero_set():
    """Over-specified non-shared: for losses of order one and small alike, a measure with f_G = f_G* (m at the
    solver's zero, far below the zero floor) is found; exactly specified, m is positive."""
    p = preset("non-shared")
    floor = zero_floor(p, SMALL)
    over = inverse_bound(p, [0.3, 0.03], num_prompts=3, settings=SMALL)
    assert np.all(over.m <= floor), over.m
    exact = inverse_bound(p, [0.03], settings=SMALL)
    assert exact.m[0] > 1e3 * floor


@pytest.mark.e2e
def test_inverse_bound_command_writes_resumes_and_refuses_another_run(tmp_path, capsys):
    out = tmp_path / "inv"
    args = ["inverse-bound", "--problem", "shared-linear", "--out", str(out), "--specifications", "exact",
            "--losses", "own", "--deltas", "0.01", "0.003", "--starts", "4", "--points", "128", "--le-cam-ns", "100",
            "1000", "--le-cam-cs", "1", "--le-cam-deltas", "0.1", "--no-progress"]
    assert main(args) == 0
    table = pd.read_csv(out / "inverse.csv")
    assert list(table["delta"]) == [0.01, 0.003] and set(table["problem"]) == {"shared-linear"}
    lecam = pd.read_csv(out / "le_cam.csv")
    assert len(lecam) == 4  # beta 0 and 0.5 at two n, one delta
    fixed = lecam[lecam["beta"] == 0]
    assert fixed["snr"].iloc[1] == pytest.approx(10 * fixed["snr"].iloc[0], rel=1e-12)  # one truth: n m / sigma^2 grows like n
    summary = pd.read_csv(out / "inverse_summary.csv")
    assert summary["slope"].iloc[0] == pytest.approx(2.0, abs=0.3)
    capsys.readouterr()
    assert main(args) == 0  # resumed: nothing left to compute, the same tables
    pd.testing.assert_frame_equal(pd.read_csv(out / "inverse.csv"), table)
    assert main(args[:-1] + ["--seed", "1", "--no-progress"]) == 2
    assert "different inverse-bound run" in capsys.readouterr().err
    assert main(["plot", "--results", str(out), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "inverse.png").is_file() and (tmp_path / "fig" / "le_cam.png").is_file()
