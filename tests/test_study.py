import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moe_estimation.experiments.config import parse_config, study_preset, load_config
from moe_estimation.experiments.study import FITS_COLUMNS, RATE_LOSSES, bucket_size, data_keys, run_study, start_keys

from conftest import REFERENCE, reference_toml

ROOT = Path(__file__).resolve().parents[1]


def _fits(path):
    return pd.read_csv(path / "fits.csv").drop(columns="seconds")


@pytest.mark.study
def test_cell_numbers_do_not_depend_on_other_cells(tmp_path, reference_study):
    """The reference study's cells come out the same inside a larger study: another problem before it, and
    another sample size between its two (the cells' order, and their indices, change)."""
    grid = dict(REFERENCE["grid"], ns=[100, 110, 120], problems=["non-shared", "shared-linear"])
    run_study(parse_config(dict(REFERENCE, grid=grid)), tmp_path / "b", progress=False, log=lambda *a: None)
    b = _fits(tmp_path / "b")
    assert len(b) == 2 * 2 * 3 * REFERENCE["grid"]["replicates"]
    b = b[(b["problem"] == "shared-linear") & (b["n"] != 110)].reset_index(drop=True)
    pd.testing.assert_frame_equal(b, _fits(reference_study), check_dtype=False)  # a column all 0 reads as int


@pytest.mark.study
def test_blocks_of_replicates_give_the_fits_of_whole_cells_and_resume_by_block(tmp_path, reference_study):
    """[grid] block = 2 splits each cell's 3 replicates into tasks of 2 and 1: the same fits as whole cells;
    a table holding one block of a cell resumes with the other block alone, and a cut block is damage."""
    cfg = parse_config(dict(REFERENCE, grid=dict(REFERENCE["grid"], block=2)))
    assert cfg.blocks == 2 and list(cfg.block_replicates(1)) == [2]
    said = []
    run_study(cfg, tmp_path / "b", progress=False, log=said.append)
    pd.testing.assert_frame_equal(_fits(tmp_path / "b"), _fits(reference_study))
    text = (tmp_path / "b" / "fits.csv").read_text().splitlines(keepends=True)
    keep = [line for line in text[1:] if not (",exact,2,120,2," in line)]  # drop block 1 of one cell
    assert len(keep) == len(text) - 2
    (tmp_path / "b" / "fits.csv").write_text(text[0] + "".join(keep))
    said.clear()
    run_study(cfg, tmp_path / "b", progress=False, log=said.append)
    assert any("resuming: 7 of 8 cell blocks (of 2 replicates)" in line for line in said), said
    pd.testing.assert_frame_equal(_fits(tmp_path / "b"), _fits(reference_study))
    cut = [line for line in text[1:] if not (",exact,2,120,1," in line)]  # block 0 of that cell one replicate short
    (tmp_path / "b" / "fits.csv").write_text(text[0] + "".join(cut))
    with pytest.raises(ValueError, match=r"damaged blocks: shared-linear exact default n=120 block 0"):
        run_study(cfg, tmp_path / "b", progress=False, log=said.append)
    with pytest.raises(ValueError, match=r"grid.block: .* in \[1, replicates = 3\]"):
        parse_config(dict(REFERENCE, grid=dict(REFERENCE["grid"], block=4)))
    assert "block" not in parse_config(dict(REFERENCE, grid=dict(REFERENCE["grid"], block=3))).to_dict()


def test_resume_refuses_a_different_study(tmp_path, reference_study):
    shutil.copytree(reference_study, tmp_path / "s")
    before = (tmp_path / "s" / "fits.csv").read_bytes()
    other = parse_config(dict(grid=dict(ns=[100, 130], replicates=2, problems=["shared-linear"],
                                        specifications=["exact"]), rates=dict(num_bootstrap=100)))
    with pytest.raises(ValueError, match="different study"):
        run_study(other, tmp_path / "s", progress=False)
    assert (tmp_path / "s" / "fits.csv").read_bytes() == before


