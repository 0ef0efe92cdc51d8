"""The rebuilt published studies: presets, suites, the sources' losses checked against hand computations written
from their definitions, the Gaussian-gated model's EM and start."""

import json
import math
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import moe_estimation.lab as lab
from moe_estimation.lab.study import parse_lab_config
from moe_estimation.lab.suite import LAB_PRESET_NAMES, LAB_PRESETS, lab_preset, paired_table, split_suite

ROOT = Path(__file__).resolve().parents[1]


def _study(name, way=None):
    """One way of a preset, parsed (the first way by default)."""
    ways = split_suite(lab_preset(name), name)
    single = next(s for n, _, s in ways if way is None or n == way)
    return parse_lab_config(single, name)


def _perturbed(study, K, K1=0, seed=0, scale=0.05, assign=None):
    """A fitted mixture of K routed (and K1 shared) components: the truth's components by ``assign`` plus noise."""
    rng = np.random.default_rng(seed)
    t = study.truth
    Kt = t.gate.shape[0]
    assign = np.arange(K) % Kt if assign is None else np.asarray(assign)
    noise = lambda a: np.asarray(a) + scale * rng.standard_normal(np.shape(a))
    gate = noise(np.asarray(t.gate)[assign])
    m = lab.Mixture(gate=study.model.gate.pin(jnp.asarray(gate)), expert=noise(np.asarray(t.expert)[assign]),
                    log_var=noise(np.asarray(t.log_var)[assign]))
    if K1:
        a1 = np.arange(K1) % t.shared_logit.shape[0]
        logit = noise(np.asarray(t.shared_logit)[a1])
        m = m._replace(shared_logit=logit - logit[-1], shared_expert=noise(np.asarray(t.shared_expert)[a1]),
                       shared_log_var=noise(np.asarray(t.shared_log_var)[a1]))
    return study.model.check(m, "fitted")


# ------------------------------------------------------------------------------------------------
# presets and suites


def test_every_preset_and_its_full_size_is_a_valid_suite_and_the_cli_knows_them():
    from moe_estimation.cli import LAB_PRESET_NAMES as CLI_NAMES

    assert CLI_NAMES == LAB_PRESET_NAMES and len(LAB_PRESETS) == 13
    for name in LAB_PRESET_NAMES:
        for way, label, single in split_suite(lab_preset(name), name):
            study = parse_lab_config(single, f"{name} [fits.{way}]")
            assert label and study.model.check(study.truth) is not None
    full, cpu = lab_preset("sgame-exact-full"), lab_preset("sgame-exact")
    assert len(full["grid"]["ns"]) == 200 and full["grid"]["replicates"] == 40 and cpu["grid"]["replicates"] == 10
    assert "full" not in cpu and full["fits"] == cpu["fits"]
    with pytest.raises(ValueError, match="no lab preset named 'sgame'"):
        lab_preset("sgame")


@pytest.mark.parametrize("edit, word", [
    (lambda d: d.update(fit={"init": "random"}), "fit: a suite declares its ways"),
    (lambda d: d.update(fits={}), "fits: expected one or more tables"),
    (lambda d: d["fits"].update({"a b": {"init": "random"}}), "becomes a folder"),
    (lambda d: d["fits"]["random"].update(label=3), "fits.random.label: expected a non-empty string"),
    (lambda d: d["fits"]["random"].update(specifications=["exact"]), r"fits.random.specifications: expected a non-empty "
                                                                       r"subset of grid.specifications \['over'\]"),
    (lambda d: d["fits"]["random"].update(extra_components=0), "fits.random.extra_components: expected an integer >= 1"),
])
def test_a_suite_that_is_not_one_is_refused_naming_the_key(edit, word):
    data = lab_preset("deepseek-t2")
    edit(data)
    with pytest.raises(ValueError, match=word):
        split_suite(data, "t2")


def test_a_way_of_a_suite_can_fit_a_subset_of_specifications_and_its_theory_follows():
    data = lab_preset("fusemoe")
    data["fits"]["near"]["specifications"] = ["over"]
    data["rates"]["theory"] = {"paper": {"exact": -0.5, "over": -0.25}}
    ways = {n: parse_lab_config(s, n) for n, _, s in split_suite(data)}
    assert ways["near"].specifications == ("over",) and ways["near"].theory["paper"] == {"over": -0.25}
    assert ways["random"].specifications == ("exact", "over")


TINY_SUITE = """
seed = 3
[model]
gate = "softmax"
expert = "linear"
likelihood = "gaussian"
input = {{ law = "uniform", low = -1.0, high = 1.0 }}
[truth]
gate = [[2.0, 0.5], [0.0, 0.0]]
expert = [[1.0, 0.0], [-1.0, 0.5]]
log_var = [-2.0, -2.0]
[loss.d2]
blocks = ["gate", "expert"]
[grid]
ns = [200, 400]
replicates = 3
specifications = ["exact", "over"]
[fits.near]
label = "near-truth"
init = "near-truth"
init_scale = 0.05
restarts = 1
max_steps = {steps}
[fits.em]
label = "EM from near-truth"
estimator = "em"
init = "near-truth"
init_scale = 0.05
restarts = 1
max_steps = {steps}
[rates]
num_bootstrap = 100
"""


