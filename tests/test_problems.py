import numpy as np
import pytest

import moe_estimation as me
from moe_estimation.prefix.problems import random_pretrained


def base(structure="shared-linear", **over):
    kw = dict(random_pretrained(0), B=np.eye(2), C=np.eye(2), W1=np.eye(2), W2=np.eye(2),
              true_atoms=np.array([[0.5, 0.2], [-0.4, 0.6]]), true_biases=np.array([0.0, 0.2]),
              structure=structure)
    if structure == "non-shared":
        kw.update(W1=None, W2=None, true_atoms=np.array([[0.5, 0.2, 0.1, 0.3], [-0.4, 0.6, 0.2, -0.1]]))
    kw.update(over)
    return kw


def test_valid_problems_build():
    for s in ("shared-linear", "shared-nonlinear", "prompt-tuning", "non-shared"):
        prob = me.make_problem(**base(s))
        assert prob.structure == s and prob.num_true_prompts == 2


@pytest.mark.parametrize(
    "over, word",
    [
        (dict(structure="shared-quadratic"), "structure"),
        (dict(activation="relu", structure="shared-nonlinear"), "activation"),
        (dict(noise_var=0.0), "noise_var"),
        (dict(noise_var=-1.0), "noise_var"),
        (dict(a=np.zeros(3)), "Shape mismatch in a"),
        (dict(H=np.zeros((2, 2, 3))), "Shape mismatch in H"),
        (dict(B=np.eye(3)), "Shape mismatch in B"),
        (dict(W2=np.eye(3)), "Shape mismatch in W2"),
        (dict(true_atoms=np.zeros((2, 3))), "Shape mismatch in true_atoms"),
        (dict(true_biases=np.zeros(3)), "Shape mismatch in true_biases"),
        (dict(A=np.array([[[0.0, 1.0], [0.0, 0.0]]] * 2)), "symmetric"),
        (dict(W2=np.array([[1.0, 2.0], [2.0, 4.0]])), "C @ W2 is not injective"),
        (dict(C=np.ones((1, 2)), W2=np.eye(2)[:, :], H=np.zeros((2, 1, 2))), "not injective"),
        (dict(true_atoms=np.array([[0.5, 0.2], [0.5, 0.2]])), "distinct"),
        (dict(true_atoms=np.array([[0.0, 0.0], [0.5, 0.2]])), "key of true atom 0 is zero"),
        (dict(true_atoms=np.array([[5.0, 0.2], [0.5, 0.2]])), "parameter box"),
        (dict(true_biases=np.array([0.0, 9.0])), "bias_bounds"),
        (dict(bias_bounds=(1.0, -1.0)), "bias_bounds"),
        (dict(a=np.array([np.nan, 0.0])), "finite"),
        (dict(W1=None), "W1, W2: required"),
    ],
)
def test_validation_rules(over, word):
    with pytest.raises(ValueError, match=word):
        me.make_problem(**base(**over))


def test_nonlinear_needs_injective_W2():
    with pytest.raises(ValueError, match="W2 is not injective"):
        me.make_problem(**base("shared-nonlinear", W2=np.array([[1.0, 1.0], [1.0, 1.0]])))


def test_non_shared_needs_injective_B_and_C():
    with pytest.raises(ValueError, match="B is not injective"):
        me.make_problem(**base("non-shared", B=np.array([[1.0, 1.0], [1.0, 1.0]])))
    with pytest.raises(ValueError, match="C is not injective"):
        me.make_problem(**base("non-shared", C=np.array([[1.0, 0.0], [2.0, 0.0]])))


def test_unknown_preset():
    with pytest.raises(ValueError, match="unknown preset"):
        me.preset("deep-share")


def test_presets_share_true_keys_and_values():
    kv = [np.concatenate(me.preset(n).true_key_value(), axis=1) for n in me.PRESETS]
    for other in kv[1:]:
        np.testing.assert_allclose(other, kv[0], atol=1e-12)


def _affine_misfit(problem, grid=9):
    """How far the values of a shared structure are from an affine function of its keys, over atoms p
    spread through the box: the root-mean-square residual of the least-squares fit v ~ M k + c, relative to
    the spread of v."""
    from moe_estimation.prefix.structures import key_value

    t = np.linspace(-1.5, 1.5, grid)
    p = np.stack(np.meshgrid(t, t), -1).reshape(-1, 2)
    k, v = (np.asarray(a) for a in key_value(problem, p))
    X = np.concatenate([k, np.ones((len(k), 1))], 1)
    coef, *_ = np.linalg.lstsq(X, v, rcond=None)
    return np.sqrt(np.mean((X @ coef - v) ** 2)) / v.std()


def test_shared_tanh_is_linear_in_disguise_and_shared_nonlinear_is_not():
    """shared-tanh (W1 = W2) gives v = C B^-1 k exactly; shared-nonlinear (W2 W^-1 not diagonal) gives a
    value that no affine map of the key reproduces, with the presets' true keys and other true values."""
    tanh, nonlin, lin = me.preset("shared-tanh"), me.preset("shared-nonlinear"), me.preset("shared-linear")
    assert _affine_misfit(tanh) < 1e-12 and _affine_misfit(lin) < 1e-12
    assert _affine_misfit(nonlin) > 0.05
    M = np.asarray(nonlin.W2) @ np.linalg.inv(np.asarray(nonlin.W1))
    assert np.abs(M - np.diag(np.diag(M))).max() > 0.1  # tanh does not commute with it
    k_n, v_n = nonlin.true_key_value()
    k_t, v_t = tanh.true_key_value()
    np.testing.assert_allclose(k_n, k_t, atol=1e-12)
    assert np.linalg.norm(np.asarray(v_n) - np.asarray(v_t), axis=1).min() > 0.1  # each true value moved
    assert "shared-nonlinear" in me.PRESET_NAMES and "shared-nonlinear" not in me.PRESETS
    for m in ("B", "C", "W1", "A", "H"):  # W2 is drawn after the others: the rest is shared-tanh's
        np.testing.assert_array_equal(np.asarray(getattr(nonlin, m)), np.asarray(getattr(tanh, m)))
