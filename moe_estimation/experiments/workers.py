"""Cells of a study in worker processes: one per core, each pinned to its core with single-threaded XLA.

On a CPU, two processes pinned to one core each fit faster than one process whose XLA threads share both
cores (the programs here are many small kernels: threads mostly wait on each other). So a runner hands its
cells to :func:`run_cells`, which computes ``work(*task)`` in ``workers`` processes and passes each result,
as it arrives, to ``done(task, result)`` in the calling (lead) process: the lead alone writes the tables,
after every cell, so a killed run still resumes from the last finished cell.

A cell's numbers depend on its coordinates only (its keys are folded from them), never on which process
ran it or in what order: the tables of a run with workers are those of one process (a test checks it).

Workers start with ``spawn`` (a fresh interpreter: no JAX state inherited), take their settings from the
lead (``jax_enable_x64``, the persistent compilation cache) and are pinned before JAX starts its backend.
With ``workers=1`` the cells run in the calling process, as before this module existed. On an accelerator,
or in a multi-process (``jax.distributed``) run, the default is 1: there one process owns the devices.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import traceback
from multiprocessing.connection import Connection, wait
from typing import Callable, Iterable

import jax  # importing JAX starts no threads: a worker pins its core before its first computation

SINGLE_THREAD_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
"""The XLA flags of a worker: one thread for XLA's CPU kernels (the worker has one core)."""


def available_cores() -> list[int]:
    """The cores this process may run on (its affinity mask), in order; ``[0 .. cpu_count - 1]`` where the
    mask cannot be read."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def default_workers() -> int:
    """One worker per available core on a CPU backend in a single-process run; 1 otherwise."""
    if jax.default_backend() != "cpu" or jax.process_count() > 1:
        return 1
    return len(available_cores())


def resolve_workers(workers) -> int:
    """``None`` or ``"auto"`` -> :func:`default_workers`; an integer >= 1 unchanged; anything else a
    ``ValueError`` naming the value."""
    if workers is None or workers == "auto":
        return default_workers()
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: must be an integer >= 1 (or 'auto': one per core on a CPU), got {workers!r}")
    if workers > 1 and jax.process_count() > 1:
        raise ValueError(f"workers: a multi-process (--distributed) run fits in its own processes; got workers = "
                         f"{workers}, use 1")
    return workers


def _lead_settings() -> dict:
    names = ("jax_enable_x64", "jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    return {name: getattr(jax.config, name) for name in names if getattr(jax.config, name, None) is not None}


def _serve(fd_in: int, fd_out: int, core: int) -> None:
    """The loop of a worker process: pinned to ``core`` (before JAX starts its threads), JAX settings and
    ``sys.path`` from the lead, then ``(work, args)`` messages answered with ``("ok", result)`` or
    ``("error", exception, traceback text)``; ``None`` ends it."""
    try:
        os.sched_setaffinity(0, {core})
    except (AttributeError, OSError):  # no affinity on this system: the worker still runs single-threaded
        pass
    inbox, outbox = Connection(fd_in, writable=False), Connection(fd_out, readable=False)
    try:
        path, settings = inbox.recv()
        sys.path[:] = path
        for name, value in settings.items():
            jax.config.update(name, value)
        while (msg := inbox.recv()) is not None:
            work, args = msg
            try:
                reply = ("ok", work(*args))
            except Exception as e:  # noqa: BLE001  (sent to the lead, which raises it)
                text = traceback.format_exc()
                try:
                    pickle.dumps(e)
                except Exception:  # noqa: BLE001
                    e = RuntimeError(f"{type(e).__name__}: {e}")
                reply = ("error", e, text)
            outbox.send(reply)
    except (EOFError, BrokenPipeError, KeyboardInterrupt):  # the lead is gone or was interrupted: stop quietly
        pass


class _Worker:
    """One worker process pinned to ``core``, with a pipe each way."""

    def __init__(self, core: int):
        self.core = core
        task_r, task_w = os.pipe()  # lead -> worker: tasks
        res_r, res_w = os.pipe()  # worker -> lead: results
        env = dict(os.environ)
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " " + SINGLE_THREAD_XLA_FLAGS).strip()
        # the worker's stdout and stderr are the lead's (warnings reach the user); results travel on the pipes
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"from moe_estimation.experiments.workers import _serve; _serve({task_r}, {res_w}, {core})"],
            env=env, pass_fds=(task_r, res_w), stdin=subprocess.DEVNULL)
        os.close(task_r)
        os.close(res_w)
        self.results = Connection(res_r, writable=False)
        self.tasks = Connection(task_w, readable=False)
        self.tasks.send((list(sys.path), _lead_settings()))
        self.task = None

    def submit(self, work, task) -> None:
        self.task = task
        self.tasks.send((work, task))

    def close(self, force: bool = False) -> None:
        if force:
            self.proc.terminate()
        else:
            try:
                self.tasks.send(None)
            except OSError:
                pass
        self.proc.wait()
        self.tasks.close()
        self.results.close()


def run_cells(work: Callable, tasks: Iterable[tuple], done: Callable, *, workers: int = 1) -> None:
    """``done(task, work(*task))`` for every task, in the lead process, as each result arrives.

    ``work`` must be a module-level function of an importable module (it is pickled by name: not one
    defined in ``__main__``) of picklable arguments, returning a picklable result (numpy arrays, not JAX
    ones). With ``workers=1`` the tasks run here, in order. With more, at most ``workers`` run at once,
    each in its own process pinned to one core with single-threaded XLA (cores taken in turn from
    :func:`available_cores`; more workers than cores share them); tasks start in the order given, so give
    the costliest first. If a task raises, no new task starts, the tasks still running finish and reach
    ``done`` (nothing finished is lost), and the error is raised here with the worker's traceback."""
    tasks = list(tasks)
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            done(task, work(*task))
        return
    cores = available_cores()
    pool = [_Worker(cores[i % len(cores)]) for i in range(min(workers, len(tasks)))]
    queue = iter(tasks)
    busy = {}
    error = None
    try:
        for w in pool:
            task = next(queue, None)
            if task is not None:
                w.submit(work, task)
                busy[w.results] = w
        while busy:
            for conn in wait(list(busy)):
                w = busy.pop(conn)
                try:
                    reply = conn.recv()
                except EOFError:
                    raise RuntimeError(f"a worker process (core {w.core}) died while computing {_describe(w.task)} "
                                       f"(exit code {w.proc.poll()}); the cells finished before it are kept") from None
                if reply[0] == "error":
                    error = error or (reply[1], reply[2], w.task)
                    continue
                done(w.task, reply[1])
                task = next(queue, None) if error is None else None
                if task is not None:
                    w.submit(work, task)
                    busy[w.results] = w
    except BaseException:  # Ctrl-C, a dead worker, or done() failed: stop at once
        for w in pool:
            w.close(force=True)
        raise
    for w in pool:
        w.close()
    if error is not None:
        exc, text, task = error
        raise exc from RuntimeError(f"in a worker process, computing {_describe(task)}:\n{text}")


def _describe(task) -> str:
    return "(" + ", ".join(repr(a) if isinstance(a, (str, int, float)) else type(a).__name__ for a in task) + ")"
