"""What the AWS workers run: the Lambda worker, the finalize step and the Batch entry point.

``functions/`` only imports these. Each one is the shared :class:`~fanout.runtime.WorkerRuntime`
over an :class:`AwsStore`; nothing here executes a task any differently from the local backend.
Powertools gives structured logs (the job id as correlation id) and EMF metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from ... import records
from ...capture import StreamCapture
from ...context import current_task
from ...errors import ConfigurationError, WorkerLost
from ...ids import new_job_id
from ...packing import final_counts
from ...protocol import (
    FAILED,
    REDUCE_INDEX,
    SUCCEEDED,
    Chunk,
    ResultRecord,
)
from ...runtime import WorkerRuntime
from ...states import JobState, TaskState
from ...summary import Timings, status_counts, summary_from
from .config import RECORD_TTL_DAYS, AwsConfig
from .flusher import PageFlusher, active_flusher
from .ramp import LAMBDA_MAP_LABEL, Ramp, next_raise
from .store import AwsStore
from .upload import execution_input, lambda_chunks, upload_job

try:  # Powertools is in the `aws` extra; the handlers still work without it (tests, tools)
    from aws_lambda_powertools import Logger, Metrics
    from aws_lambda_powertools.metrics import MetricUnit

    logger: Any = Logger(service="fanout")
    metrics: Any = Metrics(namespace=os.environ.get("POWERTOOLS_METRICS_NAMESPACE", "fanout"),
                           service="fanout")
except ImportError:  # pragma: no cover
    import logging

    logger = logging.getLogger("fanout.aws")
    metrics = None


_stores: dict[tuple[str, str], AwsStore] = {}


def store_from_env() -> AwsStore:
    """The store a worker uses, from the environment the template gives every function.

    Kept for the life of the process, so a warm container reuses its clients and caches.
    """
    try:
        key = (os.environ["FANOUT_BUCKET"], os.environ["FANOUT_TABLE"])
    except KeyError as exc:
        raise ConfigurationError(f"worker environment lacks {exc.args[0]}; deploy with "
                                 "template.yaml") from exc
    if key not in _stores:
        retention = int(os.environ.get("FANOUT_RESULT_RETENTION_DAYS") or RECORD_TTL_DAYS)
        concurrency = os.environ.get("FANOUT_MAX_CONCURRENCY")
        _stores[key] = AwsStore(AwsConfig(
            bucket=key[0], table=key[1], state_machine_arn="", retention_days=retention,
            max_concurrency=int(concurrency) if concurrency else None))
    return _stores[key]


def chunk_from_event(data: dict[str, Any], store: AwsStore) -> Chunk:
    """A map item is a reference to the chunk (key + byte range), read with one GET."""
    return Chunk.from_json(data) if "tasks" in data else store.read_chunk_ref(data)


def _metric(name: str, value: float, unit: str = "Count") -> None:
    if metrics is not None:
        metrics.add_metric(name=name, unit=getattr(MetricUnit, unit), value=value)


def _flush_metrics() -> None:
    """Print the metrics to the process's stdout: Batch's SIGTERM handler flushes while a
    task's output is captured (``sys.stdout`` is then that task's, about to be lost)."""
    if metrics is not None:
        with contextlib.redirect_stdout(sys.__stdout__ or sys.stdout):
            metrics.flush_metrics()


_runtimes: dict[tuple[int, int], WorkerRuntime] = {}


def _warm_runtime(store: AwsStore, worker_id: str) -> WorkerRuntime:
    """One runtime per store and thread: a warm Lambda container keeps the job's spec and
    unpickled function from its previous chunk instead of fetching them again (a Lambda
    has one thread; the scale tests run many workers as threads of one process)."""
    key = (id(store), threading.get_ident())
    runtime = _runtimes.get(key)
    if runtime is None or runtime.store is not store:
        runtime = _runtimes[key] = WorkerRuntime(store, worker_id, StreamCapture())
    runtime.worker_id = worker_id
    runtime.sink = None
    runtime.enforce_timeouts = True  # no supervisor outside a Lambda or a Batch container
    return runtime


def run_chunk(chunk: Chunk, worker_id: str, store: AwsStore | None = None,
              attempt: int | None = None, extra: dict[int, dict[str, Any]] | None = None
              ) -> dict[str, int]:
    """Run the chunk's tasks that have no successful record yet; return counts."""
    store = store or store_from_env()
    indexes = [t.index for t in chunk.tasks]
    # A first attempt has nothing to skip; a re-run (Batch after Lambda, a retry) does, and
    # one batched read per chunk is cheaper than recomputing finished tasks.
    rerun = chunk.attempt > 1 or attempt is not None
    done = store.finished_tasks(chunk.job_id, indexes) if rerun else set()
    todo = tuple(t for t in chunk.tasks if t.index not in done)
    if attempt is not None:
        chunk = Chunk(chunk.job_id, chunk.index, chunk.tier, attempt, todo)
    else:
        chunk = Chunk(chunk.job_id, chunk.index, chunk.tier, chunk.attempt, todo)
    counts = {"ran": 0, "failed": 0, "skipped": len(done)}
    runtime = _warm_runtime(store, worker_id)

    def tally(record: ResultRecord, stored: ResultRecord) -> None:
        # Also called on the flusher's timer thread while the next task runs, its output
        # captured from sys.stdout: so no metric is added here (Powertools prints a
        # metric's values once it holds 100, wherever sys.stdout points), but in sink().
        counts["ran"] += 1
        counts["failed"] += stored.status == FAILED

    # Results are written a page at a time (flusher.py), not one item per task.
    flusher = PageFlusher(store, runtime, chunk, tally)

    def sink(record: ResultRecord) -> None:
        """On the chunk's thread, after the task's output capture has ended."""
        if extra:
            record.extra.update(extra.get(record.task_index, {}))
        _metric("TaskDuration", record.duration * 1000, "Milliseconds")
        flusher(record)

    runtime.sink = sink
    started = time.monotonic()
    try:
        runtime.run_chunk(chunk)
    finally:
        runtime.sink = None
        flusher.close()
    _metric("TasksRun", counts["ran"])
    _metric("TaskFailures", counts["failed"])
    if chunk.attempt > 1 or done:
        _metric("Retries", len(todo))
    logger.info("chunk finished", extra={"job_id": chunk.job_id, "chunk": chunk.index,
                                         "attempt": chunk.attempt, **counts,
                                         "seconds": round(time.monotonic() - started, 3)})
    return counts