def test_a_suite_runs_every_way_on_the_same_data_resumes_and_is_summarised(tmp_path, cli):
    conf = tmp_path / "suite.toml"
    conf.write_text(TINY_SUITE.format(steps=30))
    out = tmp_path / "out"
    r = cli("study", "--config", str(conf), "--out", str(out), "--workers", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    meta = json.loads((out / "suite.json").read_text())
    assert [w["name"] for w in meta["ways"]] == ["near", "em"] and meta["losses"] == ["d2"]
    near, em = (pd.read_csv(out / w / "fits.csv") for w in ("near", "em"))
    assert len(near) == len(em) == 12
    assert (out / "comparison.md").read_text().strip() in r.stdout
    # same data: exactly specified, EM and the direct fit from near the truth reach one maximum of one likelihood
    key = ["specification", "n", "replicate"]
    both = near.merge(em, on=key, suffixes=("_ml", "_em"))
    exact = both[both["specification"] == "exact"]
    assert len(exact) == 6 and np.all(np.abs(exact["objective_ml"] - exact["objective_em"]) < 1e-6)
    before = {p: p.read_bytes() for p in out.rglob("fits.csv")}
    r = cli("study", "--config", str(conf), "--out", str(out), "--workers", "1", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert {p: p.read_bytes() for p in out.rglob("fits.csv")} == before
    s = cli("summarize", str(out))
    assert s.returncode == 0 and "(suite)" in s.stdout and "best of all" in s.stdout and "best fit on" in s.stdout
    conf.write_text(TINY_SUITE.format(steps=31))  # another design in the same folder: refused, nothing lost
    r = cli("study", "--config", str(conf), "--out", str(out), "--workers", "1", "--no-progress")
    assert r.returncode != 0 and "holds a different lab study" in r.stderr
    assert {p: p.read_bytes() for p in out.rglob("fits.csv")} == before


def _fake_run(path, label_seed, objective, losses):
    """A lab run folder with given objectives and losses (n = 100, 1000; 4 replicates each)."""
    path.mkdir(parents=True)
    rows = [dict(specification="over", num_components=3, n=n, replicate=r, objective=objective[i][r],
                 loss_x=losses[i][r], converged=True) for i, n in enumerate((100, 1000)) for r in range(4)]
    pd.DataFrame(rows).to_csv(path / "fits.csv", index=False)
    (path / "config.json").write_text(json.dumps({"study": {"model": {"gate": "softmax", "expert": "linear"}}}))


def test_paired_comparisons_count_best_fits_and_difference_slopes_by_hand(tmp_path):
    a_loss = [[1.0, 1.0, 1.0, 1.0], [0.1, 0.1, 0.1, 0.1]]  # slope -1
    b_loss = [[1.0, 2.0, 1.0, 2.0], [1.5, 0.5, 1.5, 0.5]]  # means 1.5 and 1.0: slope log(1/1.5) / log(10)
    _fake_run(tmp_path / "a", 0, [[1.0, 2.0, 1.0, 2.0], [1.0, 1.0, 1.0, 1.0]], a_loss)
    _fake_run(tmp_path / "b", 1, [[1.0, 1.0, 3.0, 1.0], [2.0, 0.5, 1.0, 1.0]], b_loss)
    t = paired_table([("A", tmp_path / "a"), ("B", tmp_path / "b")], "x", num_bootstrap=200)
    share = t[t["other"] == ""].set_index("way")
    # best (ties count for each): A on n=100 reps 0, 2 and n=1000 reps 0, 2, 3; B on n=100 reps 0, 1, 3; n=1000 1, 2, 3
    assert share.loc["A", "best_share"] == pytest.approx(5 / 8)
    assert share.loc["B", "best_share"] == pytest.approx(6 / 8)
    assert share.loc["A", "median_gap"] == pytest.approx(0.0) and share.loc["B", "median_gap"] == pytest.approx(0.0)
    pair = t[t["other"] == "B"].iloc[0]
    assert pair["slope_difference"] == pytest.approx(-1.0 - math.log(1 / 1.5) / math.log(10), rel=1e-12)
    assert pair["ci_low"] <= pair["slope_difference"] <= pair["ci_high"]
    # paired: a way whose losses are 3 times another's on every data set differs from it by 0 in every resample
    varied = [[1.0, 2.0, 0.5, 4.0], [0.3, 0.05, 0.2, 0.1]]
    _fake_run(tmp_path / "c", 0, [[1.0] * 4, [1.0] * 4], varied)
    _fake_run(tmp_path / "d", 0, [[1.0] * 4, [1.0] * 4], (3 * np.asarray(varied)).tolist())
    t = paired_table([("C", tmp_path / "c"), ("D", tmp_path / "d")], "x", num_bootstrap=200)
    pair = t[t["other"] == "D"].iloc[0]
    assert abs(pair["slope_difference"]) < 1e-12 and abs(pair["ci_low"]) < 1e-12 and abs(pair["ci_high"]) < 1e-12


# ------------------------------------------------------------------------------------------------
# the sources' losses, by hand from their definitions


def _cells(fitted_atoms, true_atoms, l1=False):
    diff = fitted_atoms[:, None, :] - true_atoms[None, :, :]
    dist = np.abs(diff).sum(-1) if l1 else np.sqrt((diff**2).sum(-1))
    return dist.argmin(1)


def _deepseek_parts(study, m, canonical_experts=True):
    """The DeepSeekMoE notation of a lab mixture: shared (omega, kappa, tau), routed (weight, beta_1, beta_0, eta,
    nu), the softmax gate made canonical (weights summing to one, slopes centred), ReLU experts scaled to unit inner
    weights when ``canonical_experts``."""
    def relu_canon(theta, has_inner):
        theta = np.asarray(theta, float)
        if not canonical_experts or not has_inner:
            return theta
        norm = np.linalg.norm(theta[:, 1:], axis=1, keepdims=True)
        return np.concatenate([theta[:, :1] * norm, theta[:, 1:] / norm], axis=1)

    gate = np.asarray(m.gate, float)
    b0, b1 = gate[:, 1], gate[:, 0]
    if isinstance(study.model.gate, lab.SoftmaxGate):
        b0 = b0 - np.log(np.exp(b0).sum())
        b1 = b1 - np.exp(b0) @ b1
        weight = np.exp(b0)
    else:
        weight = 1 / (1 + np.exp(-b0))
    relu = lambda e: isinstance(e, lab.ActivationExpert)
    omega = np.exp(m.shared_logit) / np.exp(m.shared_logit).sum()
    return (dict(w=omega, kappa=relu_canon(m.shared_expert, relu(study.model.shared)), tau=np.exp(m.shared_log_var)),
            dict(w=weight, b1=b1, b0=b0, eta=relu_canon(m.expert, relu(study.model.expert)), nu=np.exp(m.log_var)))


def _deepseek_loss(which, fitted, truth, linear=False):
    """D_1 .. D_4 of the DeepSeekMoE paper (eq. 4, 6, 10, 11), written from their definitions."""
    (fs, fr), (ts, tr) = fitted, truth
    total = 0.0
    # shared part: D_1's in D_1, D_3 and D_4; D_2's with linear experts
    cs = _cells(np.c_[fs["kappa"], fs["tau"]], np.c_[ts["kappa"], ts["tau"]])
    size = np.bincount(cs, minlength=len(ts["w"]))
    total += sum(abs(fs["w"][cs == j].sum() - ts["w"][j]) for j in range(len(ts["w"])))
    for i, j in enumerate(cs):
        dk, dt = fs["kappa"][i] - ts["kappa"][j], abs(fs["tau"][i] - ts["tau"][j])
        if which == "D2":
            r = {2: 4, 3: 6}.get(size[j], 1)
            total += fs["w"][i] * (abs(dk).sum() + dt if size[j] == 1 else
                                   abs(dk[0]) ** 2 + abs(dk[1]) ** r + dt ** (r / 2))
        else:
            total += fs["w"][i] * (np.linalg.norm(dk) + dt if size[j] == 1 else np.linalg.norm(dk) ** 2 + dt**2)
    # routed part: cells on (beta_1, eta, nu)
    cr = _cells(np.c_[fr["b1"], fr["eta"], fr["nu"]], np.c_[tr["b1"], tr["eta"], tr["nu"]])
    size = np.bincount(cr, minlength=len(tr["w"]))
    for j in range(len(tr["w"])):
        if which in ("D1", "D2") or (which == "D3" and size[j] > 1):
            total += abs(fr["w"][cr == j].sum() - tr["w"][j])
    for i, j in enumerate(cr):
        db1, db0 = abs(fr["b1"][i] - tr["b1"][j]), abs(fr["b0"][i] - tr["b0"][j])
        de, dn = fr["eta"][i] - tr["eta"][j], abs(fr["nu"][i] - tr["nu"][j])
        if which == "D1":
            total += fr["w"][i] * (db1 + np.linalg.norm(de) + dn if size[j] == 1 else db1**2 + np.linalg.norm(de) ** 2 + dn**2)
        elif which == "D2":
            r = {2: 4, 3: 6}.get(size[j], 1)
            total += fr["w"][i] * (db1 + abs(de).sum() + dn if size[j] == 1 else
                                   db1**r + abs(de[0]) ** (r / 2) + abs(de[1]) ** r + dn ** (r / 2))
        elif which == "D3":
            total += (db1 + db0 + np.linalg.norm(de) + dn) if size[j] == 1 else db1**2 + np.linalg.norm(de) ** 2 + dn**2
        else:
            total += db1 + db0 + np.linalg.norm(de) + dn
    return total


@pytest.mark.parametrize("preset, loss", [("deepseek-t1", "D1"), ("deepseek-t2", "D2"), ("deepseek-t3", "D3"),
                                          ("deepseek-t4", "D4")])
@pytest.mark.parametrize("seed, assign", [(0, None), (1, [0, 0, 1]), (2, [1, 1, 1]), (3, [1, 0, 1])])
def test_the_deepseek_losses_equal_their_definitions(preset, loss, seed, assign):
    """Each experiment's loss as the preset declares it (canonical and raw experts) equals D_1 .. D_4 computed by hand
    from the paper's formulas, on fits with routed cells of sizes (2, 1), (1, 2) and (0, 3)."""
    study = _study(preset)
    fitted = _perturbed(study, 3, 2, seed=seed, assign=assign)
    for name, canon in ((loss, True), (f"{loss}_raw", False)):
        if name not in study.losses:
            continue
        want = _deepseek_loss(loss, _deepseek_parts(study, fitted, canon), _deepseek_parts(study, study.truth, canon))
        got = float(study.losses[name](study.model, fitted, study.truth))
        assert got == pytest.approx(want, rel=1e-10), name


def _sgame_source_loss(fitted, truth, K_true=2):
    """loss_SGaME_exact of the source's discrepancies.py, as its code runs (np.unique's counts indexed by label; the
    exactly specified branch counting nothing for a cell of several atoms)."""
    g, tg = np.asarray(fitted.gate, float), np.asarray(truth.gate, float)  # rows (slope, intercept); last = 0
    e, te = np.asarray(fitted.expert, float), np.asarray(truth.expert, float)  # rows (slope, intercept)
    v, tv = np.exp(np.asarray(fitted.log_var)), np.exp(np.asarray(truth.log_var))
    K = len(g)
    D = (np.abs(g[:, None, 0] - tg[None, :, 0]) + np.abs(e[:, None, 1] - te[None, :, 1])
         + np.abs(e[:, None, 0] - te[None, :, 0]) + np.abs(v[:, None] - tv[None, :]))
    vor = D.argmin(1)
    _, counts = np.unique(vor, return_counts=True)
    rbar = [0, 1, 4, 6, 8]
    loss = sum(abs(np.exp(g[vor == j, 1]).sum() - np.exp(tg[j, 1])) for j in range(K_true))
    for i in range(K):
        j = vor[i]
        if counts[j] == 1:
            loss += np.exp(g[i, 1]) * D[i, j]
        elif K > K_true:
            r = rbar[counts[j]]
            loss += np.exp(g[i, 1]) * (abs(g[i, 0] - tg[j, 0]) ** r + abs(e[i, 1] - te[j, 1]) ** r
                                       + abs(e[i, 0] - te[j, 0]) ** (r / 2) + abs(v[i] - tv[j]) ** (r / 2))
    return loss


@pytest.mark.parametrize("preset, K, assign", [("sgame-exact", 2, [0, 1]), ("sgame-exact", 2, [0, 0]),
                                               ("sgame-over", 3, [0, 1, 1]), ("sgame-over", 3, [0, 0, 1]),
                                               ("sgame-over", 4, [0, 1, 1, 1])])
@pytest.mark.parametrize("seed", [0, 1])
def test_the_sgame_source_loss_is_what_its_code_computes(preset, K, assign, seed):
    """The preset's ``source`` loss equals the source's loss function (L1 cells, the gates as fitted with the reference
    at 0, its exactly specified branch ignoring cells of several atoms) on fits whose cells cover every true
    component (where the source's counts are right)."""
    study = _study(preset)
    fitted = _perturbed(study, K, seed=seed, scale=0.02, assign=assign)
    want = _sgame_source_loss(fitted, study.truth)
    assert float(study.losses["source"](study.model, fitted, study.truth)) == pytest.approx(want, rel=1e-10)
    if K == 2 and assign == [0, 0]:  # both fitted atoms in the first cell: the exact branch counts the weights only
        w = np.exp(np.asarray(fitted.gate)[:, 1])
        assert want == pytest.approx(abs(w.sum() - math.exp(-8)) + 1.0, rel=1e-12)


def _paper_loss(study, fitted, multi):
    """The papers' Voronoi loss of a one-dimensional gated Gaussian mixture of linear experts, from its definition:
    cells on (gate slope or location, expert slope, expert intercept, variance) by Euclidean distance, the gates in
    their canonical representative (biases shifted to weights exp(b) summing to one; a softmax's slopes centred),
    weight-sum terms over every cell; a cell of one atom: each piece's distance; of m: each piece to the exponent
    ``multi[piece]`` (a number, or "r", "r/2" with r(2) = 4, r(3) = 6, r(4) = 8)."""
    def parts(m):
        g = np.asarray(m.gate, float)
        b = g[:, 1] - np.log(np.exp(g[:, 1]).sum())
        w = g[:, 0] - np.exp(b) @ g[:, 0] if isinstance(study.model.gate, lab.SoftmaxGate) else g[:, 0]
        e = np.asarray(m.expert, float)
        return np.exp(b), dict(gate=w, slope=e[:, 0], intercept=e[:, 1], var=np.exp(np.asarray(m.log_var)))
    (fw, f), (tw, t) = parts(fitted), parts(study.truth)
    atoms = lambda q: np.c_[q["gate"], q["slope"], q["intercept"], q["var"]]
    cell = _cells(atoms(f), atoms(t))
    size = np.bincount(cell, minlength=len(tw))
    loss = sum(abs(fw[cell == j].sum() - tw[j]) for j in range(len(tw)))
    for i, j in enumerate(cell):
        r = {2: 4, 3: 6, 4: 8}.get(size[j], 1)
        for piece in ("gate", "slope", "intercept", "var"):
            dist = abs(f[piece][i] - t[piece][j])
            e = 1 if size[j] == 1 else {"r": r, "r/2": r / 2}.get(multi[piece], multi[piece])
            loss += fw[i] * dist**e
    return loss


@pytest.mark.parametrize("preset, K, assign", [("sgame-exact", 2, [0, 1]), ("sgame-over", 3, [0, 1, 1]),
                                               ("sgame-over", 3, [0, 0, 1]), ("sgame-over", 4, [1, 0, 1, 1]),
                                               ("fusemoe", 2, [0, 1]), ("fusemoe", 3, [0, 1, 1]), ("fusemoe", 3, [0, 0, 1])])
def test_the_paper_losses_of_the_softmax_and_laplace_gated_studies_equal_their_definitions(preset, K, assign):
    study = _study(preset)
    multi = (dict(gate="r", slope="r/2", intercept="r", var="r/2") if preset.startswith("sgame") else
             dict(gate=2, slope=2, intercept="r", var="r/2"))
    for seed in range(2):
        fitted = _perturbed(study, K, seed=seed, scale=0.02, assign=assign)
        want = _paper_loss(study, fitted, multi)
        assert float(study.losses["paper"](study.model, fitted, study.truth)) == pytest.approx(want, rel=1e-10)


def test_bad_loss_declarations_in_a_suite_are_refused_when_read_naming_the_key():
    data = lab_preset("gmoe-2")
    data["loss"]["paper"]["terms"][2]["cells"] = [7]
    with pytest.raises(ValueError, match=r"loss.paper.terms.cells: \[7\] names a true atom past the last: the truth has 3"):
        parse_lab_config(split_suite(data)[0][2], "g")
    data = lab_preset("fusemoe")
    data["loss"]["paper"]["blocks"] = ["gate.mean", "expert"]
    with pytest.raises(ValueError, match=r"loss.paper: blocks: 'gate.mean' is no piece of the laplace gate"):
        parse_lab_config(split_suite(data)[0][2], "f")
    data = lab_preset("deepseek-t3")
    data["loss"]["D3"]["losses"][1]["weight_sum"] = "some"
    with pytest.raises(ValueError, match=r"losses\[1\].weight_sum: expected one of"):
        parse_lab_config(split_suite(data)[0][2], "t3")
    with pytest.raises(ValueError, match="weighted: a loss of kind 'sum' takes its settings in its losses"):
        lab.VoronoiLoss(kind="sum", losses=(lab.VoronoiLoss(),), weighted=False)
    data = lab_preset("fusemoe")
    data["fits"]["random"]["label"] = data["fits"]["near"]["label"]
    with pytest.raises(ValueError, match="fits.random.label: .* labels fits.near already"):
        split_suite(data, "f")
    data = lab_preset("fusemoe")
    data["fits"]["near"] = 3
    with pytest.raises(ValueError, match="fits.near: expected a table"):
        split_suite(data, "f")


def test_a_way_with_its_own_rates_and_specifications():
    """A way's own [rates] is merged before its specifications cut the theory to what it fits."""
    data = lab_preset("sigmoid-vs-softmax-linear")
    data["fits"]["softmax-near"]["specifications"] = ["exact"]
    study = parse_lab_config(dict((n, s) for n, _, s in split_suite(data))["softmax-near"], "s")
    assert study.specifications == ("exact",) and study.theory["d2"] == {"exact": -0.5}


def _gmoe_loss(fitted, truth, d, type_two):
    """The Gaussian-gated study's Type I / Type II loss (discrepancies.py), from its definition."""
    def parts(m):
        gate = np.asarray(m.gate, float)
        b = gate[:, -1] - np.log(np.exp(gate[:, -1]).sum())
        e = np.asarray(m.expert, float)
        return dict(pi=np.exp(b), c=gate[:, :d], G=np.exp(gate[:, d:2 * d]), A=e[:, :d], b=e[:, d], nu=np.exp(m.log_var))
    f, t = parts(fitted), parts(truth)
    norm = lambda a: np.linalg.norm(np.atleast_1d(a))
    D = np.array([[norm(f["c"][i] - t["c"][j]) + norm(f["G"][i] - t["G"][j]) + norm(f["A"][i] - t["A"][j])
                   + norm(f["b"][i] - t["b"][j]) + norm(f["nu"][i] - t["nu"][j]) for j in range(3)] for i in range(len(f["pi"]))])
    vor = D.argmin(1)
    counts = np.bincount(vor, minlength=3)
    rbar = [0, 1, 4, 6, 8, 10]
    loss = sum(abs(f["pi"][vor == j].sum() - t["pi"][j]) for j in range(3))
    for i, j in enumerate(vor):
        if counts[j] == 1:
            loss += f["pi"][i] * D[i, j]
            continue
        r = rbar[counts[j]]
        a_exp = r / 2 if type_two and np.all(t["c"][j] == 0) else 2
        loss += f["pi"][i] * (norm(f["c"][i] - t["c"][j]) ** r + norm(f["G"][i] - t["G"][j]) ** (r / 2)
                              + norm(f["A"][i] - t["A"][j]) ** a_exp + norm(f["b"][i] - t["b"][j]) ** r
                              + norm(f["nu"][i] - t["nu"][j]) ** (r / 2))
    return loss


@pytest.mark.parametrize("model, d, type_two", [(1, 1, False), (2, 1, True), (3, 2, False), (4, 2, True)])
@pytest.mark.parametrize("assign", [[0, 0, 1, 2], [0, 1, 2, 2, 2], [1, 1, 0, 2], [0, 0, 0, 1, 2], [0, 0, 1, 1, 2]])
def test_the_gaussian_gated_losses_equal_their_definitions(model, d, type_two, assign):
    """Type I (models 1, 3) and Type II (models 2, 4: the expert slope to r(m)/2 in the cell of the component whose
    gate mean is 0) as the presets declare them equal the source's definitions (cells by the sum of block distances)."""
    study = _study(f"gmoe-{model}")
    fitted = _perturbed(study, len(assign), seed=model, scale=0.01, assign=assign)
    want = _gmoe_loss(fitted, study.truth, d, type_two)
    assert float(study.losses["paper"](study.model, fitted, study.truth)) == pytest.approx(want, rel=1e-10)


def test_type_two_differs_from_type_one_only_in_a_large_cell_of_the_first_component():
    """Type II puts the expert slope to r(m)/2 in the first component's cell: the same as Type I's 2 in a cell of two
    (r(2)/2 = 2), different in a cell of three; the same whatever the other cells hold."""
    one, two = _study("gmoe-1"), _study("gmoe-2")
    type_one = lab.VoronoiLoss.from_table({**one.table["loss"]["paper"]})
    for assign, same in (([0, 0, 0, 1, 2], False), ([0, 0, 1, 2, 2], True), ([0, 1, 1, 1, 2], True)):
        fitted = _perturbed(two, 5, seed=5, scale=0.01, assign=assign)
        a, b = float(two.losses["paper"](two.model, fitted, two.truth)), float(type_one(two.model, fitted, two.truth))
        assert (a == pytest.approx(b, rel=1e-12)) == same, assign


# ------------------------------------------------------------------------------------------------
# the loss grammar's new pieces on small cases


def test_cells_by_the_sum_of_block_distances_differ_from_euclidean_cells_where_they_should():
    """A fitted atom diagonal from one true atom (L2 1.414, L1 2) and axis-aligned from the other (1.6 in both):
    Euclidean cells put it with the first, the sum of block distances with the second; the loss follows."""
    model = lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.LinearExpert(), input=lab.InputLaw(d=1))
    truth = model.check(lab.Mixture(np.zeros((2, 2)), np.array([[0.0, 0.0], [2.6, 1.0]]), np.zeros(2)))
    fitted = model.check(lab.Mixture(np.zeros((2, 2)), np.array([[1.0, 1.0], [0.0, 0.1]]), np.zeros(2)), "fitted")
    blocks = ("expert.slope", "expert.intercept")
    term = ({"blocks": blocks, "single": 1, "multi": 2},)
    l2 = lab.VoronoiLoss(blocks=blocks, kind="terms", terms=term, weighted=False, weight_sum="none")
    l1 = lab.VoronoiLoss(blocks=blocks, kind="terms", terms=term, weighted=False, weight_sum="none",
                         cell_distance="blocks")
    assert float(l2(model, fitted, truth)) == pytest.approx(2.0 + 0.01, rel=1e-12)  # one cell of two: squares
    assert float(l1(model, fitted, truth)) == pytest.approx(1.6 + 0.1, rel=1e-12)  # two cells of one: distances


def test_a_term_counted_in_some_cells_only_and_a_sum_of_losses_by_hand():
    """``multi = "none"`` drops a term from cells of several atoms, ``single = "none"`` from cells of one; ``cells``
    keeps it to the named true atoms; a sum of losses is the sum of its parts, each with its own cells."""
    model = lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.LinearExpert(), input=lab.InputLaw(d=1))
    truth = model.check(lab.Mixture(np.zeros((2, 2)), np.array([[0.0, 0.0], [3.0, 0.0]]), np.zeros(2)))
    fitted = model.check(lab.Mixture(np.zeros((3, 2)), np.array([[0.1, 0.0], [-0.2, 0.0], [3.0, 0.3]]), np.zeros(3)),
                         "fitted")
    kw = dict(blocks=("expert",), kind="terms", weighted=False, weight_sum="none")
    one = lambda **t: float(lab.VoronoiLoss(terms=({"blocks": ("expert",), **t},), **kw)(model, fitted, truth))
    assert one(single=1, multi="none") == pytest.approx(0.3)
    assert one(single="none", multi=2) == pytest.approx(0.01 + 0.04)
    assert one(single=1, multi=2, cells=[1]) == pytest.approx(0.3)
    assert one(single=1, multi=2, cells=[0]) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="a term counted in no cell"):
        lab.Term(("expert",), "none", "none")
    with pytest.raises(ValueError, match="terms.cells: expected distinct indices"):
        lab.Term(("expert",), 1, 2, cells=[-1])
    with pytest.raises(ValueError, match="r_of_m: expected"):
        lab.VoronoiLoss(kind="terms", terms=({"blocks": ("expert",)},), r_of_m=("none",))
    total = lab.VoronoiLoss.from_table({"kind": "sum", "losses": [
        {"blocks": ["expert"], "terms": [{"blocks": ["expert"], "single": 1, "multi": "none"}], "weighted": False,
         "weight_sum": "none"},
        {"blocks": ["expert"], "terms": [{"blocks": ["expert"], "single": "none", "multi": 2}], "weighted": False,
         "weight_sum": "none"}]})
    parts = total.parts(model, fitted, truth)
    assert float(parts["loss"]) == pytest.approx(0.3 + 0.05) and float(parts["loss0"]["loss"]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="a sum of losses takes only"):
        lab.VoronoiLoss.from_table({"kind": "sum", "losses": [{"blocks": ["expert"]}], "weighted": False})


