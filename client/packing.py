"""Packed chunks: ``map(f, xs, chunksize=n)`` (n > 1) runs, stores and delivers a chunk as one.

A call of ten microseconds cannot afford a durable record, a pickle, a message and a
``Future`` of its own (about 100 us together); ProcessPoolExecutor's ``map`` does ~1 us
per call because a chunk is one call (``concurrent.futures.process._process_chunk``). A
user who passes ``chunksize`` to ``map`` has said her calls are that small, so fanout
then does the same, once for every backend, in the layers they share:

* client (:func:`pack_payloads`): a chunk's argument tuples are pickled as one list, and
  the chunk is one task of the job (``TaskOptions.pack`` = calls per chunk; the job's
  tasks, manifest, attempts and records are chunks).
* worker (:func:`run_pack`, called by ``WorkerRuntime``): the calls run in order, each with
  its own task context (``fanout.task_seed()`` / ``task_rng()`` give what the same call
  gets as a task of its own: the seed depends on the job seed and the call's index
  only); an exception is that call's outcome and the next call runs. The chunk's record
  holds every call's outcome: ``(values, failures)``, one pickle. It is SUCCEEDED when every
  call succeeded, else FAILED (so a retry may replace it), with the first failure's
  exception on the record and ``extra`` = {"elements": n, "failed": k}.
* client (:class:`PackOutcome`): one future per chunk; ``map``'s iterator unrolls it in
  order, raising a failed call's exception (type and remote traceback) at that call's
  position after the results before it. Per-call futures exist only when asked for
  (``results.futures``, ``Job.futures()``), derived from the chunk's future.

A retry re-runs the chunks that did not fully succeed; inside one, the calls that
succeeded on an earlier attempt keep that result (read from the stored record) and only
the others run again, so a call's first success stands.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import random
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from . import serialization
from .context import ElementContext, swap
from .errors import SerializationError
from .future import Future, LogSource
from .protocol import FAILED, SUCCEEDED, JobSpec, ResultRecord
from .states import FINAL_STATES, TaskState

if TYPE_CHECKING:
    from .dependencies import TaskInputs
    from .protocol import TaskStore

#: ``ResultRecord.extra`` keys of a packed chunk's record.
ELEMENTS = "elements"
FAILURES = "failed"


def element_range(pack: int, pack_index: int) -> int:
    """The index of the first call of chunk ``pack_index`` (every chunk but the last is full)."""
    return pack * pack_index


# -- client: from calls to chunks ---------------------------------------------------------


class Packer:
    """Pickles a map's calls ``size`` at a time, one payload per chunk, counting them."""

    def __init__(self, size: int, inputs: TaskInputs) -> None:
        self.size = size
        self.inputs = inputs
        self.elements = 0  # calls packed so far
        self.chunks = 0

    def payloads(self, calls: Iterable[tuple[Any, ...]]) -> Iterator[bytes]:
        """One ``((calls,), {})`` pickle per chunk; futures among them are the chunk's inputs."""
        from .dependencies import dumps_call  # it imports the collector, which imports us

        it = iter(calls)
        while True:
            group = list(itertools.islice(it, self.size))
            if not group:
                return
            blob, futures = dumps_call((group,), {}, self.inputs.backend)
            if futures:
                self.inputs.by_task[self.chunks] = futures
            self.chunks += 1
            self.elements += len(group)
            yield blob


# -- worker: one chunk's calls ---------------------------------------------------------------


@dataclass
class PackRun:
    """What :func:`run_pack` returns: every call's value (None where it failed) and failures."""

    values: list[Any]
    failures: dict[int, dict[str, Any]]  # offset in the chunk -> exception_fields(...)


