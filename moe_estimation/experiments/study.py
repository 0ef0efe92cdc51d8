"""The Monte Carlo runner: (problem, specification, schedule, n, replicate) -> fitted, scored, tabulated, rated.

One *cell* of the grid is (problem, specification, starting-point schedule, n): its R replicates are
simulated, fitted (restarts inside) and scored in one compiled call. Design choices:

- Keys come from coordinates alone, so a replicate's numbers do not depend on which cells ran, in what
  order, or in how many chunks. Replicate r's *data* (inputs and noise) come from ``(root, n, r)`` only
  (:func:`data_keys`): the same data set under every problem, specification and schedule (common random
  numbers; the presets share one regression function, so their comparisons are paired). Its *starts*
  come from ``(root, problem, specification, n, r)`` (:func:`start_keys`; for a truth that moves with n, the
  problem's family instead of its name) and not from the schedule: two
  near-truth schedules draw the same noise and differ only in its scale, two random ones the same
  uniform numbers over different regions.
- Shapes are bucketed: a data set of size n is simulated at the next power of two and masked, so the
  number of compilations per (problem, specification) is the number of buckets, not of sample sizes.
  Simulation is row-wise keyed, so padding never changes the data.
- Memory is bounded: replicates go through in chunks sized so that the Jacobian of a chunk stays under
  ``max_elements`` numbers (2^25 on a CPU, an eighth of an accelerator's memory there; see
  :func:`default_max_elements`); the chunk size is a function of the shape and the device only.
- Many devices: the replicate axis of a chunk is sharded over every visible device (a one-dimensional
  mesh, ``shard_map``); each device fits its replicates exactly as one device would, so a study's tables
  do not depend on the number of devices. After ``jax.distributed.initialize()`` (``--distributed``) the
  mesh spans every host; results are gathered to every process and process 0 writes them.
- Resumable: after each cell, ``fits.csv`` is rewritten atomically (temporary file, then rename); a run
  started again on the same ``--out`` skips every finished cell. ``config.json`` guards against resuming
  into a different study.
"""

from __future__ import annotations

import platform
import time
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from .._checks import check_memory, check_out_dir, make_out_dir
from .config import RATE_FIELDS, StudyConfig
from ..prefix.data import fold_key, simulate_rows
from ..prefix.estimator import FitSettings, bound_coordinates, fit_dataset, split_start
from .inference import (bounds_table, differences_table, failing_table, geometry_effects, geometry_table, lowest_table,
                        minimax_tables, quantiles_table, with_best_of_all, with_declared_losses)
from ..solver import STATUS_LABELS, batch_map, resolve_blocking
from ..rates import is_composite, theory_slope
from .results import (  # noqa: F401  (the schema is re-exported: moe_estimation.experiments.study.FITS_COLUMNS and so on)
    CELL,
    FITS_COLUMNS,
    ID_NAMES,
    PART_NAMES,
    RATE_LOSSES,
    SCHEDULE_COLUMNS,
    RunLog,
    StudyLock,
    atomic_write,
    write_config,
    check_same_study,
    CellTable,
    cell_design,
    cells,
    check_fits_table,
    finished_tasks,
    tasks,
    describe_schedule,
    format_params,
    loss_matrix,
    truth_text,
    rate_entries,
    versions,
    write_csv,
)
from .runner import fit_missing, load_cells
from ..prefix.voronoi import identified_key_value, key_value_parts, structure_parts
from .workers import resolve_workers


def bucket_size(n: int, minimum: int = 64) -> int:
    """The padded size of a data set of n rows: the next power of two (at least ``minimum``)."""
    return max(minimum, 1 << (int(n) - 1).bit_length())


def data_keys(seed: int, n: int, replicates: int) -> jax.Array:
    """``(R,)`` keys of the data sets at sample size n: from ``(seed, n, replicate)`` alone, so every problem,
    specification and schedule of a study sees the same inputs and noise (common random numbers)."""
    k = fold_key(jax.random.key(seed), "data", n)
    return jax.vmap(lambda r: jax.random.fold_in(k, r))(jnp.arange(replicates))


