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
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from ...collector import LIVE_RUNS, JobRun
from ...errors import (
    ExecutorClosed,
    InvalidArgument,
    JobStillRunning,
    WorkerLost,
)
from ...future import Future
from ...ids import new_job_id
from ...options import TaskOptions
from ...protocol import (
    CANCELLED,
    FAILED,
    PENDING,
    REDUCE_INDEX,
    RUNNING,
    SUCCEEDED,
    Chunk,
    JobSpec,
    ResultRecord,
    now,
    retry_plan,
)
from ...schedules import ScheduleRequest, ScheduleSpec
from ...states import FINAL_STATES, JobState
from ..base import Backend, JobInfo, JobRequest
from ..batching import SubmitBatches
from .config import load_config
from .schedules import AwsSchedules
from .stack_check import StackCheck
from .store import AwsStore
from .upload import execution_input, put_manifests, upload_job

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


class AwsBackend(Backend):
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

    # -- checks before anything is uploaded (stack_check.py) ------------------------------

    def check_stack(self) -> None:
        """Fail with a specific message if the stack cannot take a job; upload nothing."""
        self._stack_check.check_stack()

    def check_worker_build(self) -> None:
        """Compare what the worker artifact was built with to this client; upload nothing."""
        self._stack_check.check_worker_build()

    # -- submitting ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ExecutorClosed("cannot schedule new futures after shutdown")

    def _upload(self, job_id: str, kind: str, function: bytes, function_name: str,
                payloads: Iterable[bytes], seeds: Iterable[int] | None, options: TaskOptions,
                job_seed: int, reducer: bytes | None = None, reducer_name: str | None = None
                ) -> tuple[JobSpec, list[Chunk]]:
        return upload_job(self.store, job_id, kind, function, function_name, payloads, seeds,
                          options, job_seed, reducer, reducer_name)

    def _execute(self, run: JobRun, manifest: str, name: str) -> None:
        """Start the job's execution over the tier manifests written as ``manifest``."""
        response = self.sfn.start_execution(
            stateMachineArn=self.config.state_machine_arn, name=name,
            input=json.dumps(execution_input(self.store, run.job_id, manifest)))
        arn = response["executionArn"]
        self.store.update_job(run.job_id, execution_arn=arn, state=JobState.RUNNING)
        LIVE_RUNS[run.job_id] = run
        with self._lock:
            self._followed[run.job_id] = _Followed(run, arn)
        self._ensure_poller()

    def start_job(self, request: JobRequest) -> JobRun:
        self._check_open()
        self.check_stack()
        job_id = new_job_id()
        spec, _ = self._upload(job_id, request.kind, request.function, request.function_name,
                               request.payloads, None, request.options, request.seed,
                               request.reducer, request.reducer_name)
        futures = [Future(job_id, i, self) for i in range(spec.n_tasks)]
        reduce_future = Future(job_id, REDUCE_INDEX, self) if request.reducer else None
        if request.progress is not None:
            request.progress.reset(total=spec.n_tasks)
        run = JobRun(spec, futures, self.store.load_value, reduce_future, request.progress)
        self._execute(run, "manifest", job_id)
        return run

    def submit(self, fn_key: object, function: bytes, function_name: str, payload: bytes,
               options: TaskOptions, seed: int) -> Future:
        self._check_open()
        self.check_stack()
        future, _ = self._batches.add(fn_key, function, function_name, payload, options, seed)
        self._ensure_poller()
        return future

    def _flush_submits(self, everything: bool) -> None:
        for batch in self._batches.take(everything):
            spec, _ = self._upload(batch.job_id, "submit", batch.function, batch.function_name,
                                   batch.payloads, batch.seeds, batch.options,
                                   batch.options.seed or 0)
            run = JobRun(spec, batch.futures, self.store.load_value)
            self._execute(run, "manifest", batch.job_id)

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
        records, item.cursor = self.store.results_since(run.job_id, item.cursor)
        records = [r for r in records if r.status in FINAL_STATES]  # not an interrupted attempt
        for record in records:
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
        if settled or item.polls % EXECUTION_CHECK_EVERY == 0:
            job = self.store.job(run.job_id)
            if job["state"] != JobState.RUNNING and settled:
                self._forget(run)
            elif (job["state"] != JobState.RUNNING
                  or not self._execution_running(item.execution_arn)):
                if not settled:
                    self._abandon(run, f"its execution ended ({job['state']})")
                self._forget(run)
        return bool(records)

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
        for record in self.store.results(run.job_id):
            if record.status in FINAL_STATES:
                run.deliver(record)
        message = (f"job {run.job_id} ended without a result for this task: {why}. "
                   f"`fanout retry {run.job_id}` runs the unfinished tasks.")
        for index in run.open_tasks():
            future = run.future(index)
            if not future.done():
                future.set_exception(WorkerLost(message))
        if run.reduce_future is not None and not run.reduce_future.done():
            run.reduce_future.set_exception(WorkerLost(message))

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

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        self._closed = True
        if cancel_futures:
            for batch in self._batches.take(True):
                for future in batch.futures:
                    if future.cancel():
                        future.set_running_or_notify_cancel()
        self._wake.set()
        poller = self._poller
        if wait and poller is not None:
            poller.join()

    # -- jobs ------------------------------------------------------------------------------

    def _job(self, job_id: str) -> dict[str, Any]:
        return self.store.job(job_id)

    def _info(self, job: dict[str, Any]) -> JobInfo:
        orphaned = False
        if job["state"] == JobState.RUNNING and job.get("execution_arn") and job["job_id"] not in \
                self._followed:
            orphaned = not self._execution_running(job["execution_arn"])
        return JobInfo(job["job_id"], job["spec"], job["state"], job["summary"],
                       job.get("execution_arn"), orphaned)

    def job_info(self, job_id: str) -> JobInfo:
        return self._info(self._job(job_id))

    def list_jobs(self, limit: int = 50) -> list[JobInfo]:
        return [self._info(job) for job in self.store.jobs(limit)]




    def counts(self, job_id: str) -> dict[str, int]:
        job = self._job(job_id)
        counts: dict[str, int] = {PENDING: 0, RUNNING: 0, SUCCEEDED: 0, FAILED: 0, CANCELLED: 0}
        for record in self.store.results(job_id):
            counts[record.status] += 1
        counts[PENDING] = job["spec"].n_tasks - sum(counts[s] for s in FINAL_STATES) \
            - counts[RUNNING]
        return counts


    def cancel_job(self, job_id: str) -> None:
        job = self._job(job_id)
        if job["state"] != JobState.RUNNING:
            return
        if job.get("execution_arn"):
            with contextlib.suppress(ClientError):  # it may have ended already
                self.sfn.stop_execution(executionArn=job["execution_arn"],
                                        cause="cancelled by fanout")
        self.store.update_job(job_id, state=JobState.CANCELLED)
        have = {r.task_index for r in self.store.results(job_id) if r.status in FINAL_STATES}
        stamp = now()
        for index in range(job["spec"].n_tasks):
            if index not in have:
                self.store.put_result(ResultRecord(job_id, index, CANCELLED, 1, "", stamp,
                                                   stamp))
        counts = self.counts(job_id)
        self.store.update_job(job_id, summary={k: v for k, v in counts.items()
                                               if k not in (PENDING, RUNNING)})
        self._wake.set()

    def retry_job(self, job_id: str, progress: Any = None) -> dict[str, int]:
        job = self._job(job_id)
        arn = job.get("execution_arn")
        if job["state"] == JobState.RUNNING and arn and self._execution_running(arn) and \
                len(self.store.results(job_id)) == job["spec"].n_tasks:
            self._wait_for_execution(arn, FINALIZE_WAIT_SECONDS)  # only finalizing is left
            job = self._job(job_id)
        if job["state"] == JobState.RUNNING and arn and self._execution_running(arn):
            raise JobStillRunning(f"job {job_id} is still running ({job['execution_arn']}); "
                                  f"wait for it or cancel it (`fanout cancel {job_id}`) first")
        self._check_open()
        spec: JobSpec = job["spec"]
        manifest = [Chunk.from_json(c) for c in
                    json.loads(self.store.get_object(job_id, "manifest.json"))]
        chunks = retry_plan(manifest, self.store.results(job_id))
        reduce_record = self.store.result(job_id, REDUCE_INDEX) if spec.has_reducer else None
        needs_reduce = spec.has_reducer and (reduce_record is None
                                             or reduce_record.status != SUCCEEDED)
        if not chunks and not needs_reduce:
            return self.counts(job_id)
        retry_number = int(time.time())
        put_manifests(self.store, job_id, f"manifest-retry-{retry_number}", chunks)
        futures = [Future(job_id, t.index, self) for c in chunks for t in c.tasks]
        reduce_future = Future(job_id, REDUCE_INDEX, self) if needs_reduce else None
        if progress is not None:
            progress.reset(total=len(futures))
        run = JobRun(spec, futures, self.store.load_value, reduce_future, progress)
        self._execute(run, f"manifest-retry-{retry_number}", f"{job_id}-retry-{retry_number}")
        run.stored.wait()
        return self.counts(job_id)

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
        return self.schedules.schedule_runs(name)

    def __repr__(self) -> str:
        return f"AwsBackend(bucket={self.config.bucket!r}, table={self.config.table!r})"
