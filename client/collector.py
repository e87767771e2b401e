"""Result records become future outcomes here, the same way on every backend.

A :class:`JobRun` is the client's live view of one job: one future per task (and one for
the reduce step), a progress bar, and :meth:`JobRun.deliver`, which a backend calls with
each record it learns of — from a worker's message locally, from a poll on AWS.
"""

from __future__ import annotations

import contextlib
import pickle
import threading
import weakref
from collections.abc import Callable
from concurrent.futures import CancelledError, InvalidStateError
from typing import Any

from . import packing, serialization
from .errors import RemoteError, SerializationError
from .future import Future
from .protocol import CANCELLED, FAILED, REDUCE_INDEX, SUCCEEDED, JobSpec, ResultRecord


class RemoteTraceback(Exception):
    """Attached as ``__cause__`` of a re-raised task exception, as ProcessPoolExecutor does."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def rebuild_exception(record: ResultRecord) -> BaseException:
    """The task's own exception when it unpickles here; a RemoteError otherwise."""
    exc: BaseException | None = None
    if record.exc_pickle:
        try:
            loaded = pickle.loads(record.exc_pickle)
            if isinstance(loaded, BaseException):
                exc = loaded
        except BaseException:
            exc = None
    if exc is None:
        exc = RemoteError(record.exc_type or "Exception", record.exc_message or "",
                          record.traceback or "")
    if record.traceback and exc.__cause__ is None:  # DependencyFailed brings its input's
        exc.__cause__ = RemoteTraceback(f'\n"""\n{record.traceback.rstrip()}\n"""')
    return exc


def resolve(future: Future, record: ResultRecord, load_value: Callable[[ResultRecord], bytes],
            pack: int = 0) -> None:
    """Settle ``future`` from ``record`` unless the future is already settled.

    A packed chunk's record (``pack`` > 0) that holds its calls' outcomes settles the
    chunk's future with a :class:`~fanout.packing.PackOutcome`, even when some calls failed:
    their exceptions are raised at their own positions by whoever unrolls it.
    """
    if future.done():
        return
    try:
        if pack and packing.is_outcome(record):
            try:
                unrolled = packing.outcome(record, pack, load_value)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(unrolled)
        elif record.status == SUCCEEDED:
            try:
                value = serialization.loads(load_value(record))
            except BaseException as exc:
                # it concerns this one result, never the thread that delivers the others.
                failure: BaseException = SerializationError(
                    f"task {record.task_index} of job {record.job_id} succeeded, but its result "
                    f"cannot be unpickled in this process: {exc!r}. Import the modules that "
                    "define the result's types here."
                )
                failure.__cause__ = exc
                future.set_exception(failure)
            else:
                future.set_result(value)
        elif record.status == CANCELLED:
            if future.cancel():
                future.set_running_or_notify_cancel()
            else:
                future.set_exception(CancelledError(
                    f"task {record.task_index} of job {record.job_id} was cancelled"))
        else:
            future.set_exception(rebuild_exception(record))
    except InvalidStateError:
        pass  # another thread settled it first: the first outcome stands