def test_raw_and_canonical_experts_and_gates():
    """A ReLU expert's scale counts in a raw loss and not in a canonical one; a softmax gate's raw biases are the
    pinned ones (the reference's weight exp(0) = 1), its canonical ones shifted to weights summing to one."""
    model = lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.ActivationExpert("relu", bias=False), input=lab.InputLaw(d=1))
    truth = model.check(lab.Mixture(np.array([[1.0, -1.0], [0.0, 0.0]]), np.array([[4.0, -2.0], [1.0, 1.0]]), np.zeros(2)))
    rescaled = truth._replace(expert=jnp.asarray([[8.0, -1.0], [0.5, 2.0]]))  # the same functions
    kw = dict(blocks=("gate", "expert"), kind="terms", terms=({"blocks": ("expert",)},))
    assert float(lab.VoronoiLoss(**kw)(model, rescaled, truth)) == pytest.approx(0.0, abs=1e-12)
    assert float(lab.VoronoiLoss(**kw, experts="raw")(model, rescaled, truth)) > 1.0
    x = jnp.asarray([0.7])
    np.testing.assert_allclose(lab.mean(model, rescaled, x), lab.mean(model, truth, x), rtol=1e-12)
    fitted = truth._replace(expert=truth.expert + 0.1)  # one atom a cell, the weights exact
    weight = lambda **o: float(lab.VoronoiLoss(**kw, experts="raw", **o).parts(model, fitted, truth)["term0"])
    w_raw, w_canon = np.exp([-1.0, 0.0]), np.exp([-1.0, 0.0]) / np.exp([-1.0, 0.0]).sum()
    assert weight(gates="raw") == pytest.approx(w_raw.sum() * math.hypot(0.1, 0.1) / 1.0, rel=1e-12)
    assert weight() == pytest.approx(w_canon.sum() * math.hypot(0.1, 0.1), rel=1e-12)


