"""``fanout.Executor``: a ``concurrent.futures.Executor`` whose tasks survive their workers.

Where the standard library documents executor behaviour, this one behaves the same, so
code written for ``ProcessPoolExecutor`` keeps working: ``map`` is ordered and raises
``TimeoutError`` from the iterator, ``submit`` after ``shutdown`` raises ``RuntimeError``,
``shutdown(cancel_futures=True)`` cancels what has not started, and a task's exception is
re-raised with the remote traceback as its ``__cause__``.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import itertools
import os
import shutil
import sys
import threading
import time
import types
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from . import s3_inputs, serialization
from .backends import Backend, JobRequest, backend_name, create_backend, worker_options
from .collector import JobRun
from .dependencies import TaskInputs, dumps_call
from .errors import ExecutorClosed, InvalidArgument, InvalidArgumentType
from .future import Future
from .options import TaskOptions
from .packing import ElementLogs, Packer, PackOutcome, element_futures
from .seeding import derive_seed, fresh_seed
from .streaming import AUTO, MapFeed, known_length, window_chunks, window_tasks

_FUNCTION_CACHE_SIZE = 256
#: A packed map's first segment, in chunks per worker (see ``Executor._map``).
HEAD_START_CHUNKS = 2
_live_backends: weakref.WeakSet[Backend[Any]] = weakref.WeakSet()


@atexit.register
def _finish_at_exit() -> None:
    """Like the stdlib's executors: work already submitted completes before exit."""
    for backend in list(_live_backends):
        backend.shutdown_at_exit()


def _weak_key(fn: Callable[..., Any]) -> tuple[object, Callable[[], object] | None]:
    """A cache key for ``fn`` and a weak reference that finds it again, if it has one."""
    try:
        if isinstance(fn, types.MethodType):
            return ("method", id(fn.__self__), id(fn.__func__)), weakref.WeakMethod(fn)
        return ("callable", id(fn)), weakref.ref(fn)
    except TypeError:
        return None, None


class _Shared:
    """State shared by an executor and the views ``options()`` returns."""

    def __init__(self, backend: Backend[Any]) -> None:
        self.backend = backend
        self.lock = threading.Lock()
        self.shutdown = False
        self.functions: OrderedDict[object, tuple[Callable[[], object], bytes, str]] = (
            OrderedDict())
        self.counters: dict[tuple[str, int], itertools.count[int]] = {}

    def function(self, fn: Callable[..., Any]) -> tuple[bytes, str]:
        """Pickle ``fn`` once per executor, without keeping ``fn`` (or its ``self``) alive.

        The cache holds weak references only, as the stdlib's executors hold no reference
        to a submitted callable once its call is queued (``test_no_stale_references``). A
        bound method is keyed by its object and function, since ``obj.method`` makes a new
        method object each time; a callable that takes no weak reference is not cached.
        """
        key, ref = _weak_key(fn)
        if ref is not None:
            with self.lock:
                hit = self.functions.get(key)
                if hit is not None and hit[0]() == fn:
                    self.functions.move_to_end(key)
                    return hit[1], hit[2]
        blob = serialization.dumps_function(fn)
        name = serialization.function_name(fn)
        if ref is not None:
            with self.lock:
                self.functions[key] = (ref, blob, name)
                if len(self.functions) > _FUNCTION_CACHE_SIZE:
                    self.functions.popitem(last=False)
        return blob, name

    def next_seed(self, kind: str, seed: int | None) -> int:
        """The seed of the next ``kind`` ("job" or "submit") under ``seed``, or a fresh one.

        Numbering per (kind, seed) keeps a script reproducible call for call while making
        successive jobs independent: the second ``map`` is not a replay of the first.
        """
        if seed is None:
            return fresh_seed()
        with self.lock:
            n = next(self.counters.setdefault((kind, seed), itertools.count()))
        return derive_seed(seed, kind, n)


