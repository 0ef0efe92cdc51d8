"""Results on disk: the table schema, atomic writes, the checks a resume makes, and one writer per directory.

Used by the Monte Carlo study (:mod:`moe_estimation.experiments.study`), the transformer runs and the figures, so that a
table is written, read back and checked in one way everywhere.

- :data:`FITS_COLUMNS`: the columns of a study's ``fits.csv``, one row per fit; :data:`RATE_LOSSES`: how
  each loss of ``rates.csv`` is read from it.
- :func:`atomic_write`, :func:`write_csv`: a temporary file, flushed to disk, then renamed over the target:
  a reader, or a run killed at any point, sees the old file or the new one, never half of one. Floats are
  written at full precision (they read back exactly) and NaN as ``nan``.
- :func:`check_fits_table`: what a resume checks before it trusts a ``fits.csv``; :func:`fits_file`: a
  finished study's fits, ``fits.csv`` or, as committed when large, ``fits.csv.gz``.
- :class:`CellTable`: a table written one cell at a time and resumed from disk (the study's ``fits.csv``, the
  transformer's ``curves.csv`` and the teacher-student ``fits.csv``).
- :func:`loss_matrix`, :func:`rate_entries`: from rows of a table to the empirical rates of
  :func:`moe_estimation.rates.empirical_rate`, with one rule for zero, missing and non-finite losses.
- :class:`StudyLock`: one writer per output directory; :class:`RunLog`: the append-only log of its runs.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pandas as pd
import scipy

from .. import __version__
from .config import RATE_LOSSES, StudyConfig  # noqa: F401  (RATE_LOSSES re-exported)
from ..prefix.estimator import unflatten_params
from ..prefix.model import Params
from ..rates import empirical_rate, ols_line, statistic_of
from ..solver import STATUS_LABELS
from ..prefix.voronoi import IDENTIFIED_NAMES

PART_NAMES = ("weight", "single", "multi", "key_single", "key_multi", "value_single", "value_multi", "max_multi")
ID_NAMES = IDENTIFIED_NAMES  # fits.csv holds them as id_<name> (cells by atom) and idk_<name> (cells by key)
SCHEDULE_COLUMNS = ["schedule", "init", "init_scale", "init_rate", "restarts"]
FITS_COLUMNS = (
    ["problem", "structure", "specification", "num_prompts", "n", "replicate", "seed"] + SCHEDULE_COLUMNS
    + ["loss_own", "loss_key_value"]
    + [f"own_{p}" for p in PART_NAMES]
    + [f"kv_{p}" for p in PART_NAMES]
    + [f"id_{p}" for p in ID_NAMES]
    + [f"idk_{p}" for p in ID_NAMES]
    + ["start_key_value", "objective", "converged", "status", "steps", "at_bound", "bound_coordinates", "seconds",
       "design", "params", "true_params"]
)
CELL = ["problem", "specification", "schedule", "n"]


def describe_schedule(row) -> str:
    """A schedule's starts in words, from a row of fits.csv or rates.csv (its schedule columns)."""
    if row["init"] == "best-of-all":
        return f"the lowest objective of every schedule's fit of the data set ({int(row['restarts'])} restarts in all)"
    if row["init"] == "random":
        region = "the whole box" if row["init_scale"] == 1 else f"{row['init_scale']:g} of the box"
        return f"uniform over {region}, best of {int(row['restarts'])}"
    scale = f"{row['init_scale']:g} n^-{row['init_rate']:.3g}" if row["init_rate"] else f"{row['init_scale']:g} (fixed)"
    return f"truth + noise of scale {scale}, best of {int(row['restarts'])}"


def format_params(params) -> list[str]:
    """The fitted parameters of a batch of fits (:class:`moe_estimation.Params` with a leading axis) as
    fits.csv's ``params`` text: per fit the flat vector of :func:`moe_estimation.prefix.estimator.flatten_params`
    (the atoms row by row, then the biases), space-separated at full precision (it reads back exactly), so
    that a loss defined later is computed from a finished study without refitting."""
    atoms, biases = np.asarray(params.atoms), np.asarray(params.biases)
    flat = np.concatenate([atoms.reshape(len(atoms), -1), biases], axis=1)
    return [" ".join(f"{x:.17g}" for x in row) for row in flat]


