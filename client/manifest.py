"""From a job's arguments to its manifest: the step between submit and the workers.

Every backend writes a job the same way: each task's pickled arguments are appended to one
payload object and addressed by byte range with their seed, the tasks are grouped into
chunks of ``chunksize`` with the tier the options plan, and the spec records how the job
was made. Only where the bytes go differs (a local file, an S3 object).
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable
from typing import Protocol

from .options import TaskOptions, plan_tier
from .protocol import Chunk, JobSpec, TaskRef, client_id
from .seeding import task_seeds
from .serialization import package_versions, python_version

PAYLOAD_OBJECT = "payload-0.bin"


def payload_object(segment: int) -> str:
    """The payload object of a job's ``segment``: 0 at the start, 1.. for appended tasks."""
    return f"payload-{segment}.bin"


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


def write_payload(out: Writable, payloads: Iterable[bytes], job_seed: int,
                  seeds: Iterable[int] | None = None, first: int = 0,
                  name: str = PAYLOAD_OBJECT) -> list[TaskRef]:
    """Append every task's arguments to ``out``; each task's seed is given or derived.

    ``first`` is the index of the first task, for tasks appended to an open job (object
    ``name``): a task's seed depends on its index only, so a job fed in segments runs
    exactly the tasks, with exactly the seeds, of the same job written at once.
    """
    refs: list[TaskRef] = []
    seed_iter = iter(seeds) if seeds is not None else task_seeds(job_seed, first)
    offset = 0
    for index, blob in enumerate(payloads, first):
        out.write(blob)
        refs.append(TaskRef(index, name, offset, len(blob), next(seed_iter)))
        offset += len(blob)
    return refs


def plan_job(job_id: str, kind: str, function_name: str, refs: list[TaskRef],
             options: TaskOptions, job_seed: int, reducer_name: str | None = None,
             has_reducer: bool = False, alone: Collection[int] = ()
             ) -> tuple[JobSpec, list[Chunk]]:
    """The job's spec and its manifest: chunks of ``options.chunksize`` tasks with a tier."""
    manifest = plan_chunks(job_id, refs, options, alone=alone)
    spec = JobSpec(
        job_id=job_id, kind=kind, function=function_name, n_tasks=len(refs), seed=job_seed,
        options=options, python=python_version(), packages=package_versions(),
        created=time.time(), client=client_id(), has_reducer=has_reducer,
        reducer=reducer_name)
    return spec, manifest


def plan_chunks(job_id: str, refs: list[TaskRef], options: TaskOptions,
                first_chunk: int = 0, alone: Collection[int] = ()) -> list[Chunk]:
    """``refs`` in chunks of ``options.chunksize``, numbered from ``first_chunk``.

    A task in ``alone`` (one that takes futures as arguments) gets a chunk of its own: it
    starts when its own inputs are done, not when those of its chunk's neighbours are.
    """
    tier = plan_tier(options)
    groups: list[list[TaskRef]] = []
    run: list[TaskRef] = []
    for ref in refs:
        if ref.index in alone:
            if run:
                groups.append(run)
                run = []
            groups.append([ref])
            continue
        run.append(ref)
        if len(run) == options.chunksize:
            groups.append(run)
            run = []
    if run:
        groups.append(run)
    return [Chunk(job_id, number, tier, 1, tuple(group))
            for number, group in enumerate(groups, first_chunk)]
