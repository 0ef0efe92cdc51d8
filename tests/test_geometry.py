"""More than one truth and shape: drawn problems, L' - L per problem, the geometry factorial and its pairing."""

import numpy as np
import pandas as pd
import pytest

from moe_estimation.experiments.config import geometry_family, parse_config, study_preset
from moe_estimation.experiments.inference import paired_arms
from moe_estimation.prefix.problems import draw_problem
from moe_estimation.experiments.study import run_study

from conftest import REFERENCE


@pytest.mark.parametrize("d, d_v", [(2, 2), (4, 2), (2, 4), (4, 4)])
def test_drawn_truth_has_its_declared_key_separation_and_shared_geometry(d, d_v):
    """The true keys lie exactly key_separation apart; the two structures share keys and values; a change of
    separation moves the pair along one line about one midpoint and changes nothing else."""
    probs = {(s, sep): draw_problem(s, seed=3, d=d, d_v=d_v, key_separation=sep)
             for s in ("non-shared", "shared-linear") for sep in (0.5, 2.0)}
    for (s, sep), p in probs.items():
        assert (p.d, p.d_v, p.num_true_prompts) == (d, d_v, 2)
        k, v = (np.asarray(x) for x in p.true_key_value())
        assert np.linalg.norm(k[0] - k[1]) == pytest.approx(sep, rel=1e-12)
    for sep in (0.5, 2.0):
        a, b = (np.concatenate([np.asarray(x) for x in probs[s, sep].true_key_value()], axis=1)
                for s in ("non-shared", "shared-linear"))
        np.testing.assert_allclose(a, b, atol=1e-12)
    near, far = probs["shared-linear", 0.5], probs["shared-linear", 2.0]
    for field in ("A", "a", "H", "B", "C", "W1", "W2", "true_biases"):
        np.testing.assert_array_equal(np.asarray(getattr(near, field)), np.asarray(getattr(far, field)))
    kn, kf = np.asarray(near.true_key_value()[0]), np.asarray(far.true_key_value()[0])
    np.testing.assert_allclose(kn.mean(0), kf.mean(0), atol=1e-12)
    np.testing.assert_allclose((kf[0] - kf[1]) / 2.0, (kn[0] - kn[1]) / 0.5, atol=1e-12)
    other = draw_problem("shared-linear", seed=4, d=d, d_v=d_v, key_separation=0.5)
    assert not np.allclose(np.asarray(other.B), np.asarray(near.B))


@pytest.mark.parametrize("kwargs, rule", [
    (dict(structure="shared-tanh"), "structure"),
    (dict(d=0), "d: must be an integer >= 1"),
    (dict(d_v=2.5), "d_v"),
    (dict(key_separation=-1.0), "key_separation: must be a finite number > 0"),
    (dict(key_separation=40.0), "key_separation: the draw"),  # the pair leaves the box
    (dict(seed=-1), "seed"),
])
def test_drawn_problem_refuses_bad_arguments(kwargs, rule):
    args = dict(structure="non-shared", seed=0, d=2, d_v=2, key_separation=1.0) | kwargs
    structure = args.pop("structure")
    with pytest.raises(ValueError, match=rule):
        draw_problem(structure, **args)


def _config(tables, problems=None, **grid):
    names = problems or list(tables)
    return dict(REFERENCE, grid=dict(REFERENCE["grid"], problems=names, **grid), problems=tables)


def test_a_drawn_problem_in_a_configuration_and_its_extra_prompts():
    draw = dict(structure="non-shared", seed=1, d=4, d_v=2, key_separation=0.5)
    cfg = parse_config(_config({"a": dict(draw=draw, noise_var=0.04), "b": dict(draw=dict(draw, structure="shared-linear"))},
                               extra_prompts={"a": 2}))
    a, b = cfg.problem("a"), cfg.problem("b")
    assert (a.structure, a.d, a.d_v, a.noise_var, b.noise_var) == ("non-shared", 4, 2, 0.04, 0.01)
    assert cfg.num_prompts(a, "over", "a") == 4 and cfg.num_prompts(b, "over", "b") == 3
    assert cfg.num_prompts(a, "exact", "a") == 2
    assert cfg.to_dict()["problem_extra_prompts"] == {"a": 2}
    # one L' - L for every problem: config.json reads as before the per-problem form existed
    assert "problem_extra_prompts" not in parse_config(_config({"a": dict(draw=draw)}, extra_prompts={"a": 1})).to_dict()
    assert "problem_extra_prompts" not in parse_config(REFERENCE).to_dict()


