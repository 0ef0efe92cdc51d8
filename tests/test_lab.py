"""The lab: parts, one estimator for every assembly, losses as data; the prefix model as one assembly."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import moe_estimation as me
import moe_estimation.lab as lab
from moe_estimation.prefix.estimator import linearization as prefix_linearization
from moe_estimation.prefix.estimator import prepare_data
from moe_estimation.lab.fit import linearization
from moe_estimation.solver import SolverSettings, solve
from moe_estimation.prefix.voronoi import IDENTIFIED_NAMES


def _parse(tmp_path, text):
    """A lab configuration from its text, parsed as `moe-estimation study --config` parses it."""
    from moe_estimation.experiments.config import read_toml
    from moe_estimation.lab.study import parse_lab_config

    conf = tmp_path / "lab.toml"
    conf.write_text(text)
    return parse_lab_config(read_toml(conf), str(conf))


def _prefix_twin(seed=0):
    """A non-shared prefix problem with B = C = I and one frozen expert of score 0 and output 0, and the lab
    assembly that is the same model: a softmax gate with an extra reference score, constant experts."""
    rng = np.random.default_rng(seed)
    atoms = rng.uniform(-1, 1, (2, 4))
    prob = me.make_problem(structure="non-shared", A=np.zeros((1, 2, 2)), a=np.zeros(1), H=np.zeros((1, 2, 2)),
                           B=np.eye(2), C=np.eye(2), true_atoms=atoms, true_biases=[0.0, 0.3])
    model = lab.Assembly(gate=lab.SoftmaxGate(reference="extra"), expert=lab.ConstantExpert(), input=lab.InputLaw(d=2),
                         d_out=2)
    return prob, model


def _as_mixture(params):
    atoms, biases = np.asarray(params.atoms), np.asarray(params.biases)
    return lab.Mixture(gate=np.concatenate([atoms[:, :2], biases[:, None]], axis=1), expert=atoms[:, 2:],
                       log_var=np.zeros(len(biases)))


def test_the_prefix_model_is_an_assembly_to_machine_precision():
    """f, D_{1,1} (the non-shared own loss) and D_2 on (k, v) (the yardstick) of the prefix model equal the lab's
    on the same measure, and so do the least-squares objective, gradient and Gauss-Newton matrix (the closed-form
    Jacobian against the lab's autodiff one)."""
    prob, model = _prefix_twin()
    rng = np.random.default_rng(1)
    fitted = me.Params(jnp.asarray(rng.uniform(-1, 1, (3, 4))), jnp.asarray(rng.uniform(-1, 1, 3)))
    X = jnp.asarray(rng.uniform(-1, 1, (50, 2)))
    truth, mix = _as_mixture(me.true_params(prob)), _as_mixture(fitted)
    f_lab = jax.vmap(lab.mean, in_axes=(None, None, 0))(model, model.check(mix, "fitted"), X)
    np.testing.assert_allclose(f_lab, me.predict(prob, fitted, X), rtol=0, atol=1e-13)
    d11 = lab.VoronoiLoss(kind="d1r")(model, model.check(mix, "fitted"), model.check(truth))
    d2 = lab.VoronoiLoss(kind="d2")(model, model.check(mix, "fitted"), model.check(truth))
    assert float(d11) == pytest.approx(float(me.voronoi_loss(prob, fitted)), rel=1e-12)
    assert float(d2) == pytest.approx(float(me.key_value_loss(prob, fitted)), rel=1e-12)
    Y = me.predict(prob, me.true_params(prob), X) + 0.1 * jnp.asarray(rng.normal(size=(50, 2)))
    theta = jnp.concatenate([fitted.atoms.ravel(), fitted.biases])
    ours = prefix_linearization(prob, me.FitSettings(num_prompts=3, blocking="whole"), prepare_data(prob, X, Y, jnp.ones(50)))(theta)
    order = np.array([0, 1, 12, 4, 5, 13, 8, 9, 14, 2, 3, 6, 7, 10, 11])  # lab's (w, b) a component, then the values
    theirs = linearization(model, 3, X, Y, jnp.ones(50))(theta[order])
    assert float(theirs.F) == pytest.approx(float(ours.F), rel=1e-12)
    np.testing.assert_allclose(theirs.g, ours.g[order], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(theirs.H, ours.H[np.ix_(order, order)], rtol=1e-10, atol=1e-12)


@pytest.mark.statistical
def test_gaussian_mixture_of_experts_by_maximum_likelihood_converges():
    """A softmax-gated Gaussian MoE with linear experts (one pinned component), exactly specified: the maximum
    likelihood fit reaches a likelihood at least the truth's, and its Voronoi loss (gate, expert, variance)
    falls between n = 1000 and 16000, by more than a factor 2 (n^-1/2 gives 4)."""
    model = lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.LinearExpert(), input=lab.InputLaw(d=1), likelihood="gaussian")
    truth = model.check(lab.Mixture(gate=[[2.0, 0.5], [0.0, 0.0]], expert=[[1.0, 0.5], [-1.0, 0.0]],
                                    log_var=[np.log(0.1), np.log(0.2)]))
    loss = lab.VoronoiLoss(blocks=("gate", "expert", "variance"))
    out = []
    for n in (1000, 16000):
        X, Y = lab.simulate(jax.random.key(2), model, truth, n)
        fit = lab.fit(jax.random.key(1), model, X, Y, num_components=2, init_scale=0.3)
        true_nll = -float(jnp.mean(jax.vmap(lab.log_density, in_axes=(None, None, 0, 0))(model, truth, X, Y)))
        assert bool(fit.converged) and float(fit.objective) <= true_nll + 1e-9
        out.append(float(loss(model, fit.params, truth)))
    assert out[1] < out[0] / 2, out


@pytest.mark.statistical
def test_sigmoid_gate_least_squares_fits_the_regression_function():
    """Sigmoid gates and linear experts by least squares: the fit reaches the noise level (mean squared residual
    within 5% of the noise variance) and its regression function is the truth's to 1e-3 in mean square on a grid
    (what least squares identifies; on this input range the parameters themselves are only weakly identified: a
    fit of lower objective than the truth's can sit a Voronoi loss of order one away); over-specified, the
    objective is no worse."""
    model = lab.Assembly(gate=lab.SigmoidGate(), expert=lab.LinearExpert(), input=lab.InputLaw(d=1), noise_var=0.01)
    truth = model.check(lab.Mixture(gate=[[3.0, 1.0], [-3.0, 0.0]], expert=[[1.0, 0.0], [-1.0, 0.5]], log_var=[0.0, 0.0]))
    X, Y = lab.simulate(jax.random.key(0), model, truth, 8000)
    exact = lab.fit(jax.random.key(1), model, X, Y, num_components=2, init="near-truth", init_scale=0.2, truth=truth)
    assert float(exact.objective) == pytest.approx(0.01, rel=0.05)
    grid = jnp.linspace(-1, 1, 201)[:, None]
    f = jax.vmap(lab.mean, in_axes=(None, None, 0))
    assert float(jnp.mean((f(model, exact.params, grid) - f(model, truth, grid)) ** 2)) < 1e-3
    over = lab.fit(jax.random.key(1), model, X, Y, num_components=3, init="near-truth", init_scale=0.2, truth=truth)
    assert float(over.objective) <= float(exact.objective) * (1 + 1e-6)


@dataclasses.dataclass(frozen=True)
class TanhGate(lab.Gate):
    """A gate defined here, outside the package: pi_k(x) = (1 + tanh(w_k^T x + b_k)) / 2."""

    name = "tanh"

    def size(self, d):
        return d + 1

    def weights(self, theta, x):
        return 0.5 * (1 + jnp.tanh(theta[:, :-1] @ x + theta[:, -1]))

    def atom_weight(self, theta):
        return 0.5 * (1 + jnp.tanh(theta[..., -1]))


def test_a_gate_defined_outside_the_package_simulates_fits_and_scores():
    model = lab.Assembly(gate=TanhGate(), expert=lab.ConstantExpert(), input=lab.InputLaw(d=1))
    truth = model.check(lab.Mixture(gate=[[2.0, 0.0], [-2.0, 0.0]], expert=[[1.0], [-1.0]], log_var=[0.0, 0.0]))
    X, Y = lab.simulate(jax.random.key(0), model, truth, 500)
    fit = lab.fit(jax.random.key(1), model, X, Y, num_components=2, restarts=2, max_steps=50)
    assert np.isfinite(float(fit.objective))
    assert float(lab.VoronoiLoss()(model, truth, truth)) == 0.0


def test_softmax_canonical_parameters_do_not_depend_on_the_shift_or_the_pinned_component():
    gate = lab.SoftmaxGate()
    theta = jnp.array([[2.0, 0.5], [0.0, 0.0], [-1.0, 1.0]])
    shifted = theta + jnp.array([0.7, -0.4])
    swapped = theta[jnp.array([2, 0, 1])] - theta[2]  # component 3 pinned at 0 instead
    for other in (shifted, swapped):
        a, b = gate.canonical(theta), gate.canonical(other)
        a, b = a[jnp.argsort(a[:, 0])], b[jnp.argsort(b[:, 0])]
        np.testing.assert_allclose(a, b, atol=1e-12)
    extra = lab.SoftmaxGate(reference="extra")
    np.testing.assert_array_equal(extra.canonical(theta), theta)


@pytest.mark.parametrize("make, word", [
    (lambda: lab.Assembly(gate=lab.SigmoidGate(), expert=lab.LinearExpert(), input=lab.InputLaw(), likelihood="gaussian"),
     "gate: the Gaussian likelihood is a mixture density"),
    (lambda: lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.LinearExpert(), input=lab.InputLaw(), likelihood="poisson"),
     "likelihood: expected one of"),
    (lambda: lab.ActivationExpert(activation="swish"), "activation: expected one of"),
    (lambda: lab.SoftmaxGate(reference="both"), "reference: expected one of"),
    (lambda: lab.InputLaw(law="uniform", low=1.0, high=-1.0), "input.low, input.high"),
    (lambda: lab.InputLaw(d=0), "input.d"),
    (lambda: lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.LinearExpert(), input=lab.InputLaw(), d_out=0), "d_out"),
    (lambda: lab.VoronoiLoss(blocks=("gate", "gate")), "blocks"),
    (lambda: lab.VoronoiLoss(blocks=("gate",), kind="d1r"), "d1r loss cuts the atom"),
    (lambda: lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.LinearExpert(), input=lab.InputLaw()).check(
        lab.Mixture(gate=[[1.0, 0.0, 0.0]], expert=[[1.0, 0.0]], log_var=[0.0])), "Shape mismatch in truth.gate"),
    (lambda: lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.LinearExpert(), input=lab.InputLaw()).check(
        lab.Mixture(gate=[[1.0, 0.5]], expert=[[1.0, 0.0]], log_var=[0.0])), "inside the box"),  # pinned: (0, 0)
    (lambda: lab.fit(jax.random.key(0), lab.Assembly(gate=lab.SigmoidGate(), expert=lab.LinearExpert(), input=lab.InputLaw()),
                     np.zeros((20, 1)), np.zeros((20, 1)), 2, init="near-truth"), "truth: near-truth starts need"),
    (lambda: lab.fit(jax.random.key(0), lab.Assembly(gate=lab.SigmoidGate(), expert=lab.LinearExpert(), input=lab.InputLaw()),
                     np.zeros((2, 1)), np.zeros((2, 1)), 2), "fewer residuals than the 8 parameters"),
    (lambda: lab.fit(jax.random.key(0), lab.Assembly(gate=lab.SigmoidGate(), expert=lab.LinearExpert(), input=lab.InputLaw()),
                     np.zeros((20, 2)), np.zeros((20, 1)), 2), "Shape mismatch in X, Y"),
])
def test_lab_refuses_bad_parts_and_arguments(make, word):
    with pytest.raises(ValueError, match=word):
        make()


