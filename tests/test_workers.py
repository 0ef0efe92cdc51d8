"""Cells in worker processes (moe_estimation.experiments.workers): the same tables as one process, failures that keep
what was finished, and clear refusals of bad worker counts."""

import dataclasses
import os

import numpy as np
import pandas as pd
import pytest

from moe_estimation.experiments.workers import SINGLE_THREAD_XLA_FLAGS, available_cores, resolve_workers, run_cells


def _same_but_seconds(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a, b = (t.drop(columns="seconds").reset_index(drop=True) for t in (a, b))
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@pytest.mark.study
def test_study_with_workers_writes_the_one_process_table(tiny_runs, tmp_path):
    """The tiny study's non-shared cells fitted in two workers are the rows the one-process run
    (``tiny_runs``: ``study --preset tiny``, one process) wrote for them: a cell's numbers depend on its
    coordinates alone, not on the process or the other cells."""
    from moe_estimation.experiments.config import study_preset
    from moe_estimation.experiments.study import run_study

    cfg = dataclasses.replace(study_preset("tiny"), problems=("non-shared",))  # 4 cells: two sizes, two specifications
    two = run_study(cfg, tmp_path / "two", progress=False, log=lambda *a: None, workers=2)
    one = pd.read_csv(tiny_runs.study / "fits.csv")
    one = one[one["problem"] == "non-shared"]
    assert len(one) == len(two) == 2 * 2 * cfg.replicates
    _same_but_seconds(one, two)
    _same_but_seconds(one, pd.read_csv(tmp_path / "two" / "fits.csv"))
    rates_one = pd.read_csv(tiny_runs.study / "rates.csv")
    rates_one = rates_one[rates_one["problem"] == "non-shared"].reset_index(drop=True)
    pd.testing.assert_frame_equal(rates_one, pd.read_csv(tmp_path / "two" / "rates.csv"), check_exact=True)


@pytest.mark.e2e
def test_a_killed_run_with_workers_resumes_to_the_same_table(tmp_path, cache_env):
    """The lead is killed (SIGKILL) once a cell is in fits.csv: its workers stop, and the rerun, with
    workers, ends with the table of an uninterrupted one-process run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from moe_estimation.experiments.config import load_config
    from moe_estimation.experiments.study import run_study

    conf = tmp_path / "s.toml"
    conf.write_text("seed = 3\n[grid]\nns = [100, 150, 200]\nreplicates = 2\nproblems = ['non-shared']\n"
                    "[fit]\nrestarts = 1\nmax_steps = 20\n[rates]\nnum_bootstrap = 100\n")
    ref = run_study(load_config(conf), tmp_path / "ref", progress=False, log=lambda *a: None, workers=1)
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "moe_estimation.cli", "study", "--config", str(conf), "--out", str(out),
           "--no-progress", "--workers", "2"]
    env = dict(cache_env, MOE_ESTIMATION_CACHE="")
    lead = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not ((out / "fits.csv").is_file() and len(pd.read_csv(out / "fits.csv")) >= 2) and time.time() < deadline:
        assert lead.poll() is None, "the run ended before it could be killed"
        time.sleep(0.2)
    os.kill(lead.pid, signal.SIGKILL)
    lead.wait()
    kept = pd.read_csv(out / "fits.csv")
    assert 2 <= len(kept) < len(ref)
    (out / ".lock").unlink(missing_ok=True)  # a killed run's lock; the rerun would also see it is stale
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout
    _same_but_seconds(ref, pd.read_csv(out / "fits.csv"))
    gone = time.time() + 60  # the killed lead's workers stop once their cell is done (their pipes are closed)
    while time.time() < gone:
        try:
            os.killpg(lead.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        raise AssertionError("a worker of the killed run is still running a minute later")


@pytest.mark.study
def test_teacher_with_workers_writes_the_one_process_table(tiny_runs, tmp_path):
    """Two cells of teacher-tiny fitted in two workers are the rows the one-process run (``tiny_runs``)
    wrote for them, on the same backbone."""
    from moe_estimation.transformer.teacher import TEACHER_PRESETS, run_teacher

    study = TEACHER_PRESETS["teacher-tiny"]._replace(cases=(("shared", "simple-share"),), specifications=("over",))
    (tmp_path / "two").mkdir()
    (tmp_path / "two" / "backbone.npz").write_bytes((tiny_runs.teacher / "backbone.npz").read_bytes())
    two = run_teacher(study, tmp_path / "two", progress=False, log=lambda *a: None, workers=2)
    one = pd.read_csv(tiny_runs.teacher / "fits.csv")
    one = one[(one["parameterisation"] == "simple-share") & (one["specification"] == "over")]
    assert len(one) == len(two) == len(study.ns) * study.seeds
    # the same fits: XLA's multi-threaded kernels in the one process and the workers' single-threaded ones
    # sum the backbone's float64 products in another order, so the numbers agree to rounding, not bit for bit
    # (a solver's stopping point moves with that rounding: 1.7e-9 relative seen, on one yardstick of 68)
    # the recorded prefixes and masses (JSON lists of floats) likewise, entry by entry
    import json

    recorded = ["params", "attention_mass", "true_attention_mass"]
    a, b = (t.drop(columns="seconds").reset_index(drop=True) for t in (one, two))
    for col in recorded:
        for x, y in zip(a[col], b[col]):
            flat = lambda v: np.concatenate([np.ravel(u) for u in (v.values() if isinstance(v, dict) else [v])])
            np.testing.assert_allclose(flat(json.loads(y)), flat(json.loads(x)), rtol=1e-6, atol=1e-8)
    a, b = a.drop(columns=recorded), b.drop(columns=recorded)
    numeric = [c for c in a.columns if a[c].dtype.kind == "f"]
    pd.testing.assert_frame_equal(a.drop(columns=numeric), b.drop(columns=numeric), check_exact=True)
    np.testing.assert_allclose(b[numeric].to_numpy(float), a[numeric].to_numpy(float), rtol=1e-8, atol=1e-14)


def square_or_fail(x):
    """A task for the worker tests (module level: it is pickled by name)."""
    if x == 3:
        raise ValueError(f"x: three is refused, got {x}")
    return np.asarray([x * x])


def where_am_i(_):
    import os

    return sorted(os.sched_getaffinity(0)), os.environ.get("XLA_FLAGS", "")


@pytest.mark.e2e
def test_workers_are_pinned_and_single_threaded():
    got = {}
    run_cells(where_am_i, [(i,) for i in range(4)], lambda task, r: got.setdefault(task, r), workers=2)
    cores = available_cores()
    for affinity, flags in got.values():
        assert len(affinity) == 1 and affinity[0] in cores
        assert SINGLE_THREAD_XLA_FLAGS in flags
    if len(cores) >= 2:
        assert len({tuple(a) for a, _ in got.values()}) == 2  # two workers, two cores


@pytest.mark.e2e
def test_a_failing_task_raises_and_keeps_what_finished():
    done = {}
    with pytest.raises(ValueError, match="three is refused"):
        run_cells(square_or_fail, [(1,), (2,), (3,), (4,), (5,), (6,)], lambda t, r: done.setdefault(t[0], int(r[0])),
                  workers=2)
    assert done.get(1) == 1 and done.get(2) == 4  # started before the failure: finished and handed over
    assert 3 not in done
    assert not {5, 6} & set(done)  # no task starts after a failure is seen (4 may have been running beside 3)


def test_one_worker_runs_in_this_process_in_order():
    order = []
    run_cells(square_or_fail, [(2,), (1,)], lambda t, r: order.append((t[0], int(r[0]))), workers=1)
    assert order == [(2, 4), (1, 1)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "two"])
def test_bad_worker_counts_are_refused(bad):
    with pytest.raises(ValueError, match=r"workers: must be an integer >= 1"):
        resolve_workers(bad)


def test_cli_refuses_a_bad_workers_flag(tmp_path, capsys):
    from moe_estimation.cli import main

    assert main(["study", "--preset", "tiny", "--out", str(tmp_path / "x"), "--workers", "many"]) == 2
    assert "--workers: must be an integer >= 1 or 'auto', got 'many'" in capsys.readouterr().err
    assert main(["study", "--preset", "tiny", "--out", str(tmp_path / "x"), "--workers", "0"]) == 2
    assert "workers: must be an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "x" / "fits.csv").exists()
