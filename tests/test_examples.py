"""The example notebook runs, at tiny sizes, in a Jupyter kernel as a user's would (the `notebook` extra)."""

import json
import os
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "first_study.ipynb"


@pytest.mark.e2e
def test_example_notebook_runs(monkeypatch, tmp_path):
    """Every cell in order in an IPython kernel (nbclient, as `jupyter-execute` runs it), then one probe cell
    that reports what the notebook made."""
    import nbformat
    from nbclient import NotebookClient

    monkeypatch.setenv("MOE_ESTIMATION_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert sum(c.cell_type == "code" for c in nb.cells) >= 5
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json; print(json.dumps(dict(fits=len(fits), figure=(out / 'figures' / 'parts_non-shared_over.png')"
        ".exists(), tiny=TINY)))"))
    NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    probe = json.loads(nb.cells[-1].outputs[-1]["text"])
    assert probe == dict(fits=2 * 2 * 2 * 2, figure=True, tiny=True)


@pytest.mark.e2e
def test_importing_the_library_leaves_matplotlib_alone():
    """A notebook's backend is the user's: importing the plots module does not switch it."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import moe_estimation, moe_estimation.report.plots; "
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, PYTHONPATH=str(NOTEBOOK.parents[1])))
    assert r.returncode == 0, r.stderr
