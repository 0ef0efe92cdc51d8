import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moe_estimation.config import parse_config, study_preset, load_config
from moe_estimation.study import FITS_COLUMNS, RATE_LOSSES, bucket_size, data_keys, run_study, start_keys

ROOT = Path(__file__).resolve().parents[1]
SMALL = """
seed = 3
[grid]
ns = [100, 110, 120, 130]
replicates = 2
problems = ["shared-linear"]
specifications = ["exact", "over"]
[fit]
restarts = 1
max_steps = 20
[rates]
num_bootstrap = 200
"""


def cli(args, env, **kw):
    return subprocess.run([sys.executable, "-m", "moe_estimation.cli", *args], env=env, capture_output=True,
                          text=True, **kw)


def test_tiny_study_and_plot_end_to_end(tmp_path, cache_env):
    out = tmp_path / "tiny"
    r = cli(["study", "--preset", "tiny", "--out", str(out), "--no-progress"], cache_env, timeout=600)
    assert r.returncode == 0, r.stderr
    fits = pd.read_csv(out / "fits.csv")
    assert list(fits.columns) == FITS_COLUMNS and len(fits) == 2 * 2 * 2 * 2
    rates = pd.read_csv(out / "rates.csv")
    want = ["problem", "structure", "specification", "loss", "statistic", "slope", "ci_low", "ci_high",
            "theory_slope", "n_min", "n_max", "replicates", "fits_not_converged"]
    assert set(want) <= set(rates.columns)
    assert set(rates["statistic"]) == {"mean", "median"}
    assert set(rates["loss"]) <= set(RATE_LOSSES) and {"own", "key_value", "identified_value"} <= set(rates["loss"])
    assert set(rates["schedule"]) == {"default"}
    for col in ("slope", "ci_low", "ci_high", "theory_slope"):
        assert rates[col].dtype == float
    for col in ("n_min", "n_max", "replicates", "fits_not_converged"):
        assert rates[col].dtype == np.int64
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["root_seed"] == 0 and "jax" in cfg["versions"]
    r = cli(["plot", "--results", str(out), "--out", str(tmp_path / "figs")], cache_env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "figs" / "side_by_side.png").stat().st_size > 10_000
    assert (tmp_path / "figs" / "rates_shared-linear.png").exists()
    # the same tables draw the same bytes: a reproduction leaves committed figures untouched
    r = cli(["plot", "--results", str(out), "--out", str(tmp_path / "figs2")], cache_env, timeout=300)
    assert r.returncode == 0, r.stderr
    for png in (tmp_path / "figs").glob("*.png"):
        assert png.read_bytes() == (tmp_path / "figs2" / png.name).read_bytes(), png.name