def test_the_expert_without_an_inner_bias():
    e = lab.ActivationExpert("relu", bias=False)
    theta = jnp.asarray([[4.0, -12.0], [4.0, 12.0]])
    assert e.size(1, 1) == 2 and set(e.blocks(1, 1)) == {"scale", "slope"}
    np.testing.assert_allclose(e.outputs(theta, jnp.asarray([0.5]), 1)[:, 0], [0.0, 24.0])
    np.testing.assert_allclose(e.canonical(theta, 1), [[48.0, -1.0], [48.0, 1.0]])
    from moe_estimation.lab.parts import EXPERT_NAMES

    assert EXPERT_NAMES["relu-nobias"]() == e
    with pytest.raises(ValueError, match="bias: expected True or False"):
        lab.ActivationExpert("relu", bias=1)


# ------------------------------------------------------------------------------------------------
# the Gaussian-gated model's EM and the source's start


def test_one_em_iteration_of_the_joint_model_is_its_closed_form_and_em_climbs():
    """One EM iteration of the joint likelihood (``max_steps = 1``) equals the closed-form M-step computed by hand
    from the responsibilities at its start; more iterations never lower the likelihood."""
    from moe_estimation.lab.fit import LabFitSettings, start

    study = _study("gmoe-1", "one-em-k4")
    model, truth = study.model, study.truth
    X, Y = lab.simulate(jax.random.key(0), model, truth, 600)
    opts = dict(truth=truth, init="near-truth", init_scale=0.02, restarts=1)
    theta = start(jax.random.fold_in(jax.random.key(7), 0), model,
                  LabFitSettings(num_components=4, init="near-truth", init_scale=0.02, restarts=1), truth, jnp.float64, 600.0)
    first = model.unflatten(theta, 4)
    new = lab.em(jax.random.key(7), model, X, Y, 4, max_steps=1, **opts).params
    g = np.asarray(first.gate)
    x, y = np.asarray(X)[:, 0], np.asarray(Y)[:, 0]
    pi = np.exp(g[:, 2]) / np.exp(g[:, 2]).sum()
    e, v = np.asarray(first.expert), np.exp(np.asarray(first.log_var))
    norm = lambda z, m, s: np.exp(-0.5 * (z - m) ** 2 / s) / np.sqrt(2 * np.pi * s)
    r = pi * norm(x[:, None], g[:, 0], np.exp(g[:, 1])) * norm(y[:, None], e[:, 0] * x[:, None] + e[:, 1], v)
    r /= r.sum(1, keepdims=True)
    rk = r.sum(0)
    c = r.T @ x / rk
    s = np.array([r[:, k] @ (x - c[k]) ** 2 / rk[k] for k in range(4)])
    np.testing.assert_allclose(np.asarray(new.gate)[:, 0], c, rtol=1e-9)
    np.testing.assert_allclose(np.exp(np.asarray(new.gate)[:, 1]), s, rtol=1e-9)
    np.testing.assert_allclose(np.exp(np.asarray(new.gate)[:, 2]), rk / 600, rtol=1e-9)
    Xt = np.c_[x, np.ones(600)]
    for k in range(4):
        coef = np.linalg.solve(Xt.T @ (Xt * r[:, k:k + 1]), Xt.T @ (r[:, k] * y))
        np.testing.assert_allclose(np.asarray(new.expert)[k], coef, rtol=1e-7)
        assert float(np.exp(new.log_var[k])) == pytest.approx(r[:, k] @ (y - Xt @ coef) ** 2 / rk[k], rel=1e-7)
    values = [float(lab.em(jax.random.key(7), model, X, Y, 4, max_steps=k, tol=0.0, **opts).objective) for k in range(1, 6)]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:]))