def _gaussian_moe(n=2000):
    model = lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.LinearExpert(), input=lab.InputLaw(d=1), likelihood="gaussian")
    truth = model.check(lab.Mixture(gate=[[2.0, 0.5], [0.0, 0.0]], expert=[[1.0, 0.5], [-1.0, 0.0]],
                                    log_var=[np.log(0.1), np.log(0.2)]))
    return model, truth, *lab.simulate(jax.random.key(2), model, truth, n)


@pytest.mark.study  # five compilations (the iteration count is static)
def test_em_never_lowers_the_likelihood():
    """Each EM iteration raises the log-likelihood (the mean NLL after 1, 2, ... iterations from one start)."""
    model, truth, X, Y = _gaussian_moe(500)
    nll = [float(lab.em(jax.random.key(1), model, X, Y, 2, restarts=1, init_scale=0.3, max_steps=k, tol=0.0).objective)
           for k in (1, 2, 4, 8, 16)]
    assert all(b <= a + 1e-12 for a, b in zip(nll, nll[1:])), nll


@pytest.mark.statistical
def test_em_and_the_direct_fit_reach_one_maximum_exactly_specified():
    """From the same starts on the same data, EM and the direct maximum-likelihood fit end at one likelihood
    (to 1e-6 relative) and near one measure."""
    model, truth, X, Y = _gaussian_moe(4000)
    direct = lab.fit(jax.random.key(1), model, X, Y, 2, init_scale=0.3)
    em = lab.em(jax.random.key(1), model, X, Y, 2, init_scale=0.3, max_steps=500, tol=1e-10)
    assert bool(em.converged) and float(em.objective) == pytest.approx(float(direct.objective), rel=1e-6)
    loss = lab.VoronoiLoss(blocks=("gate", "expert", "variance"))
    assert float(loss(model, em.params, direct.params)) < 0.01


def test_em_refuses_models_it_is_not_for():
    model = lab.Assembly(gate=lab.SigmoidGate(), expert=lab.LinearExpert(), input=lab.InputLaw(d=1))
    with pytest.raises(ValueError, match="model: EM here is for the Gaussian likelihood"):
        lab.em(jax.random.key(0), model, np.zeros((20, 1)), np.zeros((20, 1)), 2)
    gm, *_ = _gaussian_moe(10)
    with pytest.raises(ValueError, match="gate_steps"):
        lab.em(jax.random.key(0), gm, np.zeros((20, 1)), np.zeros((20, 1)), 2, gate_steps=0)


LAB_TOML = """seed = 1
[model]
gate = "sigmoid"
expert = "linear"
input = {{ law = "uniform", low = -1.0, high = 1.0, d = 1 }}
[truth]
gate = [[3.0, 1.0], [-3.0, 0.0]]
expert = [[1.0, 0.0], [-1.0, 0.5]]
[grid]
ns = [100, 200]
replicates = 2
[fit]
restarts = 1
max_steps = {steps}
[rates]
num_bootstrap = 100
"""


