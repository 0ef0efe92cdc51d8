"""Teacher-student prefix estimation in the transformer (moe_estimation.transformer.teacher)."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from moe_estimation.prefix.data import fold_key
from moe_estimation.transformer.model import attention, init_backbone
from moe_estimation.transformer.teacher import (
    TEACHER_PRESETS,
    TeacherStudy,
    features,
    attention_mass,
    fit_cell,
    initial_student,
    make_teacher,
    prefix_losses,
    student_prefix,
    validate_study,
)

STUDY = TEACHER_PRESETS["teacher-tiny"]


@pytest.fixture(scope="module")
def backbone():
    # a random (not pre-trained) backbone in float64: the statistics do not need pre-training
    return init_backbone(jax.random.key(0), STUDY.backbone, dtype=jnp.float64)


def _as_no_share(teacher, cfg):
    """The teacher's prefixes as no-share student parameters (keys and values (layers, L, D), biases)."""
    merge = lambda a: a.transpose(1, 0, 2).reshape(a.shape[1], cfg.width)
    return dict(pk=jnp.stack([merge(k) for k, _, _ in teacher]), pv=jnp.stack([merge(v) for _, v, _ in teacher]),
                b=jnp.stack([b for _, _, b in teacher]))


@pytest.mark.study
def test_a_student_with_the_teachers_prefixes_has_zero_yardstick_and_the_noise_as_residual(backbone):
    cfg = STUDY.backbone
    for truth in ("shared", "free"):
        teacher = make_teacher(STUDY, backbone, truth)
        own = student_prefix("no-share", _as_no_share(teacher, cfg), backbone, cfg)
        losses = prefix_losses(own, teacher, cfg)
        assert float(losses["d2"]) == 0.0 and float(losses["id_key"]) == 0.0 and float(losses["id_value"]) == 0.0
        tokens = jax.random.randint(jax.random.key(1), (128, cfg.seq_len), 0, cfg.vocab)
        f = features(backbone, tokens, cfg, teacher)
        Y = f + STUDY.noise_sd * jax.random.normal(jax.random.key(2), f.shape)
        msr = float(jnp.mean((features(backbone, tokens, cfg, own) - Y) ** 2))
        assert msr == pytest.approx(STUDY.noise_sd**2, rel=0.1)  # 4096 numbers: the estimate's sd is 2%
    # and a student away from the truth is not scored zero, whatever the order of its prefixes
    moved = _as_no_share(teacher, cfg)
    moved["pk"] = moved["pk"] + 0.1
    d = float(prefix_losses(student_prefix("no-share", moved, backbone, cfg), teacher, cfg)["d2"])
    swapped = jax.tree.map(lambda a: a[..., ::-1, :] if a.ndim == 3 and a.shape[-1] == cfg.width else a, moved)
    swapped["b"] = moved["b"][..., ::-1]
    assert d > 0 and float(prefix_losses(student_prefix("no-share", swapped, backbone, cfg), teacher, cfg)["d2"]) == pytest.approx(d)


def test_shared_and_free_truths_share_keys_and_differ_in_values(backbone):
    shared, free = (make_teacher(STUDY, backbone, t) for t in ("shared", "free"))
    for (k1, v1, _), (k2, v2, _) in zip(shared, free):
        np.testing.assert_array_equal(k1, k2)
        assert float(jnp.abs(v1 - v2).max()) > 0.1


@pytest.mark.study
def test_only_the_prefix_parameters_receive_gradients(backbone):
    cfg = STUDY.backbone
    tokens = jax.random.randint(jax.random.key(3), (8, cfg.seq_len), 0, cfg.vocab)
    teacher = make_teacher(STUDY, backbone, "shared")
    Y = features(backbone, tokens, cfg, teacher)
    for kind in ("no-share", "simple-share", "deep-share"):
        params = initial_student(jax.random.key(4), STUDY, kind, 3, backbone)

        def objective(params, bb):
            return jnp.sum((features(bb, tokens, cfg, student_prefix(kind, params, bb, cfg)) - Y) ** 2)

        g_params, g_bb = jax.grad(objective, argnums=(0, 1))(params, backbone)
        for name, g in g_params.items():
            assert float(jnp.abs(g).max()) > 0, (kind, name)  # every prefix (and network) parameter moves
        # the backbone enters the students' prefixes as a constant: through W_K, W_V it gets no gradient
        # (the plain forward pass still depends on it; what is frozen is the prefix map's use of it)
        zero_prefix = jax.grad(lambda bb: jnp.sum(jnp.stack(
            [jnp.sum(k) + jnp.sum(v) for k, v, _ in student_prefix(kind, params, bb, cfg)])))(backbone)
        assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(zero_prefix)), kind


