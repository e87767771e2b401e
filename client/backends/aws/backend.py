"""The aws backend: a job is S3 objects, one Step Functions execution and DynamoDB records.

Submit writes few objects (function, one payload object addressed by byte ranges, the
manifest, the spec) and starts one execution; futures resolve from a poll of records
written since the previous poll (a sparse index on the finish time), so following a job
costs O(new results), not O(tasks). The client can go away at any point: the job runs on,
and ``Job.attach(job_id, backend="aws")`` picks it up from the table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from ... import records
from ...collector import LIVE_RUNS, JobRun
from ...dependencies import ready, record_cancelled
from ...errors import (
    InvalidArgument,
    WorkerLost,
)
from ...future import Future
from ...ids import new_job_id
from ...job_record import JobRecord
from ...options import TaskOptions
from ...protocol import (
    CANCELLED,
    REDUCE_INDEX,
    Chunk,
    JobSpec,
    ResultRecord,
    TaskRef,
    now,
)
from ...schedules import ScheduleRequest, ScheduleSpec
from ...states import JobState
from ..batching import SubmitBatches
from ..lifecycle import JobLifecycle
from .config import load_config
from .schedules import AwsSchedules
from .stack_check import StackCheck
from .store import AwsStore
from .upload import execution_input, lambda_chunks, put_manifests, upload_job, upload_payload

log = logging.getLogger("fanout.aws")
POLL_MIN_SECONDS = 0.2
POLL_MAX_SECONDS = 2.0
#: Polls between checks of the execution's status (catches a run that died without finalizing).
EXECUTION_CHECK_EVERY = 10
#: How long ``retry`` waits for an execution whose tasks are all recorded to finalize.
FINALIZE_WAIT_SECONDS = 300
#: How long polling may fail in a row before the futures are told (the jobs go on).
POLL_GIVE_UP_SECONDS = 600.0


@dataclass
class _Followed:
    run: JobRun
    execution_arn: str
    cursor: int = 0
    polls: int = 0
    #: Chunks whose tasks take futures not yet done; each wave of newly ready ones gets an
    #: execution of its own (see ``_release``).
    held: list[Chunk] = field(default_factory=list)
    waves: int = 0
    executions: list[str] = field(default_factory=list)
    #: A streaming run's tasks below this index are started (or held): an open task at or
    #: above it belongs to a segment whose execution is being started right now.
    launched: int = 0


class AwsBackend(JobLifecycle[AwsStore]):
    """Options: ``bucket``, ``table``, ``state_machine_arn``, ``region``, ``endpoint_url``
    (default: the environment, then ``fanout configure``'s file under ``FANOUT_HOME``)."""

    name = "aws"
    store: AwsStore

    def __init__(self, max_workers: int | None = None, home: str | None = None,
                 **options: Any) -> None:
        if max_workers is not None and max_workers <= 0:
            raise InvalidArgument(
                f"max_workers must be an integer greater than 0, got {max_workers!r}")
        self.config, self.python_runtime = load_config(options, home)
        self.store = AwsStore(self.config)
        kwargs = {"endpoint_url": self.config.endpoint_url} if self.config.endpoint_url else {}
        self.sfn = self.store.session.client("stepfunctions", **kwargs)
        self._lock = threading.Lock()
        self._batches = SubmitBatches(new_job_id, self, linger=0.05)
        self._followed: dict[str, _Followed] = {}
        self._wake = threading.Event()
        self._poller: threading.Thread | None = None
        self._stack_check = StackCheck(self.config, self.store, self.sfn, self.python_runtime)
        self.schedules = AwsSchedules(self.config, self.store, self.check_stack)
        self._closed = False
        self._cancelling = False  # shutdown(cancel_futures=True): held tasks never start
        self._streams = {}

    # -- checks before anything is uploaded (stack_check.py) ------------------------------

    def check_stack(self) -> None:
        """Fail with a specific message if the stack cannot take a job; upload nothing."""
        self._stack_check.check_stack()

    def check_worker_build(self) -> None:
        """Compare what the worker artifact was built with to this client; upload nothing."""
        self._stack_check.check_worker_build()

    # -- submitting ------------------------------------------------------------------------

    def _before_upload(self) -> None:
        self.check_stack()

    def _write_job(self, job_id: str, kind: str, function: bytes, function_name: str,
                   payloads: Iterable[bytes], seeds: Iterable[int] | None, options: TaskOptions,
                   job_seed: int, reducer: bytes | None = None,
                   reducer_name: str | None = None, alone: Collection[int] = ()
                   ) -> tuple[JobSpec, list[Chunk]]:
        return upload_job(self.store, job_id, kind, function, function_name, payloads, seeds,
                          options, job_seed, reducer, reducer_name, alone)

    def store_location(self) -> tuple[str, ...]:
        return ("aws", self.config.bucket, self.config.table, self.config.endpoint_url or "")

    def _launch(self, run: JobRun, chunks: list[Chunk], retry: bool) -> None:
        if not retry:  # upload_job wrote the manifests already
            if run.streaming:
                # Segments run as waves, and the job is open: no execution's finalize may
                # end it before the map seals it (``_sealed``), even with all tasks so far
                # recorded. Marked before the first execution starts.
                self.store.update_job(run.job_id, waves="1", open="1")
            self._begin(run, chunks)
            if run.streaming:
                self._launched(run, chunks)
            return
        job = self.store.job(run.job_id)
        if job.waves or job.open:
            # This execution covers every unfinished task, and a streamed job ends with
            # the tasks it has: the map that fed it is gone (``_still_running`` refused
            # while it was not), and the rest of its input was never submitted.
            self.store.update_job(run.job_id, waves="0", open="0")
        retry_number = int(time.time())
        put_manifests(self.store, run.job_id, f"manifest-retry-{retry_number}", chunks)
        self._execute(run, f"manifest-retry-{retry_number}", f"{run.job_id}-retry-{retry_number}",
                      lambda_chunks(chunks), retry=True)

    def _execute(self, run: JobRun, manifest: str, name: str, lambda_chunk_count: int,
                 retry: bool = False) -> None:
        """Start the job's execution over the tier manifests written as ``manifest``
        (``lambda_chunk_count`` of its chunks on Lambda: the ramp's target).

        Only a retry marks the job running again: a new job's record says so already, and
        a later wave or streamed segment must not revive a job cancelled meanwhile."""
        response = self.sfn.start_execution(
            stateMachineArn=self.config.state_machine_arn, name=name,
            input=json.dumps(execution_input(self.store, run.job_id, manifest,
                                             lambda_chunk_count)))
        arn = response["executionArn"]
        if retry:
            self.store.update_job(run.job_id, execution_arn=arn, state=JobState.RUNNING)
        else:
            self.store.update_job(run.job_id, execution_arn=arn)
        LIVE_RUNS[run.job_id] = run
        with self._lock:
            item = self._followed.get(run.job_id)
            if item is None or item.run is not run:
                item = self._followed[run.job_id] = _Followed(run, arn)
            item.execution_arn = arn
            item.executions.append(arn)
        self._ensure_poller()

    def _begin(self, run: JobRun, manifest: list[Chunk]) -> None:
        """Run a new job: in one execution, or in waves when some tasks wait for inputs.

        A task that takes futures starts when its own inputs are done, never at a barrier:
        the chunks whose inputs are done go now, the others are held here and each poll
        that finds more of them ready starts one more execution ("wave") over just those.
        The job record says ``waves``, so a wave's finalize step leaves the job running
        until every task has a result. Workers read the inputs from the table and bucket.
        """
        held = [c for c in manifest if not ready(self._chunk_inputs(run, c))]
        if not held:
            self._execute(run, "manifest", run.job_id, lambda_chunks(manifest))
            return
        self.store.update_job(run.job_id, waves="1")
        LIVE_RUNS[run.job_id] = run
        item = _Followed(run, "", held=held)
        with self._lock:
            self._followed[run.job_id] = item
            cancelling = self._cancelling
        self._start_wave(item, [c for c in manifest if c not in held])
        if cancelling:
            self._cancel_held(item)
        self._ensure_poller()

    @staticmethod
    def _chunk_inputs(run: JobRun, chunk: Chunk) -> list[Future]:
        return [f for t in chunk.tasks for f in run.inputs.get(t.index, ())]

    def _start_wave(self, item: _Followed, chunks: list[Chunk]) -> None:
        if not chunks:
            return
        run = item.run
        record_cancelled(self.store, [f for c in chunks for f in self._chunk_inputs(run, c)])
        # Named by its first chunk: a chunk starts in one wave only (a retry's execution is
        # named apart), so the name is unique for the job even if this client lost count.
        first = min(c.index for c in chunks)
        name = f"manifest-wave-{first}"
        put_manifests(self.store, run.job_id, name, chunks)
        self._execute(run, name, f"{run.job_id}-wave-{first}", lambda_chunks(chunks))
        item.waves += 1

    # -- streaming: each appended segment is one more wave of the job ----------------------

    def _write_segment(self, job_id: str, name: str, payloads: list[bytes], first: int,
                       job_seed: int) -> list[TaskRef]:
        return upload_payload(self.store, job_id, name, payloads, job_seed, None, first)

    def _launch_segment(self, run: JobRun, chunks: list[Chunk]) -> None:
        """Start a segment's chunks as one more wave; those whose inputs (futures) are not
        done yet are held, as a job's first chunks are (``_begin``)."""
        with self._lock:
            item = self._followed.get(run.job_id)
            if item is None or item.run is not run:
                item = self._followed[run.job_id] = _Followed(run, "")
            cancelling = self._cancelling
        held = [c for c in chunks if not ready(self._chunk_inputs(run, c))]
        item.held.extend(held)
        self._start_wave(item, [c for c in chunks if c not in held])
        self._launched(run, chunks)
        if cancelling:
            self._cancel_held(item)
        self._ensure_poller()

    def _launched(self, run: JobRun, chunks: list[Chunk]) -> None:
        end = max((t.index + 1 for c in chunks for t in c.tasks), default=0)
        with self._lock:
            item = self._followed.get(run.job_id)
            if item is not None:
                item.launched = max(item.launched, end)

    def _sealed(self, run: JobRun) -> None:
        """The map appends no more: the job's last finalize may end it. If every execution
        finalized before the seal, the poller finalizes the job once its tasks settle."""
        self.store.update_job(run.job_id, open="0")
        self._wake.set()

    def _release(self, item: _Followed) -> bool:
        """Start one wave over the held chunks whose inputs are now done; True if any."""
        if not item.held:
            return False
        if item.polls % EXECUTION_CHECK_EVERY == 0 and \
                self.store.job(item.run.job_id).state == JobState.CANCELLED:  # elsewhere
            item.held = []
            return False
        now_ready = [c for c in item.held if ready(self._chunk_inputs(item.run, c))]
        if not now_ready:
            return False
        item.held = [c for c in item.held if c not in now_ready]
        self._start_wave(item, now_ready)
        return True

    def submit(self, fn_key: object, function: bytes, function_name: str, payload: bytes,
               options: TaskOptions, seed: int, inputs: tuple[Future, ...] = ()) -> Future:
        self._check_open()
        self.check_stack()
        future, _ = self._batches.add(fn_key, function, function_name, payload, options, seed,
                                      inputs)
        self._ensure_poller()
        return future

    def _flush_submits(self, everything: bool) -> None:
        for run, manifest in self._submitted_jobs(everything):
            self._begin(run, manifest)

    # -- following jobs --------------------------------------------------------------------

    def _ensure_poller(self) -> None:
        with self._lock:
            if self._poller is None or not self._poller.is_alive():
                self._poller = threading.Thread(target=self._poll_loop, name="fanout-aws-poll",
                                                daemon=True)
                self._poller.start()
        self._wake.set()

    def _poll_loop(self) -> None:
        delay = POLL_MIN_SECONDS
        failing_since: float | None = None
        while True:
            try:
                self._flush_submits(self._closed)
                progressed = False
                with self._lock:
                    followed = list(self._followed.values())
                for item in followed:
                    progressed |= self._poll(item)
                for item in followed:  # after every poll: inputs just delivered count
                    progressed |= self._release(item)
                failing_since = None
            except Exception as exc:
                # A network blip must not fail healthy jobs: back off and keep trying; only
                # a sustained outage ends the wait (the jobs run on; attach later).
                clock = time.monotonic()
                failing_since = failing_since or clock
                if clock - failing_since > POLL_GIVE_UP_SECONDS:
                    self._fail_all(f"cannot reach AWS for {POLL_GIVE_UP_SECONDS:.0f} s "
                                   f"({exc!r}); the jobs go on, attach to them later")
                    return
                log.warning("polling AWS failed (%r); retrying", exc)
                self._wake.wait(POLL_MAX_SECONDS)
                self._wake.clear()
                continue
            with self._lock:
                idle = not self._followed and self._batches.deadline() is None
            if idle and self._closed:
                return
            delay = POLL_MIN_SECONDS if progressed else min(delay * 1.5, POLL_MAX_SECONDS)
            deadline = self._batches.deadline()
            if deadline is not None:
                delay = min(delay, max(0.0, deadline - time.monotonic()))
            self._wake.wait(delay if not idle else None)
            self._wake.clear()

    def _poll(self, item: _Followed) -> bool:
        run = item.run
        polled, item.cursor = self.store.results_since(run.job_id, item.cursor)
        delivered = records.final(polled)
        for record in delivered:
            run.deliver(record)
        item.polls += 1
        if run.reduce_future is not None and run.map_finished and not run.reduce_future.done():
            if run.first_failure is not None or run.cancelled:
                run.fail_reduce()
            else:
                reduced = self.store.result(run.job_id, REDUCE_INDEX)
                if reduced is not None:
                    run.deliver(reduced)
        settled = run.map_finished and (run.reduce_future is None or run.reduce_future.done())
        if item.held and not settled:
            return bool(records)  # tasks wait for inputs: no execution needs to be running
        open_tasks = run.open_tasks()
        if not run.sealed and not open_tasks:
            return bool(delivered)  # an open stream's tasks so far are done: its map appends
        if run.streaming and open_tasks and open_tasks[-1] >= item.launched:
            return bool(delivered)  # a segment was appended; its execution is starting
        if settled or item.polls % EXECUTION_CHECK_EVERY == 0:
            job = self.store.job(run.job_id)
            with self._lock:
                known = list(item.executions)
            ended = {a for a in known if not self._execution_running(a)}
            with self._lock:  # keep an execution started meanwhile (a streamed segment)
                item.executions = [a for a in item.executions if a not in ended]
            if job.state != JobState.RUNNING and settled:
                self._forget(run)
            elif job.state != JobState.RUNNING or not item.executions:
                if not settled:
                    self._abandon(run, f"its execution ended ({job.state})")
                elif run.streaming:
                    # Sealed after its last execution's finalize ran (and left it open):
                    # nobody else will end it.
                    from .handlers import finalize

                    finalize({"job_id": run.job_id, "map_error": None}, self.store)
                self._forget(run)
        return bool(delivered)

    def _wait_for_execution(self, arn: str, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        delay = POLL_MIN_SECONDS
        while self._execution_running(arn) and time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_SECONDS)

    def _execution_running(self, arn: str) -> bool:
        status = self.sfn.describe_execution(executionArn=arn)["status"]
        return bool(status == "RUNNING")

    def _abandon(self, run: JobRun, why: str) -> None:
        for record in records.final(self.store.results(run.job_id)):
            run.deliver(record)
        message = (f"job {run.job_id} ended without a result for this task: {why}. "
                   f"`fanout retry {run.job_id}` runs the unfinished tasks.")
        for index in run.open_tasks():
            future = run.future(index)
            if not future.done():
                future.set_exception(WorkerLost(message))
        if run.reduce_future is not None and not run.reduce_future.done():
            run.reduce_future.set_exception(WorkerLost(message))

    def _cancel_held(self, item: _Followed) -> None:
        """Record the held tasks as cancelled; finalize the job if no wave is left to."""
        from .handlers import finalize

        held, item.held = item.held, []
        stamp = now()
        for chunk in held:
            for task in chunk.tasks:
                if item.run.future(task.index).cancel():
                    item.run.future(task.index).set_running_or_notify_cancel()
                self.store.put_result(ResultRecord(item.run.job_id, task.index, CANCELLED, 1,
                                                   "", stamp, stamp))
        if not any(self._execution_running(a) for a in item.executions):
            finalize({"job_id": item.run.job_id, "map_error": None}, self.store)

    def _forget(self, run: JobRun) -> None:
        with self._lock:
            self._followed.pop(run.job_id, None)
        run.close()

    def _fail_all(self, why: str) -> None:
        with self._lock:
            followed, self._followed = list(self._followed.values()), {}
        for item in followed:
            self._abandon(item.run, why)
            item.run.close()

    def shutdown_at_exit(self) -> None:
        """Start the executions of pending ``submit`` calls; do not wait for remote jobs."""
        self._closed = True
        self._flush_submits(True)
        self._seal_streams()

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self._closed = True
        self._seal_streams()  # an open streaming map's job ends with the tasks it has
        if cancel_futures:
            for batch in self._batches.take(True):
                for future in batch.futures:
                    if future.cancel():
                        future.set_running_or_notify_cancel()
            with self._lock:
                self._cancelling = True
                waiting = [item for item in self._followed.values() if item.held]
            for item in waiting:
                self._cancel_held(item)
        self._wake.set()
        poller = self._poller
        if wait and poller is not None:
            poller.join()

    # -- jobs: what is AWS about their lifecycle -----------------------------------------

    def _job(self, job_id: str) -> JobRecord:
        return self.store.job(job_id)

    def _orphaned(self, job: JobRecord) -> bool:
        if job.job_id in self._followed or self._fed_elsewhere(job):
            return False
        return bool(job.execution_arn) and not self._execution_running(job.execution_arn or "")

    @staticmethod
    def _fed_elsewhere(job: JobRecord) -> bool:
        """An open streamed job whose feeding client may still live (on another host we
        cannot tell, so it may): between its segments no execution runs, yet it is not
        orphaned, and retrying it would end it under that client."""
        return job.open and job.owner is not None and job.owner.alive()

    def _describe_owner(self, job: JobRecord) -> str | None:
        return job.execution_arn

    def _still_running(self, job: JobRecord) -> str | None:
        if job.state == JobState.RUNNING and job.open and (
                job.job_id in self._followed or self._fed_elsewhere(job)):
            return (f"job {job.job_id} is a streaming map still being fed by its client "
                    f"({job.owner.describe() if job.owner else 'unknown'}); wait for the map "
                    f"to end, or cancel the job (`fanout cancel {job.job_id}`) and then retry "
                    "it: a retry runs the tasks the job has, never the rest of the map's input")
        arn = job.execution_arn
        if job.state == JobState.RUNNING and arn and self._execution_running(arn) and \
                len(self.store.results(job.job_id)) == job.n_tasks:
            self._wait_for_execution(arn, FINALIZE_WAIT_SECONDS)  # only finalizing is left
            job = self.store.job(job.job_id)
        if job.state == JobState.RUNNING and arn and self._execution_running(arn):
            return (f"job {job.job_id} is still running ({arn}); wait for it or cancel it "
                    f"(`fanout cancel {job.job_id}`) first")
        return None

    def _stop(self, job: JobRecord) -> bool:
        with self._lock:
            item = self._followed.get(job.job_id)
        if item is not None:  # tasks held for their inputs never start; earlier waves stop
            item.held = []
            for arn in item.executions[:-1]:
                with contextlib.suppress(ClientError):
                    self.sfn.stop_execution(executionArn=arn, cause="cancelled by fanout")
        if job.execution_arn:
            with contextlib.suppress(ClientError):  # it may have ended already
                self.sfn.stop_execution(executionArn=job.execution_arn,
                                        cause="cancelled by fanout")
        self.store.set_job_state(job.job_id, JobState.CANCELLED)
        return False  # the execution is stopped, so nobody else records the cancellation

    def cancel_job(self, job_id: str) -> None:
        super().cancel_job(job_id)
        self._wake.set()  # the poller delivers the cancellations to this process's futures

    # -- schedules: EventBridge Scheduler starts the state machine (schedules.py) ----------

    def put_schedule(self, request: ScheduleRequest) -> ScheduleSpec:
        return self.schedules.put_schedule(request)

    def get_schedule(self, name: str) -> ScheduleSpec:
        return self.schedules.get_schedule(name)

    def list_schedules(self) -> list[ScheduleSpec]:
        return self.schedules.list_schedules()

    def set_schedule_enabled(self, name: str, enabled: bool) -> ScheduleSpec:
        return self.schedules.set_schedule_enabled(name, enabled)

    def delete_schedule(self, name: str) -> None:
        self.schedules.delete_schedule(name)

    def schedule_runs(self, name: str) -> list[dict[str, Any]]:
        self.get_schedule(name)  # ScheduleNotFound for an unknown schedule
        return self._schedule_run_states(name)

    def __repr__(self) -> str:
        return f"AwsBackend(bucket={self.config.bucket!r}, table={self.config.table!r})"