@pytest.mark.study
def test_a_lab_study_runs_from_a_configuration_resumes_and_draws(tmp_path, capsys):
    """A configuration with [model] is a lab study: `study --config` fits it cell by cell into fits.csv, rates it,
    resumes it (nothing refitted, the same tables), refuses it under another design, and `plot` draws it."""
    import pandas as pd

    from moe_estimation.cli import main

    conf = tmp_path / "lab.toml"
    conf.write_text(LAB_TOML.format(steps=20))
    out = tmp_path / "lab"
    assert main(["study", "--config", str(conf), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    fits = pd.read_csv(out / "fits.csv")
    assert len(fits) == 2 * 2 * 2 and set(fits["num_components"]) == {2, 3}
    rates = pd.read_csv(out / "rates.csv")
    assert set(rates["loss"]) == {"voronoi"} and set(rates["specification"]) == {"exact", "over"}
    assert main(["study", "--config", str(conf), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "fits.csv"), fits)
    capsys.readouterr()
    conf.write_text(LAB_TOML.format(steps=30))
    assert main(["study", "--config", str(conf), "--out", str(out), "--no-progress"]) == 2
    assert "fit.max_steps: 20 -> 30" in capsys.readouterr().err
    assert main(["plot", "--results", str(out), "--out", str(tmp_path / "fig")]) == 0
    assert (tmp_path / "fig" / "lab_voronoi.png").is_file()
    capsys.readouterr()
    assert main(["summarize", str(out)]) == 0
    text = capsys.readouterr().out
    assert "(lab)" in text and "| exact | 2 | voronoi |" in text and "| over | 3 | voronoi |" in text
    # a loss declared after the fits is scored on them from their stored parameters, nothing refitted
    conf.write_text(LAB_TOML.format(steps=20).replace("[grid]", "[loss.voronoi]\n[loss.slopes]\nkind = \"terms\"\n"
                                                      "terms = [{ blocks = [\"gate\"], multi = \"r\" }]\n[grid]"))
    assert main(["study", "--config", str(conf), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    assert "scored by ['slopes', 'voronoi'] from their stored parameters" in capsys.readouterr().out
    again = pd.read_csv(out / "fits.csv")
    pd.testing.assert_frame_equal(again.drop(columns="loss_slopes"), fits)
    assert np.all(np.isfinite(again["loss_slopes"])) and set(pd.read_csv(out / "rates.csv")["loss"]) == {"voronoi", "slopes"}
    # a damaged table is refused before it is rescored, with nothing changed; --repair rescoring keeps the sound cells
    lines = (out / "fits.csv").read_text().splitlines(keepends=True)
    damaged = "".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2]  # the last row cut mid-way
    (out / "fits.csv").write_text(damaged)
    conf.write_text(LAB_TOML.format(steps=20))
    assert main(["study", "--config", str(conf), "--out", str(out), "--no-progress", "--workers", "1"]) == 2
    assert "fits.csv is damaged" in capsys.readouterr().err and (out / "fits.csv").read_text() == damaged
    assert main(["study", "--config", str(conf), "--out", str(out), "--no-progress", "--workers", "1", "--repair"]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(out / "fits.csv")[list(fits.columns)].drop(columns="seconds"),
                                  fits.drop(columns="seconds"))


def test_input_laws_grid_and_mixture():
    grid = lab.Assembly(gate=lab.SigmoidGate(), expert=lab.ConstantExpert(),
                        input=lab.InputLaw(law="grid", d=2, low=-1.0, high=1.0, points=3))
    truth = grid.check(lab.Mixture(gate=[[1.0, 0.0, 0.0]], expert=[[0.5]], log_var=[0.0]))
    X, _ = lab.simulate(jax.random.key(0), grid, truth, 10)
    np.testing.assert_allclose(X[:4], [[-1, -1], [0, -1], [1, -1], [-1, 0]])
    np.testing.assert_allclose(X[9], X[0])  # the 3 x 3 grid again
    mix = lab.InputLaw(law="mixture", d=1, means=[[-2.0], [2.0]], weights=[0.25, 0.75], scale=0.1)
    model = lab.Assembly(gate=lab.SigmoidGate(), expert=lab.ConstantExpert(), input=mix)
    X, _ = lab.simulate(jax.random.key(0), model, model.check(lab.Mixture(gate=[[1.0, 0.0]], expert=[[0.5]],
                                                                          log_var=[0.0])), 4000)
    assert float(jnp.mean(X[:, 0] > 0)) == pytest.approx(0.75, abs=0.03)
    assert float(jnp.max(jnp.abs(jnp.abs(X) - 2.0))) <= 0.3 + 1e-12  # within 3 sd of a mean
    for bad, word in ((dict(law="grid", points=1), "input.points"), (dict(law="mixture", means=[[0.0]], weights=[0.5]),
                      "input.weights"), (dict(law="mixture", d=2, means=[[0.0]], weights=[1.0]), "input.means"),
                      (dict(law="triangle"), "input.law")):
        with pytest.raises(ValueError, match=word):
            lab.InputLaw(**bad)


def test_the_gaussian_gate_is_the_posterior_of_its_input_mixture():
    """pi_k(x) = exp(b_k) N(x; c_k, s_k) / sum_j (...): by hand at one x, summing to one, unchanged by a common
    shift of the biases (and so is its canonical form, whose Voronoi weights are the mixture weights)."""
    gate = lab.GaussianGate()
    theta = jnp.array([[0.5, np.log(0.04), 0.2], [-1.0, np.log(0.25), -0.3], [1.0, np.log(1.0), 0.0]])
    x = jnp.array([0.3])
    dens = [np.exp(b) * np.exp(-0.5 * (0.3 - c) ** 2 / np.exp(ls)) / np.sqrt(2 * np.pi * np.exp(ls))
            for c, ls, b in np.asarray(theta)]
    np.testing.assert_allclose(gate.weights(theta, x), np.array(dens) / sum(dens), rtol=1e-12)
    shifted = theta.at[:, -1].add(1.7)
    np.testing.assert_allclose(gate.weights(shifted, x), gate.weights(theta, x), rtol=1e-12)
    np.testing.assert_allclose(gate.canonical(shifted), gate.canonical(theta), atol=1e-12)
    w = gate.atom_weight(gate.canonical(theta))
    assert float(jnp.sum(w)) == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(gate.atom(theta)[:, 1], [0.04, 0.25, 1.0], rtol=1e-12)  # variances, not their logs
    lo, hi = gate.box(1, 10.0, 3)
    assert lo[0, 1] == pytest.approx(np.log(1e-4)) and hi[0, 1] == pytest.approx(np.log(1e2)) and hi[0, 0] == 10.0


def test_a_gaussian_gate_is_not_identified_by_the_conditional_density_but_is_by_the_joint_one():
    """Two Gaussian gates with other means, variances and biases give the same weights at every x (the scores
    differ by a linear function whose slope (c_1 - c_2) / s both share), so p(y | x) cannot tell them apart; the
    joint density p(x, y) can."""
    cond = lab.Assembly(gate=lab.GaussianGate(), expert=lab.LinearExpert(), likelihood="gaussian", input=lab.InputLaw(d=1))
    joint = lab.Assembly(gate=lab.GaussianGate(), expert=lab.LinearExpert(), likelihood="joint-gaussian",
                         input=lab.InputLaw("gate", d=1))
    a = lab.Mixture(gate=jnp.array([[-0.5, np.log(0.09), 0.0], [0.5, np.log(0.09), 0.0]]),
                    expert=jnp.array([[1.0, 0.0], [-1.0, 1.0]]), log_var=jnp.log(jnp.array([0.05, 0.05])))
    # c scaled by 2 about 0 and s by 2: the slope (c_1 - c_2) / s and the intercept (c_2^2 - c_1^2) / (2 s) stay
    b = a._replace(gate=jnp.array([[-1.0, np.log(0.18), 0.0], [1.0, np.log(0.18), 0.0]]))
    xs, ys = jnp.linspace(-2, 2, 41)[:, None], jnp.linspace(-2, 2, 41)[:, None]
    dens = jax.vmap(lab.log_density, in_axes=(None, None, 0, 0))
    np.testing.assert_allclose(dens(cond, a, xs, ys), dens(cond, b, xs, ys), rtol=1e-12, atol=1e-12)
    assert float(jnp.max(jnp.abs(dens(joint, a, xs, ys) - dens(joint, b, xs, ys)))) > 0.1
    assert float(lab.VoronoiLoss(blocks=("gate", "expert", "variance"))(cond, a, b)) > 0.5
    with pytest.raises(ValueError, match="input.law: 'gate'"):
        lab.Assembly(gate=lab.GaussianGate(), expert=lab.LinearExpert(), likelihood="joint-gaussian", input=lab.InputLaw(d=1))
    with pytest.raises(ValueError, match="needs the gaussian gate"):
        lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.LinearExpert(), likelihood="joint-gaussian",
                     input=lab.InputLaw("gate", d=1))


@pytest.mark.statistical
def test_a_gaussian_gated_mixture_of_experts_is_fitted_by_its_joint_likelihood():
    """The Gaussian-gated mixture of linear experts, exactly specified, n = 4000, x from the gate's own mixture:
    the direct maximum-likelihood fit of the joint density from random starts reaches at least the truth's
    likelihood and ends near the truth (D_2 on gate, expert and variance)."""
    model = lab.Assembly(gate=lab.GaussianGate(), expert=lab.LinearExpert(), likelihood="joint-gaussian",
                         input=lab.InputLaw("gate", d=1))
    truth = model.check(lab.Mixture(gate=[[-0.5, np.log(0.09), 0.0], [0.5, np.log(0.09), 0.0]],
                                    expert=[[1.0, 0.0], [-1.0, 1.0]], log_var=np.log([0.05, 0.05])))
    X, Y = lab.simulate(jax.random.key(3), model, truth, 4000)
    assert abs(float(jnp.mean(X))) < 0.05 and float(jnp.std(X)) == pytest.approx(np.sqrt(0.09 + 0.25), rel=0.05)
    fit = lab.fit(jax.random.key(4), model, X, Y, num_components=2, restarts=4, init_scale=0.5)
    truth_nll = -float(jnp.mean(jax.vmap(lab.log_density, in_axes=(None, None, 0, 0))(model, truth, X, Y)))
    assert bool(fit.converged) and float(fit.objective) <= truth_nll + 1e-9
    loss = lab.VoronoiLoss(blocks=("gate", "expert", "variance"))
    assert float(loss(model, fit.params, truth)) < 0.1


@dataclasses.dataclass(frozen=True)
class HalfTanhGate(lab.Gate):
    """Another gate defined here, outside the package, to be registered for configurations:
    pi_k(x) = (1 + tanh(w_k^T x + b_k)) / 4."""

    name = "half-tanh"

    def size(self, d):
        return d + 1

    def weights(self, theta, x):
        return 0.25 * (1 + jnp.tanh(theta[:, :-1] @ x + theta[:, -1]))

    def atom_weight(self, theta):
        return 0.25 * (1 + jnp.tanh(theta[..., -1]))


lab.register_gate("half-tanh", HalfTanhGate, replace=True)  # at import, so that worker processes know it too


@pytest.mark.study
def test_a_gate_registered_outside_the_package_runs_a_study_with_its_theory_and_re_rates(tmp_path, capsys):
    """A gate defined and registered in this file runs a whole lab study from a configuration; the theory slope
    declared under [rates] reaches rates.csv; changing only [rates] re-rates the finished study without refitting."""
    import pandas as pd

    from moe_estimation.cli import main

    conf = tmp_path / "lab.toml"
    text = LAB_TOML.format(steps=20).replace('gate = "sigmoid"', 'gate = "half-tanh"')
    conf.write_text(text.replace("num_bootstrap = 100", "num_bootstrap = 100\ntheory = { voronoi = -0.5 }"))
    out = tmp_path / "lab"
    assert main(["study", "--config", str(conf), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    fits, rates = pd.read_csv(out / "fits.csv"), pd.read_csv(out / "rates.csv")
    assert np.all(np.isfinite(fits["loss_voronoi"])) and set(rates["theory_slope"]) == {-0.5}
    conf.write_text(text.replace("num_bootstrap = 100", "num_bootstrap = 100\ntheory = { voronoi = { over = -0.25 } }"))
    capsys.readouterr()
    assert main(["study", "--config", str(conf), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    assert "the fits are kept" in capsys.readouterr().out
    pd.testing.assert_frame_equal(pd.read_csv(out / "fits.csv"), fits)
    again = pd.read_csv(out / "rates.csv")
    assert set(again[again["specification"] == "over"]["theory_slope"]) == {-0.25}
    assert again[again["specification"] == "exact"]["theory_slope"].isna().all()
    with pytest.raises(ValueError, match="name: a gate named 'half-tanh' exists already"):
        lab.register_gate("half-tanh", HalfTanhGate)


@pytest.mark.parametrize("theory, word", [
    ("theory = { voronoi = 0.5 }", "rates.theory.voronoi: expected a finite slope <= 0"),
    ("theory = { voronoi = { middle = -0.5 } }", "rates.theory.voronoi.middle: expected the specifications"),
    ("theory = { yardstick = -0.5 }", "rates.theory: expected a table of the declared losses"),
    ("theory = { voronoi = true }", "rates.theory.voronoi: expected a finite slope"),
])
def test_lab_theory_slopes_are_checked(tmp_path, theory, word):
    text = LAB_TOML.format(steps=20).replace("num_bootstrap = 100", f"num_bootstrap = 100\n{theory}")
    with pytest.raises(ValueError, match=word):
        _parse(tmp_path, text)


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "simulations").glob("lab-*.toml")),
                         ids=lambda p: p.name)
def test_every_lab_example_configuration_is_valid(path):
    from moe_estimation.experiments.config import read_toml
    from moe_estimation.lab.study import parse_lab_config

    study = parse_lab_config(read_toml(path), str(path))
    assert study.model.check(study.truth) is not None


def _shared_model(likelihood="gaussian"):
    model = lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.LinearExpert(), input=lab.InputLaw(d=1, low=-1.0, high=1.0),
                         likelihood=likelihood, shared=lab.ActivationExpert("relu"), share=0.3)
    truth = model.check(lab.Mixture(gate=[[3.0, 0.2], [0.0, 0.0]], expert=[[2.0, 1.0], [-1.0, 0.0]],
                                    log_var=np.log([0.1, 0.2]), shared_logit=np.log([0.25, 0.75]),
                                    shared_expert=[[1.0, 2.0, 0.0], [-2.0, 1.0, 0.5]], shared_log_var=np.log([0.05, 0.3])))
    return model, truth


def test_shared_experts_by_hand():
    """With shared experts, f(x), log p(y | x) and the data follow the declared split: the shared part weighs
    `share`, its components omega = softmax(shared_logit); flatten and unflatten are inverse; a loss of part
    'both' is the sum of the routed and the shared loss, each zero at the truth."""
    model, truth = _shared_model()
    x, y = jnp.array([0.4]), jnp.array([0.7])
    pi = np.exp([3 * 0.4 + 0.2, 0.0]) / np.exp([3 * 0.4 + 0.2, 0.0]).sum()
    h = np.array([2 * 0.4 + 1, -1.0 * 0.4])
    h1 = np.array([1.0 * max(2 * 0.4, 0), -2.0 * max(0.4 + 0.5, 0)])
    omega = np.array([0.25, 0.75])
    np.testing.assert_allclose(lab.mean(model, truth, x), [0.3 * omega @ h1 + 0.7 * pi @ h], rtol=1e-12)
    npdf = lambda m, v: np.exp(-0.5 * (0.7 - m) ** 2 / v) / np.sqrt(2 * np.pi * v)
    p = 0.3 * omega @ npdf(h1, np.array([0.05, 0.3])) + 0.7 * pi @ npdf(h, np.array([0.1, 0.2]))
    assert float(lab.log_density(model, truth, x, y)) == pytest.approx(np.log(p), rel=1e-12)
    theta = model.flatten(truth)
    assert theta.shape == (model.num_params(2, 2),)
    back = model.unflatten(theta, 2, 2)
    for a, b in zip(back, truth):
        np.testing.assert_array_equal(a, b)
    lo, hi = model.box(2, 2)
    assert lo.shape == theta.shape and float(lo[-2 - 1 - 6]) == float(hi[-2 - 1 - 6]) == 0.0  # the last logit pinned
    X, Y = lab.simulate(jax.random.key(0), model, truth, 20000)
    f = jax.vmap(lab.mean, in_axes=(None, None, 0))(model, truth, X)
    assert float(jnp.mean(Y[:, 0] - f[:, 0])) == pytest.approx(0.0, abs=0.03)  # E[Y | X] = f(X)
    both = lab.VoronoiLoss(blocks=("gate", "expert", "variance"), part="both")
    other = truth._replace(shared_expert=truth.shared_expert + 0.1, expert=truth.expert - 0.2)
    parts = both.parts(model, other, truth)
    routed = lab.VoronoiLoss(blocks=("gate", "expert", "variance"))(model, other, truth)
    shared = lab.VoronoiLoss(blocks=("expert", "variance"), part="shared")(model, other, truth)
    assert float(parts["loss"]) == pytest.approx(float(routed + shared), rel=1e-12)
    assert float(routed) > 0 and float(shared) > 0 and float(both(model, truth, truth)) == 0.0
    for make, word in ((lambda: model.check(truth._replace(shared_expert=None)), "give shared_logit"),
                       (lambda: lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.LinearExpert(), input=lab.InputLaw(d=1),
                                             shared=lab.LinearExpert(), share=1.0), "share: the shared part's fixed weight"),
                       (lambda: lab.fit(jax.random.key(0), model, X[:50], Y[:50], 2), "num_shared: the model has shared"),
                       (lambda: lab.VoronoiLoss(part="shared")(lab.Assembly(gate=lab.SigmoidGate(), expert=lab.LinearExpert(),
                                                                            input=lab.InputLaw(d=1)), truth, truth),
                        "part: 'shared' measures shared experts")):
        with pytest.raises(ValueError, match=word):
            make()


@pytest.mark.statistical
def test_shared_and_routed_experts_are_fitted_by_maximum_likelihood():
    """Exactly specified (2 routed, 2 shared), n = 4000, started near the truth at a fixed scale: the direct
    maximum-likelihood fit reaches at least the truth's likelihood and lands near it on both parts."""
    model, truth = _shared_model()
    X, Y = lab.simulate(jax.random.key(5), model, truth, 4000)
    fit = lab.fit(jax.random.key(6), model, X, Y, 2, num_shared=2, truth=truth, init="near-truth", init_scale=0.1,
                  restarts=2)
    truth_nll = -float(jnp.mean(jax.vmap(lab.log_density, in_axes=(None, None, 0, 0))(model, truth, X, Y)))
    assert bool(fit.converged) and float(fit.objective) <= truth_nll + 1e-9
    both = lab.VoronoiLoss(blocks=("gate", "expert", "variance"), part="both")
    assert float(both(model, fit.params, truth)) < 0.5


SHARED_TOML = """seed = 2
[model]
gate = "softmax"
expert = "linear"
shared = "linear"
share = 0.5
input = {{ law = "uniform", low = -1.0, high = 1.0, d = 1 }}
[truth]
gate = [[3.0, 0.0], [0.0, 0.0]]
expert = [[1.0, 0.0], [-1.0, 0.5]]
shared_expert = [[2.0, 0.0]]
shared_weight = [1.0]
[loss.d]
blocks = ["gate", "expert"]
part = "both"
[grid]
ns = [100, 200]
replicates = 2
[fit]
restarts = 1
max_steps = {steps}
[rates]
num_bootstrap = 100
"""


@pytest.mark.study
def test_a_lab_study_with_shared_experts_runs_from_a_configuration(tmp_path):
    import pandas as pd

    from moe_estimation.cli import main

    conf = tmp_path / "shared.toml"
    conf.write_text(SHARED_TOML.format(steps=20))
    out = tmp_path / "shared"
    assert main(["study", "--config", str(conf), "--out", str(out), "--no-progress", "--workers", "1"]) == 0
    fits = pd.read_csv(out / "fits.csv")
    assert set(zip(fits["specification"], fits["num_components"], fits["num_shared"])) == {("exact", 2, 1), ("over", 3, 2)}
    assert np.all(np.isfinite(fits["loss_d"])) and len(pd.read_csv(out / "rates.csv"))
    assert main(["plot", "--results", str(out), "--out", str(tmp_path / "fig")]) == 0


@pytest.mark.parametrize("template, change, word", [
    ("lab", ("gate = \"sigmoid\"", "gate = \"tanh\""), "model.gate: expected one of"),
    ("lab", ("expert = \"linear\"", "expert = \"quadratic\""), "model.expert"),
    ("lab", ("gate = [[3.0, 1.0], [-3.0, 0.0]]", "gate = [[3.0], [-3.0]]"), "truth: Shape mismatch in truth.gate"),
    ("lab", ("replicates = 2", "replicates = 1"), "grid.replicates"),
    ("lab", ("ns = [100, 200]", "ns = [2, 200]"), "grid.ns: n = 2 gives fewer residuals"),
    ("lab", ("restarts = 1", "restarts = 1\nestimator = \"em\""), "fit: model: EM here is for the Gaussian likelihood"),
    ("lab", ("restarts = 1", "restarts = 1\nspeed = 2"), "fit.speed: unknown key"),
    ("lab", ("[grid]", "[loss.v]\nblocks = [\"gate\", \"variance\"]\n[grid]"), "loss.v.blocks: 'variance'"),
    ("shared", ('shared_expert = [[2.0, 0.0]]\nshared_weight = [1.0]\n', ''), "truth.shared_expert: give the true shared experts"),
    ("shared", ('shared = "linear"\n', ''), "model.share: the fixed weight of shared experts; give model.shared too"),
    ("shared", ('shared = "linear"', 'shared = "quadratic"'), "model.shared: expected one of"),
    ("shared", ('shared_weight = [1.0]', 'shared_weight = [0.5]'), "shared_weight: expected 1 positive weights summing to 1"),
    ("shared", ('[grid]', '[grid]\nextra_shared = -1'), "grid.extra_shared"),
    ("shared", ('part = "both"', 'part = "all"'), "loss.d: part: expected one of"),
    ("shared", ('shared = "linear"\nshare = 0.5\n', ''), "truth.shared_weight: the model has no shared experts"),
    ("shared", ('shared_expert = [[2.0, 0.0]]', 'shared_expert = []'), "truth.shared_expert: expected a non-empty list"),
    ("shared", ('share = 0.5', 'share = "0.5"'), "^[^:]*: model.share: expected float"),
    ("shared", ('[model]', '[model]\nlikelihood = "gaussian"'), "truth.shared_log_var: the gaussian likelihood needs"),
])
def test_lab_configuration_errors_name_the_key(tmp_path, template, change, word):
    text = {"lab": LAB_TOML, "shared": SHARED_TOML}[template].format(steps=20).replace(*change)
    with pytest.raises(ValueError, match=word):
        _parse(tmp_path, text)


@pytest.mark.parametrize("K", [3, 4])
def test_over_specified_near_truth_starts_of_a_pinned_softmax_are_the_truth_at_scale_zero(K):
    """An over-specified near-truth start at scale 0 is the truth split (loss 0): the pinned component's row is
    moved to 0 with every other (the same gate), not clipped to 0 by the box."""
    from moe_estimation.lab.fit import start

    model, truth, *_ = _gaussian_moe(10)
    for m, t in ((model, truth), _shared_model()):
        s = lab.LabFitSettings(num_components=K, num_shared=t.num_shared and K - 1, init="near-truth", init_scale=0.0)
        theta = start(jax.random.key(0), m, s, t, jnp.float64)
        lo, hi = m.box(K, s.num_shared)
        assert np.all(np.asarray(theta) >= lo) and np.all(np.asarray(theta) <= hi)
        fitted = m.unflatten(theta, K, s.num_shared)
        part = "both" if t.num_shared else "routed"
        assert float(lab.VoronoiLoss(blocks=("gate", "expert", "variance"), part=part)(m, fitted, t)) < 1e-12
        xs = jnp.linspace(-1, 1, 7)[:, None]
        dens = jax.vmap(lab.log_density, in_axes=(None, None, 0, 0))
        np.testing.assert_allclose(dens(m, fitted, xs, xs), dens(m, t, xs, xs), rtol=1e-12)


def test_lab_refuses_what_it_cannot_mean():
    """The review's battery: each bad input a clear ValueError naming the argument."""
    gm, gtruth, X, Y = _gaussian_moe(50)
    ls = lab.Assembly(gate=lab.SigmoidGate(), expert=lab.LinearExpert(), input=lab.InputLaw(d=1))
    lt = lab.Mixture(gate=[[1.0, 0.0]], expert=[[1.0, 0.0]], log_var=[0.0])
    sm, st = _shared_model()
    cases = [
        (lambda: lab.em(jax.random.key(0), gm, X[:3], Y[:3], 2), "n: 3 rows give fewer residuals"),
        (lambda: lab.em(jax.random.key(0), gm, X.at[0, 0].set(np.nan), Y, 2), "X, Y: contain NaN"),
        (lambda: lab.em(jax.random.key(0), gm, X, Y, 2, num_shared=2), "num_shared: the model has no shared"),
        (lambda: lab.em(jax.random.key(0), gm, X, Y, 2, init="near-truth", truth=gtruth._replace(expert=[[1.0]] * 2)),
         "Shape mismatch in truth.expert"),
        (lambda: ls.check(lt._replace(log_var=[1.0])), "truth.log_var: least squares has no per-expert variances"),
        (lambda: ls.check(lt._replace(shared_log_var=[0.0])), "has shared components, but the model has no shared"),
        (lambda: sm.check(st._replace(shared_log_var=None)), "truth.shared_log_var: the gaussian likelihood needs"),
        (lambda: lab.VoronoiLoss(blocks=("gate", "variance"))(ls, ls.check(lt), ls.check(lt)), "blocks: 'variance'"),
        (lambda: lab.VoronoiLoss(kind="d1r", r=0.5), "r: the exponent of a d1r loss"),
        (lambda: lab.VoronoiLoss(kind="d1r", r=float("nan")), "r: the exponent"),
        (lambda: lab.Assembly(gate=lab.SoftmaxGate, expert=lab.LinearExpert(), input=lab.InputLaw()), "gate: expected a lab.Gate"),
        (lambda: lab.Assembly(gate=lab.SoftmaxGate(), expert="linear", input=lab.InputLaw()), "expert: expected a lab.Expert"),
        (lambda: lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.LinearExpert(), input=lab.InputLaw(), share=2.0),
         "share: the shared part's fixed weight"),
        (lambda: lab.register_gate("weird", lambda: 3), "factory: must build a lab.Gate"),
        (lambda: lab.register_gate("weird", lab.LinearExpert), "factory: must build a lab.Gate"),
        (lambda: lab.register_expert("weird", lab.SigmoidGate), "factory: must build a lab.Expert"),
    ]
    for make, word in cases:
        with pytest.raises(ValueError, match=word):
            make()
    assert "weird" not in lab.parts.GATE_NAMES