def parse_params(text: str, num_prompts: int, atom_dim: int):
    """One fit's :class:`moe_estimation.Params` from its ``params`` text (:func:`format_params`)."""
    theta = np.array([float(x) for x in str(text).split()])
    if len(theta) != num_prompts * (atom_dim + 1):
        raise ValueError(f"params: expected {num_prompts * (atom_dim + 1)} numbers ({num_prompts} prompts of "
                         f"{atom_dim} atom coordinates and a bias), got {len(theta)}")
    return unflatten_params(theta, num_prompts, atom_dim)


def atomic_write(path: Path, text: str) -> None:
    """Write to a temporary file beside ``path``, flush it to disk, then rename it over ``path``: a reader
    (or a run killed at any point) sees the old table or the new one, never half of one."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_config(path: Path, meta: dict, provenance) -> None:
    """Write ``config.json`` (``meta``) atomically; on a resume (the file exists) the keys named in
    ``provenance`` keep the values of the run that began the study (each run's own go to ``runs.jsonl``)."""
    path = Path(path)
    if path.is_file():
        first = json.loads(path.read_text())
        meta = dict(meta, **{k: first[k] for k in provenance if k in first})
    atomic_write(path, json.dumps(meta, indent=2))


def plain_dict(study) -> dict:
    """A study NamedTuple (nested ones too) as the plain JSON-shaped dict ``config.json`` holds, so that a
    study read back compares equal to the one written (tuples become lists)."""
    return json.loads(json.dumps({k: (v._asdict() if hasattr(v, "_asdict") else v) for k, v in study._asdict().items()}))


def differing_settings(old, new, prefix: str = "", limit: int = 6) -> list[str]:
    """``key: old -> new`` for each setting that differs between two plain configuration dicts (nested keys
    joined by dots; at most ``limit`` listed, then how many more)."""
    out: list[str] = []

    def walk(a, b, path):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in list(a) + [k for k in b if k not in a]:
                walk(a.get(k, "(absent)"), b.get(k, "(absent)"), f"{path}.{k}" if path else str(k))
        elif a != b:
            show = lambda x: (s if len(s := json.dumps(x)) <= 60 else s[:57] + "...")
            out.append(f"{path}: {show(a)} -> {show(b)}")

    walk(old, new, prefix)
    return out[:limit] + ([f"and {len(out) - limit} more"] if len(out) > limit else [])


def check_same_study(out: Path, study: dict, what: str = "study", reread=(), log=print, fingerprinted: bool = False) -> None:
    """Refuse an ``out`` whose ``config.json`` was written for another study (``study``: its plain dict).
    The keys named in ``reread`` say how finished fits are read into tables, not how they are made: when
    only they differ, the study goes on (its tables are rebuilt from the fits) and ``log`` says so."""
    cfg_path = out / "config.json"
    if not cfg_path.exists():
        return
    try:
        old = json.loads(cfg_path.read_text()).get("study")
    except (ValueError, UnicodeDecodeError, AttributeError) as e:
        raise ValueError(f"--out: {cfg_path} is not a {what}'s config.json (not a JSON object: {str(e).splitlines()[0]}); "
                         "choose a new --out, or delete the file if the folder is this run's") from None
    new = json.loads(json.dumps(study))
    if not isinstance(old, dict):
        raise ValueError(f"--out: {cfg_path} records no {what}; choose a new --out, or delete the file")
    differ = differing_settings({k: v for k, v in old.items() if k not in reread},
                                {k: v for k, v in new.items() if k not in reread})
    if differ:
        advice = ("Choose a new --out; or move its config.json away and rerun with --repair: the fits whose design "
                  "is this one's are kept (every fit row carries its fingerprint), the others dropped and fitted anew"
                  if fingerprinted else "Choose a new --out, or delete it")
        raise ValueError(f"--out: {out} holds a different {what}: {'; '.join(differ)}. {advice}")
    changed = [k for k in reread if old.get(k) != new.get(k)]
    if changed:
        log(f"{out}: the settings {changed} differ from config.json's; the fits are kept and every table is "
            "rebuilt from them")


def write_csv(path: Path, df: pd.DataFrame) -> None:
    """Write a table atomically, floats at full precision (round-trips exactly), NaN written as ``nan``
    (an empty field would read as a missing value)."""
    atomic_write(path, df.to_csv(index=False, float_format="%.17g", na_rep="nan"))


def read_columns(source, columns) -> tuple[pd.DataFrame, list[str]]:
    """A table on disk (a path, or a text buffer) with exactly ``columns``, in that order: ``(table, [])``; or an
    empty table and what is wrong with it (unreadable, or other columns), for a table check to report."""
    try:
        df = pd.read_csv(source)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        return pd.DataFrame(columns=columns), [f"unreadable as a table ({str(e).splitlines()[0]})"]
    if sorted(df.columns) != sorted(columns):
        return pd.DataFrame(columns=columns), [f"columns {list(df.columns)} are not {list(columns)}"]
    return df[list(columns)], []


class CellTable:
    """A table built one *cell* at a time (a cell: the rows sharing the values of the ``cell`` columns), and
    written atomically to ``path`` after each, so that a run killed at any point resumes from the last
    finished cell.

    ``check(path) -> (rows, problems)`` reads what is on disk and keeps only sound cells (default: the
    columns must be exactly ``columns``, and a cell must hold ``per_cell`` rows, no more, no fewer); the
    study passes :func:`check_fits_table`. :attr:`problems` lists what the check dropped."""

    def __init__(self, path: Path, columns, cell, per_cell: int, check=None):
        self.path, self.columns, self.cell, self.per_cell = Path(path), list(columns), list(cell), int(per_cell)
        self._check = check or self._default_check
        self.parts: list[pd.DataFrame] = []
        self.problems: list[str] = []

    def _default_check(self, path: Path) -> tuple[pd.DataFrame, list[str]]:
        df, problems = read_columns(path, self.columns)
        if problems:
            return df, problems
        sizes = df.groupby(self.cell, sort=False).transform("size") if len(df) else pd.Series(dtype=int)
        short = sizes != self.per_cell
        if short.any():
            return df[~short].reset_index(drop=True), [f"{int(short.sum())} row(s) in cells without exactly "
                                                        f"{self.per_cell} rows (dropped)"]
        return df, []

    def load(self) -> set:
        """Read the table on disk (if any) through the check; returns the set of finished cells (tuples of the
        ``cell`` columns' values)."""
        self.parts, self.problems = [], []
        if self.path.is_file():
            df, self.problems = self._check(self.path)
            if len(df):
                self.parts.append(df[self.columns])
        return self.finished()

    def finished(self) -> set:
        df = self.frame()
        return set() if not len(df) else {tuple(k) if isinstance(k, tuple) else (k,) for k in
                                          df.groupby(self.cell, sort=False).groups}

    def add(self, rows, write: bool = True) -> None:
        """Append one cell's rows (a DataFrame or a dict of columns) and write the table."""
        rows = pd.DataFrame(rows)[self.columns]
        self.parts.append(rows)
        if write:
            self.write()

    def frame(self) -> pd.DataFrame:
        return pd.concat(self.parts, ignore_index=True) if self.parts else pd.DataFrame(columns=self.columns)

    def write(self, df: pd.DataFrame | None = None) -> None:
        """Write the table (or ``df``, which then replaces it) atomically."""
        if df is not None:
            self.parts = [df[self.columns]]
        write_csv(self.path, self.frame())


def loss_matrix(rows: pd.DataFrame, values, size: str = "n", replicate: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(ns, mat)`` for :func:`rate_entries`: the sorted sample sizes of ``rows`` (column ``size``) and a
    matrix ``(len(ns), R)`` of ``values`` (a column name, or the array itself, aligned with ``rows``), one
    row per size, R the largest number of rows at one size (a size with fewer is padded with NaN, which
    :func:`moe_estimation.rates.empirical_rate` reads as missing). With ``replicate``, that column orders
    the entries of each row."""
    values = rows[values].to_numpy(float) if isinstance(values, str) else np.asarray(values, float)
    if replicate is not None:
        order = np.lexsort((rows[replicate].to_numpy(), rows[size].to_numpy()))
    else:
        order = np.argsort(rows[size].to_numpy(), kind="stable")
    sizes, values = rows[size].to_numpy()[order], values[order]
    ns = np.unique(sizes)
    R = max(int((sizes == n).sum()) for n in ns)
    mat = np.full((len(ns), R), np.nan)
    for i, n in enumerate(ns):
        v = values[sizes == n]
        mat[i, : len(v)] = v
    return ns.astype(int), mat


def rate_entries(ns, mat, *, num_bootstrap: int, seed: int, statistics=("mean", "median")) -> list[dict]:
    """One dict per statistic: ``statistic``, ``slope``, ``ci_low``, ``ci_high``, ``note``. A loss that is not
    finite is left out (a non-finite fit is counted apart by the caller, never averaged in); an exact zero is a
    value and is kept (the mean of 0, 0 and 1 is 1/3, as the figures draw it). A sample size left with no loss
    at all, or whose statistic is 0 (the median of a loss that is zero in most fits), gives no rate (NaN) and a
    ``note`` saying which; one with a single finite loss, a slope without an interval. Anything else that fails
    is a bug, and raises."""
    mat = np.array(mat, dtype=float)
    mat[~np.isfinite(mat)] = np.nan
    empty = [int(n) for n, row in zip(ns, mat) if not np.any(np.isfinite(row))]
    single = [int(n) for n, row in zip(ns, mat) if np.sum(np.isfinite(row)) == 1]
    out = []
    for stat in statistics:
        if len(ns) < 2:  # a study stopped before its second size: its tables are written, without a slope
            out.append(dict(statistic=stat, slope=np.nan, ci_low=np.nan, ci_high=np.nan,
                            note=f"one sample size so far (n = {[int(n) for n in ns]}): no slope"))
            continue
        if empty:
            out.append(dict(statistic=stat, slope=np.nan, ci_low=np.nan, ci_high=np.nan,
                            note=f"no positive finite loss at n = {empty}"))
            continue
        point = statistic_of(mat, stat, axis=1)
        if np.any(point <= 0):
            out.append(dict(statistic=stat, slope=np.nan, ci_low=np.nan, ci_high=np.nan,
                            note=f"the {stat} is 0 at n = {[int(n) for n, p in zip(ns, point) if p <= 0]}: no slope"))
            continue
        if single:  # one loss at some n: a slope, but its bootstrap would resample that n to itself
            slope = ols_line(np.log(ns), np.log(point))[0]
            out.append(dict(statistic=stat, slope=slope, ci_low=np.nan, ci_high=np.nan,
                            note=f"one positive finite loss at n = {single}: no interval"))
            continue
        r = empirical_rate(ns, mat, statistic=stat, num_bootstrap=num_bootstrap, seed=seed)
        out.append(dict(statistic=stat, slope=r.slope, ci_low=r.ci_low, ci_high=r.ci_high, note=""))
    return out


def versions() -> dict:
    return {
        "moe_estimation": __version__, "jax": jax.__version__, "numpy": np.__version__, "pandas": pd.__version__,
        "scipy": scipy.__version__, "python": sys.version.split()[0],
    }


def cells(cfg: StudyConfig):
    # n outermost: a run stopped part-way has every problem and schedule at the smaller sizes
    for n in cfg.ns:
        for prob_name in cfg.problems:
            for spec in cfg.specifications_of(prob_name):
                for schedule in cfg.schedule_names:
                    yield prob_name, spec, schedule, n


_INT_COLUMNS = ("num_prompts", "n", "replicate", "seed", "restarts", "steps")
_BOOL_COLUMNS = ("converged", "at_bound")
_FLOAT_COLUMNS = ("init_scale", "init_rate", "seconds")
_TEXT_COLUMNS = ("problem", "structure", "specification", "schedule", "init", "status", "bound_coordinates", "design",
                 "params", "true_params")
# columns a table written before they existed may lack; check_fits_table fills them from the configuration
_LATER_COLUMNS = ("true_params",)


def cell_design(cfg: StudyConfig, problem, num_prompts: int, schedule: str, name: str | None = None) -> str:
    """A fingerprint of everything a cell's fits depend on besides n and the replicate: the root seed, the
    problem (every array and setting of it, the noise variance included; for a truth that moves with n, the
    problem before it moves, the declared ``moving`` law and the family its starts are drawn under, given
    problem ``name``) and the estimator's settings (the [fit] table and the schedule). fits.csv writes it on
    every row, and a resume keeps only rows whose fingerprint is the configuration's: a row fitted under
    another design is never taken for this one's, with or without config.json."""
    fields = {}
    for f in dataclasses.fields(problem):
        v = getattr(problem, f.name)
        fields[f.name] = np.asarray(v).tolist() if hasattr(v, "shape") else v
    design = dict(seed=cfg.seed, problem=fields, dtype=str(problem.dtype),
                  fit=cfg.fit_settings(num_prompts, schedule)._asdict())
    if name is not None and (cfg.moving(name) is not None or cfg.family(name) != name):
        design.update(moving=cfg.moving(name), family=cfg.family(name))  # fixed truths keep their old fingerprint
    text = json.dumps(design, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def truth_text(problem) -> str:
    """A problem's true atoms and biases as fits.csv's ``true_params`` text (the layout of ``params``,
    :func:`format_params`): the truth each fit was scored against, which for a moving truth depends on n."""
    return format_params(Params(atoms=np.asarray(problem.true_atoms)[None], biases=np.asarray(problem.true_biases)[None]))[0]


def _expected_cells(cfg: StudyConfig) -> dict:
    """cell -> what its rows must say (structure, num_prompts, schedule columns, design), from the configuration."""
    out = {}
    problems = {name: cfg.problem(name) for name in cfg.problems}
    truths = {(name, n): truth_text(cfg.problem(name, n) if cfg.moving(name) else problems[name])
              for name in cfg.problems for n in cfg.ns}
    for prob_name, spec, schedule, n in cells(cfg):
        prob, sc = problems[prob_name], cfg.schedule(schedule)
        num_prompts = cfg.num_prompts(prob, spec, prob_name)
        out[(prob_name, spec, schedule, n)] = dict(
            structure=prob.structure, num_prompts=num_prompts, seed=cfg.seed,
            init=sc["init"], init_scale=float(sc["init_scale"]), init_rate=float(sc["init_rate"]),
            restarts=int(sc["restarts"]), design=cell_design(cfg, prob, num_prompts, schedule, prob_name),
            true_params=truths[prob_name, n])
    return out


def fits_file(folder: str | Path) -> Path:
    """The fits table of a study folder: ``fits.csv``, or ``fits.csv.gz`` where only the compressed copy is
    there (a large committed study); ``fits.csv`` when neither is, so that a message names the usual file.
    Every reader of a finished study (tables, figures, summaries, power) goes through here; a run that
    writes (``study``) resumes from ``fits.csv`` only."""
    folder = Path(folder)
    plain, packed = folder / "fits.csv", folder / "fits.csv.gz"
    return packed if packed.is_file() and not plain.is_file() else plain


def check_fits_table(path: Path, cfg: StudyConfig) -> tuple[pd.DataFrame, list[str]]:
    """Read a study's ``fits.csv`` and check it against ``cfg``: the columns and their types, complete rows
    (the writer ends every row with a newline, so a table cut mid-row is seen), every row a cell and
    replicate of this study with its schedule as declared, no duplicates, every cell with exactly its
    replicates. Returns the rows of the sound cells and one line per problem found (empty when sound)."""
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    problems: list[str] = []
    if raw and not raw.endswith(b"\n"):
        problems.append("the last row is cut short (no end of line): the cell it belongs to is damaged")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        return pd.DataFrame(columns=FITS_COLUMNS), [f"unreadable as a table ({str(e).splitlines()[0]}): every row dropped"]
    expected = _expected_cells(cfg)
    later = [c for c in _LATER_COLUMNS if c not in df.columns]
    if later and len(df.columns) + len(later) == len(FITS_COLUMNS):  # written before these columns existed
        for c in later:
            df[c] = [expected.get((p, s, sc, int(n)) if str(n).isdigit() else None, {}).get(c, "")
                     for p, s, sc, n in zip(df["problem"], df["specification"], df["schedule"], df["n"])]
    missing = [c for c in FITS_COLUMNS if c not in df.columns]
    extra = [c for c in df.columns if c not in FITS_COLUMNS]
    if missing or extra:
        what = (f"missing columns {missing}" if missing else "") + (" and " if missing and extra else "") + (
            f"unknown columns {extra}" if extra else "")
        return pd.DataFrame(columns=FITS_COLUMNS), [f"{what}: not a fits table of this version, every row dropped"]
    df = df[FITS_COLUMNS]
    bad = pd.Series(False, index=df.index)
    if problems:  # the cut row
        bad.iloc[-1] = True
    parsed = df.copy()
    for c in _INT_COLUMNS:
        v = pd.to_numeric(df[c], errors="coerce")
        bad |= v.isna() | (v != v.round())
        parsed[c] = v
    for c in _FLOAT_COLUMNS:
        v = pd.to_numeric(df[c], errors="coerce")
        bad |= v.isna()
        parsed[c] = v
    for c in _BOOL_COLUMNS:
        bad |= ~df[c].isin(["True", "False"])
        parsed[c] = df[c] == "True"
    for c in _TEXT_COLUMNS:
        bad |= df[c].isna() | (df[c] == "")
    bad |= ~df["status"].isin(STATUS_LABELS)
    losses = [c for c in FITS_COLUMNS if c not in _INT_COLUMNS + _BOOL_COLUMNS + _FLOAT_COLUMNS + _TEXT_COLUMNS]
    for c in losses:  # NaN is a legitimate loss (a non-finite fit); text that is no number is not
        v = pd.to_numeric(df[c], errors="coerce")
        bad |= v.isna() & ~df[c].isin(["nan", "NaN", "inf", "-inf"])
        parsed[c] = v
    if bad.any():
        problems.append(f"{int(bad.sum())} row(s) with a missing or malformed value")
    parsed = parsed[~bad].copy()
    for c in _INT_COLUMNS:
        parsed[c] = parsed[c].astype(np.int64)
    cell = list(zip(*(parsed[c] for c in CELL)))
    parsed["_cell"] = [(p, s, sc, int(n)) for p, s, sc, n in cell]
    foreign, other_design = [], []
    for i, (c, row) in enumerate(zip(parsed["_cell"], parsed.itertuples(index=False))):
        want = expected.get(c)
        if want is None or not 0 <= row.replicate < cfg.replicates or any(
                getattr(row, k) != v for k, v in want.items() if k != "design"):
            foreign.append(i)
        elif row.design != want["design"]:
            other_design.append(i)
    dims = parsed["problem"].map({name: cfg.problem(name).atom_dim + 1 for name in cfg.problems})
    shape_ok = (parsed["params"].str.split().str.len() == parsed["num_prompts"] * dims).to_numpy()
    foreign = sorted((set(foreign) | set(np.flatnonzero(~shape_ok))) - set(other_design))  # params of another shape
    if foreign:
        problems.append(f"{len(foreign)} row(s) that belong to no cell of this study (or not with its settings)")
    if other_design:
        problems.append(f"{len(other_design)} row(s) fitted under another design (their fingerprint says the problem, "
                        "the seed or the fit settings differ from this configuration's)")
    foreign = sorted(set(foreign) | set(other_design))
    # the unit that is fitted, written and resumed: a cell, or with [grid] block a block of its replicates
    size = cfg.block_size
    parsed["_task"] = [(*c, int(r) // size) for c, r in zip(parsed["_cell"], parsed["replicate"])]
    tasks = {(*c, k) for c in expected for k in range(cfg.blocks)}
    damaged = set(parsed["_task"].iloc[foreign]) & tasks
    ok = parsed.drop(parsed.index[foreign])
    dup = ok.duplicated(CELL + ["replicate"], keep=False)
    damaged |= set(ok["_task"][dup])
    sizes = ok.groupby("_task").size()
    short = {t for t, k in sizes.items() if k != len(cfg.block_replicates(t[-1]))}
    damaged |= short
    damaged |= {t for t in df.index[bad].map(lambda i: _task_of(df.loc[i], size)) if t in tasks}
    unit = "cell" if cfg.blocks == 1 else "block"
    if dup.any():
        problems.append(f"duplicated replicates in {len(set(ok['_task'][dup]))} {unit}(s)")
    if short - set(ok["_task"][dup]):
        what = f"their {cfg.replicates} replicates" if cfg.blocks == 1 else f"their block's replicates (blocks of {size})"
        problems.append(f"{len(short - set(ok['_task'][dup]))} {unit}(s) without exactly {what}")
    if damaged:
        name = lambda p, s, sc, n, k: f"{p} {s} {sc} n={n}" + (f" block {k}" if cfg.blocks > 1 else "")
        shown = ", ".join(name(*t) for t in sorted(damaged)[:4])
        problems.append(f"damaged {unit}s: {shown}" + (f" and {len(damaged) - 4} more" if len(damaged) > 4 else ""))
    keep = ok[~ok["_task"].isin(damaged)].drop(columns=["_cell", "_task"])
    return keep.reset_index(drop=True), problems


def finished_tasks(fits: pd.DataFrame, cfg: StudyConfig) -> set:
    """The tasks (problem, specification, schedule, n, block) whose every replicate is in ``fits`` (rows
    that :func:`check_fits_table` passed); block is 0 when the study fits whole cells."""
    if not len(fits):
        return set()
    size = cfg.block_size
    counts = fits.groupby([fits[c] for c in CELL] + [fits["replicate"] // size]).size()
    return {(p, s, sc, int(n), int(k)) for (p, s, sc, n, k), m in counts.items()
            if m == len(cfg.block_replicates(int(k)))}


def tasks(cfg: StudyConfig):
    """Every task of ``cfg``: each cell of :func:`cells`, split into ``cfg.blocks`` blocks of replicates."""
    for cell in cells(cfg):
        for k in range(cfg.blocks):
            yield (*cell, k)


def _task_of(row, size: int) -> tuple | None:
    cell = _cell_of(row)
    try:
        return None if cell is None else (*cell, int(float(row["replicate"])) // size)
    except (ValueError, TypeError):
        return None


def _cell_of(row) -> tuple | None:
    try:
        return (row["problem"], row["specification"], row["schedule"], int(float(row["n"])))
    except (ValueError, TypeError):
        return None


class RunLog:
    """``runs.jsonl`` in a run's folder: one JSON line appended per event (``start``: the versions, platform and
    devices of this run, and what it found and will do; ``end``: what it fitted), never rewritten, so that a
    study begun on one machine or version and finished on another says so. ``config.json`` keeps the
    provenance of the run that began the study."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path, self.enabled = Path(path), enabled

    def append(self, event: str, **fields) -> None:
        if not self.enabled:
            return
        line = json.dumps(dict(event=event, time=time.strftime("%Y-%m-%d %H:%M:%S"), host=platform.node(),
                               pid=os.getpid(), **fields), default=str)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def read(self) -> list[dict]:
        """Every event logged so far (none when there is no log)."""
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class StudyLock:
    """One writer per output directory: ``out/.lock`` holds the writer's process id, host and start time.
    A second run refuses (naming the first) or, with ``wait``, waits for it. A lock whose process is gone
    (same host, no such process) is stale: it is removed with a note and the run goes on."""

    def __init__(self, out: Path, *, wait: bool = False, log=print, poll: float = 1.0):
        self.path, self.wait, self.log, self.poll = out / ".lock", wait, log, poll
        self.held = False

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None

    @staticmethod
    def _alive(owner: dict) -> bool:
        if owner.get("host") != platform.node():
            return True  # another host's process: cannot be checked from here
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return False
        except (PermissionError, KeyError, ValueError, TypeError):
            return True
        return True

    def __enter__(self):
        me = dict(pid=os.getpid(), host=platform.node(), started=time.strftime("%Y-%m-%d %H:%M:%S"))
        told = False
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner = self._owner()
                if owner is None or not self._alive(owner):
                    self.log(f"removing a stale lock {self.path} (process {owner and owner.get('pid')} on "
                             f"{owner and owner.get('host')} is gone)")
                    self.path.unlink(missing_ok=True)
                    continue
                if not self.wait:
                    raise ValueError(
                        f"--out: {self.path.parent} is being written by process {owner.get('pid')} on "
                        f"{owner.get('host')} since {owner.get('started')}; wait for it (or pass --wait), or, if "
                        f"that process is gone, delete {self.path}") from None
                if not told:  # say once what is awaited, and, for another host's lock, what this run cannot check
                    other = owner.get("host") != platform.node()
                    self.log(f"waiting for process {owner.get('pid')} on {owner.get('host')} (writing {self.path.parent} "
                             f"since {owner.get('started')})" + (
                                 "; it runs on another host, whose process cannot be checked from here: if that run "
                                 f"is gone, delete {self.path}" if other else ""))
                    told = True
                time.sleep(self.poll)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self

    def __exit__(self, *exc):
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
        return False


