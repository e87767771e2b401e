"""Grouping ``submit`` calls into jobs, the same way on every backend.

A call gets its job id and task index the moment ``submit`` returns; calls for the same
function and options that arrive close together share one job (one payload object, one
manifest), which is what makes one-future-per-task workloads cheap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..future import Future, LogSource
from ..options import TaskOptions

#: How long submitted calls may wait to be grouped into one job while workers are busy.
SUBMIT_LINGER_SECONDS = 0.02
SUBMIT_BATCH_MAX = 4096


@dataclass
class SubmitBatch:
    job_id: str
    function: bytes
    function_name: str
    options: TaskOptions
    opened: float
    payloads: list[bytes] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    futures: list[Future] = field(default_factory=list)
    inputs: dict[int, tuple[Future, ...]] = field(default_factory=dict)  # by task index


class SubmitBatches:
    """Open batches, one per (function, options); thread-safe."""

    def __init__(self, new_job_id: Callable[[], str], source: LogSource,
                 linger: float = SUBMIT_LINGER_SECONDS) -> None:
        self._new_job_id = new_job_id
        self._source = source
        self.linger = linger
        self._lock = threading.Lock()
        self._open: dict[tuple[object, TaskOptions], SubmitBatch] = {}

    def add(self, fn_key: object, function: bytes, function_name: str, payload: bytes,
            options: TaskOptions, seed: int, inputs: tuple[Future, ...] = ()
            ) -> tuple[Future, bool]:
        """Queue one call; returns its future and whether it opened a new batch."""
        with self._lock:
            key = (fn_key, options)
            batch = self._open.get(key)
            opened = batch is None
            if batch is None:
                batch = SubmitBatch(self._new_job_id(), function, function_name, options,
                                    time.monotonic())
                self._open[key] = batch
            future = Future(batch.job_id, len(batch.futures), self._source)
            if inputs:
                batch.inputs[future.task_index] = inputs
            batch.futures.append(future)
            batch.payloads.append(payload)
            batch.seeds.append(seed)
        return future, opened

    def deadline(self) -> float | None:
        """When the oldest open batch is due (``time.monotonic``), or None."""
        with self._lock:
            if not self._open:
                return None
            return min(b.opened for b in self._open.values()) + self.linger

    def take(self, now_wanted: bool) -> list[SubmitBatch]:
        """Close and return the batches that are due (all of them when ``now_wanted``)."""
        clock = time.monotonic()
        with self._lock:
            ready = [key for key, b in self._open.items()
                     if now_wanted or len(b.futures) >= SUBMIT_BATCH_MAX
                     or clock - b.opened >= self.linger]
            return [self._open.pop(key) for key in ready]