@pytest.mark.parametrize("change", [
    ('shared_weight = [1.0]', 'shared_weight = [1.0]\nshared_log_var = [0.0]'),  # least squares: fine at 0
    ('num_bootstrap = 100', 'num_bootstrap = 100\ntheory = { d = { over = -0.5 } }'),
    ('[grid]', '[grid]\nspecifications = ["exact"]'),
])
def test_lab_shared_configurations_that_are_valid(tmp_path, change):
    _parse(tmp_path, SHARED_TOML.format(steps=20).replace(*change))


def test_a_theory_for_a_specification_not_fitted_is_refused(tmp_path):
    text = (SHARED_TOML.format(steps=20).replace("[grid]", "[grid]\nspecifications = [\"exact\"]")
            .replace("num_bootstrap = 100", "num_bootstrap = 100\ntheory = { d = { over = -0.5 } }"))
    with pytest.raises(ValueError, match="rates.theory.d.over: the study fits only"):
        _parse(tmp_path, text)


def test_one_neuron_experts_are_compared_through_their_symmetries():
    """a relu(b x + c) = (t a) relu((b x + c) / t) and a tanh(z) = (-a) tanh(-z): the same expert functions, at
    Voronoi loss 0; an expert function that differs is not."""
    for act, other in (("relu", lambda e: e.at[:, 0].multiply(2.0).at[:, 1:].divide(2.0)),
                       ("tanh", lambda e: -e)):
        model = lab.Assembly(gate=lab.SigmoidGate(), expert=lab.ActivationExpert(act), input=lab.InputLaw(d=1))
        truth = model.check(lab.Mixture(gate=[[2.0, 0.5], [-2.0, 0.0]], expert=[[1.0, 2.0, -0.5], [-1.5, 1.0, 0.3]],
                                        log_var=[0.0, 0.0]))
        twin = truth._replace(expert=other(truth.expert))
        xs = jnp.linspace(-1, 1, 9)[:, None]
        f = jax.vmap(lab.mean, in_axes=(None, None, 0))
        np.testing.assert_allclose(f(model, twin, xs), f(model, truth, xs), rtol=1e-12, atol=1e-12)
        assert float(lab.VoronoiLoss()(model, twin, truth)) < 1e-12
        moved = truth._replace(expert=truth.expert.at[0, 2].add(0.1))
        assert float(lab.VoronoiLoss()(model, moved, truth)) > 1e-3
    gelu = lab.ActivationExpert("gelu")
    theta = jnp.array([[1.0, 2.0, -0.5]])
    np.testing.assert_array_equal(gelu.canonical(theta, 1), theta)


