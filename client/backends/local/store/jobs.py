"""A local store's job rows: the job's spec, manifest, state, owner and summary."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from ....errors import JobNotFound
from ....job_record import JobRecord, Owner
from ....protocol import Chunk, JobSpec
from ....states import JobState
from .database import Database


class JobTable(Database):
    """The ``jobs`` table: one row a job, written when its upload is complete."""

    def create_job(self, spec: JobSpec, manifest: list[Chunk], owner: Owner | None) -> None:
        manifest_json = json.dumps([c.to_json() for c in manifest], separators=(",", ":"))
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (job_id, created, kind, function, n_tasks, state, owner, spec,"
                " manifest, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    spec.job_id,
                    spec.created,
                    spec.kind,
                    spec.function,
                    spec.n_tasks,
                    JobState.RUNNING,
                    owner.to_json() if owner else None,
                    spec.to_json(),
                    manifest_json,
                    time.time(),
                ),
            )

    def job(self, job_id: str) -> JobRecord:
        rows = self._query(
            "SELECT job_id, created, kind, function, n_tasks, state, owner, spec, summary"
            " FROM jobs WHERE job_id = ?",
            (job_id,),
        )
        if not rows:
            raise JobNotFound(self._no_job(job_id))
        return self._job_row(rows[0])

    @staticmethod
    def _job_row(row: Any) -> JobRecord:
        return JobRecord(
            job_id=row[0],
            spec=JobSpec.from_json(row[7]),
            state=row[5],
            summary=json.loads(row[8]) if row[8] else None,
            owner=Owner.from_json(row[6]),
        )

    def jobs(self, limit: int = 50) -> list[JobRecord]:
        rows = self._query(
            "SELECT job_id, created, kind, function, n_tasks, state, owner, spec, summary"
            " FROM jobs ORDER BY created DESC LIMIT ?",
            (limit,),
        )
        return [self._job_row(r) for r in rows]

    def manifest(self, job_id: str) -> list[Chunk]:
        """Every chunk of the job: those it was created with, then each appended segment."""
        rows = self._query("SELECT manifest FROM jobs WHERE job_id = ?", (job_id,))
        if not rows:
            raise JobNotFound(self._no_job(job_id))
        texts = [rows[0][0], *(r[0] for r in self._query(
            "SELECT manifest FROM job_segments WHERE job_id = ? ORDER BY segment", (job_id,)))]
        return [Chunk.from_json(c) for text in texts for c in json.loads(text)]

    def append_tasks(self, spec: JobSpec, segment: int, chunks: list[Chunk]) -> bool:
        """Add ``chunks`` to a running job whose new spec (task count) is ``spec``, atomically.

        Each segment is its own row, so appending costs the new tasks only, never a rewrite
        of the job's earlier manifest. Tasks exist from this commit on: a retry, ``fanout
        status`` and ``Job.attach`` see them together with their new ``n_tasks``. A job no
        longer running (cancelled meanwhile) takes nothing: False.
        """
        manifest_json = json.dumps([c.to_json() for c in chunks], separators=(",", ":"))
        with self._transaction() as conn:
            updated = conn.execute(
                "UPDATE jobs SET n_tasks = ?, spec = ?, updated = ? WHERE job_id = ?"
                " AND state = ?",
                (spec.n_tasks, spec.to_json(), time.time(), spec.job_id, JobState.RUNNING))
            if updated.rowcount != 1:
                return False
            conn.execute("INSERT INTO job_segments (job_id, segment, manifest) VALUES (?, ?, ?)",
                         (spec.job_id, segment, manifest_json))
        return True

    def set_job_state(
        self, job_id: str, state: str, *, summary: dict[str, Any] | None = None,
        owner: Owner | None = None, only_if: str | None = None,
    ) -> bool:
        sets = ["state = ?", "updated = ?"]
        params: list[Any] = [state, time.time()]
        if summary is not None:
            sets.append("summary = ?")
            params.append(json.dumps(summary))
        if owner is not None:
            sets.append("owner = ?")
            params.append(owner.to_json())
        sql = f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ?"
        params.append(job_id)
        if only_if is not None:
            sql += " AND state = ?"
            params.append(only_if)
        with self._transaction() as conn:
            return conn.execute(sql, params).rowcount == 1

    def job_states(self, job_ids: Iterable[str]) -> dict[str, str]:
        ids = list(job_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._query(f"SELECT job_id, state FROM jobs WHERE job_id IN ({marks})", ids)
        return dict(rows)

    def load_spec(self, job_id: str) -> JobSpec:
        return self.job(job_id).spec
