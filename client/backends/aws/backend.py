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
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ...collector import LIVE_RUNS, JobRun
from ...errors import ConfigurationError, WorkerLost
from ...future import Future
from ...manifest import PAYLOAD_OBJECT, plan_job, write_payload
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
    client_id,
    now,
    retry_plan,
)
from ...schedules import ScheduleRequest, ScheduleSpec, next_fire, request_json
from ..base import Backend, JobInfo, JobRequest
from ..batching import SubmitBatches
from ..local.store import new_job_id
from .build_info import find_requirements, requirements_sha256
from .config import load_config
from .layout import Layout, page_tasks_for, plan_layout
from .store import FINAL, AwsStore

log = logging.getLogger("fanout.aws")
POLL_MIN_SECONDS = 0.2
POLL_MAX_SECONDS = 2.0
#: Polls between checks of the execution's status (catches a run that died without finalizing).
EXECUTION_CHECK_EVERY = 10
#: How long ``retry`` waits for an execution whose tasks are all recorded to finalize.
FINALIZE_WAIT_SECONDS = 300
#: How long polling may fail in a row before the futures are told (the jobs go on).
POLL_GIVE_UP_SECONDS = 600.0
#: What each worker function reported it was built with (asked once per process).
_WORKER_BUILDS: dict[str, dict[str, Any]] = {}


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
            raise ValueError(f"max_workers must be an integer greater than 0, got {max_workers!r}")
        self.config, self.python_runtime = load_config(options, home)
        self.store = AwsStore(self.config)
        kwargs = {"endpoint_url": self.config.endpoint_url} if self.config.endpoint_url else {}
        self.sfn = self.store.session.client("stepfunctions", **kwargs)
        self._lock = threading.Lock()
        self._batches = SubmitBatches(new_job_id, self, linger=0.05)
        self._followed: dict[str, _Followed] = {}
        self._wake = threading.Event()
        self._poller: threading.Thread | None = None
        self._checked = False
        self._closed = False

    # -- checks before anything is uploaded --------------------------------------------------

    def check_stack(self) -> None:
        """Fail with a specific message if the stack cannot take a job; upload nothing."""
        if self._checked:
            return
        client = "{}.{}".format(*sys.version_info[:2])
        if self.python_runtime and self.python_runtime != f"python{client}":
            raise ConfigurationError(
                f"this client runs Python {client} but the stack's workers run "
                f"{self.python_runtime}; cloudpickle needs the same minor version. Redeploy "
                f"with PythonRuntime=python{client} (and a Batch image built FROM "
                f"python:{client}), or run the client with {self.python_runtime}.")
        probes: list[tuple[str, str, Callable[[], object]]] = [
            ("payload bucket", self.config.bucket,
             lambda: self.store.s3.head_bucket(Bucket=self.config.bucket)),
            ("results table", self.config.table,
             lambda: self.store.dynamodb.describe_table(TableName=self.config.table)),
            ("state machine", self.config.state_machine_arn,
             lambda: self.sfn.describe_state_machine(
                 stateMachineArn=self.config.state_machine_arn)),
        ]
        for what, name, probe in probes:
            try:
                probe()
            except NoCredentialsError as exc:
                raise ConfigurationError(
                    "no AWS credentials found: configure a profile or role (aws configure) "
                    "before using backend='aws'") from exc
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                if code in ("AccessDenied", "AccessDeniedException", "403", "Forbidden"):
                    raise ConfigurationError(
                        f"not allowed to read the {what} {name!r} ({code}); the client needs "
                        "s3:ListBucket/GetObject/PutObject on the bucket, dynamodb:DescribeTable"
                        "/Query/GetItem/PutItem on the table and states:StartExecution/"
                        "DescribeStateMachine on the state machine") from exc
                raise ConfigurationError(
                    f"the {what} {name!r} does not exist ({code}): is the stack deployed in "
                    "this account and region? Run `fanout configure --stack NAME` again.") from exc
            except BotoCoreError as exc:
                raise ConfigurationError(f"cannot reach AWS for the {what} {name!r}: {exc}. "
                                         "Check the network, the region and AWS_ENDPOINT_URL."
                                         ) from exc
        self.check_worker_build()
        self._checked = True

    def check_worker_build(self) -> None:
        """Compare what the worker artifact was built with to this client; upload nothing.

        The worker answers ``{"action": "build_info"}`` from its ``fanout_build.json`` (once
        per process and function). Older stacks without the WorkerFunctionArn output skip it.
        """
        arn = self.config.worker_function_arn
        if not arn:
            return
        worker = _WORKER_BUILDS.get(arn)
        if worker is None:
            worker = self._ask_worker_build(arn)
            _WORKER_BUILDS[arn] = worker
        from ... import __version__  # not at import time: fanout/__init__ may be loading

        client = {"python": "{}.{}".format(*sys.version_info[:2]), "fanout": __version__}
        requirements = find_requirements()
        fix = ("rebuild and redeploy the stack from the same checkout as this client "
               "(`sam build && sam deploy`, and the Batch image: `docker build` with "
               f"PYTHON_VERSION={client['python']})")
        for what, mine, theirs in (
                ("Python", client["python"], worker.get("runtime_python")),
                ("Python (the artifact was built for)", client["python"], worker.get("python")),
                ("fanout", client["fanout"], worker.get("fanout"))):
            if theirs and mine != theirs:
                raise ConfigurationError(
                    f"the stack's workers have {what} {theirs} but this client has {mine}; "
                    f"cloudpickled tasks need both sides to agree. Either {fix}, or run the "
                    f"client with {what} {theirs}.")
        theirs = worker.get("requirements_sha256")
        if requirements is not None and theirs:
            mine = requirements_sha256(requirements)
            if mine != theirs:
                raise ConfigurationError(
                    f"the stack's workers were built from a worker-requirements.txt with hash "
                    f"{theirs}, but {requirements} here hashes to {mine}: tasks would import "
                    f"libraries the workers lack. {fix[0].upper()}{fix[1:]}.")

    def _ask_worker_build(self, arn: str) -> dict[str, Any]:
        kwargs = {"endpoint_url": self.config.endpoint_url} if self.config.endpoint_url else {}
        lam = self.store.session.client("lambda", **kwargs)
        try:
            response = lam.invoke(FunctionName=arn, Payload=b'{"action": "build_info"}')
            answer = json.loads(response["Payload"].read() or b"{}")
        except (ClientError, BotoCoreError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot ask the worker function {arn} what it was built with ({exc}); the "
                "client needs lambda:InvokeFunction on it (the stack's ClientPolicyArn "
                "output grants it)") from exc
        if response.get("FunctionError") or not isinstance(answer, dict):
            raise ConfigurationError(f"the worker function {arn} failed to report its build: "
                                     f"{answer}; redeploy the stack (`sam build && sam deploy`)")
        return answer

    # -- submitting ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")

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
        self.store.update_job(run.job_id, execution_arn=arn, state=RUNNING)
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
        records = [r for r in records if r.status in FINAL]  # not an interrupted attempt
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
            if job["state"] != RUNNING and settled:
                self._forget(run)
            elif job["state"] != RUNNING or not self._execution_running(item.execution_arn):
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
            if record.status in FINAL:
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
        try:
            return self.store.job(job_id)
        except KeyError:
            raise KeyError(f"no job {job_id!r} in the results table {self.config.table!r}; "
                           "`fanout --backend aws jobs` lists the jobs there") from None

    def _info(self, job: dict[str, Any]) -> JobInfo:
        orphaned = False
        if job["state"] == RUNNING and job.get("execution_arn") and job["job_id"] not in \
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
        counts = {PENDING: 0, RUNNING: 0, SUCCEEDED: 0, FAILED: 0, CANCELLED: 0}
        for record in self.store.results(job_id):
            counts[record.status] += 1
        counts[PENDING] = job["spec"].n_tasks - sum(counts[s] for s in FINAL) \
            - counts[RUNNING]
        return counts


    def cancel_job(self, job_id: str) -> None:
        job = self._job(job_id)
        if job["state"] != RUNNING:
            return
        if job.get("execution_arn"):
            with contextlib.suppress(ClientError):  # it may have ended already
                self.sfn.stop_execution(executionArn=job["execution_arn"],
                                        cause="cancelled by fanout")
        self.store.update_job(job_id, state=CANCELLED)
        have = {r.task_index for r in self.store.results(job_id) if r.status in FINAL}
        stamp = now()
        self.store.put_results([ResultRecord(job_id, index, CANCELLED, 1, "", stamp, stamp)
                                for index in range(job["spec"].n_tasks) if index not in have])
        counts = self.counts(job_id)
        self.store.update_job(job_id, summary={k: v for k, v in counts.items()
                                               if k not in (PENDING, RUNNING)})
        self._wake.set()

    def retry_job(self, job_id: str, progress: Any = None) -> dict[str, int]:
        job = self._job(job_id)
        arn = job.get("execution_arn")
        if job["state"] == RUNNING and arn and self._execution_running(arn) and \
                len(self.store.results(job_id)) == job["spec"].n_tasks:
            self._wait_for_execution(arn, FINALIZE_WAIT_SECONDS)  # only finalizing is left
            job = self._job(job_id)
        if job["state"] == RUNNING and arn and self._execution_running(arn):
            raise RuntimeError(f"job {job_id} is still running ({job['execution_arn']}); wait "
                               f"for it or cancel it (`fanout cancel {job_id}`) first")
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

    # -- schedules: EventBridge Scheduler starts the state machine -------------------------

    def _scheduler(self) -> Any:
        if not (self.config.schedule_group and self.config.scheduler_role_arn):
            raise ConfigurationError(
                "this stack's schedule group and scheduler role are unknown: redeploy the "
                "current template.yaml and run `fanout configure --stack NAME` again")
        kwargs = {"endpoint_url": self.config.endpoint_url} if self.config.endpoint_url else {}
        return self.store.session.client("scheduler", **kwargs)

    def put_schedule(self, request: ScheduleRequest) -> ScheduleSpec:
        self.check_stack()
        scheduler = self._scheduler()
        spec = request.spec
        key = self.store.put_schedule_bundle(spec.name, {
            "spec": request_json(spec), "function": request.function,
            "items": request.items, "reducer": request.reducer})
        target: dict[str, Any] = {
            "Arn": self.config.state_machine_arn, "RoleArn": self.config.scheduler_role_arn,
            "Input": json.dumps({"schedule": spec.name, "bucket": self.config.bucket,
                                 "schedule_key": key}),
            "RetryPolicy": {"MaximumRetryAttempts": 5, "MaximumEventAgeInSeconds": 3600}}
        if self.config.schedule_dlq_arn:
            target["DeadLetterConfig"] = {"Arn": self.config.schedule_dlq_arn}
        try:
            scheduler.create_schedule(
                Name=spec.name, GroupName=self.config.schedule_group,
                ScheduleExpression=spec.expression,
                ScheduleExpressionTimezone=spec.timezone,
                FlexibleTimeWindow={"Mode": "OFF"},
                State="ENABLED" if spec.enabled else "DISABLED", Target=target,
                Description=f"fanout: {spec.function} over {spec.items_detail}")
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConflictException":
                raise ValueError(f"a schedule named {spec.name!r} exists already; remove it "
                                 f"first (`fanout --backend aws schedule remove {spec.name}`)"
                                 ) from exc
            raise
        return self.get_schedule(spec.name)

    def _remote_schedule(self, name: str) -> dict[str, Any]:
        try:
            remote: dict[str, Any] = self._scheduler().get_schedule(
                Name=name, GroupName=self.config.schedule_group)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ResourceNotFoundException":
                raise KeyError(name) from None
            raise
        return remote

    def get_schedule(self, name: str) -> ScheduleSpec:
        remote = self._remote_schedule(name)
        data = json.loads(self.store.schedule_bundle(name)["spec"])
        data["enabled"] = remote.get("State") == "ENABLED"
        upcoming = next_fire(data["expression"], data["timezone"], datetime.now(UTC))
        data["next_fire"] = upcoming.timestamp()
        return ScheduleSpec.from_json(data)

    def list_schedules(self) -> list[ScheduleSpec]:
        if not (self.config.schedule_group and self.config.scheduler_role_arn):
            return []
        scheduler = self._scheduler()
        names = []
        for page in scheduler.get_paginator("list_schedules").paginate(
                GroupName=self.config.schedule_group):
            names += [item["Name"] for item in page.get("Schedules", [])]
        return [self.get_schedule(name) for name in sorted(names)]

    def set_schedule_enabled(self, name: str, enabled: bool) -> ScheduleSpec:
        scheduler = self._scheduler()
        remote = self._remote_schedule(name)
        keep = ("ScheduleExpression", "ScheduleExpressionTimezone", "FlexibleTimeWindow",
                "Target", "Description")
        scheduler.update_schedule(Name=name, GroupName=self.config.schedule_group,
                                  State="ENABLED" if enabled else "DISABLED",
                                  **{k: remote[k] for k in keep if k in remote})
        return self.get_schedule(name)

    def delete_schedule(self, name: str) -> None:
        try:
            self._scheduler().delete_schedule(Name=name, GroupName=self.config.schedule_group)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ResourceNotFoundException":
                raise KeyError(name) from None
            raise

    def schedule_runs(self, name: str) -> list[dict[str, Any]]:
        self.get_schedule(name)  # KeyError for an unknown schedule
        runs = []
        for fired_at, job_id, outcome in self.store.schedule_runs(name):
            state = outcome
            if job_id:
                try:
                    state = self.store.job(job_id)["state"]
                except KeyError:
                    state = "missing"
            runs.append({"job_id": job_id, "fired_at": fired_at, "state": state})
        return runs

    def __repr__(self) -> str:
        return f"AwsBackend(bucket={self.config.bucket!r}, table={self.config.table!r})"