def test_the_committed_lab_study_is_its_configuration_and_its_rates_are_its_fits():
    """tables/lab-gaussian-moe is a run of `moe-estimation study --config simulations/lab-gaussian-moe.toml`
    (its config.json records that configuration, so rerunning the command resumes it) and its rates.csv is what
    its fits give, re-rated here from fits.csv alone."""
    import json

    import pandas as pd

    from moe_estimation.experiments.config import read_toml
    from moe_estimation.lab.study import lab_rates, parse_lab_config, rescore

    root = Path(__file__).resolve().parents[1]
    toml = root / "simulations" / "lab-gaussian-moe.toml"
    study = parse_lab_config(read_toml(toml), str(toml))
    out = root / "tables" / "lab-gaussian-moe"
    assert json.loads((out / "config.json").read_text())["study"] == study.table
    fits = pd.read_csv(out / "fits.csv")
    assert len(fits) == len(study.specifications) * len(study.ns) * study.replicates
    rebuilt, committed = lab_rates(fits, study), pd.read_csv(out / "rates.csv", keep_default_na=False, na_values=["nan"])
    pd.testing.assert_frame_equal(rebuilt.reset_index(drop=True), committed, check_dtype=False, rtol=1e-10)
    # every loss column is its declaration applied to the stored parameters (to 1e-12)
    pd.testing.assert_frame_equal(rescore(fits, study), fits, check_exact=False, rtol=1e-12)


