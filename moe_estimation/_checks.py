"""Small eager input checks shared by the public functions (messages name the argument and the rule)."""

from __future__ import annotations

import numbers

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
