"""Writing an AWS job: its objects in S3, its record in DynamoDB, its execution's input.

The client (``AwsBackend``) and the plan step of scheduled runs (``handlers.plan``) both
make jobs, so the writing lives here, where both import it: a job looks the same whoever
made it, and the worker side never imports the client backend.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Collection, Iterable
from typing import Any

from ...manifest import PAYLOAD_OBJECT, plan_job, write_payload
from ...options import TaskOptions
from ...protocol import Chunk, JobSpec, TaskRef, client_id
from ...states import JobState
from .layout import Layout, page_tasks_for, plan_layout
from .ramp import plan_ramp
from .store import AwsStore


def upload_job(store: AwsStore, job_id: str, kind: str, function: bytes, function_name: str,
               payloads: Iterable[bytes], seeds: Iterable[int] | None, options: TaskOptions,
               job_seed: int, reducer: bytes | None = None, reducer_name: str | None = None,
               alone: Collection[int] = ()) -> tuple[JobSpec, list[Chunk]]:
    """Write a job's objects (one payload object, the bundle, the manifests) and its record.

    Used by the client and by the plan step of scheduled runs, so a job looks the same
    whoever made it. ``alone``: tasks that take futures, each planned as a chunk of its own.
    """
    refs = upload_payload(store, job_id, PAYLOAD_OBJECT, payloads, job_seed, seeds)
    spec, manifest = plan_job(job_id, kind, function_name, refs, options, job_seed,
                              reducer_name, has_reducer=reducer is not None, alone=alone)
    store.put_bundle(spec, function, reducer, upload_layout(store, manifest))
    put_manifests(store, job_id, "manifest", manifest)
    store.put_job(spec, JobState.RUNNING, client_id())
    return spec, manifest


def upload_payload(store: AwsStore, job_id: str, name: str, payloads: Iterable[bytes],
                   job_seed: int, seeds: Iterable[int] | None = None, first: int = 0
                   ) -> list[TaskRef]:
    """One payload object (the job's first, or a streamed segment's from task ``first``):
    every task's arguments back to back, addressed by byte range; spooled to disk past
    64 MiB, so the client never holds a big one in memory."""
    with tempfile.SpooledTemporaryFile(max_size=64 * 1024 * 1024) as payload:
        refs = write_payload(payload, payloads, job_seed, seeds, first, name)
        payload.seek(0)
        store.s3.upload_fileobj(payload, store.bucket, store.key(job_id, name))
    return refs


def upload_layout(store: AwsStore, manifest: list[Chunk]) -> Layout:
    """The job's record layout: the configured one, else planned for the rate the job can
    write at, its chunks running at once (at most the stack's MaxConcurrency) finishing a
    task a second each (a task's duration is not known before it runs; shorter tasks write
    no faster, as a worker writes a page per P tasks).

    A streaming map's job is planned from its first window, and its later segments fit
    that plan: the map never has more than a window of tasks submitted and not yet taken,
    so no more chunks than the first window's run at once, and every segment has the same
    chunk size (a segment starts at a multiple of it, so no page spans two segments)."""
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


def lambda_chunks(chunks: Iterable[Chunk]) -> int:
    """How many of ``chunks`` the Lambda tier's map runs (the ramp's target)."""
    return sum(1 for chunk in chunks if chunk.tier == "lambda")


def execution_input(store: AwsStore, job_id: str, manifest: str,
                    lambda_chunk_count: int) -> dict[str, Any]:
    """What the state machine reads: where the job's tier manifests are, how many chunks
    may run at once (the stack's MaxConcurrency, read by the Batch map's
    MaxConcurrencyPath), the Lambda map's starting width and its ramp (``ramp.py``; None
    when the job is no wider than one step or ``AwsConfig.concurrency_ramp`` is off)."""
    cap = store.config.max_concurrency or DEFAULT_MAX_CONCURRENCY
    start, ramp = plan_ramp(lambda_chunk_count, cap, enabled=store.config.concurrency_ramp)
    return {"job_id": job_id, "bucket": store.bucket,
            "lambda_manifest_key": store.key(job_id, f"{manifest}-lambda.json"),
            "batch_manifest_key": store.key(job_id, f"{manifest}-batch.json"),
            "max_concurrency": cap,
            "lambda_max_concurrency": start,
            "ramp": ramp.to_json() if ramp else None,
            "map_error": None}