def test_the_softmax_gated_sources_abort_rule_counts_falls_across_tries(monkeypatch):
    """The source's rule (``abort_after`` = 20 there): a try goes on through falls of the log-likelihood, counts
    those above 1e-5, and is aborted at the count's (m + 1)-th, the count carried into the next try. Here every
    iteration is replaced by a flip theta -> -theta from a near-true start, so the likelihood falls on every odd
    iteration: with m = 3 the first try stops at its 4th fall (iteration 7), every later try at its first
    (iteration 1), all reported stalled; without the rule (m = 0) EM stops at the first fall, reported converged.
    On a real fit whose likelihood only rises both rules give the same fit."""
    import importlib

    from moe_estimation.lab.fit import LabFitSettings, start

    em_module = importlib.import_module("moe_estimation.lab.em")  # the module (moe_estimation.lab.em is the function)

    study = _study("sgame-exact", "source")
    model, truth = study.model, study.truth
    X, Y = lab.simulate(jax.random.key(0), model, truth, 500)
    w = jnp.ones(500)
    s = LabFitSettings(num_components=2, init="near-truth", init_scale=0.01, restarts=3, max_steps=50)
    starts = jax.vmap(lambda r: start(jax.random.fold_in(jax.random.key(1), r), model, s, truth, X.dtype, 500.0))(
        jnp.arange(3))
    real = [lab.em(jax.random.key(1), model, X, Y, 2, truth=truth, init="near-truth", init_scale=0.01, restarts=3,
                   tol=1e-6, gate_steps=50, abort_after=m) for m in (0, 20)]
    assert float(real[0].objective) == pytest.approx(float(real[1].objective), rel=1e-9) and bool(real[1].converged)
    monkeypatch.setattr(em_module, "_iteration", lambda model, K, X, Y, w, gate_steps, theta, *rest: -theta)
    nll = lambda th: float(em_module._nll(model, 2, X, Y, w, th))
    assert all(nll(-th) > nll(th) + 1e-3 for th in starts)  # the flip is a fall, the flip back a rise
    theta, f, status, steps = em_module._em_tries(model, s, X, Y, w, 1e-6, 5, 0.0, 3, starts)
    assert [int(k) for k in steps] == [7, 1, 1]
    assert [int(k) for k in status] == [em_module.Status.STALLED] * 3
    fit = em_module.em_dataset(jax.random.key(1), model, s, X, Y, w, truth, 1e-6, 5)  # no rule: stops at the fall
    assert int(fit.steps) == 1 and bool(fit.converged)
    with pytest.raises(ValueError, match="abort_after: must be an integer >= 0"):
        lab.em(jax.random.key(1), model, X, Y, 2, truth=truth, abort_after=-1)