def start_keys(seed: int, problem: str, specification: str, n: int, replicates: int) -> jax.Array:
    """``(R,)`` keys of the starting points of one (problem, specification, n) and every schedule."""
    k = fold_key(jax.random.key(seed), "start", problem, specification, n)
    return jax.vmap(lambda r: jax.random.fold_in(k, r))(jnp.arange(replicates))


def _local_chunk(problem, dkeys, skeys, n, start, rows: int, settings: FitSettings):
    """``dkeys``, ``skeys``: raw key data ``(R, ...)`` (uint32), which every process can build and shard."""
    def one(keys):
        dk, sk = (jax.random.wrap_key_data(k) for k in keys)
        X, Y = simulate_rows(problem, dk, rows)
        w = (jnp.arange(rows) < n).astype(X.dtype)
        res = fit_dataset(sk, problem, settings, X, Y, w, start)
        return (res, structure_parts(problem, res.params), key_value_parts(problem, res.params),
                identified_key_value(problem, res.params), identified_key_value(problem, res.params, cells="key"),
                key_value_parts(problem, res.start)["d2"])

    return batch_map(one, (dkeys, skeys), settings.batching)


@partial(jax.jit, static_argnames=("rows", "settings"))
def _run_chunk(problem, dkeys, skeys, n, start, rows: int, settings: FitSettings):
    return _local_chunk(problem, dkeys, skeys, n, start, rows, settings)


_SHARDED = {}


def _sharded_chunk(mesh):
    """``_run_chunk`` with the replicate axis split over ``mesh`` (one jitted function per mesh)."""
    whole, split = PartitionSpec(), PartitionSpec("replicate")  # replicated, and split over the replicate axis
    if mesh not in _SHARDED:
        def run(problem, dkeys, skeys, n, start, rows, settings):
            local = partial(_local_chunk, rows=rows, settings=settings)
            return jax.shard_map(lambda p, d, k, m, s: local(p, d, k, m, s), mesh=mesh,
                                 in_specs=(whole, split, split, whole, whole), out_specs=split,
                                 check_vma=False)(problem, dkeys, skeys, n, start)

        _SHARDED[mesh] = jax.jit(run, static_argnames=("rows", "settings"))
    return _SHARDED[mesh]


def _gather(tree):
    if jax.process_count() > 1:
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


CPU_MAX_ELEMENTS = 1 << 25


def default_max_elements(device=None) -> int:
    """The Jacobian numbers a chunk may hold: 2^25 (256 MiB in float64) on a CPU; on an accelerator an
    eighth of its memory in float64 numbers, rounded down to a power of two (the Jacobian and the
    intermediates that build it live at once; 1/8 leaves room for them), and never below 2^25."""
    device = device or jax.devices()[0]
    stats = device.memory_stats() if device.platform != "cpu" else None
    if not stats or "bytes_limit" not in stats:
        return CPU_MAX_ELEMENTS
    elements = int(stats["bytes_limit"]) // (8 * 8)
    return max(CPU_MAX_ELEMENTS, 1 << (elements.bit_length() - 1))


