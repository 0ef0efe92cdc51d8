"""Batched prefix-tuning: many (learning rate, data set) members in one vmapped program against each member
tuned alone, on the ``tiny`` preset (20 to 40 steps, checks every 20)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from moe_estimation.transformer import PARAMETERISATIONS, init_backbone
from moe_estimation.transformer.tasks import sample
from moe_estimation.transformer.train import (TRANSFORMER_PRESETS, Scored, grid_search, resolve_batch, score_members,
                                             tune)

STUDY = TRANSFORMER_PRESETS["tiny"]
CFG = STUDY.backbone
#: two data sets (keys) per rate: 1e-7 cannot move the loss (flat at the first check, 20 steps); the others
#: train for 20 or 40 steps, some of them not flat by then (see the steps asserted below)
LRS = np.repeat([1e-7, 1e-2, 3e-2, 1e-1], 2)
#: float32: the vmapped kernels may sum in another order; over 40 steps the members measured within 1.3e-6
#: of their runs alone (held-out loss, deep-share), so 1e-4 leaves two decades for other CPUs
ATOL = 1e-4


@pytest.fixture(scope="module")
def setting():
    with jax.enable_x64(False):
        backbone = init_backbone(jax.random.key(0), CFG)
        heldout = sample(jax.random.key(5), "downstream", STUDY.test_size, CFG)
        keys = jnp.concatenate([jax.random.split(jax.random.key(3), 2)] * (len(LRS) // 2))
    return backbone, heldout, keys


@pytest.mark.study
@pytest.mark.parametrize("kind", PARAMETERISATIONS)
def test_batched_members_give_what_each_gives_alone(setting, kind):
    backbone, heldout, keys = setting
    with jax.enable_x64(False):
        alone = score_members(backbone, STUDY, kind, 16, LRS, keys, heldout, batch=1)
        together = score_members(backbone, STUDY, kind, 16, LRS, keys, heldout, batch=None)  # one program
        # 3 + 3 + 2 members (one kind only: each call size is a program of its own to compile)
        pairs = score_members(backbone, STUDY, kind, 16, LRS, keys, heldout, batch=3) if kind == "no-share" else None
    assert set(alone) == set(Scored._fields)
    assert len(set(alone["steps"].tolist())) > 1, alone["steps"]  # members stopped at different step counts
    assert alone["steps"][0] == alone["steps"][1] == STUDY.min_steps and alone["flat"][:2].all()
    for got in (together, pairs) if pairs is not None else (together,):
        np.testing.assert_array_equal(got["steps"], alone["steps"])  # the stopping rule decided alike
        np.testing.assert_array_equal(got["flat"], alone["flat"])
        for field in ("heldout_loss", "accuracy", "train_loss", "change"):
            np.testing.assert_allclose(got[field], alone[field], rtol=0, atol=ATOL, err_msg=field)


@pytest.mark.study
def test_a_stopped_member_stays_frozen_while_the_batch_goes_on(setting):
    """Member A (rate 1e-7) stops at the first check; beside a copy of itself the batch stops there too,
    beside a member B that trains on to max_steps (rate 1) the loop runs another block for both. A's parameters,
    history, steps and flags must come out bit for bit the same either way, and its history past its
    stop must stay NaN, as alone."""
    backbone, _, keys = setting
    with jax.enable_x64(False):
        tokens, labels = sample(jax.random.key(7), "downstream", 16, CFG)

        @jax.jit
        def batch(ks, lrs):
            return jax.vmap(lambda k, lr: tune(k, "no-share", backbone, CFG, tokens, labels, lr, STUDY.num_prefixes,
                                               min_steps=STUDY.min_steps, max_steps=STUDY.max_steps,
                                               check_every=STUDY.check_every, flat_tol=STUDY.flat_tol))(ks, lrs)

        a_twice = batch(jnp.stack([keys[0], keys[0]]), jnp.asarray([1e-7, 1e-7], jnp.float32))
        a_and_b = batch(jnp.stack([keys[0], keys[1]]), jnp.asarray([1e-7, 1.0], jnp.float32))
        alone = tune(keys[0], "no-share", backbone, CFG, tokens, labels, 1e-7, STUDY.num_prefixes,
                     min_steps=STUDY.min_steps, max_steps=STUDY.max_steps, check_every=STUDY.check_every,
                     flat_tol=STUDY.flat_tol)
    assert np.asarray(a_twice.steps).tolist() == [STUDY.min_steps] * 2
    assert np.asarray(a_and_b.steps).tolist() == [STUDY.min_steps, STUDY.max_steps]  # B went on
    for x, y in zip(jax.tree.leaves(a_twice), jax.tree.leaves(a_and_b)):
        np.testing.assert_array_equal(np.asarray(x)[0], np.asarray(y)[0])
    assert np.isnan(np.asarray(a_and_b.losses[0, STUDY.min_steps:])).all()
    assert int(alone.steps) == STUDY.min_steps and bool(alone.flat)
    for x, y in zip(jax.tree.leaves(alone), jax.tree.leaves(a_and_b)):
        np.testing.assert_allclose(np.asarray(y)[0], np.asarray(x), rtol=0, atol=ATOL)


def test_grid_search_batched_scores_the_same_rates_and_chooses_the_same():
    score = lambda lr: (np.log10(lr) - 0.0) ** 2  # best at 1, above the grid: widened upwards three times
    calls = []

    def many(rates):
        calls.append(list(rates))
        return [score(lr) for lr in rates]

    one = grid_search(score, (1e-2, 3e-2, 1e-1), widen=3)
    batched = grid_search(many, (1e-2, 3e-2, 1e-1), widen=3, batched=True)
    assert batched == one
    assert calls[0] == [1e-2, 3e-2, 1e-1] and [len(c) for c in calls] == [3, 1, 1, 1]  # whole grid, then edges
    with pytest.raises(ValueError, match="one score per rate"):
        grid_search(lambda rates: [0.0], (1e-2, 1e-1), widen=0, batched=True)


def test_batch_is_validated(setting):
    assert resolve_batch(1) == 1 and resolve_batch(None) is None
    assert resolve_batch("auto") == (1 if jax.default_backend() == "cpu" else None)
    for bad in (0, -2, 1.5, "all", True):
        with pytest.raises(ValueError, match="batch: expected 'auto', None or an integer >= 1"):
            resolve_batch(bad)
    backbone, heldout, keys = setting
    with pytest.raises(ValueError, match="keys: expected one key per learning rate"):
        score_members(backbone, STUDY, "no-share", 16, LRS, keys[:3], heldout)