def test_em_with_coordinate_descent_in_the_laplace_gate():
    """The FuseMoE source's EM: its gate M-step by coordinate descent never raises the gate's objective, the
    likelihood never falls from one EM iteration to the next, and the maximum-likelihood fit is its fixed point.
    (From a start EM can stall short of it: the Laplace gate's score is not smooth in W, and coordinate descent
    stops at kinks, on this truth at 1.5e-3 above the direct fit's objective.) A Laplace gate needs the coordinate step (Newton's is for
    softmax gates), and an unknown step is refused."""
    import importlib

    em_module = importlib.import_module("moe_estimation.lab.em")
    study = _study("fusemoe", "shrinking")
    model = study.model
    # the source's model with a truth it identifies (the source's own law puts W*_1 below the design: a ridge)
    truth = study.truth._replace(gate=jnp.array([[0.3, 0.5], [0.75, 0.0]]), expert=jnp.array([[2.0, -1.0], [-2.0, 1.0]]),
                                 log_var=jnp.log(jnp.array([0.05, 0.05])))
    X, Y = lab.simulate(jax.random.key(3), model, truth, 800)
    opts = dict(truth=truth, init="near-truth", init_scale=0.05, restarts=2)
    # one gate M-step by hand: responsibilities at a perturbed start, the coordinate descent lowers their objective
    theta = jnp.concatenate([jnp.asarray(truth.gate).ravel() + 0.3, jnp.asarray(truth.expert).ravel(), truth.log_var])
    lo, hi = (jnp.asarray(a) for a in model.box(2))
    m = model.unflatten(theta, 2)
    r = jax.nn.softmax(jax.vmap(lambda x: jnp.log(model.gate.weights(m.gate, x)))(X), axis=1)  # any fixed weights
    loss = lambda g: -jnp.sum(r * jax.vmap(lambda x: jnp.log(model.gate.weights(g.reshape(2, -1), x)))(X))
    glo, ghi = lo[:m.gate.size], hi[:m.gate.size]
    g0 = jnp.clip(m.gate.ravel() + 0.2, glo, ghi)
    assert float(g0[-1]) == 0.0 and float(glo[-1]) == float(ghi[-1]) == 0.0  # the pinned bias
    g = em_module._coordinate_gate(loss, g0, glo, ghi, 5, 0.0)
    assert float(loss(g)) < float(loss(g0)) - 1e-3 and float(g[-1]) == 0.0  # lower, the pinned bias still 0
    values = [float(lab.em(jax.random.key(1), model, X, Y, 2, max_steps=k, tol=0.0, gate_step="coordinate",
                           gate_steps=10, **opts).objective) for k in (1, 2, 4, 8, 16)]
    assert all(b <= a + 1e-12 for a, b in zip(values, values[1:])), values
    # the maximum-likelihood fit (to the direct solver's tolerance) is nearly a fixed point of an EM iteration
    d = lab.fit(jax.random.key(1), model, X, Y, 2, **opts)
    mle = jnp.concatenate([d.params.gate.ravel(), d.params.expert.ravel(), d.params.log_var])
    w = jnp.ones(X.shape[0])
    after = em_module._iteration(model, 2, X, Y, w, 10, mle, 0.0, "coordinate")
    f_mle, f_after = (float(em_module._nll(model, 2, X, Y, w, t)) for t in (mle, after))
    assert f_mle == pytest.approx(float(d.objective), rel=1e-12)
    assert f_mle * (1 - 1e-5) <= f_after <= f_mle and float(jnp.max(jnp.abs(after - mle))) < 1e-2
    with pytest.raises(ValueError, match="EM here is for"):
        lab.em(jax.random.key(1), model, X, Y, 2, **opts)  # Newton's gate step is for softmax gates
    with pytest.raises(ValueError, match="gate_step: expected one of"):
        lab.em(jax.random.key(1), model, X, Y, 2, gate_step="gradient", **opts)


