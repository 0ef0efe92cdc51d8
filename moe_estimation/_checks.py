"""Small eager input checks shared by the public functions (messages name the argument and the rule)."""

from __future__ import annotations

import numbers
import os
from pathlib import Path

import jax
import numpy as np


def check_n(n, name: str = "n") -> int:
    """A sample size: an integer >= 1."""
    if isinstance(n, bool) or not isinstance(n, (numbers.Integral, np.integer)):
        if isinstance(n, (float, np.floating)) and float(n).is_integer():
            n = int(n)
        else:
            raise ValueError(f"{name}: must be an integer >= 1, got {n!r}")
    if n < 1:
        raise ValueError(f"{name}: must be an integer >= 1, got {n}")
    return int(n)


def check_data(problem, X, Y, *, batched: bool = False) -> None:
    """X ``(..., n, d)`` and Y ``(..., n, d_v)`` agree with ``problem`` and hold no NaN or inf."""
    lead = 1 if batched else 0
    X_shape, Y_shape = np.shape(X), np.shape(Y)
    want = "(R, n, d)" if batched else "(n, d)"
    if len(X_shape) != 2 + lead or X_shape[-1] != problem.d:
        raise ValueError(f"Shape mismatch in X: expected {want} with d = {problem.d}, got {X_shape}")
    if len(Y_shape) != 2 + lead or Y_shape[-1] != problem.d_v or Y_shape[:-1] != X_shape[:-1]:
        raise ValueError(
            f"Shape mismatch in Y: expected {X_shape[:-1] + (problem.d_v,)} (rows of X, d_v = {problem.d_v}),"
            f" got {Y_shape}"
        )
    if X_shape[-2] < 1:
        raise ValueError(f"X: need n >= 1 samples, got n = {X_shape[-2]}")
    for name, arr in (("X", X), ("Y", Y)):
        if not np.all(np.isfinite(np.asarray(arr))):
            raise ValueError(f"{name}: contains NaN or inf; remove or impute those rows before fitting")


def check_out_dir(path, arg: str = "--out"):
    """An output directory that exists or can be made: no part of the path is a regular file, and the
    nearest existing directory is writable. Returns the path; writes nothing."""
    path = Path(path)
    for part in (path, *path.parents):
        if part.exists():
            if not part.is_dir():
                where = "is a file" if part == path else f"lies under the file {part}"
                raise ValueError(f"{arg}: {path} {where}; give a directory")
            if not os.access(part, os.W_OK | os.X_OK):
                raise ValueError(f"{arg}: {path} cannot be written (no write permission on {part})")
            return path
    return path


def make_out_dir(path, arg: str = "--out"):
    """:func:`check_out_dir`, then create it; an error of the file system becomes a one-line ValueError."""
    path = check_out_dir(path, arg)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"{arg}: cannot create {path} ({e.strerror})") from None
    return path


def memory_bytes() -> int | None:
    """The memory a computation here may use: the default device's (an accelerator's own), or this machine's
    physical memory on a CPU; None where neither can be read."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return int(stats["bytes_limit"]) if "bytes_limit" in stats else None
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(need: float, name: str, value, what: str) -> None:
    """Refuse work that cannot fit: ``need`` bytes (an estimate of the largest array set it holds at once)
    above 80% of :func:`memory_bytes`. The message names the argument ``name``, its ``value`` and ``what``
    needs the memory, before anything is computed or written."""
    have = memory_bytes()
    if have is not None and need > 0.8 * have:
        raise ValueError(f"{name}: {value} needs about {need / 2**30:.3g} GiB for {what}, more than this machine's "
                         f"{have / 2**30:.3g} GiB of memory allows; use smaller sizes")
