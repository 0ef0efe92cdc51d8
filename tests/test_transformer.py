import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import moe_estimation as me
from moe_estimation.transformer import PARAMETERISATIONS, BackboneConfig, attention, forward, init_backbone, init_prefix, prefix_kv
from moe_estimation.transformer.tasks import sample
from moe_estimation.transformer.train import (TRANSFORMER_PRESETS, TransformerStudy, evaluate, grid_search,
                                             interpolate_rates, pretrain, tune, validate_study)

ROOT = Path(__file__).resolve().parents[1]
CFG = BackboneConfig()


def test_shapes():
    bb = init_backbone(jax.random.key(0), CFG)
    tokens, labels = sample(jax.random.key(1), "pretrain", 5, CFG)
    assert tokens.shape == (5, CFG.seq_len) and labels.shape == (5,)
    assert forward(bb, tokens[0], CFG).shape == (CFG.classes,)
    for kind in PARAMETERISATIONS:
        kv = prefix_kv(kind, init_prefix(jax.random.key(2), kind, CFG, 4), bb, CFG)
        assert len(kv) == CFG.layers
        for k, v in kv:
            assert k.shape == v.shape == (CFG.heads, 4, CFG.head_dim)
        assert forward(bb, tokens[0], CFG, kv).shape == (CFG.classes,)


def test_unknown_parameterisation():
    with pytest.raises(ValueError, match="kind"):
        init_prefix(jax.random.key(0), "half-share", CFG, 4)


@pytest.mark.study
@pytest.mark.parametrize("kind", PARAMETERISATIONS)
def test_only_prefix_parameters_get_gradients_and_backbone_stays_frozen(kind):
    bb = init_backbone(jax.random.key(0), CFG)
    before = jax.tree.map(np.array, bb)
    tokens, labels = sample(jax.random.key(1), "downstream", 32, CFG)
    params = init_prefix(jax.random.key(2), kind, CFG, 4)

    def loss(p, b):
        logits = jax.vmap(lambda t: forward(b, t, CFG, prefix_kv(kind, p, b, CFG)))(tokens)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(32), labels])

    g_prefix = jax.grad(loss)(params, bb)
    assert set(g_prefix) == set(params)  # every trainable prefix (and deep-share MLP) parameter
    assert all(float(jnp.abs(x).max()) > 0 for x in jax.tree.leaves(g_prefix))
    tuned = tune(jax.random.key(2), kind, bb, CFG, tokens, labels, 1e-2, 4, min_steps=5, max_steps=5, check_every=5)
    trained, losses = tuned.params, tuned.losses
    assert set(trained) == set(params)
    for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(bb)):
        np.testing.assert_array_equal(a, np.asarray(b))  # bitwise unchanged
    assert float(losses[-1]) < float(losses[0])


@pytest.mark.study
def test_pretraining_learns_its_task():
    study = TRANSFORMER_PRESETS["tiny"]._replace(pretrain_steps=400)
    bb, _ = pretrain(jax.random.key(0), study)
    tokens, labels = sample(jax.random.key(9), "pretrain", 2000, CFG)
    loss, acc = evaluate(bb, CFG, tokens, labels)
    trivial = np.log(CFG.classes)  # predicting the uniform distribution
    assert float(loss) < 0.5 * trivial, (float(loss), float(acc))