def test_params_column_gives_back_every_loss_and_the_bound_coordinates(reference_study):
    """fits.csv's ``params`` hold each fit exactly: every loss column is recomputed from them alone, and
    ``bound_coordinates`` names a coordinate exactly when ``at_bound`` says one sits on the box."""
    import jax.numpy as jnp

    import moe_estimation as me
    from moe_estimation.prefix.estimator import box, flatten_params
    from moe_estimation.experiments.results import parse_params

    fits = pd.read_csv(reference_study / "fits.csv", keep_default_na=False)
    prob = parse_config(REFERENCE).problem("shared-linear")
    for row in fits.itertuples(index=False):
        p = parse_params(row.params, row.num_prompts, prob.atom_dim)
        assert float(me.voronoi_loss(prob, p)) == pytest.approx(float(row.loss_own), rel=1e-12, abs=1e-15)
        kv, ident, by_key = (me.key_value_parts(prob, p), me.identified_key_value(prob, p),
                             me.identified_key_value(prob, p, cells="key"))
        assert float(kv["d2"]) == pytest.approx(float(row.loss_key_value), rel=1e-12, abs=1e-15)
        assert float(kv["max_multi"]) == pytest.approx(float(row.kv_max_multi), rel=1e-12, abs=1e-15)
        for name in ("weight", "key", "value", "spread_key", "spread_value"):
            assert float(ident[name]) == pytest.approx(float(getattr(row, f"id_{name}")), rel=1e-12, abs=1e-15)
            assert float(by_key[name]) == pytest.approx(float(getattr(row, f"idk_{name}")), rel=1e-12, abs=1e-15)
        lower, upper = box(prob, row.num_prompts, jnp.float64)
        theta = np.asarray(flatten_params(p))
        on_box = (theta <= np.asarray(lower)) | (theta >= np.asarray(upper))
        assert (row.bound_coordinates != "none") == bool(on_box.any()) == (str(row.at_bound) == "True")
        assert len(row.bound_coordinates.split()) == (int(on_box.sum()) or 1)
    assert (fits["specification"] == "over").any() and (fits["kv_max_multi"] > 0).any()
    with pytest.raises(ValueError, match="params: expected 9 numbers"):
        parse_params("1 2 3", 3, prob.atom_dim)


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
        (dict(GOOD, schedules={"best-of-all": dict(init="random")}), "schedules.best-of-all: the name is reserved"),
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
    from moe_estimation.cli import STUDY_PRESET_NAMES
    from moe_estimation.experiments.config import STUDY_PRESETS

    assert STUDY_PRESET_NAMES == tuple(STUDY_PRESETS)
    for name in STUDY_PRESET_NAMES:
        study_preset(name)
    full = study_preset("full")
    assert len(full.ns) >= 12 and full.replicates >= 40 and min(full.ns) == 1000 and max(full.ns) == 100000


def test_cli_reports_bad_config_cleanly(tmp_path, cli):
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nns = [10, 0]\nreplicates = 2\n")
    r = cli("study", "--config", bad, "--out", tmp_path / "o")
    assert r.returncode == 2 and "grid.ns" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def _script(name, *args, capsys, monkeypatch):
    """Run ``simulations/NAME`` as a script (``__main__``) in this process; (exit status, stdout)."""
    monkeypatch.setattr(sys, "argv", [name, *map(str, args)])
    capsys.readouterr()
    try:
        runpy.run_path(str(ROOT / "simulations" / name), run_name="__main__")
        code = 0
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


