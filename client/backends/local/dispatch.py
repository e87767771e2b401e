"""What the supervisor queues and hands to workers: a chunk of one job's tasks, and its run."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...collector import JobRun
from ...protocol import REDUCE_INDEX, Chunk

#: Work a worker may hold queued beyond the task it runs, when tasks are measured short.
BATCH_SECONDS = 0.05
BATCH_MAX_TASKS = 512


@dataclass(slots=True)
class Dispatch:
    """A chunk (or a job's reduce step) waiting for, or held by, a worker."""

    run: JobRun
    chunk: Chunk
    done: int = 0  # tasks of this chunk already reported

    @property
    def is_reduce(self) -> bool:
        return self.chunk.index == REDUCE_INDEX

    @property
    def size(self) -> int:
        return 1 if self.is_reduce else len(self.chunk.tasks)

    def current_task(self) -> int:
        return REDUCE_INDEX if self.is_reduce else self.chunk.tasks[self.done].index


def expected_seconds(dispatch: Dispatch, done: int) -> float:
    mean = dispatch.run.mean_seconds
    if mean is None or dispatch.is_reduce:
        return BATCH_SECONDS  # unknown: count it as a full batch of work
    return (dispatch.size - done) * mean


def rechunk(chunk: Chunk, tasks: tuple[Any, ...]) -> Chunk:
    return Chunk(chunk.job_id, chunk.index, chunk.tier, chunk.attempt, tasks)
