"""The job lifecycle, written once: start, submit batches, follow, count, retry, cancel, end.

Like Powertools' idempotency layer (``BasePersistenceLayer`` holds the algorithm, a
storage layer implements a few primitives), :class:`JobLifecycle` holds every step of a
job's life over a :class:`~.job_store.JobStore`, and a backend supplies only what differs
between running work here and running it on AWS:

=====================  =============================================================
``_write_job``         upload the function, the payload object, the manifest, the record
``_discard_job``       remove what a failed ``_write_job`` left behind
``_launch``            start the job's chunks (a first run, or a retry's chunks)
``_stop``              stop a running job's work (True: its driver records the cancel)
``_still_running``     why a job cannot be retried now, or None
``_orphaned``          a running job whose driver is gone
``_running_tasks``     tasks running now, if the backend can see them (else None)
``_describe_owner``    who drives a job, for messages
``_write_segment``     upload the payload object of tasks appended to an open job
``_launch_segment``    start an appended segment's chunks
``_sealed``            a streaming job takes no more tasks: let it end
=====================  =============================================================

A streaming ``map`` (:mod:`fanout.streaming`) appends its input to its one job segment by
segment through :meth:`JobLifecycle.extend_job`, the same way on every backend: the
segment's payload object is written, its chunks are planned with the job's options and
numbered after the job's, and ``JobStore.append_tasks`` commits them with the job's new
task count (only while the job is still running), before any of them is started.

Every record a job's tasks need when no worker writes one (a cancellation) comes from
``fanout.records``; every count and summary from ``fanout.summary``.
"""

from __future__ import annotations

import dataclasses
from abc import abstractmethod
from collections.abc import Collection, Iterable
from concurrent.futures import CancelledError
from typing import Any

from .. import packing, records
from ..collector import JobRun
from ..errors import ExecutorClosed, JobNotFound, JobStillRunning
from ..future import Future
from ..ids import new_job_id
from ..job_record import JobRecord
from ..manifest import payload_object, plan_chunks
from ..options import TaskOptions
from ..protocol import REDUCE_INDEX, Chunk, JobSpec, TaskRef, retry_plan
from ..states import JobState, TaskState
from ..summary import job_summary, task_counts
from .base import Backend, JobInfo, JobRequest, StoreT
from .batching import SubmitBatches


