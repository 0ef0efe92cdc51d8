"""Starting-point schedules, the identified part and the flat direction (the robustness study).

The flat direction: in the non-shared model two fitted atoms of one cell with equal keys enter f_G only
through w_1 + w_2 and w_1 v_1 + w_2 v_2, so moving their values against each other leaves f_G unchanged
while the atom-wise losses change. In the shared forms with injective maps a common key forces a common
value, and the corresponding move changes f_G.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import moe_estimation as me
from moe_estimation.experiments.config import STUDY_PRESETS, parse_config
from moe_estimation.experiments.study import FITS_COLUMNS, data_keys, run_study, start_keys

X_GRID = jax.random.uniform(jax.random.key(11), (400, 2), minval=-1, maxval=1)


def _duplicated(problem, extra_weight=0.4):
    """The truth with its first atom split into two atoms at the same place (weights 1 - t and t of w*_1)."""
    atoms = jnp.concatenate([problem.true_atoms, problem.true_atoms[:1]])
    w = jnp.exp(problem.true_biases)
    weights = jnp.concatenate([w.at[0].multiply(1 - extra_weight), w[:1] * extra_weight])
    return atoms, weights


def test_flat_direction_exists_in_the_non_shared_model():
    prob = me.preset("non-shared")
    atoms, w = _duplicated(prob)
    d_k = prob.key_dim
    dv = jnp.array([0.7, -0.4])  # a value move: w_0 dv_0 + w_2 dv_2 = 0, weight sum and keys kept
    moved = atoms.at[0, d_k:].add(dv / w[0]).at[2, d_k:].add(-dv / w[2])
    before, after = me.Params(atoms, jnp.log(w)), me.Params(moved, jnp.log(w))
    f0, f1 = me.predict(prob, before, X_GRID), me.predict(prob, after, X_GRID)
    assert float(jnp.max(jnp.abs(f1 - f0))) < 1e-12  # f_G does not see the move
    d0 = float(me.voronoi_loss(prob, before))
    d1 = float(me.voronoi_loss(prob, after))
    assert d0 < 1e-12 and d1 > 0.5  # D_{1,1} does
    # the identified part does not move; the spread of values does, and only it
    i0, i1 = me.identified_key_value(prob, before), me.identified_key_value(prob, after)
    for name in ("weight", "key", "value", "spread_key"):
        assert abs(float(i1[name]) - float(i0[name])) < 1e-12, name
    assert float(i1["spread_value"]) > 0.1


@pytest.mark.parametrize("name", ["shared-linear", "shared-tanh", "prompt-tuning"])
def test_no_flat_direction_in_the_shared_forms(name):
    """The same move on the shared vector p (w_0 dp_0 + w_2 dp_2 = 0) changes f_G: the keys move with the
    values, so no combination of the two atoms' values is left free."""
    prob = me.preset(name)
    atoms, w = _duplicated(prob)
    dp = jnp.array([0.3, -0.2])
    moved = atoms.at[0].add(dp / w[0]).at[2].add(-dp / w[2])
    f0 = me.predict(prob, me.Params(atoms, jnp.log(w)), X_GRID)
    f1 = me.predict(prob, me.Params(moved, jnp.log(w)), X_GRID)
    assert float(jnp.sqrt(jnp.mean((f1 - f0) ** 2))) > 1e-3


def test_identified_part_splits_the_multi_atom_term_exactly():
    """sum_{i in V_j} w_i ||a_i - a*_j||^2 = W_j ||abar_j - a*_j||^2 + spread_j, for keys and values alike."""
    rng = np.random.default_rng(0)
    true_w = jnp.array([1.0, 2.0])
    true_a = jnp.array([[0.0, 0.0, 1.0], [3.0, 0.0, -1.0]])
    w = jnp.asarray(rng.uniform(0.2, 1.5, 4))
    a = true_a[jnp.array([0, 0, 1, 1])] + 0.2 * jnp.asarray(rng.normal(size=(4, 3)))
    parts = me.voronoi_parts(w, a, true_w, true_a, split=2)
    ident = me.identified_parts(w, a, true_w, true_a, split=2)
    W = jnp.array([w[0] + w[1], w[2] + w[3]])
    mean = jnp.stack([(w[0] * a[0] + w[1] * a[1]) / W[0], (w[2] * a[2] + w[3] * a[3]) / W[1]])
    err = mean - true_a
    key_sq = float(W @ jnp.sum(err[:, :2] ** 2, axis=1))
    val_sq = float(W @ jnp.sum(err[:, 2:] ** 2, axis=1))
    assert float(parts["key_multi"]) == pytest.approx(key_sq + float(ident["spread_key"]), rel=1e-12)
    assert float(parts["value_multi"]) == pytest.approx(val_sq + float(ident["spread_value"]), rel=1e-12)
    assert float(ident["key"]) == pytest.approx(float(jnp.sum(jnp.linalg.norm(err[:, :2], axis=1))), rel=1e-12)
    assert float(ident["weight"]) == pytest.approx(float(parts["weight"]), rel=1e-12)
    # one atom per cell: no spread at all (exactly zero, not rounding), and an empty cell adds only weight
    single = me.identified_parts(w[jnp.array([0, 2])], a[jnp.array([0, 2])], true_w, true_a, split=2)
    assert float(single["spread_key"]) == 0.0 and float(single["spread_value"]) == 0.0
    empty = me.identified_parts(w[:2], a[:2], true_w, true_a, split=2)
    assert float(empty["weight"]) == pytest.approx(abs(float(W[0]) - 1.0) + 2.0, rel=1e-12)
    assert np.isfinite(float(empty["value"]))


