import numpy as np
import jax
import jax.numpy as jnp
import pytest

import moe_estimation as me
from moe_estimation.prefix.estimator import (
    flatten_params,
    linearization,
    prepare_data,
    residuals_and_jacobian,
    solve_dataset,
)


@pytest.mark.parametrize("name", me.PRESETS)
def test_analytic_jacobian_matches_autodiff(name):
    prob = me.preset(name)
    X, Y = me.simulate(jax.random.key(0), prob, 64)
    w = jnp.ones(64).at[:5].set(0.0)
    s = me.FitSettings(num_prompts=3)
    theta = flatten_params(me.initial_params(jax.random.key(1), prob, s, jnp.asarray(50.0)))
    data = prepare_data(prob, X, Y, w)
    r1, J1 = residuals_and_jacobian(prob, 3, data, theta, autodiff=True)
    r2, J2 = residuals_and_jacobian(prob, 3, data, theta)
    np.testing.assert_allclose(r1, r2, atol=1e-13)
    np.testing.assert_allclose(J1, J2, atol=1e-12)


@pytest.mark.study
@pytest.mark.parametrize("name", ["non-shared", "shared-tanh"])
def test_blocked_linearisation_equals_whole(name):
    """The row-blocked sums of F, g and H (``blocking="blocks"``) agree with the whole-array ones, masked
    rows and the padding of a last partial block included; and a whole solve takes the same path."""
    prob = me.preset(name)
    X, Y = me.simulate(jax.random.key(4), prob, 250)  # not a whole number of blocks: padded to 256
    w = jnp.ones(250).at[200:].set(0.0)
    data = prepare_data(prob, X, Y, w)
    s = me.FitSettings(num_prompts=3)
    theta = flatten_params(me.initial_params(jax.random.key(5), prob, s, jnp.asarray(200.0)))
    whole = linearization(prob, s._replace(blocking="whole"), data)(theta)
    blocked = linearization(prob, s._replace(blocking="blocks", block_rows=32), data)(theta)
    for a, b in zip(whole, blocked):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    # exactly specified (well posed): the same path either way
    s2 = me.FitSettings(num_prompts=2, max_steps=50)
    theta2 = flatten_params(me.initial_params(jax.random.key(6), prob, s2, jnp.asarray(200.0)))
    b = solve_dataset(prob, s2._replace(blocking="blocks", block_rows=32), data, theta2)
    a = solve_dataset(prob, s2._replace(blocking="whole"), data, theta2)
    np.testing.assert_allclose(b.value, a.value, atol=1e-9)
    np.testing.assert_allclose(b.objective, a.objective, rtol=1e-10)
    assert int(b.steps) == int(a.steps) and int(b.status) == int(a.status)


def test_blocking_setting_reaches_the_fit():
    """``blocking`` and ``block_rows`` are settings of the fit, not module constants: the same fit blocked and
    whole agrees, and a bad value is refused by name."""
    prob = me.preset("shared-linear")
    X, Y = me.simulate(jax.random.key(2), prob, 300)
    a = me.fit(jax.random.key(3), prob, X, Y, 2, restarts=1, blocking="whole")
    b = me.fit(jax.random.key(3), prob, X, Y, 2, restarts=1, blocking="blocks", block_rows=64)
    np.testing.assert_allclose(a.params.atoms, b.params.atoms, atol=1e-9)
    for bad, word in ((dict(blocking="rows"), "blocking"), (dict(block_rows=0), "block_rows"),
                      (dict(batching="pmap"), "batching")):
        with pytest.raises(ValueError, match=word):
            me.fit(jax.random.key(3), prob, X, Y, 2, **bad)


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
    assert me.Status(int(res.status)) is me.Status.MAX_STEPS and me.Status.MAX_STEPS.label == "max_steps"


def test_params_stay_in_box():
    prob = me.preset("non-shared")
    X, Y = me.simulate(jax.random.key(10), prob, 2000)
    res = me.fit(jax.random.key(11), prob, X, Y, 3, restarts=2)
    assert float(jnp.abs(res.params.atoms).max()) <= prob.atom_bound
    lo, hi = prob.bias_bounds
    assert float(res.params.biases.min()) >= lo and float(res.params.biases.max()) <= hi


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
    prob = me.preset("shared-linear", dtype="float32")
    assert prob.dtype == jnp.float32 and prob.replace(noise_var=0.02).dtype == jnp.float32
    X, Y = me.simulate(jax.random.key(0), me.preset("shared-linear"), 100)
    with pytest.warns(UserWarning, match="jax_enable_x64"):
        me.fit(jax.random.key(1), prob, X, Y, 2, restarts=1, max_steps=3)


@pytest.mark.study
def test_converged_fits_on_the_box_are_constrained_minima():
    """A fit that says it converged while a parameter sits on the box is near the constrained minimum:
    running the solver on from it for 400 steps (only the gradient test can stop it) lowers the objective by
    less than 1e-4 relative, far below its statistical resolution P / (2n) = 3.75e-3. Not to rounding: the
    over-specified non-shared objective has valleys along which it keeps falling by 1e-7..1e-5 (README, *Does
    the verdict depend on the solver?*); the step defect at the box itself is tested in test_solver.py."""
    from moe_estimation.prefix.data import simulate_rows

    prob = me.preset("non-shared")
    R, n = 8, 2000
    keys = jax.random.split(jax.random.key(20), R)
    X, Y = jax.vmap(lambda k: simulate_rows(prob, k, n))(keys)
    res = me.fit_batch(jax.random.split(jax.random.key(21), R), prob, X, Y, 3, init="random", init_scale=1.0,
                       restarts=2)
    assert int(np.sum(res.at_bound & res.converged)) >= 2
    s = me.FitSettings(num_prompts=3, max_steps=400, ftol=0.0, xtol=0.0, gtol=1e-10)
    for i in np.flatnonzero(np.asarray(res.at_bound & res.converged)):
        data = prepare_data(prob, X[i], Y[i], jnp.ones(n))
        on = solve_dataset(prob, s, data, flatten_params(jax.tree.map(lambda a: a[i], res.params)))
        before = float(res.objective[i]) * n / 2
        assert float(on.objective) >= before * (1 - 1e-4), (i, before, float(on.objective))