def run_cell(problem, dkeys, skeys, n: int, settings: FitSettings, max_elements: int | None = None):
    """Simulate (data keys ``dkeys``), fit (start keys ``skeys``) and score the replicates of one cell.
    Returns (FitResult, own parts, kv parts, identified kv parts, yardstick of the start) as numpy arrays
    with a leading replicate axis. Replicates go in chunks whose Jacobians hold at most ``max_elements``
    numbers (default :func:`default_max_elements`)."""
    max_elements = default_max_elements() if max_elements is None else max_elements
    rows = bucket_size(n)
    num_params = settings.num_prompts * (problem.atom_dim + 1)
    per_fit = rows * problem.d_v * num_params * settings.restarts
    ndev = jax.device_count()
    chunk = int(max(1, min(len(dkeys), max_elements * ndev // per_fit)))
    chunk = -(-chunk // ndev) * ndev  # a multiple of the number of devices
    static, start = split_start(settings)  # one compilation for every schedule of one kind
    start = start.astype(problem.dtype)
    n = jnp.asarray(n)
    place = lambda k: k
    if ndev > 1:
        mesh = jax.make_mesh((ndev,), ("replicate",))
        run = _sharded_chunk(mesh)

        def put(x, spec):
            # a global array from the value every process holds (device_put cannot place data on another
            # process's devices): each device takes its slice
            x = np.asarray(x)
            return jax.make_array_from_callback(x.shape, NamedSharding(mesh, spec), lambda idx: x[idx])

        problem = jax.tree.map(lambda a: put(a, PartitionSpec()), problem)
        start, n = put(start, PartitionSpec()), put(n, PartitionSpec())
        place = lambda k: put(k, PartitionSpec("replicate"))
    else:
        run = _run_chunk
    dkeys, skeys = jax.random.key_data(dkeys), jax.random.key_data(skeys)
    outs = []
    for i in range(0, len(dkeys), chunk):
        d, k = dkeys[i : i + chunk], skeys[i : i + chunk]
        pad = chunk - len(k)
        if pad:  # keep one compiled shape: pad with copies of the last key, drop their results
            d, k = (jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]) for a in (d, k))
        out = _gather(run(problem, place(d), place(k), n, start, rows, static))
        outs.append(jax.tree.map(lambda a: a[: chunk - pad], out))
    return jax.tree.map(lambda *a: np.concatenate(a), *outs)


def check_study_memory(cfg: StudyConfig) -> None:
    """Refuse a study whose largest fit cannot fit in memory (:func:`moe_estimation._checks.check_memory`),
    before anything is written: one data set of the largest n, padded to its bucket, with its per-row arrays
    and, where the rows are not summed in blocks, the Jacobian of one restart."""
    n = max(cfg.ns)
    rows = bucket_size(n)
    worst = 0.0
    for name in cfg.problems:
        prob = cfg.problem(name)
        for spec in cfg.specifications_of(name):
            L = cfg.num_prompts(prob, spec, name)
            P = L * (prob.atom_dim + 1)
            blocked = resolve_blocking(cfg.fit.get("blocking", "auto"), rows)
            per_row = 2 * prob.d + 4 * prob.d_v + L + 8 + (0 if blocked else 2 * prob.d_v * P)
            worst = max(worst, 8.0 * rows * per_row)
    check_memory(worst, "grid.ns", f"n = {n} ({rows} rows padded)", "one data set and its fit")


def memory_mappings() -> tuple[int, int] | None:
    """(memory mappings of this process, the system's limit) on Linux; None where that cannot be read."""
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            limit = int(f.read())
        with open("/proc/self/maps", "rb") as f:
            return sum(1 for _ in f), limit
    except (OSError, ValueError):
        return None


def compiled_programs() -> int:
    """How many programs of the single-process study runner are compiled in this process: one per distinct
    (padded size, settings with the start's scale and rate taken out) among the cells run so far."""
    return _run_chunk._cache_size()


def release_compiled_if_needed(fraction: float = 0.5) -> bool:
    """Drop JAX's compiled programs when this process holds more than ``fraction`` of the memory mappings
    the system allows. Every compiled CPU program keeps hundreds of mappings (about 650 for one study cell),
    and a study with a hundred distinct programs (schedules x problems x buckets) would otherwise end in
    LLVM's "Unable to allocate section memory" at vm.max_map_count (65530 by default). Dropped programs are
    compiled again (or loaded from the persistent cache) when next needed. Returns True when it dropped."""
    counts = memory_mappings()
    if counts is None or counts[0] < fraction * counts[1]:
        return False
    jax.clear_caches()
    _SHARDED.clear()
    return True


def fit_study_cell(cfg: StudyConfig, prob_name: str, spec: str, schedule: str, n: int, block: int = 0):
    """One task of ``cfg``'s grid (a cell, or block ``block`` of its replicates with ``[grid] block``), fitted
    and scored: ``(FitResult, own parts, kv parts, identified parts, identified parts by key, yardstick of the
    start, seconds per fit)``, numpy arrays with a leading replicate axis (see :func:`run_cell`). A pure
    function of its arguments (keys from the coordinates, replicate r's the same in any block): the same
    numbers in the lead process or in a worker, whole or in blocks."""
    release_compiled_if_needed()
    prob = cfg.problem(prob_name, n)  # a moving truth at this n
    settings = cfg.fit_settings(cfg.num_prompts(prob, spec, prob_name), schedule)
    reps = cfg.block_replicates(block)
    sl = slice(reps.start, reps.stop)
    t0 = time.perf_counter()
    out = run_cell(prob, data_keys(cfg.seed, n, cfg.replicates)[sl],
                   start_keys(cfg.seed, cfg.family(prob_name), spec, n, cfg.replicates)[sl], n, settings)
    return (*out, (time.perf_counter() - t0) / len(reps))


def _task_cost(cfg: StudyConfig, task) -> float:
    """A task's work in units of residual-by-parameter products per solver step (rows padded to the bucket)."""
    prob_name, spec, schedule, n, block = task
    prob = cfg.problem(prob_name)
    L = cfg.num_prompts(prob, spec, prob_name)
    return (bucket_size(n) * prob.d_v * L * (prob.atom_dim + 1) * cfg.schedule(schedule)["restarts"]
            * len(cfg.block_replicates(block)))


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else (f"{seconds / 60:.0f} minutes" if seconds < 7200
                                                     else f"{seconds / 3600:.1f} hours")


def dry_run(cfg: StudyConfig, workers: int | str = 1) -> str:
    """What ``study --dry-run`` prints: the study's cells and fits, and an estimate of its time on this machine,
    from one replicate of its costliest task timed twice (the first run compiles; the second is the estimate's
    unit), every other task scaled by its rows, output dimension, parameters, restarts and replicates. Fits of
    one shape take more or fewer solver steps than the timed one, so the estimate is a rough one (within a
    factor of two or so); nothing is written."""
    check_study_memory(cfg)
    all_tasks = list(tasks(cfg))
    costs = [_task_cost(cfg, t) for t in all_tasks]
    top = int(np.argmax(costs))
    prob_name, spec, schedule, n, block = all_tasks[top]
    prob = cfg.problem(prob_name, n)
    settings = cfg.fit_settings(cfg.num_prompts(prob, spec, prob_name), schedule)
    dk = data_keys(cfg.seed, n, cfg.replicates)[:1]
    sk = start_keys(cfg.seed, cfg.family(prob_name), spec, n, cfg.replicates)[:1]
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        run_cell(prob, dk, sk, n, settings)
        times.append(time.perf_counter() - t0)
    unit = times[1] / (costs[top] / len(cfg.block_replicates(block)))  # seconds per unit of cost, one replicate
    total = unit * sum(costs)
    n_cells = len(list(cells(cfg)))
    n_workers = resolve_workers(workers)
    lines = [f"{len(cfg.problems)} problems, {len(cfg.schedules)} schedule(s), n = {', '.join(map(str, cfg.ns))}, "
             f"{cfg.replicates} replicates: {n_cells} cells, {n_cells * cfg.replicates} fits, {len(all_tasks)} tasks",
             f"timed: one fit of the costliest task ({prob_name} {spec} {schedule} n = {n}): {times[1]:.2f} s "
             f"({times[0]:.1f} s the first time, compiling)",
             f"estimate: about {_duration(total)} of fitting in one process"
             + (f"; {n_workers} workers take less, by a factor `moe-estimation bench --workers` measures on this "
                "machine" if n_workers > 1 else "")
             + "; a first run compiles each shape once more (seconds to a minute each)"]
    return "\n".join(lines)


def run_study(cfg: StudyConfig, out: str | Path, *, progress: bool = True, log=print,
              tables_only: bool = False, repair: bool = False, wait: bool = False, workers: int | str = 1
              ) -> pd.DataFrame:
    """Run (or resume) a study into directory ``out``; returns the fits table. Writes ``fits.csv`` after
    every cell, and ``rates.csv`` and ``config.json`` at the end (see the module docstring). With
    ``tables_only``, fit nothing: rebuild the tables from the cells already finished (a study stopped
    part-way can be looked at, and resumed later).

    On start, an existing ``fits.csv`` is checked (:func:`check_fits_table`); damage is refused with a
    message naming the file and the damaged cells, and with ``repair`` the damaged cells are dropped and
    recomputed. Only one run writes into ``out`` at a time (:class:`StudyLock`; ``wait`` waits for the
    other instead of refusing).

    ``workers``: how many processes fit cells at once (:mod:`moe_estimation.experiments.workers`): 1 (the default here)
    fits in this process; N > 1 in N worker processes, each pinned to a core with single-threaded XLA,
    this process writing the tables; ``"auto"`` (the command line's default) one per core on a CPU. The
    tables do not depend on it."""
    workers = resolve_workers(workers)
    if not jax.config.jax_enable_x64:
        raise ValueError(
            "run_study: estimation runs in float64; call jax.config.update('jax_enable_x64', True) first (in float32 "
            "every fit stalls short of the float64 optimum, and over-specified losses differ from float64 ones by "
            "tens of percent on the same data: `moe-estimation bench --precision`)"
        )
    out = check_out_dir(out)
    check_study_memory(cfg)
    if (out / "fits.csv.gz").is_file() and not (out / "fits.csv").is_file():
        raise ValueError(f"--out: {out} holds fits.csv.gz, the compressed copy of a study's fits, and no fits.csv; "
                         f"unpack it first (`gunzip -k {out / 'fits.csv.gz'}`) to resume the study or rebuild its "
                         "tables (the tables, figures and summaries read the compressed copy as it is)")
    if tables_only and not (out / "fits.csv").is_file():
        raise ValueError(f"--tables-only: {out} holds no fits.csv yet (nothing to rebuild the tables from)")
    if jax.process_index() != 0:  # process 0 reads, checks and writes the tables; the others fit what it says
        return _run_study(cfg, out, progress=progress, log=log, tables_only=tables_only, repair=repair, workers=1)
    make_out_dir(out)
    with StudyLock(out, wait=wait, log=log):
        for stray in out.glob(".*.tmp[0-9]*"):  # a write interrupted by a kill; the file itself is whole
            stray.unlink()
        return _run_study(cfg, out, progress=progress, log=log, tables_only=tables_only, repair=repair,
                          workers=workers)


def _run_study(cfg: StudyConfig, out: Path, *, progress: bool, log, tables_only: bool, repair: bool,
               workers: int) -> pd.DataFrame:
    resolved = {"study": cfg.to_dict()}
    cfg_path = out / "config.json"
    lead = jax.process_index() == 0  # only process 0 reads and writes --out (it need not be a shared disk)
    if lead:
        check_same_study(out, resolved["study"], reread=RATE_FIELDS, log=log, fingerprinted=True)
    fits_path = out / "fits.csv"
    table = CellTable(fits_path, FITS_COLUMNS, CELL, cfg.replicates, check=lambda path: check_fits_table(path, cfg))
    if lead:
        load_cells(table, repair=repair, log=log)
    provenance = dict(versions=versions(), platform=platform.platform(), device=str(jax.devices()[0]),
                      devices=jax.device_count(), processes=jax.process_count())
    meta = dict(resolved, **provenance, x64=bool(jax.config.jax_enable_x64), root_seed=cfg.seed,
                bucket_sizes={str(n): bucket_size(n) for n in cfg.ns})
    if lead:
        write_config(cfg_path, meta, provenance)

    finished = finished_tasks(table.frame(), cfg)
    todo = [t for t in tasks(cfg) if t not in finished]
    run_log = RunLog(out / "runs.jsonl", enabled=lead)
    run_log.append("start", **provenance, tasks_finished_before=len(finished), tasks_to_fit=0 if tables_only else len(todo),
                   tables_only=tables_only, repair=repair, workers=workers)
    unit = "cells" if cfg.blocks == 1 else f"cell blocks (of {cfg.block} replicates)"
    if jax.process_count() > 1:  # every process must run the same tasks in the same order: process 0 decides
        all_tasks = list(tasks(cfg))
        mask = np.array([t in todo for t in all_tasks], dtype=np.int32)
        mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
        todo = [t for t, m in zip(all_tasks, mask) if m]
    if tables_only:
        if not finished:
            raise ValueError(f"--tables-only: {out} holds no finished cell yet")
        log(f"tables only: {len(finished)} finished {unit}, {len(todo)} not run")
        todo = []
    problems = {name: cfg.problem(name) for name in cfg.problems}

    def rows(task, result):
        prob_name, spec, schedule, n, block = task
        prob = problems[prob_name]
        res, own, kv, ident, ident_key, start, seconds = result
        settings = cfg.fit_settings(cfg.num_prompts(prob, spec, prob_name), schedule)
        return {
            "problem": prob_name, "structure": prob.structure, "specification": spec,
            "num_prompts": settings.num_prompts, "n": n, "replicate": np.array(cfg.block_replicates(block)), "seed": cfg.seed,
            "schedule": schedule, "init": settings.init, "init_scale": float(settings.init_scale),
            "init_rate": float(settings.init_rate), "restarts": settings.restarts,
            "loss_own": own["d1r"] if prob.structure == "non-shared" else own["d2"],
            "loss_key_value": kv["d2"],
            **{f"own_{p}": own[p] for p in PART_NAMES}, **{f"kv_{p}": kv[p] for p in PART_NAMES},
            **{f"id_{p}": ident[p] for p in ID_NAMES}, **{f"idk_{p}": ident_key[p] for p in ID_NAMES},
            "start_key_value": start, "objective": res.objective, "converged": res.converged,
            "status": [STATUS_LABELS[int(s)] for s in res.status], "steps": res.steps, "at_bound": res.at_bound,
            "bound_coordinates": bound_coordinates(prob, res.params), "seconds": seconds,
            "design": cell_design(cfg, prob, settings.num_prompts, schedule, prob_name),
            "params": format_params(res.params), "true_params": truth_text(cfg.problem(prob_name, n)),
        }

    fit_missing(table, todo, total=len(finished) + len(todo), work=fit_study_cell, args=lambda c: (cfg, *c), rows=rows,
                describe=lambda c: f"{c[0]} {c[1]} {c[2]} n={c[3]}" + (f" block {c[4]}" if cfg.blocks > 1 else ""),
                cost=lambda c: c[3], workers=workers, progress=progress, log=log, unit=unit, write=lead)
    fits = canonical_order(table.frame(), cfg)
    if lead:
        table.write(fits)
        write_tables(fits, cfg, out)
    run_log.append("end", tasks_fitted=len(todo), tasks_finished=len(finished_tasks(fits, cfg)))
    return fits


TABLES = ("rates.csv", "quantiles.csv", "failing.csv", "differences.csv", "lowest.csv", "bounds.csv")
MOVING_TABLES = ("minimax.csv", "minimax_rates.csv")  # a study with truths that move with n writes these too
GEOMETRY_TABLES = ("geometry.csv", "geometry_effects.csv")  # and one with problems drawn from a seed, these


def write_tables(fits: pd.DataFrame, cfg: StudyConfig, out: Path) -> None:
    """Every table a study's fits give (:data:`TABLES`): the rates, and from :mod:`moe_estimation.experiments.inference`
    the quantiles, the failing fractions, the paired differences, the schedules' lowest objectives and the
    coordinates on the box; with truths that move with n, the worst case over each family
    (:data:`MOVING_TABLES`, :func:`moe_estimation.experiments.inference.minimax_tables`); with problems drawn from a seed,
    the findings against each problem's geometry (:data:`GEOMETRY_TABLES`,
    :func:`moe_estimation.experiments.inference.geometry_table`). With several schedules, every table but ``lowest.csv`` has one arm more, the best fit of each data set over
    all schedules (``best-of-all``, :func:`moe_estimation.experiments.inference.with_best_of_all`)."""
    fits = with_declared_losses(fits, cfg)
    arms = with_best_of_all(fits)
    rates, failing = rates_table(arms, cfg), failing_table(arms, cfg)
    write_csv(out / "rates.csv", rates)
    write_csv(out / "quantiles.csv", quantiles_table(arms, cfg))
    write_csv(out / "failing.csv", failing)
    write_csv(out / "differences.csv", differences_table(arms, cfg))
    write_csv(out / "lowest.csv", lowest_table(fits))
    write_csv(out / "bounds.csv", bounds_table(arms, cfg))
    if cfg.losses:  # the declared losses of every fit, for the figures (fits.csv keeps what was fitted only)
        keep = ["problem", "structure", "specification", "schedule", *SCHEDULE_COLUMNS, "n", "replicate", "converged",
                "status"]
        write_csv(out / "declared.csv", arms[list(dict.fromkeys(keep)) + [f"loss_{k}" for k in cfg.losses]])
    elif (out / "declared.csv").is_file():  # no loss declared any more: no stale table for the figures
        (out / "declared.csv").unlink()
    if any("draw" in (cfg.problem_tables.get(name) or {}) for name in cfg.problems):
        geometry = geometry_table(rates, failing, cfg)
        write_csv(out / "geometry.csv", geometry)
        write_csv(out / "geometry_effects.csv", geometry_effects(geometry))
    if any(cfg.moving(name) is not None for name in cfg.problems):
        minimax, minimax_rates = minimax_tables(arms, cfg)
        write_csv(out / "minimax.csv", minimax)
        write_csv(out / "minimax_rates.csv", minimax_rates)


def canonical_order(fits: pd.DataFrame, cfg: StudyConfig) -> pd.DataFrame:
    """Rows in grid order (problem, specification, schedule, n, replicate), whatever order the cells ran in."""
    keys = {c: fits[c].map({v: i for i, v in enumerate(vals)}) for c, vals in
            (("problem", cfg.problems), ("specification", cfg.specifications), ("schedule", cfg.schedule_names))}
    return (fits.assign(_p=keys["problem"], _s=keys["specification"], _c=keys["schedule"])
            .sort_values(["_p", "_s", "_c", "n", "replicate"]).drop(columns=["_p", "_s", "_c"]).reset_index(drop=True))


def _theory(structure: str, loss: str, spec: str) -> float:
    if loss == "own":
        return theory_slope(structure, "own", spec)
    if loss.startswith("key_value"):
        return theory_slope(structure, "key_value", spec)
    if loss == "max_multi_error":
        return theory_slope(structure, "max_multi", spec)
    return theory_slope(structure, "identified", spec)


def rates_table(fits: pd.DataFrame, cfg: StudyConfig) -> pd.DataFrame:
    """One row per (problem, specification, schedule, loss, statistic): slope, 95% bootstrap interval,
    theory, and ``composite`` (the loss adds terms the theory rates differently, :func:`is_composite`: its
    slope describes the sum and is no rate). The statistics are the mean, the median and the configuration's quantiles over replicates
    (``q25``, ``q75``, ``q90`` by default). A loss that is zero in every fit of the window (the spread when no cell holds two atoms) has
    no rate and no row; a rate that cannot be fitted (a sample size whose every loss is zero) has an empty
    slope and says why in ``note``."""
    out = []
    window = fits[(fits["n"] >= cfg.n_min) & (fits["n"] <= cfg.n_max)]
    for (prob_name, spec, schedule), g in window.groupby(["problem", "specification", "schedule"], sort=False):
        structure = g["structure"].iloc[0]
        sched = {c: g[c].iloc[0] for c in SCHEDULE_COLUMNS}
        for loss, cols in cfg.rate_losses.items():
            values = g[list(cols)].sum(axis=1, min_count=len(cols)).to_numpy(float)  # a missing loss stays NaN
            if not np.any(values != 0):
                continue
            missing = int((~np.isfinite(values)).sum())
            ns, mat = loss_matrix(g, values, replicate="replicate")
            last = mat[-1][np.isfinite(mat[-1])]  # zeros are values
            for entry in rate_entries(ns, mat, num_bootstrap=cfg.num_bootstrap, seed=cfg.seed,
                                      statistics=cfg.statistics):
                out.append(dict(
                    problem=prob_name, structure=structure, specification=spec, **sched, loss=loss,
                    statistic=entry["statistic"], slope=entry["slope"], ci_low=entry["ci_low"],
                    ci_high=entry["ci_high"],
                    theory_slope=cfg.declared_theory(loss, spec) if loss in cfg.losses else _theory(structure, loss, spec),
                    composite=False if loss in cfg.losses else is_composite(structure, loss, spec),
                    n_min=int(ns.min()), n_max=int(ns.max()), replicates=cfg.replicates,
                    fits_not_converged=int((~g["converged"].astype(bool)).sum()),
                    fits_nonfinite=int((g["status"] == "nonfinite").sum()),
                    fits_at_bound=int(g["at_bound"].astype(bool).sum()),
                    mean_loss_at_n_max=float(last.mean()) if len(last) else 0.0,
                    note="; ".join(x for x in (entry["note"], f"{missing} fits with no finite loss left out"
                                               if missing else "") if x),
                ))
    return pd.DataFrame(out)