def test_the_gaussian_gated_source_start():
    """'gmoe-source': every true component covered, the weights split among the fitted components of one true one,
    the noise of the stated sizes (means sd 0.005 n^-0.083; variances above the truth's by |N(0, 0.0005 n^-0.25)|)."""
    from moe_estimation.lab.fit import LabFitSettings, start

    study = _study("gmoe-3", "one-em-k5")
    model, truth = study.model, study.truth
    s = LabFitSettings(num_components=5, init="gmoe-source", restarts=1)
    n = 4000.0
    tg = np.asarray(truth.gate)
    seen = set()
    for seed in range(20):
        g = np.asarray(model.unflatten(start(jax.random.key(seed), model, s, truth, jnp.float64, n), 5).gate)
        dist = np.abs(g[:, None, :2] - tg[None, :, :2]).max(-1)
        assign = dist.argmin(1)
        assert set(assign) == {0, 1, 2} and dist.min(1).max() < 6 * 0.005 * n ** -0.083
        count = np.bincount(assign)[assign]
        np.testing.assert_allclose(np.exp(g[:, -1]), np.exp(tg[assign, -1]) / count, rtol=1e-12)
        excess = np.exp(g[:, 2:4]) - np.exp(tg[assign, 2:4])
        assert np.all(excess >= 0) and excess.max() < 6 * 0.0005 * n ** -0.25
        m = model.unflatten(start(jax.random.key(seed), model, s, truth, jnp.float64, n), 5)
        expert_noise = np.asarray(m.expert) - np.asarray(truth.expert)[assign]
        assert 0 < np.abs(expert_noise).max() < 6 * 0.005 * n ** -0.083
        noise_excess = np.exp(np.asarray(m.log_var)) - np.exp(np.asarray(truth.log_var))[assign]
        assert np.all(noise_excess >= 0) and noise_excess.max() < 6 * 0.0005 * n ** -0.25
        seen.add(tuple(assign))
    assert len(seen) > 5  # assignments vary from key to key (150 cover the three with five)
    other = _study("sgame-exact")
    with pytest.raises(ValueError, match="'gmoe-source' is the start of the Gaussian-gated"):
        start(jax.random.key(0), other.model, LabFitSettings(num_components=2, init="gmoe-source"), other.truth,
              jnp.float64, n)


