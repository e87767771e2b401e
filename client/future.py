"""fanout's future: a real ``concurrent.futures.Future`` that knows its job and task."""

from __future__ import annotations

import concurrent.futures
import threading
from enum import StrEnum
from typing import Any, Protocol

from .errors import InvalidArgument


class Claim(StrEnum):
    """What :meth:`Future.claim` found: the task is to run, was cancelled, or is done."""

    RUN = "run"
    CANCELLED = "cancelled"
    DONE = "done"


class LogSource(Protocol):
    def logs(self, job_id: str, task_index: int, stream: str = "both") -> str: ...


class Future(concurrent.futures.Future[Any]):
    """A task's future. ``job_id`` and ``task_index`` find its record in the store."""

    def __init__(self, job_id: str, task_index: int, source: LogSource) -> None:
        super().__init__()
        self.job_id = job_id
        self.task_index = task_index
        self._source = source
        self._claim_lock = threading.Lock()
        self._claimed = False  # set_running_or_notify_cancel has been called

    def logs(self, stream: str = "both") -> str:
        """The task's captured output: ``"stdout"``, ``"stderr"`` or ``"both"`` (stdout first).

        Empty while the task has not finished; output is kept up to its last 64 KiB.
        """
        if stream not in ("both", "stdout", "stderr"):
            raise InvalidArgument(f"stream must be 'both', 'stdout' or 'stderr', not {stream!r}")
        return self._source.logs(self.job_id, self.task_index, stream)

    def set_running_or_notify_cancel(self) -> bool:
        with self._claim_lock:
            self._claimed = True
            return super().set_running_or_notify_cancel()

    def claim(self) -> Claim:
        """For a backend about to run the task: run it, drop it (cancelled), or skip it (done).

        Moves a pending future to RUNNING (as an executor does when it starts a call) and
        reports a cancelled one once, so ``wait()``/``as_completed()`` see the cancellation.
        Whether that was done already is this class's own record (every call goes through
        :meth:`set_running_or_notify_cancel` here), not the stdlib's private state.
        """
        with self._claim_lock:
            if not self._claimed and (not self.done() or self.cancelled()):
                self._claimed = True
                try:
                    started = super().set_running_or_notify_cancel()
                except RuntimeError:  # its result was set meanwhile by another thread
                    return Claim.DONE
                return Claim.RUN if started else Claim.CANCELLED
        return Claim.DONE if self.done() else Claim.RUN

    # No __repr__ of our own: the stdlib's repr, exactly, so its parsers keep working
    # (``job_id``/``task_index`` are attributes).
