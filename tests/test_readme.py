"""The README: its quickstart runs as written, its commands are CI's, and every table in it is its committed table."""

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


def _module(name: str):
    """simulations/<name>.py as a module."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, README.parent / "simulations" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_readme_table_is_its_committed_table():
    """Every table of the README is what its table maker gives from the committed tables and benchmark records
    (simulations/readme_tables.py: one block a maker, between <!-- NAME --> and <!-- /NAME -->; running it
    without --check rewrites them). A README number that is not its table's fails here."""
    module = _module("readme_tables")
    bad = module.differing(README.read_text())
    assert not bad, f"README blocks differ from their committed tables (python simulations/readme_tables.py): {bad}"
    assert len(module.blocks()) >= 40


def test_committed_transformer_tables_belong_to_their_presets():
    """tables/transformer-<preset>/config.json records that preset's study, so a rerun of the README's command
    resumes those tables rather than refusing them."""
    import json

    from moe_estimation.experiments.results import plain_dict
    from moe_estimation.transformer.train import TRANSFORMER_PRESETS

    for preset in ("quick", "standard"):
        meta = json.loads((README.parent / "tables" / f"transformer-{preset}" / "config.json").read_text())
        assert meta["study"] == plain_dict(TRANSFORMER_PRESETS[preset]), preset


@pytest.mark.study  # rates thousands of fits again: seconds to half a minute each
@pytest.mark.parametrize("preset", ["quick", "robust-quick", "restarts-quick", "full", "contested-quick", "geometry",
                                    "nonlinear", "robust-non-shared", "tolerance-non-shared"])
def test_committed_study_is_its_preset_and_its_tables_are_its_fits(preset, tmp_path, monkeypatch):
    """tables/<preset> is a run of `study --preset <preset>` (or of `--config simulations/<name>.toml`; a rerun
    of the README's command resumes it: every row passes the resume check, fingerprint included), and its
    tables are what its fits give, rebuilt here from fits.csv alone (the larger studies hold it compressed,
    fits.csv.gz). The paired differences, the slowest table to rebuild, are checked for the quick
    study; the larger studies' are made by the same code."""
    import json

    import pandas as pd

    import moe_estimation.experiments.inference as inference
    from moe_estimation.experiments.config import load_config, study_preset
    from moe_estimation.experiments.results import check_fits_table, fits_file
    from moe_estimation.experiments.study import GEOMETRY_TABLES, MOVING_TABLES, TABLES, canonical_order, write_tables

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


def test_readme_sections_are_of_the_current_studies():
    """What the block check cannot see: the sections name no stale folder, the nonlinear study's cells of both
    structures are the full study's row for row, and the robustness study is its preset's."""
    import json

    import pandas as pd

    from moe_estimation.experiments.config import study_preset

    text, tables = README.read_text(), README.parent / "tables"
    assert "It has no current results" not in text and "tables/partial" not in text
    nl, full = (pd.read_csv(tables / t / "fits.csv.gz", dtype=str, keep_default_na=False) for t in ("nonlinear", "full"))
    for problem in ("shared-linear", "shared-nonlinear"):
        mine = nl[nl["problem"] == problem].reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, full[full["problem"] == problem].reset_index(drop=True))
    meta = json.loads((tables / "robust-quick" / "config.json").read_text())
    assert meta["study"] == json.loads(json.dumps(study_preset("robust-quick").to_dict()))


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["quick", "robust-quick", "full", "nonlinear"])
def test_committed_figures_are_drawn_from_the_committed_tables(name, tmp_path):
    """figures/<name>'s study figures are what `plot` draws from tables/<name>, byte for byte (the
    transformer and teacher panels of figures/quick come from their own runs)."""
    import matplotlib

    matplotlib.use("Agg")
    from moe_estimation.report.plots import plot_study

    drawn = plot_study(README.parent / "tables" / name, tmp_path / name)
    assert any(p.name == "failing_key_value.png" for p in drawn)
    for p in drawn:
        committed = README.parent / "figures" / name / p.name
        assert committed.read_bytes() == p.read_bytes(), f"{committed} is not drawn from tables/{name}"