def test_killed_run_resumes_to_identical_tables(tmp_path, cache_env):
    conf = tmp_path / "small.toml"
    conf.write_text(SMALL)
    full = tmp_path / "full"
    r = cli(["study", "--config", str(conf), "--out", str(full), "--no-progress"], cache_env, timeout=600)
    assert r.returncode == 0, r.stderr

    part = tmp_path / "part"
    proc = subprocess.Popen([sys.executable, "-m", "moe_estimation.cli", "study", "--config", str(conf), "--out",
                             str(part), "--no-progress"], env=cache_env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while time.time() < deadline:
        if (part / "fits.csv").exists() and len(pd.read_csv(part / "fits.csv")) >= 2:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(pd.read_csv(part / "fits.csv"))
    assert 2 <= done < 16, "the kill should land part-way"
    r = cli(["study", "--config", str(conf), "--out", str(part), "--no-progress"], cache_env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    a = pd.read_csv(full / "fits.csv").drop(columns="seconds")
    b = pd.read_csv(part / "fits.csv").drop(columns="seconds")
    pd.testing.assert_frame_equal(a, b)
    pd.testing.assert_frame_equal(pd.read_csv(full / "rates.csv"), pd.read_csv(part / "rates.csv"))
    # the tables of a finished study rebuild to the same rates without fitting anything
    r = cli(["study", "--config", str(conf), "--out", str(part), "--no-progress", "--tables-only"], cache_env,
            timeout=600)
    assert r.returncode == 0, r.stderr
    pd.testing.assert_frame_equal(pd.read_csv(full / "rates.csv"), pd.read_csv(part / "rates.csv"))


def test_cell_numbers_do_not_depend_on_other_cells(tmp_path):
    import jax

    jax.config.update("jax_enable_x64", True)
    base = dict(seed=1, grid=dict(ns=[100, 150], replicates=2, problems=["shared-linear"], specifications=["exact"]),
                fit=dict(restarts=1, max_steps=20), rates=dict(num_bootstrap=100))
    a = run_study(parse_config(base), tmp_path / "a", progress=False)
    more = dict(base, grid=dict(base["grid"], ns=[100, 120, 150], problems=["non-shared", "shared-linear"]))
    b = run_study(parse_config(more), tmp_path / "b", progress=False)
    b = b[(b["problem"] == "shared-linear") & (b["n"] != 120)].reset_index(drop=True)
    pd.testing.assert_frame_equal(a.drop(columns="seconds"), b.drop(columns="seconds"))


def test_resume_refuses_a_different_study(tmp_path):
    cfg = parse_config(dict(grid=dict(ns=[100, 120], replicates=2, problems=["shared-linear"],
                                      specifications=["exact"]), fit=dict(restarts=1, max_steps=5),
                            rates=dict(num_bootstrap=100)))
    run_study(cfg, tmp_path, progress=False)
    other = parse_config(dict(grid=dict(ns=[100, 130], replicates=2, problems=["shared-linear"],
                                        specifications=["exact"]), rates=dict(num_bootstrap=100)))
    with pytest.raises(ValueError, match="different study"):
        run_study(other, tmp_path, progress=False)


def test_study_refuses_float32(tmp_path):
    import jax

    cfg = parse_config(dict(grid=dict(ns=[100, 120], replicates=2, problems=["shared-linear"], specifications=["exact"]),
                            fit=dict(restarts=1, max_steps=5), rates=dict(num_bootstrap=100)))
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="jax_enable_x64"):
            run_study(cfg, tmp_path / "s", progress=False)
    finally:
        jax.config.update("jax_enable_x64", True)
    assert not (tmp_path / "s").exists()  # refused before anything was written


def test_bucket_sizes_are_few():
    ns = [int(round(x)) for x in np.geomspace(1e3, 1e5, 12)]
    assert len({bucket_size(n) for n in ns}) <= 8
    assert all(bucket_size(n) >= n for n in ns)


def test_keys_are_coordinate_derived():
    import jax

    data = lambda k: jax.random.key_data(k)
    k1 = start_keys(0, "shared-linear", "over", 1000, 4)
    k2 = start_keys(0, "shared-linear", "over", 1000, 2)
    assert np.array_equal(data(k1[:2]), data(k2))
    k3 = start_keys(0, "shared-linear", "exact", 1000, 2)
    assert not np.array_equal(data(k3), data(k2))
    assert np.array_equal(data(data_keys(0, 1000, 4)[:2]), data(data_keys(0, 1000, 2)))
    assert not np.array_equal(data(data_keys(0, 1000, 2)), data(data_keys(0, 1001, 2)))
    assert not np.array_equal(data(data_keys(0, 1000, 2)), data(k2))


GOOD = dict(grid=dict(ns=[100, 200], replicates=2))


@pytest.mark.parametrize(
    "data, word",
    [
        (dict(GOOD, colour="red"), "colour: unknown key"),
        (dict(grid=dict(ns=[100, 0], replicates=2)), "grid.ns: every sample size must be an integer >= 1"),
        (dict(grid=dict(ns=[], replicates=2)), "grid.ns: expected a non-empty list"),
        (dict(grid=dict(ns=[100, 200], replicates=1)), "grid.replicates"),
        (dict(grid=dict(ns=[100, 200], replicates="8")), "grid.replicates: expected int"),
        (dict(grid=dict(ns=[100, 200], replicates=2, extra_prompts=0)), "L' - L"),
        (dict(grid=dict(ns=[100, 200], replicates=2, problems=["nope"])), "neither a preset"),
        (dict(grid=dict(ns=[100, 200], replicates=2, specifications=["under"])), "grid.specifications"),
        (dict(GOOD, fit=dict(restarts=0)), "fit.restarts"),
        (dict(GOOD, fit=dict(max_step=3)), "fit.max_step: unknown key"),
        (dict(GOOD, fit=dict(init="sideways")), "fit.init"),
        (dict(GOOD, rates=dict(n_min=150)), "window"),
        (dict(grid=dict(ns=[100, 200], replicates=2, problems=["mine"]),
              problems=dict(mine=dict(preset="shared-linear", noise_var=-1.0))), "problems.mine.*noise_var"),
        (dict(grid=dict(ns=[100, 200], replicates=2, problems=["mine"]),
              problems=dict(mine=dict(preset="shared-linear", wobble=1))), "problems.mine.wobble: unknown key"),
        (dict(seed=1.5, **GOOD), "seed: expected int"),
        (dict(), "grid: the \\[grid\\] table is required"),
    ],
)
def test_config_rejections_name_key_and_rule(data, word):
    with pytest.raises(ValueError, match=word):
        parse_config(data, "my.toml")


def test_config_file_errors(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid\nns = 3")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(bad)
    bad.write_text("[grid]\nns = [10, 0]\nreplicates = 2\n")
    with pytest.raises(ValueError, match=r"bad.toml: grid.ns"):
        load_config(bad)


def test_user_problem_table_and_presets_resolve():
    cfg = parse_config(dict(grid=dict(ns=[100, 200], replicates=2, problems=["mine"]),
                            problems=dict(mine=dict(preset="shared-linear", noise_var=0.04))))
    assert cfg.problem("mine").noise_var == 0.04
    for name in ("quick", "full", "robust-quick", "robust", "tiny"):
        study_preset(name)
    full = study_preset("full")
    assert len(full.ns) >= 12 and full.replicates >= 40 and min(full.ns) == 1000 and max(full.ns) == 100000


def test_cli_reports_bad_config_cleanly(tmp_path, cache_env):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nns = [10, 0]\nreplicates = 2\n")
    r = cli(["study", "--config", str(bad), "--out", str(tmp_path / "o")], cache_env, timeout=120)
    assert r.returncode == 2 and "grid.ns" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_simulation_scripts_run_tiny(tmp_path, cache_env):
    r = subprocess.run([sys.executable, str(ROOT / "simulations" / "reproduce.py"), "--preset", "tiny", "--results",
                        str(tmp_path / "res"), "--figures", str(tmp_path / "fig"), "--no-progress", "--teacher"],
                       env=cache_env, capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for name in ("side_by_side.png", "transformer_curves.png", "teacher.png", "combined.png"):
        assert (tmp_path / "fig" / name).exists(), name
    r = subprocess.run([sys.executable, str(ROOT / "simulations" / "summarize.py"), "--study", str(tmp_path / "res"),
                        "--transformer", str(tmp_path / "results" / "transformer-tiny"), "--teacher",
                        str(tmp_path / "results" / "teacher-tiny")], env=cache_env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "| shared-linear | exact | own |" in r.stdout and "| deep-share |" in r.stdout
    assert "| shared | no-share | over |" in r.stdout and "| shared | simple-share | exact |" in r.stdout
    r = subprocess.run([sys.executable, str(ROOT / "simulations" / "summarize.py"), "--compare", str(tmp_path / "res"),
                        str(tmp_path / "res")], env=cache_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "differs by at most 0 relative" in r.stdout  # a run against itself


def test_tables_do_not_depend_on_the_number_of_devices(tmp_path, cache_env):
    conf = tmp_path / "dev.toml"
    conf.write_text(SMALL.replace("ns = [100, 110, 120, 130]", "ns = [100, 130]").replace("replicates = 2", "replicates = 3"))
    outs = {}
    for ndev in (1, 2):
        env = dict(cache_env, XLA_FLAGS=f"--xla_force_host_platform_device_count={ndev}")
        out = tmp_path / f"d{ndev}"
        r = cli(["study", "--config", str(conf), "--out", str(out), "--no-progress"], env, timeout=600)
        assert r.returncode == 0, r.stderr
        assert json.loads((out / "config.json").read_text())["devices"] == ndev
        outs[ndev] = out
    pd.testing.assert_frame_equal(pd.read_csv(outs[1] / "fits.csv").drop(columns="seconds"),
                                  pd.read_csv(outs[2] / "fits.csv").drop(columns="seconds"))
    pd.testing.assert_frame_equal(pd.read_csv(outs[1] / "rates.csv"), pd.read_csv(outs[2] / "rates.csv"))


def test_compilations_grow_with_buckets_not_sample_sizes(tmp_path):
    import jax

    from moe_estimation import study as study_mod

    jax.config.update("jax_enable_x64", True)
    ns = [70, 80, 90, 100, 110, 120, 200, 250]  # eight sizes, two buckets (128 and 256)
    cfg = parse_config(dict(grid=dict(ns=ns, replicates=2, problems=["shared-tanh"], specifications=["over"]),
                            fit=dict(restarts=1, max_steps=3), rates=dict(num_bootstrap=100)))
    jax.clear_caches()
    run_study(cfg, tmp_path, progress=False)
    assert study_mod.compiled_programs() == len({bucket_size(n) for n in ns}) == 2


def test_chunk_budget_follows_device_memory():
    """CPU: the fixed 2^25-number budget. Accelerator: an eighth of its memory in float64 numbers (a power of
    two), never below the CPU budget; a device that reports no memory gets the CPU budget."""
    from moe_estimation.study import CPU_MAX_ELEMENTS, default_max_elements

    class Device:
        def __init__(self, platform, stats):
            self.platform, self._stats = platform, stats

        def memory_stats(self):
            return self._stats

    assert default_max_elements(Device("cpu", None)) == CPU_MAX_ELEMENTS
    assert default_max_elements(Device("gpu", {"bytes_limit": 80 * 2**30})) == 2**30  # 80 GiB / 64 = 1.25 * 2^30
    assert default_max_elements(Device("gpu", {"bytes_limit": 2**30})) == CPU_MAX_ELEMENTS  # 2^24 -> floor
    assert default_max_elements(Device("gpu", None)) == CPU_MAX_ELEMENTS