def test_a_zero_gate_bias_is_plain_prefix_attention():
    k = jax.random.split(jax.random.key(5), 6)
    D, H, L = 8, 2, 3
    W = [jax.random.normal(k[i], (D, D)) for i in range(3)]
    x = jax.random.normal(k[3], (4, D))
    pk, pv = jax.random.normal(k[4], (H, L, D // H)), jax.random.normal(k[5], (H, L, D // H))
    np.testing.assert_allclose(attention(*W, x, H, pk, pv, jnp.zeros((H, L))), attention(*W, x, H, pk, pv), atol=1e-6)
    # a gate bias of log 2 is the same prefix written twice
    twice = attention(*W, x, H, jnp.concatenate([pk, pk], 1), jnp.concatenate([pv, pv], 1))
    np.testing.assert_allclose(attention(*W, x, H, pk, pv, jnp.full((H, L), np.log(2.0))), twice, atol=1e-5)


@pytest.mark.study
def test_a_correctly_specified_student_recovers_the_teachers_prefixes(backbone):
    """Shared truth, simple-share student with L' = L, n = 256, noise sd 0.001, best of 3 random starts:
    the yardstick must fall below 0.3 (from about 10 at the start) and every fit converge."""
    study = STUDY._replace(restarts=3, max_steps=200, noise_sd=1e-3)
    cfg = study.backbone
    teacher = make_teacher(study, backbone, "shared")
    test_tokens = jax.random.randint(jax.random.key(6), (64, cfg.seq_len), 0, cfg.vocab)
    dkeys = jax.random.key_data(jax.random.split(jax.random.key(7), 2))
    skeys = jax.random.key_data(jax.random.split(jax.random.key(8), 2))
    res, truth_mass = fit_cell(study, "simple-share", study.num_prefixes, 256, backbone, teacher, test_tokens, dkeys, skeys)
    assert np.all(res["converged"])
    assert np.all(res["start"] > 3.0)
    assert np.all(res["losses"]["d2"] < 0.3), res["losses"]["d2"]
    assert np.all(res["excess"] < 1e-3)
    # weighted by attention mass the yardstick is small too, and its cells by key agree at this fit
    assert np.all(res["mass"]["d2"] < 0.3) and np.all(res["by_key"] < 0.3)
    # the recorded prefixes are the fit's: scored again they give its yardstick
    for r in range(2):
        prefix = [(res["keys"][r, i], res["values"][r, i], res["biases"][r, i]) for i in range(cfg.layers)]
        assert float(prefix_losses(prefix, teacher, cfg)["d2"]) == pytest.approx(float(res["losses"]["d2"][r]), rel=1e-9)
        np.testing.assert_allclose(res["attention_mass"][r], attention_mass(backbone, test_tokens, cfg, prefix), rtol=1e-9)
    # every mass is a share of attention, and the teacher's prefixes carry some of it
    assert np.all((truth_mass > 0) & (truth_mass < 1)) and truth_mass.shape == (cfg.layers, cfg.heads, study.num_prefixes)


def test_the_design_check_presets_differ_from_teacher_quick_only_where_they_say():
    """teacher-more, teacher-noise and teacher-starts are compared with (or combined with) teacher-quick in
    the README: each must keep every other field of its design."""
    base = TEACHER_PRESETS["teacher-quick"]._asdict()
    changed = lambda name: {k for k, v in TEACHER_PRESETS[name]._asdict().items() if v != base[k]}
    assert changed("teacher-more") == {"cases"}
    assert changed("teacher-noise") == {"noise_sd", "ns", "specifications"}
    assert changed("teacher-starts") == {"restarts", "ns"}
    assert set(TEACHER_PRESETS["teacher-starts"].ns) < set(base["ns"])


@pytest.mark.study
def test_more_starts_keep_the_first_ones_so_no_fit_gets_worse(backbone):
    """teacher-starts' claim: with 4 starts a fit's first 2 are the 2-start fit's own, so its best objective
    is never higher."""
    cfg = STUDY.backbone
    teacher = make_teacher(STUDY, backbone, "shared")
    test_tokens = jax.random.randint(jax.random.key(6), (16, cfg.seq_len), 0, cfg.vocab)
    dkeys = jax.random.key_data(jax.random.split(jax.random.key(7), 3))
    skeys = jax.random.key_data(jax.random.split(jax.random.key(8), 3))
    obj = {r: fit_cell(STUDY._replace(restarts=r), "no-share", STUDY.num_prompts("over"), 16, backbone, teacher,
                       test_tokens, dkeys, skeys)[0]["objective"] for r in (1, 2, 4)}
    assert np.all(obj[2] <= obj[1] * (1 + 1e-12)) and np.all(obj[4] <= obj[2] * (1 + 1e-12)), obj
    assert np.any(obj[4] < obj[1] * (1 - 1e-6)), obj  # the extra starts matter somewhere, or the test shows nothing


def test_attention_mass_is_the_share_of_attention_a_prefix_receives(backbone):
    """A prefix's mass: the attention weight on its slot averaged over queries and sequences, computed by hand
    here from the layer's softmax; a prefix no query meets (gate bias at -inf) has none, whatever exp(bias)
    says of another representative, and the masses of one head with its tokens sum to 1."""
    cfg = STUDY.backbone
    teacher = make_teacher(STUDY, backbone, "shared")
    tokens = jax.random.randint(jax.random.key(3), (5, cfg.seq_len), 0, cfg.vocab)
    mass = np.asarray(attention_mass(backbone, tokens, cfg, teacher))
    # by hand, layer 0: the embeddings' attention scores against [prefix keys, token keys]
    def _ln(p, x):  # the backbone's layer norm, written out
        mu = x.mean(-1, keepdims=True)
        return (x - mu) / jnp.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + 1e-5) * p["g"] + p["b"]

    lp, dh = backbone["layers"][0], cfg.head_dim
    by_hand = []
    for t in tokens:
        x = _ln(lp["ln1"], backbone["tok"][t] + backbone["pos"][: cfg.seq_len])
        q = (x @ lp["W_Q"]).reshape(cfg.seq_len, cfg.heads, dh).transpose(1, 0, 2)
        k = (x @ lp["W_K"]).reshape(cfg.seq_len, cfg.heads, dh).transpose(1, 0, 2)
        keys = jnp.concatenate([teacher[0][0], k], axis=1)
        scores = jnp.einsum("htd,hsd->hts", q, keys) / jnp.sqrt(dh)
        scores = scores.at[:, :, : STUDY.num_prefixes].add(teacher[0][2][:, None, :])
        by_hand.append(np.asarray(jax.nn.softmax(scores, -1))[:, :, : STUDY.num_prefixes].mean(1))
    np.testing.assert_allclose(mass[0], np.mean(by_hand, 0), rtol=1e-10)
    assert np.all((mass > 0) & (mass < 1)) and np.all(mass.sum(-1) < 1)
    # the second prefix made invisible: its mass vanishes while its exp(bias) is still a number
    hidden = [(k, v, b.at[:, 1].set(-1e3)) for k, v, b in teacher]
    m = np.asarray(attention_mass(backbone, tokens, cfg, hidden))
    assert np.all(m[:, :, 1] < 1e-300 + 1e-12) and np.all(m[:, :, 0] > 0)


def test_losses_weighted_by_mass_and_cells_by_key(backbone):
    """prefix_losses with the teacher's own masses on both sides is zero at the truth; cells by key put a prefix
    whose value wanders to another true value back with its key's atom."""
    cfg = STUDY.backbone
    teacher = make_teacher(STUDY, backbone, "free")
    tokens = jax.random.randint(jax.random.key(4), (8, cfg.seq_len), 0, cfg.vocab)
    m = attention_mass(backbone, tokens, cfg, teacher)
    assert float(prefix_losses(teacher, teacher, cfg, weights=m, true_weights=m)["d2"]) == 0.0
    # prefix 0's value moved onto prefix 1's true value in layer 0: by atom and by key the cells may differ
    k, v, b = teacher[0]
    moved = [(k, v.at[:, 0].set(v[:, 1]), b)] + list(teacher[1:])
    by_atom = prefix_losses(moved, teacher, cfg)
    by_key = prefix_losses(moved, teacher, cfg, cells="key")
    value_error = float(jnp.sum(jnp.exp(b[:, 0]) * jnp.linalg.norm(v[:, 0] - v[:, 1], axis=-1)))
    assert float(by_key["d2"]) == pytest.approx(value_error, rel=1e-9)  # scored against its own key's atom
    assert float(by_atom["d2"]) != pytest.approx(value_error, rel=1e-6)
    with pytest.raises(ValueError, match="cells: expected one of"):
        prefix_losses(moved, teacher, cfg, cells="value")


def test_the_anatomy_finds_an_invisible_extra_prefix_and_a_spread_one(backbone):
    """Two over-specified students built by hand from the teacher: (a) an extra prefix copying true prefix 0 with a
    gate bias of -30 (invisible: mass ~0, whatever its key); (b) true prefix 0 split in two halves of its mass
    (biases log 0.6 and log 0.4), the lighter part's value moved by 0.3 (a spread along its cell, the MoE mechanism). The anatomy marks
    the right extra prefix in every head, its mass share, its errors and whether its cell by key moved."""
    import json

    from moe_estimation.transformer.teacher import extra_prefix_summary, prefix_anatomy

    cfg = STUDY.backbone
    teacher = make_teacher(STUDY, backbone, "shared")
    tokens = jax.random.randint(jax.random.key(5), (32, cfg.seq_len), 0, cfg.vocab)
    truth_mass = attention_mass(backbone, tokens, cfg, teacher)
    shift = 0.3 * jnp.eye(cfg.head_dim)[0]
    students = {
        "invisible": [(jnp.concatenate([k, k[:, :1]], 1), jnp.concatenate([v, v[:, :1]], 1),
                       jnp.concatenate([b, jnp.full((cfg.heads, 1), -30.0)], 1)) for k, v, b in teacher],
        "spread": [(jnp.concatenate([k, k[:, :1]], 1), jnp.concatenate([v, v[:, :1] + shift], 1),
                    jnp.concatenate([b.at[:, 0].set(np.log(0.6)), jnp.full((cfg.heads, 1), np.log(0.4))], 1))
                   for k, v, b in teacher]}
    rows = []
    for name, prefix in students.items():
        mass = attention_mass(backbone, tokens, cfg, prefix)
        # the student computes the teacher's function (within rounding) in both cases
        np.testing.assert_allclose(features(backbone, tokens, cfg, prefix), features(backbone, tokens, cfg, teacher),
                                   atol=1e-6 if name == "invisible" else 1.0)
        rows.append(dict(truth="shared", parameterisation=name, specification="over", n=8, seed=0,
                         params=json.dumps(dict(keys=np.stack([np.asarray(k) for k, _, _ in prefix]).tolist(),
                                                values=np.stack([np.asarray(v) for _, v, _ in prefix]).tolist(),
                                                biases=np.stack([np.asarray(b) for _, _, b in prefix]).tolist())),
                         attention_mass=json.dumps(np.asarray(mass).tolist()),
                         true_attention_mass=json.dumps(np.asarray(truth_mass).tolist())))
    config_teacher = {"shared": [dict(keys=np.asarray(k).tolist(), values=np.asarray(v).tolist()) for k, v, _ in teacher]}
    anatomy = prefix_anatomy(pd.DataFrame(rows), config_teacher)
    extra = anatomy[anatomy["extra"]]
    assert len(extra) == 2 * cfg.layers * cfg.heads and (extra["prefix"] == 2).all()
    inv, spread = (extra[extra["parameterisation"] == k] for k in ("invisible", "spread"))
    assert (inv["mass"] < 1e-10).all() and (inv["key_error"] == 0).all() and (inv["value_error"] == 0).all()
    assert (spread["mass"] > 0.2 * spread["true_mass"]).all() and (spread["key_to_nearest_true_key"] == 0).all()
    np.testing.assert_allclose(spread["value_error"], 0.3, rtol=1e-12)
    summary = extra_prefix_summary(anatomy).set_index("parameterisation")
    assert summary.loc["invisible", "invisible"] == 1.0 and summary.loc["spread", "invisible"] == 0.0
    assert summary.loc["spread", "moved_cell"] == 0.0


@pytest.mark.study
def test_a_frozen_map_student_fits_the_frozen_map_truth_and_the_truth_scores_zero(backbone):
    """The frozen-map truth is the frozen network at the true vectors: a frozen-map student holding those vectors
    has the teacher's prefixes (yardstick 0), and from random starts it fits the teacher's function and comes
    near its prefixes (exact, n = 256, sd 1e-3)."""
    from moe_estimation.transformer.teacher import frozen_map, with_frozen_map

    study = STUDY._replace(cases=(("frozen-map", "frozen-map"),), restarts=3, max_steps=200, noise_sd=1e-3)
    cfg = study.backbone
    bb = with_frozen_map(study, backbone)
    assert "frozen_map" in bb and "frozen_map" not in with_frozen_map(STUDY, backbone)
    net = frozen_map(study)
    assert set(net) == {"W1", "b1", "W2", "b2"} and net["W1"].shape == (cfg.width, study.deep_hidden)
    teacher = make_teacher(study, bb, "frozen-map")
    kp, _ = jax.random.split(fold_key(jax.random.key(study.seed), "truth"))
    p_star = study.truth_scale * jax.random.normal(kp, (cfg.layers, study.num_prefixes, cfg.width), jnp.float64)[0]
    own = student_prefix("frozen-map", dict(p=p_star, b=jnp.zeros((cfg.layers, cfg.heads, study.num_prefixes))), bb, cfg)
    assert float(prefix_losses(own, teacher, cfg)["d2"]) == 0.0
    # its keys and values differ from the shared truth's (another structure), and every layer's come from one vector
    shared = make_teacher(study, bb, "shared")
    assert float(jnp.abs(teacher[0][0] - shared[0][0]).max()) > 0.1
    test_tokens = jax.random.randint(jax.random.key(6), (64, cfg.seq_len), 0, cfg.vocab)
    dkeys = jax.random.key_data(jax.random.split(jax.random.key(7), 2))
    skeys = jax.random.key_data(jax.random.split(jax.random.key(8), 2))
    res, _ = fit_cell(study, "frozen-map", study.num_prefixes, 256, bb, teacher, test_tokens, dkeys, skeys)
    assert np.all(res["start"] > 1.0), res["start"]
    assert np.all(res["excess"] < 1e-6) and np.all(res["losses"]["d2"] < 0.5 * res["start"])
    # on this random (not pre-trained) backbone one data set's fit trades gate biases against keys (D_2 1.4, its
    # weight part 1.2, at the truth's function): weighted by attention mass, the weights they carry, it is small
    assert np.all(res["mass"]["d2"] < 0.3), res["mass"]["d2"]


def test_validate_study_names_the_field():
    with pytest.raises(ValueError, match="simple-share student cannot represent a free truth"):
        validate_study(TeacherStudy(cases=(("free", "simple-share"),)))
    with pytest.raises(ValueError, match="ns: need at least two"):
        validate_study(TeacherStudy(ns=(16,)))
    with pytest.raises(ValueError, match="frozen-map student .* cannot represent a shared truth"):
        validate_study(TeacherStudy(cases=(("shared", "frozen-map"),)))
    with pytest.raises(ValueError, match="simple-share student cannot represent a frozen-map truth"):
        validate_study(TeacherStudy(cases=(("frozen-map", "simple-share"),)))
    with pytest.raises(ValueError, match="bias_bounds"):
        validate_study(TeacherStudy(bias_bounds=(0.0, 2.0)))


@pytest.mark.e2e
def test_teacher_tiny_preset_writes_resumes_and_rates(tiny_runs, tmp_path, cli):
    """``transformer --preset teacher-tiny`` as reproduce.py ran it (its own process, ``tiny_runs``): the
    tables as documented; then, on a copy, a rerun fits nothing and leaves the table as it was."""
    import shutil

    out = tmp_path / "t"
    shutil.copytree(tiny_runs.teacher, out)
    fits = pd.read_csv(out / "fits.csv")
    study = TEACHER_PRESETS["teacher-tiny"]
    assert len(fits) == len(study.cases) * len(study.specifications) * len(study.ns) * study.seeds
    assert set(fits["status"]) <= {"ftol", "xtol", "gtol", "max_steps", "stalled", "nonfinite"}
    assert (fits["loss_key_value"] > 0).all() and (fits["excess_risk"] > 0).all()
    np.testing.assert_allclose(fits["kv_layer_0"] + fits["kv_layer_1"], fits["loss_key_value"], rtol=1e-12)
    rates = pd.read_csv(out / "rates.csv")
    assert {"key_value", "excess_risk", "identified_key"} <= set(rates["loss"])
    assert set(rates["theory_slope"][rates["loss"] == "excess_risk"]) == {-1.0}
    assert {"mass_key_value", "key_value_by_key", "mass_weight"} <= set(rates["loss"])
    # every fit's prefixes are kept: scored again per layer they give the fit's own yardstick, by exp(bias) and by
    # attention mass, and their anatomy has a row per prefix, one extra prefix a head when over-specified
    import json

    from moe_estimation.transformer.teacher import layer_parts, prefix_anatomy

    teacher = json.loads((out / "config.json").read_text())["teacher"]
    parts = layer_parts(fits, teacher, study.backbone.head_dim)
    for weighting, column in (("bias", "kv_layer_{}"), ("mass", "mass_layer_{}")):
        for layer in range(study.backbone.layers):
            mine = parts[(parts["weighting"] == weighting) & (parts["layer"] == layer)]
            np.testing.assert_allclose(mine["d2"].to_numpy(), fits[column.format(layer)].to_numpy(), rtol=1e-10)
    anatomy = prefix_anatomy(fits, teacher)
    heads = study.backbone.layers * study.backbone.heads
    assert len(anatomy) == sum(heads * study.num_prompts(s) for s in fits["specification"])
    over = anatomy[anatomy["specification"] == "over"].groupby(["truth", "parameterisation", "n", "seed", "layer", "head"])
    assert (over["extra"].sum() == 1).all()  # three prefixes, two cells: one shares, and its lighter prefix is extra
    assert ((anatomy["mass"] > 0) & (anatomy["mass"] < 1)).all()
    # and the summaries read them: a row per (case, n, layer) of the exact fits' parts, per (case, n) of the extra
    # prefixes, and the medians as layer_parts gives them
    from moe_estimation.report.summary import teacher_anatomy_table, teacher_layer_table

    layers = [line for line in teacher_layer_table(out).splitlines()[2:]]
    assert len(layers) == len(study.cases) * len(study.ns) * study.backbone.layers
    first = parts[(parts["weighting"] == "bias") & (parts["specification"] == "exact") & (parts["layer"] == 0)]
    first = first[(first["truth"] == study.cases[0][0]) & (first["parameterisation"] == study.cases[0][1])
                  & (first["n"] == study.ns[0])]
    assert f"| {first['d2'].median():.3g} | {first['weight'].median():.3g} |" in layers[0]
    assert len(teacher_anatomy_table(out).splitlines()) == 2 + len(study.cases) * len(study.ns)
    # the positive control: each exactly specified data set fitted once more from the truth (both students can
    # represent the shared truth), on the same data: its own objective at most the random starts' best in the main
    from moe_estimation.transformer.teacher import TRUTH_STARTS, best_fits

    started = pd.read_csv(out / TRUTH_STARTS)
    exact = fits[fits["specification"] == "exact"]
    assert len(started) == len(exact) and set(started["restarts"]) == {0}
    assert list(started.columns) == list(fits.columns)
    both = exact.merge(started, on=["truth", "parameterisation", "specification", "n", "seed"], suffixes=("", "_t"))
    assert len(both) == len(exact)
    assert (both["objective_t"] <= both["objective"] * (1 + 1e-6)).all()  # the truth start finds the lower minimum
    best = best_fits(fits, started)
    assert best["missed"].sum() == (both["objective"] > both["objective_t"] * (1 + 1e-6)).sum()
    # the level of the excess risk against sigma^2 p / n: p the rank of J^T J at the truth, a row per exact (case, n)
    from moe_estimation.report.summary import teacher_efficiency_table
    from moe_estimation.transformer.teacher import identified_dimension

    dims = identified_dimension(out)
    assert set(dims) == set(study.cases) and all(0 < d["rank"] <= d["parameters"] for d in dims.values())
    assert dims[("shared", "simple-share")]["parameters"] == study.backbone.layers * (
        study.num_prefixes * study.backbone.width + study.backbone.heads * study.num_prefixes)
    rows = [line.split(" | ") for line in teacher_efficiency_table(out).splitlines() if line.startswith("| shared")]
    assert len(rows) == len(study.cases) * len(study.ns) and {r[2] for r in rows} == {"best fit"}
    for r in rows:
        h = best[(best["parameterisation"] == r[1]) & (best["n"] == int(r[3]))]
        level = (h["n"] * h["excess_risk"] / study.noise_sd ** 2).mean() / dims[("shared", r[1])]["rank"]
        assert r[-1].strip(" |") == f"{level:.2f}"
    # the directions the data identify least: the smallest eigenvalues of J^T J at the truth, in order, each
    # eigenvector's squared weights over its groups of coordinates adding to at most 1
    from moe_estimation.transformer.teacher import weak_directions

    weak = weak_directions(out, count=2)
    assert len(weak) == 2 * len(study.cases) and set(weak["direction"]) == {0, 1}
    assert (weak["eigenvalue"] <= weak["next_eigenvalue"]).all() and (weak["eigenvalue"] > 0).all()
    for text in weak["loadings"]:
        shares = [float(part.rsplit(" ", 1)[1]) for part in text.split(", ")]
        assert 0.5 < sum(shares) <= 1.0 + 1e-9
    assert weak.loc[(weak["parameterisation"] == "no-share") & (weak["direction"] == 0), "eigenvalue"].item() == (
        pytest.approx(identified_dimension(out)[("shared", "no-share")]["smallest"]))
    # run again: every cell is finished, nothing is fitted, the tables are unchanged
    again = cli("transformer", "--preset", "teacher-tiny", "--out", out, "--no-progress")
    assert again.returncode == 0 and "resuming: 8 of 8 cells" in again.stdout, again.stderr
    assert "resuming: 4 of 4 truth-started cells" in again.stdout
    pd.testing.assert_frame_equal(pd.read_csv(out / "fits.csv"), fits)
    pd.testing.assert_frame_equal(pd.read_csv(out / TRUTH_STARTS), started)
    import matplotlib

    matplotlib.use("Agg")
    from moe_estimation.report.plots import plot_results

    assert [p.name for p in plot_results([out], tmp_path / "fig")] == ["teacher.png", "teacher_anatomy.png"]


def _fake_run(path, study, seed=0, excess_slope=-1.0, rates=True):
    """A finished-looking teacher run (config.json, fits.csv, rates.csv) with D_2 ~ n^-1/2, the excess risk
    ~ n^excess_slope (both with noise) and made-up but well-formed columns: enough to test how runs are combined,
    without fitting anything. ``rates=False``: a run stopped part-way (no rates.csv yet)."""
    import json

    from moe_estimation.experiments.results import plain_dict, write_csv
    from moe_estimation.transformer.teacher import fits_columns, teacher_rates

    rng = np.random.default_rng(seed)
    rows = []
    for truth, kind in study.cases:
        for spec in study.specifications:
            for n in study.ns:
                for s in range(study.seeds):
                    row = {c: 0.0 for c in fits_columns(study)}
                    d2 = n ** -0.5 * np.exp(0.1 * rng.standard_normal())
                    row.update(truth=truth, parameterisation=kind, specification=spec, num_prefixes=study.num_prompts(spec),
                               n=n, seed=s, restarts=study.restarts, loss_key_value=d2, kv_key_single=d2 / 2,
                               kv_value_single=d2 / 2, kv_layer_0=d2, id_key=d2, id_value=d2, mass_key_value=d2 / 5,
                               excess_risk=n ** excess_slope * np.exp(0.1 * rng.standard_normal()), params=np.nan,
                               attention_mass=np.nan, true_attention_mass=np.nan,
                               converged=True, status="ftol", steps=10, at_bound=False)
                    rows.append(row)
    fits = pd.DataFrame(rows)
    path.mkdir()
    (path / "config.json").write_text(json.dumps(dict(study=plain_dict(study))))
    write_csv(path / "fits.csv", fits)
    if rates:
        write_csv(path / "rates.csv", teacher_rates(fits, study))


def test_the_controls_table_says_in_which_window_they_pass(tmp_path):
    """teacher_windows_table on made-up runs (D_2 ~ n^-1/2): with the excess risk ~ n^-1 the exact students pass
    in every window of at least 1.5 decades and are too narrow below it; ~ n^-2 they fail; a run stopped part-way
    (no rates.csv) is read from its fits."""
    from moe_estimation.report.summary import teacher_windows_table

    study = TeacherStudy(ns=(8, 16, 32, 64, 128, 256, 512), seeds=8, num_bootstrap=200,
                         cases=(("shared", "no-share"),), specifications=("exact",))
    _fake_run(tmp_path / "good", study, rates=False)
    _fake_run(tmp_path / "bad", study, excess_slope=-2.0)
    good = [line for line in teacher_windows_table(tmp_path / "good", num_bootstrap=200).splitlines()
            if line.startswith("| shared")]
    bad = [line for line in teacher_windows_table(tmp_path / "bad", num_bootstrap=200).splitlines()
           if line.startswith("| shared")]
    assert [line.split(" | ")[4] for line in good] == [f"{n} ... 512" for n in (8, 16, 32, 64, 128)]
    assert [line.rsplit("|", 2)[1].strip() for line in good] == ["pass", "pass", "too narrow", "too narrow", "too narrow"]
    assert [line.rsplit("|", 2)[1].strip() for line in bad][:2] == ["fail", "fail"]
    assert all(line.split(" | ")[3] == "best of 2 starts" and line.split(" | ")[-2] == "-" for line in good)


def test_a_missed_minimum_is_told_from_a_slow_rate_by_the_truth_started_fits(tmp_path):
    """A made-up run whose fits at the largest n include two stuck far from the truth (objective above their data
    set's truth-started fit's): the study's rows hold -1/2 only in intervals that reach 0 (uninformative) and
    count them missed; the best-fit rows, which take the truth-started fits there, pass. The best fit of a data set whose truth-started fit is worse stays its own."""
    from moe_estimation.experiments.results import write_csv
    from moe_estimation.report.summary import teacher_windows_table
    from moe_estimation.transformer.teacher import TRUTH_STARTS, best_fits

    study = TeacherStudy(ns=(8, 16, 32, 64, 128, 256, 512), seeds=8, num_bootstrap=200,
                         cases=(("shared", "no-share"),), specifications=("exact",))
    _fake_run(tmp_path / "run", study)
    fits = pd.read_csv(tmp_path / "run" / "fits.csv").assign(objective=1.0)
    started = fits.assign(restarts=0, objective=1.0 - 1e-9)
    stuck = (fits["n"] == 512) & (fits["seed"] < 2)
    fits.loc[stuck, ["loss_key_value", "excess_risk", "objective"]] = [50.0, 1.0, 1.5]
    started.loc[(fits["n"] == 8) & (fits["seed"] == 1), "objective"] = 2.0  # worse than the study's: not taken
    write_csv(tmp_path / "run" / "fits.csv", fits)
    write_csv(tmp_path / "run" / TRUTH_STARTS, started)

    best = best_fits(fits, started)
    assert list(best.columns) == list(fits.columns) + ["missed", "relative_gap"]
    assert int(best["missed"].sum()) == 2
    assert list(best.loc[best["missed"], "loss_key_value"]) == list(started.loc[stuck, "loss_key_value"])
    assert best.loc[(best["n"] == 8) & (best["seed"] == 1), "objective"].item() == 1.0
    # a fit that failed (objective NaN) missed; a truth-started fit that failed is never taken
    failed, control_failed = fits.copy(), started.copy()
    failed.loc[(fits["n"] == 16) & (fits["seed"] == 3), "objective"] = np.nan
    control_failed.loc[(fits["n"] == 32) & (fits["seed"] == 3), "objective"] = np.nan
    b2 = best_fits(failed, control_failed)
    assert b2.loc[(b2["n"] == 16) & (b2["seed"] == 3), ["missed", "objective"]].values.tolist() == [[True, 1.0 - 1e-9]]
    assert b2.loc[(b2["n"] == 32) & (b2["seed"] == 3), ["missed", "objective"]].values.tolist() == [[False, 1.0]]
    with pytest.raises(ValueError, match="started: 1 data set"):
        best_fits(fits, pd.concat([started, started.iloc[:1]]))
    lines = [line.split(" | ") for line in teacher_windows_table(tmp_path / "run", num_bootstrap=200).splitlines()
             if line.startswith("| shared")]
    study_rows = [r for r in lines if r[3] == "best of 2 starts"]
    best_rows = [r for r in lines if r[3] == "best fit"]
    assert [r[-1].strip(" |") for r in study_rows][:2] == ["uninformative", "uninformative"]  # intervals reach 0
    assert [r[-2] for r in study_rows][:2] == ["2/56", "2/48"]  # two missed fits among the window's
    assert [r[-1].strip(" |") for r in best_rows][:2] == ["pass", "pass"]


def test_runs_that_split_one_designs_cases_are_drawn_and_tabulated_together(tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    from moe_estimation.report.plots import plot_results
    from moe_estimation.transformer.teacher import load_runs

    design = STUDY._replace(num_bootstrap=20)
    a, b = tmp_path / "a", tmp_path / "b"
    _fake_run(a, design._replace(cases=(("shared", "no-share"), ("shared", "simple-share"))))
    _fake_run(b, design._replace(cases=(("shared", "deep-share"), ("free", "no-share"))), seed=1)
    fits, rates = load_runs([a, b])
    cases = set(zip(fits["truth"], fits["parameterisation"]))
    assert cases == {("shared", "no-share"), ("shared", "simple-share"), ("shared", "deep-share"), ("free", "no-share")}
    assert set(zip(rates["truth"], rates["parameterisation"])) == cases
    assert [p.name for p in plot_results([a, b], tmp_path / "fig")] == ["teacher.png"]  # one figure, not one per run

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "simulations"))
    from summarize import teacher_table

    table = teacher_table([a, b])
    assert "| free | no-share | over |" in table and "| shared | deep-share | exact |" in table

    other = tmp_path / "other"  # another noise level: not comparable in one table
    _fake_run(other, design._replace(noise_sd=3e-4, cases=(("shared", "deep-share"),)))
    with pytest.raises(ValueError, match="--results: the teacher runs .* differ in noise_sd"):
        load_runs([a, other])
    with pytest.raises(ValueError, match="--teacher: the teacher runs .* differ in noise_sd"):
        teacher_table([a, other])
    with pytest.raises(ValueError, match="both hold the shared truth's no-share students"):
        load_runs([a, a])