# -- Lambda: worker ------------------------------------------------------------------------------


def worker_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry: ``{"chunk": {...}}`` from the state machine's Distributed Map, or
    ``{"action": "build_info"}`` from a client checking what this artifact was built with."""
    if event.get("action") == "build_info":
        from .build_info import artifact_info

        return artifact_info()
    if hasattr(logger, "set_correlation_id"):
        logger.set_correlation_id(event["chunk"].get("job_id", ""))
    store = store_from_env()
    chunk = chunk_from_event(event["chunk"], store)
    request_id = getattr(context, "aws_request_id", None) or f"local-{os.getpid()}"
    try:
        return run_chunk(chunk, f"lambda/{request_id}", store)
    finally:
        _flush_metrics()


# -- Lambda: finalize ----------------------------------------------------------------------------


def _lost(job_id: str, index: int, why: str) -> ResultRecord:
    # attempt 99: any real re-run (a retry) gets a higher attempt and replaces it
    return records.lost(job_id, index, 99, WorkerLost(why), extra={"lost": "chunk failed"})


def chunk_failed(event: dict[str, Any], store: AwsStore | None = None) -> dict[str, int]:
    """A chunk failed on every path: record WorkerLost for its tasks without a result."""
    store = store or store_from_env()
    chunk = chunk_from_event(event["chunk"], store)
    error = event.get("error") or {}
    why = (f"chunk {chunk.index} of job {chunk.job_id} failed in the state machine: "
           f"{error.get('Error', 'unknown error')}: {str(error.get('Cause', ''))[:2000]}")
    have = {r.task_index for r in records.final(store.results(chunk.job_id))}
    lost = [_lost(chunk.job_id, task.index, why) for task in chunk.tasks
            if task.index not in have]
    store.put_results(lost)  # one conditional write per result page
    return {"recorded": len(lost)}


def finalize(event: dict[str, Any], store: AwsStore | None = None) -> dict[str, Any]:
    """Run the reducer when every task succeeded, account for every task, write the summary."""
    store = store or store_from_env()
    job_id = event["job_id"]
    job = store.job(job_id)
    spec = job.spec  # the record's: a streamed job's task count grows with each segment
    final = {r.task_index: r for r in records.final(store.results(job_id))}
    map_error = event.get("map_error")
    if job.state == JobState.CANCELLED:
        state = JobState.CANCELLED
    elif job.open or (job.waves and len(final) < spec.n_tasks):
        # A job started in waves (its tasks take futures, or a streaming map appends them)
        # is finished by the execution that lands its last result; an earlier wave's tasks
        # may still be running or held, and an open stream may append more tasks.
        logger.info("wave finished", extra={"job_id": job_id, "recorded": len(final)})
        return {"job_id": job_id, "state": JobState.RUNNING, "summary": None}
    else:
        missing = [i for i in range(spec.n_tasks) if i not in final]
        lost = [_lost(job_id, index, f"task {index} of job {job_id} has no result after the "
                      "map ended" + (f" ({map_error.get('Error')})"
                                     if isinstance(map_error, dict) else ""))
                for index in missing]
        for stored in store.put_results(lost):  # one conditional write per result page
            final[stored.task_index] = stored
        state = JobState.FINISHED
    counts = status_counts(final.values())
    if spec.has_reducer and state == JobState.FINISHED and counts.get(SUCCEEDED, 0) == spec.n_tasks:
        previous = store.result(job_id, REDUCE_INDEX)
        if previous is None or previous.status != SUCCEEDED:
            attempt = 1 if previous is None else previous.attempt + 1
            runtime = WorkerRuntime(store, "lambda/finalize", StreamCapture())
            runtime.run_reduce(job_id, attempt)
    if spec.options.pack:  # a packed job's summary counts calls (see fanout.packing)
        counts = final_counts(final.values(), spec.options.pack)
    summary = summary_from(counts, Timings.of(final.values()))
    if map_error:
        summary["map_error"] = map_error
    store.set_job_state(job_id, state, summary=summary)
    logger.info("job finalized", extra={"job_id": job_id, "state": state, **counts})
    return {"job_id": job_id, "state": state, "summary": summary}


def finalize_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry for the ``ChunkFailed`` and ``Finalize`` states."""
    job_id = event.get("job_id") or event.get("chunk", {}).get("job_id", "")
    if hasattr(logger, "set_correlation_id"):
        logger.set_correlation_id(job_id)
    try:
        if event.get("action") == "chunk_failed":
            return chunk_failed(event)
        return finalize(event)
    finally:
        _flush_metrics()