@pytest.mark.parametrize("table, grid, key, rule", [
    (dict(draw=dict(seed=1, d=2, d_v=2)), {}, "problems.a.draw.structure", "required"),
    (dict(draw=dict(structure="non-shared", depth=3)), {}, "problems.a.draw.depth", "unknown key"),
    (dict(draw=dict(structure="non-shared", d="two")), {}, "problems.a.draw.d", "expected int"),
    (dict(draw=dict(structure="non-shared"), seed=3), {}, "problems.a.seed", "draw.seed"),
    (dict(draw=dict(structure="non-shared"), preset="non-shared"), {}, "problems.a.draw", "either a preset or a draw"),
    (dict(draw=dict(structure="non-shared"), structure="shared-linear"), {}, "problems.a.structure", "draw.structure"),
    (dict(draw="non-shared"), {}, "problems.a.draw", "expected a table"),
    (dict(draw=dict(structure="non-shared")), dict(extra_prompts={"zz": 2}), "grid.extra_prompts.zz", "unknown key"),
    (dict(draw=dict(structure="non-shared")), dict(extra_prompts={"a": 0}), "grid.extra_prompts.a", ">= 1"),
    (dict(draw=dict(structure="non-shared")), dict(extra_prompts={"a": 1.5}), "grid.extra_prompts.a", "expected int"),
])
def test_drawn_problem_configuration_errors_name_the_key(table, grid, key, rule):
    with pytest.raises(ValueError, match=key.replace(".", r"\.") + ".*" + rule):
        parse_config(_config({"a": table}, **grid))


def test_geometry_preset_is_the_declared_factorial():
    cfg = study_preset("geometry")
    assert len(cfg.problems) == 2 * 2 * 2 * 2 * 3 * 2 * 2
    shapes = {(cfg.problem(p).d, cfg.problem(p).d_v) for p in cfg.problems}
    assert shapes == {(2, 2), (2, 4), (4, 2), (4, 4)}
    assert {cfg.extra_prompts_of(p) for p in cfg.problems} == {1, 2}
    for p in cfg.problems:  # the exact control once a geometry, with L' - L = 1
        assert cfg.specifications_of(p) == (("exact", "over") if cfg.extra_prompts_of(p) == 1 else ("over",))
    assert cfg.ns == (500, 1000, 2000, 4000, 8000) and cfg.replicates == 10


def test_differences_pair_problems_only_on_common_data():
    """Two problems are compared in differences.csv when they share inputs and noise (and, drawn, their truth):
    the presets every two as before; a factorial over geometries only at one truth."""
    names, tables, specs, extra = geometry_family(ds=(2, 4), d_vs=(2,), draws=(0,), separations=(0.5, 1.5),
                                                  noise_vars=(0.01,), extras=(1,))
    cfg = parse_config(_config(tables, names, specifications={n: ["over"] for n in names}))
    rows = pd.DataFrame([dict(problem=p, specification="over", schedule="default") for p in cfg.problems])
    pairs = [(a[0], b[0]) for axis, a, b in paired_arms(rows, cfg) if axis == "problem"]
    assert len(pairs) == 4  # non-shared against shared-linear at each of four (d, separation)
    for a, b in pairs:
        assert a.replace("non-shared", "shared-linear") == b
    presets = parse_config(dict(REFERENCE, grid=dict(REFERENCE["grid"], problems=["non-shared", "shared-linear",
                                                                                    "shared-nonlinear"])))
    rows = pd.DataFrame([dict(problem=p, specification="over", schedule="default") for p in presets.problems])
    assert sum(axis == "problem" for axis, *_ in paired_arms(rows, presets)) == 3


@pytest.mark.study
def test_a_study_of_drawn_problems_fits_each_its_own_extra_prompts(tmp_path):
    names, tables, specs, extra = geometry_family(ds=(2,), d_vs=(4,), draws=(0,), separations=(0.5,),
                                                  noise_vars=(0.01,))
    cfg = parse_config(dict(REFERENCE, grid=dict(REFERENCE["grid"], problems=names, specifications=specs,
                                                 extra_prompts=extra), problems=tables))
    fits = run_study(cfg, tmp_path / "s", progress=False, log=lambda *a: None)
    got = fits.groupby(["problem", "specification"])["num_prompts"].unique().map(lambda x: int(x[0])).to_dict()
    for name in names:
        x = extra[name]
        assert got[(name, "over")] == 2 + x
        assert ((name, "exact") in got) == (x == 1)
    assert set(fits["structure"]) == {"non-shared", "shared-linear"}
    # one truth, one data set a replicate: every two of its four problems over-specified, its two exact fits
    diffs = pd.read_csv(tmp_path / "s" / "differences.csv")
    pairs = {(r.a, r.b, r.specification) for r in diffs[diffs["axis"] == "problem"].itertuples()}
    assert len({p for p in pairs if p[2] == "over"}) == 6 and len({p for p in pairs if p[2] == "exact"}) == 1
    geo = pd.read_csv(tmp_path / "s" / "geometry.csv")
    assert len(geo) == 6  # (problem, specification) cells: 4 over-specified, 2 exact
    assert set(geo["extra_prompts"]) == {0, 1, 2} and set(geo["d_v"]) == {4}
    np.testing.assert_allclose(geo["key_separation"], 0.5, rtol=1e-12)
    assert (geo["fits_n_min"] == 3).all() and geo["median_slope"].notna().all()
    effects = pd.read_csv(tmp_path / "s" / "geometry_effects.csv")
    over = effects[(effects["specification"] == "over")]
    assert set(over["factor"]) == {"extra_prompts"}  # the one factor with two levels among the over-specified fits
    assert (over.groupby("structure")["cells"].sum() == 2).all()
    again = run_study(cfg, tmp_path / "s", progress=False, log=lambda *a: None)
    pd.testing.assert_frame_equal(fits, again)