@pytest.mark.e2e
def test_simulation_scripts_run_tiny(tiny_runs, tmp_path, cli, capsys, monkeypatch):
    """reproduce.py at tiny size, in its own process: the command line's study (``study --preset tiny``), the
    transformer and teacher runs, and the figures; then its tables as documented, the same figures drawn
    again from the same tables in another process (this one) to the same bytes, and summarize.py on them."""
    for name in ("side_by_side.png", "transformer_curves.png", "teacher.png", "combined.png",
                 "rates_shared-linear.png"):
        assert (tiny_runs.figures / name).exists(), name
    assert (tiny_runs.figures / "side_by_side.png").stat().st_size > 10_000
    # the study's tables, as documented
    out = tiny_runs.study
    fits = pd.read_csv(out / "fits.csv")
    assert list(fits.columns) == FITS_COLUMNS and len(fits) == 2 * 2 * 2 * 2
    rates = pd.read_csv(out / "rates.csv")
    want = ["problem", "structure", "specification", "loss", "statistic", "slope", "ci_low", "ci_high",
            "theory_slope", "n_min", "n_max", "replicates", "fits_not_converged"]
    assert set(want) <= set(rates.columns)
    assert set(rates["statistic"]) == {"mean", "median", "q25", "q75", "q90"}  # and the declared quantiles
    assert set(rates["loss"]) <= set(RATE_LOSSES) and {"own", "key_value", "identified_value"} <= set(rates["loss"])
    assert set(rates["schedule"]) == {"default"}
    for col in ("slope", "ci_low", "ci_high", "theory_slope"):
        assert rates[col].dtype == float
    for col in ("n_min", "n_max", "replicates", "fits_not_converged"):
        assert rates[col].dtype == np.int64
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["root_seed"] == 0 and "jax" in cfg["versions"]
    # the same tables draw the same bytes: a reproduction leaves committed figures untouched
    runs = [out, tiny_runs.transformer, tiny_runs.teacher]
    r = cli("plot", "--results", *runs, "--out", tmp_path / "figs2")
    assert r.returncode == 0, r.stderr
    drawn = sorted(p.name for p in tiny_runs.figures.glob("*.png"))
    assert drawn == sorted(p.name for p in (tmp_path / "figs2").glob("*.png"))
    for name in drawn:
        assert (tiny_runs.figures / name).read_bytes() == (tmp_path / "figs2" / name).read_bytes(), name
    # the README's tables from these runs
    said = _script("summarize.py", "--study", out, "--transformer", runs[1], "--teacher", runs[2], capsys=capsys,
                   monkeypatch=monkeypatch)
    assert "| shared-linear | exact | own |" in said and "| deep-share |" in said
    assert "| shared | no-share | over |" in said and "| shared | simple-share | exact |" in said
    said = _script("summarize.py", "--compare", out, out, capsys=capsys, monkeypatch=monkeypatch)
    assert "differs by at most 0 relative" in said  # a run against itself


@pytest.mark.e2e
def test_tables_do_not_depend_on_the_number_of_devices(tmp_path, cache_env, reference_study):
    """The reference study (run in this process, on one device) and the same study on two devices of
    another process (three replicates over two devices: the last chunk is padded) write the same tables."""
    assert json.loads((reference_study / "config.json").read_text())["devices"] == 1
    env = dict(cache_env, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    out = tmp_path / "d2"
    r = subprocess.run([sys.executable, "-m", "moe_estimation.cli", "study", "--config",
                        str(reference_toml(tmp_path / "s.toml")), "--out", str(out), "--no-progress"], env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "config.json").read_text())["devices"] == 2
    pd.testing.assert_frame_equal(_fits(out), _fits(reference_study))
    pd.testing.assert_frame_equal(pd.read_csv(out / "rates.csv"), pd.read_csv(reference_study / "rates.csv"))


@pytest.mark.study
def test_compilations_grow_with_buckets_not_sample_sizes(tmp_path, monkeypatch):
    """Eight sample sizes in two buckets compile two programs. Counted as the programs this study adds to
    the process's (no cache is cleared for it): its settings (max_steps = 3, replicates = 5) are no other
    test's, so both are new, and the runner may not drop compiled programs while it is counted."""
    from moe_estimation.experiments import study as study_mod

    monkeypatch.setattr(study_mod, "release_compiled_if_needed", lambda *a, **k: False)
    ns = [70, 80, 90, 100, 110, 120, 200, 250]  # eight sizes, two buckets (128 and 256)
    cfg = parse_config(dict(grid=dict(ns=ns, replicates=5, problems=["shared-tanh"], specifications=["over"]),
                            fit=dict(restarts=1, max_steps=3), rates=dict(num_bootstrap=100)))
    before = study_mod.compiled_programs()
    run_study(cfg, tmp_path, progress=False, log=lambda *a: None)
    assert study_mod.compiled_programs() - before == len({bucket_size(n) for n in ns}) == 2


