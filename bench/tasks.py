"""Task functions for the benchmarks.

They live at module level in an importable module (``bench.tasks``) so that fanout,
``ProcessPoolExecutor`` and joblib all pickle them by reference, identically.
"""

from __future__ import annotations

import time
from pathlib import Path

#: How often a blocked task looks for its go marker.
POLL_SECONDS = 0.01


def noop(x: int) -> int:
    """Return the argument: measures pure per-task overhead."""
    return x


def busy(loops: int) -> int:
    """Burn CPU in pure Python (holds the GIL) for a time proportional to ``loops``."""
    total = 0
    for i in range(loops):
        total += i * i
    return total


def block_until(go_path: str, started_path: str, deadline_s: float) -> bool:
    """Occupy a worker until ``go_path`` exists, at most ``deadline_s`` seconds.

    Touches ``started_path`` first, so the caller knows the worker is busy. Returns
    whether the go marker was seen (False: the deadline expired).
    """
    Path(started_path).touch()
    go = Path(go_path)
    deadline = time.monotonic() + deadline_s
    while not go.exists():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True