# -- Lambda: plan a scheduled run --------------------------------------------------------------


def plan(event: dict[str, Any], store: AwsStore | None = None,
         now: float | None = None) -> dict[str, Any]:
    """Turn one firing of a schedule into a job (or a recorded skip)."""
    from ... import serialization
    from ...schedules import ScheduleSpec, run_items, run_seed

    store = store or store_from_env()
    name = event["schedule"]
    fired_at = time.time() if now is None else now
    bundle = store.schedule_bundle(name)
    spec = ScheduleSpec.from_json(json.loads(bundle["spec"]))
    for _fired, job_id, _outcome in store.schedule_runs(name, limit=10):
        if job_id:
            if store.job(job_id).state == JobState.RUNNING:
                store.put_schedule_run(name, fired_at, None, "skipped")
                logger.info("scheduled run skipped", extra={"schedule": name,
                                                              "running": job_id})
                return {"skipped": True, "schedule": name, "running": job_id}
            break
    items = run_items(spec, bundle["items"])
    seed = run_seed(spec, fired_at)
    job_id = new_job_id()
    _spec, manifest = upload_job(
        store, job_id, "scheduled", bundle["function"], spec.function,
        (serialization.dumps_call((item,), {}) for item in items), None, spec.options, seed,
        bundle.get("reducer"), spec.reducer)
    store.put_schedule_run(name, fired_at, job_id, "started")
    if hasattr(logger, "set_correlation_id"):
        logger.set_correlation_id(job_id)
    logger.info("scheduled run planned", extra={"schedule": name, "tasks": len(items)})
    return execution_input(store, job_id, "manifest", lambda_chunks(manifest))


# -- Lambda: the MaxConcurrency ramp (ramp.py) ---------------------------------------------------


def _lambda_map_run(sfn: Any, execution_arn: str) -> str | None:
    """The ARN of the execution's Lambda-tier Map Run (``…/LambdaChunks:<id>``), if started."""
    for page in sfn.get_paginator("list_map_runs").paginate(executionArn=execution_arn):
        for run in page.get("mapRuns", []):
            arn = str(run["mapRunArn"])
            if arn.rsplit("/", 1)[-1].split(":")[0] == LAMBDA_MAP_LABEL:
                return arn
    return None


