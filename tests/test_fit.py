import numpy as np
import jax
import jax.numpy as jnp
import pytest

import moe_estimation as me
import importlib

fitmod = importlib.import_module("moe_estimation.fit")  # the module, not the function of the same name
from moe_estimation.model import expert_summary


@pytest.mark.parametrize("name", me.PRESETS)
def test_analytic_jacobian_matches_autodiff(name):
    prob = me.preset(name)
    X, Y = me.simulate(jax.random.key(0), prob, 64)
    lse, mean = jax.vmap(expert_summary, in_axes=(None, 0))(prob, X)
    w = jnp.ones(64).at[:5].set(0.0)
    s = me.FitSettings(num_prompts=3)
    theta = fitmod._flatten(me.initial_params(jax.random.key(1), prob, s, jnp.asarray(50.0)))
    data = (X.T, Y.T, w, lse, mean.T)
    r1, J1 = fitmod._jacobian_autodiff(prob, s, data, theta)
    r2, J2 = fitmod._jacobian_analytic(prob, s, data, theta)
    np.testing.assert_allclose(r1, r2, atol=1e-13)
    np.testing.assert_allclose(J1, J2, atol=1e-12)


@pytest.mark.parametrize("name", ["non-shared", "shared-tanh"])
def test_blocked_linearisation_equals_whole(name, monkeypatch):
    """The row-blocked sums of F, g and H (large shapes on the CPU) agree with the whole-array ones, masked
    rows and the padding of a last partial block included; and the blocked path really is taken (8 blocks)."""
    monkeypatch.setattr(fitmod, "BLOCK_ROWS", 32)
    monkeypatch.setattr(fitmod, "BLOCK_FROM", 100)
    prob = me.preset(name)
    X, Y = me.simulate(jax.random.key(4), prob, 250)  # not a whole number of blocks: padded to 256
    lse, mean = jax.vmap(expert_summary, in_axes=(None, 0))(prob, X)
    w = jnp.ones(250).at[200:].set(0.0)
    s = me.FitSettings(num_prompts=3)
    theta = fitmod._flatten(me.initial_params(jax.random.key(5), prob, s, jnp.asarray(200.0)))
    data = (X.T, Y.T, w, lse, mean.T)
    assert fitmod._num_blocks(250) == (8 if jax.default_backend() == "cpu" else 1)
    whole = fitmod._linearize_whole(prob, s, data, theta)
    blocked = fitmod._linearize(prob, s, data, theta)
    for a, b in zip(whole, blocked):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # and a whole solve takes the same path either way (exactly specified: well posed)
    s2 = me.FitSettings(num_prompts=2, max_steps=50)
    theta2 = fitmod._flatten(me.initial_params(jax.random.key(6), prob, s2, jnp.asarray(200.0)))
    t_b, F_b, status_b, steps_b = fitmod._solve_one(prob, s2, data, theta2)
    monkeypatch.setattr(fitmod, "BLOCK_FROM", 10**9)
    t_w, F_w, status_w, steps_w = fitmod._solve_one(prob, s2, data, theta2)
    np.testing.assert_allclose(t_b, t_w, atol=1e-9)
    np.testing.assert_allclose(F_b, F_w, rtol=1e-10)
    assert int(steps_b) == int(steps_w) and int(status_b) == int(status_w)


@pytest.mark.parametrize("num_prompts", [2, 3])
def test_vmap_of_fit_equals_python_loop(num_prompts):
    prob = me.preset("shared-linear")
    keys = jax.random.split(jax.random.key(0), 3)
    data = [me.simulate(k, prob, 300) for k in keys]
    X = jnp.stack([d[0] for d in data])
    Y = jnp.stack([d[1] for d in data])
    fkeys = jax.random.split(jax.random.key(1), 3)
    batched = me.fit_batch(fkeys, prob, X, Y, num_prompts, restarts=2, max_steps=50)
    for i in range(3):
        one = me.fit(fkeys[i], prob, X[i], Y[i], num_prompts, restarts=2, max_steps=50)
        np.testing.assert_allclose(one.objective, batched.objective[i], rtol=1e-10)
        if num_prompts == 2:
            # a well-posed fit: the same answer to rounding, the same path
            np.testing.assert_allclose(one.params.atoms, batched.params.atoms[i], atol=1e-9)
            assert int(one.steps) == int(batched.steps[i]) and int(one.status) == int(batched.status[i])
        else:
            # over-specified: flat directions amplify the rounding of differently batched reductions
            np.testing.assert_allclose(one.params.atoms, batched.params.atoms[i], atol=1e-4)


def test_masked_rows_are_ignored():
    prob = me.preset("shared-linear")
    X, Y = me.simulate(jax.random.key(2), prob, 200)
    junk = jnp.full((56, 2), 5.0)
    Xp, Yp = jnp.concatenate([X, junk * 0.1]), jnp.concatenate([Y, junk])
    mask = jnp.concatenate([jnp.ones(200), jnp.zeros(56)])
    a = me.fit(jax.random.key(3), prob, X, Y, 2, restarts=1)
    b = me.fit_batch(jax.random.key(3)[None], prob, Xp[None], Yp[None], 2, mask=mask[None], restarts=1)
    np.testing.assert_allclose(a.params.atoms, b.params.atoms[0], atol=1e-9)
    np.testing.assert_allclose(a.objective, b.objective[0], rtol=1e-9)


