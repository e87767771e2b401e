"""Schedules on the local backend: kept in the store, fired by ``fanout schedule serve``.

The runner is a foreground loop with an injectable clock: ``tick(now)`` fires every
enabled schedule that is due, which is also how tests drive it. Each run is an ordinary
job started on the serving process's worker pool.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from ... import serialization
from ...collector import JobRun
from ...schedules import (
    ScheduleRequest,
    ScheduleSpec,
    next_fire,
    request_json,
    run_items,
    run_seed,
)
from ...states import JobState
from ..base import JobInfo, JobRequest
from .store import LocalStore


class ScheduleHost(Protocol):
    """What the scheduler needs of a backend: its store, and starting and reading jobs.

    A protocol rather than ``LocalBackend`` itself, so this module does not import the
    backend that imports it.
    """

    store: LocalStore

    def start_job(self, request: JobRequest) -> JobRun: ...

    def job_info(self, job_id: str) -> JobInfo: ...

    def schedule_runs(self, name: str) -> list[dict[str, Any]]: ...


def _spec(text: str, next_fire_at: float | None) -> ScheduleSpec:
    data = json.loads(text)
    data["next_fire"] = next_fire_at
    return ScheduleSpec.from_json(data)


def put(backend: ScheduleHost, request: ScheduleRequest, now: float) -> ScheduleSpec:
    spec = request.spec
    first = next_fire(spec.expression, spec.timezone,
                      dt.datetime.fromtimestamp(now, dt.UTC)).timestamp()
    objects = {"function.pkl": request.function}
    if request.items is not None:
        objects["items.pkl"] = request.items
    if request.reducer is not None:
        objects["reducer.pkl"] = request.reducer
    backend.store.put_schedule(request_json(spec), spec.name, first, objects)
    return _spec(request_json(spec), first)


def listing(backend: ScheduleHost) -> list[ScheduleSpec]:
    return [_spec(text, nxt) for text, nxt in backend.store.schedules()]


def get(backend: ScheduleHost, name: str) -> ScheduleSpec:
    text, nxt = backend.store.schedule(name)
    return _spec(text, nxt)


def set_enabled(backend: ScheduleHost, name: str, enabled: bool, now: float) -> ScheduleSpec:
    spec = get(backend, name)
    data = spec.to_json()
    data["enabled"] = enabled
    data.pop("next_fire", None)
    upcoming = next_fire(spec.expression, spec.timezone,
                         dt.datetime.fromtimestamp(now, dt.UTC)).timestamp()
    backend.store.update_schedule(name, spec_json=json.dumps(data, sort_keys=True),
                                  next_fire=upcoming)
    return get(backend, name)


def fire(backend: ScheduleHost, name: str, fired_at: float) -> str | None:
    """Start one run of ``name`` now; None when skipped (the previous run still runs)."""
    spec = get(backend, name)
    previous = next((r for r in backend.schedule_runs(name) if r["job_id"]), None)
    if previous is not None and previous["state"] == JobState.RUNNING and \
            not backend.job_info(previous["job_id"]).orphaned:
        backend.store.add_schedule_run(name, fired_at, None, "skipped")
        return None
    store = backend.store
    items = run_items(spec, store.schedule_object(name, "items.pkl"))
    reducer = store.schedule_object(name, "reducer.pkl")
    seed = run_seed(spec, fired_at)
    request = JobRequest(
        kind="scheduled", function=store.schedule_object(name, "function.pkl") or b"",
        function_name=spec.function,
        payloads=(serialization.dumps_call((item,), {}) for item in items),
        options=spec.options, seed=seed, reducer=reducer, reducer_name=spec.reducer)
    run = backend.start_job(request)
    store.add_schedule_run(name, fired_at, run.job_id, "started")
    return run.job_id


class ScheduleRunner:
    """Fires due schedules; ``serve()`` loops until stopped, ``tick()`` runs one pass."""

    def __init__(self, backend: ScheduleHost, clock: Callable[[], float] = time.time) -> None:
        self.backend = backend
        self.clock = clock
        self.stop = threading.Event()

    def tick(self, now: float | None = None) -> list[tuple[str, str | None]]:
        """Fire every enabled schedule due at ``now``; return (name, job id or None)."""
        now = self.clock() if now is None else now
        fired = []
        for spec in listing(self.backend):
            if not spec.enabled or spec.next_fire is None or spec.next_fire > now:
                continue
            fired.append((spec.name, fire(self.backend, spec.name, now)))
            upcoming = next_fire(spec.expression, spec.timezone,
                                 dt.datetime.fromtimestamp(now, dt.UTC))
            self.backend.store.update_schedule(spec.name, next_fire=upcoming.timestamp())
        return fired

    def serve(self, announce: Callable[[str], None] = print) -> None:
        while not self.stop.is_set():
            for name, job_id in self.tick():
                what = f"started job {job_id}" if job_id else \
                    "skipped (the previous run is still running)"
                announce(f"{name}: {what}")
            upcoming = [s.next_fire for s in listing(self.backend)
                        if s.enabled and s.next_fire is not None]
            wait = min(upcoming, default=self.clock() + 60) - self.clock()
            self.stop.wait(min(max(wait, 0.05), 30.0))  # re-read schedules at least twice a minute