@pytest.mark.e2e
def test_the_lab_figure_is_drawn_from_its_committed_table(tmp_path):
    """figures/lab is what `plot` draws from tables/lab-gaussian-moe, byte for byte."""
    import matplotlib

    matplotlib.use("Agg")
    from moe_estimation.report.plots import plot_lab

    drawn = plot_lab(README.parent / "tables" / "lab-gaussian-moe", tmp_path)
    assert [p.name for p in drawn] == ["lab_voronoi.png", "lab_by_cell_size.png"]
    for p in drawn:
        assert (README.parent / "figures" / "lab" / p.name).read_bytes() == p.read_bytes(), p.name




@pytest.mark.e2e
def test_readme_lab_example_runs():
    import numpy as np

    block = re.search(r"<!-- lab-example -->\n```python\n(.*?)```", README.read_text(), flags=re.S).group(1)
    namespace: dict = {}
    exec(compile(block, "README lab example", "exec"), namespace)
    assert all(np.isfinite(float(namespace[k].objective)) for k in ("direct", "em"))


@pytest.mark.e2e
def test_the_teacher_and_combined_figures_are_drawn_from_the_committed_tables(tmp_path, capsys):
    """figures/quick/teacher.png and combined.png are what `plot` draws from tables/quick, transformer-quick,
    teacher-quick and teacher-more, byte for byte."""
    from moe_estimation.cli import main

    t = README.parent / "tables"
    runs = [str(t / name) for name in ("quick", "transformer-quick", "teacher-quick", "teacher-more")]
    assert main(["plot", "--results", *runs, "--out", str(tmp_path)]) == 0
    for name in ("teacher.png", "combined.png", "transformer_curves.png"):
        assert (README.parent / "figures" / "quick" / name).read_bytes() == (tmp_path / name).read_bytes(), name


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["teacher-controls", "teacher-anatomy", "teacher-frozen"])
def test_the_teacher_checks_figures_are_drawn_from_their_committed_runs(name, tmp_path):
    """figures/<name> is what `plot` draws from tables/<name> (the teacher-student checks: controls, the extra
    prefix's anatomy, the frozen map), byte for byte."""
    from moe_estimation.cli import main

    assert main(["plot", "--results", str(README.parent / "tables" / name), "--out", str(tmp_path)]) == 0
    drawn = sorted(p.name for p in tmp_path.glob("*.png"))
    assert drawn and drawn == sorted(p.name for p in (README.parent / "figures" / name).glob("*.png"))
    for png in drawn:
        assert (README.parent / "figures" / name / png).read_bytes() == (tmp_path / png).read_bytes(), png


@pytest.mark.e2e
def test_the_published_figures_are_drawn_from_the_committed_runs(tmp_path):
    """figures/published is what simulations/published/figures.py draws from tables/published, byte for byte."""
    import matplotlib

    matplotlib.use("Agg")
    from moe_estimation.report.plots import plot_published
    from moe_estimation.report.summary import PUBLISHED, published_runs

    for source in PUBLISHED:
        loss, runs = published_runs(source, README.parent / "tables" / "published")
        for p in plot_published(runs, loss, tmp_path, source):
            assert (README.parent / "figures" / "published" / p.name).read_bytes() == p.read_bytes(), p.name