def test_chunk_budget_follows_device_memory():
    """CPU: the fixed 2^25-number budget. Accelerator: an eighth of its memory in float64 numbers (a power of
    two), never below the CPU budget; a device that reports no memory gets the CPU budget."""
    from moe_estimation.experiments.study import CPU_MAX_ELEMENTS, default_max_elements

    class Device:
        def __init__(self, platform, stats):
            self.platform, self._stats = platform, stats

        def memory_stats(self):
            return self._stats

    assert default_max_elements(Device("cpu", None)) == CPU_MAX_ELEMENTS
    assert default_max_elements(Device("gpu", {"bytes_limit": 80 * 2**30})) == 2**30  # 80 GiB / 64 = 1.25 * 2^30
    assert default_max_elements(Device("gpu", {"bytes_limit": 2**30})) == CPU_MAX_ELEMENTS  # 2^24 -> floor
    assert default_max_elements(Device("gpu", None)) == CPU_MAX_ELEMENTS


DECLARED = {"yard": {"blocks": ["gate", "expert"], "theory": -0.5},
            "by_cell": {"blocks": ["gate", "expert"], "terms": [{"blocks": ["gate"], "multi": "r"},
                                                                {"blocks": ["expert"], "multi": "r/2"}],
                        "theory": {"exact": -0.5}},
            "prompts": {"blocks": ["prompt"]}}


@pytest.mark.study
def test_declared_losses_are_measured_on_the_stored_fits_and_rated(reference_study, tmp_path):
    """[rates.losses.NAME]: losses declared in the lab's grammar, added to a finished study without refitting:
    each measured on every fit's stored parameters against its truth, rated, tabulated and drawn like the
    study's own. Declared as the yardstick (D_2 on (gate, expert) = (k, v)), it equals the study's own column to
    1e-12; declared as D_2 on the prompt p of a shared structure, the study's own loss."""
    import matplotlib

    matplotlib.use("Agg")
    from moe_estimation.report.plots import plot_study

    out = tmp_path / "study"
    shutil.copytree(reference_study, out)
    fits = pd.read_csv(out / "fits.csv")
    data = json.loads(json.dumps(REFERENCE))
    data["rates"] |= {"losses": DECLARED, "fail_thresholds": {"key_value": 0.5, "yard": 0.5}}
    said = []
    run_study(parse_config(data), out, progress=False, log=said.append)
    assert any("'losses'" in s for s in said)  # the fits are kept, the tables rebuilt
    pd.testing.assert_frame_equal(pd.read_csv(out / "fits.csv"), fits)  # nothing refitted, fits.csv as it was
    declared = pd.read_csv(out / "declared.csv").merge(fits, on=["problem", "specification", "schedule", "n", "replicate"])
    np.testing.assert_allclose(declared["loss_yard"], declared["loss_key_value"], rtol=1e-12)
    np.testing.assert_allclose(declared["loss_prompts"], declared["loss_own"], rtol=1e-12)
    assert np.all(np.isfinite(declared["loss_by_cell"]))
    rates = pd.read_csv(out / "rates.csv")
    mine = rates[(rates["loss"] == "by_cell") & (rates["statistic"] == "mean")].set_index("specification")
    assert mine.loc["exact", "theory_slope"] == -0.5 and np.isnan(mine.loc["over", "theory_slope"])
    yard, own = (rates[rates["loss"] == name].reset_index(drop=True) for name in ("yard", "key_value"))
    np.testing.assert_allclose(yard["slope"], own["slope"], rtol=1e-9)
    assert "yard" in set(pd.read_csv(out / "failing.csv")["loss"]) and "by_cell" in set(pd.read_csv(out / "quantiles.csv")["loss"])
    drawn = {p.name for p in plot_study(out, tmp_path / "figures")}
    assert {"declared_yard.png", "declared_by_cell.png", "declared_prompts.png"} <= drawn


