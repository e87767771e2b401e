"""The local backend: worker processes on this machine, results in an embedded store."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterable
from concurrent.futures import CancelledError
from typing import Any

from ...collector import LIVE_RUNS, JobRun
from ...errors import ConfigurationError, ExecutorClosed, InvalidArgument, JobStillRunning
from ...future import Future
from ...ids import new_job_id
from ...manifest import PAYLOAD_OBJECT, payload_object, plan_chunks, plan_job, write_payload
from ...options import TaskOptions
from ...protocol import (
    CANCELLED,
    SUCCEEDED,
    Chunk,
    JobSpec,
    ResultRecord,
    TaskRef,
    now,
    retry_plan,
)
from ...schedules import ScheduleRequest, ScheduleSpec
from ...states import JobState
from ..base import Backend, JobInfo, JobRequest
from ..batching import SubmitBatches
from . import scheduler
from .dispatch import Dispatch
from .pool import DEFAULT_STALL_SECONDS, Supervisor
from .store import LocalStore, Owner

#: How long cancelling another process's job waits for that process to apply it.
CANCEL_WAIT_SECONDS = 10.0


class LocalBackend(Backend):
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
        #: Open (streaming) jobs: the next payload segment and chunk number of each.
        self._segments: dict[str, tuple[int, int]] = {}

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

    def _write_payload(self, job_id: str, name: str, payloads: Iterable[bytes],
                       seeds: Iterable[int] | None, job_seed: int, first: int = 0
                       ) -> list[TaskRef]:
        with (self.store.writing_file(self.store.job_dir(job_id) / name),
              self.store.open_payload(job_id, name) as handle):
            refs = write_payload(handle, payloads, job_seed, seeds, first, name)
            handle.flush()
            os.fsync(handle.fileno())
        return refs

    def _write_job(self, job_id: str, kind: str, function: bytes, function_name: str,
                   payloads: Iterable[bytes], seeds: Iterable[int] | None, options: TaskOptions,
                   job_seed: int, reducer: bytes | None = None,
                   reducer_name: str | None = None) -> tuple[JobSpec, list[Chunk]]:
        """Upload one job: function once, all arguments into one payload object, manifest."""
        self.store.write_object(job_id, "function.pkl", function)
        if reducer is not None:
            self.store.write_object(job_id, "reducer.pkl", reducer)
        refs = self._write_payload(job_id, PAYLOAD_OBJECT, payloads, seeds, job_seed)
        spec, manifest = plan_job(job_id, kind, function_name, refs, options, job_seed,
                                  reducer_name, has_reducer=reducer is not None)
        self.store.create_job(spec, manifest, Owner.me())
        return spec, manifest

    def start_job(self, request: JobRequest) -> JobRun:
        self._check_open()
        job_id = new_job_id()
        try:
            spec, manifest = self._write_job(
                job_id, request.kind, request.function, request.function_name,
                request.payloads, None, request.options, request.seed, request.reducer,
                request.reducer_name,
            )
        except BaseException:
            # Nothing was recorded (the job row is written last): leave no files behind.
            self.store.remove_job_files(job_id)
            raise
        futures = [Future(job_id, i, self) for i in range(spec.n_tasks)]
        reduce_future = Future(job_id, -1, self) if request.reducer is not None else None
        if request.progress is not None:
            request.progress.reset(total=request.expected_tasks if request.streaming
                                   else spec.n_tasks)
        run = JobRun(spec, futures, self.store.load_value, reduce_future, request.progress,
                     streaming=request.streaming)
        if request.streaming:
            self._segments[job_id] = (1, len(manifest))
        self._start(run, manifest)
        return run

    def extend_job(self, run: JobRun, payloads: list[bytes]) -> list[Future]:
        """Append one segment: its own payload object and manifest row, then dispatch it.

        The segment is durable (payload fsynced, manifest and task count committed in one
        transaction) before any of its tasks is dispatched, as a job's first tasks are.
        """
        job_id = run.job_id
        self._check_open()
        if run.cancelled:
            raise CancelledError(f"job {job_id} was cancelled; the rest of the map's input "
                                 "is not submitted")
        if run.sealed or job_id not in self._segments:
            raise RuntimeError(f"job {job_id} takes no more tasks: its map was closed")
        if not payloads:
            return []
        segment, first_chunk = self._segments[job_id]
        spec = run.spec
        refs = self._write_payload(job_id, payload_object(segment), payloads, None, spec.seed,
                                   first=spec.n_tasks)
        chunks = plan_chunks(job_id, refs, spec.options, first_chunk)
        spec = dataclasses.replace(spec, n_tasks=spec.n_tasks + len(refs))
        self.store.append_tasks(spec, segment, chunks)
        self._segments[job_id] = (segment + 1, first_chunk + len(chunks))
        run.spec = spec
        futures = [Future(job_id, ref.index, self) for ref in refs]
        run.add(futures)
        self._pool().post("run", run, [Dispatch(run, chunk) for chunk in chunks])
        return futures

    def seal_job(self, run: JobRun) -> None:
        self._segments.pop(run.job_id, None)
        run.seal()
        supervisor = self._supervisor
        if supervisor is not None and supervisor.alive:
            supervisor.post("seal", run)

    def _start(self, run: JobRun, manifest: list[Chunk]) -> None:
        LIVE_RUNS[run.job_id] = run
        self._pool().post("run", run, [Dispatch(run, chunk) for chunk in manifest])

    def submit(self, fn_key: object, function: bytes, function_name: str, payload: bytes,
               options: TaskOptions, seed: int) -> Future:
        self._check_open()
        future, opened = self._batches.add(fn_key, function, function_name, payload, options,
                                           seed)
        if opened:
            self._pool().wake()
        return future

    def _submit_deadline(self) -> float | None:
        return self._batches.deadline()

    def _pull_submits(self, now_wanted: bool) -> list[Dispatch]:
        """Called by the supervisor: turn waiting ``submit`` calls into jobs."""
        dispatches: list[Dispatch] = []
        for batch in self._batches.take(now_wanted):
            try:
                spec, manifest = self._write_job(
                    batch.job_id, "submit", batch.function, batch.function_name,
                    batch.payloads, batch.seeds, batch.options, batch.options.seed or 0,
                )
            except Exception as exc:  # e.g. a full disk: these futures fail, others go on
                self.store.remove_job_files(batch.job_id)
                for future in batch.futures:
                    if future.set_running_or_notify_cancel():
                        future.set_exception(exc)
                continue
            run = JobRun(spec, batch.futures, self.store.load_value)
            LIVE_RUNS[run.job_id] = run
            dispatches.extend(Dispatch(run, chunk) for chunk in manifest)
        return dispatches

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorClosed("cannot schedule new futures after shutdown")

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True
            supervisor = self._supervisor
        if supervisor is None:
            return
        if supervisor.alive:
            supervisor.post("shutdown", cancel_futures)
        if wait:
            supervisor.join()

    # -- jobs ------------------------------------------------------------------------------

    def _info(self, job_id: str) -> JobInfo:
        row = self.store.job(job_id)
        orphaned = (
            row.state == JobState.RUNNING and job_id not in LIVE_RUNS
            and (row.owner is None or not row.owner.alive())
        )
        owner = f"pid {row.owner.pid} on {row.owner.host}" if row.owner else None
        return JobInfo(job_id, row.spec, row.state, row.summary, owner, orphaned)

    def job_info(self, job_id: str) -> JobInfo:
        return self._info(job_id)

    def list_jobs(self, limit: int = 50) -> list[JobInfo]:
        return [self._info(row.job_id) for row in self.store.jobs(limit)]




    def counts(self, job_id: str) -> dict[str, int]:
        self._info(job_id)
        self.store.prune_dead_workers()
        return self.store.counts(job_id)


    def cancel_job(self, job_id: str) -> None:
        info = self._info(job_id)
        if info.state != JobState.RUNNING:
            return
        run = LIVE_RUNS.get(job_id)
        if run is not None and self._supervisor is not None and self._supervisor.alive:
            self._supervisor.post("cancel", job_id)
            run.stored.wait(60)
            return
        self.store.set_job_state(job_id, JobState.CANCELLED, only_if=JobState.RUNNING)
        if not info.orphaned:
            # Its owner (another process) applies the cancel within CANCEL_POLL_SECONDS;
            # wait for that, boundedly, so the caller sees the cancelled tasks.
            deadline = time.monotonic() + CANCEL_WAIT_SECONDS
            while time.monotonic() < deadline:
                if len(self.store.results(job_id)) >= info.spec.n_tasks:
                    return
                time.sleep(0.05)
        # Nobody drives this job (or its owner did not answer): record the cancellation of
        # its unfinished tasks here; the conditional put keeps any result that lands first.
        done = {r.task_index for r in self.store.results(job_id)}
        stamp = now()
        self.store.put_results([
            ResultRecord(job_id, i, CANCELLED, 1, "", stamp, stamp)
            for i in range(info.spec.n_tasks) if i not in done
        ])
        self.store.set_job_state(job_id, JobState.CANCELLED, summary=self.store.summarize(job_id))

    def retry_job(self, job_id: str, progress: Any = None) -> dict[str, int]:
        """Re-run the tasks of ``job_id`` that did not succeed, wait, return the counts."""
        info = self._info(job_id)
        if job_id in LIVE_RUNS and not LIVE_RUNS[job_id].done.is_set():
            raise JobStillRunning(f"job {job_id} is still running in this process; wait for it")
        if info.state == JobState.RUNNING and not info.orphaned:
            raise JobStillRunning(
                f"job {job_id} is still running ({info.owner}); wait for it to finish or "
                f"cancel it (`fanout cancel {job_id}`) before retrying"
            )
        self._check_open()
        chunks = retry_plan(self.store.manifest(job_id), self.store.results(job_id))
        spec = info.spec
        reduce_record = self.store.result(job_id, -1) if spec.has_reducer else None
        needs_reduce = spec.has_reducer and (
            reduce_record is None or reduce_record.status != SUCCEEDED
        )
        if not chunks and not needs_reduce:
            return self.store.counts(job_id)
        self.store.set_job_state(job_id, JobState.RUNNING, owner=Owner.me())
        futures = [Future(job_id, t.index, self) for c in chunks for t in c.tasks]
        reduce_future = Future(job_id, -1, self) if needs_reduce else None
        if progress is not None:
            progress.reset(total=len(futures))
        run = JobRun(spec, futures, self.store.load_value, reduce_future, progress)
        if reduce_record is not None:
            run.reduce_attempt = reduce_record.attempt + 1
        self._start(run, chunks)
        run.stored.wait()
        return self.store.counts(job_id)

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
        return scheduler.runs(self, name)

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
