"""The local backend: worker processes on this machine, results in an embedded store.

The job lifecycle is :class:`~fanout.backends.lifecycle.JobLifecycle`'s; this class supplies
what is local about it: jobs are files and rows in the store under ``FANOUT_HOME``, chunks
run on the :class:`~.pool.Supervisor`'s worker processes, and a job is driven by the client
process that started it (its ``Owner``).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Collection, Iterable
from typing import Any

from ...collector import LIVE_RUNS, JobRun
from ...errors import ConfigurationError, InvalidArgument
from ...future import Future
from ...ids import new_job_id
from ...job_record import JobRecord, Owner
from ...manifest import PAYLOAD_OBJECT, plan_job, write_payload
from ...options import TaskOptions
from ...protocol import Chunk, JobSpec, TaskRef
from ...schedules import ScheduleRequest, ScheduleSpec
from ...states import JobState
from ..batching import SubmitBatches
from ..lifecycle import JobLifecycle
from . import scheduler
from .dispatch import Dispatch
from .messages import CancelJob, SealRun, Shutdown, StartRun
from .pool import DEFAULT_STALL_SECONDS, Supervisor
from .store import LocalStore

#: How long cancelling another process's job waits for that process to apply it.
CANCEL_WAIT_SECONDS = 10.0


class LocalBackend(JobLifecycle[LocalStore]):
    """Options: ``max_workers`` (default: CPU count), ``home`` (default: ``FANOUT_HOME``),
    ``stall_seconds`` (default: ``FANOUT_STALL_SECONDS`` or 10): how long a worker holding a
    task may go without a heartbeat before it is killed and its task retried.
    """

    name = "local"
    store: LocalStore
    supports_streaming = True

    def __init__(self, max_workers: int | None = None, home: str | None = None,
                 stall_seconds: float | None = None,
                 max_tasks_per_child: int | None = None) -> None:
        if max_workers is None:
            max_workers = os.cpu_count() or 1
        if isinstance(max_workers, bool) or not isinstance(max_workers, int) or max_workers <= 0:
            raise InvalidArgument(
                f"max_workers must be an integer greater than 0, got {max_workers!r}")
        self.max_workers = max_workers
        self.stall_seconds = _stall_seconds(stall_seconds)
        self.max_tasks_per_child = max_tasks_per_child
        self.store = LocalStore(home)
        self._lock = threading.Lock()
        self._batches = SubmitBatches(new_job_id, self)
        self._supervisor: Supervisor | None = None
        self._closed = False
        self._streams = {}

    # -- running work ----------------------------------------------------------------------

    def _pool(self) -> Supervisor:
        with self._lock:
            # A supervisor that ended (it crashed; its futures were failed) is replaced, so
            # the next submit runs instead of waiting on a thread that is gone.
            if self._supervisor is None or not self._supervisor.alive:
                self._supervisor = Supervisor(
                    self.store, self.max_workers, self._pull_submits, self._submit_deadline,
                    self.stall_seconds,
                )
                self._supervisor.max_tasks_per_child = self.max_tasks_per_child
            return self._supervisor

    def worker_pids(self) -> list[int]:
        return [] if self._supervisor is None else self._supervisor.worker_pids()

    def _write_job(self, job_id: str, kind: str, function: bytes, function_name: str,
                   payloads: Iterable[bytes], seeds: Iterable[int] | None, options: TaskOptions,
                   job_seed: int, reducer: bytes | None = None,
                   reducer_name: str | None = None, alone: Collection[int] = ()
                   ) -> tuple[JobSpec, list[Chunk]]:
        """Upload one job: function once, all arguments into one payload object, manifest.

        ``alone``: the tasks that take futures (each gets a chunk of its own); it may fill
        in while ``payloads`` is consumed, which happens before the manifest is planned.
        """
        self.store.write_object(job_id, "function.pkl", function)
        if reducer is not None:
            self.store.write_object(job_id, "reducer.pkl", reducer)
        refs = self._write_payload(job_id, PAYLOAD_OBJECT, payloads, seeds, job_seed)
        spec, manifest = plan_job(job_id, kind, function_name, refs, options, job_seed,
                                  reducer_name, has_reducer=reducer is not None, alone=alone)
        self.store.create_job(spec, manifest, Owner.me())
        return spec, manifest

    def _write_payload(self, job_id: str, name: str, payloads: Iterable[bytes],
                       seeds: Iterable[int] | None, job_seed: int, first: int = 0
                       ) -> list[TaskRef]:
        with (self.store.writing_file(self.store.job_dir(job_id) / name),
              self.store.open_payload(job_id, name) as handle):
            refs = write_payload(handle, payloads, job_seed, seeds, first, name)
            handle.flush()
            os.fsync(handle.fileno())
        return refs

    def _discard_job(self, job_id: str) -> None:
        self.store.remove_job_files(job_id)

    def _launch(self, run: JobRun, chunks: list[Chunk], retry: bool) -> None:
        if retry:  # this process drives the job from now on
            self.store.set_job_state(run.job_id, JobState.RUNNING, owner=Owner.me())
        self._start(run, chunks)

    def _write_segment(self, job_id: str, name: str, payloads: list[bytes], first: int,
                       job_seed: int) -> list[TaskRef]:
        return self._write_payload(job_id, name, payloads, None, job_seed, first)

    def _launch_segment(self, run: JobRun, chunks: list[Chunk]) -> None:
        self._pool().post(StartRun(run, tuple(Dispatch(run, chunk) for chunk in chunks)))

    def _sealed(self, run: JobRun) -> None:
        supervisor = self._supervisor
        if supervisor is not None and supervisor.alive:
            supervisor.post(SealRun(run))

    def _start(self, run: JobRun, manifest: list[Chunk]) -> None:
        LIVE_RUNS[run.job_id] = run
        self._pool().post(StartRun(run, tuple(Dispatch(run, chunk) for chunk in manifest)))

    def submit(self, fn_key: object, function: bytes, function_name: str, payload: bytes,
               options: TaskOptions, seed: int, inputs: tuple[Future, ...] = ()) -> Future:
        self._check_open()
        future, opened = self._batches.add(fn_key, function, function_name, payload, options,
                                           seed, inputs)
        if opened:
            self._pool().wake()
        return future

    def _submit_deadline(self) -> float | None:
        return self._batches.deadline()

    def _pull_submits(self, now_wanted: bool) -> list[Dispatch]:
        """Called by the supervisor: turn waiting ``submit`` calls into jobs."""
        dispatches: list[Dispatch] = []
        for run, manifest in self._submitted_jobs(now_wanted):
            LIVE_RUNS[run.job_id] = run
            dispatches.extend(Dispatch(run, chunk) for chunk in manifest)
        return dispatches

    def store_location(self) -> tuple[str, ...]:
        return ("local", os.path.realpath(self.store.home))

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            supervisor = self._supervisor
        if supervisor is None:
            return
        if supervisor.alive:
            supervisor.post(Shutdown(cancel_futures))
        if wait:
            supervisor.join()

    # -- jobs: what is local about their lifecycle -----------------------------------------

    def _orphaned(self, job: JobRecord) -> bool:
        return job.job_id not in LIVE_RUNS and (job.owner is None or not job.owner.alive())

    def _describe_owner(self, job: JobRecord) -> str | None:
        return job.owner.describe() if job.owner else None

    def _running_tasks(self, job: JobRecord) -> int | None:
        if job.state != JobState.RUNNING:
            return 0
        self.store.prune_dead_workers()
        return self.store.running_tasks(job.job_id)

    def _still_running(self, job: JobRecord) -> str | None:
        run = LIVE_RUNS.get(job.job_id)
        if run is not None and not run.done.is_set():
            return f"job {job.job_id} is still running in this process; wait for it"
        if job.state == JobState.RUNNING and not self._orphaned(job):
            return (f"job {job.job_id} is still running ({self._describe_owner(job)}); wait "
                    f"for it to finish or cancel it (`fanout cancel {job.job_id}`) before "
                    "retrying")
        return None

    def _stop(self, job: JobRecord) -> bool:
        run = LIVE_RUNS.get(job.job_id)
        if run is not None and run.driver is not None and run.driver is not self:
            stopped: bool = run.driver._stop(job)  # run inline by this process's calls
            return stopped
        if run is not None and self._supervisor is not None and self._supervisor.alive:
            self._supervisor.post(CancelJob(job.job_id))  # it records the cancellation
            run.stored.wait(60)
            return True
        self.store.set_job_state(job.job_id, JobState.CANCELLED, only_if=JobState.RUNNING)
        if self._orphaned(job):
            return False
        # Its owner (another executor) applies the cancel within CANCEL_POLL_SECONDS; wait
        # for that, boundedly, until the job's record has its summary (the owner writes it
        # last), so the caller sees the cancelled tasks and the job's end.
        deadline = time.monotonic() + CANCEL_WAIT_SECONDS
        while time.monotonic() < deadline:
            if self.store.job(job.job_id).summary is not None:
                return True
            time.sleep(0.05)
        return False  # its owner did not answer: record the cancellation here

    # -- schedules -------------------------------------------------------------------------

    def put_schedule(self, request: ScheduleRequest) -> ScheduleSpec:
        return scheduler.put(self, request, time.time())

    def list_schedules(self) -> list[ScheduleSpec]:
        return scheduler.listing(self)

    def get_schedule(self, name: str) -> ScheduleSpec:
        return scheduler.get(self, name)

    def set_schedule_enabled(self, name: str, enabled: bool) -> ScheduleSpec:
        return scheduler.set_enabled(self, name, enabled, time.time())

    def delete_schedule(self, name: str) -> None:
        self.store.delete_schedule(name)

    def schedule_runs(self, name: str) -> list[dict[str, Any]]:
        self.store.schedule(name)  # ScheduleNotFound for an unknown schedule
        return self._schedule_run_states(name)

    def __repr__(self) -> str:
        return f"LocalBackend(max_workers={self.max_workers}, home={str(self.store.home)!r})"


def _stall_seconds(given: float | None) -> float:
    """The stall interval: shorter than the store's lock wait, so a frozen lock holder is
    killed before any other process gives up waiting for the lock."""
    source = "stall_seconds"
    value: object = given
    if given is None:
        text = os.environ.get("FANOUT_STALL_SECONDS")
        if not text:
            return DEFAULT_STALL_SECONDS
        source = "FANOUT_STALL_SECONDS"
        try:
            value = float(text)
        except ValueError:
            value = text
    limit = LocalStore.busy_timeout / 2
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not 0.5 <= value <= limit):
        raise ConfigurationError(
            f"{source} must be a number of seconds from 0.5 to {limit:g}, got {value!r}")
    return float(value)
