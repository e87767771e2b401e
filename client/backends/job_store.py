"""What the job lifecycle needs from a backend's store: the same methods, the same records.

The local store (SQLite and files) and the AWS store (DynamoDB and S3) both provide it,
as they provide the worker runtime's :class:`~fanout.protocol.TaskStore`; so starting,
following, retrying, cancelling and summarizing a job (``lifecycle.py``) are written once.
"""

from __future__ import annotations

from typing import Any, Protocol

from ..job_record import JobRecord
from ..protocol import Chunk, JobSpec, ResultRecord
from ..summary import Timings


class JobStore(Protocol):
    # -- jobs --------------------------------------------------------------------------------

    def job(self, job_id: str) -> JobRecord:
        """The job's record; ``JobNotFound`` (saying where it looked) when there is none."""
        ...

    def jobs(self, limit: int = 50) -> list[JobRecord]:
        """The newest jobs first."""
        ...

    def manifest(self, job_id: str) -> list[Chunk]:
        """Every chunk of the job as first planned (a retry plans from it)."""
        ...

    def set_job_state(self, job_id: str, state: str, *,
                      summary: dict[str, Any] | None = None) -> bool: ...

    def append_tasks(self, spec: JobSpec, segment: int, chunks: list[Chunk]) -> bool:
        """Add ``segment``'s ``chunks`` to a running job whose new spec (task count) is
        ``spec``, atomically; False (nothing added) when the job is no longer running.
        ``manifest`` returns them after the job's first chunks, in segment order."""
        ...

    # -- records -----------------------------------------------------------------------------

    def put_result(self, record: ResultRecord) -> ResultRecord: ...

    def put_results(self, records: list[ResultRecord]) -> list[ResultRecord]:
        """Conditionally store each record; return what is stored for each afterwards."""
        ...

    def result(self, job_id: str, task_index: int) -> ResultRecord | None: ...

    def results(self, job_id: str) -> list[ResultRecord]:
        """All map-task records of a job, in task order."""
        ...

    def results_since(self, job_id: str, cursor: int) -> tuple[list[ResultRecord], int]:
        """Records written after ``cursor``, and the cursor to ask with next."""
        ...

    def load_value(self, record: ResultRecord) -> bytes: ...

    def status_counts(self, job_id: str) -> dict[str, int]: ...

    def timings(self, job_id: str) -> Timings: ...

    # -- schedule runs -----------------------------------------------------------------------

    def schedule_runs(self, name: str, limit: int = 100) -> list[tuple[float, str | None, str]]:
        """(fired at, job id or None, outcome) of a schedule's runs, newest first."""
        ...
