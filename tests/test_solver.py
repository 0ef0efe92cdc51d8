"""The public solver core (moe_estimation.solver) on problems that are not the MoE model, its Status, and the
package layout: no module shadowed, no private name used across modules or by the tests."""

import ast
import importlib
import pathlib
import pkgutil
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moe_estimation as me
from moe_estimation.solver import (
    Normal,
    SolverSettings,
    Status,
    STATUS_LABELS,
    batch_map,
    is_converged,
    normal_equations,
    resolve_blocking,
    solve,
)

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _exp_problem(n=200, seed=0):
    """y = a exp(-b t) + c + noise: three parameters, n residuals; rows on the last axis."""
    t = jnp.linspace(0.0, 4.0, n)
    truth = jnp.array([2.0, 1.3, 0.5])
    y = truth[0] * jnp.exp(-truth[1] * t) + truth[2] + 0.01 * jax.random.normal(jax.random.key(seed), (n,))
    w = jnp.ones(n)

    def residual_jacobian(data, theta):
        t, y, w = data
        e = jnp.exp(-theta[1] * t)
        r = (theta[0] * e + theta[2] - y) * w
        J = jnp.stack([e * w, -theta[0] * t * e * w, w])
        return r, J

    return (t, y, w), residual_jacobian


def test_solve_matches_scipy_on_a_problem_that_is_not_the_moe_model():
    from scipy.optimize import least_squares

    data, rj = _exp_problem()
    lower, upper = jnp.full(3, -10.0), jnp.full(3, 10.0)
    sol = jax.jit(lambda t0: solve(normal_equations(rj, data), t0, lower, upper, SolverSettings()))(jnp.array([1.0, 0.5, 0.0]))
    ref = least_squares(lambda th: np.asarray(rj(data, jnp.asarray(th))[0]), np.array([1.0, 0.5, 0.0]), method="lm",
                        ftol=1e-12, xtol=1e-12, gtol=1e-12)
    assert Status(int(sol.status)).converged and bool(is_converged(sol.status))
    np.testing.assert_allclose(sol.value, ref.x, rtol=1e-5)
    np.testing.assert_allclose(sol.objective, ref.cost, rtol=1e-8)


def test_solve_respects_the_box_and_blocks_agree():
    data, rj = _exp_problem(n=203)
    lower, upper = jnp.array([-10.0, -10.0, -10.0]), jnp.array([10.0, 10.0, 0.2])  # c = 0.5 lies outside
    t0 = jnp.array([1.0, 0.5, 0.0])
    whole = solve(normal_equations(rj, data), t0, lower, upper)
    blocked = solve(normal_equations(rj, data, block_rows=16), t0, lower, upper)  # 13 blocks, the last padded
    assert float(whole.value[2]) == pytest.approx(0.2)  # on its bound, and gtol still declares convergence
    assert Status(int(whole.status)).converged and int(whole.steps) < 40
    # the clip-after-solve step of version 0.1 crawls along the bound: 400 steps and still 3.5e-4 above
    clip = solve(normal_equations(rj, data), t0, lower, upper, SolverSettings(active_set=False))
    assert Status(int(clip.status)) is Status.MAX_STEPS
    assert float(clip.objective) > float(whole.objective) * (1 + 1e-4)
    np.testing.assert_allclose(blocked.value, whole.value, atol=1e-10)
    F, g, H = normal_equations(rj, data, block_rows=16)(t0)
    F2, g2, H2 = normal_equations(rj, data)(t0)
    np.testing.assert_allclose([F], [F2], rtol=1e-12)
    np.testing.assert_allclose(H, H2, rtol=1e-12)


def test_step_limit_and_batching():
    data, rj = _exp_problem()
    lower, upper = jnp.full(3, -10.0), jnp.full(3, 10.0)
    starts = jnp.array([[1.0, 0.5, 0.0], [3.0, 2.0, 1.0], [0.5, 0.1, -1.0]])
    settings = SolverSettings(max_steps=2, ftol=0.0, xtol=0.0, gtol=0.0)
    one = lambda t0: solve(normal_equations(rj, data), t0, lower, upper, settings)
    a, b = batch_map(one, starts, "vmap"), batch_map(one, starts, "map")
    assert [Status(int(s)) for s in a.status] == [Status.MAX_STEPS] * 3 and list(map(int, a.steps)) == [2, 2, 2]
    np.testing.assert_allclose(a.value, b.value, rtol=1e-12)
    assert not np.any(np.asarray(is_converged(a.status)))