@pytest.mark.parametrize("rate", [0.25, 1 / 12, 0.0])
def test_near_truth_start_scales_as_declared(rate):
    """The same key at two sample sizes: the start's offset from the truth scales by exactly (n2/n1)^(-alpha)
    (alpha = 0: the same start), and its size is c n^(-alpha) in the mean over many starts."""
    prob = me.preset("shared-linear")
    s = me.FitSettings(num_prompts=2, init_scale=0.3, init_rate=rate)
    keys = jax.random.split(jax.random.key(3), 4000)
    starts = {n: jax.vmap(lambda k: me.initial_params(k, prob, s, jnp.asarray(float(n))))(keys) for n in (100, 10000)}
    off = {n: np.asarray(p.atoms - prob.true_atoms) for n, p in starts.items()}
    np.testing.assert_allclose(off[10000], off[100] * (10000 / 100) ** (-rate), rtol=1e-12, atol=1e-15)
    for n in (100, 10000):
        assert np.std(off[n]) == pytest.approx(0.3 * n ** (-rate), rel=0.03)
        assert float(me.start_scale(s, n)) == pytest.approx(0.3 * n ** (-rate), rel=1e-12)


def test_random_start_covers_the_declared_region_whatever_n():
    prob = me.preset("non-shared")
    s = me.FitSettings(num_prompts=3, init="random", init_scale=0.5)
    keys = jax.random.split(jax.random.key(4), 2000)
    a = {n: jax.vmap(lambda k: me.initial_params(k, prob, s, jnp.asarray(float(n))))(keys) for n in (100, 10000)}
    np.testing.assert_array_equal(a[100].atoms, a[10000].atoms)
    atoms, biases = np.asarray(a[100].atoms), np.asarray(a[100].biases)
    assert np.abs(atoms).max() <= 0.5 * prob.atom_bound and np.abs(atoms).max() > 0.45 * prob.atom_bound
    assert np.abs(biases).max() <= 1.5 and np.abs(biases).max() > 1.4  # the middle half of [-3, 3]
    with pytest.raises(ValueError, match="init_scale.*\\(0, 1\\]"):
        me.fit(jax.random.key(0), prob, np.zeros((10, 2)), np.zeros((10, 2)), 3, init="random", init_scale=2.0)


def test_fit_reports_its_start_and_more_restarts_keep_the_first_ones():
    prob = me.preset("shared-linear")
    X, Y = me.simulate(jax.random.key(0), prob, 300)
    s = me.FitSettings(num_prompts=3, init_scale=0.2)
    a = me.fit(jax.random.key(1), prob, X, Y, 3, restarts=1, init_scale=0.2, max_steps=5)
    b = me.fit(jax.random.key(1), prob, X, Y, 3, restarts=3, init_scale=0.2, max_steps=5)
    first = me.initial_params(jax.random.fold_in(jax.random.key(1), 0), prob, s, jnp.asarray(300.0))
    np.testing.assert_allclose(a.start.atoms, first.atoms, rtol=1e-13, atol=1e-15)
    assert float(b.restart_objectives[0]) == pytest.approx(float(a.restart_objectives[0]), rel=1e-12)


