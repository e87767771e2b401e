"""Futures as task arguments: references in the payload, values read on the worker.

A ``fanout.Future`` anywhere in a task's arguments (inside tuples, lists, dicts, sets,
dataclasses, any object pickle walks through) is pickled as a *reference*: a persistent id
``("fanout.future", job_id, task_index)``, never its value. The worker replaces each
reference by the upstream task's result, read from the backend's own store (the local
SQLite store; on AWS the results table and bucket), so a value never travels through the
client. What the client keeps is the set of input futures per task; a backend starts a task
only once its own inputs are done (:func:`ready`), never at a barrier.

Cycles cannot happen: a future exists only once ``submit``/``map`` has returned it, and a
task's arguments are fixed when it is submitted, so a task can only refer to tasks
submitted before it. Both sides stay free for calls without futures: the client pickles
with the plain pickler first (a future cannot be pickled by value, it holds a lock) and the
worker loads with the plain unpickler first (it stops at the first reference).
"""

from __future__ import annotations

import concurrent.futures
import io
import pickle
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import cloudpickle

from . import serialization
from .collector import rebuild_exception
from .errors import DependencyFailed, InvalidArgument, SerializationError
from .future import Future
from .protocol import CANCELLED, FAILED, SUCCEEDED, ResultRecord, now

REFERENCE = "fanout.future"


class ResultSource(Protocol):
    """What resolving a reference needs from a store: one record, and its value."""

    def result(self, job_id: str, task_index: int) -> ResultRecord | None: ...

    def load_value(self, record: ResultRecord) -> bytes: ...


def _location(source: object) -> object:
    where = getattr(source, "store_location", None)
    return where() if callable(where) else ("object", id(source))


def _checker(backend: object) -> Callable[[Future], None]:
    """Refuse a future whose result lives in a store this backend's workers cannot read."""
    here = _location(backend)

    def check(future: Future) -> None:
        source = future._source
        if source is backend or _location(source) == here:
            return
        raise InvalidArgument(
            f"task {future.task_index} of job {future.job_id} ran on {source!r}, whose results "
            f"this executor's workers ({backend!r}) cannot read: a future can be an argument "
            "only on the backend and store that run it. Pass future.result() instead.")

    return check


class _ReferencePickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle, with every ``fanout.Future`` written as a reference and collected."""

    def __init__(self, out: io.BytesIO, check: Callable[[Future], None]) -> None:
        super().__init__(out, protocol=serialization.PROTOCOL)
        self._check = check
        self.inputs: dict[tuple[str, int], Future] = {}

    def persistent_id(self, obj: Any) -> tuple[str, str, int] | None:
        if isinstance(obj, Future):
            self._check(obj)
            self.inputs.setdefault((obj.job_id, obj.task_index), obj)
            return (REFERENCE, obj.job_id, obj.task_index)
        if isinstance(obj, concurrent.futures.Future):
            raise SerializationError(
                f"{obj!r} is a concurrent.futures.Future from another executor; only a "
                "fanout.Future can be a task's argument (it is replaced by its result on the "
                "worker). Pass its .result() instead.")
        return None


def dumps_call(args: Sequence[Any], kwargs: Mapping[str, Any], backend: object
               ) -> tuple[bytes, tuple[Future, ...]]:
    """One task's pickled ``(args, kwargs)`` and the futures it reads, in first-use order."""
    try:
        return bytes(cloudpickle.dumps((tuple(args), dict(kwargs)),
                                       protocol=serialization.PROTOCOL)), ()
    except Exception:
        pass  # maybe a future (or a real mistake: the reference pickler names it)
    out = io.BytesIO()
    pickler = _ReferencePickler(out, _checker(backend))
    try:
        pickler.dump((tuple(args), dict(kwargs)))
    except (SerializationError, InvalidArgument):
        raise
    except Exception as exc:
        raise SerializationError(serialization.call_failure(args, kwargs, exc)) from exc
    return out.getvalue(), tuple(pickler.inputs.values())


class TaskInputs:
    """The input futures of a job's tasks, by task index, noted as the payloads are pickled.

    Payloads may be produced lazily (a ``map`` over a generator), so this fills in as the
    backend consumes :meth:`payloads`; it is complete once the job's payload is written.
    """

    def __init__(self, backend: object) -> None:
        self.backend = backend
        self.by_task: dict[int, tuple[Future, ...]] = {}

    def payloads(self, calls: Iterable[tuple[Any, ...]]) -> Iterator[bytes]:
        for index, args in enumerate(calls):
            blob, futures = dumps_call(args, {}, self.backend)
            if futures:
                self.by_task[index] = futures
            yield blob


