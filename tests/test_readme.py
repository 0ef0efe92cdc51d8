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
