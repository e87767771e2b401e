"""A job's task counts and the summary written on its record when it ends, computed once.

The counts ``status`` shows and the summary a finished or cancelled job keeps are the same
on every backend and from every writer (the local supervisor, the inline backend, a
cancel from the CLI, the AWS finalize step): a store supplies only its stored records'
statuses and timings (:class:`SummaryStore`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .protocol import ResultRecord
from .states import FINAL_STATES, TaskState


@dataclass(frozen=True)
class Timings:
    """When a job's tasks ran: the records of tasks a worker ran (not cancellations)."""

    task_seconds: float  # the sum of their durations
    first_started: float | None
    last_ended: float | None
    workers: int  # distinct workers that ran them

    @classmethod
    def of(cls, records: Iterable[ResultRecord]) -> Timings:
        ran = [r for r in records if r.worker_id and r.status != TaskState.CANCELLED]
        return cls(sum(r.duration for r in ran), min((r.started for r in ran), default=None),
                   max((r.ended for r in ran), default=None), len({r.worker_id for r in ran}))

    @property
    def wall_seconds(self) -> float:
        if self.first_started is None or self.last_ended is None:
            return 0.0
        return self.last_ended - self.first_started


class SummaryStore(Protocol):
    """What a summary needs from a store; both stores answer without reading values."""

    def status_counts(self, job_id: str) -> dict[str, int]:
        """How many of the job's map tasks have a stored record in each status."""
        ...

    def timings(self, job_id: str) -> Timings: ...

    def results(self, job_id: str) -> list[ResultRecord]:
        """The job's map-task records (a packed job's calls are counted from them)."""
        ...


def status_counts(records: Iterable[ResultRecord]) -> dict[str, int]:
    return dict(Counter(str(r.status) for r in records))


def task_counts(stored: Mapping[str, int], n_tasks: int, running: int | None = None
                ) -> dict[str, int]:
    """Every task state's count: final ones from the stored records; ``running`` as the
    backend sees it (live workers), else the records still marked running; the rest pending.
    """
    counts = {state.value: 0 for state in TaskState}
    for state in FINAL_STATES:
        counts[state] = stored.get(state, 0)
    counts[TaskState.RUNNING] = stored.get(TaskState.RUNNING, 0) if running is None else running
    finished = sum(counts[state] for state in FINAL_STATES)
    counts[TaskState.PENDING] = max(0, n_tasks - finished - counts[TaskState.RUNNING])
    return counts


def summary_from(stored: Mapping[str, int], timings: Timings) -> dict[str, Any]:
    """The summary a job's record keeps when it ends: final counts, task and wall seconds
    and how many workers ran its tasks."""
    return {
        **{state.value: stored.get(state, 0) for state in TaskState if state in FINAL_STATES},
        "task_seconds": round(timings.task_seconds, 6),
        "wall_seconds": round(timings.wall_seconds, 6),
        "workers": timings.workers,
    }


def job_summary(store: SummaryStore, job_id: str, pack: int = 0) -> dict[str, Any]:
    """:func:`summary_from` the job's stored records, as its store counts and times them.

    A packed job (``pack`` calls per task, see ``fanout.packing``) is counted in calls,
    from its chunks' records.
    """
    if pack:
        from .packing import final_counts

        return summary_from(final_counts(store.results(job_id), pack), store.timings(job_id))
    return summary_from(store.status_counts(job_id), store.timings(job_id))
