"""The states a task and a job can be in, defined once for every backend.

Both are ``StrEnum``s: a state is stored as its plain string (SQLite, DynamoDB, JSON for the
dashboard) and compares equal to it, so records written by earlier releases read the same.
"""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    """Where one task is. A stored record is one of the three final states, except an
    AWS Batch attempt interrupted by Spot, recorded ``RUNNING`` until its retry writes."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


#: The states a task ends in: a future resolves only on a record in one of these.
FINAL_STATES = frozenset({TaskState.SUCCEEDED, TaskState.FAILED, TaskState.CANCELLED})


class JobState(StrEnum):
    """Where a job is: running until every task has a final record, then finished, or
    cancelled when someone cancelled it (its unfinished tasks are recorded cancelled)."""

    RUNNING = "running"
    FINISHED = "finished"
    CANCELLED = "cancelled"