def run_pack(fn: Callable[..., Any], calls: list[tuple[Any, ...]], spec: JobSpec,
             pack_index: int, attempt: int, store: TaskStore,
             exception_fields: Callable[[BaseException], dict[str, Any]],
             interruptible: bool = False) -> PackRun:
    """Run a chunk's calls in order, each in its own task context; see the module docstring.

    On a later attempt the calls that succeeded before keep their stored value. A
    ``KeyboardInterrupt`` stops the chunk when ``interruptible`` (the inline backend: the
    caller pressed Ctrl-C); elsewhere, as any exception, it is that call's outcome.
    """
    first = element_range(spec.options.pack, pack_index)
    earlier = _earlier(store, spec, pack_index) if attempt > 1 else None
    values: list[Any] = []
    failures: dict[int, dict[str, Any]] = {}
    ctx = ElementContext(spec.job_id, first, attempt, spec.seed, store)
    append = values.append
    previous = swap(ctx)
    reseed = LazyGlobalSeeds(ctx)  # the chunk's runner seeded the globals for call ``first``
    try:
        for offset, args in enumerate(calls):
            if earlier is not None and offset < len(earlier.values) and \
                    offset not in earlier.failures:
                append(earlier.values[offset])
                continue
            ctx.task_index = first + offset
            try:
                append(fn(*args))
            except BaseException as exc:  # a call's exception (even SystemExit) is its outcome
                if isinstance(exc, KeyboardInterrupt) and interruptible:
                    raise
                append(None)
                failures[offset] = exception_fields(exc)
    finally:
        reseed.restore()
        swap(previous)
    return PackRun(values, failures)


_targets: list[tuple[Any, str]] | None = None


def _global_rng_functions() -> list[tuple[Any, str]]:
    """(module, name) of each module-level function bound to a global RNG: ``random``'s,
    and numpy's legacy ``np.random.*`` once numpy is imported."""
    global _targets
    numpy = sys.modules.get("numpy")
    if _targets is None or (numpy is not None and not any(m is not random
                                                          for m, _ in _targets)):
        found: list[tuple[Any, str]] = []
        owners: list[tuple[Any, Any]] = [(random, getattr(random, "_inst", None))]
        if numpy is not None:
            legacy = getattr(getattr(numpy.random, "mtrand", None), "_rand", None)
            owners.append((numpy.random, legacy))
        for module, instance in owners:
            if instance is None:
                continue
            for name in dir(module):
                if getattr(getattr(module, name, None), "__self__", None) is instance:
                    found.append((module, name))
        _targets = found
    return _targets


class LazyGlobalSeeds:
    """Seeds the global RNGs for a packed chunk's call only if the call uses them.

    A task seeds ``random`` and numpy's legacy global RNG from its own seed before it
    starts (``context.running``), so a seeded job's draws do not depend on how it was
    chunked. That costs tens of microseconds, far more than a short call, and most calls
    never draw. For the length of a packed chunk, each module-level function bound to a
    global RNG (``random.random``, ``np.random.rand``, ``random.seed``, ...) is replaced by
    a wrapper that seeds both, once per call, from the running call's seed before the
    call's first use of either, then does what was asked: so a call that seeds one of them
    itself (``random.seed(x)``) keeps its choice there and still finds the other seeded
    from its own seed, as a task of its own would. A function bound by name before the
    chunk (``from random import random`` at import) bypasses the wrapper and draws from
    the chunk's stream, seeded once for its first call.
    """

    def __init__(self, ctx: ElementContext) -> None:
        self.ctx = ctx
        self.seeded = ctx.task_index
        self.saved: list[tuple[Any, str, Any]] = []
        for module, name in _global_rng_functions():
            real = getattr(module, name)
            self.saved.append((module, name, real))
            setattr(module, name, self._wrap(real))

    def _seed(self) -> None:
        index = self.ctx.task_index
        if self.seeded != index:
            self.seeded = index
            seed = self.ctx.seed
            self._real(random, "seed")(seed)
            numpy = sys.modules.get("numpy")
            if numpy is not None:
                self._real(numpy.random, "seed")(seed % 2**32)

    def _real(self, module: Any, name: str) -> Any:
        for owner, saved_name, real in self.saved:
            if owner is module and saved_name == name:
                return real
        return getattr(module, name)

    def _wrap(self, real: Callable[..., Any]) -> Callable[..., Any]:
        ctx = self.ctx

        def use(*args: Any, **kwargs: Any) -> Any:
            if self.seeded != ctx.task_index:
                self._seed()
            return real(*args, **kwargs)
        return use

    def restore(self) -> None:
        for module, name, real in reversed(self.saved):
            setattr(module, name, real)
        self.saved = []


def _earlier(store: TaskStore, spec: JobSpec, pack_index: int) -> PackRun | None:
    """The chunk's stored outcome from an earlier attempt, if it has per-call outcomes."""
    try:
        record = store.result(spec.job_id, pack_index)
        if record is None or (record.value is None and record.value_ref is None):
            return None
        values, failures = serialization.loads(store.load_value(record))
        return PackRun(list(values), dict(failures))
    except Exception:  # unreadable: run every call again, nothing is lost by that
        return None