def upload_job(store: AwsStore, job_id: str, kind: str, function: bytes, function_name: str,
               payloads: Iterable[bytes], seeds: Iterable[int] | None, options: TaskOptions,
               job_seed: int, reducer: bytes | None = None, reducer_name: str | None = None
               ) -> tuple[JobSpec, list[Chunk]]:
    """Write a job's objects (one payload object, the bundle, the manifests) and its record.

    Used by the client and by the plan step of scheduled runs, so a job looks the same
    whoever made it.
    """
    with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as payload:
        refs = write_payload(payload, payloads, job_seed, seeds)
        payload.seek(0)
        store.s3.upload_fileobj(payload, store.bucket, store.key(job_id, PAYLOAD_OBJECT))
    spec, manifest = plan_job(job_id, kind, function_name, refs, options, job_seed,
                              reducer_name, has_reducer=reducer is not None)
    store.put_bundle(spec, function, reducer, upload_layout(store, manifest))
    put_manifests(store, job_id, "manifest", manifest)
    store.put_job(spec, RUNNING, client_id())
    return spec, manifest


def upload_layout(store: AwsStore, manifest: list[Chunk]) -> Layout:
    """The job's record layout: the configured one, else planned for the rate the job can
    write at, its chunks running at once (at most the stack's MaxConcurrency) finishing a
    task a second each (a task's duration is not known before it runs; shorter tasks write
    no faster, as a worker writes a page per P tasks)."""
    if store.config.layout is not None:
        return store.config.layout
    width = min(len(manifest), store.config.max_concurrency or DEFAULT_MAX_CONCURRENCY)
    chunksize = max((len(chunk.tasks) for chunk in manifest), default=1)
    return plan_layout(max(1, width), page_tasks=page_tasks_for(chunksize))