class JobLifecycle(Backend[StoreT]):
    """A backend whose jobs live in a :class:`JobStore`; see the module docstring."""

    _batches: SubmitBatches
    _closed: bool = False
    #: Every backend over a JobStore can append tasks to a running job.
    supports_streaming = True
    #: Open (streaming) jobs this process feeds: the run, its next segment number and the
    #: number of its next chunk. A backend's ``__init__`` makes it empty.
    _streams: dict[str, tuple[JobRun, int, int]]

    # -- what a backend supplies -------------------------------------------------------------

    @abstractmethod
    def _write_job(self, job_id: str, kind: str, function: bytes, function_name: str,
                   payloads: Iterable[bytes], seeds: Iterable[int] | None, options: TaskOptions,
                   job_seed: int, reducer: bytes | None = None,
                   reducer_name: str | None = None, alone: Collection[int] = ()
                   ) -> tuple[JobSpec, list[Chunk]]:
        """Upload one job (function once, all arguments in one payload object, manifest)
        and write its record last, so a job that has a record can run. ``alone``: the
        tasks that take futures, each planned as a chunk of its own (it may fill in while
        ``payloads`` is consumed, which happens before the manifest is planned)."""

    def _discard_job(self, job_id: str) -> None:
        """Remove what a ``_write_job`` that failed left behind (nothing by default)."""

    def _before_upload(self) -> None:
        """Refuse early, before anything is written (the aws backend checks its stack)."""

    @abstractmethod
    def _launch(self, run: JobRun, chunks: list[Chunk], retry: bool) -> None:
        """Start running ``chunks`` of ``run``'s job and follow it until ``run`` settles."""

    @abstractmethod
    def _stop(self, job: JobRecord) -> bool:
        """Stop a running job's work. True when whoever drives it records the cancellation
        (the tasks' CANCELLED records and the job's end); False leaves that to the caller."""

    @abstractmethod
    def _still_running(self, job: JobRecord) -> str | None:
        """Why ``job`` cannot be retried now (it is still running somewhere), or None."""

    @abstractmethod
    def _orphaned(self, job: JobRecord) -> bool:
        """True for a running job nobody drives any more (its client or execution died)."""

    def _running_tasks(self, job: JobRecord) -> int | None:
        """How many of its tasks run now, when the backend sees them; None: count the
        records still marked running."""
        return None

    @abstractmethod
    def _describe_owner(self, job: JobRecord) -> str | None: ...

    @abstractmethod
    def _write_segment(self, job_id: str, name: str, payloads: list[bytes], first: int,
                       job_seed: int) -> list[TaskRef]:
        """Write an appended segment's arguments as payload object ``name``; task indexes
        (and so seeds) start at ``first``. Durable before it returns."""

    @abstractmethod
    def _launch_segment(self, run: JobRun, chunks: list[Chunk]) -> None:
        """Start the chunks of a segment just appended to ``run``'s job."""

    def _sealed(self, run: JobRun) -> None:
        """``run`` takes no more tasks (``run.sealed`` is set): let its job end once its
        tasks are settled. Nothing by default."""

    # -- starting --------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorClosed("cannot schedule new futures after shutdown")

    def start_job(self, request: JobRequest) -> JobRun:
        self._check_open()
        self._before_upload()
        job_id = new_job_id()
        inputs = request.inputs.by_task if request.inputs is not None else {}
        try:
            spec, manifest = self._write_job(
                job_id, request.kind, request.function, request.function_name,
                request.payloads, None, request.options, request.seed, request.reducer,
                request.reducer_name, inputs)
        except BaseException:
            self._discard_job(job_id)  # nothing was recorded: leave nothing behind
            raise
        futures = [Future(job_id, i, self) for i in range(spec.n_tasks)]
        reduce_future = Future(job_id, REDUCE_INDEX, self) if request.reducer is not None \
            else None
        if request.progress is not None:
            request.progress.reset(total=request.expected_tasks if request.streaming
                                   else spec.n_tasks)
        run = JobRun(spec, futures, self.store.load_value, reduce_future, request.progress,
                     streaming=request.streaming)
        run.inputs = inputs  # a task that takes futures starts once they are done
        if run.streaming:  # segments follow: their payload objects and chunks number on
            self._streams[job_id] = (run, 1, len(manifest))
        self._launch(run, manifest, retry=False)
        return run

    # -- streaming: segments appended to a running job ---------------------------------------

    def extend_job(self, run: JobRun, payloads: list[bytes]) -> list[Future]:
        """Append one segment to ``run``'s open job and start it; its tasks' futures.

        The segment is durable (payload object written, chunks and task count committed
        by ``JobStore.append_tasks``) before any of its tasks starts, as a job's first tasks
        are. A job that is no longer running (cancelled, from here or elsewhere) takes no
        more: ``CancelledError``, and the map's caller sees its cancellation.
        """
        job_id = run.job_id
        self._check_open()
        if run.cancelled:
            raise CancelledError(f"job {job_id} was cancelled; the rest of the map's input "
                                 "is not submitted")
        stream = self._streams.get(job_id)
        if run.sealed or stream is None:
            raise RuntimeError(f"job {job_id} takes no more tasks: its map was closed")
        if not payloads:
            return []
        _, segment, first_chunk = stream
        spec = run.spec
        refs = self._write_segment(job_id, payload_object(segment), payloads, spec.n_tasks,
                                   spec.seed)
        chunks = plan_chunks(job_id, refs, spec.options, first_chunk, alone=run.inputs)
        spec = dataclasses.replace(spec, n_tasks=spec.n_tasks + len(refs))
        if not self.store.append_tasks(spec, segment, chunks):
            raise CancelledError(
                f"job {job_id} is no longer running (it was cancelled, e.g. by `fanout "
                "cancel`); the rest of the map's input is not submitted")
        self._streams[job_id] = (run, segment + 1, first_chunk + len(chunks))
        run.spec = spec
        futures = [Future(job_id, ref.index, self) for ref in refs]
        run.add(futures)
        try:
            self._launch_segment(run, chunks)
        except Exception as exc:  # e.g. AWS unreachable: these tasks will not start
            for future in futures:
                run.settle_error(future.task_index, exc)
            raise
        return futures

    def seal_job(self, run: JobRun) -> None:
        """No more tasks for ``run``: its job ends once the ones it has are settled."""
        self._streams.pop(run.job_id, None)
        run.seal()
        self._sealed(run)

    def _seal_streams(self) -> None:
        """Shutting down: every open stream of this process ends with the tasks it has."""
        for run, _, _ in list(self._streams.values()):
            self.seal_job(run)

    def _submitted_jobs(self, everything: bool) -> list[tuple[JobRun, list[Chunk]]]:
        """Turn waiting ``submit`` calls into written jobs (``everything``: even a batch
        still lingering for more calls). A batch that cannot be written fails its own
        futures with the reason; the others go on."""
        written: list[tuple[JobRun, list[Chunk]]] = []
        for batch in self._batches.take(everything):
            try:
                spec, manifest = self._write_job(
                    batch.job_id, "submit", batch.function, batch.function_name,
                    batch.payloads, batch.seeds, batch.options, batch.options.seed or 0,
                    alone=batch.inputs)
            except Exception as exc:  # e.g. a full disk, an S3 outage
                self._discard_job(batch.job_id)
                for future in batch.futures:
                    if future.set_running_or_notify_cancel():
                        future.set_exception(exc)
                continue
            run = JobRun(spec, batch.futures, self.store.load_value)
            run.inputs = batch.inputs
            written.append((run, manifest))
        return written

    # -- reading jobs ----------------------------------------------------------------------

    def _info(self, job: JobRecord) -> JobInfo:
        orphaned = job.state == JobState.RUNNING and self._orphaned(job)
        return JobInfo(job.job_id, job.spec, job.state, job.summary, self._describe_owner(job),
                       orphaned)

    def job_info(self, job_id: str) -> JobInfo:
        return self._info(self.store.job(job_id))

    def list_jobs(self, limit: int = 50) -> list[JobInfo]:
        return [self._info(job) for job in self.store.jobs(limit)]

    def counts(self, job_id: str) -> dict[str, int]:
        job = self.store.job(job_id)
        pack = job.spec.options.pack
        if pack:  # counted in calls, from the chunks' records (see fanout.packing)
            running = self._running_tasks(job)
            records = self.store.results(job_id)
            if running is None:
                running = sum(1 for r in records if r.status == TaskState.RUNNING)
            return packing.element_counts(records, packing.element_count(self.store, job.spec),
                                          pack, running)
        return task_counts(self.store.status_counts(job_id), job.n_tasks,
                           self._running_tasks(job))

    def summarize(self, job_id: str) -> dict[str, Any]:
        return job_summary(self.store, job_id, self.store.job(job_id).spec.options.pack)

    # -- ending and running again ------------------------------------------------------------

    def cancel_job(self, job_id: str) -> None:
        job = self.store.job(job_id)
        if job.state != JobState.RUNNING or self._stop(job):
            return
        # Nobody else records this cancellation: record its unfinished tasks here; the
        # conditional put keeps any result that lands first. Read the job again: a
        # streaming map may have appended tasks until the job stopped running.
        job = self.store.job(job_id)
        done = {r.task_index for r in records.final(self.store.results(job_id))}
        self.store.put_results(records.cancelled(
            job_id, (i for i in range(job.n_tasks) if i not in done)))
        self.store.set_job_state(job_id, JobState.CANCELLED, summary=self.summarize(job_id))

    def retry_job(self, job_id: str, progress: Any = None) -> dict[str, int]:
        """Re-run the tasks of ``job_id`` that did not succeed, wait, return the counts."""
        job = self.store.job(job_id)
        busy = self._still_running(job)
        if busy is not None:
            raise JobStillRunning(busy)
        self._check_open()
        chunks = retry_plan(self.store.manifest(job_id), self.store.results(job_id))
        spec = job.spec
        reduce_record = self.store.result(job_id, REDUCE_INDEX) if spec.has_reducer else None
        needs_reduce = spec.has_reducer and (
            reduce_record is None or reduce_record.status != TaskState.SUCCEEDED)
        if not chunks and not needs_reduce:
            if job.state == JobState.RUNNING:
                # Orphaned with every task recorded (e.g. a streaming map's client died
                # after its last segment ran, so nothing sealed the job): end it here.
                self.store.set_job_state(job_id, JobState.FINISHED,
                                         summary=self.summarize(job_id))
            return self.counts(job_id)
        futures = [Future(job_id, t.index, self) for c in chunks for t in c.tasks]
        reduce_future = Future(job_id, REDUCE_INDEX, self) if needs_reduce else None
        if progress is not None:
            progress.reset(total=len(futures))
        run = JobRun(spec, futures, self.store.load_value, reduce_future, progress)
        if reduce_record is not None:
            run.reduce_attempt = reduce_record.attempt + 1
        self._launch(run, chunks, retry=True)
        run.stored.wait()
        return self.counts(job_id)

    # -- schedules' runs -------------------------------------------------------------------

    def _schedule_run_states(self, name: str) -> list[dict[str, Any]]:
        """A schedule's runs, newest first, each with its job's state now ("missing" once
        the job's record expired; "skipped" when a run was not started)."""
        runs = []
        for fired_at, job_id, outcome in self.store.schedule_runs(name):
            state = outcome
            if job_id:
                try:
                    state = self.store.job(job_id).state
                except JobNotFound:  # its record expired
                    state = "missing"
            runs.append({"job_id": job_id, "fired_at": fired_at, "state": state})
        return runs
