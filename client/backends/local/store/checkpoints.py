"""A local store's checkpoints: the state a long task saves to resume after a retry."""

from __future__ import annotations

import time

from .database import Database


class CheckpointTable(Database):
    """The ``checkpoints`` table: at most one blob per (job, task), replaced on each save."""

    def get_checkpoint(self, job_id: str, task_index: int) -> bytes | None:
        rows = self._query(
            "SELECT data FROM checkpoints WHERE job_id = ? AND task_index = ?",
            (job_id, task_index),
        )
        return bytes(rows[0][0]) if rows else None

    def put_checkpoint(self, job_id: str, task_index: int, data: bytes) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO checkpoints (job_id, task_index, data, updated) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (job_id, task_index) DO UPDATE SET data = excluded.data,"
                " updated = excluded.updated",
                (job_id, task_index, data, time.time()),
            )

    def delete_checkpoint(self, job_id: str, task_index: int) -> None:
        # A read first: most tasks never checkpoint, and a read does not take the write lock.
        if self._query(
            "SELECT 1 FROM checkpoints WHERE job_id = ? AND task_index = ?", (job_id, task_index)
        ):
            with self._transaction() as conn:
                conn.execute(
                    "DELETE FROM checkpoints WHERE job_id = ? AND task_index = ?",
                    (job_id, task_index),
                )
