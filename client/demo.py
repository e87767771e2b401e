"""The demo job: estimate pi from random points in the unit square (Monte Carlo).

Each task draws ``draws`` points with its own seeded generator and counts those inside
the quarter circle; the mean over tasks times four estimates pi. It is the classic
embarrassingly parallel job, and being seeded it prints the same estimate every time.
"""

from __future__ import annotations

import random

from .context import task_rng


def estimate_pi(draws: int) -> float:
    """One replicate: the fraction of ``draws`` random points inside the circle, times 4."""
    try:
        rng = task_rng()
    except RuntimeError:  # numpy missing: the standard library, seeded by fanout too
        inside = sum(1 for _ in range(draws) if random.random() ** 2 + random.random() ** 2 < 1)
        return 4.0 * inside / draws
    points = rng.random((draws, 2))
    inside = int(((points * points).sum(axis=1) < 1.0).sum())
    return 4.0 * inside / draws
