"""Numbers that looked fine and were not: each case as it was found, and what it does now."""

import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import moe_estimation as me
from moe_estimation.experiments.config import parse_config
from moe_estimation.rates import empirical_rate, percentile_interval
from moe_estimation.experiments.results import RunLog, rate_entries
from moe_estimation.solver import Normal, Status, solve
from moe_estimation.experiments.study import run_study

from conftest import REFERENCE, ROOT

sys.path.insert(0, str(ROOT / "simulations"))
import summarize  # noqa: E402


# -- the solver's start and box


def _quadratic(target):
    return lambda t: Normal(0.5 * jnp.sum((t - target) ** 2), t - target, jnp.eye(t.shape[0]))


def test_a_start_outside_the_box_is_projected_not_reported_converged():
    """It returned "converged" (gtol, 0 steps) at the start itself; now it starts at the box's nearest point."""
    lin = _quadratic(jnp.array([0.5, 0.5]))
    sol = solve(lin, jnp.array([5.0, -5.0]), jnp.zeros(2), jnp.ones(2))
    np.testing.assert_allclose(sol.value, [0.5, 0.5], atol=1e-8)
    assert me.is_converged(int(sol.status)) and int(sol.steps) >= 1


def test_a_box_with_lower_above_upper_is_refused_and_never_converges_under_jit():
    lin = _quadratic(jnp.zeros(2))
    with pytest.raises(ValueError, match=r"lower\[1\] = 2.0 > upper\[1\] = 1.0"):
        solve(lin, jnp.zeros(2), jnp.array([0.0, 2.0]), jnp.array([1.0, 1.0]))
    with pytest.raises(ValueError, match="theta0: the start must be finite"):
        solve(lin, jnp.array([jnp.nan, 0.0]), jnp.zeros(2), jnp.ones(2))
    sol = jax.jit(lambda lo, hi: solve(lin, jnp.zeros(2), lo, hi))(jnp.array([0.0, 2.0]), jnp.array([1.0, 1.0]))
    assert Status(int(sol.status)) == Status.STALLED and int(sol.steps) == 0


# -- losses of measures with negative weights


def test_negative_weights_are_refused_and_score_nan_under_jit():
    """d2_loss returned a negative loss for a negative weight."""
    atoms, true = jnp.zeros((2, 2)), jnp.ones((2, 2))
    with pytest.raises(ValueError, match="weights: the weights of a mixing measure must be >= 0"):
        me.d2_loss(jnp.array([-1.0, 1.0]), atoms, jnp.ones(2), true)
    with pytest.raises(ValueError, match="true_weights"):
        me.d2_loss(jnp.ones(2), atoms, jnp.array([1.0, -0.5]), true)
    out = jax.jit(me.d2_loss)(jnp.array([-1.0, 1.0]), atoms, jnp.ones(2), true)
    assert np.isnan(float(out))


# -- rates: one replicate, zeros


def test_one_replicate_per_size_gives_no_interval():
    """empirical_rate gave a zero-width "95% interval" from one replicate per n."""
    ns = [100, 200, 400]
    with pytest.raises(ValueError, match="at least two finite losses .* got 1 at n = 100"):
        empirical_rate(ns, [[1.0], [0.7], [0.5]])
    (entry,) = rate_entries(np.array(ns), np.array([[1.0, np.nan], [0.7, 0.6], [0.5, 0.4]]), num_bootstrap=200, seed=0,
                            statistics=("mean",))
    assert np.isfinite(entry["slope"]) and np.isnan(entry["ci_low"]) and "one positive finite loss at n = [100]" in entry["note"]