def ready(futures: Iterable[Future]) -> bool:
    """True once every input is settled (succeeded, failed or cancelled): the task may go.

    A failed or cancelled input does not cancel its dependent on the client: the dependent
    runs, and its worker records ``DependencyFailed`` from the stored upstream record, so
    the failure is in the store like any other task's and ``fanout retry`` can re-run it.
    """
    return all(f.done() for f in futures)


class RecordStore(Protocol):
    def put_result(self, record: ResultRecord) -> ResultRecord: ...


def record_cancelled(store: RecordStore, futures: Iterable[Future]) -> None:
    """Store a CANCELLED record for each input cancelled on the client before it ran.

    A cancelled future settles at once, but its record is written only when its backend
    next looks at it; its dependent, released now, must find it. The conditional put keeps
    any record already there (the task ran after all), so this never hides a result.
    """
    stamp = now()
    for future in futures:
        if future.cancelled():
            store.put_result(ResultRecord(future.job_id, future.task_index, CANCELLED, 1, "",
                                          stamp, stamp))


def _upstream_error(record: ResultRecord) -> tuple[BaseException, str]:
    if record.status == CANCELLED:
        return concurrent.futures.CancelledError(
            f"task {record.task_index} of job {record.job_id} was cancelled"), ""
    return rebuild_exception(record), record.traceback or ""


def _record(source: ResultSource, job_id: str, task_index: int) -> ResultRecord | None:
    """The input's record; a call of a packed map's chunk (``fanout.packing``) gets the one
    derived from its chunk's record."""
    load_spec = getattr(source, "load_spec", None)
    pack = load_spec(job_id).options.pack if callable(load_spec) and task_index >= 0 else 0
    if not pack:
        return source.result(job_id, task_index)
    from . import packing  # it imports this module's neighbours; only needed here

    chunk = source.result(job_id, task_index // pack)
    if chunk is None or not packing.is_outcome(chunk):
        return chunk  # not finished, or lost or cancelled as a whole: each call shares it
    unrolled = packing.outcome(chunk, pack, source.load_value)
    offset = task_index - unrolled.first
    fields = unrolled.failures.get(offset)
    value = None if fields is not None else serialization.dumps_value(unrolled.values[offset])
    return packing.element_record(chunk, task_index, fields, value)


def resolve(source: ResultSource, job_id: str, task_index: int) -> Any:
    """The stored result of an input task, or ``DependencyFailed`` naming it."""
    record = _record(source, job_id, task_index)
    where = f"task {task_index} of job {job_id}"
    if record is None or record.status not in (SUCCEEDED, FAILED, CANCELLED):
        raise DependencyFailed(
            f"this task's input, {where}, has no result in the store (it has not finished, "
            f"or its job stopped first): run or `fanout retry {job_id}` first, then retry "
            "this job", job_id, task_index, "missing")
    if record.status == SUCCEEDED:
        return serialization.loads(source.load_value(record))
    cause, text = _upstream_error(record)
    what = "was cancelled" if record.status == CANCELLED else \
        f"failed with {record.exc_type or 'an error'}: {record.exc_message or ''}".rstrip(": ")
    raise DependencyFailed(
        f"this task's input, {where}, {what}; this task did not run. Fix or retry job "
        f"{job_id} (`fanout retry {job_id}`), then retry this job", job_id, task_index,
        record.status, cause, text)


class _ReferenceUnpickler(pickle.Unpickler):
    def __init__(self, data: bytes | memoryview, source: ResultSource) -> None:
        super().__init__(io.BytesIO(data))
        self._source = source
        self._values: dict[tuple[str, int], Any] = {}

    def persistent_load(self, pid: Any) -> Any:
        if not (isinstance(pid, tuple) and len(pid) == 3 and pid[0] == REFERENCE):
            raise pickle.UnpicklingError(f"unknown persistent id {pid!r} in a task's arguments")
        key = (str(pid[1]), int(pid[2]))
        if key not in self._values:
            self._values[key] = resolve(self._source, *key)
        return self._values[key]


def loads_call(data: bytes | memoryview, source: ResultSource) -> Any:
    """A task's ``(args, kwargs)`` with every reference replaced by its input's result."""
    try:
        return serialization.loads(data)
    except pickle.UnpicklingError as exc:
        if "persistent" not in str(exc):
            raise
    return _ReferenceUnpickler(data, source).load()