class MapIterator(Iterator[Any]):
    """The ordered, lazy iterator ``map`` returns; ``job_id`` names the job it belongs to.

    A streaming map (a long input, see :mod:`fanout.streaming`) has a ``feed`` that
    appends the next tasks to the job as results are taken, before each one is yielded.
    A packed map (``chunksize`` > 1, see :mod:`fanout.packing`) holds one future per chunk
    and unrolls each chunk's outcome in order; ``packer`` knows how many calls each has.
    """

    def __init__(self, futures: list[Future], timeout: float | None, job_id: str,
                 feed: MapFeed | None = None, packer: Packer | None = None) -> None:
        self.job_id = job_id
        # Only the futures not yet yielded: a result is not kept alive once it was handed
        # out (the stdlib's ``test_free_reference``).
        self._pending: deque[Future] = deque(futures)
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._started = False
        self._feed = feed
        self._packer = packer
        self._chunk: Future | None = None  # the packed chunk being unrolled
        self._unrolled: PackOutcome | None = None
        self._offset = 0
        # Per-call futures made for ``futures``, by chunk; a yielded call's is dropped (None).
        self._calls: dict[int, list[Future | None]] = {}
        self._ready: list[Any] = []  # results to hand out next, last first

    @property
    def futures(self) -> list[Future]:
        """The futures of the tasks submitted and not yet yielded, in task order.

        Before iterating that is every task, unless the map streams: then it is the
        current window only (the rest of the input is not read yet). A packed map makes
        them here, one per call, from its chunks' futures.
        """
        if self._packer is None:
            return list(self._pending)
        out: list[Future] = []
        if self._chunk is not None:
            out.extend(self._calls_of(self._chunk, self._offset - len(self._ready)))
        for chunk in self._pending:
            out.extend(self._calls_of(chunk, 0))
        return out

    def _calls_of(self, chunk: Future, skip: int) -> list[Future]:
        assert self._packer is not None
        made = self._calls.get(chunk.task_index)
        if made is None:
            size = self._packer.size
            first = size * chunk.task_index
            count = min(size, self._packer.elements - first)
            made = list(element_futures(chunk, first, count, ElementLogs(chunk._source, size)))
            self._calls[chunk.task_index] = made
        return [future for future in made[skip:] if future is not None]

    def __iter__(self) -> MapIterator:
        return self

    def __next__(self) -> Any:
        # A packed chunk's results up to its next failure wait here, last first: a result
        # costs one pop (a no-op call takes about a microsecond on the worker; the
        # iterator must not take more).
        ready = self._ready
        if ready:
            value = ready.pop()
            self._forget(self._offset - len(ready) - 1)
            return value
        self._started = True
        try:
            if self._packer is not None:
                return self._next_call()
            if self._feed is not None:
                self._pending.extend(self._feed.top_up(len(self._pending)))
            if not self._pending:
                raise StopIteration
            return self._wait(self._pending.popleft())
        except StopIteration:
            raise
        except BaseException:
            self.close()
            raise

    def _wait(self, future: Future) -> Any:
        if self._deadline is None:
            return future.result()
        return future.result(max(0.0, self._deadline - time.monotonic()))

    def _next_call(self) -> Any:
        """The next call's result from the packed chunk being unrolled (or the next one).

        Moves the chunk's results up to its next failure into ``_ready`` (which
        ``__next__`` pops), and raises a failed call's exception at its own position.
        """
        while self._unrolled is None or self._offset >= len(self._unrolled.values):
            if self._chunk is not None:
                self._calls.pop(self._chunk.task_index, None)
            self._chunk = self._unrolled = None
            if self._feed is not None:
                self._pending.extend(self._feed.top_up(len(self._pending)))
            if not self._pending:
                raise StopIteration
            chunk = self._pending.popleft()
            self._unrolled = self._wait(chunk)
            self._chunk, self._offset = chunk, 0
        unrolled, offset = self._unrolled, self._offset
        error = unrolled.error(offset)
        if error is not None:
            self._offset += 1
            raise error
        end = min((k for k in unrolled.failures if k > offset), default=len(unrolled.values))
        # The chunk's outcome keeps the values not yet yielded until the iterator moves past
        # the chunk, so per-call futures asked for midway get them; a yielded one is
        # forgotten there as it is handed out (as the stdlib's map pops it from the chunk).
        ready = unrolled.values[offset:end]
        ready.reverse()
        self._offset = end
        value = ready.pop()
        self._ready = ready
        self._forget(offset)
        return value

    def _forget(self, offset: int) -> None:
        """Drop the packed chunk's references to a result being handed out (its value in
        the chunk's outcome, its per-call future if ``futures`` made one), as the stdlib's
        map pops it from its chunk: a yielded result is not kept alive by the iterator."""
        assert self._unrolled is not None and self._chunk is not None
        if self._calls:
            made = self._calls.get(self._chunk.task_index)
            if made is not None:
                # The chunk's done callback settles the call futures from these values,
                # and this thread may run before it (the chunk's waiters wake before its
                # callbacks run): settle the call first, so it never reads a freed value.
                call = made[offset]
                if call is not None and not call.done():
                    with contextlib.suppress(concurrent.futures.InvalidStateError):
                        call.set_result(self._unrolled.values[offset])
                made[offset] = None
        self._unrolled.values[offset] = None

    def close(self) -> None:
        """Cancel the tasks not yet started, as closing the stdlib's map generator does."""
        pending, self._pending = self._pending, deque()
        self._unrolled = self._chunk = None
        self._ready = []
        for future in pending:
            future.cancel()
        if self._feed is not None:
            self._feed.seal()

    def __del__(self) -> None:
        if self._started:
            self.close()
        elif self._feed is not None:
            # Never iterated: what was submitted runs (as a map's tasks do), nothing more.
            self._feed.seal()

    def __repr__(self) -> str:
        return f"<fanout map job={self.job_id} remaining={len(self._pending)}>"