def test_status_enum():
    assert STATUS_LABELS == ("running", "ftol", "xtol", "gtol", "max_steps", "stalled", "nonfinite")
    assert [s.converged for s in Status] == [False, True, True, True, False, False, False]
    assert Status.from_label("max_steps") is Status.MAX_STEPS
    with pytest.raises(ValueError, match="status"):
        Status.from_label("done")
    assert isinstance(Normal(1.0, 2.0, 3.0).F, float)


def test_blocking_modes():
    assert resolve_blocking("blocks", 10) and not resolve_blocking("whole", 10**6)
    assert resolve_blocking("auto", 40000) == (jax.default_backend() == "cpu")
    assert not resolve_blocking("auto", 32768)
    with pytest.raises(ValueError, match="blocking"):
        resolve_blocking("rows", 10)


def test_no_module_is_shadowed():
    """Every submodule of the package is reachable under its own name: no function or class of the package
    namespace carries a module's name (``moe_estimation.fit`` is the function; the estimator is
    ``moe_estimation.prefix.estimator``)."""
    for pkg in (me, importlib.import_module("moe_estimation.transformer")):
        for info in pkgutil.iter_modules(pkg.__path__):
            mod = importlib.import_module(f"{pkg.__name__}.{info.name}")
            assert getattr(pkg, info.name, mod) is mod, f"{pkg.__name__}.{info.name} is not the module"


def test_no_private_name_crosses_a_module():
    """The library imports no underscored name from another of its modules (``_checks`` is a private module
    of helpers, imported whole by name), and the tests use none of the library's."""
    for path in sorted((ROOT / "moe_estimation").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level >= 1:
                bad = [a.name for a in node.names if a.name.startswith("_") and a.name != "__version__"]
                assert not bad, f"{path.relative_to(ROOT)} imports private {bad} from {node.module}"
    pattern = re.compile(r"\b(?:me|moe_estimation|study_mod|[a-z]+mod)\.(?:[a-z]\w*\.)*_[a-z]\w*")
    for path in sorted((ROOT / "tests").glob("*.py")):
        text = path.read_text()
        hits = pattern.findall(text)
        assert not hits, f"{path.name} uses private names {hits}"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("moe_estimation"):
                bad = [a.name for a in node.names if a.name.startswith("_")]
                assert not bad, f"{path.name} imports private {bad} from {node.module}"


def test_an_objective_that_is_negative_is_minimised_not_taken_for_an_exact_fit():
    """A negative log-likelihood can be negative (a density above one). The solver minimises F = (theta - 1)^2 - 5
    (supplied with its exact gradient and Hessian) from theta = 4 to 1, rather than stopping at its start as if
    F <= 0 were a least-squares fit with zero residual; and a positive objective stops as before."""
    def linearize(theta):
        F = jnp.sum((theta - 1.0) ** 2) - 5.0
        return Normal(F, 2 * (theta - 1.0), 2 * jnp.eye(theta.shape[0]))

    out = solve(linearize, jnp.asarray([4.0]), jnp.asarray([-10.0]), jnp.asarray([10.0]), SolverSettings())
    assert int(out.steps) > 0 and is_converged(out.status)
    assert float(out.value[0]) == pytest.approx(1.0, abs=1e-6) and float(out.objective) == pytest.approx(-5.0)


def test_a_likelihood_fit_with_a_negative_objective_reaches_em_s_maximum():
    """The Gaussian-gated model's joint negative log-likelihood is negative on its data: the direct fit moves from
    its start and reaches at least the likelihood EM reaches from the same start."""
    import moe_estimation.lab as lab
    from moe_estimation.lab.study import parse_lab_config
    from moe_estimation.lab.suite import lab_preset, split_suite

    study = parse_lab_config(dict((n, s) for n, _, s in split_suite(lab_preset("gmoe-1")))["em-k4"], "gmoe-1")
    X, Y = lab.simulate(jax.random.key(3), study.model, study.truth, 1500)
    em = lab.em(jax.random.key(0), study.model, X, Y, 4, truth=study.truth, init="gmoe-source", restarts=1,
                max_steps=2000, tol=1e-10)
    direct = lab.fit(jax.random.key(0), study.model, X, Y, 4, truth=study.truth, init="gmoe-source", restarts=1)
    assert float(direct.objective) < 0 and int(direct.steps) > 0 and bool(direct.converged)
    assert float(direct.objective) <= float(em.objective) + 1e-6