def test_exact_zeros_are_values_in_the_rates_as_in_the_figures():
    """rates.csv left exact zeros out of its means: a loss zero in some fits was averaged over the others, and
    its slope could change sign. The mean of (0, 0, 3) is 1."""
    ns = np.array([100, 1000])
    mat = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 3.0]])  # mean 1 and 1: slope 0 (leaving the zeros out gave +0.48)
    mean, median = rate_entries(ns, mat, num_bootstrap=400, seed=0, statistics=("mean", "median"))
    assert mean["slope"] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(median["slope"]) and "the median is 0 at n = [1000]" in median["note"]
    assert mean["ci_low"] == -np.inf  # resamples drawing only the zeros at n = 1000 have no slope: counted in both tails
    with pytest.raises(ValueError, match="the median over replicates is 0 at n"):
        empirical_rate(ns, mat, statistic="median")
    with pytest.raises(ValueError, match="every loss must be >= 0"):
        empirical_rate(ns, [[1.0, 1.0], [-1.0, 1.0]])


def test_undefined_bootstrap_slopes_widen_the_interval_on_both_sides():
    slopes = np.linspace(-1, 1, 1000)
    assert percentile_interval(slopes, 0.95) == pytest.approx(tuple(np.quantile(slopes, [0.025, 0.975])))
    few = slopes.copy()
    few[:10] = np.nan  # 1%: inside either tail's 2.5%, the interval stays finite and wider than the finite slopes'
    lo, hi = percentile_interval(few, 0.95)
    finite = few[~np.isnan(few)]
    assert np.isfinite(lo) and np.isfinite(hi)
    assert lo <= np.quantile(finite, 0.025) and hi >= np.quantile(finite, 0.975)
    many = slopes.copy()
    many[:100] = np.nan
    assert percentile_interval(many, 0.95) == (-np.inf, np.inf)


# -- too few residuals, booleans where numbers belong


def test_fewer_residuals_than_parameters_are_refused():
    """A fit of 3 rows (6 residuals) for 9 parameters came back "converged"; a grid of n = 1, 2, 3 was rated."""
    prob = me.preset("shared-linear")
    with pytest.raises(ValueError, match="6 residuals .* fewer than the 9 parameters"):
        me.fit(jax.random.key(0), prob, jnp.zeros((3, 2)), jnp.zeros((3, 2)), num_prompts=3)
    with pytest.raises(ValueError, match=r"grid\.ns: for problem 'shared-linear'.*use n >= 5"):
        parse_config(dict(REFERENCE, grid=dict(REFERENCE["grid"], ns=[1, 2, 3])))


@pytest.mark.parametrize("table, key", [
    (dict(preset="shared-linear", noise_var=True), "noise_var"),
    (dict(preset="shared-linear", true_biases=[True, 0.3]), "true_biases"),
    (dict(preset="shared-linear", bias_bounds=[-3, True]), "bias_bounds"),
])
def test_a_boolean_is_no_number(table, key):
    with pytest.raises(ValueError, match=f"problems.a.*{key}"):
        parse_config(dict(REFERENCE, grid=dict(REFERENCE["grid"], problems=["a"]), problems={"a": table}))


# -- provenance, summaries, figures


def test_a_resume_keeps_the_first_runs_provenance_and_logs_every_run(reference_study, tmp_path):
    """Every resume rewrote config.json's versions, platform and device: a study begun on one machine and
    finished on another read as one run of the last."""
    out = tmp_path / "study"
    shutil.copytree(reference_study, out)
    meta = json.loads((out / "config.json").read_text())
    meta["platform"] = "the machine that began it"
    (out / "config.json").write_text(json.dumps(meta))
    before = len(RunLog(out / "runs.jsonl").read())
    run_study(parse_config(REFERENCE), out, progress=False, log=lambda *a: None)
    assert json.loads((out / "config.json").read_text())["platform"] == "the machine that began it"
    events = RunLog(out / "runs.jsonl").read()[before:]
    assert [e["event"] for e in events] == ["start", "end"]
    assert events[0]["platform"] != "the machine that began it" and events[0]["tasks_to_fit"] == 0
    assert events[1]["tasks_fitted"] == 0 and "versions" in events[0]


def test_study_table_shows_every_schedule(tmp_path):
    """summarize --study printed the first schedule's rows under a caption naming both."""
    table = summarize.study_table(ROOT / "tables" / "restarts-quick")
    for sched in ("random-8", "random-16", "random-32", "best-of-all"):
        assert f"| {sched} |" in table
    f = pd.read_csv(ROOT / "tables" / "restarts-quick" / "fits.csv")
    per_arm = len(f) // (f["schedule"].nunique() * f["problem"].nunique())  # the fits of one problem and schedule
    assert f"/{per_arm} |" in table and f"/{2 * per_arm} |" not in table


