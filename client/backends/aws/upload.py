"""Writing an AWS job: its objects in S3, its record in DynamoDB, its execution's input.

The client (``AwsBackend``) and the plan step of scheduled runs (``handlers.plan``) both
make jobs, so the writing lives here, where both import it: a job looks the same whoever
made it, and the worker side never imports the client backend.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable
from typing import Any

from ...manifest import PAYLOAD_OBJECT, plan_job, write_payload
from ...options import TaskOptions
from ...protocol import Chunk, JobSpec, client_id
from ...states import JobState
from .store import AwsStore


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
    store.put_bundle(spec, function, reducer)
    put_manifests(store, job_id, "manifest", manifest)
    store.put_job(spec, JobState.RUNNING, client_id())
    return spec, manifest


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
