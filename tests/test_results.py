"""The results module: the table written cell by cell (resume), and the one path from rows to rates."""

import numpy as np
import pandas as pd
import pytest

from moe_estimation.rates import empirical_rate
from moe_estimation.experiments.results import CellTable, loss_matrix, rate_entries

COLUMNS = ["kind", "n", "seed", "loss"]


def _cell(kind, n, seeds=3):
    return dict(kind=kind, n=n, seed=np.arange(seeds), loss=1.0 / np.sqrt(n) * (1 + 0.1 * np.arange(seeds)))


def test_cell_table_resumes_finished_cells_and_drops_a_short_one(tmp_path):
    t = CellTable(tmp_path / "t.csv", COLUMNS, ["kind", "n"], 3)
    assert t.load() == set()
    t.add(_cell("a", 10))
    t.add(_cell("b", 10))
    # a run killed while writing a third cell: only two of its rows reached the disk
    df = pd.concat([t.frame(), pd.DataFrame(_cell("a", 20, seeds=2))], ignore_index=True)
    df.to_csv(t.path, index=False)
    again = CellTable(tmp_path / "t.csv", COLUMNS, ["kind", "n"], 3)
    assert again.load() == {("a", 10), ("b", 10)}
    assert again.problems and "without exactly 3 rows" in again.problems[0]
    again.add(_cell("a", 20))
    back = pd.read_csv(t.path)
    assert len(back) == 9 and set(zip(back["kind"], back["n"])) == {("a", 10), ("b", 10), ("a", 20)}
    np.testing.assert_array_equal(back["loss"].to_numpy(), again.frame()["loss"].to_numpy())  # full precision


def test_cell_table_refuses_a_table_with_other_columns(tmp_path):
    pd.DataFrame(dict(kind=["a"], n=[1])).to_csv(tmp_path / "t.csv", index=False)
    t = CellTable(tmp_path / "t.csv", COLUMNS, ["kind", "n"], 1)
    assert t.load() == set() and "columns" in t.problems[0]


def test_loss_matrix_orders_by_size_then_replicate():
    rows = pd.DataFrame(dict(n=[20, 10, 20, 10], seed=[1, 1, 0, 0], loss=[4.0, 2.0, 3.0, 1.0]))
    ns, mat = loss_matrix(rows, "loss", replicate="seed")
    assert ns.tolist() == [10, 20]
    np.testing.assert_array_equal(mat, [[1.0, 2.0], [3.0, 4.0]])


def test_rate_entries_match_empirical_rate_and_name_an_empty_size():
    ns = np.array([10, 20, 40, 80])
    rng = np.random.default_rng(0)
    mat = ns[:, None] ** -0.5 * np.exp(0.1 * rng.normal(size=(4, 6)))
    out = rate_entries(ns, mat, num_bootstrap=200, seed=3)
    want = empirical_rate(ns, mat, statistic="median", num_bootstrap=200, seed=3)
    assert [e["statistic"] for e in out] == ["mean", "median"]
    assert out[1]["slope"] == pytest.approx(want.slope) and out[1]["ci_low"] == pytest.approx(want.ci_low)
    mat[2] = 0.0  # every loss exactly zero at n = 40: no log, no rate, and the note says where
    empty = rate_entries(ns, mat, num_bootstrap=200, seed=3)
    assert np.isnan(empty[0]["slope"]) and "n = [40]" in empty[0]["note"]
    mat[2, 0] = np.inf  # a non-finite loss is left out, never averaged in
    mat[2, 1:] = 0.1
    assert np.isfinite(rate_entries(ns, mat, num_bootstrap=200, seed=3)[0]["slope"])
