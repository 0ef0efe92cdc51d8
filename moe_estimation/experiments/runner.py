"""One way to fit the missing cells of a resumable table, shared by every study that is a set of cells: the
prefix-MoE study (:mod:`moe_estimation.experiments.study`), the teacher-student study (:mod:`moe_estimation.transformer.teacher`)
and the lab's studies of any assembly (:mod:`moe_estimation.lab.study`).

A study is a list of cells and a function computing one (a pure function of its arguments: keys from the
cell's coordinates, so that any process computes the same numbers in any order). Around it this module does,
once for all of them: reading the table on disk through its check and refusing a damaged one unless asked to
repair it (:func:`load_cells`); saying what is resumed; a progress bar; handing the cells to worker
processes, the costliest first, and writing the table after every finished cell (:func:`fit_missing`). The
lock (:class:`moe_estimation.experiments.results.StudyLock`), the configuration check
(:func:`moe_estimation.experiments.results.check_same_study`), the run log (:class:`moe_estimation.experiments.results.RunLog`) and the
rate code (:func:`moe_estimation.experiments.results.rate_entries`) are the same pieces for every study as well.
"""

from __future__ import annotations

import sys
from typing import Callable

from tqdm.auto import tqdm

from .results import CellTable
from .workers import run_cells


def load_cells(table: CellTable, *, repair: bool = False, log=print) -> set:
    """Read ``table`` from disk through its check and return its finished cells. Cells the check drops
    (damaged or incomplete) make this refuse, with nothing changed, unless ``repair``: then they are named in
    ``log`` and left to be computed again."""
    finished = table.load()
    if table.problems and not repair:
        raise ValueError(f"{table.path} is damaged: " + "; ".join(table.problems) + ". Nothing was changed; rerun "
                         "with --repair to drop the damaged cells and recompute only them")
    if table.problems:
        log(f"repairing {table.path}: " + "; ".join(table.problems) + " (dropped, to be recomputed)")
    return finished


def fit_missing(table: CellTable, todo: list, *, total: int, work: Callable, args: Callable, rows: Callable,
                describe: Callable, cost: Callable | None = None, workers: int = 1, progress: bool = True, log=print,
                unit: str = "cells", write: bool = True) -> None:
    """Compute the cells ``todo`` (of ``total`` in the study) and add each one's rows to ``table`` as it
    finishes (written at once when ``write``: a run killed at any point resumes from there).

    ``work(*args(cell))`` computes a cell (in this process, or with ``workers`` above 1 in worker processes,
    :func:`moe_estimation.experiments.workers.run_cells`, the cells sorted by ``cost(cell)``, the costliest first, so that
    the workers finish together); ``rows(cell, result)`` makes its table rows; ``describe(cell)`` labels the
    progress bar; ``unit`` names the cells in messages."""
    before = total - len(todo)
    if before:
        log(f"resuming: {before} of {total} {unit} already in {table.path}")
    bar = tqdm(total=total, initial=before, disable=not progress, unit="cell", file=sys.stderr)
    todo = list(todo)
    if workers > 1 and len(todo) > 1:
        log(f"fitting {len(todo)} {unit} in {min(workers, len(todo))} worker processes (one core each)")
        if cost is not None:
            todo = sorted(todo, key=lambda c: -cost(c))
    tasks = [tuple(args(c)) for c in todo]
    cell_of = {id(t): c for t, c in zip(tasks, todo)}

    def done(task, result):
        cell = cell_of[id(task)]
        table.add(rows(cell, result), write=write)
        bar.set_description(describe(cell))
        bar.update(1)

    try:
        run_cells(work, tasks, done, workers=workers)
    finally:
        bar.close()