def encode(run: PackRun, exception_fields: Callable[[BaseException], dict[str, Any]]
           ) -> bytes:
    """The chunk's value: one pickle of ``(values, failures)``.

    A value that cannot be pickled fails its own call (as a task's unpicklable result
    fails that task), not the chunk: the list is then pickled call by call to find it.
    """
    try:
        return serialization.dumps_value((run.values, run.failures))
    except BaseException:
        pass
    for offset, value in enumerate(run.values):
        if offset in run.failures:
            continue
        try:
            serialization.dumps_value(value)
        except BaseException as exc:
            run.values[offset] = None
            run.failures[offset] = exception_fields(exc)
    return serialization.dumps_value((run.values, run.failures))


def finish_record(record: ResultRecord, run: PackRun) -> None:
    """Status, counts and the first failure's exception on a chunk's record."""
    record.extra[ELEMENTS] = len(run.values)
    record.extra[FAILURES] = len(run.failures)
    if run.failures:
        record.status = FAILED
        first = run.failures[min(run.failures)]
        for key, value in first.items():
            setattr(record, key, value)
    else:
        record.status = SUCCEEDED


# -- client: from a chunk's record to its calls' outcomes ------------------------------------


class PackOutcome:
    """A chunk's outcome as its future holds it: every call's result or exception."""

    def __init__(self, record: ResultRecord, first: int, values: list[Any],
                 failures: dict[int, dict[str, Any]]) -> None:
        self.record = record
        self.first = first
        self.values = values
        self.failures = failures

    def __len__(self) -> int:
        return len(self.values)

    def error(self, offset: int) -> BaseException | None:
        """The exception of call ``offset`` (rebuilt afresh: type, message, remote traceback)."""
        fields = self.failures.get(offset)
        if fields is None:
            return None
        from .collector import rebuild_exception  # it imports this module

        return rebuild_exception(element_record(self.record, self.first + offset, fields))


def element_record(record: ResultRecord, index: int, fields: dict[str, Any] | None = None,
                   value: bytes | None = None) -> ResultRecord:
    """The record call ``index`` of a chunk would have as a task of its own."""
    out = replace(record, task_index=index, value=value, value_ref=None, exc_type=None,
                  exc_message=None, traceback=None, exc_pickle=None, extra={})
    if fields is not None:
        out.status = FAILED
        for key, val in fields.items():
            setattr(out, key, val)
    else:
        out.status = SUCCEEDED
    return out


def is_outcome(record: ResultRecord) -> bool:
    """A chunk's record that holds its calls' outcomes (not a lost or cancelled chunk)."""
    return record.status in (SUCCEEDED, FAILED) and (
        record.value is not None or record.value_ref is not None)


def outcome(record: ResultRecord, pack: int, load_value: Callable[[ResultRecord], bytes]
            ) -> PackOutcome:
    """Decode a chunk's record; a value that cannot be loaded here is a SerializationError."""
    try:
        values, failures = serialization.loads(load_value(record))
    except BaseException as exc:
        raise SerializationError(
            f"chunk {record.task_index} of job {record.job_id} finished, but its results "
            f"cannot be unpickled in this process: {exc!r}. Import the modules that define "
            "the results' types here.") from exc
    return PackOutcome(record, element_range(pack, record.task_index), list(values),
                       dict(failures))


def element_records(records: Iterable[ResultRecord], pack: int,
                    load_value: Callable[[ResultRecord], bytes]) -> list[ResultRecord]:
    """Per-call records derived from chunks' records (``Job.records()``, ``fanout results``).

    A chunk lost or cancelled as a whole gives each of its calls that outcome; the
    number of calls of such a chunk is ``pack`` (its ``extra`` says, when it ran).
    """
    out: list[ResultRecord] = []
    for record in records:
        first = element_range(pack, record.task_index)
        if not is_outcome(record):
            count = int(record.extra.get(ELEMENTS, pack))
            out.extend(replace(record, task_index=first + k, extra=dict(record.extra))
                       for k in range(count))
            continue
        done = outcome(record, pack, load_value)
        for offset, value in enumerate(done.values):
            fields = done.failures.get(offset)
            blob = None if fields is not None else serialization.dumps_value(value)
            out.append(element_record(record, first + offset, fields, blob))
    return out