def _progress_bar(progress: bool | None, description: str) -> Any:
    if progress is None:
        in_notebook = "ipykernel" in sys.modules
        progress = in_notebook or (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    if not progress:
        return None
    from tqdm.auto import tqdm

    try:
        columns = os.get_terminal_size(sys.stderr.fileno()).columns
    except (AttributeError, OSError, ValueError):
        columns = 0
    if columns > 0 or "ipykernel" in sys.modules:
        return tqdm(total=0, desc=description, unit="task", dynamic_ncols=True)
    # A terminal that reports no size (0x0: some CI runners and containers) would make
    # tqdm draw an empty bar: draw it $COLUMNS (or 80) wide instead.
    width, height = shutil.get_terminal_size((80, 24))
    return tqdm(total=0, desc=description, unit="task", ncols=max(width - 1, 20), nrows=height)


class Executor(concurrent.futures.Executor):
    """Run calls as fanout tasks on ``backend`` (``"local"`` unless ``FANOUT_BACKEND`` says).

    Task options (``timeout``, ``memory_mb``, ``retries``, ``tier``, ``seed``,
    ``chunksize``) apply to every task; ``options()`` derives an executor with others.
    ``backend_options`` go to the backend (local: ``home=``).
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., object] | None = None,
        initargs: tuple[Any, ...] = (),
        *,
        max_tasks_per_child: int | None = None,
        backend: str | None = None,
        timeout: float | None = None,
        memory_mb: int | None = None,
        retries: int = 2,
        tier: str = "auto",
        seed: int | None = None,
        chunksize: int = 1,
        progress: bool | None = None,
        **backend_options: Any,
    ) -> None:
        if isinstance(max_workers, str):
            raise InvalidArgumentType(
                f"max_workers must be an integer, got {max_workers!r}: the first parameter is "
                f"the stdlib's max_workers; name the backend: Executor(backend={max_workers!r})")
        if max_workers is not None and (
            isinstance(max_workers, bool) or not isinstance(max_workers, int)
        ):
            raise InvalidArgumentType(f"max_workers must be an integer, got {max_workers!r}")
        if max_workers is not None and max_workers <= 0:
            raise InvalidArgument("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise InvalidArgumentType("initializer must be a callable")
        chosen = backend_name(backend)
        pool_options = worker_options(chosen, mp_context, max_tasks_per_child)
        self._options = TaskOptions(timeout, memory_mb, retries, tier, chunksize, seed,
                                    serialization.dumps_initializer(initializer, initargs))
        self._progress = progress
        backend_obj = create_backend(chosen, max_workers=max_workers, **pool_options,
                                     **backend_options)
        self._shared = _Shared(backend_obj)
        _live_backends.add(backend_obj)
        weakref.finalize(self, backend_obj.shutdown, False)

    @property
    def backend(self) -> Backend[Any]:
        return self._shared.backend

    @property
    def task_options(self) -> TaskOptions:
        return self._options

    def options(self, **overrides: Any) -> Executor:
        """An executor on the same backend (same workers) whose tasks use other options."""
        progress = overrides.pop("progress", self._progress)
        view = object.__new__(Executor)
        view._options = self._options.with_overrides(**overrides)
        view._progress = progress
        view._shared = self._shared
        return view

    # -- submitting ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._shared.shutdown:
            raise ExecutorClosed("cannot schedule new futures after shutdown")

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        self._check_open()
        function, name = self._shared.function(fn)
        payload, inputs = dumps_call(args, kwargs, self.backend)
        seed = self._shared.next_seed("submit", self._options.seed)
        return self.backend.submit(fn, function, name, payload, self._options, seed, inputs)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | str | None = AUTO,
    ) -> MapIterator:
        """One job: ``fn`` over the zipped iterables; results in order, as they are needed.

        An iterable given as ``"s3://bucket/prefix/"`` is one task per object under it, each
        receiving a ``fanout.S3Chunk`` to ``read()`` on the worker (``fanout.s3_chunks``
        splits large objects by size).

        ``buffersize`` (the stdlib's, Python 3.14): at most that many chunks submitted and
        not yet yielded; the input is read as results are taken. The default ``"auto"``
        does so for a long input only (more than ``fanout.streaming.AUTO_WINDOW_TASKS``
        calls), so ``for r in ex.map(f, range(10**7))`` runs in bounded memory; ``None``
        submits the whole input at once, as the stdlib does by default.
        """
        iterables = tuple(s3_inputs.expand(it) for it in iterables)
        return self._map("map", fn, zip(*iterables, strict=False), timeout, chunksize,
                         buffersize, known_length(iterables))

    def starmap(
        self,
        fn: Callable[..., Any],
        iterable: Iterable[Iterable[Any]],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | str | None = AUTO,
    ) -> MapIterator:
        """Like ``map`` but each item is a tuple of arguments (``itertools.starmap``)."""
        return self._map("map", fn, (tuple(args) for args in iterable), timeout, chunksize,
                         buffersize, known_length((iterable,)))

    def map_reduce(
        self,
        map_fn: Callable[..., Any],
        iterable: Iterable[Any],
        reduce_fn: Callable[[list[Any]], Any],
        *,
        chunksize: int | None = None,
    ) -> Future:
        """One job whose ``reduce_fn(results_in_task_order)`` runs on a worker.

        ``iterable`` may be ``"s3://bucket/prefix/"`` or ``fanout.s3_chunks(...)``, as for
        ``map``: seed 002's regression sums X'X and X'y per chunk of a CSV and solves on a
        worker.
        """
        self._check_open()
        iterable = s3_inputs.expand(iterable)
        reducer, reducer_name = self._shared.function(reduce_fn)
        inputs = TaskInputs(self.backend)  # futures among the arguments, noted per task
        run = self._start("map_reduce", map_fn, inputs.payloads((x,) for x in iterable),
                          inputs, chunksize, reducer, reducer_name)
        assert run.reduce_future is not None
        future: Future = run.reduce_future
        return future

    def _map(self, kind: str, fn: Callable[..., Any], arg_tuples: Iterable[tuple[Any, ...]],
             timeout: float | None, chunksize: int | None,
             buffersize: int | str | None = None, expected: int | None = None) -> MapIterator:
        if timeout is not None and (isinstance(timeout, bool) or timeout < 0):
            raise InvalidArgument(f"map timeout must be a non-negative number, got {timeout!r}")
        self._check_open()
        started = time.monotonic()
        size = (self._options if chunksize is None
                else self._options.with_overrides(chunksize=chunksize)).chunksize
        workers = getattr(self.backend, "max_workers", 1)
        inputs = TaskInputs(self.backend)  # futures among the arguments, noted per task
        # map's own chunksize > 1 packs each chunk into one task (see fanout.packing); the
        # executor's chunksize option groups tasks that each keep their own record.
        packer = Packer(size, inputs) if chunksize is not None and size > 1 else None
        if packer is not None:  # from here on, tasks (and the window) are chunks
            window = window_chunks(buffersize, size, workers)
            payloads = packer.payloads(arg_tuples)
            if expected is not None:
                expected = -(-expected // size)
        else:
            window = window_tasks(buffersize, size, workers)
            payloads = inputs.payloads(arg_tuples)
        first: Iterable[bytes] = payloads
        streaming = head_start = False
        if window is not None and self.backend.supports_streaming:
            # A packed map starts its workers on a first segment of two chunks per worker
            # and writes the rest of its window while they run, as ProcessPoolExecutor
            # pickles chunks while its workers run the first ones.
            head = HEAD_START_CHUNKS * workers
            if packer is None or not head or window <= head:
                head = window
            first = list(itertools.islice(payloads, head))
            head_start = head < window and len(first) == head
            # An input that fits in the first window is one plain job, as without streaming.
            streaming = head_start or (len(first) == window and (
                buffersize != AUTO or expected is None or expected > window))
        run = self._start(kind, fn, first, inputs, chunksize, streaming=streaming,
                          expected=expected, pack=0 if packer is None else size)
        remaining = None if timeout is None else timeout - (time.monotonic() - started)
        if not streaming:
            return MapIterator(run.futures, remaining, run.job_id, packer=packer)
        assert window is not None
        feed = MapFeed(self.backend, run, payloads, window, 1 if packer is not None else size)
        futures = run.take_futures()
        if head_start:
            futures.extend(feed.top_up(len(futures)))
        return MapIterator(futures, remaining, run.job_id, feed, packer)

    def _start(self, kind: str, fn: Callable[..., Any], payloads: Iterable[bytes],
               inputs: TaskInputs, chunksize: int | None, reducer: bytes | None = None,
               reducer_name: str | None = None, streaming: bool = False,
               expected: int | None = None, pack: int = 0) -> JobRun:
        self._check_open()
        options = self._options
        if pack:  # a task is a chunk of ``pack`` calls, and a manifest chunk is one task
            options = options.with_overrides(chunksize=1, pack=pack)
        elif chunksize is not None:
            options = options.with_overrides(chunksize=chunksize)
        function, name = self._shared.function(fn)
        progress = _progress_bar(self._progress, name.rsplit(".", 1)[-1])
        request = JobRequest(kind, function, name, payloads, options,
                             self._shared.next_seed("job", options.seed), reducer, reducer_name,
                             progress, inputs, streaming, expected)
        try:
            return self.backend.start_job(request)
        except BaseException:
            if progress is not None:
                progress.close()
            raise

    def schedule(
        self,
        name: str,
        fn: Callable[..., Any],
        items: Any,
        *,
        cron: str | None = None,
        rate: str | None = None,
        timezone: str = "UTC",
        reducer: Callable[[list[Any]], Any] | None = None,
        enabled: bool = True,
    ) -> Any:
        """Run ``fn`` over ``items`` on a schedule; every run is an ordinary job.

        ``items`` is a list, a function called at run time that returns the items, or an
        ``"s3://bucket/prefix/"`` string (one task per object). ``cron=``/``rate=`` use
        EventBridge's forms (see ``fanout.schedules``) in ``timezone``. A run that comes due
        while the previous run of the same schedule is still running is skipped.
        """
        from .schedules import (
            ScheduleRequest,
            ScheduleSpec,
            describe_items,
            expression,
            validate_name,
            validate_timezone,
        )

        self._check_open()
        validate_name(name)
        text = expression(cron=cron, rate=rate)
        validate_timezone(timezone)
        kind, detail = describe_items(items)
        function, function_name = self._shared.function(fn)
        if kind == "function":
            items_blob: bytes | None = serialization.dumps_function(items)
        elif kind == "list":
            items_blob = serialization.dumps_value(list(items))
        else:
            items_blob = None
        reducer_blob, reducer_name = (self._shared.function(reducer) if reducer is not None
                                      else (None, None))
        spec = ScheduleSpec(name=name, function=function_name, expression=text,
                            timezone=timezone, enabled=enabled, items=kind,
                            items_detail=detail, options=self._options, reducer=reducer_name,
                            created=time.time())
        return self.backend.put_schedule(ScheduleRequest(spec, function, items_blob,
                                                         reducer_blob))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._shared.lock:
            self._shared.shutdown = True
        self.backend.shutdown(wait=wait, cancel_futures=cancel_futures)

    def __repr__(self) -> str:
        return f"<fanout.Executor backend={self.backend!r} options={self._options}>"