def _bridge(structure):
    """One layer, one head, d_head = D, and a prefix, against the MoE regression function."""
    T, D, Lp = 4, 3, 2
    ks = jax.random.split(jax.random.key(3), 8)
    W_Q, W_K, W_V = (jax.random.normal(k, (D, D)) for k in ks[:3])
    x = jax.random.normal(ks[3], (T, D))
    E = [jnp.zeros((D, T * D)).at[:, j * D:(j + 1) * D].set(jnp.eye(D)) for j in range(T)]
    A = jnp.stack([E[0].T @ W_Q @ W_K.T @ E[j] / jnp.sqrt(D) for j in range(T)])
    A = (A + jnp.swapaxes(A, 1, 2)) / 2  # X^T A X only sees the symmetric part
    H = jnp.stack([W_V.T @ E[j] for j in range(T)])
    B = E[0].T @ W_Q / jnp.sqrt(D)
    if structure == "non-shared":
        pk, pv = jax.random.normal(ks[4], (Lp, D)), jax.random.normal(ks[5], (Lp, D))
        prob = me.make_problem(structure="non-shared", A=A, a=jnp.zeros(T), H=H, B=B, C=jnp.eye(D),
                               true_atoms=jnp.concatenate([pk, pv], 1), true_biases=jnp.zeros(Lp), atom_bound=50.0)
    else:  # simple-share: the prefix is a virtual token p, key W_K^T p, value W_V^T p
        p = jax.random.normal(ks[4], (Lp, D))
        pk, pv = p @ W_K, p @ W_V
        prob = me.make_problem(structure="shared-linear", A=A, a=jnp.zeros(T), H=H, B=B, C=jnp.eye(D), W1=W_K.T,
                               W2=W_V.T, true_atoms=p, true_biases=jnp.zeros(Lp), atom_bound=50.0)
    moe = me.regression_function(prob, me.true_params(prob), x.reshape(-1))
    att = attention(W_Q, W_K, W_V, x, 1, pk[None], pv[None])[0]
    return np.asarray(moe), np.asarray(att)


@pytest.mark.parametrize("structure", ["non-shared", "shared-linear"])
def test_bridge_attention_row_is_the_moe_regression_function(structure):
    moe, att = _bridge(structure)
    np.testing.assert_allclose(moe, att, rtol=1e-10, atol=1e-12)


@pytest.mark.e2e
def test_transformer_command_end_to_end(tiny_runs, tmp_path, cli):
    """``transformer --preset tiny`` as reproduce.py ran it (its own process, ``tiny_runs``): the tables as
    documented; then, on a copy, a rerun keeps everything, another study is refused, and the figure is drawn."""
    import shutil

    out = tmp_path / "tr"
    shutil.copytree(tiny_runs.transformer, out)
    curves = pd.read_csv(out / "curves.csv")
    assert {"parameterisation", "n", "seed", "heldout_loss", "accuracy", "train_loss", "train_change", "flat", "steps",
            "lr", "seconds"} <= set(curves.columns)
    assert set(curves["parameterisation"]) == set(PARAMETERISATIONS)
    assert (out / "config.json").exists() and (out / "backbone.npz").exists()
    study = TRANSFORMER_PRESETS["tiny"]
    assert curves["steps"].between(study.min_steps, study.max_steps).all()
    search = pd.read_csv(out / "lr_search.csv")
    chosen = search[search["chosen"]]
    assert len(chosen) == len(PARAMETERISATIONS) * len(study.search_ns)  # one rate per parameterisation and size
    for row in chosen.itertuples():  # the curves' rate at a searched size is the searched one
        used = curves[(curves["parameterisation"] == row.parameterisation) & (curves["n"] == row.n)]["lr"]
        np.testing.assert_allclose(used, row.lr, rtol=1e-12)
    # run again: the search and the curves are kept, nothing is tuned again
    r = cli("transformer", "--preset", "tiny", "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "resuming: 6 of 6 cells" in r.stdout + r.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out / "curves.csv"), curves)
    assert pd.read_csv(out / "lr_search.csv").equals(search)
    # a damaged search table is refused with nothing changed; --repair searches the damaged size again, alone
    kind, n = chosen["parameterisation"].iloc[0], int(chosen["n"].iloc[0])
    damaged = search.copy()
    damaged.loc[(damaged["parameterisation"] == kind) & (damaged["n"] == n), "chosen"] = False
    damaged.to_csv(out / "lr_search.csv", index=False)
    r = cli("transformer", "--preset", "tiny", "--out", out, "--no-progress")
    assert r.returncode != 0 and "lr_search.csv is damaged" in r.stderr and "--repair" in r.stderr
    assert pd.read_csv(out / "lr_search.csv").equals(damaged)
    r = cli("transformer", "--preset", "tiny", "--out", out, "--no-progress", "--repair")
    assert r.returncode == 0, r.stderr
    assert "without exactly one chosen rate" in r.stdout + r.stderr
    pd.testing.assert_frame_equal(pd.read_csv(out / "lr_search.csv"), search)
    pd.testing.assert_frame_equal(pd.read_csv(out / "curves.csv"), curves)
    # another study into the same folder is refused before anything is made
    before = sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir())
    r = cli("transformer", "--preset", "quick", "--out", out, "--no-progress")
    assert r.returncode != 0 and "holds a different transformer study" in r.stderr
    assert sorted((p.name, p.stat().st_mtime_ns) for p in out.iterdir()) == before
    r = cli("plot", "--results", out, "--out", tmp_path / "figs")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "figs" / "transformer_curves.png").exists()