def final_counts(records: Iterable[ResultRecord], pack: int,
                 n_elements: int | None = None) -> dict[str, int]:
    """Final states counted in calls, from chunks' records (their ``extra`` has the calls'
    counts; a chunk lost or cancelled as a whole counts its calls: ``pack``, or fewer for
    the last one when ``n_elements`` is known)."""
    counts: dict[str, int] = {}
    for record in records:
        if record.status not in FINAL_STATES:
            continue
        whole = pack if n_elements is None else min(pack, n_elements - pack * record.task_index)
        n = int(record.extra.get(ELEMENTS, whole))
        if record.status in (SUCCEEDED, FAILED) and ELEMENTS in record.extra:
            failed = int(record.extra.get(FAILURES, 0))
            counts[SUCCEEDED] = counts.get(SUCCEEDED, 0) + n - failed
            counts[FAILED] = counts.get(FAILED, 0) + failed
        else:
            counts[record.status] = counts.get(record.status, 0) + n
    return counts


def element_counts(records: Iterable[ResultRecord], n_elements: int, pack: int,
                   running_chunks: int) -> dict[str, int]:
    """Every task state's count in calls (``fanout status`` of a packed job)."""
    stored = final_counts(records, pack, n_elements)
    counts = {state.value: stored.get(state, 0) for state in TaskState}
    counts[TaskState.RUNNING] = min(running_chunks * pack, n_elements)
    finished = sum(counts[state] for state in FINAL_STATES)
    counts[TaskState.PENDING] = max(0, n_elements - finished - counts[TaskState.RUNNING])
    return counts


def element_count(store: Any, spec: JobSpec) -> int:
    """How many calls a packed job has: full chunks, plus the last one's (read from its
    payload: only the last chunk may be short)."""
    pack = spec.options.pack
    if spec.n_tasks == 0:
        return 0
    last = [t for chunk in store.manifest(spec.job_id) for t in chunk.tasks
            if t.index == spec.n_tasks - 1]
    if not last:
        return spec.n_tasks * pack
    from .dependencies import loads_call

    args, _ = loads_call(store.read_task(spec.job_id, last[0]), store)
    return (spec.n_tasks - 1) * pack + len(args[0])


# -- client: per-call futures, only when asked for -------------------------------------------


class ElementLogs:
    """A call's ``future.logs()``: its chunk's captured output (calls share their chunk's)."""

    def __init__(self, source: LogSource, pack: int) -> None:
        self.source = source
        self.pack = pack

    def logs(self, job_id: str, task_index: int, stream: str = "both") -> str:
        return self.source.logs(job_id, task_index // self.pack, stream)

    def store_location(self) -> object:
        """Where the call's result lives: its chunk's store (a future as an argument)."""
        where = getattr(self.source, "store_location", None)
        return where() if callable(where) else ("object", id(self.source))


def element_futures(chunk: Future, first: int, count: int, source: ElementLogs) -> list[Future]:
    """Futures of calls ``first .. first + count - 1``, settled from ``chunk``'s.

    A call's future may be settled before the chunk's callback reaches it: cancelled by its
    user, or by the map's iterator, which settles each call it yields before it frees the
    value (``executor.MapIterator._forget``), possibly while this callback runs on another
    thread. So each is settled unless it is done, as one step: the first outcome stands.
    """
    futures = [Future(chunk.job_id, first + k, source) for k in range(count)]

    def settle(done: concurrent.futures.Future[Any]) -> None:
        try:
            packed: PackOutcome = done.result()
        except concurrent.futures.CancelledError:
            for future in futures:
                if future.cancel():
                    future.set_running_or_notify_cancel()
            futures.clear()
            return
        except BaseException as exc:
            for future in futures:
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(exc)
            futures.clear()
            return
        for k, future in enumerate(futures):
            error = packed.error(k)
            with contextlib.suppress(concurrent.futures.InvalidStateError):
                if error is not None:
                    future.set_exception(error)
                elif k < len(packed.values):
                    future.set_result(packed.values[k])
        # The chunk's future keeps this callback (and so this list) for as long as it
        # lives; the per-call futures, and the results they hold, must not live that long.
        futures.clear()

    made = list(futures)  # settle() empties its own list once it ran
    chunk.add_done_callback(settle)
    return made