@pytest.mark.study  # two compilations
def test_the_em_benchmark_measures_both_estimators_on_the_same_data(tmp_path):
    """benchmarks/lab_em.py at a tiny size: one row per method, each data set's likelihood recorded, and on
    every data set at least one of the two reaches the lower likelihood (the comparison is of one data set's
    two fits); the JSON is marked finished."""
    import importlib.util
    import json

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "lab_em.py"
    spec = importlib.util.spec_from_file_location("lab_em", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "em.json"
    args = bench.parse(["--components", "2", "--ns", "80", "--datasets", "3", "--repeats", "1", "--max-steps", "20",
                        "--em-iterations", "5", "--json", str(out)])
    assert bench.main(args) == 0
    got = json.loads(out.read_text())
    assert got["meta"]["finished"] and [r["method"] for r in got["rows"]] == ["direct", "em"]
    direct, em = (np.array(r["nll"]) for r in got["rows"])
    low = np.minimum(direct, em)
    assert np.all((direct <= low + 1e-7 * np.abs(low)) | (em <= low + 1e-7 * np.abs(low)))
    assert sum(r["reached_lowest"] for r in got["rows"]) >= 3


def _linear_pair(seed=0, K=4):
    """A softmax-gated Gaussian MoE with linear experts (d = 2): a truth of 2 components and a fit of K."""
    model = lab.Assembly(gate=lab.SoftmaxGate(reference="extra"), expert=lab.LinearExpert(), input=lab.InputLaw(d=2),
                         likelihood="least-squares")
    rng = np.random.default_rng(seed)
    truth = lab.Mixture(gate=[[1.0, 0.0, 0.2], [-1.0, 0.5, -0.3]], expert=[[1.0, 0.0, 0.5], [-1.0, 1.0, 0.0]],
                        log_var=np.zeros(2))
    fitted = lab.Mixture(gate=rng.uniform(-1.5, 1.5, (K, 3)), expert=rng.uniform(-1.5, 1.5, (K, 3)), log_var=np.zeros(K))
    return model, model.check(fitted, "fitted"), model.check(truth)


@pytest.mark.parametrize("seed", range(4))
def test_declared_terms_spelling_d2_and_d1r_are_the_shorthands_to_1e12(seed):
    """The terms that spell D_2 (one term on the whole atom, exponents 1 and 2) and D_{1,r} (the first block and the
    rest, r everywhere) give the shorthands' numbers, whatever the cells (over-specified fits of 3 to 5 atoms)."""
    model, fitted, truth = _linear_pair(seed, K=3 + seed % 3)
    blocks = ("gate", "expert")
    d2 = lab.VoronoiLoss(blocks=blocks, kind="d2")(model, fitted, truth)
    spelled = lab.VoronoiLoss(blocks=blocks, kind="terms", terms=(lab.Term(blocks, 1, 2),))(model, fitted, truth)
    assert float(spelled) == pytest.approx(float(d2), rel=1e-12)
    for r in (1.0, 2.5):
        d1r = lab.VoronoiLoss(blocks=blocks, kind="d1r", r=r)(model, fitted, truth)
        terms = (lab.Term(("gate",), r, r), lab.Term(("expert",), r, r))
        assert float(lab.VoronoiLoss(blocks=blocks, kind="terms", terms=terms)(model, fitted, truth)) == \
            pytest.approx(float(d1r), rel=1e-12)


def test_exponents_by_cell_size_weights_and_weight_sums_by_hand():
    """A declared loss with r(m) exponents on the linear expert's pieces, computed by hand: truth atoms at the gate
    slopes (1, 0) and (-1, 0.5); three fitted atoms, two of them in the first cell (m = 2: r = 4) and one alone."""
    model, _, truth = _linear_pair()
    t = np.asarray(truth.gate), np.asarray(truth.expert)
    eps = np.array([[0.01, -0.02, 0.03], [-0.02, 0.01, 0.02], [0.03, 0.01, -0.01]])
    gate = np.stack([t[0][0], t[0][0], t[0][1]]) + eps
    gate[:2, -1] = np.log(np.exp(t[0][0, -1]) / 2) + np.array([0.05, -0.04])
    expert = np.stack([t[1][0], t[1][0], t[1][1]]) + eps[::-1]
    fitted = model.check(lab.Mixture(gate=gate, expert=expert, log_var=np.zeros(3)), "fitted")
    terms = (lab.Term(("gate",), 1, 2), lab.Term(("expert.slope",), 1, "r/2"), lab.Term(("expert.intercept",), 1, "r"))
    cell_of = [0, 0, 1]
    w, tw = np.exp(gate[:, -1]), np.exp(t[0][:, -1])
    dg = gate[:, :2] - t[0][cell_of, :2]
    ds = expert[:, :2] - t[1][cell_of, :2]
    di = expert[:, 2:] - t[1][cell_of, 2:]
    nrm = lambda x: np.linalg.norm(x, axis=1)
    weight_all = abs(w[0] + w[1] - tw[0]) + abs(w[2] - tw[1])
    per_atom = np.where([False, False, True], nrm(dg) + nrm(ds) + nrm(di), nrm(dg) ** 2 + nrm(ds) ** 2 + nrm(di) ** 4)
    for weighted, weight_sum, expected in [
            (True, "all", weight_all + w @ per_atom),
            (True, "multi", abs(w[0] + w[1] - tw[0]) + w @ per_atom),
            (False, "none", per_atom.sum())]:
        loss = lab.VoronoiLoss(kind="terms", terms=terms, weighted=weighted, weight_sum=weight_sum)
        assert float(loss(model, fitted, truth)) == pytest.approx(expected, rel=1e-12)
    # a cell of three atoms takes r(3) = 6; a cell larger than the r(m) table is NaN, never a number
    four = model.check(lab.Mixture(gate=np.stack([gate[0]] * 3 + [gate[2]]), expert=np.stack([expert[0]] * 3 + [expert[2]]),
                                   log_var=np.zeros(4)), "fitted")
    assert np.isfinite(float(lab.VoronoiLoss(kind="terms", terms=terms)(model, four, truth)))
    assert np.isnan(float(lab.VoronoiLoss(kind="terms", terms=terms, r_of_m=(4,))(model, four, truth)))
    assert np.isfinite(float(lab.VoronoiLoss(kind="terms", terms=(lab.Term(("gate",), 1, 2),), r_of_m=(4,))(model, four, truth)))


@pytest.mark.parametrize("make, word", [
    (lambda: lab.Term(("gate", "gate")), "terms.blocks: expected distinct"),
    (lambda: lab.Term(("slope",)), "terms.blocks"),
    (lambda: lab.Term(("gate",), single="r"), "terms.single"),
    (lambda: lab.Term(("gate",), multi="r/3"), "terms.multi"),
    (lambda: lab.Term(("gate",), multi=0), "terms.multi"),
    (lambda: lab.VoronoiLoss(kind="terms"), "terms: a loss of kind 'terms' needs"),
    (lambda: lab.VoronoiLoss(terms=(lab.Term(("gate",)),)), "terms: only a loss of kind 'terms'"),
    (lambda: lab.VoronoiLoss(weighted=False), "weighted, weight_sum: kind 'd2'"),
    (lambda: lab.VoronoiLoss(kind="terms", terms=(lab.Term(("gate",)),), weight_sum="some"), "weight_sum: expected"),
    (lambda: lab.VoronoiLoss(kind="terms", terms=(lab.Term(("gate",)),), r_of_m=(4, -1)), "r_of_m"),
    (lambda: lab.VoronoiLoss(kind="terms", terms=(lab.Term(("expert.scale",)),))(*_linear_pair()), "'expert.scale' is no piece"),
    (lambda: lab.VoronoiLoss(blocks=("gate", "expert"), kind="terms", terms=(lab.Term(("gate",)),), part="both"),
     "terms: a shared expert has no gate"),
    (lambda: lab.VoronoiLoss(kind="terms", terms=(lab.Term(("gate",), multi="r"),), r_of_m=(4,)).check_cells(4),
     r"r_of_m: the fit has 4 components.*r\(m\) for m = 2 .. 2 only"),
])
def test_declared_losses_refuse_what_they_cannot_mean(make, word):
    with pytest.raises(ValueError, match=word):
        make()


def test_a_declared_loss_from_a_configuration(tmp_path):
    """[loss.NAME] terms in a configuration become a kind 'terms' loss; bad ones name their key."""
    text = LAB_TOML.format(steps=20).replace("[grid]", """[loss.cells]
blocks = ["gate", "expert"]
terms = [{ blocks = ["gate"], single = 1, multi = 2 }, { blocks = ["expert.slope"], multi = "r/2" }]
r_of_m = [4, 6]
weight_sum = "multi"
[grid]""")
    study = _parse(tmp_path, text)
    loss = study.losses["cells"]
    assert loss.kind == "terms" and loss.terms[1] == lab.Term(("expert.slope",), 1.0, "r/2") and loss.weight_sum == "multi"
    with pytest.raises(ValueError, match="loss.cells: terms: expected a list of tables"):
        _parse(tmp_path, text.replace('multi = "r/2" }]', 'multi = "r/2", power = 2 }]'))
    with pytest.raises(ValueError, match="loss.cells: terms.multi"):
        _parse(tmp_path, text.replace('multi = "r/2"', 'multi = "r/4"'))
    with pytest.raises(ValueError, match=r"loss.cells.r_of_m: the over fit has 5 components"):
        _parse(tmp_path, text.replace("[grid]\n", "[grid]\nextra_components = 3\n"))


def _prefix_measure(prob, Lp, seed):
    """A fitted-looking prefix measure of Lp prompts inside the box, near the truth (so that cells hold several)."""
    rng = np.random.default_rng(seed)
    idx = np.arange(Lp) % prob.num_true_prompts
    atoms = np.clip(np.asarray(prob.true_atoms)[idx] + 0.3 * rng.normal(size=(Lp, prob.atom_dim)), -prob.atom_bound,
                    prob.atom_bound)
    biases = np.clip(np.asarray(prob.true_biases)[idx] + 0.3 * rng.normal(size=Lp), *prob.bias_bounds)
    return me.Params(jnp.asarray(atoms), jnp.asarray(biases))


@pytest.mark.parametrize("name", me.PRESETS)
def test_every_prefix_preset_is_an_assembly_of_parts_to_machine_precision(name):
    """lab.from_problem: the frozen block and the prompt structure as parts. On the same measures (exact and over-
    specified) the regression function, the structure's own loss, the (key, value) yardstick and its identified
    parts equal the prefix code's to 1e-12, and the registered closed-form fast path equals autodiff."""
    prob = me.preset(name)
    model, truth = lab.from_problem(prob)
    own, yard = lab.prefix_losses(model).values()
    X = me.simulate(jax.random.key(0), prob, 64)[0]
    for Lp, seed in ((prob.num_true_prompts, 1), (prob.num_true_prompts + 1, 2), (prob.num_true_prompts + 2, 3)):
        params = _prefix_measure(prob, Lp, seed)
        m = model.check(lab.from_params(params), "fitted")
        f_lab = jax.vmap(lab.mean, in_axes=(None, None, 0))(model, m, X)
        np.testing.assert_allclose(f_lab, me.predict(prob, params, X), rtol=0, atol=1e-13)
        assert float(own(model, m, truth)) == pytest.approx(float(me.voronoi_loss(prob, params)), rel=1e-12, abs=1e-15)
        assert float(yard(model, m, truth)) == pytest.approx(float(me.key_value_loss(prob, params)), rel=1e-12, abs=1e-15)
        ours, theirs = yard.identified(model, m, truth, cells="key"), me.identified_key_value(prob, params, cells="key")
        for k in IDENTIFIED_NAMES:
            assert float(ours[k]) == pytest.approx(float(theirs[k]), rel=1e-12, abs=1e-15), k
        np.testing.assert_array_equal(np.asarray(lab.to_params(m).atoms), np.asarray(params.atoms))
    Y = me.predict(prob, me.true_params(prob), X) + 0.1 * jnp.asarray(np.random.default_rng(4).normal(size=(64, prob.d_v)))
    theta = model.flatten(m)
    fast = linearization(model, Lp, X, Y, jnp.ones(64))(theta)
    auto = linearization(model, Lp, X, Y, jnp.ones(64), derivatives="autodiff")(theta)
    assert float(fast.F) == pytest.approx(float(auto.F), rel=1e-12)
    np.testing.assert_allclose(fast.g, auto.g, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fast.H, auto.H, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("name", ["non-shared", "shared-tanh"])
def test_the_lab_estimator_on_a_prefix_assembly_is_the_prefix_estimator(name):
    """From the prefix estimator's own start, the lab's solve of the same data reaches the same least-squares fit:
    the objective to 1e-10 relative and the parameters to 1e-6 (the one algorithm, its parameters in another order)."""
    prob = me.preset(name)
    model, truth = lab.from_problem(prob)
    X, Y = me.simulate(jax.random.key(5), prob, 400)
    Lp = prob.num_true_prompts + 1
    theirs = me.fit(jax.random.key(6), prob, X, Y, Lp, restarts=1, init="random", init_scale=0.5)
    theta0 = model.flatten(lab.from_params(theirs.start))
    lo, hi = (jnp.asarray(a) for a in model.box(Lp))
    sol = solve(linearization(model, Lp, X, Y, jnp.ones(400)), theta0, lo, hi, SolverSettings())
    assert 2 * float(sol.objective) / 400 == pytest.approx(float(theirs.objective), rel=1e-10)
    np.testing.assert_allclose(np.asarray(lab.to_params(model.unflatten(sol.value, Lp)).atoms),
                               np.asarray(theirs.params.atoms), atol=1e-6)
    assert int(sol.steps) == int(theirs.steps)


def test_prefix_parts_refuse_what_they_cannot_mean():
    prob = me.preset("non-shared")
    model, truth = lab.from_problem(prob)
    with pytest.raises(ValueError, match="frozen: the prefix model's parts go with a softmax gate of reference 'extra'"):
        dataclasses.replace(model, gate=lab.SoftmaxGate())
    with pytest.raises(ValueError, match="expert: a prompt structure's experts are the constant values"):
        dataclasses.replace(model, expert=lab.LinearExpert(), frozen=None)
    with pytest.raises(ValueError, match="structure: made for d = 2"):
        dataclasses.replace(model, frozen=None, input=lab.InputLaw(d=3))
    with pytest.raises(ValueError, match="Shape mismatch in frozen.A"):
        lab.FrozenExperts(np.zeros((2, 2, 3)), np.zeros(2), np.zeros((2, 1, 2)))
    with pytest.raises(ValueError, match="structure: expected one of"):
        lab.PromptStructure("shared", np.eye(2), np.eye(2))
    with pytest.raises(ValueError, match="Shape mismatch in truth.gate"):
        model.check(truth._replace(gate=truth.gate[:, 1:]))
    with pytest.raises(ValueError, match=r"inside the box \(\|prompt\| <= 3.0"):
        model.check(truth._replace(gate=truth.gate * 10))
    with pytest.raises(ValueError, match="'prompt' is a block of a prompt structure's assembly"):
        lab.VoronoiLoss(blocks=("prompt",))(*_linear_pair())
    with pytest.raises(ValueError, match="'prompt.key' is a block of a prompt structure"):
        lab.VoronoiLoss(blocks=("prompt.key",))(*lab.from_problem(me.preset("shared-linear")), lab.from_problem(me.preset("shared-linear"))[1])
    with pytest.raises(ValueError, match="derivatives: expected one of"):
        lab.fit(jax.random.key(0), model, np.zeros((50, 2)), np.zeros((50, 2)), 2, derivatives="closed")


def test_near_truth_starts_shrink_with_n_at_the_declared_rate():
    """init_rate: a near-truth start's noise has sd init_scale * n^(-init_rate) (the published studies' shrinking
    schedules); rate 0 is the fixed scale, and a random start refuses a rate."""
    from moe_estimation.lab.fit import start

    model, _, truth = _linear_pair()
    s = lab.LabFitSettings(num_components=2, init="near-truth", init_scale=0.5, init_rate=0.25)
    base = model.flatten(truth)
    dev = {n: np.asarray(start(jax.random.key(3), model, s, truth, jnp.float64, n) - base) for n in (1.0, 1e4)}
    free = np.abs(dev[1.0]) < 0.5 * 3  # coordinates the box did not clip at n = 1
    np.testing.assert_allclose(dev[1e4][free], dev[1.0][free] / 10, rtol=1e-12)
    fixed = s._replace(init_rate=0.0)
    np.testing.assert_array_equal(start(jax.random.key(3), model, fixed, truth, jnp.float64, 1.0),
                                  start(jax.random.key(3), model, fixed, truth, jnp.float64, 1e4))
    with pytest.raises(ValueError, match="init_rate: a random start knows no truth"):
        lab.fit(jax.random.key(0), model, np.zeros((50, 2)), np.zeros((50, 1)), 2, init_rate=0.25)


def test_the_linspace_design_spreads_n_points_whatever_the_padding():
    """input law linspace: x_i = low + (high - low) i / (n - 1) for a data set of n rows, padded or not; d = 1 only."""
    model = lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.LinearExpert(),
                         input=lab.InputLaw(law="linspace", low=0.0, high=1.0), likelihood="gaussian")
    truth = model.check(lab.Mixture(gate=[[2.0, 0.5], [0.0, 0.0]], expert=[[1.0, 0.5], [-1.0, 0.0]], log_var=[-2.0, -2.0]))
    X, _ = lab.simulate(jax.random.key(0), model, truth, n=5)
    np.testing.assert_allclose(np.asarray(X[:, 0]), [0.0, 0.25, 0.5, 0.75, 1.0], rtol=0, atol=1e-15)
    Xp, _ = lab.simulate_rows(model, truth, jax.random.key(0), 8, 5)
    np.testing.assert_array_equal(np.asarray(Xp[:5]), np.asarray(X))
    with pytest.raises(ValueError, match="input.d: the linspace design is for d = 1"):
        lab.InputLaw(law="linspace", d=2)


def _sgame():
    model = lab.Assembly(gate=lab.SoftmaxGate(), expert=lab.LinearExpert(),
                         input=lab.InputLaw(law="linspace", low=0.0, high=1.0), likelihood="gaussian", bound=30.0)
    truth = model.check(lab.Mixture(gate=[[25.0, -8.0], [0.0, 0.0]], expert=[[-20.0, 15.0], [20.0, -5.0]],
                                    log_var=np.log([0.09, 0.16])))
    return model, truth


def test_the_published_softmax_gaussian_moe_start_is_the_source_s():
    """lab.published 'sgame-source': every true component covered, the fitted reference on the true one at (0, 0),
    one scalar noise a block (slope and intercept moved alike) of sd 0.005 n^-0.083 (gate) and 0.05 n^-0.083
    (experts), standard deviations used as variances; for K = 3 the three assignments equally often."""
    from moe_estimation.lab.fit import LabFitSettings, start

    model, truth = _sgame()
    s = LabFitSettings(num_components=3, init="sgame-source")
    seen = []
    for i in range(300):
        m = model.unflatten(start(jax.random.key(i), model, s, truth, jnp.float64, 1000.0), 3)
        g, e, v = np.asarray(m.gate), np.asarray(m.expert), np.exp(np.asarray(m.log_var))
        np.testing.assert_array_equal(g[-1], 0.0)
        assign = tuple(int(np.argmin(np.abs(e[k, 1] - np.asarray(truth.expert)[:, 1]))) for k in range(3))
        assert assign[-1] == 1 and set(assign) == {0, 1}
        seen.append(assign)
        for k in range(2):  # one scalar a block: slope and intercept moved by the same amount
            d = g[k] - (np.asarray(truth.gate)[assign[k]] if assign[k] == 0 else 0.0)
            assert d[0] == pytest.approx(d[1], abs=1e-12) and abs(d[0]) < 6 * 0.005 * 1000 ** -0.083
        d = e - np.asarray(truth.expert)[list(assign)]
        np.testing.assert_allclose(d[:, 0], d[:, 1], atol=1e-12)
        sd = np.sqrt([0.09, 0.16])[list(assign)]
        assert np.all(v >= sd) and np.all(v - sd < 6 * 0.005 * 1000 ** -0.25)
    counts = {a: seen.count(a) for a in set(seen)}
    assert set(counts) == {(0, 0, 1), (0, 1, 1), (1, 0, 1)} and min(counts.values()) > 70


def test_registered_starts_and_em_options_refuse_what_they_cannot_mean(tmp_path):
    from moe_estimation.lab.fit import register_start

    with pytest.raises(ValueError, match="name: a start schedule's name must be a new"):
        register_start("random", lambda *a: None)
    with pytest.raises(ValueError, match="name: a start schedule named 'sgame-source' exists already"):
        register_start("sgame-source", lambda *a: None)
    with pytest.raises(ValueError, match="init: 'sgame-source' is the start of a softmax-gated"):
        lab.fit(jax.random.key(0), *_linear_pair()[:1], np.zeros((50, 2)), np.zeros((50, 1)), 2,
                truth=_linear_pair()[2], init="sgame-source")
    text = LAB_TOML.format(steps=20)
    with pytest.raises(ValueError, match="fit.em_tol: an option of EM"):
        _parse(tmp_path, text.replace("restarts = 1", "restarts = 1\nem_tol = 1e-6"))
    gm = text.replace('gate = "sigmoid"', 'gate = "softmax"').replace("[model]", '[model]\nlikelihood = "gaussian"').replace(
        "gate = [[3.0, 1.0], [-3.0, 0.0]]", "gate = [[3.0, 1.0], [0.0, 0.0]]").replace("[fit]", '[fit]\nestimator = "em"')
    assert dict(_parse(tmp_path, gm).em_options)["em_gate_steps"] == 5
    assert dict(_parse(tmp_path, gm.replace("[fit]", "[fit]\nem_gate_steps = 300\nem_gate_tol = 1e-7")).em_options) == \
        {"em_tol": 1e-8, "em_gate_steps": 300, "em_gate_tol": 1e-7, "em_abort": 0, "em_gate_step": "newton"}
    with pytest.raises(ValueError, match="fit.em_gate_steps: expected an integer >= 1"):
        _parse(tmp_path, gm.replace("[fit]", "[fit]\nem_gate_steps = 0.5"))
    with pytest.raises(ValueError, match="fit.em_abort: expected an integer >= 0, got -1"):
        _parse(tmp_path, gm.replace("[fit]", "[fit]\nem_abort = -1"))
    with pytest.raises(ValueError, match="fit.em_gate_step: expected one of \\('newton', 'coordinate'\\), got 'gradient'"):
        _parse(tmp_path, gm.replace("[fit]", '[fit]\nem_gate_step = "gradient"'))
    assert dict(_parse(tmp_path, gm.replace("[fit]", "[fit]\nem_abort = 20")).em_options)["em_abort"] == 20
    one = gm.replace("[grid]", '[grid]\nspecifications = ["over"]').replace("num_bootstrap = 100", "num_bootstrap = 100\ntheory = { voronoi = -0.5 }")
    assert _parse(tmp_path, one).theory["voronoi"] == {"over": -0.5}  # one slope: for the specifications fitted


def test_a_pinned_laplace_gate_is_a_mixture_density_s_gate():
    """LaplaceGate('pinned'): softmax over the K components of -|W_k - x| + b_k, weights summing to one (so the
    Gaussian likelihood takes it), the last bias pinned at 0 by the box, and the loss compares canonical biases."""
    gate = lab.LaplaceGate("pinned")
    theta = jnp.asarray([[0.3, -0.5], [-0.2, 0.0]])
    x = jnp.asarray([0.4])
    w = gate.weights(theta, x)
    assert float(w.sum()) == pytest.approx(1.0, abs=1e-15)
    np.testing.assert_allclose(w, jax.nn.softmax(-jnp.abs(theta[:, 0] - 0.4) + theta[:, 1]), rtol=1e-9)  # |.| smoothed at 1e-6
    np.testing.assert_allclose(gate.canonical(theta), gate.canonical(theta.at[:, 1].add(0.7)), atol=1e-14)
    lo, hi = gate.box(1, 10.0, 2)
    assert lo[-1, -1] == hi[-1, -1] == 0.0 and lo[0, -1] == -10.0
    lab.Assembly(gate=gate, expert=lab.LinearExpert(), input=lab.InputLaw(low=0.0, high=1.0), likelihood="gaussian")
    with pytest.raises(ValueError, match="gate: the Gaussian likelihood is a mixture density"):
        lab.Assembly(gate=lab.LaplaceGate(), expert=lab.LinearExpert(), input=lab.InputLaw(), likelihood="gaussian")
    with pytest.raises(ValueError, match="reference: expected 'extra' or 'pinned'"):
        lab.LaplaceGate("none")
