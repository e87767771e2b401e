"""What a backend provides; the executor, ``Job`` and the CLI use nothing else.

A backend owns a store (where payloads and records live) and a way to run chunks. The
task protocol, the worker runtime and the collector are shared; a backend only moves
bytes and starts work.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..collector import JobRun
from ..errors import ScheduleNotFound
from ..future import Future
from ..options import TaskOptions
from ..protocol import JobSpec, ResultRecord
from ..schedules import ScheduleRequest, ScheduleSpec
from .job_store import JobStore

if TYPE_CHECKING:
    from ..dependencies import TaskInputs


@dataclass
class JobRequest:
    """One ``map``/``starmap``/``map_reduce`` call, serialized and ready to upload."""

    kind: str
    function: bytes
    function_name: str
    payloads: Iterable[bytes]  # one pickled (args, kwargs) per task, in task order
    options: TaskOptions
    seed: int
    reducer: bytes | None = None
    reducer_name: str | None = None
    progress: Any = None  # a tqdm-like bar, or None
    #: The futures each task takes as arguments (filled in as ``payloads`` is consumed).
    inputs: TaskInputs | None = None
    #: ``payloads`` is only the first window of a map whose input is read as results are
    #: consumed; more tasks follow through :meth:`Backend.extend_job`.
    streaming: bool = False
    expected_tasks: int | None = None  # the input's length where it is known (progress)


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    spec: JobSpec
    state: str  # running | finished | cancelled
    summary: dict[str, Any] | None
    owner: str | None  # where the driving client runs, for messages
    orphaned: bool  # running, but its driving client process is gone


#: The backend's store: a :class:`JobStore` (local: SQLite and files; aws: S3 and DynamoDB).
StoreT = TypeVar("StoreT", bound=JobStore)


class Backend(ABC, Generic[StoreT]):
    name: str

    # -- running work (an executor's backend) ----------------------------------------------

    @abstractmethod
    def start_job(self, request: JobRequest) -> JobRun: ...

    #: Whether a job can receive tasks after it started (``extend_job``); a backend that
    #: cannot gets a long ``map``'s whole input at once.
    supports_streaming = False

    def extend_job(self, run: JobRun, payloads: list[bytes]) -> list[Future]:
        """Append tasks to the open job ``run`` (started with ``streaming=True``)."""
        raise NotImplementedError(f"backend {self.name!r} cannot append tasks to a job")

    def seal_job(self, run: JobRun) -> None:
        """No more tasks for ``run``: the job ends once the ones it has are settled."""
        run.seal()

    @abstractmethod
    def submit(self, fn_key: object, function: bytes, function_name: str, payload: bytes,
               options: TaskOptions, seed: int, inputs: tuple[Future, ...] = ()) -> Future:
        """Queue one call; ``inputs`` are the futures among its arguments (it waits for them)."""

    def store_location(self) -> tuple[str, ...]:
        """Which store this backend's workers read: futures from the same one can be inputs."""
        return (self.name, str(id(self)))

    @abstractmethod
    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None: ...

    def shutdown_at_exit(self) -> None:
        """The interpreter is exiting without ``shutdown()``: finish what must not be lost.

        Local work runs in this process's children, so it is completed (as the stdlib's
        executors do); a remote backend only makes sure submitted work has been sent.
        """
        self.shutdown(wait=True)

    # -- jobs, also from a process that did not start them ---------------------------------

    @abstractmethod
    def job_info(self, job_id: str) -> JobInfo: ...

    @abstractmethod
    def list_jobs(self, limit: int = 50) -> list[JobInfo]: ...

    # Every store speaks JobStore, so reading records is the same on every backend.
    store: StoreT

    def records_since(self, job_id: str, seq: int) -> tuple[list[ResultRecord], int]:
        """Records written after ``seq``; returns them and the new ``seq``."""
        result: tuple[list[ResultRecord], int] = self.store.results_since(job_id, seq)
        return result

    def records(self, job_id: str) -> list[ResultRecord]:
        records: list[ResultRecord] = self.store.results(job_id)
        return records

    def record(self, job_id: str, task_index: int) -> ResultRecord | None:
        record: ResultRecord | None = self.store.result(job_id, task_index)
        return record

    @abstractmethod
    def counts(self, job_id: str) -> dict[str, int]: ...

    def load_value(self, record: ResultRecord) -> bytes:
        value: bytes = self.store.load_value(record)
        return value

    @abstractmethod
    def cancel_job(self, job_id: str) -> None: ...

    @abstractmethod
    def retry_job(self, job_id: str, progress: Any = None) -> dict[str, int]: ...

    # -- schedules (a backend without them lists none and refuses to make one) ------------

    def _no_schedules(self) -> NotImplementedError:
        return NotImplementedError(f"backend {self.name!r} has no schedules")

    def put_schedule(self, request: ScheduleRequest) -> ScheduleSpec:
        raise self._no_schedules()

    def _no_schedule(self, name: str) -> ScheduleNotFound:
        return ScheduleNotFound(f"no schedule {name!r}: backend {self.name!r} has no "
                                "schedules")

    def get_schedule(self, name: str) -> ScheduleSpec:
        raise self._no_schedule(name)

    def list_schedules(self) -> list[ScheduleSpec]:
        return []

    def set_schedule_enabled(self, name: str, enabled: bool) -> ScheduleSpec:
        raise self._no_schedule(name)

    def delete_schedule(self, name: str) -> None:
        raise self._no_schedule(name)

    def schedule_runs(self, name: str) -> list[dict[str, Any]]:
        raise self._no_schedule(name)

    def logs(self, job_id: str, task_index: int, stream: str = "both") -> str:
        record = self.record(job_id, task_index)
        if record is None:
            return ""
        if stream == "stdout":
            return record.stdout
        if stream == "stderr":
            return record.stderr
        return record.stdout + record.stderr
