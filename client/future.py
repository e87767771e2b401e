"""fanout's future: a real ``concurrent.futures.Future`` that knows its job and task."""

from __future__ import annotations

import concurrent.futures
from typing import Any, Protocol


class LogSource(Protocol):
    def logs(self, job_id: str, task_index: int, stream: str = "both") -> str: ...


class Future(concurrent.futures.Future[Any]):
    """A task's future. ``job_id`` and ``task_index`` find its record in the store."""

    def __init__(self, job_id: str, task_index: int, source: LogSource) -> None:
        super().__init__()
        self.job_id = job_id
        self.task_index = task_index
        self._source = source

    def logs(self, stream: str = "both") -> str:
        """The task's captured output: ``"stdout"``, ``"stderr"`` or ``"both"`` (stdout first).

        Empty while the task has not finished; output is kept up to its last 64 KiB.
        """
        if stream not in ("both", "stdout", "stderr"):
            raise ValueError(f"stream must be 'both', 'stdout' or 'stderr', not {stream!r}")
        return self._source.logs(self.job_id, self.task_index, stream)

    def claim(self) -> str:
        """For a backend about to run the task: ``"run"``, ``"cancelled"`` or ``"done"``.

        Moves a pending future to RUNNING (as an executor does when it starts a call) and
        reports a cancelled one once, so ``wait()``/``as_completed()`` see the cancellation.
        """
        with self._condition:
            state = self._state
        if state == "PENDING" or state == "CANCELLED":
            return "run" if self.set_running_or_notify_cancel() else "cancelled"
        return "done" if self.done() else "run"

    # No __repr__ of our own: the stdlib's repr, exactly, so its parsers keep working
    # (``job_id``/``task_index`` are attributes).
