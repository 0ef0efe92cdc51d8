import numpy as np
import jax
import jax.numpy as jnp
import pytest

import moe_estimation as me
from moe_estimation.prefix.model import expert_summary, regression_from_summary


def direct_formula(prob, params, x):
    """A plain transcription of f_G (docs/maths.md, *The regression model*) with raw exp, in numpy."""
    A, a, H = (np.asarray(t) for t in (prob.A, prob.a, prob.H))
    keys, values = (np.asarray(t) for t in me.key_value(prob, params.atoms))
    b = np.asarray(params.biases)
    num = sum(np.exp(x @ A[j] @ x + a[j]) * (H[j] @ x) for j in range(len(a)))
    num = num + sum(np.exp(keys[i] @ x + b[i]) * values[i] for i in range(len(b)))
    den = sum(np.exp(x @ A[j] @ x + a[j]) for j in range(len(a))) + sum(np.exp(keys[i] @ x + b[i]) for i in range(len(b)))
    return num / den


@pytest.mark.parametrize("name", me.PRESETS)
def test_against_direct_formula(name):
    prob = me.preset(name)
    X, _ = me.simulate(jax.random.key(0), prob, 20)
    params = me.true_params(prob)
    got = np.asarray(me.predict(prob, params, X))
    want = np.stack([direct_formula(prob, params, np.asarray(x)) for x in X])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    lse, mean = jax.vmap(expert_summary, in_axes=(None, 0))(prob, X)
    summ = jax.vmap(regression_from_summary, in_axes=(None, None, 0, 0, 0))(prob, params, X, lse, mean)
    np.testing.assert_allclose(np.asarray(summ), want, rtol=1e-12, atol=1e-12)


def test_invariant_to_shifting_every_gating_score():
    prob = me.preset("shared-linear")
    X, _ = me.simulate(jax.random.key(1), prob, 10)
    params = me.true_params(prob)
    c = 7.5
    shifted_prob = prob.replace(a=np.asarray(prob.a) + c, bias_bounds=(-3.0, 12.0))
    shifted = me.Params(params.atoms, params.biases + c)
    np.testing.assert_allclose(me.predict(shifted_prob, shifted, X), me.predict(prob, params, X), rtol=1e-12)


def test_finite_for_extreme_parameters():
    prob = me.preset("non-shared")
    X, _ = me.simulate(jax.random.key(2), prob, 10)
    for scale in (1e3, 1e6):
        params = me.Params(jnp.full((3, prob.atom_dim), scale), jnp.array([scale, -scale, 0.0]))
        out = me.predict(prob, params, X)
        assert bool(jnp.all(jnp.isfinite(out)))


def test_vmap_equals_loop():
    prob = me.preset("shared-tanh")
    X, _ = me.simulate(jax.random.key(3), prob, 8)
    params = me.true_params(prob)
    loop = np.stack([np.asarray(me.regression_function(prob, params, x)) for x in X])
    np.testing.assert_allclose(me.predict(prob, params, X), loop, rtol=1e-13)


def test_simulate_rows_do_not_depend_on_padding():
    from moe_estimation.prefix.data import simulate_rows

    prob = me.preset("shared-linear")
    X1, Y1 = me.simulate(jax.random.key(4), prob, 50)
    X2, Y2 = simulate_rows(prob, jax.random.key(4), 128)
    np.testing.assert_array_equal(X1, X2[:50])
    np.testing.assert_allclose(Y1, Y2[:50], rtol=1e-14, atol=1e-15)  # same draws; last-ulp arithmetic


def test_simulate_noise_level():
    prob = me.preset("shared-linear", noise_var=0.04)
    X, Y = me.simulate(jax.random.key(5), prob, 20000)
    resid = Y - me.predict(prob, me.true_params(prob), X)
    assert float(jnp.var(resid)) == pytest.approx(0.04, rel=0.05)
    assert float(jnp.abs(X).max()) <= 1.0


@pytest.mark.parametrize("n", [0, -3, 2.5, "10"])
def test_simulate_rejects_bad_n(n):
    with pytest.raises(ValueError, match="n: must be an integer >= 1"):
        me.simulate(jax.random.key(0), me.preset("shared-linear"), n)