def test_exact_fit_recovers_truth_at_large_n():
    prob = me.preset("shared-linear")
    X, Y = me.simulate(jax.random.key(4), prob, 50_000)
    res = me.fit(jax.random.key(5), prob, X, Y, 2, restarts=2)
    assert bool(res.converged)
    # singleton cells: D_2 = O(n^-1/2); with sigma = 0.1 the error is ~1e-2 here
    assert float(me.voronoi_loss(prob, res.params)) < 0.03
    assert float(me.key_value_loss(prob, res.params)) < 0.05
    assert float(res.objective) == pytest.approx(2 * prob.noise_var, rel=0.05)


def test_random_init_also_finds_exact_fit():
    prob = me.preset("shared-linear")
    X, Y = me.simulate(jax.random.key(6), prob, 5000)
    res = me.fit(jax.random.key(7), prob, X, Y, 2, restarts=8, init="random")
    assert float(me.voronoi_loss(prob, res.params)) < 0.1


def test_step_limit_is_reported():
    prob = me.preset("shared-linear")
    X, Y = me.simulate(jax.random.key(8), prob, 500)
    res = me.fit(jax.random.key(9), prob, X, Y, 3, max_steps=2, ftol=0.0, xtol=0.0, gtol=0.0, restarts=1)
    assert int(res.steps) == 2 and not bool(res.converged)
    assert me.STATUS[int(res.status)] == "max_steps"


def test_params_stay_in_box():
    prob = me.preset("non-shared")
    X, Y = me.simulate(jax.random.key(10), prob, 2000)
    res = me.fit(jax.random.key(11), prob, X, Y, 3, restarts=2)
    assert float(jnp.abs(res.params.atoms).max()) <= prob.atom_bound
    lo, hi = prob.bias_bounds
    assert float(res.params.biases.min()) >= lo and float(res.params.biases.max()) <= hi


@pytest.mark.slow
def test_rate_recovery_shared_linear_d2():
    """A convergence order as a unit test: the exactly specified shared-linear D_2 slope is near -1/2."""
    prob = me.preset("shared-linear")
    ns = np.array([250, 500, 1000, 2000, 4000, 8000])
    R, m = 12, 8192
    losses = np.zeros((len(ns), R))
    for i, n in enumerate(ns):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(123), int(n)), R)
        from moe_estimation.data import simulate_rows

        X, Y = jax.vmap(lambda k: simulate_rows(prob, k, m))(keys)
        mask = (jnp.arange(m) < n).astype(X.dtype)[None].repeat(R, 0)
        res = me.fit_batch(jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys), prob, X, Y, 2, mask=mask, restarts=2)
        losses[i] = np.asarray(jax.vmap(me.voronoi_loss, in_axes=(None, 0))(prob, res.params))
    rate = me.empirical_rate(ns, losses)
    assert -0.75 <= rate.slope <= -0.3, rate


@pytest.mark.parametrize(
    "kwargs, word",
    [
        (dict(num_prompts=1), "num_prompts: must be an integer >= L"),
        (dict(num_prompts=3, init="spectral"), "init"),
        (dict(num_prompts=3, restarts=0), "restarts"),
        (dict(num_prompts=3, max_steps=0), "max_steps"),
    ],
)
def test_fit_rejects_bad_settings(kwargs, word):
    prob = me.preset("shared-linear")
    X, Y = me.simulate(jax.random.key(0), prob, 10)
    num = kwargs.pop("num_prompts")
    with pytest.raises(ValueError, match=word):
        me.fit(jax.random.key(0), prob, X, Y, num, **kwargs)


def test_fit_rejects_bad_data():
    prob = me.preset("shared-linear")
    X, Y = me.simulate(jax.random.key(0), prob, 10)
    with pytest.raises(ValueError, match="Shape mismatch in X"):
        me.fit(jax.random.key(0), prob, X[:, :1], Y, 2)
    with pytest.raises(ValueError, match="Shape mismatch in Y"):
        me.fit(jax.random.key(0), prob, X, Y[:5], 2)
    with pytest.raises(ValueError, match="NaN"):
        me.fit(jax.random.key(0), prob, X, Y.at[3, 0].set(jnp.nan), 2)


def test_float32_fit_warns():
    prob = jax.tree.map(lambda a: a.astype(jnp.float32), me.preset("shared-linear"))
    X, Y = me.simulate(jax.random.key(0), me.preset("shared-linear"), 100)
    with pytest.warns(UserWarning, match="jax_enable_x64"):
        me.fit(jax.random.key(1), prob, X, Y, 2, restarts=1, max_steps=3)