def test_the_deepseek_density_is_the_fixed_split_written_out():
    """T4's log-density (shared ReLU part and normalised-sigmoid routed linear part, each of weight 1/2) equals the
    formula of the paper's eq. (8) written out by hand, at several (x, y)."""
    study = _study("deepseek-t4")
    N = lambda y, m, v: math.exp(-0.5 * (y - m) ** 2 / v) / math.sqrt(2 * math.pi * v)
    sig = lambda z: 1 / (1 + math.exp(-z))
    for x, y in ((-2.0, 1.0), (0.3, -4.0), (1.7, 12.0), (0.0, 0.5)):
        shared = N(y, -8 * max(6 * x, 0.0), 0.25)
        s1, s2 = sig(5 * x - 0.5), sig(5 * x + 0.5)
        routed = s1 / (s1 + s2) * N(y, 8 * x + 2, 0.4) + s2 / (s1 + s2) * N(y, -6 * x + 1, 0.4)
        got = float(lab.log_density(study.model, study.truth, jnp.asarray([x]), jnp.asarray([y])))
        assert got == pytest.approx(math.log(0.5 * shared + 0.5 * routed), rel=1e-12)


# ------------------------------------------------------------------------------------------------
# the committed runs


def test_the_committed_suites_are_their_presets_and_their_rates_are_their_fits():
    """tables/published/NAME is a run of the preset NAME: every way's config.json records that way's configuration,
    its fits fill its grid, its rates.csv is what its fits give, and comparison.md is what the suite's fits give."""
    from moe_estimation.lab.study import lab_rates
    from moe_estimation.lab.suite import suite_markdown

    from moe_estimation.report.summary import PUBLISHED

    root = ROOT / "tables" / "published"
    suites = sorted(p for p in root.iterdir() if p.is_dir())
    assert {p.name for p in suites} <= set(LAB_PRESETS)
    finished = {p.name for p in suites if (p / "suite.json").is_file()}
    assert {s for _, folders in PUBLISHED.values() for s in folders} <= finished  # what the README rates is complete
    for out in suites:
        ways = split_suite(lab_preset(out.name), out.name)
        if out.name not in finished:  # a suite committed part-way, to be resumed: its ways are this preset's
            for way in out.iterdir():
                table = dict((n, s) for n, _, s in ways)[way.name]
                assert json.loads((way / "config.json").read_text())["study"] == \
                    parse_lab_config(table, way.name).table, (out.name, way.name)
            continue
        meta = json.loads((out / "suite.json").read_text())
        assert [w["name"] for w in meta["ways"]] == [n for n, _, _ in ways]
        for name, label, single in ways:
            study = parse_lab_config(single, name)
            assert json.loads((out / name / "config.json").read_text())["study"] == study.table, (out.name, name)
            fits = pd.read_csv(out / name / "fits.csv")
            assert len(fits) == len(study.specifications) * len(study.ns) * study.replicates, (out.name, name)
            committed = pd.read_csv(out / name / "rates.csv", keep_default_na=False, na_values=["nan"])
            pd.testing.assert_frame_equal(lab_rates(fits, study).reset_index(drop=True), committed, check_dtype=False,
                                          rtol=1e-10)
        assert (out / "comparison.md").read_text() == suite_markdown(out) + "\n", out.name


def test_the_sources_reported_numbers_sit_beside_ours_from_the_committed_ways(tmp_path):
    """tables/published/reported.csv names, for each rebuilt source, a committed way and the loss the source rates;
    reported_table reads our slope from that way's rates.csv and, for a source quoting powers of log(n)/n, the
    mean loss regressed on log(n / log n) (checked here by hand on one row); an unknown regressor is refused."""
    from moe_estimation.report.summary import PUBLISHED, reported_table
    from moe_estimation.rates import ols_line

    root = Path(__file__).resolve().parent.parent / "tables"
    reported = pd.read_csv(root / "published" / "reported.csv")
    assert set(reported["source"]) == set(PUBLISHED)  # every rebuilt source has its row(s)
    assert set(reported["regressor"]) <= {"n", "log(n)/n"}
    for row in reported.itertuples():
        assert (root / "published" / row.way / "rates.csv").is_file(), row.way
        assert row.loss == PUBLISHED[row.source][0]  # the loss the source's table rates
    table = reported_table(root).splitlines()
    assert len(table) == 2 + len(reported)
    t2 = next(line for line in table if line.startswith("| deepseek-t2 "))
    f = pd.read_csv(root / "published" / "deepseek-t2" / "source-kind" / "fits.csv")
    mean = f.groupby("n")["loss_D2"].mean()
    ns = mean.index.to_numpy(float)
    by_hand = ols_line(np.log(ns / np.log(ns)), np.log(mean.to_numpy()))[0]
    assert f"| {by_hand:.2f} (in log(n)/n) |" in t2 and "| -0.517 (in log(n)/n) |" in t2
    assert "| not read |" in next(line for line in table if line.startswith("| sgame "))
    # a regressor the table cannot read is refused, naming the file, the value and the rule
    (tmp_path / "published").mkdir()
    bad = reported.iloc[:1].assign(regressor="sqrt(n)")
    bad.to_csv(tmp_path / "published" / "reported.csv", index=False)
    suite = (root / "published" / bad["way"].iloc[0]).parent
    shutil.copytree(suite, tmp_path / "published" / suite.name)
    with pytest.raises(ValueError, match=r"reported.csv: regressor must be 'n' or 'log\(n\)/n', got 'sqrt\(n\)'"):
        reported_table(tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", LAB_PRESETS)
def test_every_preset_runs_at_a_tiny_size(tmp_path, name):
    """Each preset's first way of fitting, at two small sizes and two data sets (a few solver or EM steps), through
    the suite runner: fits every cell, rates every declared loss, writes its comparison."""
    from moe_estimation.lab.suite import run_lab_suite

    data = lab_preset(name)
    first = next(iter(data["fits"]))
    data["fits"] = {first: dict(data["fits"][first], restarts=1, max_steps=min(data["fits"][first].get("max_steps", 5), 5))}
    data["grid"] = dict(data["grid"], ns=[300, 400], replicates=2)
    fits = run_lab_suite(data, tmp_path / name, name, progress=False, log=lambda *a: None)[first]
    study = parse_lab_config(split_suite(data)[0][2], name)
    assert len(fits) == 2 * 2 * len(study.specifications)
    assert all(fits[f"loss_{loss}"].notna().all() for loss in study.losses)
    assert (tmp_path / name / "comparison.md").is_file()