@pytest.mark.study
def test_the_chained_jacobian_of_a_deep_share_student_is_the_direct_one(backbone):
    from jax.flatten_util import ravel_pytree

    from moe_estimation.solver import normal_equations
    from moe_estimation.transformer.teacher import student_linearize

    cfg = STUDY.backbone
    tokens = jax.random.randint(jax.random.key(1), (12, cfg.seq_len), 0, cfg.vocab, dtype=jnp.int32)
    Y = features(backbone, tokens, cfg, make_teacher(STUDY, backbone, "free"))
    theta, unravel = ravel_pytree(initial_student(jax.random.key(2), STUDY, "deep-share", 3, backbone))
    chained = student_linearize("deep-share", unravel, backbone, cfg, tokens, Y)(theta)

    def residual_jacobian(data, th):
        toks, y = data
        model = lambda z: features(backbone, toks, cfg, student_prefix("deep-share", unravel(z), backbone, cfg))
        return model(th) - y, jnp.moveaxis(jax.jacfwd(model)(th), -1, 0)

    direct = normal_equations(residual_jacobian, (tokens, Y))(theta)
    assert theta.shape[0] > 3 * cfg.layers * (2 * cfg.width + cfg.heads)  # more parameters than prefix numbers
    for a, b in zip(chained, direct):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12 * float(jnp.max(jnp.abs(b))))


