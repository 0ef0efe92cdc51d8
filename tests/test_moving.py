"""Truths that move with n: the family of truths, its configuration, its fits and its worst-case tables."""

import numpy as np
import pandas as pd
import pytest

from moe_estimation.experiments.config import moving_family, parse_config, study_preset
from moe_estimation.experiments.inference import minimax_tables
from moe_estimation.prefix.problems import merge_factor, move_truth, preset
from moe_estimation.experiments.study import run_study

from conftest import REFERENCE


def _sep(x):
    return float(np.linalg.norm(x[0] - x[1]))


@pytest.mark.parametrize("name", ["non-shared", "shared-linear", "prompt-tuning"])
def test_moved_truth_brings_the_keys_together_and_only_shared_values(name):
    """Keys come factor times as close about their midpoint; non-shared values stay, shared values follow;
    the three linear presets keep the same true keys as one another."""
    base = preset(name)
    moved = move_truth(base, 0.1)
    (k0, v0), (k1, v1) = (tuple(np.asarray(a) for a in p.true_key_value()) for p in (base, moved))
    assert _sep(k1) == pytest.approx(0.1 * _sep(k0), rel=1e-12)
    np.testing.assert_allclose(k1.mean(0), k0.mean(0), atol=1e-12)
    if name == "non-shared":
        np.testing.assert_array_equal(v1, v0)
    else:
        assert _sep(v1) == pytest.approx(0.1 * _sep(v0), rel=1e-12)
    keys = np.asarray(move_truth(preset("non-shared"), 0.1).true_key_value()[0])
    np.testing.assert_allclose(k1, keys, atol=1e-12)
    np.testing.assert_array_equal(np.asarray(move_truth(base, 1.0).true_atoms), np.asarray(base.true_atoms))


def test_moved_truth_refuses_bad_factors_and_pairs():
    base = preset("shared-linear")
    for factor in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="factor"):
            move_truth(base, factor)
    with pytest.raises(ValueError, match="pair"):
        move_truth(base, 0.5, pair=(0, 0))
    with pytest.raises(ValueError, match="parameter box"):
        move_truth(base, 40.0)  # pulled apart out of the box
    assert merge_factor(10000, 0.5, 2.0) == pytest.approx(0.02)


@pytest.mark.parametrize("moving, rule", [
    (dict(beta=-0.1, c=1.0), "beta: must be a finite number >= 0"),
    (dict(beta=0.25, c=0.0), "c: must be a finite number > 0"),
    (dict(beta=0.25), "give both beta"),
    (dict(beta=0.25, c=1.0, speed=2), "speed"),
    (dict(beta=0.25, c=1.0, pair=[1, 1]), "pair"),
    (dict(beta=0.25, c=100.0), r"at n = 100 .*parameter box"),
    ("fast", "expected a table"),
])
def test_moving_configuration_errors_name_the_key(moving, rule):
    data = dict(REFERENCE, grid=dict(REFERENCE["grid"], problems=["m"]),
                problems={"m": dict(preset="shared-linear", moving=moving)})
    with pytest.raises(ValueError, match=rf"problems\.m\.moving.*{rule}"):
        parse_config(data)


def test_minimax_presets_declare_their_families():
    names, tables = moving_family(["non-shared"], betas=(0.0, 0.5), cs=(1.0,))
    assert names == ["non-shared-b0-c1", "non-shared-b0.5-c1"]
    assert tables[names[1]] == dict(preset="non-shared", moving=dict(beta=0.5, c=1.0))
    cfg = study_preset("minimax-quick")
    assert {cfg.family(p) for p in cfg.problems} == {"non-shared", "shared-linear"}
    assert all(cfg.moving(p) is not None for p in cfg.problems)
    big = study_preset("minimax")
    assert "shared-nonlinear" in {big.family(p) for p in big.problems}


MOVING = dict(REFERENCE, grid=dict(REFERENCE["grid"], problems=["shared-linear", "fixed", "close"]),
              problems={"fixed": dict(preset="shared-linear", moving=dict(beta=0.0, c=1.0)),
                        "close": dict(preset="shared-linear", moving=dict(beta=0.5, c=1.0))})


@pytest.fixture(scope="module")
def moving_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("moving") / "study"
    cfg = parse_config(MOVING)
    return cfg, out, run_study(cfg, out, progress=False, log=lambda *a: None)


