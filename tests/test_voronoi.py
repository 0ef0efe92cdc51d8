import numpy as np
import jax.numpy as jnp
import pytest

import moe_estimation as me
from moe_estimation.voronoi import voronoi_parts

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