class JobRun:
    """One job as this client process follows it."""

    def __init__(
        self,
        spec: JobSpec,
        futures: list[Future],
        load_value: Callable[[ResultRecord], bytes],
        reduce_future: Future | None = None,
        progress: Any = None,
        streaming: bool = False,
    ) -> None:
        self.spec = spec
        #: Every future of the job, kept for ``Job.attach`` in this process; a streaming run
        #: hands its first ones to the map (:meth:`take_futures`) and keeps none, or its
        #: memory would grow with the input.
        self.futures = futures
        self.streaming = streaming
        #: False while a streaming map may still append tasks: the job is not finished
        #: when its tasks so far are, only once its input is exhausted (or abandoned).
        self.sealed = not streaming
        self.n_tasks = len(futures)
        self.reduce_future = reduce_future
        self.progress = progress
        self._load_value = load_value
        self._lock = threading.Lock()
        self._by_index = {f.task_index: f for f in futures}
        self._open = set(self._by_index)
        self.done = threading.Event()  # every future is settled
        self.stored = threading.Event()  # ...and the job's final state is in the store
        self.counts: dict[str, int] = {SUCCEEDED: 0, FAILED: 0, CANCELLED: 0}
        self.first_failure: ResultRecord | None = None
        self.cancelled = False
        self.reduce_queued = False
        self.reduce_attempt = 1
        self.mean_seconds: float | None = None  # moving average of task durations
        #: The futures each task takes as arguments: it is started only once they are done.
        self.inputs: dict[int, tuple[Future, ...]] = {}
        #: The backend that runs this job inside this process's own calls (``inline``), so
        #: another backend object here (``Job.attach``) asks it to cancel instead of
        #: waiting for an owner process to notice; None for every other backend.
        self.driver: Any = None
        if not self._open and reduce_future is None and self.sealed:
            self.done.set()

    def take_futures(self) -> list[Future]:
        """The futures given at the start; a streaming run forgets them here."""
        futures = self.futures
        if self.streaming:
            self.futures = []
        return futures

    def add(self, futures: list[Future]) -> None:
        """Tasks appended to a streaming job: follow their futures until they settle."""
        with self._lock:
            for future in futures:
                self._by_index[future.task_index] = future
                self._open.add(future.task_index)
            self.n_tasks += len(futures)

    def seal(self) -> None:
        """No more tasks will be appended: the job finishes once the ones it has settle."""
        with self._lock:
            self.sealed = True
            finished = not self._open
        if finished and self.reduce_future is None:
            self._advance_progress(True)
            self._finish()

    def future(self, task_index: int) -> Future:
        """The task's future; for a streaming run's settled task, a stand-in that is done.

        A streaming run forgets a future once its record is applied (the map's iterator
        holds it until it is yielded), so its result is freed once the caller drops it.
        """
        future = self._by_index.get(task_index)
        return _SETTLED if future is None else future

    def open_tasks(self) -> list[int]:
        with self._lock:
            return sorted(self._open)

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def map_finished(self) -> bool:
        return self.sealed and not self._open

    def deliver(self, record: ResultRecord) -> None:
        """Apply a stored record; duplicates and stale records are ignored."""
        if record.task_index == REDUCE_INDEX:
            if self.reduce_future is not None:
                resolve(self.reduce_future, record, self._load_value)
                self._finish()
            return
        with self._lock:
            if record.task_index not in self._open:
                return
            self._open.discard(record.task_index)
            future = self._settled(record.task_index)
            self.counts[record.status] = self.counts.get(record.status, 0) + 1
            if record.worker_id:
                mean = self.mean_seconds
                took = record.duration
                self.mean_seconds = took if mean is None else 0.8 * mean + 0.2 * took
            if record.status == FAILED and (
                self.first_failure is None or record.task_index < self.first_failure.task_index
            ):
                self.first_failure = record
            now_finished = self.sealed and not self._open
            self._advance_progress(now_finished)
        resolve(future, record, self._load_value, self.spec.options.pack)
        if now_finished and self.reduce_future is None:
            self._finish()

    def _settled(self, task_index: int) -> Future:
        """The future of a task whose outcome is known now (under ``_lock``)."""
        if self.streaming:
            return self._by_index.pop(task_index)
        return self._by_index[task_index]

    def _advance_progress(self, finished: bool) -> None:
        """Count a task on the bar; after the last one, end the bar's line.

        This runs before the task's future resolves, so the moment ``map`` hands back its
        last result the bar is complete and closed: a ``print`` right after the map starts
        on a line of its own instead of on the bar's.
        """
        bar = self.progress
        if bar is None:
            return
        bar.update(1)
        if finished:
            bar.close()
            self.progress = None

    def settle_error(self, task_index: int, error: BaseException) -> None:
        """Fail a task that has no record (its record could not be stored) with ``error``."""
        if task_index == REDUCE_INDEX:
            if self.reduce_future is not None and not self.reduce_future.done():
                with contextlib.suppress(InvalidStateError):
                    self.reduce_future.set_exception(error)
                self._finish()
            return
        with self._lock:
            if task_index not in self._open:
                return
            self._open.discard(task_index)
            future = self._settled(task_index)
            self.counts[FAILED] += 1
            now_finished = self.sealed and not self._open
            self._advance_progress(now_finished)
        with contextlib.suppress(InvalidStateError):
            future.set_exception(error)
        if now_finished and self.reduce_future is None:
            self._finish()

    def needs_reduce(self) -> bool:
        """True when every map task succeeded and the reducer has yet to run."""
        return (
            self.reduce_future is not None and self.map_finished and not self.reduce_future.done()
            and self.counts[SUCCEEDED] == self.n_tasks
        )

    def fail_reduce(self) -> None:
        """Settle the reduce future with the first failure in task order (as map raises)."""
        assert self.reduce_future is not None
        if self.first_failure is not None:
            resolve(self.reduce_future, self.first_failure, self._load_value)
        else:
            if self.reduce_future.cancel():
                self.reduce_future.set_running_or_notify_cancel()
        self._finish()

    def _finish(self) -> None:
        self.done.set()

    def close(self) -> None:
        """Called once the job's final state is stored: release the bar, wake waiters."""
        if self.progress is not None:
            self.progress.close()
            self.progress = None
        self.done.set()
        self.stored.set()


def _settled_future() -> Future:
    future = Future("", -2, _NoLogs())
    future.set_result(None)
    return future


class _NoLogs:
    def logs(self, job_id: str, task_index: int, stream: str = "both") -> str:
        return ""


#: What ``JobRun.future`` returns for a streaming run's task that has settled: it is done,
#: so a backend that looks at it (to claim or cancel a queued task) leaves it alone.
_SETTLED = _settled_future()

#: Jobs this process is driving right now, so ``Job.attach`` here shares their futures.
LIVE_RUNS: weakref.WeakValueDictionary[str, JobRun] = weakref.WeakValueDictionary()