@pytest.mark.study
@pytest.mark.parametrize("kind", ["no-share", "deep-share"])
def test_the_students_sums_in_row_blocks_are_the_whole_ones(backbone, kind):
    from jax.flatten_util import ravel_pytree

    from moe_estimation.transformer.teacher import BLOCK_FROM, BLOCK_ROWS, block_rows, student_linearize

    cfg = STUDY.backbone
    tokens = jax.random.randint(jax.random.key(1), (12, cfg.seq_len), 0, cfg.vocab, dtype=jnp.int32)
    Y = features(backbone, tokens, cfg, make_teacher(STUDY, backbone, "free"))
    theta, unravel = ravel_pytree(initial_student(jax.random.key(2), STUDY, kind, 3, backbone))
    whole = student_linearize(kind, unravel, backbone, cfg, tokens, Y)(theta)
    blocked = student_linearize(kind, unravel, backbone, cfg, tokens, Y, rows=5)(theta)  # 3 blocks, 3 rows of padding
    for a, b in zip(blocked, whole):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14 * float(jnp.max(jnp.abs(b))))
    # the committed tables (n <= BLOCK_FROM) keep the whole sums; a CPU blocks above
    assert block_rows(BLOCK_FROM) is None
    assert block_rows(2 * BLOCK_FROM) == (BLOCK_ROWS if jax.default_backend() == "cpu" else None)


