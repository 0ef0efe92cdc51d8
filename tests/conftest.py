import jax

jax.config.update("jax_enable_x64", True)


import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]

# One persistent compilation cache for the session: this process and every command line it starts
# (``cache_env``, worker processes) compile a program once between them, as a study's runs do
# (moe_estimation.cli). Fresh for every session (CI), unless MOE_ESTIMATION_TEST_CACHE names a folder to
# keep it in between runs (the developer's command in the README: a rerun compiles only what changed).
# Set here, before the test modules are imported (some compile at import).
KEPT_CACHE = os.environ.get("MOE_ESTIMATION_TEST_CACHE")
COMPILATION_CACHE = (str(Path(KEPT_CACHE).resolve()) if KEPT_CACHE
                     else tempfile.mkdtemp(prefix="moe-estimation-tests-jax-"))
Path(COMPILATION_CACHE).mkdir(parents=True, exist_ok=True)
jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def pytest_unconfigure(config):
    if not KEPT_CACHE:
        shutil.rmtree(COMPILATION_CACHE, ignore_errors=True)


# The markers by cost (registered in pyproject.toml): unmarked tests are unit tests; ``study``, ``e2e`` and
# ``statistical`` name what makes a test expensive. ``slow`` is given to every test that carries one of them.
COST_MARKERS = ("study", "e2e", "statistical")


# The tests that read a costly run made once a session (once_a_session): they go first, so that one pytest
# process makes the run and reads it while the other works through the rest. (pytest-xdist's worksteal
# hands each process a contiguous half of the collection and steals from the tail of a queue; a process
# that asked for the run while the other was making it would wait idle, up to three minutes.)
FIRST = (lambda item: "tiny_runs" in getattr(item, "fixturenames", ()),
         lambda item: item.path.name == "test_rate_orders.py" and "rates" in getattr(item, "fixturenames", ()))


@pytest.hookimpl(tryfirst=True)  # before -m selects on the markers
def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.get_closest_marker(m) for m in COST_MARKERS):
            item.add_marker(pytest.mark.slow)
    rank = {id(item): next((i for i, first in enumerate(FIRST) if first(item)), len(FIRST)) for item in items}
    items.sort(key=lambda item: rank[id(item)])  # stable: the collection's order otherwise