def ramp(event: dict[str, Any], sfn: Any = None, now: float | None = None) -> dict[str, Any]:
    """One step of the ``RampConcurrency`` loop: raise the Lambda map's MaxConcurrency by a
    step (``UpdateMapRun``) when an interval has passed since the last raise.

    Returns ``{"ramp": ...}`` for the next loop: ``done`` once the target is reached or
    the Map Run has ended, ``wait`` the seconds until the next raise is due. Before the Map
    Run exists (its ItemReader is still reading the manifest) nothing changes.
    """
    import boto3

    sfn = sfn or boto3.client("stepfunctions")
    state = Ramp.from_json(event["ramp"])
    now = time.time() if now is None else now
    arn = _lambda_map_run(sfn, event["execution_arn"])
    if arn is None:
        return {"ramp": {**state.to_json(), "wait": 1}}
    run = sfn.describe_map_run(mapRunArn=arn)
    if run["status"] != "RUNNING":
        return {"ramp": {**state.to_json(), "done": True}}
    current = int(run["maxConcurrency"])
    started = run["startDate"]
    started_at = started.timestamp() if hasattr(started, "timestamp") else float(started)
    width, after = next_raise(state, current, started_at, now)
    if width != current:
        sfn.update_map_run(mapRunArn=arn, maxConcurrency=width)
        logger.info("map concurrency raised", extra={"map_run": arn, "from": current,
                                                     "to": width, "target": state.target})
    return {"ramp": after.to_json()}


def plan_handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    """Lambda entry for the ``PlanScheduledRun`` and ``RaiseConcurrency`` states."""
    try:
        if event.get("action") == "ramp":
            return ramp(event)
        return plan(event)
    finally:
        _flush_metrics()


# -- AWS Batch (Fargate Spot) --------------------------------------------------------------------


def batch_main() -> int:
    """Container entry: run the chunk ``FANOUT_CHUNK_REF`` points to, as attempt
    ``chunk.attempt + batch attempt``.

    Spot gives two minutes' notice with SIGTERM. The task in flight is then recorded as
    interrupted (a failed record of this attempt, which the retry's record replaces), so the
    interruption is visible in the task record; checkpoints are in S3, so the retry resumes.
    """
    store = store_from_env()
    chunk = chunk_from_event(json.loads(os.environ["FANOUT_CHUNK_REF"]), store)
    batch_attempt = int(os.environ.get("AWS_BATCH_JOB_ATTEMPT", "1"))
    attempt = chunk.attempt + batch_attempt
    job = os.environ.get("AWS_BATCH_JOB_ID", f"local-{os.getpid()}")
    worker_id = f"batch/{job}#{batch_attempt}"
    interruptions = {}
    for record in store.results(chunk.job_id):
        count = record.extra.get("interruptions", 0)
        if count and record.status != SUCCEEDED:
            interruptions[record.task_index] = {"interruptions": count}

    def on_sigterm(signum: int, frame: Any) -> None:
        ctx = current_task()
        flusher = active_flusher()
        if flusher is not None:  # the chunk's finished results first: nothing is lost
            flusher.close()
        # A job stop (cancel) ends its Batch jobs with SIGTERM too: no retry follows, and
        # the cancellation's record stands.
        if ctx is not None and store.job(ctx.job_id).state != JobState.CANCELLED:
            previous = interruptions.get(ctx.task_index, {}).get("interruptions", 0)
            why = (f"task {ctx.task_index} was interrupted on attempt {ctx.attempt} "
                   "(SIGTERM: Spot reclaim or job stop); it is retried")
            # RUNNING, not FAILED: the job definition's retry strategy runs the task again,
            # so no future may resolve on this record; if no retry comes, the chunk's
            # failure handler replaces it with WorkerLost.
            store.put_result(records.lost(
                ctx.job_id, ctx.task_index, ctx.attempt, WorkerLost(why), worker_id=worker_id,
                extra={"interrupted": True, "interruptions": previous + 1},
                status=TaskState.RUNNING))
            logger.warning("interrupted", extra={"job_id": ctx.job_id, "task": ctx.task_index})
        _flush_metrics()
        sys.stdout.flush()
        os._exit(143)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        counts = run_chunk(chunk, worker_id, store, attempt=attempt, extra=interruptions)
    finally:
        _flush_metrics()
    print(json.dumps(counts))
    return 0
