"""The README quickstart runs as written."""

import re
import tomllib
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.e2e
def test_readme_quickstart_runs():
    text = README.read_text()
    section = text.split("## Quickstart", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README has a ```python block under ## Quickstart"
    namespace: dict = {}
    exec(compile(blocks[0], "README quickstart", "exec"), namespace)
    assert namespace["rate"].slope < 0


def test_readme_names_the_two_commands():
    text = README.read_text()
    ci = (README.parent / ".ci" / "run").read_text()
    test_cmd = re.search(r"<!-- test-command -->\n```bash\n(.*?)\n```", text, flags=re.S).group(1).strip()
    assert test_cmd in ci, "the CI script runs the README's test command"
    assert re.search(r"<!-- main-command -->\n```bash\n.*reproduce.py --preset quick", text, flags=re.S)


def test_readme_names_the_developer_test_command():
    """The developer's command is pytest on a selection of the registered markers (a misspelt marker would
    select nothing and pass)."""
    text = README.read_text()
    dev = re.search(r"<!-- dev-test-command -->\n```bash\n(.*?)\n```", text, flags=re.S).group(1).strip()
    m = re.fullmatch(r"(?:MOE_ESTIMATION_TEST_CACHE=\S+ )?\.venv/bin/python -m pytest -q (?:-n \d+ )?-m \"([^\"]+)\"", dev)
    assert m, dev
    ini = tomllib.loads((README.parent / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    registered = {line.split(":")[0].strip() for line in ini["markers"]}
    named = set(re.findall(r"\w+", m.group(1))) - {"and", "or", "not"}
    assert named and named <= registered, (named, registered)
    assert "--strict-markers" in ini["addopts"] and "--durations=15" in ini["addopts"]


def _summarize():
    import importlib.util

    spec = importlib.util.spec_from_file_location("summarize", README.parent / "simulations" / "summarize.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("marker, tables", [("transformer-table", "transformer-standard"),
                                            ("transformer-quick-table", "transformer-quick")])
def test_readme_transformer_tables_are_the_committed_tables(marker, tables):
    """The learning-curve tables in the README are what summarize.py makes of the committed tables."""
    text = README.read_text()
    block = text.split(f"<!-- {marker} -->\n", 1)[1]
    made = _summarize().transformer_table(README.parent / "tables" / tables)
    assert block.startswith(made), f"README's {marker} differs from summarize.py --transformer tables/{tables}"


def test_committed_transformer_tables_belong_to_their_presets():
    """tables/transformer-<preset>/config.json records that preset's study, so a rerun of the README's command
    resumes those tables rather than refusing them."""
    import json

    from moe_estimation.results import plain_dict
    from moe_estimation.transformer.train import TRANSFORMER_PRESETS

    for preset in ("quick", "standard"):
        meta = json.loads((README.parent / "tables" / f"transformer-{preset}" / "config.json").read_text())
        assert meta["study"] == plain_dict(TRANSFORMER_PRESETS[preset]), preset


def _block(marker: str) -> str:
    return README.read_text().split(f"<!-- {marker} -->\n", 1)[1]


def test_readme_benchmark_tables_are_the_committed_benchmarks():
    """The step and workers tables are what summarize.py makes of the committed benchmark records."""
    s = _summarize()
    bench = README.parent / "benchmarks"
    step = s.step_table(bench / "cpu-step.json").split("\n\n", 1)[1]
    assert _block("step-table").startswith(step)
    workers = s.workers_table(bench / "cpu-workers.json")
    assert "\n".join(line.strip() for line in _block("workers-table").splitlines()[: workers.count("\n") + 1]) == workers


def test_readme_quick_tables_are_the_committed_tables():
    """The quick study's tables in the README (rates, failing fits and quantile slopes, paired differences,
    power) are what summarize.py makes of tables/quick and tables/power-quick.csv."""
    s, tables = _summarize(), README.parent / "tables"
    assert _block("quick-table").startswith(s.study_table(tables / "quick").split("\n\n")[0])
    assert _block("quick-failing-table").startswith(s.failing_markdown(tables / "quick"))
    assert _block("quick-differences-table").startswith(s.differences_markdown(tables / "quick"))
    assert _block("quick-power-table").startswith(s.power_markdown(tables / "power-quick.csv"))
    assert _block("quick-control-table").startswith(s.control_markdown(tables / "quick"))
    assert _block("quick-bounds-table").startswith(s.bounds_markdown(tables / "quick"))
    assert _block("restarts-failing-table").startswith(s.failing_markdown(tables / "restarts-quick"))
    assert _block("restarts-lowest-table").startswith(s.lowest_markdown(tables / "restarts-quick"))


@pytest.mark.study  # rates thousands of fits again: seconds to half a minute each
@pytest.mark.parametrize("preset", ["quick", "robust-quick", "restarts-quick", "full", "contested-quick",
                                    "nonlinear", "robust-non-shared", "tolerance-non-shared"])
def test_committed_study_is_its_preset_and_its_tables_are_its_fits(preset, tmp_path, monkeypatch):
    """tables/<preset> is a run of `study --preset <preset>` (or of `--config simulations/<name>.toml`; a rerun
    of the README's command resumes it: every row passes the resume check, fingerprint included), and its
    tables are what its fits give, rebuilt here from fits.csv alone (the larger studies hold it compressed,
    fits.csv.gz). The paired differences, the slowest table to rebuild, are checked for the quick
    study; the larger studies' are made by the same code."""
    import json

    import pandas as pd

    import moe_estimation.inference as inference
    from moe_estimation.config import load_config, study_preset
    from moe_estimation.results import check_fits_table, fits_file
    from moe_estimation.study import GEOMETRY_TABLES, MOVING_TABLES, TABLES, canonical_order, write_tables

    out = README.parent / "tables" / preset
    toml = README.parent / "simulations" / f"{preset}.toml"
    cfg = load_config(toml) if toml.is_file() else study_preset(preset)
    meta = json.loads((out / "config.json").read_text())
    assert meta["study"] == json.loads(json.dumps(cfg.to_dict()))
    fits, problems = check_fits_table(fits_file(out), cfg)
    assert not problems and len(fits) == len(pd.read_csv(fits_file(out)))
    names = list(TABLES) + [t for t in MOVING_TABLES + GEOMETRY_TABLES if (out / t).is_file()]
    if preset != "quick":
        monkeypatch.setattr(inference, "differences_table", lambda fits, cfg: pd.DataFrame())
        names.remove("differences.csv")
    write_tables(canonical_order(fits, cfg), cfg, tmp_path)
    for name in names:
        _same_table(out / name, tmp_path / name)


def _same_table(committed, rebuilt):
    """Two tables equal: the same columns and rows, text and integers exactly, floats to 1e-10 relative (a
    logarithm or a sum may differ in its last bit on another CPU; a change of method moves far more)."""
    import numpy as np
    import pandas as pd

    a, b = (pd.read_csv(p, keep_default_na=False, dtype=str) for p in (committed, rebuilt))
    assert list(a.columns) == list(b.columns) and len(a) == len(b), committed.name
    for c in a.columns:
        if (a[c] == b[c]).all():
            continue
        x, y = pd.to_numeric(a[c], errors="coerce"), pd.to_numeric(b[c], errors="coerce")
        same = (a[c] == b[c]) | np.isclose(x, y, rtol=1e-10, atol=1e-14)
        assert same.all(), f"{committed.name}, column {c}: {a[c][~same].head(3).tolist()} vs {b[c][~same].head(3).tolist()}"


def _study_section(name, *, power_problems=None, reference="non-shared"):
    """A study's section of the README (markers ``<name>-table``, ``-failing-``, ``-spread-``, ``-control-``,
    ``-differences-``, ``-power-table``) is what summarize.py makes of tables/<name> and
    tables/power-<name>.csv."""
    s, tables = _summarize(), README.parent / "tables"
    assert _block(f"{name}-table").startswith(s.study_table(tables / name).split("\n\n")[0])
    assert _block(f"{name}-failing-table").startswith(s.failing_markdown(tables / name))
    assert _block(f"{name}-spread-table").startswith(s.spread_markdown(tables / name))
    assert _block(f"{name}-control-table").startswith(s.control_markdown(tables / name))
    assert _block(f"{name}-differences-table").startswith(s.differences_markdown(tables / name, reference=reference))
    assert _block(f"{name}-power-table").startswith(s.power_markdown(tables / f"power-{name}.csv",
                                                                     problems=power_problems))


def test_readme_full_tables_are_the_committed_tables():
    """The full study's section: rates, failing fits, the identified part and the spread, the positive
    control, paired differences and power, as summarize.py makes them of tables/full and
    tables/power-full.csv."""
    _study_section("full", power_problems=("non-shared", "shared-linear"))
    assert "It has no current results" not in README.read_text()


def test_readme_nonlinear_tables_are_the_committed_tables():
    """The shared map that is nonlinear in fact (tables/nonlinear): its tables in the README, and its cells
    of both structures are the full study's, row for row."""
    import pandas as pd

    _study_section("nonlinear", reference="shared-linear")
    tables = README.parent / "tables"
    nl, full = (pd.read_csv(tables / t / "fits.csv.gz", dtype=str, keep_default_na=False) for t in ("nonlinear", "full"))
    for problem in ("shared-linear", "shared-nonlinear"):
        mine = nl[nl["problem"] == problem].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, full[full["problem"] == problem].reset_index(drop=True))


def test_readme_contested_tables_are_the_committed_tables():
    """The contested case at large n (contested-quick), the 40-replicate paired study under three schedules
    (robust-non-shared) and the stopping-rule study beside it (tolerance-non-shared)."""
    s, tables = _summarize(), README.parent / "tables"
    assert _block("contested-failing-table").startswith(s.failing_markdown(tables / "contested-quick"))
    assert _block("contested-spread-table").startswith(s.spread_markdown(tables / "contested-quick"))
    assert _block("contested-differences-table").startswith(s.differences_markdown(tables / "contested-quick"))
    assert _block("contested-power-table").startswith(s.power_markdown(tables / "power-contested-quick.csv"))
    for marker, name in (("robust-non-shared-table", "robust-non-shared"), ("tolerance-table", "tolerance-non-shared")):
        assert _block(marker).startswith(s.robust_table(tables / name).split("\n\n")[0])
    assert _block("robust-non-shared-failing-table").startswith(s.failing_markdown(tables / "robust-non-shared"))
    assert _block("robust-non-shared-power-table").startswith(s.power_markdown(tables / "power-robust-non-shared.csv"))
    assert _block("tolerance-paired-table").startswith(
        s.paired_runs_markdown(tables / "robust-non-shared", tables / "tolerance-non-shared"))
    assert "tables/partial" not in README.read_text()


def test_readme_robust_tables_are_the_committed_tables():
    s, tables = _summarize(), README.parent / "tables"
    assert _block("robust-table").startswith(s.robust_table(tables / "robust-quick").split("\n\n")[0])
    assert _block("robust-failing-table").startswith(s.failing_markdown(tables / "robust-quick"))
    assert _block("robust-spread-table").startswith(s.spread_markdown(tables / "robust-quick"))
    assert _block("robust-differences-table").startswith(s.differences_markdown(tables / "robust-quick",
                                                                                axes=("schedule",)))
    assert _block("robust-power-table").startswith(s.power_markdown(tables / "power-robust-quick.csv",
                                                                    schedules=("shrinking", "random")))
    import json

    from moe_estimation.config import study_preset

    meta = json.loads((tables / "robust-quick" / "config.json").read_text())
    assert meta["study"] == json.loads(json.dumps(study_preset("robust-quick").to_dict()))


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["quick", "robust-quick", "full", "nonlinear"])
def test_committed_figures_are_drawn_from_the_committed_tables(name, tmp_path):
    """figures/<name>'s study figures are what `plot` draws from tables/<name>, byte for byte (the
    transformer and teacher panels of figures/quick come from their own runs)."""
    import matplotlib

    matplotlib.use("Agg")
    from moe_estimation.plots import plot_study

    drawn = plot_study(README.parent / "tables" / name, tmp_path / name)
    assert any(p.name == "failing_key_value.png" for p in drawn)
    for p in drawn:
        committed = README.parent / "figures" / name / p.name
        assert committed.read_bytes() == p.read_bytes(), f"{committed} is not drawn from tables/{name}"


def test_readme_minimax_table_is_the_committed_table():
    """The worst case over the moving families in the README is summarize.py --minimax of tables/minimax-quick."""
    made = _summarize().minimax_markdown(README.parent / "tables" / "minimax-quick")
    assert _block("minimax-table").startswith(made)
