"""The records fanout writes on a task's behalf: a cancellation, and a task whose worker was lost.

A worker writes the records of the tasks it ran. When no worker can (the job was
cancelled, the worker died or was reclaimed, the chunk failed in the state machine), the
supervisor, the client or the AWS finalize step writes one of these instead, the same on
every backend, under the same conditional put: a record that lands first stays.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .protocol import ResultRecord, now
from .runtime import exception_fields
from .states import FINAL_STATES, TaskState


def cancelled(job_id: str, indexes: Iterable[int], attempt: int = 1) -> list[ResultRecord]:
    """CANCELLED records for tasks that will not run; no worker, no duration."""
    stamp = now()
    return [ResultRecord(job_id, index, TaskState.CANCELLED, attempt, "", stamp, stamp)
            for index in indexes]


def lost(job_id: str, index: int, attempt: int, error: Exception, *, worker_id: str = "",
         stdout: str = "", stderr: str = "", extra: dict[str, Any] | None = None,
         status: TaskState = TaskState.FAILED) -> ResultRecord:
    """A task's record when its worker could not write one: ``error`` (``WorkerLost``,
    ``TaskTimeout``) as the exception, with the worker's last output where there is some.

    ``status=RUNNING`` marks an attempt that is retried anyway (an AWS Batch task reclaimed
    by Spot): no future resolves on it, and the retry's record replaces it.
    """
    stamp = now()
    record = ResultRecord(job_id, index, status, attempt, worker_id, stamp, stamp,
                          stdout=stdout, stderr=stderr, extra=dict(extra or {}))
    for key, value in exception_fields(error).items():
        setattr(record, key, value)
    record.traceback = f"{record.exc_type}: {error}\n" + (
        f"\nlast stderr of the worker:\n{stderr}" if stderr else "")
    return record


def final(records: Iterable[ResultRecord]) -> list[ResultRecord]:
    """The records a future may resolve on: not an AWS Batch attempt interrupted by Spot,
    which stays RUNNING until its retry's record replaces it."""
    return [r for r in records if r.status in FINAL_STATES]
