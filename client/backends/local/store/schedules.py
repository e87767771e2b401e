"""A local store's schedules: their specs and objects, when each fires next, its runs."""

from __future__ import annotations

import time
from pathlib import Path

from ....errors import ScheduleExists, ScheduleNotFound
from .database import Database


class ScheduleTable(Database):
    """The ``schedules`` and ``schedule_runs`` tables; a schedule's pickled function,
    items and reducer are files under ``schedules/<name>/``."""

    @staticmethod
    def _no_schedule(name: str) -> ScheduleNotFound:
        return ScheduleNotFound(f"no schedule {name!r}; `fanout schedule list` shows them")

    def schedule_dir(self, name: str) -> Path:
        from ....schedules import validate_name

        return self.home / "schedules" / validate_name(name)

    def put_schedule(self, spec_json: str, name: str, next_fire: float | None,
                     objects: dict[str, bytes]) -> None:
        directory = self.schedule_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        for object_name, data in objects.items():
            (directory / object_name).write_bytes(data)
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM schedules WHERE name = ?", (name,)).fetchone():
                raise ScheduleExists(f"a schedule named {name!r} exists already; remove it first "
                                     f"(`fanout schedule remove {name}`)")
            conn.execute("INSERT INTO schedules (name, spec, next_fire, updated) "
                         "VALUES (?, ?, ?, ?)", (name, spec_json, next_fire, time.time()))

    def schedule_object(self, name: str, object_name: str) -> bytes | None:
        path = self.schedule_dir(name) / object_name
        return path.read_bytes() if path.exists() else None

    def schedules(self) -> list[tuple[str, float | None]]:
        return [(row[0], row[1]) for row in
                self._query("SELECT spec, next_fire FROM schedules ORDER BY name")]

    def schedule(self, name: str) -> tuple[str, float | None]:
        rows = self._query("SELECT spec, next_fire FROM schedules WHERE name = ?", (name,))
        if not rows:
            raise self._no_schedule(name)
        return rows[0][0], rows[0][1]

    def update_schedule(self, name: str, *, spec_json: str | None = None,
                        next_fire: float | None = None) -> None:
        with self._transaction() as conn:
            if spec_json is not None:
                conn.execute("UPDATE schedules SET spec = ?, updated = ? WHERE name = ?",
                             (spec_json, time.time(), name))
            if next_fire is not None:
                conn.execute("UPDATE schedules SET next_fire = ?, updated = ? WHERE name = ?",
                             (next_fire, time.time(), name))

    def delete_schedule(self, name: str) -> None:
        with self._transaction() as conn:
            if conn.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount == 0:
                raise self._no_schedule(name)

    def add_schedule_run(self, name: str, fired_at: float, job_id: str | None,
                         outcome: str) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO schedule_runs (name, fired_at, job_id, outcome)"
                         " VALUES (?, ?, ?, ?)", (name, fired_at, job_id, outcome))

    def schedule_runs(self, name: str, limit: int = 100) -> list[tuple[float, str | None, str]]:
        return [(r[0], r[1], r[2]) for r in self._query(
            "SELECT fired_at, job_id, outcome FROM schedule_runs WHERE name = ?"
            " ORDER BY fired_at DESC LIMIT ?", (name, limit))]