_DTYPE_PROBE = """
import jax, numpy as np
from moe_estimation.transformer import BackboneConfig
from moe_estimation.transformer.tasks import sample
from moe_estimation.transformer.train import tune, pretrain, TRANSFORMER_PRESETS
study = TRANSFORMER_PRESETS["tiny"]._replace(pretrain_steps=20)
bb, _ = pretrain(jax.random.key(0), study)
tokens, labels = sample(jax.random.key(1), "downstream", 16, study.backbone)
params, losses = tune(jax.random.key(2), "deep-share", bb, study.backbone, tokens, labels, 1e-2, 4, min_steps=5,
                      max_steps=5, check_every=5)[:2]
leaves = jax.tree.leaves((bb, params, losses))
assert {str(a.dtype) for a in leaves} == {"float32"}, {str(a.dtype) for a in leaves}
np.save(OUT, np.concatenate([np.ravel(a) for a in jax.tree.leaves((params, losses))]))
"""


@pytest.mark.e2e
def test_transformer_is_float32_whatever_the_x64_flag(tmp_path):
    """The transformer trains in float32 in a process that estimates in float64 (this one: the tests turn
    jax_enable_x64 on) and gives the same numbers, to float32 rounding, as in a float32-only process;
    nothing toggles the flag."""
    assert jax.config.jax_enable_x64
    out = {}
    for x64 in (True, False):
        path = tmp_path / f"x64_{x64}.npy"
        code = f"import jax; jax.config.update('jax_enable_x64', {x64})\nOUT = {str(path)!r}\n" + _DTYPE_PROBE
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"})
        out[x64] = np.load(path)
    # the same to float32 rounding (some library constants are float64 numpy scalars, so a few intermediate
    # roundings differ with the flag; 25 steps of training amplify them to about 4e-4 at most)
    np.testing.assert_allclose(out[True], out[False], rtol=0, atol=2e-3)
    # and in this process, beside float64 estimation
    prob = me.preset("shared-linear")
    X, Y = me.simulate(jax.random.key(0), prob, 50)
    fit = me.fit(jax.random.key(1), prob, X, Y, 2, restarts=1, max_steps=5)
    bb = init_backbone(jax.random.key(0), CFG)
    assert fit.params.atoms.dtype == jnp.float64 and {a.dtype for a in jax.tree.leaves(bb)} == {jnp.dtype("float32")}
    assert jax.config.jax_enable_x64


def test_problem_dtype_is_explicit():
    assert me.preset("non-shared").dtype == jnp.float64
    assert me.preset("non-shared", dtype="float32").dtype == jnp.float32
    with pytest.raises(ValueError, match="dtype"):
        me.preset("non-shared", dtype="int8")
    code = "import jax, moe_estimation as me\ntry:\n    me.preset('non-shared')\nexcept ValueError as e:\n    print(e)\n"
    got = subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, capture_output=True, text=True).stdout
    assert got.startswith("dtype: float64 (the default) needs jax_enable_x64")


def test_grid_search_widens_while_the_best_rate_is_on_the_edge():
    score = lambda lr: (np.log10(lr) - 0.0) ** 2  # best at lr = 1, above the grid
    res = grid_search(score, (1e-2, 3e-2, 1e-1), widen=3)
    assert res.best == pytest.approx(1.0) and res.widened == 3 and not res.on_edge
    assert res.grid[-1] == pytest.approx(10 ** 0.5) and len(res.scores) == 6
    short = grid_search(score, (1e-2, 3e-2, 1e-1), widen=1)  # not allowed to get there: recorded, not hidden
    assert short.best == pytest.approx(10 ** -0.5) and short.widened == 1 and short.on_edge
    low = grid_search(lambda lr: (np.log10(lr) + 3.0) ** 2, (1e-2, 1e-1), widen=3)  # widens downwards too
    assert low.best == pytest.approx(1e-3) and low.grid[0] < low.best
    inside = grid_search(lambda lr: abs(np.log10(lr) + 1.5), (1e-2, 3e-2, 1e-1), widen=3)
    assert inside.best == 3e-2 and inside.widened == 0 and not inside.on_edge
    nan_high = grid_search(lambda lr: np.nan if lr > 0.05 else -lr, (1e-2, 3e-2, 1e-1), widen=3)
    assert nan_high.best == 3e-2 and not nan_high.on_edge  # a diverged rate never wins
    with pytest.raises(RuntimeError, match="non-finite"):
        grid_search(lambda lr: np.inf, (1e-2, 1e-1), widen=0)