def put_manifests(store: AwsStore, job_id: str, name: str, chunks: list[Chunk]) -> None:
    """``name``.json (all chunks, for retries and workers) and one manifest per tier.

    The tier manifests hold references (key + byte range into ``name``.json), not chunks,
    so a map item and a Batch job's overrides stay small whatever the ``chunksize``.
    Splitting by tier lets each Distributed Map run its items without a Choice state:
    one state transition per chunk instead of two.
    """
    refs = store.put_chunks(job_id, f"{name}.json", chunks)
    for tier in ("lambda", "batch"):
        part = [ref for ref in refs if ref["tier"] == tier]
        store.put_object(job_id, f"{name}-{tier}.json", json.dumps(part).encode())


#: The template's MaxConcurrency default: chunks running at once in each tier's map.
DEFAULT_MAX_CONCURRENCY = 8


def execution_input(store: AwsStore, job_id: str, manifest: str) -> dict[str, Any]:
    """What the state machine's map states read: where the job's tier manifests are, and
    how many chunks may run at once (the stack's MaxConcurrency, read by MaxConcurrencyPath)."""
    return {"job_id": job_id, "bucket": store.bucket,
            "lambda_manifest_key": store.key(job_id, f"{manifest}-lambda.json"),
            "batch_manifest_key": store.key(job_id, f"{manifest}-batch.json"),
            "max_concurrency": store.config.max_concurrency or DEFAULT_MAX_CONCURRENCY,
            "map_error": None}
