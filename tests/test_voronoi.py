import numpy as np
import jax.numpy as jnp
import pytest

import moe_estimation as me
from moe_estimation.prefix.voronoi import voronoi_parts

TRUE_W = jnp.array([1.0, 2.0])
TRUE_A = jnp.array([[0.0, 0.0], [3.0, 0.0]])


def test_hand_computed_singletons():
    # one fitted atom per cell: weight error |1.5-1| + |2-2|, singleton part 1.5*0.1 + 2*0.2
    w = jnp.array([1.5, 2.0])
    a = jnp.array([[0.1, 0.0], [3.0, 0.2]])
    p = voronoi_parts(w, a, TRUE_W, TRUE_A)
    assert float(p["weight"]) == pytest.approx(0.5, abs=1e-12)
    assert float(p["single"]) == pytest.approx(1.5 * 0.1 + 2.0 * 0.2, abs=1e-12)
    assert float(p["multi"]) == 0.0
    assert float(p["d2"]) == pytest.approx(0.5 + 0.15 + 0.4, abs=1e-12)


def test_hand_computed_multi_cell_and_empty_cell():
    # both fitted atoms fall in cell 0; cell 1 is empty and contributes its true weight 2
    w = jnp.array([0.4, 0.5])
    a = jnp.array([[0.0, 0.3], [-0.4, 0.0]])
    p = voronoi_parts(w, a, TRUE_W, TRUE_A)
    assert float(p["weight"]) == pytest.approx(abs(0.9 - 1.0) + 2.0, abs=1e-12)
    assert float(p["multi"]) == pytest.approx(0.4 * 0.09 + 0.5 * 0.16, abs=1e-12)
    assert float(p["single"]) == 0.0
    assert int(p["num_cells_empty"]) == 1 and int(p["num_cells_multi"]) == 1


def test_d1r_key_value_split_hand_computed():
    true_w = jnp.array([1.0])
    true_a = jnp.array([[0.0, 0.0, 0.0, 0.0]])
    w = jnp.array([2.0])
    a = jnp.array([[3.0, 4.0, 0.0, 1.0]])  # ||dK|| = 5, ||dV|| = 1
    assert float(me.d1r_loss(w, a, true_w, true_a, split=2, r=1.0)) == pytest.approx(1.0 + 2 * (5 + 1))
    assert float(me.d1r_loss(w, a, true_w, true_a, split=2, r=2.0)) == pytest.approx(1.0 + 2 * (25 + 1))
    p = voronoi_parts(w, a, true_w, true_a, split=2)
    assert float(p["key_single"]) == pytest.approx(10.0) and float(p["value_single"]) == pytest.approx(2.0)


def test_ties_go_to_lower_cell():
    w = jnp.array([1.0])
    a = jnp.array([[1.5, 0.0]])  # equidistant from both true atoms
    p = voronoi_parts(w, a, TRUE_W, TRUE_A)
    assert float(p["weight"]) == pytest.approx(0.0 + 2.0)


@pytest.mark.parametrize("name", me.PRESETS)
def test_zero_at_truth_and_permutation_invariant(name):
    prob = me.preset(name)
    truth = me.true_params(prob)
    assert float(me.voronoi_loss(prob, truth)) == pytest.approx(0.0, abs=1e-12)
    assert float(me.key_value_loss(prob, truth)) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(0)
    atoms = jnp.concatenate([truth.atoms, truth.atoms[:1]]) + 0.05 * rng.normal(size=(3, prob.atom_dim))
    biases = jnp.concatenate([truth.biases, truth.biases[:1]]) + 0.1 * rng.normal(size=3)
    params = me.Params(atoms, biases)
    perm = np.array([2, 0, 1])
    permuted = me.Params(atoms[perm], biases[perm])
    for loss in (me.voronoi_loss, me.key_value_loss):
        assert float(loss(prob, params)) > 0
        assert float(loss(prob, params)) == pytest.approx(float(loss(prob, permuted)), rel=1e-12)


def test_max_multi_is_the_largest_atom_error_in_a_shared_cell():
    # atoms 0 and 1 share cell 0 (errors 0.3 and 0.4, the second with a tiny weight); atom 2 alone in cell 1
    w = jnp.array([0.6, 0.01, 2.0])
    a = jnp.array([[0.0, 0.3], [-0.4, 0.0], [3.0, 1.0]])
    p = voronoi_parts(w, a, TRUE_W, TRUE_A)
    assert float(p["max_multi"]) == pytest.approx(0.4, abs=1e-12)  # unweighted: the light atom counts
    lone = voronoi_parts(w[jnp.array([0, 2])], a[jnp.array([0, 2])], TRUE_W, TRUE_A)
    assert float(lone["max_multi"]) == 0.0  # no cell holds two atoms
    # the bound that makes it a rate: w_min max_multi^2 <= the multi-atom part of D_2
    assert float(w.min()) * float(p["max_multi"]) ** 2 <= float(p["multi"])
    nan = voronoi_parts(w, a.at[2, 0].set(jnp.nan), TRUE_W, TRUE_A)
    assert np.isnan(float(nan["max_multi"]))


def test_identified_parts_by_key_put_an_atom_with_its_key_mates():
    # true (key, value) atoms (0, 0) and (3, 5), weights 1 and 1. Fitted: two atoms on key 0 whose values
    # spread along a zero set (5 and -5, averaging 0), one atom at (3, 5). The atom (0, 5) is nearer (3, 5)
    # than (0, 0) as a whole atom (3 < 5), so by atom it sits in cell 1; by key (0 against 3) in cell 0.
    true_w = jnp.array([1.0, 1.0])
    true_a = jnp.array([[0.0, 0.0], [3.0, 5.0]])
    w = jnp.array([0.5, 0.5, 1.0])
    a = jnp.array([[0.0, 5.0], [0.0, -5.0], [3.0, 5.0]])
    by_atom = me.identified_parts(w, a, true_w, true_a, split=1)
    by_key = me.identified_parts(w, a, true_w, true_a, split=1, cells="key")
    # by key: cell 0 = {0, 1} (weight 1, averaged key and value exactly the truth), cell 1 = {2}
    for part in ("weight", "key", "value"):
        assert float(by_key[part]) == pytest.approx(0.0, abs=1e-12), part
    assert float(by_key["spread_value"]) == pytest.approx(0.5 * 25 + 0.5 * 25)
    assert float(by_key["spread_key"]) == pytest.approx(0.0, abs=1e-12)
    # by atom: cell 0 = {1} (weight 0.5, value -5), cell 1 = {0, 2} (weight 1.5, key 2, value 5)
    assert float(by_atom["weight"]) == pytest.approx(0.5 + 0.5)
    assert float(by_atom["key"]) == pytest.approx(0.0 + 1.0)
    assert float(by_atom["value"]) == pytest.approx(5.0 + 0.0)
    with pytest.raises(ValueError, match="cells: expected one of"):
        me.identified_parts(w, a, true_w, true_a, split=1, cells="value")
    with pytest.raises(ValueError, match="split >= 1"):
        me.identified_parts(w, a, true_w, true_a, split=0, cells="key")
