"""Tasks that read S3 chunks on the worker (seed 002's distributed regression)."""

from __future__ import annotations

import io
from typing import Any

import numpy as np

import fanout


def describe(chunk: fanout.S3Chunk) -> tuple[str, int, int]:
    data = chunk.read()
    return chunk.key, len(data), data.count(b"\n")


def normal_equations(chunk: fanout.S3Chunk) -> tuple[Any, Any, int]:
    """X'X and X'y of this chunk's rows (an intercept column first); the header is skipped."""
    text = chunk.read()
    rows = np.loadtxt(io.BytesIO(text), delimiter=",", ndmin=2,
                      skiprows=1 if chunk.start == 0 else 0)
    if rows.size == 0:
        return None, None, 0
    x = np.column_stack([np.ones(len(rows)), rows[:, :-1]])
    y = rows[:, -1]
    return x.T @ x, x.T @ y, len(rows)


def solve(parts: list[tuple[Any, Any, int]]) -> tuple[Any, int]:
    """Reduce on a worker: sum the per-chunk normal equations and solve them."""
    used = [p for p in parts if p[2]]
    xtx = sum(p[0] for p in used)
    xty = sum(p[1] for p in used)
    return np.linalg.solve(xtx, xty), sum(p[2] for p in used)