def once_a_session(tmp_path_factory, name: str, make):
    """``make(folder)`` run once a test session, however many pytest processes (pytest-xdist workers) ask:
    the first to ask makes it under a lock in the folder the workers share, the others wait for it and read
    what it made. A session-scoped fixture alone is made once per process. Returns the folder."""
    import fcntl

    if not os.environ.get("PYTEST_XDIST_WORKER"):  # one process: its own temporary folder
        folder = tmp_path_factory.mktemp(name)
        make(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / name  # the run's folder, shared by its workers
    folder.mkdir(exist_ok=True)
    with open(folder.parent / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = folder / ".made"
        if not done.exists():
            make(folder)
            done.write_text("made\n")
    return folder


@pytest.fixture(scope="session")
def cache_env():
    """The environment for a command-line subprocess: this checkout importable, the session's compilation cache,
    and a study fitted in that process (``--workers`` 1: these tests are about one process, killed, raced
    or sharded; the worker processes have their own tests)."""
    env = dict(os.environ)
    env["MOE_ESTIMATION_CACHE"] = COMPILATION_CACHE
    env["MOE_ESTIMATION_WORKERS"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(autouse=True)
def _release_compiled_programs():
    """One pytest process compiles hundreds of programs; drop them when the process nears the system's
    limit on memory mappings (see moe_estimation.experiments.study.release_compiled_if_needed)."""
    from moe_estimation.experiments.study import release_compiled_if_needed

    release_compiled_if_needed()
    yield


# ------------------------------------------------------------------------------------------------
# the command line, in this process


class CliResult(NamedTuple):
    """What a command-line run gave: its exit status and what it wrote (as subprocess.CompletedProcess)."""

    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def cli(capsys, monkeypatch):
    """``cli(*args)`` runs ``moe_estimation.cli.main(args)`` in this process and returns a CliResult. An
    error the command line reports (``main`` returns 2) and one argparse reports (``SystemExit(2)``) both
    come back as a return code; any other exception is raised, failing the test with its traceback. The
    command line's JAX settings are the ones conftest made (x64, the session's compilation cache), and a
    study is fitted in this process (``--workers`` 1)."""
    from moe_estimation.cli import main

    monkeypatch.setenv("MOE_ESTIMATION_CACHE", COMPILATION_CACHE)
    monkeypatch.setenv("MOE_ESTIMATION_WORKERS", "1")

    def run(*args) -> CliResult:
        capsys.readouterr()  # what came before is not this command's output
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
        out, err = capsys.readouterr()
        return CliResult(code, out, err)

    return run


# ------------------------------------------------------------------------------------------------
# the reference study: one small study, run once per session, that the study, integrity and device tests
# compare their runs against (resumed, repaired, killed, sharded over devices or processes)

REFERENCE = dict(seed=4, grid=dict(ns=[100, 120], replicates=3, problems=["shared-linear"],
                                   specifications=["exact", "over"]),
                 fit=dict(restarts=1, max_steps=15), rates=dict(num_bootstrap=100))
REFERENCE_CELLS = 4  # one problem, two specifications, two sample sizes
REFERENCE_TOML = """seed = {seed}
[grid]
ns = {ns}
replicates = {replicates}
problems = ['shared-linear']
specifications = ['exact', 'over']
[fit]
restarts = 1
max_steps = 15
[rates]
num_bootstrap = 100
"""


def reference_toml(path: Path, ns=None) -> Path:
    """Write the reference study (or the same study at other sample sizes ``ns``) as a TOML file."""
    path.write_text(REFERENCE_TOML.format(seed=REFERENCE["seed"], ns=list(ns or REFERENCE["grid"]["ns"]),
                                          replicates=REFERENCE["grid"]["replicates"]))
    return path


@pytest.fixture(scope="session")
def reference_study(tmp_path_factory):
    """The folder of an undamaged run of the reference study (fits.csv, rates.csv, config.json), run once a
    session (:func:`once_a_session`) in a pytest process. Tests copy it before they change anything."""
    from moe_estimation.experiments.config import load_config, parse_config
    from moe_estimation.experiments.study import run_study

    cfg = parse_config(REFERENCE)

    def make(base: Path) -> None:
        assert load_config(reference_toml(base / "reference.toml")).to_dict() == cfg.to_dict()  # the file is the study
        run_study(cfg, base / "study", progress=False, log=lambda *a: None)

    return once_a_session(tmp_path_factory, "reference", make) / "study"


# ------------------------------------------------------------------------------------------------
# the tiny end-to-end runs: the reproduction script once per session


class TinyRuns(NamedTuple):
    study: Path  # moe-estimation study --preset tiny
    transformer: Path  # moe-estimation transformer --preset tiny
    teacher: Path  # moe-estimation transformer --preset teacher-tiny
    figures: Path  # moe-estimation plot of the three


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, cache_env):
    """``simulations/reproduce.py --preset tiny --teacher`` run once a session (:func:`once_a_session`), in its
    own process: the tiny study, the tiny transformer and teacher runs, all their figures. Tests that check a
    command's first run read these folders; tests that change one (resume, refuse, repair) copy it first."""

    def make(cwd: Path) -> None:
        r = subprocess.run([sys.executable, str(ROOT / "simulations" / "reproduce.py"), "--preset", "tiny",
                            "--results", str(cwd / "res"), "--figures", str(cwd / "fig"), "--no-progress", "--teacher"],
                           env=cache_env, capture_output=True, text=True, timeout=1200, cwd=cwd)
        assert r.returncode == 0, r.stderr

    cwd = once_a_session(tmp_path_factory, "tiny", make)
    assert (cwd / "fig").is_dir(), f"the tiny runs in {cwd} did not finish: an earlier test's setup failed"
    return TinyRuns(cwd / "res", cwd / "results" / "transformer-tiny", cwd / "results" / "teacher-tiny", cwd / "fig")