def test_interpolate_rates_is_log_linear_between_searched_sizes():
    rates = interpolate_rates({16: 0.1, 256: 0.001}, (8, 16, 64, 256, 512))
    assert rates[16] == pytest.approx(0.1) and rates[256] == pytest.approx(0.001)
    assert rates[64] == pytest.approx(0.01)  # halfway in log n, halfway in log lr
    assert rates[8] == pytest.approx(0.1) and rates[512] == pytest.approx(0.001)  # constant beyond


def test_tune_trains_until_the_loss_is_flat():
    bb = init_backbone(jax.random.key(0), CFG)
    tokens, labels = sample(jax.random.key(1), "downstream", 32, CFG)
    still = tune(jax.random.key(2), "no-share", bb, CFG, tokens, labels, 1e-7, 4, min_steps=20, max_steps=200,
                 check_every=10)
    assert bool(still.flat) and int(still.steps) == 20  # a rate too small to move: flat at the first check
    moving = tune(jax.random.key(2), "no-share", bb, CFG, tokens, labels, 3e-2, 4, min_steps=10, max_steps=20,
                  check_every=10, flat_tol=1e-6)
    assert not bool(moving.flat) and int(moving.steps) == 20  # cut at max_steps, and says so
    losses = np.asarray(moving.losses)
    assert float(moving.train_loss) == losses[19]
    assert float(moving.change) == pytest.approx(losses[19 - 2] - losses[19])
    assert abs(float(moving.change)) > 1e-6 * max(float(moving.train_loss), 1.0)
    with pytest.raises(ValueError, match="max_steps: must be a multiple of check_every"):
        tune(jax.random.key(2), "no-share", bb, CFG, tokens, labels, 3e-2, 4, min_steps=10, max_steps=25, check_every=10)


def test_transformer_study_is_validated():
    with pytest.raises(ValueError, match="max_steps: must be a multiple of check_every"):
        validate_study(TransformerStudy(max_steps=250, check_every=100))
    with pytest.raises(ValueError, match="lr_grid"):
        validate_study(TransformerStudy(lr_grid=(1e-1, 1e-2)))
    with pytest.raises(ValueError, match="lr_search_ns"):
        validate_study(TransformerStudy(lr_search_ns=(4096,)))
    with pytest.raises(ValueError, match="flat_tol"):
        validate_study(TransformerStudy(flat_tol=0.0))
    for preset in TRANSFORMER_PRESETS.values():
        validate_study(preset)


@pytest.mark.study
def test_learning_curves_are_the_same_bits_whatever_the_x64_flag(tmp_path):
    # reproduce.py runs a float64 study first, in the same process: the curves must not notice
    from moe_estimation.transformer.train import load_backbone, run_transformer

    study = TRANSFORMER_PRESETS["tiny"]._replace(ns=(16, 24), lr_grid=(3e-2,), lr_widen=0, seeds=1,
                                               lr_search_ns=(16,))
    before = jax.config.jax_enable_x64
    try:
        for flag in (True, False):
            jax.config.update("jax_enable_x64", flag)
            run_transformer(study, tmp_path / str(flag), progress=False, log=lambda *a: None)
            assert jax.config.jax_enable_x64 == flag  # the caller's setting is left as it was
    finally:
        jax.config.update("jax_enable_x64", before)
    on, off = (load_backbone(tmp_path / str(f) / "backbone.npz", study.backbone) for f in (True, False))
    for a, b in zip(jax.tree.leaves(on), jax.tree.leaves(off)):
        np.testing.assert_array_equal(a, b)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "True" / "curves.csv").drop(columns="seconds"),
                                  pd.read_csv(tmp_path / "False" / "curves.csv").drop(columns="seconds"))
