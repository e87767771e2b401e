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
from .seeding import derive_seed
from .serialization import package_versions, python_version

PAYLOAD_OBJECT = "payload-0.bin"


class Writable(Protocol):
    def write(self, data: bytes, /) -> int: ...


def write_payload(out: Writable, payloads: Iterable[bytes], job_seed: int,
                  seeds: Iterable[int] | None = None) -> list[TaskRef]:
    """Append every task's arguments to ``out``; each task's seed is given or derived."""
    refs: list[TaskRef] = []
    seed_iter = iter(seeds) if seeds is not None else None
    offset = 0
    for index, blob in enumerate(payloads):
        out.write(blob)
        seed = next(seed_iter) if seed_iter else derive_seed(job_seed, "task", index)
        refs.append(TaskRef(index, PAYLOAD_OBJECT, offset, len(blob), seed))
        offset += len(blob)
    return refs


def plan_job(job_id: str, kind: str, function_name: str, refs: list[TaskRef],
             options: TaskOptions, job_seed: int, reducer_name: str | None = None,
             has_reducer: bool = False, alone: Collection[int] = ()
             ) -> tuple[JobSpec, list[Chunk]]:
    """The job's spec and its manifest: chunks of ``options.chunksize`` tasks with a tier.

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
    manifest = [Chunk(job_id, number, tier, 1, tuple(group))
                for number, group in enumerate(groups)]
    spec = JobSpec(
        job_id=job_id, kind=kind, function=function_name, n_tasks=len(refs), seed=job_seed,
        options=options, python=python_version(), packages=package_versions(),
        created=time.time(), client=client_id(), has_reducer=has_reducer,
        reducer=reducer_name)
    return spec, manifest
