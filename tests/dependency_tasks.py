"""Tasks for the futures-as-arguments tests (imported by workers by name or by value)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any


def step(name: str, inputs: Any = None, wait_for: str | None = None,
         signal: str | None = None) -> dict[str, Any]:
    """Record when it ran; optionally wait (bounded) for another task's signal file.

    A task that waits for a file written by a task that depends on its *sibling* can only
    finish if that dependent started without waiting for it: a barrier would leave it
    waiting until the deadline, and the task fails.
    """
    started = time.time()
    if wait_for is not None:
        deadline = time.monotonic() + 30
        while not os.path.exists(wait_for):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{name}: {wait_for} never appeared (a barrier?)")
            time.sleep(0.01)
    if signal is not None:
        with open(signal, "w") as handle:
            handle.write(name)
    return {"name": name, "inputs": inputs, "started": started, "ended": time.time()}


def value_of(x: Any) -> Any:
    return x


def boom(x: int) -> int:
    raise ValueError(f"boom {x}")


def total(*parts: Any, **named: Any) -> int:
    """Sum of every number found in nested containers and dataclasses."""
    def walk(obj: Any) -> int:
        if isinstance(obj, int):
            return obj
        if isinstance(obj, dict):
            return sum(walk(v) for v in obj.values())
        if isinstance(obj, (list, tuple, set, frozenset)):
            return sum(walk(v) for v in obj)
        if isinstance(obj, Pair):
            return walk(obj.left) + walk(obj.right)
        raise TypeError(f"not a number: {obj!r}")
    return walk(parts) + walk(named)


@dataclass
class Pair:
    left: Any
    right: Any
