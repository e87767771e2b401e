"""The task protocol: what a job is, how its tasks are addressed, and what a result is.

Both backends speak exactly this. A task is followed by names:

``submit`` → payload (args pickled into a job's payload object, addressed by byte range)
→ manifest (``Chunk``s of ``TaskRef``s, each with its tier) → worker (``runtime.run_chunk``)
→ ``ResultRecord`` (one per task, put conditionally) → future (``collector.JobRun``).

The conditional put is the one rule that keeps results exact under retries: a record is
written if no record exists for (job, task), or if the stored one did not succeed and comes
from an earlier attempt. A success is never overwritten; an attempt never writes twice.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from .options import TaskOptions
from .states import TaskState

# Task states by their short names (the protocol's vocabulary since the first release).
SUCCEEDED = TaskState.SUCCEEDED
FAILED = TaskState.FAILED
CANCELLED = TaskState.CANCELLED
PENDING = TaskState.PENDING
RUNNING = TaskState.RUNNING
TASK_STATES = tuple(TaskState)

#: ``task_index`` of a job's reduce step (``map_reduce``); map tasks are 0..n_tasks-1.
REDUCE_INDEX = -1

#: Captured stdout/stderr kept per task: the tail, which is where the error usually is.
LOG_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class TaskRef:
    """Where one task's arguments are: a byte range of a payload object, and its seed."""

    index: int
    object: str
    offset: int
    length: int
    seed: int

    def __reduce__(self) -> tuple[type[TaskRef], tuple[int, str, int, int, int]]:
        # A chunk travels to a worker as a pickle of up to thousands of refs: a plain tuple
        # pickles several times faster than a slots dataclass's generic state.
        return TaskRef, (self.index, self.object, self.offset, self.length, self.seed)


@dataclass(frozen=True, slots=True)
class Chunk:
    """The unit a worker receives: tasks of one job run in order on one attempt."""

    job_id: str
    index: int
    tier: str
    attempt: int
    tasks: tuple[TaskRef, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "index": self.index,
            "tier": self.tier,
            "attempt": self.attempt,
            "tasks": [[t.index, t.object, t.offset, t.length, t.seed] for t in self.tasks],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Chunk:
        return cls(
            job_id=data["job_id"],
            index=data["index"],
            tier=data["tier"],
            attempt=data["attempt"],
            tasks=tuple(TaskRef(*t) for t in data["tasks"]),
        )


@dataclass(frozen=True)
class JobSpec:
    """Everything a worker needs to run a job's tasks, and a human needs to trust the run."""

    job_id: str
    kind: str  # "map" | "submit" | "map_reduce"
    function: str  # qualified name, for people
    n_tasks: int
    seed: int
    options: TaskOptions
    python: str
    packages: dict[str, str]
    created: float
    client: str
    has_reducer: bool = False
    reducer: str | None = None

    def to_json(self) -> str:
        data = asdict(self)
        data["options"] = self.options.to_json()
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobSpec:
        data = json.loads(text)
        data["options"] = TaskOptions.from_json(data["options"])
        return cls(**data)


@dataclass(slots=True)
class ResultRecord:
    """One task's outcome. Exactly one is kept per (job, task)."""

    job_id: str
    task_index: int
    status: str
    attempt: int
    worker_id: str
    started: float
    ended: float
    value: bytes | None = None
    value_ref: str | None = None  # pointer to a blob when the value is too large for a record
    exc_type: str | None = None
    exc_message: str | None = None
    traceback: str | None = None
    exc_pickle: bytes | None = None
    stdout: str = ""
    stderr: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return max(0.0, self.ended - self.started)

    def __reduce__(self) -> tuple[type[ResultRecord], tuple[Any, ...]]:
        # Workers send records to the supervisor in batches; see TaskRef.__reduce__.
        return ResultRecord, (self.job_id, self.task_index, self.status, self.attempt,
                              self.worker_id, self.started, self.ended, self.value,
                              self.value_ref, self.exc_type, self.exc_message, self.traceback,
                              self.exc_pickle, self.stdout, self.stderr, self.extra)


def retry_plan(manifest: list[Chunk], records: list[ResultRecord]) -> list[Chunk]:
    """The chunks that re-run a job's unsucceeded tasks, each at a later attempt.

    The attempt is one more than any stored attempt of the chunk's tasks, so the new results
    may replace the old failures under the conditional put, and a success stays untouched.
    """
    by_index = {r.task_index: r for r in records}
    chunks = []
    for chunk in manifest:
        todo = tuple(t for t in chunk.tasks
                     if t.index not in by_index or by_index[t.index].status != SUCCEEDED)
        if todo:
            attempt = 1 + max((by_index[t.index].attempt for t in todo if t.index in by_index),
                              default=0)
            chunks.append(Chunk(chunk.job_id, chunk.index, chunk.tier, attempt, todo))
    return chunks


def client_id() -> str:
    import os

    return f"{socket.gethostname()}/{os.getpid()}"


def version_mismatch(spec: JobSpec) -> str | None:
    """Return an error message if this interpreter cannot load the job's pickles."""
    client = tuple(int(p) for p in spec.python.split(".")[:2])
    worker = sys.version_info[:2]
    if client == worker:
        return None
    return (
        f"the client pickled this job with Python {client[0]}.{client[1]} but the worker runs "
        f"Python {worker[0]}.{worker[1]}; cloudpickle needs the same minor version on both "
        f"sides. Run the client with Python {worker[0]}.{worker[1]}, or deploy workers with "
        f"Python {client[0]}.{client[1]}."
    )


def now() -> float:
    return time.time()


class TaskStore(Protocol):
    """What the worker runtime needs from a backend's storage; one per backend."""

    def load_spec(self, job_id: str) -> JobSpec: ...

    def load_function(self, job_id: str, which: str) -> bytes:
        """The pickled ``"function"`` or ``"reducer"`` of a job."""
        ...

    def read_task(self, job_id: str, task: TaskRef) -> bytes: ...

    def result(self, job_id: str, task_index: int) -> ResultRecord | None:
        """One task's stored record: a task reads the results of the futures it was given."""
        ...

    def read_chunk(self, job_id: str, tasks: tuple[TaskRef, ...]) -> dict[int, bytes]:
        """Arguments of many tasks in one request, where that is cheaper (S3: one ranged
        GET); it may return fewer (none), and the runtime reads the rest with ``read_task``."""
        ...

    def put_result(self, record: ResultRecord) -> ResultRecord:
        """Conditionally store ``record``; return the record that is stored afterwards."""
        ...

    def results(self, job_id: str) -> list[ResultRecord]:
        """All map-task records of a job, in task order."""
        ...

    def put_value_blob(self, job_id: str, task_index: int, attempt: int, data: bytes) -> str: ...

    def load_value(self, record: ResultRecord) -> bytes: ...

    def delete_value_blob(self, ref: str) -> None: ...

    def get_checkpoint(self, job_id: str, task_index: int) -> bytes | None: ...

    def put_checkpoint(self, job_id: str, task_index: int, data: bytes) -> None: ...

    def delete_checkpoint(self, job_id: str, task_index: int) -> None: ...

    @property
    def max_record_value_bytes(self) -> int:
        """Values larger than this go to a blob with a pointer in the record."""
        ...
