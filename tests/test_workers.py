"""Cells in worker processes (moe_estimation.workers): the same tables as one process, failures that keep
what was finished, and clear refusals of bad worker counts."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

from moe_estimation.workers import SINGLE_THREAD_XLA_FLAGS, available_cores, resolve_workers, run_cells

pytestmark = pytest.mark.study


def _same_but_seconds(a: pd.DataFrame, b: pd.DataFrame) -> None:
    a, b = (t.drop(columns="seconds").reset_index(drop=True) for t in (a, b))
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_study_with_workers_writes_the_one_process_table(tmp_path):
    from moe_estimation.config import study_preset
    from moe_estimation.study import run_study

    tiny = study_preset("tiny")  # 4 cells: one problem, two sizes, both specifications
    cfg = dataclasses.replace(tiny, problems=("non-shared",))
    one = run_study(cfg, tmp_path / "one", progress=False, log=lambda *a: None, workers=1)
    two = run_study(cfg, tmp_path / "two", progress=False, log=lambda *a: None, workers=2)
    _same_but_seconds(one, two)
    _same_but_seconds(pd.read_csv(tmp_path / "one" / "fits.csv"), pd.read_csv(tmp_path / "two" / "fits.csv"))
    assert (tmp_path / "one" / "rates.csv").read_text() == (tmp_path / "two" / "rates.csv").read_text()


@pytest.mark.e2e
def test_a_killed_run_with_workers_resumes_to_the_same_table(tmp_path, cache_env):
    """The lead is killed (SIGKILL) once a cell is in fits.csv: its workers stop, and the rerun, with
    workers, ends with the table of an uninterrupted one-process run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from moe_estimation.config import load_config
    from moe_estimation.study import run_study

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