def test_data_are_common_to_every_problem_and_schedule():
    """Replicate r's inputs and noise depend on (seed, n, r) only; the presets share one regression
    function, so their data sets agree to rounding."""
    from moe_estimation.prefix.data import simulate_rows

    k = data_keys(0, 500, 3)
    Ys = [simulate_rows(me.preset(name), k[1], 500) for name in me.PRESETS]
    for X, Y in Ys[1:]:
        np.testing.assert_array_equal(X, Ys[0][0])
        np.testing.assert_allclose(Y, Ys[0][1], atol=1e-12)
    assert not np.array_equal(jax.random.key_data(start_keys(0, "non-shared", "over", 500, 2)),
                              jax.random.key_data(start_keys(0, "shared-linear", "over", 500, 2)))


def _schedule_study(tmp_path, schedules, ns=(100, 400), problems=("shared-linear",), specs=("over",), max_steps=25):
    cfg = parse_config(dict(seed=2, grid=dict(ns=list(ns), replicates=3, problems=list(problems), specifications=list(specs)),
                            fit=dict(max_steps=max_steps), schedules=schedules, rates=dict(num_bootstrap=100)))
    return run_study(cfg, tmp_path, progress=False), pd.read_csv(tmp_path / "rates.csv")


@pytest.mark.study
def test_study_pairs_schedules_on_the_same_data(tmp_path):
    """A shrinking schedule and a fixed one that coincide at n = 100 give the same fits there (same data,
    same starts); at n = 400 only the start differs, by the declared factor 4^(-1/4)."""
    c = 0.5 * 100 ** (-0.25)
    fits, rates = _schedule_study(tmp_path, {
        "shrinking": dict(init="near-truth", init_scale=0.5, init_rate=0.25, restarts=1),
        "fixed": dict(init="near-truth", init_scale=c, init_rate=0.0, restarts=1),
    })
    assert list(fits.columns) == FITS_COLUMNS and set(fits["schedule"]) == {"shrinking", "fixed"}
    cols = [c for c in FITS_COLUMNS if c not in ("schedule", "init_scale", "init_rate", "seconds", "design")]
    at = lambda sched, n: fits[(fits["schedule"] == sched) & (fits["n"] == n)][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(at("shrinking", 100), at("fixed", 100), rtol=1e-12)
    assert not at("shrinking", 400).equals(at("fixed", 400))
    assert set(rates["schedule"]) == {"shrinking", "fixed", "best-of-all"}  # and the best of the two per data set
    assert {"identified_key", "identified_value", "spread_value"} <= set(rates["loss"])
    row = rates[(rates["schedule"] == "fixed")].iloc[0]
    assert row["init_rate"] == 0.0 and row["restarts"] == 1


@pytest.mark.study
def test_exact_control_has_no_spread_rows(tmp_path):
    fits, rates = _schedule_study(tmp_path, {"near": dict(init_scale=0.1, init_rate=0.0, restarts=1)},
                                  specs=("exact",))
    assert (fits["id_spread_key"] == 0).all() and (fits["id_spread_value"] == 0).all()
    assert not {"spread_key", "spread_value"} & set(rates["loss"])
    assert rates["slope"].notna().all()


@pytest.mark.study
def test_robust_presets_run_at_tiny_size(tmp_path):
    """The robustness presets as declared (problems, specifications, schedules); the GPU-sized one, whose
    schedules include the CPU one's, run at a tiny grid."""
    from moe_estimation.report.plots import plot_study

    declared = {}
    for name in ("robust-quick", "robust"):
        data = dict(STUDY_PRESETS[name])
        cfg = parse_config(data)
        kinds = {(s["init"], s["init_rate"] > 0) for s in cfg.schedules}
        assert {("near-truth", True), ("near-truth", False), ("random", False)} <= kinds, name
        declared[name] = cfg
    quick, full = declared["robust-quick"], declared["robust"]
    assert set(quick.schedule_names) <= set(full.schedule_names)
    assert set(quick.problems) <= set(full.problems)  # the GPU-sized one adds shared-nonlinear
    assert all(quick.specifications_of(p) == full.specifications_of(p) for p in quick.problems)
    data = dict(STUDY_PRESETS["robust"])
    data["grid"] = dict(data["grid"], ns=[100, 120], replicates=2)  # one bucket: one compilation a schedule
    data["fit"] = dict(max_steps=4)
    data["schedules"] = {k: dict(v, restarts=1) for k, v in data["schedules"].items()}
    data["rates"] = dict(num_bootstrap=100)
    fits = run_study(parse_config(data), tmp_path / "r", progress=False)
    specs = fits.groupby("problem")["specification"].unique().map(set).to_dict()
    assert specs == {"non-shared": {"over"}, "shared-linear": {"exact", "over"}, "shared-tanh": {"over"},
                     "prompt-tuning": {"over"}, "shared-nonlinear": {"over"}}
    assert len(fits) == 6 * len(data["schedules"]) * 2 * 2
    written = plot_study(tmp_path / "r", tmp_path / "f")
    names = {p.name for p in written}
    assert "parts_non-shared_over.png" in names and "parts_shared-linear_exact.png" in names
    assert {f"side_by_side_{s}.png" for s in data["schedules"]} <= names


@pytest.mark.parametrize(
    "data, word",
    [
        (dict(fit=dict(init="random"), schedules=dict(a=dict())), "fit.init: with \\[schedules.NAME\\]"),
        (dict(schedules=dict(r=dict(init="random", init_rate=0.25))), "schedules.r.init_rate: does not apply"),
        (dict(schedules=dict(r=dict(init="random", init_scale=1.5))), "schedules.r.init_scale"),
        (dict(schedules=dict(s=dict(init_rate=-0.1))), "schedules.s.init_rate: must be a finite number >= 0"),
        (dict(schedules=dict(s=dict(restart=2))), "schedules.s.restart: unknown key"),
        (dict(schedules=dict(s=dict(init="sideways"))), "schedules.s.init"),
        (dict(schedules=dict(s=3)), "schedules.s: expected a table"),
        (dict(schedules={}), "schedules: expected one or more"),
        (dict(fit=dict(init_rate="fast")), "fit.init_rate: expected float"),
    ],
)
def test_schedule_config_rejections(data, word):
    with pytest.raises(ValueError, match=word):
        parse_config(dict(grid=dict(ns=[100, 200], replicates=2), **data), "my.toml")


def test_per_problem_specifications():
    cfg = parse_config(dict(grid=dict(ns=[100, 200], replicates=2, problems=["non-shared", "shared-linear"],
                                      specifications={"non-shared": ["over"], "shared-linear": ["over", "exact"]})))
    assert cfg.specifications_of("non-shared") == ("over",)
    assert cfg.specifications_of("shared-linear") == ("exact", "over")
    with pytest.raises(ValueError, match="grid.specifications.shared-linear: missing"):
        parse_config(dict(grid=dict(ns=[100, 200], replicates=2, problems=["non-shared", "shared-linear"],
                                    specifications={"non-shared": ["over"]})))
    with pytest.raises(ValueError, match="grid.specifications.tanh: unknown key"):
        parse_config(dict(grid=dict(ns=[100, 200], replicates=2, problems=["non-shared"],
                                    specifications={"non-shared": ["over"], "tanh": ["over"]})))


def test_compiled_programs_are_released_near_the_map_limit():
    """A study with many distinct programs must not run into vm.max_map_count (LLVM's 'Unable to allocate
    section memory'): the runner drops compiled programs when the process holds too many mappings."""
    from moe_estimation.experiments.study import memory_mappings, release_compiled_if_needed

    assert release_compiled_if_needed(fraction=2.0) is False  # far from any limit: nothing dropped
    assert release_compiled_if_needed(fraction=0.0) is (memory_mappings() is not None)


def test_example_configuration_runs_two_schedules():
    from pathlib import Path

    from moe_estimation.experiments.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "simulations" / "example.toml")
    assert cfg.schedule_names == ("shrinking", "random")
    assert cfg.fit_settings(3, "random").init == "random" and cfg.fit_settings(3, "shrinking").init_rate == 0.25


