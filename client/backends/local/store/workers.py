"""A local store's live workers: which process runs which task now, for ``status``."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable

import psutil

from .database import Database


class WorkerTable(Database):
    """The ``workers`` table: a row per live worker process, pruned when its process is gone."""

    def worker_started(self, worker_id: str, pid: int) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO workers (worker_id, pid, host, since) VALUES (?, ?, ?, ?)",
                (worker_id, pid, socket.gethostname(), time.time()),
            )

    def worker_running(self, worker_id: str, job_id: str | None, task_index: int | None,
                       attempt: int | None) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE workers SET job_id = ?, task_index = ?, attempt = ?, since = ?"
                " WHERE worker_id = ?",
                (job_id, task_index, attempt, time.time(), worker_id),
            )

    def worker_gone(self, worker_ids: Iterable[str]) -> None:
        ids = [(w,) for w in worker_ids]
        if ids:
            with self._transaction() as conn:
                conn.executemany("DELETE FROM workers WHERE worker_id = ?", ids)

    def prune_dead_workers(self) -> None:
        """Forget worker rows of processes on this host that no longer exist."""
        if self.read_only:
            return
        host = socket.gethostname()
        dead = [
            wid for wid, pid in self._query(
                "SELECT worker_id, pid FROM workers WHERE host = ?", (host,)
            ) if not psutil.pid_exists(pid)
        ]
        self.worker_gone(dead)
