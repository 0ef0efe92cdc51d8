"""Nothing computed is lost or silently wrong: damaged tables are refused and repaired, one writer per
study, a clear one-line error at every door, and no non-finite parameter scores as a finite loss."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import moe_estimation as me
from moe_estimation.experiments.config import load_config, parse_config
from moe_estimation.experiments.study import StudyLock, run_study

from conftest import REFERENCE, REFERENCE_CELLS, reference_toml

REPLICATES = REFERENCE["grid"]["replicates"]


def _fits(path):
    return pd.read_csv(path / "fits.csv").drop(columns="seconds")


def _same_tables(out, reference):
    """``out`` holds the reference study's tables (the seconds aside)."""
    from moe_estimation.experiments.study import TABLES

    pd.testing.assert_frame_equal(_fits(out), _fits(reference))
    for name in TABLES:
        pd.testing.assert_frame_equal(pd.read_csv(out / name), pd.read_csv(reference / name))


def _damaged(reference, tmp_path, how):
    out = tmp_path / "study"
    shutil.copytree(reference, out)
    path = out / "fits.csv"
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    if how == "cut mid-row":
        path.write_text(text[: len(text) - len(lines[-1]) // 2])
    elif how == "cut at a row's end":  # a whole row gone: its cell has one replicate too few
        path.write_text("".join(lines[:-1]))
    elif how == "duplicated cell":  # the first cell's rows once more
        path.write_text(text + "".join(lines[1 : 1 + REPLICATES]))
    elif how == "missing column":
        pd.read_csv(path).drop(columns="objective").to_csv(path, index=False)
    elif how == "foreign row":
        row = lines[1].split(",")
        row[0] = "prompt-tuning"
        path.write_text(text + ",".join(row))
    elif how == "malformed number":
        row = lines[2].split(",")
        row[4] = "12O"
        lines[2] = ",".join(row)
        path.write_text("".join(lines))
    elif how == "other settings":  # a row fitted with another schedule's restarts: not this study's
        df = pd.read_csv(path)
        df.loc[0, "restarts"] = 7
        df.to_csv(path, index=False, float_format="%.17g")
    return out


@pytest.mark.study
@pytest.mark.parametrize("how", ["cut mid-row", "cut at a row's end", "duplicated cell", "missing column",
                                 "foreign row", "malformed number", "other settings"])
def test_damaged_table_is_refused_then_repaired(reference_study, tmp_path, how):
    out = _damaged(reference_study, tmp_path, how)
    before = (out / "fits.csv").read_bytes()
    with pytest.raises(ValueError, match=r"fits.csv is damaged: .*--repair") as e:
        run_study(parse_config(REFERENCE), out, progress=False, log=lambda *a: None)
    assert "\n" not in str(e.value)
    assert (out / "fits.csv").read_bytes() == before  # refused without touching anything
    assert not (out / ".lock").exists()
    said = []
    run_study(parse_config(REFERENCE), out, progress=False, log=said.append, repair=True)
    assert any("repairing" in s for s in said)
    _same_tables(out, reference_study)


def test_params_of_another_shape_damage_their_cell(reference_study, tmp_path):
    """A fit whose ``params`` hold a number too few (or too many) is no fit of this study: its cell is
    damaged and named, the other cells stay."""
    from moe_estimation.experiments.results import check_fits_table

    out = tmp_path / "study"
    shutil.copytree(reference_study, out)
    df = pd.read_csv(out / "fits.csv", dtype=str, keep_default_na=False)
    df.loc[0, "params"] = " ".join(df.loc[0, "params"].split()[:-1])
    df.loc[len(df) - 1, "params"] += " 0.5"
    df.to_csv(out / "fits.csv", index=False)
    keep, problems = check_fits_table(out / "fits.csv", parse_config(REFERENCE))
    assert any("2 row(s) that belong to no cell" in p for p in problems), problems
    assert any("damaged cells: shared-linear exact default n=100" in p for p in problems), problems
    assert len(keep) == (REFERENCE_CELLS - 2) * REPLICATES


@pytest.mark.parametrize("change", ["max_steps", "noise_var", "bias_bounds"])
def test_fits_of_another_design_are_refused_without_config_json(reference_study, tmp_path, change):
    """With config.json deleted (nothing compares the configurations), a study rerun under another fit
    setting, noise or seed finds that every row was fitted under another design and refuses to resume."""
    out = tmp_path / "study"
    shutil.copytree(reference_study, out)
    (out / "config.json").unlink()
    before = (out / "fits.csv").read_bytes()
    other = dict(REFERENCE)
    if change == "max_steps":
        other["fit"] = dict(REFERENCE["fit"], max_steps=400)
    elif change == "noise_var":
        other["problems"] = {"shared-linear": dict(preset="shared-linear", noise_var=0.04)}
    else:
        other["problems"] = {"shared-linear": dict(preset="shared-linear", bias_bounds=[-4.0, 3.0])}
    with pytest.raises(ValueError, match=r"fits.csv is damaged: .*fitted under another design") as e:
        run_study(parse_config(other), out, progress=False, log=lambda *a: None)
    assert f"{REFERENCE_CELLS * REPLICATES} row(s) fitted under another design" in str(e.value)
    assert (out / "fits.csv").read_bytes() == before


def test_a_compressed_study_is_read_as_it_is_and_resumed_only_unpacked(reference_study, tmp_path):
    """A study committed as fits.csv.gz: check_fits_table and every reader take it as it is (the same rows as
    the plain file); a run into that folder refuses, names the file and how to unpack it, and writes nothing."""
    import gzip

    from moe_estimation.experiments.results import check_fits_table, fits_file

    out = tmp_path / "packed"
    shutil.copytree(reference_study, out)
    plain = (out / "fits.csv").read_bytes()
    assert fits_file(out) == out / "fits.csv"
    (out / "fits.csv.gz").write_bytes(gzip.compress(plain))
    assert fits_file(out) == out / "fits.csv"  # the plain file wins where both are there
    (out / "fits.csv").unlink()
    assert fits_file(out) == out / "fits.csv.gz"
    cfg = parse_config(REFERENCE)
    packed, problems = check_fits_table(fits_file(out), cfg)
    unpacked, _ = check_fits_table(reference_study / "fits.csv", cfg)
    assert not problems and packed.equals(unpacked)
    with pytest.raises(ValueError, match=r"fits.csv.gz.*gunzip -k") as e:
        run_study(cfg, out, progress=False, log=lambda *a: None)
    assert str(out) in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == sorted([p.name for p in reference_study.iterdir()
                                                            if p.name != "fits.csv"] + ["fits.csv.gz"])
    assert fits_file(tmp_path / "nothing") == tmp_path / "nothing" / "fits.csv"


@pytest.mark.study
def test_a_finished_study_grows_by_a_problem_without_refitting_its_cells(reference_study, tmp_path):
    """The README's way to add a problem to a finished study: its fits.csv copied into a new folder without
    config.json, the larger configuration run there. Every old row is kept byte for byte (its design
    fingerprint matches), only the new problem's cells are fitted, and they are the cells a fresh run of
    the larger study makes."""
    out = tmp_path / "grown"
    out.mkdir()
    shutil.copy(reference_study / "fits.csv", out / "fits.csv")
    old = (reference_study / "fits.csv").read_text().splitlines()
    grown = dict(REFERENCE, grid=dict(REFERENCE["grid"], problems=["shared-linear", "shared-nonlinear"]))
    said = []
    run_study(parse_config(grown), out, progress=False, log=said.append)
    assert any(f"resuming: {REFERENCE_CELLS} of {2 * REFERENCE_CELLS} cells" in s for s in said), said
    new = (out / "fits.csv").read_text().splitlines()
    assert set(old) <= set(new) and len(new) == 2 * len(old) - 1  # one header
    fresh = tmp_path / "fresh"
    run_study(parse_config(dict(grown, grid=dict(grown["grid"], problems=["shared-nonlinear"]))), fresh,
              progress=False, log=lambda *a: None)
    grown_rows = pd.read_csv(out / "fits.csv", dtype=str, keep_default_na=False)
    fresh_rows = pd.read_csv(fresh / "fits.csv", dtype=str, keep_default_na=False)
    added = grown_rows[grown_rows["problem"] == "shared-nonlinear"].drop(columns="seconds").reset_index(drop=True)
    pd.testing.assert_frame_equal(added, fresh_rows.drop(columns="seconds"))  # every column but the time


@pytest.mark.study
def test_repair_recomputes_only_the_damaged_cells(reference_study, tmp_path):
    out = _damaged(reference_study, tmp_path, "duplicated cell")
    said = []
    run_study(parse_config(REFERENCE), out, progress=False, log=said.append, repair=True)
    assert any(f"resuming: {REFERENCE_CELLS - 1} of {REFERENCE_CELLS} cells" in s for s in said), said


def _start(conf, out, env):
    """A study on ``out`` started in another process (to be killed, or raced)."""
    return subprocess.Popen([sys.executable, "-m", "moe_estimation.cli", "study", "--config", str(conf), "--out",
                             str(out), "--no-progress"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _lock_owner(out, proc, timeout=300):
    """The owner recorded in ``out/.lock`` once the process ``proc`` has written it whole."""
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        try:
            return json.loads((out / ".lock").read_text())
        except (OSError, ValueError):  # not there yet, or created and not yet written
            time.sleep(0.01)
    raise AssertionError(f"no lock in {out} (process ended: {proc.poll()})")


@pytest.mark.e2e
def test_one_writer_per_study_with_two_processes(tmp_path, cache_env, cli):
    """While one process writes a study, a run on the same --out (from this process) refuses, naming the
    first (process, host, start time); once the first is killed its lock is stale, and a third run takes
    over and finishes with the tables of a fresh run."""
    conf = reference_toml(tmp_path / "s.toml", ns=[100, 120, 140, 160, 180, 200])  # long enough to be caught
    out = tmp_path / "o"
    first = _start(conf, out, cache_env)
    try:
        owner = _lock_owner(out, first)
        assert owner["pid"] == first.pid
        second = cli("study", "--config", conf, "--out", out, "--no-progress")
        assert second.returncode == 2, second.stderr
        assert f"being written by process {first.pid}" in second.stderr and owner["started"] in second.stderr
        assert first.poll() is None, "the first run should still be writing"
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (out / ".lock").exists()  # a killed run cannot clean up: its lock is left behind
    third = cli("study", "--config", conf, "--out", out, "--no-progress")
    assert third.returncode == 0, third.stderr
    assert "stale lock" in third.stdout
    assert not (out / ".lock").exists()
    run_study(load_config(conf), tmp_path / "ref", progress=False, log=lambda *a: None)  # a fresh run
    pd.testing.assert_frame_equal(_fits(out), _fits(tmp_path / "ref"))


def test_lock_waits_when_asked(tmp_path):
    lock = StudyLock(tmp_path, log=lambda *a: None)
    with lock:
        with pytest.raises(ValueError, match="being written by process"):
            with StudyLock(tmp_path, log=lambda *a: None):
                pass
    with StudyLock(tmp_path, wait=True, poll=0.01, log=lambda *a: None):  # free again: taken at once
        assert (tmp_path / ".lock").exists()
    assert not (tmp_path / ".lock").exists()


@pytest.mark.e2e
@pytest.mark.parametrize("point", ["after the first cell", "at the first table write", "after the third cell"])
def test_kills_at_several_points_resume_to_identical_tables(reference_study, tmp_path, cache_env, cli, point):
    """SIGKILL once the run reaches a point (a finished cell, or the moment a temporary table file appears,
    that is during a write): the rerun resumes from what was saved and ends with the reference's tables, and
    ``--tables-only`` on the finished study rebuilds the same rates without fitting."""
    conf = reference_toml(tmp_path / "s.toml")
    out = tmp_path / "o"
    proc = _start(conf, out, cache_env)
    rows = {"after the first cell": REPLICATES, "after the third cell": 3 * REPLICATES}.get(point)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if rows is None and any(out.glob(".*.tmp*")):
            break
        if rows is not None and (out / "fits.csv").exists() and len(pd.read_csv(out / "fits.csv")) >= rows:
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    if rows is not None:
        done = len(pd.read_csv(out / "fits.csv"))
        assert done >= rows
        if point == "after the first cell":
            assert done < REFERENCE_CELLS * REPLICATES, "the kill should land part-way"
    r = cli("study", "--config", conf, "--out", out, "--no-progress")
    assert r.returncode == 0, r.stderr
    if rows is not None:
        assert "resuming" in r.stdout
    _same_tables(out, reference_study)
    assert not list(out.glob(".*.tmp*"))
    (out / "rates.csv").unlink()
    r = cli("study", "--config", conf, "--out", out, "--no-progress", "--tables-only")
    assert r.returncode == 0, r.stderr
    assert f"tables only: {REFERENCE_CELLS} finished cells, 0 not run" in r.stdout
    _same_tables(out, reference_study)


@pytest.mark.study
def test_a_write_interrupted_before_its_rename_loses_nothing(reference_study, tmp_path):
    """What a kill between writing the temporary file and renaming it leaves: the old table whole, half a
    temporary file beside it, and the lock. The rerun clears both and ends with the reference's tables."""
    out = tmp_path / "study"
    shutil.copytree(reference_study, out)
    df = pd.read_csv(out / "fits.csv")
    df.iloc[: 2 * REPLICATES].to_csv(out / "fits.csv", index=False, float_format="%.17g")  # two cells done
    (out / ".fits.csv.tmp99999").write_text(df.to_csv(index=False)[:500])
    (out / ".lock").write_text(json.dumps(dict(pid=2**22 + 12345, host=os.uname().nodename, started="then")))
    said = []
    run_study(parse_config(REFERENCE), out, progress=False, log=said.append)
    assert any("stale lock" in s for s in said) and any(f"resuming: 2 of {REFERENCE_CELLS}" in s for s in said)
    assert not list(out.glob(".*.tmp*")) and not (out / ".lock").exists()
    pd.testing.assert_frame_equal(_fits(out), _fits(reference_study))


# ------------------------------------------------------------------------------------------------
# no silent wrong number


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_parameters_never_score_a_finite_loss(value):
    for name in ("non-shared", "shared-linear"):
        prob = me.preset(name)
        p = me.true_params(prob)
        for bad in (me.Params(p.atoms.at[0, 0].set(value), p.biases), me.Params(p.atoms, p.biases.at[1].set(value))):
            for loss in (me.voronoi_loss(prob, bad), me.key_value_loss(prob, bad),
                         me.identified_key_value(prob, bad)["value"], me.structure_parts(prob, bad)["weight"]):
                assert np.isnan(float(loss))
        w, a = jnp.exp(p.biases), p.atoms
        assert np.isnan(float(me.d2_loss(w, a.at[1, 1].set(value), w, a)))
        assert np.isnan(float(me.d1r_loss(w, a.at[1, 1].set(value), w, a, split=1)))


def test_a_non_finite_fit_has_its_own_status_and_is_counted(reference_study):
    prob = me.preset("shared-linear")
    X, Y = me.simulate(jax.random.key(0), prob, 200)
    res = me.fit(jax.random.key(1), prob, X, Y * 1e200, 2, restarts=1, max_steps=5)  # every objective overflows
    assert me.Status(int(res.status)) is me.Status.NONFINITE and not bool(res.converged)
    from moe_estimation.experiments.study import rates_table

    cfg = parse_config(REFERENCE)
    fits = pd.read_csv(reference_study / "fits.csv")
    fits.loc[0, ["loss_own", "loss_key_value", "objective"]] = np.nan
    fits.loc[0, ["status", "converged"]] = ["nonfinite", False]
    rates = rates_table(fits, cfg)
    row = rates[(rates["specification"] == "exact") & (rates["loss"] == "own")].iloc[0]
    assert row["fits_nonfinite"] == 1 and row["fits_not_converged"] >= 1 and np.isfinite(row["slope"])


BAD_API = [
    # (call, error type, a word of the message)
    (lambda: me.fit_batch(jax.random.split(jax.random.key(0), 1), me.preset("shared-linear"), np.zeros((1, 10, 2)),
                          np.zeros((1, 10, 2)), 2, mask=np.full((1, 10), 0.5)), ValueError, "mask"),
    (lambda: me.fit_batch(jax.random.split(jax.random.key(0), 1), me.preset("shared-linear"), np.zeros((1, 10, 2)),
                          np.zeros((1, 10, 2)), 2, mask=np.full((1, 10), 2.0)), ValueError, "mask"),
    (lambda: me.fit_batch(jax.random.split(jax.random.key(0), 1), me.preset("shared-linear"), np.zeros((1, 10, 2)),
                          np.zeros((1, 10, 2)), 2, mask=np.full((1, 10), np.nan)), ValueError, "mask"),
    (lambda: me.fit_batch(jax.random.split(jax.random.key(0), 1), me.preset("shared-linear"), np.zeros((1, 10, 2)),
                          np.zeros((1, 10, 2)), 2, mask=-np.ones((1, 10))), ValueError, "mask"),
    (lambda: me.d1r_loss([1.0], [[0.0, 0.0]], [1.0], [[0.0, 0.0]], split=3), ValueError, "split"),
    (lambda: me.d1r_loss([1.0], [[0.0, 0.0]], [1.0], [[0.0, 0.0]], split=1, r=-1.0), ValueError, "r:"),
    (lambda: me.d1r_loss([1.0], [[0.0, 0.0]], [1.0], [[0.0, 0.0]], split=1, r=0.5), ValueError, "r:"),
    (lambda: me.d2_loss([1.0], [[0.0, 0.0, 0.0]], [1.0], [[0.0, 0.0]]), ValueError, "atoms"),
    (lambda: me.d2_loss([1.0, 2.0], [[0.0, 0.0]], [1.0], [[0.0, 0.0]]), ValueError, "weights"),
    (lambda: me.d2_loss([1.0], [0.0, 0.0], [1.0], [[0.0, 0.0]]), ValueError, "atoms"),
    (lambda: me.make_problem(structure="non-shared", W1=np.eye(2), W2=np.eye(2), **me.random_pretrained(0),
                             B=np.eye(2), C=np.eye(2), true_atoms=[[0.1, 0.2, 0.3, 0.4]], true_biases=[0.0]),
     ValueError, "W1, W2"),
    (lambda: me.simulate(jax.random.key(0), me.preset("shared-linear").replace(input_scale=1e200), 10), ValueError,
     "input_scale"),
    (lambda: me.empirical_rate([100, 200], [[0.1, np.inf], [0.05, 0.04]]), ValueError, "finite"),
    (lambda: me.empirical_rate([100, 200], [[0.1], [0.05]], num_bootstrap=0), ValueError, "num_bootstrap"),
    (lambda: me.empirical_rate([100, 200], [[0.1], [0.05]], seed=-5), ValueError, "seed"),
    (lambda: me.empirical_rate([100, 200], [[0.1], [-0.05]]), ValueError, ">= 0"),
    (lambda: me.fit(jax.random.key(0), me.preset("shared-linear"), np.zeros((10, 2)), np.zeros((10, 2)), 2,
                    init_rate=-1.0), ValueError, "init_rate"),
    (lambda: me.fit(jax.random.key(0), me.preset("shared-linear"), np.zeros((10, 2)), np.zeros((10, 2)), 2,
                    restarts=True), ValueError, "restarts"),
]


@pytest.mark.parametrize("i", range(len(BAD_API)))
def test_fault_battery_api(i):
    call, kind, word = BAD_API[i]
    with pytest.raises(kind, match=word):
        call()


BAD_CONFIGS = [
    ("seed = -5\n[grid]\nns = [100, 200]\nreplicates = 2\n", "seed: must be an integer in"),
    ("[grid]\nns = [100, 200]\nreplicates = 2\nproblems = ['p']\n[problems]\np = 3\n", "problems.p: expected a table"),
    ("[grid]\nns = [100, 200]\nreplicates = 2\nproblems = ['p']\n[problems.p]\npreset = 'shared-linear'\nB = 'eye'\n",
     "problems.p.B: expected a"),
    ("[grid]\nns = [100, 200]\nreplicates = 2\nproblems = ['p']\n[problems.p]\npreset = 'shared-linear'\nB = [[1, 'x'], [0, 1]]\n",
     "problems.p.B"),
    ("[grid]\nns = [100, 200]\nreplicates = 2\nproblems = ['p']\n[problems.p]\npreset = 7\n", "problems.p.preset"),
    ("[grid]\nns = [100, 200]\nreplicates = 2\nproblems = ['p']\n[problems.p]\npreset = 'shared-linear'\nbias_bounds = 3\n",
     "problems.p"),
    ("[grid]\nns = [100, 200]\nreplicates = 2\nproblems = ['shared-linear', 'shared-linear']\n", "distinct"),
    ("[grid]\nns = [100, 200]\nreplicates = 2\n[fit]\nmax_steps = 0\n", "max_steps"),
    ("[grid]\nns = [100, 200]\nreplicates = 2\n[rates]\nnum_bootstrap = 5\n", "num_bootstrap"),
]


@pytest.mark.parametrize("i", range(len(BAD_CONFIGS)))
def test_fault_battery_configuration_files(tmp_path, cli, i):
    """Each bad file: exit 2, one line naming the file and the key, no traceback, nothing written."""
    text, word = BAD_CONFIGS[i]
    conf = tmp_path / "bad.toml"
    conf.write_text(text)
    from moe_estimation.experiments.config import load_config

    with pytest.raises(ValueError, match=word):
        load_config(conf)
    if i < 3:  # and through the command line, for a few
        r = cli("study", "--config", conf, "--out", tmp_path / "o")
        assert r.returncode == 2 and "Traceback" not in r.stderr and "bad.toml" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "o").exists()


def test_fault_battery_command_line_doors(tmp_path, cli, reference_study):
    """Every door of the command line refuses bad input with exit 2 and one message (here in-process: an
    exception other than the ones main() turns into exit 2 fails the test)."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases = [
        (["study", "--preset", "tiny", "--out", str(afile)], "is a file"),
        (["study", "--preset", "tiny", "--out", str(afile / "sub")], "lies under the file"),
        (["study", "--preset", "tiny", "--out", str(tmp_path / "new"), "--tables-only"], "holds no fits.csv"),
        (["plot", "--results", str(reference_study), "--out", str(afile)], "is a file"),
        (["plot", "--results", str(reference_study), "--out", str(afile / "x")], "lies under the file"),
        (["plot", "--results", str(tmp_path / "nothing"), "--out", str(tmp_path / "f")], "holds neither"),
        (["transformer", "--preset", "tiny", "--out", str(afile)], "is a file"),
        (["study", "--preset", "nope", "--out", str(tmp_path / "x")], "invalid choice"),
        (["study", "--preset", "tiny", "--out", "/proc/moe-estimation-test/x"], "cannot create"),
        (["study", "--preset", "tiny", "--config", "x.toml", "--out", str(tmp_path / "x")], "exactly one of"),
    ]
    for args, word in cases:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert word in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
    assert not (tmp_path / "new").exists() and not (tmp_path / "f").exists() and not (tmp_path / "x").exists()


@pytest.mark.e2e
def test_two_jax_processes_give_the_tables_of_one(tmp_path, cache_env, reference_study):
    """The multi-host path, run: the reference study as two JAX processes on this machine (a local
    coordinator, CPU collectives), one device each, against the same study in one process (an odd number of
    replicates over two devices: the last chunk is padded)."""
    import socket

    conf = reference_toml(tmp_path / "s.toml")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    e = dict(cache_env, XLA_FLAGS="--xla_force_host_platform_device_count=1")
    procs = [subprocess.Popen([sys.executable, "-m", "moe_estimation.cli", "study", "--config", str(conf), "--out",
                               str(tmp_path / "two"), "--no-progress", "--distributed", "--coordinator",
                               f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in (0, 1)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (o, err) in zip(procs, outs):
        assert p.returncode == 0, err
    total = REFERENCE_CELLS * REPLICATES
    assert f"wrote {total} fits" in outs[0][0] and "wrote" not in outs[1][0]  # process 0 writes and reports
    meta = json.loads((tmp_path / "two" / "config.json").read_text())
    assert meta["processes"] == 2 and meta["devices"] == 2
    one = json.loads((reference_study / "config.json").read_text())
    assert one["processes"] == 1 and one["devices"] == 1
    _same_tables(tmp_path / "two", reference_study)