@pytest.mark.study  # two compilations
def test_the_step_benchmark_times_the_whole_and_the_blocked_sums_of_one_problem(tmp_path):
    """benchmarks/teacher_step.py at a tiny size (the committed teacher-controls backbone): a record per variant,
    the blocked H the whole one's to rounding, the JSON written."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "teacher_step.py"
    spec = importlib.util.spec_from_file_location("teacher_step", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "step.json"
    bench.main(["--kinds", "no-share", "--ns", "40", "--blocks", "16", "64", "--rounds", "1", "--calls", "1",
                "--json", str(out)])
    got = json.loads(out.read_text())["records"]
    assert [r["variant"] for r in got] == ["whole", "blocks-16"]  # a block as large as n is not a variant
    assert all(r["ms_per_step"] > 0 and r["max_rel_diff_H"] < 1e-13 for r in got)


@pytest.mark.parametrize("truth, kind", [("shared", "no-share"), ("free", "no-share"), ("frozen-map", "no-share"),
                                         ("shared", "simple-share"), ("frozen-map", "frozen-map")])
def test_a_student_at_the_truth_has_the_teachers_prefixes(backbone, truth, kind):
    from moe_estimation.transformer.teacher import truth_student, with_frozen_map

    study = STUDY._replace(cases=((truth, kind),))
    bb = with_frozen_map(study, backbone)
    at_truth = truth_student(study, bb, truth, kind)
    for (k, v, b), (tk, tv, tb) in zip(student_prefix(kind, at_truth, bb, study.backbone), make_teacher(study, bb, truth)):
        np.testing.assert_allclose(k, tk, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(v, tv, rtol=1e-12, atol=1e-14)
        np.testing.assert_array_equal(b, tb)


def test_no_student_is_started_at_a_truth_it_cannot_represent(backbone):
    from moe_estimation.transformer.teacher import truth_student

    assert truth_student(STUDY, backbone, "free", "simple-share") is None  # one vector cannot give two
    assert truth_student(STUDY, backbone, "shared", "deep-share") is None  # no known network weights
    with pytest.raises(ValueError, match="kind"):
        truth_student(STUDY, backbone, "shared", "deep")
    from moe_estimation.transformer.teacher import teacher_cell

    study = STUDY._replace(cases=(("free", "simple-share"),))
    with pytest.raises(ValueError, match="from_truth: the exact simple-share student cannot start at the free truth"):
        teacher_cell(study, backbone, "free", "simple-share", "exact", 16, True)
    with pytest.raises(ValueError, match="from_truth: the over no-share student"):
        teacher_cell(study, backbone, "free", "no-share", "over", 16, True)


@pytest.mark.study
def test_a_run_grows_to_larger_n_and_keeps_its_fits_but_refuses_any_other_change(tmp_path):
    """A run of sizes (8, 16) resumed with (8, 16, 32) fits only n = 32, its other rows unchanged and the same as
    a run begun with (8, 16, 32) makes; a grid that drops or moves a size, or a grown grid with another setting, is refused."""
    from moe_estimation.transformer.teacher import grown_grid, run_teacher

    small = STUDY._replace(ns=(8, 16), cases=(("shared", "simple-share"),), specifications=("exact",))
    big = small._replace(ns=(8, 16, 32))
    quiet = lambda *a: None
    out = tmp_path / "grow"
    first = run_teacher(small, out, progress=False, log=quiet)
    assert grown_grid(out, big) == [32] and grown_grid(out, small) == []
    said = []
    grown = run_teacher(big, out, progress=False, log=said.append)
    assert any("the grid grows by n = [32]" in m for m in said)
    assert json.loads((out / "config.json").read_text())["study"]["ns"] == [8, 16, 32]
    pd.testing.assert_frame_equal(grown[grown["n"] < 32].drop(columns="seconds").reset_index(drop=True),
                                  first.drop(columns="seconds"))
    whole = run_teacher(big, tmp_path / "whole", progress=False, log=quiet)
    pd.testing.assert_frame_equal(grown.drop(columns="seconds"), whole.drop(columns="seconds"))
    start = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()][-2]
    assert start["grid_grown_by"] == [32] and start["cells_to_fit"] == 1
    for other in (small._replace(ns=(16, 32)), big._replace(ns=(8, 16, 24)), big._replace(ns=(8, 16, 32, 64), noise_sd=2e-4)):
        with pytest.raises(ValueError, match="holds a different study"):
            run_teacher(other, out, progress=False, log=quiet)


def test_the_objective_is_per_row_and_older_tables_are_read_so():
    """objective is 2F/n (per sequence), as in every study; a table that held F (1/2 RSS) is converted row by
    row, found exactly through mean_square_residual, and a converted table is left alone."""
    import pandas as pd

    from moe_estimation.transformer.teacher import per_row_objective

    S, W = 4, 8
    F = np.array([3.0, 0.5, 2.0, 7.0])
    n = np.array([8, 16, 2, 64])
    msr = 2 * F / (n * S * W)
    old = pd.DataFrame(dict(n=n, objective=F, mean_square_residual=msr))
    new, changed = per_row_objective(old, S, W)
    np.testing.assert_allclose(new["objective"], 2 * F / n, rtol=1e-15)
    assert changed == 3  # n = 2: both readings are one number
    again, changed = per_row_objective(new, S, W)
    assert changed == 0 and again["objective"].equals(new["objective"])