@pytest.mark.study
def test_a_moving_family_member_at_beta_0_is_its_preset_fit_for_fit(moving_study):
    """beta = 0, c = 1 is the preset's truth; its members share the preset's data and starts, so its fits
    are the preset's to the bit; the moving member's truth is recorded per n in fits.csv."""
    cfg, out, fits = moving_study
    cols = ["specification", "n", "replicate", "params", "objective", "loss_own", "loss_key_value", "true_params"]
    a = fits[fits["problem"] == "shared-linear"][cols].reset_index(drop=True)
    b = fits[fits["problem"] == "fixed"][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    close = fits[fits["problem"] == "close"]
    truths = close.groupby("n")["true_params"].unique()
    assert all(len(t) == 1 for t in truths) and truths.loc[100][0] != truths.loc[120][0]
    for n, t in truths.items():
        atoms = np.array([float(x) for x in t[0].split()])[:4].reshape(2, 2)
        base = np.asarray(cfg.problem("shared-linear").true_atoms)
        assert _sep(atoms) == pytest.approx(_sep(base) * n ** -0.5, rel=1e-9)
    assert not set(close["design"]) & set(fits[fits["problem"] == "fixed"]["design"])


@pytest.mark.study
def test_minimax_tables_take_the_worst_member_at_each_n(moving_study):
    cfg, out, fits = moving_study
    mm, rates = pd.read_csv(out / "minimax.csv"), pd.read_csv(out / "minimax_rates.csv")
    q = pd.read_csv(out / "quantiles.csv")
    assert set(mm["family"]) == {"shared-linear"} and set(mm["members"]) == {2}
    for row in mm[mm["statistic"] == "mean"].itertuples():
        means = q[(q["problem"].isin(["fixed", "close"])) & (q["specification"] == row.specification)
                  & (q["loss"] == row.loss) & (q["n"] == row.n)].set_index("problem")["mean"]
        assert row.worst == pytest.approx(means.max(), rel=1e-12) and row.worst_problem == means.idxmax()
    assert len(rates) == 2 * 2 * len(cfg.statistics) and rates["slope"].notna().all()
    assert (rates["ci_low"] <= rates["slope"]).all() and (rates["slope"] <= rates["ci_high"]).all()
    again, again_rates = minimax_tables(fits, cfg)
    pd.testing.assert_frame_equal(again_rates.drop(columns="note"), rates.drop(columns="note"), check_dtype=False)


def test_minimax_worst_case_and_its_slope_on_made_up_losses():
    """Two members whose mean losses are known: the worst is the larger at each n, and its slope is the
    slope of the upper envelope."""
    cfg = parse_config(dict(REFERENCE, grid=dict(REFERENCE["grid"], ns=[100, 400, 1600], replicates=2,
                                                 problems=["a", "b"]),
                            problems={"a": dict(preset="shared-linear", moving=dict(beta=0.0, c=1.0)),
                                      "b": dict(preset="shared-linear", moving=dict(beta=0.5, c=1.0))}))
    rows = []
    for name, law in (("a", lambda n: n ** -0.5), ("b", lambda n: 0.06 * n ** 0.0)):
        for n in cfg.ns:
            for r in range(2):
                rows.append(dict(problem=name, structure="shared-linear", specification="exact", schedule="default",
                                 init="near-truth", init_scale=0.5, init_rate=0.25, restarts=1, n=n, replicate=r,
                                 loss_own=law(n), loss_key_value=law(n)))
    mm, rates = minimax_tables(pd.DataFrame(rows), cfg)
    mean = mm[(mm["statistic"] == "mean") & (mm["loss"] == "own")].set_index("n")
    np.testing.assert_allclose(mean["worst"], [0.1, 0.06, 0.06])
    assert list(mean["worst_problem"]) == ["a", "b", "b"]
    slope = rates[(rates["statistic"] == "mean") & (rates["loss"] == "own")]["slope"].iloc[0]
    x, y = np.log([100, 400, 1600]), np.log([0.1, 0.06, 0.06])
    assert slope == pytest.approx(np.polyfit(x, y, 1)[0], rel=1e-10)


@pytest.mark.study
def test_a_table_written_before_true_params_existed_resumes(reference_study, tmp_path):
    """A committed study's fits.csv has no true_params column: it is read, resumed and kept, the column
    filled from the configuration."""
    import shutil

    shutil.copytree(reference_study, tmp_path / "s")
    path = tmp_path / "s" / "fits.csv"
    before = pd.read_csv(path)
    before.drop(columns="true_params").to_csv(path, index=False)
    log = []
    fits = run_study(parse_config(REFERENCE), tmp_path / "s", progress=False, log=log.append)
    assert any("resuming: 4 of 4" in line for line in log)
    pd.testing.assert_frame_equal(fits.drop(columns="seconds"), before.drop(columns="seconds"), check_dtype=False)
