"""The example notebook runs, at tiny sizes: every code cell in order, in one namespace."""

import json
import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "first_study.ipynb"


@pytest.mark.e2e
def test_example_notebook_runs(monkeypatch, tmp_path):
    monkeypatch.setenv("MOE_ESTIMATION_NOTEBOOK_TINY", "1")
    monkeypatch.chdir(tmp_path)
    import matplotlib

    matplotlib.use("Agg")
    cells = [c for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    assert len(cells) >= 5
    namespace: dict = {}
    for i, cell in enumerate(cells):
        exec(compile("".join(cell["source"]), f"{NOTEBOOK.name} cell {i}", "exec"), namespace)
    assert len(namespace["fits"]) == 2 * 2 * 2 * 2
    assert (namespace["out"] / "figures" / "parts_non-shared_over.png").exists()
    assert os.environ["MOE_ESTIMATION_NOTEBOOK_TINY"] == "1"


@pytest.mark.e2e
def test_importing_the_library_leaves_matplotlib_alone():
    """A notebook's backend is the user's: importing the plots module does not switch it."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import moe_estimation, moe_estimation.plots; "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(NOTEBOOK.parents[1])))
    assert r.returncode == 0, r.stderr