@pytest.mark.study
def test_schedules_of_one_kind_share_a_compilation(tmp_path, monkeypatch):
    """Three near-truth schedules (different scales and rates) and a random one with the same restarts: two
    compiled programs for one bucket, not four. Counted as the programs this study adds to the process's (no
    cache is cleared for it): its max_steps (7) is no other test's, so both are new, and the runner may not
    drop compiled programs while it is counted."""
    from moe_estimation.experiments import study as study_mod

    monkeypatch.setattr(study_mod, "release_compiled_if_needed", lambda *a, **k: False)
    before = study_mod.compiled_programs()
    _schedule_study(tmp_path, {
        "a": dict(init_scale=0.5, init_rate=0.25, restarts=1), "b": dict(init_scale=0.1, init_rate=0.0, restarts=1),
        "c": dict(init_scale=0.3, init_rate=1 / 12, restarts=1), "r": dict(init="random", init_scale=1.0, restarts=1),
    }, ns=(100, 120), max_steps=7)
    assert study_mod.compiled_programs() - before == 2


def test_committed_configurations_parse():
    from pathlib import Path

    from moe_estimation.experiments.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "simulations" / "robust-non-shared.toml")
    assert cfg.schedule_names == ("shrinking", "fixed-0_1", "random") and cfg.replicates == 40
