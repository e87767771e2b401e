"""What a local worker tells its supervisor without a message: a few numbers in shared memory.

The supervisor must know, even after a worker is dead or frozen, which task that worker was
running and whether it is still alive. Messages cannot say it: a worker killed mid-task
sends nothing, one stopped with SIGSTOP sends nothing either, and results are reported in
batches after their commit. So each worker owns a 48-byte shared page it updates without
any system call: how many tasks it has started and finished (their ordinal tells the
supervisor exactly which task was in flight), where its captured stdout/stderr stood when
the current task began (so a task that ends its process keeps its output), and a heartbeat
written by a thread of its own (no beat for the stall interval means the process stopped).
"""

from __future__ import annotations

import mmap
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from struct import Struct

# started, finished, heartbeat (CLOCK_MONOTONIC, shared by every process on the machine),
# stdout and stderr capture offsets at the start of the current task. The task loop writes
# only the counts and offsets, the heartbeat thread only the beat: no field has two writers.
_LAYOUT = Struct("<qqdqq")
_COUNTS = Struct("<qq")
_BEAT = Struct("<d")
_BEAT_AT = _COUNTS.size
_OFFSETS = Struct("<qq")
_OFFSETS_AT = _BEAT_AT + _BEAT.size


@dataclass(frozen=True, slots=True)
class Reading:
    """One look at a worker's page."""

    started: int
    finished: int
    beat: float
    stdout_at: int
    stderr_at: int

    @property
    def running(self) -> int | None:
        """The ordinal of the task in flight, if one is (counting from 0 since start-up)."""
        return self.started - 1 if self.started > self.finished else None


class Beacon:
    """Both ends of one worker's page; ``create`` on the supervisor, ``attach`` in the worker."""

    def __init__(self, fd: int) -> None:
        self._map = mmap.mmap(fd, _LAYOUT.size)
        self._started = 0
        self._finished = 0

    @classmethod
    def create(cls, directory: str) -> tuple[Beacon, int]:
        """A new zeroed page and the descriptor to hand to the worker (then close it)."""
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("fanout-beacon", os.MFD_CLOEXEC)
        else:  # pragma: no cover - non-Linux: an unlinked file does the same
            fd, path = tempfile.mkstemp(prefix=".beacon-", dir=directory)
            os.unlink(path)
        os.ftruncate(fd, _LAYOUT.size)
        beacon = cls(fd)
        beacon._beat()
        return beacon, fd

    def read(self) -> Reading:
        return Reading(*_LAYOUT.unpack_from(self._map, 0))

    def close(self) -> None:
        self._map.close()

    # -- the worker's side -----------------------------------------------------------------

    def _beat(self) -> None:
        _BEAT.pack_into(self._map, _BEAT_AT, time.monotonic())

    def task_started(self, stdout_at: int, stderr_at: int) -> None:
        # Offsets first: once ``started`` counts the task, its output position is valid.
        _OFFSETS.pack_into(self._map, _OFFSETS_AT, stdout_at, stderr_at)
        self._started += 1
        _COUNTS.pack_into(self._map, 0, self._started, self._finished)

    def task_finished(self) -> None:
        self._finished += 1
        _COUNTS.pack_into(self._map, 0, self._started, self._finished)

    def beat_forever(self, period: float) -> None:
        """Start the heartbeat thread: it stops only when the whole process stops."""
        def run() -> None:
            while True:
                self._beat()
                time.sleep(period)

        threading.Thread(target=run, name="fanout-heartbeat", daemon=True).start()