def test_two_studies_are_not_drawn_into_one_folder(tmp_path):
    """plot --results A B overwrote A's figures with B's (same file names) without a word."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        shutil.copytree(ROOT / "tables" / "quick", d)
    with pytest.raises(ValueError, match="both rate studies.*separate --out"):
        me_plots().plot_results([a, b], tmp_path / "fig")
    assert not (tmp_path / "fig").exists()


def test_parts_legend_slopes_follow_the_rate_window():
    """The parts figures' legend slopes ignored the configuration's rate window."""
    from moe_estimation.report.plots import window_slope

    ns = np.array([100.0, 1000.0, 10000.0])
    y = np.array([1.0, 0.1, 1.0])
    assert window_slope(ns, y, (100, 1000)) == pytest.approx(-1.0)
    assert window_slope(ns, y) == pytest.approx(0.0)
    assert np.isnan(window_slope(ns, np.array([1.0, 0.0, 1.0])))


def me_plots():
    import matplotlib

    matplotlib.use("Agg")
    from moe_estimation.report import plots

    return plots


# -- the commands a researcher reaches for


def test_version_presets_show_config_and_dry_run(capsys):
    from moe_estimation.cli import main
    from moe_estimation.experiments.config import STUDY_PRESETS, study_preset

    with pytest.raises(SystemExit):
        main(["--version"])
    assert me.__version__ in capsys.readouterr().out
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {name} " in listed for name in STUDY_PRESETS)
    assert main(["study", "--preset", "tiny", "--show-config"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(study_preset("tiny").to_dict()))
    assert main(["study", "--preset", "tiny", "--dry-run", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "8 cells, 16 fits" in out and "estimate: about" in out
    assert main(["study", "--preset", "tiny"]) == 2
    assert "--out is required" in capsys.readouterr().err


def test_summarize_command_prints_every_table_a_folder_gives(capsys, tmp_path):
    from moe_estimation.cli import main

    assert main(["summarize", str(ROOT / "tables" / "quick"), str(ROOT / "tables" / "transformer-quick")]) == 0
    out = capsys.readouterr().out
    assert summarize.study_table(ROOT / "tables" / "quick") in out
    assert summarize.failing_markdown(ROOT / "tables" / "quick") in out
    assert summarize.transformer_table(ROOT / "tables" / "transformer-quick") in out
    assert main(["summarize", str(tmp_path)]) == 2
    assert "holds no run's tables" in capsys.readouterr().err


# -- the fault battery: every door answers with one line naming the argument or the file, exit 2, nothing written

BAD_FILES = {
    "empty.toml": "", "notoml.toml": "[[[ not toml", "binary.toml": b"\xff\xfe\x00garbage",
    "slash.toml": "[grid]\nns = [100, 200]\nreplicates = 2\nproblems = ['a/b']\n[problems.'a/b']\npreset = 'shared-linear'\n",
    "dots.toml": "[grid]\nns = [100, 200]\nreplicates = 2\nproblems = ['../x']\n[problems.'../x']\npreset = 'shared-linear'\n",
    "sched.toml": "[grid]\nns = [100, 200]\nreplicates = 2\n[schedules.'x/y']\ninit = 'random'\n",
    "shape.toml": "[grid]\nns = [100, 200]\nreplicates = 2\nproblems = ['a']\n[problems.a]\npreset = 'non-shared'\n"
                  "true_atoms = [[0.1, 0.2], [0.3, 0.4]]\n",
    "huge.toml": "[grid]\nns = [100, 10000000000]\nreplicates = 2\n",
    "tiny.toml": "[grid]\nns = [2, 3]\nreplicates = 2\n",
    "truth.toml": "[grid]\nns = [100, 200]\nreplicates = 2\nproblems = ['a']\n[problems.a]\npreset = 'shared-linear'\n"
                  "noise_var = true\n",
}
CLI_BATTERY = [
    (["study", "--config", "{d}/empty.toml", "--out", "{d}/o"], "grid: the [grid] table is required"),
    (["study", "--config", "{d}/notoml.toml", "--out", "{d}/o"], "notoml.toml: not valid TOML"),
    (["study", "--config", "{d}/binary.toml", "--out", "{d}/o"], "binary.toml: not a text file"),
    (["study", "--config", "{d}/slash.toml", "--out", "{d}/o"], "'a/b' is not safe as part of a file name"),
    (["study", "--config", "{d}/dots.toml", "--out", "{d}/o"], "'../x' is not safe"),
    (["study", "--config", "{d}/sched.toml", "--out", "{d}/o"], "schedules.x/y: 'x/y' is not safe"),
    (["study", "--config", "{d}/shape.toml", "--out", "{d}/o"], "problems.a: Shape mismatch in true_atoms"),
    (["study", "--config", "{d}/huge.toml", "--out", "{d}/o"], "grid.ns: n = 10000000000"),
    (["study", "--config", "{d}/tiny.toml", "--out", "{d}/o"], "grid.ns: for problem"),
    (["study", "--config", "{d}/truth.toml", "--out", "{d}/o"], "problems.a: noise_var"),
    (["study", "--preset", "tiny", "--out", "{d}/badjson"], "badjson/config.json is not a study's config.json"),
    (["study", "--preset", "tiny", "--out", "{d}/emptyfits"], "emptyfits/fits.csv is damaged"),
    (["study", "--preset", "tiny", "--out", "{d}/garbfits"], "garbfits/fits.csv is damaged"),
    (["study", "--preset", "tiny"], "--out is required"),
    (["study", "--preset", "tiny", "--out", "{d}/o", "--coordinator", "h:1"], "--coordinator: applies only with --distributed"),
    (["study", "--preset", "tiny", "--out", "{d}/o", "--num-processes", "2"], "--num-processes: applies only"),
    (["study", "--preset", "tiny", "--out", "{d}/o", "--process-id", "1"], "--process-id: applies only"),
    (["study", "--preset", "tiny", "--out", "{d}/o", "--workers", "zero"], "--workers: must be an integer"),
    (["summarize", "{d}/garbfits"], "holds fits but no rates.csv"),
    (["summarize", "{d}"], "holds no run's tables"),
    (["power", "--preset", "tiny", "--results", "{d}/garbfits2"], "is not a readable fits table"),
    (["power", "--preset", "tiny", "--sims", "0"], "--sims"),
    (["inverse-bound", "--out", "{d}/o", "--starts", "1"], "starts: need at least 2"),
    (["inverse-bound", "--out", "{d}/o", "--points", "-5"], "points: must be an integer >= 1"),
    (["inverse-bound", "--out", "{d}/o", "--problem", "nope"], "--problem: expected distinct preset names"),
    (["inverse-bound", "--out", "{d}/o", "--deltas", "0.1", "-1"], "--deltas"),
    (["inverse-bound", "--out", "{d}/o", "--no-le-cam", "--le-cam-ns", "100"], "--le-cam-ns: sets the Le Cam table"),
    (["bench", "--steps", "5"], "--steps: applies only with --step"),
    (["bench", "--fits", "0"], "--fits"),
    (["transformer", "--preset", "tiny", "--out", "{d}/o", "--workers", "0"], "workers: must be an integer >= 1"),
]


@pytest.mark.parametrize("i", range(len(CLI_BATTERY)))
def test_fault_battery_command_line_more_doors(tmp_path, capsys, i):
    from moe_estimation.cli import main

    for name, text in BAD_FILES.items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    for folder, fits in (("badjson", None), ("emptyfits", b""), ("garbfits", b"\x00\xff garbage\n"), ("garbfits2", b"\xff\xfe")):
        (tmp_path / folder).mkdir()
        if fits is None:
            (tmp_path / folder / "config.json").write_text("{not json")
        else:
            (tmp_path / folder / "fits.csv").write_bytes(fits)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    args, word = CLI_BATTERY[i]
    assert main([a.format(d=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert word in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


API_BATTERY = [
    (lambda: me.key_value_loss(me.preset("shared-linear"), me.true_params(me.preset("non-shared"))), "Shape mismatch in atoms"),
    (lambda: me.predict(me.preset("shared-linear"), me.true_params(me.preset("non-shared")), jnp.zeros((3, 2))),
     "another structure"),
    (lambda: me.identified_key_value(me.preset("non-shared"), me.true_params(me.preset("shared-linear"))), "Shape mismatch"),
    (lambda: me.fit(0, me.preset("shared-linear"), jnp.zeros((10, 2)), jnp.zeros((10, 2)), 2), "key: expected a JAX PRNG key"),
    (lambda: me.fit_batch(np.zeros(1), me.preset("shared-linear"), jnp.zeros((1, 10, 2)), jnp.zeros((1, 10, 2)), 2),
     "keys: expected JAX PRNG keys"),
    (lambda: me.simulate(jax.random.key(0), me.preset("shared-linear"), 10**12), "n: 1000000000000 needs about"),
    (lambda: me.preset("shared-linear", seed=-3), "seed: must be an integer >= 0"),
    (lambda: me.random_pretrained(seed=-1), "seed: must be an integer >= 0"),
    (lambda: solve(_quadratic(jnp.zeros(2)), jnp.zeros(2), jnp.zeros(3), jnp.ones(3)), "Shape mismatch in lower, upper"),
    (lambda: me.voronoi_parts([1.0], [[0.0]], [1.0], [[0.0]], smooth=-1.0), "smooth"),
    (lambda: me.make_problem(**me.random_pretrained(0), B=np.eye(2), C=np.eye(2), W1=np.eye(2), W2=np.eye(2),
                             true_atoms=[[0.1, 0.2]], true_biases=[0.0], noise_var=True), "noise_var"),
    (lambda: me.make_problem(**me.random_pretrained(0), B=np.eye(2), C=np.eye(2), W1=np.eye(2), W2=np.eye(2),
                             true_atoms=[[0.1, True]], true_biases=[0.0]), "true_atoms: expected a numeric array"),
]


@pytest.mark.parametrize("i", range(len(API_BATTERY)))
def test_fault_battery_api_more(i):
    call, word = API_BATTERY[i]
    with pytest.raises(ValueError, match=word):
        call()


def test_a_wait_on_another_hosts_lock_says_what_it_waits_for(tmp_path):
    """--wait on a lock held by another host waited without a word: its process cannot be checked from here."""
    import threading

    from moe_estimation.experiments.results import StudyLock

    lock = tmp_path / ".lock"
    lock.write_text(json.dumps(dict(pid=1, host="another-host", started="then")))
    said = []
    threading.Timer(0.5, lambda: lock.unlink()).start()
    with StudyLock(tmp_path, wait=True, log=said.append, poll=0.05):
        pass
    assert len(said) == 1 and "another-host" in said[0] and "cannot be checked from here" in said[0]


@pytest.mark.study
def test_a_study_of_another_design_is_refused_naming_what_differs(reference_study, tmp_path, capsys):
    """The refusal said "its config.json differs" and not which setting, nor what to do."""
    from moe_estimation.cli import main

    out = tmp_path / "study"
    shutil.copytree(reference_study, out)
    toml = tmp_path / "other.toml"
    from conftest import reference_toml

    reference_toml(toml)
    toml.write_text(toml.read_text().replace("max_steps = 15", "max_steps = 30"))
    assert main(["study", "--config", str(toml), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "fit.max_steps: 15 -> 30" in err and "--repair" in err
    (out / "config.json").unlink()  # as the message says: the fits of the other design are found by their fingerprint
    assert main(["study", "--config", str(toml), "--out", str(out), "--no-progress"]) == 2
    assert "damaged" in capsys.readouterr().err
    assert main(["study", "--config", str(toml), "--out", str(out), "--no-progress", "--repair"]) == 0
    assert (pd.read_csv(out / "fits.csv")["design"].nunique()) == 2  # exact and over: this design's, refitted