@pytest.mark.parametrize("change, word", [
    ({"own": {"blocks": ["gate"]}}, r"rates.losses.own: a declared loss's name"),
    ({"Yard": {"blocks": ["gate"]}}, r"rates.losses.Yard: a declared loss's name"),
    ({"keys": {"blocks": ["prompt.key", "prompt.value"], "kind": "d1r"}},
     r"rates.losses.keys: for problem 'shared-linear': blocks: 'prompt.key' is a block"),
    ({"v": {"blocks": ["gate", "variance"]}}, r"rates.losses.v: for problem 'shared-linear': blocks: 'variance'"),
    ({"t": {"blocks": ["gate"], "theory": 0.5}}, r"rates.losses.t.theory: expected a slope <= 0"),
    ({"t": {"blocks": ["gate"], "theory": {"under": -0.5}}}, r"rates.losses.t.theory"),
    ({"t": {"blocks": ["gate"], "power": 2}}, r"rates.losses.t: expected a table with keys from"),
    ({"t": {"blocks": ["gate"], "terms": [{"blocks": ["gate"], "multi": "r/3"}]}}, r"rates.losses.t: terms.multi"),
    ({"t": {"blocks": ["gate", "expert"], "part": "both"}}, r"rates.losses.t: part: a prefix problem has no shared experts"),
    ({"t": {"blocks": ["gate"], "terms": [{"blocks": ["gate"], "multi": "r"}], "r_of_m": [4]}},
     r"rates.losses.t.r_of_m: problem 'shared-linear''s largest fit has 3 components"),
])
def test_declared_losses_refuse_what_they_cannot_mean(change, word):
    data = json.loads(json.dumps(REFERENCE))
    data["rates"]["losses"] = change
    with pytest.raises(ValueError, match=word):
        parse_config(data)


def test_a_study_without_declared_losses_records_none():
    """config.json of a study that declares no loss is what it was before declared losses existed."""
    assert "losses" not in parse_config(REFERENCE).to_dict()


@pytest.mark.study
def test_a_loss_that_is_not_finite_is_left_out_and_said_never_read_as_zero(reference_study):
    """rates.csv: a fit whose loss is NaN (a declared loss past its r(m) table, a non-finite fit) is left out of
    the statistics and counted in the note; it is never summed into a 0 (pandas' default for a sum of NaN)."""
    from moe_estimation.experiments.study import rates_table

    cfg = parse_config(REFERENCE)
    fits = pd.read_csv(reference_study / "fits.csv")
    n_max = fits["n"].max()
    row = fits.index[(fits["n"] == n_max) & (fits["specification"] == "exact")][0]
    broken = fits.copy()
    broken.loc[row, "loss_key_value"] = np.nan
    r = rates_table(broken, cfg)
    mean = r[(r["loss"] == "key_value") & (r["specification"] == "exact") & (r["statistic"] == "mean")].iloc[0]
    kept = fits[(fits["n"] == n_max) & (fits["specification"] == "exact")].drop(index=row)["loss_key_value"]
    assert mean["mean_loss_at_n_max"] == pytest.approx(kept.mean(), rel=1e-12)
    assert "1 fits with no finite loss left out" in mean["note"]


@pytest.mark.study
def test_every_preset_s_fits_are_what_the_committed_code_gave(tmp_path):
    """tests/data/presets-reference.toml (every prefix preset, exact and over-specified, two small sizes) run
    again gives tests/data/presets-reference.csv: written by the code of the commit that added it, and checked
    then to be bit for bit what the code before the lab's refactors (restart rule, fast paths, folders) gave.
    On this machine the fits are identical; across machines XLA may round differently, so the numbers are
    compared to 1e-9 relative."""
    data = Path(__file__).parent / "data"
    run_study(load_config(data / "presets-reference.toml"), tmp_path / "run", progress=False, log=lambda *a: None)
    new = pd.read_csv(tmp_path / "run" / "fits.csv").drop(columns="seconds")
    old = pd.read_csv(data / "presets-reference.csv")
    assert list(new.columns) == list(old.columns) and len(new) == len(old)
    for col in old.columns:
        if col in ("params", "true_params"):
            a = np.array([np.array(s.split(), float) for s in new[col]], dtype=object)
            b = np.array([np.array(s.split(), float) for s in old[col]], dtype=object)
            for x, y in zip(a, b):
                np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12, err_msg=col)
        elif pd.api.types.is_float_dtype(old[col]):
            np.testing.assert_allclose(new[col], old[col], rtol=1e-9, atol=1e-12, err_msg=col)
        else:
            assert new[col].tolist() == old[col].tolist(), col
