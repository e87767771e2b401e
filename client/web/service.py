"""What the jobs API answers, over any backend; the Chalice routes only translate HTTP.

Every input is checked here before it reaches a store: job ids and schedule names against
a strict pattern (so nothing in a request can name a path outside the store), paging tokens
by decoding them, filters against the known task states. Problems raise :class:`ApiError`
with the HTTP status to answer.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from ..backends import Backend
from ..errors import JobNotFound, ScheduleNotFound
from ..protocol import CANCELLED, FAILED, PENDING, RUNNING, SUCCEEDED, TASK_STATES, ResultRecord
from ..states import JobState

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
MAX_PAGE = 500
LOG_TAIL_CHARS = 4000


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _check_id(value: str, what: str) -> str:
    if not ID_PATTERN.match(value or ""):
        raise ApiError(400, f"invalid {what} {value!r}: letters, digits, '.', '_' and '-' only")
    return value


def _limit(value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise ApiError(400, f"limit must be an integer, not {value!r}") from None
    if not 1 <= limit <= MAX_PAGE:
        raise ApiError(400, f"limit must be between 1 and {MAX_PAGE}, not {limit}")
    return limit


def encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"offset": offset}).encode()).decode()


#: Largest offset a paging token may hold, and longest token: past these it is not ours.
MAX_OFFSET = 10**9
MAX_TOKEN_CHARS = 200


def decode_token(token: str | None) -> int:
    if not token:
        return 0
    if len(token) > MAX_TOKEN_CHARS:
        raise ApiError(400, "invalid paging token: pass back next_token exactly as received")
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        offset = data["offset"]
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ApiError(400, "invalid paging token: pass back next_token exactly as "
                            "received") from None
    if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset <= MAX_OFFSET:
        raise ApiError(400, "invalid paging token: pass back next_token exactly as received")
    return offset


class JobsService:
    """The API's answers as plain JSON-able data."""

    def __init__(self, backend: Backend[Any]) -> None:
        self.backend = backend

    # -- jobs ------------------------------------------------------------------------------

    def _job_info(self, job_id: str) -> Any:
        _check_id(job_id, "job id")
        try:
            return self.backend.job_info(job_id)
        except JobNotFound:
            raise ApiError(404, f"no job {job_id!r}") from None

    def _job_json(self, info: Any, counts: dict[str, int] | None = None) -> dict[str, Any]:
        spec = info.spec
        if counts is None:
            if info.state != JobState.RUNNING and info.summary:
                counts = {state: int(info.summary.get(state, 0)) for state in TASK_STATES}
            else:
                counts = self.backend.counts(info.job_id)
        state = "orphaned" if info.orphaned else info.state
        return {
            "job_id": info.job_id, "function": spec.function, "kind": spec.kind,
            "created": spec.created, "state": state, "n_tasks": spec.n_tasks,
            "counts": counts, "summary": info.summary, "options": spec.options.to_json(),
        }

    def list_jobs(self, limit: str | None = None, next_token: str | None = None
                  ) -> dict[str, Any]:
        size = _limit(limit, 20)
        offset = decode_token(next_token)
        infos = self.backend.list_jobs(offset + size + 1)
        page = infos[offset:offset + size]
        more = len(infos) > offset + size
        return {"jobs": [self._job_json(info) for info in page],
                "next_token": encode_token(offset + size) if more else None}

    def job(self, job_id: str) -> dict[str, Any]:
        from ..cost import job_cost

        info = self._job_info(job_id)
        out = self._job_json(info, self.backend.counts(job_id))
        out["cost"] = job_cost(self.backend, info.spec, self.backend.records(job_id))
        return out

    def tasks(self, job_id: str, status: str | None = None, limit: str | None = None,
              next_token: str | None = None) -> dict[str, Any]:
        info = self._job_info(job_id)
        if status is not None and status not in TASK_STATES:
            raise ApiError(400, f"unknown status {status!r}; use one of {', '.join(TASK_STATES)}")
        size = _limit(limit, 100)
        offset = decode_token(next_token)
        records = {r.task_index: r for r in self.backend.records(job_id)}
        rows: list[dict[str, Any]] = []
        if status in (None, PENDING, RUNNING):
            waiting = PENDING if info.state == JobState.RUNNING else CANCELLED
            rows += [{"task_index": i, "status": waiting} for i in range(info.spec.n_tasks)
                     if i not in records]
        rows = [r for r in rows if status is None or r["status"] == status]
        rows += [self._task_json(r) for r in records.values()
                 if status is None or r.status == status]
        # Failures first: they are what a person opens a job's page for.
        order = {FAILED: 0, CANCELLED: 1, RUNNING: 2, PENDING: 3, SUCCEEDED: 4}
        rows.sort(key=lambda r: (order.get(r["status"], 5), r["task_index"]))
        page = rows[offset:offset + size]
        more = len(rows) > offset + size
        return {"job_id": job_id, "tasks": page,
                "next_token": encode_token(offset + size) if more else None}

    @staticmethod
    def _task_json(record: ResultRecord) -> dict[str, Any]:
        logs = record.stdout + record.stderr
        return {
            "task_index": record.task_index, "status": record.status,
            "attempt": record.attempt, "worker_id": record.worker_id,
            "started": record.started, "ended": record.ended,
            "duration": round(record.duration, 6),
            "error": None if record.status != FAILED else {
                "type": record.exc_type, "message": record.exc_message,
                "traceback": record.traceback},
            "log_tail": logs[-LOG_TAIL_CHARS:],
        }

    def cancel(self, job_id: str) -> dict[str, Any]:
        self._job_info(job_id)
        self.backend.cancel_job(job_id)
        return self.job(job_id)

    # -- schedules -------------------------------------------------------------------------

    def schedules(self) -> dict[str, Any]:
        return {"schedules": [s.to_json() for s in self.backend.list_schedules()]}

    def schedule_runs(self, name: str) -> dict[str, Any]:
        _check_id(name, "schedule name")
        try:
            runs = self.backend.schedule_runs(name)
        except ScheduleNotFound:
            raise ApiError(404, f"no schedule {name!r}") from None
        return {"schedule": name, "runs": runs}