@pytest.mark.e2e
def test_the_teacher_controls_prose_quotes_the_committed_tables():
    """The numbers the README's prose quotes about the teacher's controls (the best-fit misses, the level of the
    excess risk, the least identified direction, its standard deviation, the first layer's medians) are computed
    here again from tables/teacher-controls and tables/teacher-quick."""
    import numpy as np
    import pandas as pd

    from moe_estimation.transformer.teacher import (TRUTH_STARTS, truth_information, best_fits,
                                                   identified_dimension, layer_parts, run_teachers, weak_directions)

    text = " ".join(README.read_text().split())  # the prose with its line breaks undone
    run = README.parent / "tables" / "teacher-controls"
    fits, started = pd.read_csv(run / "fits.csv"), pd.read_csv(run / TRUTH_STARTS)
    best = best_fits(fits, started)
    missed = best[best["missed"]]
    assert set(missed["parameterisation"]) == {"simple-share"} and len(missed) == 2
    assert sorted(zip(missed["n"], missed["seed"])) == [(2048, 0), (4096, 4)]
    assert "missed it twice (n = 2048, seed 0, and n = 4096, seed 4" in text
    gap = best.loc[best["parameterisation"] == "no-share", "relative_gap"].abs().max()
    assert gap < 2e-8 and "objectives within 2e-8 of each other" in text
    # the level: n x excess risk / sigma^2 over p, means over seeds
    sigma2 = 1e-8
    dims = identified_dimension(run)
    level = {(t, k, n): (h["n"] * h["excess_risk"]).mean() / sigma2 / dims[(t, k)]["rank"]
             for (t, k, n), h in best.groupby(["truth", "parameterisation", "n"])}
    late = [v for (t, k, n), v in level.items() if n >= 128]
    assert f"n x excess risk / sigma^2 is {min(late):.2f} to {max(late):.2f} of p from n = 128 on" in text
    early = [v for (t, k, n), v in level.items() if n == 64 and k == "no-share"]
    assert f"{min(early):.2f} to {max(early):.2f} of p at n = 64" in text
    quick = pd.concat([pd.read_csv(README.parent / "tables" / d / "fits.csv") for d in ("teacher-quick", "teacher-more")])
    quick = quick[(quick["specification"] == "exact") & (quick["parameterisation"] == "no-share")]
    at = lambda n: (quick[quick["n"] == n].groupby("truth")["excess_risk"].mean() * n / sigma2 / 72).round(1)
    assert f"{at(32).min():.1f} to {at(32).max():.1f} at 32 and {at(8).min():.1f} to {at(8).max():.1f} at 8" in text
    # the least identified direction of the no-share students, and what it predicts
    weak = weak_directions(run, count=2)
    first = weak[(weak["parameterisation"] == "no-share") & (weak["direction"] == 0)].set_index("truth")
    assert f"eigenvalue {first.loc['shared', 'eigenvalue']:.1e} and {first.loc['free', 'eigenvalue']:.1e} of the largest" in text
    times = [float(f"{r.next_eigenvalue / r.eigenvalue:.2g}") for r in first.loc[["shared", "free"]].itertuples()]
    assert f"{times[0]:.0f} and {times[1]:.0f} times below the next one" in text
    shares = [int(round(100 * float(r.loadings.split(", ")[0].rsplit(" ", 1)[1]))) for r in first.loc[["shared", "free"]].itertuples()]
    assert f"({shares[0]}% and {shares[1]}% of the direction" in text
    assert all(r.largest.startswith("bias (layer 0, head 1") for r in first.itertuples())
    H = {(t, k): h for t, k, _, h in truth_information(run)}[("shared", "no-share")]
    per_sequence = np.linalg.eigvalsh(H)[0] / 512  # the held-out sequences J^T J is taken on
    sd = [1e-4 / np.sqrt(n * per_sequence) for n in (64, 256, 1024)]
    assert "(lambda per sequence): {:.2f}, {:.2f} and {:.2f} at n = 64, 256 and 1024".format(*sd) in text
    # the first layer's medians
    teacher, head_dim = run_teachers(run)
    parts = layer_parts(fits, teacher, head_dim)
    first_layer = parts[(parts["weighting"] == "bias") & (parts["layer"] == 0) & (parts["truth"] == "shared")
                        & (parts["parameterisation"] == "no-share")].groupby("n")["d2"].median()
    assert "falls from {} at n = 256 to {}, {}, {} and {} at n = 512".format(
        *(f"{first_layer[n]:.2g}" for n in (256, 512, 1024, 2048, 4096))) in text
