"""A local store's result records: the protocol's conditional put, reads, counts, summary."""

from __future__ import annotations

import json
from typing import Any

from ....errors import JobNotFound
from ....protocol import (
    CANCELLED,
    SUCCEEDED,
    ResultRecord,
)
from ....states import JobState
from ....summary import Timings, task_counts
from .database import Database

_RECORD_COLUMNS = (
    "job_id, task_index, status, attempt, worker_id, started, ended, value, value_ref, "
    "exc_type, exc_message, traceback, exc_pickle, stdout, stderr, extra"
)

# The protocol's conditional put: first writer wins; a later attempt may replace a
# record only when that record is not a success.
_PUT_RESULT = f"""
INSERT INTO results (seq, {_RECORD_COLUMNS})
VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM results WHERE job_id = :job_id),
        :job_id, :task_index, :status, :attempt, :worker_id, :started, :ended, :value,
        :value_ref, :exc_type, :exc_message, :traceback, :exc_pickle, :stdout, :stderr, :extra)
ON CONFLICT (job_id, task_index) DO UPDATE SET
    seq = excluded.seq, status = excluded.status, attempt = excluded.attempt,
    worker_id = excluded.worker_id, started = excluded.started, ended = excluded.ended,
    value = excluded.value, value_ref = excluded.value_ref, exc_type = excluded.exc_type,
    exc_message = excluded.exc_message, traceback = excluded.traceback,
    exc_pickle = excluded.exc_pickle, stdout = excluded.stdout, stderr = excluded.stderr,
    extra = excluded.extra
WHERE results.status != '{SUCCEEDED}' AND results.attempt < excluded.attempt
"""


class ResultTable(Database):
    """The ``results`` table: one record per (job, task); ``seq`` orders them for polling."""

    @staticmethod
    def _params(record: ResultRecord) -> dict[str, Any]:
        return {
            "job_id": record.job_id,
            "task_index": record.task_index,
            "status": record.status,
            "attempt": record.attempt,
            "worker_id": record.worker_id,
            "started": record.started,
            "ended": record.ended,
            "value": record.value,
            "value_ref": record.value_ref,
            "exc_type": record.exc_type,
            "exc_message": record.exc_message,
            "traceback": record.traceback,
            "exc_pickle": record.exc_pickle,
            "stdout": record.stdout,
            "stderr": record.stderr,
            "extra": json.dumps(record.extra),
        }

    @staticmethod
    def _record(row: Any) -> ResultRecord:
        (job_id, task_index, status, attempt, worker_id, started, ended, value, value_ref,
         exc_type, exc_message, tb, exc_pickle, stdout, stderr, extra) = row[:16]
        return ResultRecord(job_id, task_index, status, attempt, worker_id, started, ended,
                            value, value_ref, exc_type, exc_message, tb, exc_pickle, stdout,
                            stderr, json.loads(extra))

    def put_result(self, record: ResultRecord) -> ResultRecord:
        # One statement is its own transaction: the common case costs a single commit.
        with self._write() as conn:
            if conn.execute(_PUT_RESULT, self._params(record)).rowcount == 1:
                return record
        stored = self.result(record.job_id, record.task_index)
        assert stored is not None
        return stored

    def put_results(self, records: list[ResultRecord]) -> list[ResultRecord]:
        """Conditionally store each record in one transaction; return what is stored."""
        stored: list[ResultRecord] = []
        with self._transaction() as conn:
            for record in records:
                if conn.execute(_PUT_RESULT, self._params(record)).rowcount == 1:
                    stored.append(record)
                    continue
                row = conn.execute(
                    f"SELECT {_RECORD_COLUMNS} FROM results WHERE job_id = ? AND task_index = ?",
                    (record.job_id, record.task_index),
                ).fetchone()
                stored.append(self._record(row))
        return stored

    def result(self, job_id: str, task_index: int) -> ResultRecord | None:
        rows = self._query(
            f"SELECT {_RECORD_COLUMNS} FROM results WHERE job_id = ? AND task_index = ?",
            (job_id, task_index),
        )
        return self._record(rows[0]) if rows else None

    def results(self, job_id: str) -> list[ResultRecord]:
        rows = self._query(
            f"SELECT {_RECORD_COLUMNS} FROM results WHERE job_id = ? AND task_index >= 0"
            " ORDER BY task_index",
            (job_id,),
        )
        return [self._record(r) for r in rows]

    def results_since(self, job_id: str, seq: int) -> tuple[list[ResultRecord], int]:
        """Records written after ``seq``: polling costs O(new results), not O(tasks)."""
        rows = self._query(
            f"SELECT {_RECORD_COLUMNS}, seq FROM results WHERE job_id = ? AND seq > ?"
            " ORDER BY seq",
            (job_id, seq),
        )
        if not rows:
            return [], seq
        return [self._record(r[:16]) for r in rows], rows[-1][16]

    def status_counts(self, job_id: str) -> dict[str, int]:
        return dict(self._query(
            "SELECT status, COUNT(*) FROM results WHERE job_id = ? AND task_index >= 0"
            " GROUP BY status", (job_id,)))

    def timings(self, job_id: str) -> Timings:
        """Summed in SQL: no value is read, however many tasks the job has."""
        row = self._query(
            "SELECT COALESCE(SUM(MAX(ended - started, 0)), 0), MIN(started), MAX(ended),"
            " COUNT(DISTINCT worker_id) FROM results WHERE job_id = ? AND task_index >= 0"
            " AND status != ? AND worker_id != ''",
            (job_id, CANCELLED),
        )[0]
        return Timings(row[0], row[1], row[2], row[3])

    def running_tasks(self, job_id: str) -> int:
        """Tasks a live worker holds now and that have no successful record yet."""
        return len({
            row[0]
            for row in self._query(
                "SELECT task_index FROM workers w WHERE job_id = ? AND task_index >= 0 AND NOT"
                " EXISTS (SELECT 1 FROM results r WHERE r.job_id = w.job_id"
                " AND r.task_index = w.task_index AND r.status = ?)",
                (job_id, SUCCEEDED),
            )
        })

    def counts(self, job_id: str) -> dict[str, int]:
        """Every task state's count, running ones as the live workers say (``status``)."""
        rows = self._query("SELECT n_tasks, state FROM jobs WHERE job_id = ?", (job_id,))
        if not rows:
            raise JobNotFound(self._no_job(job_id))
        n_tasks, state = rows[0]
        running = self.running_tasks(job_id) if state == JobState.RUNNING else 0
        return task_counts(self.status_counts(job_id), n_tasks, running)
