"""The worker runtime: runs a chunk's tasks and writes one result record per task.

This is the only code that executes user tasks, on every backend: the local worker
process, the Lambda handler and the Batch container all call :class:`WorkerRuntime`.
It never lets a task's failure escape as its own failure: a task exception, an
unpicklable result or a Python version mismatch becomes that task's record.
"""

from __future__ import annotations

import copy
import os
import pickle
import random
import signal
import sys
import threading
import traceback
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

import cloudpickle

from . import packing, serialization
from .capture import Capture, StreamCapture
from .context import TaskContext, running
from .dependencies import loads_call
from .errors import ConfigurationError, TaskTimeout
from .protocol import (
    FAILED,
    REDUCE_INDEX,
    SUCCEEDED,
    Chunk,
    JobSpec,
    ResultRecord,
    TaskStore,
    now,
    version_mismatch,
)
from .seeding import derive_seed

ResultCallback = Callable[[ResultRecord], None]

#: The executor's initializers this process has run successfully, by their pickled text:
#: each runs once per process (a local worker, a warm Lambda container, a Batch container),
#: before the first task that needs it.
_initialized: dict[str, Callable[..., object]] = {}

#: Initializers that raised, by (job id, pickled text): that job's later tasks here fail
#: with the same cause without running it again, but a later job retries it, so one
#: transient error does not poison a warm container for good. Bounded like the spec cache.
_failed: OrderedDict[tuple[str, str], tuple[Exception, str]] = OrderedDict()


def run_initializer(text: str | None, job_id: str) -> None:
    """Run the job's ``initializer(*initargs)`` if this process has not yet; raise its error.

    The stdlib breaks the whole pool when an initializer raises (BrokenProcessPool). Here
    only the tasks of this job that land on this process fail, each with a fresh exception
    of the initializer's type whose cause is the initializer's own error: a worker elsewhere
    whose initializer succeeded keeps its results. Only an ``Exception`` is remembered; a
    KeyboardInterrupt or SystemExit propagates and the next task tries again.
    """
    if text is None or text in _initialized:
        return
    key = (job_id, text)
    if key not in _failed:
        name = "initializer"
        try:
            initializer, initargs = serialization.loads_initializer(text)
            name = serialization.function_name(initializer)
            initializer(*initargs)
        except Exception as exc:
            _failed[key] = (exc, name)
            if len(_failed) > 32:
                _failed.popitem(last=False)
        else:
            _initialized[text] = initializer
            return
    original, name = _failed[key]
    raise _initializer_error(original, name) from original


def _initializer_error(original: Exception, name: str) -> Exception:
    """A new exception per task, of the original's type where it can be rebuilt.

    Raising the stored object again would grow its traceback with every task; a copy keeps
    ``except ValueError`` working in the caller and chains the real one as its cause.
    """
    try:
        fresh = copy.copy(original)
        if type(fresh) is not type(original):
            raise TypeError(type(fresh))
    except Exception:
        fresh = RuntimeError(f"{type(original).__name__}: {_describe(original)}")
    fresh.__traceback__ = None
    fresh.__cause__ = fresh.__context__ = None
    fresh.__notes__ = [f"raised by the executor's initializer {name}, which runs once in each "
                       "worker process for each job; every task of this job on this worker "
                       "fails with it"]
    return fresh


def share_initializer_globals(fn: Callable[..., Any], text: str | None) -> None:
    """Let a task see the globals its initializer set, when both travelled by value.

    A function pickled by value (from a script or notebook) gets its own globals dict per
    pickle, so the initializer's ``global state; state = ...`` would land in a dict the task
    never reads. Where both come from the same not-installed module, the task's globals
    take the initializer's values, as they would share one module under the stdlib. The
    runtime does this once per loaded function, before its first task: doing it before
    every task would undo what the tasks rebind (a counter, a lazy cache).
    """
    initializer = _initialized.get(text) if text is not None else None
    if initializer is None:
        return
    init_globals = getattr(initializer, "__globals__", None)
    fn_globals = getattr(fn, "__globals__", None)
    module = sys.modules.get(getattr(fn, "__module__", None) or "")
    if (init_globals is None or fn_globals is None or init_globals is fn_globals
            or getattr(initializer, "__module__", None) != getattr(fn, "__module__", None)
            or (module is not None and fn_globals is vars(module))):
        return
    fn_globals.update({k: v for k, v in init_globals.items() if not k.startswith("__")})


#: fanout's own frames above a task's code (this module, and the packed chunk's loop).
_OWN_FILES = frozenset({__file__, packing.__file__})


def _user_frames(tb: TracebackType | None) -> TracebackType | None:
    """The traceback from the first frame outside fanout's runner: the user's code first."""
    while tb is not None and tb.tb_frame.f_code.co_filename in _OWN_FILES:
        tb = tb.tb_next
    return tb


def safe_text(text: str) -> str:
    """``text`` as valid UTF-8: a lone surrogate becomes ``\\udxxx`` instead of an error.

    Every store encodes text as UTF-8 (SQLite, JSON for DynamoDB); a task's message with a
    lone surrogate (``"bad \\ud800"``) must not make its record unstorable.
    """
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _describe(exc: BaseException) -> str:
    """``str(exc)``, or a note saying it failed: a broken ``__str__`` is still the task's error."""
    try:
        return safe_text(str(exc))
    except BaseException as failure:
        return f"<str() of this {type(exc).__name__} raised {type(failure).__name__}>"


def exception_fields(exc: BaseException) -> dict[str, Any]:
    """The record fields describing ``exc``; the pickled exception only if it round-trips."""
    exc_type = type(exc)
    try:
        text = "".join(traceback.format_exception(exc_type, exc,
                                                  _user_frames(exc.__traceback__)))
    except BaseException:
        text = f"{exc_type.__qualname__}: {_describe(exc)}\n"
    try:
        # cloudpickle: an exception class defined in the user's script travels by value and
        # comes back as the very class the client defined, so ``except MyError`` works.
        data = bytes(cloudpickle.dumps(exc, protocol=serialization.PROTOCOL))
        pickle.loads(data)  # an exception that pickles but cannot load is useless to send
        blob: bytes | None = data
    except BaseException:
        blob = None
    return {
        "exc_type": f"{exc_type.__module__}.{exc_type.__qualname__}",
        "exc_message": _describe(exc),
        "traceback": safe_text(text),
        "exc_pickle": blob,
    }


@contextmanager
def _isolated(rngs: bool = True) -> Iterator[None]:
    """Undo what a task changed in the process: cwd, ``sys.path``, environment, global RNGs.

    Tasks share a worker with the tasks after them (a local worker, a warm Lambda), so
    without this one task's ``os.chdir`` or ``sys.path.insert`` would silently change what
    the next one sees. Costs a few microseconds; the environment is compared as bytes.
    ``rngs=False`` leaves the global RNGs to the next task's seeding (a process that runs
    nothing but tasks: saving and restoring them was a tenth of a no-op task's cost).
    """
    cwd = os.getcwd()
    path = list(sys.path)
    environ: dict[bytes, bytes] | None = getattr(os.environ, "_data", None)
    env = dict(environ) if environ is not None else None
    rng = random.getstate() if rngs else None
    numpy = sys.modules.get("numpy") if rngs else None
    np_state = numpy.random.get_state() if numpy is not None else None
    try:
        yield
    finally:
        try:
            if os.getcwd() != cwd:
                os.chdir(cwd)
        except OSError:  # the task removed its cwd, or ours
            os.chdir(cwd)
        sys.path[:] = path
        if environ is not None and env is not None and environ != env:
            for key in [k for k in environ if k not in env]:
                del os.environ[os.fsdecode(key)]
            for key, value in env.items():
                if environ.get(key) != value:
                    os.environ[os.fsdecode(key)] = os.fsdecode(value)
        if rng is not None:
            random.setstate(rng)
        if numpy is not None and np_state is not None:
            numpy.random.set_state(np_state)


@contextmanager
def _deadline(seconds: float | None, task_index: int) -> Iterator[None]:
    """Raise TaskTimeout inside the task after ``seconds`` (main thread only).

    A task stuck in C code that never returns to the interpreter is not interrupted; the
    platform's own limit (Lambda's timeout, Batch's attempt duration) still applies.
    """
    if not seconds or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise TaskTimeout(f"task {task_index} ran longer than timeout={seconds}s and was "
                          "stopped; raise timeout= or split the task")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class WorkerRuntime:
    """Runs tasks for any backend; ``store`` is that backend's :class:`TaskStore`."""

    def __init__(
        self,
        store: TaskStore,
        worker_id: str,
        capture: Capture | None = None,
        on_start: Callable[[TaskContext | None], None] | None = None,
    ) -> None:
        self.store = store
        self.worker_id = worker_id
        self.capture = capture or StreamCapture()
        self.on_start = on_start
        #: Where finished records go instead of a synchronous put (the local worker batches
        #: them); a sink must put each record and then call :meth:`settle`.
        self.sink: Callable[[ResultRecord], None] | None = None
        #: Asked before each task; False stops the chunk (the local worker's client died).
        self.keep_going: Callable[[], bool] | None = None
        #: Enforce ``timeout=`` here with SIGALRM (AWS workers: nobody is watching from
        #: outside). The local backend's supervisor kills the worker instead.
        self.enforce_timeouts = False
        #: Let a KeyboardInterrupt out of the chunk after storing that task's record (inline:
        #: the task runs in the caller's main thread, so Ctrl-C must stop the caller's job).
        #: Elsewhere it is that task's failure, as any other exception.
        self.interruptible = False
        #: Put the global RNGs back after each task. A process that only runs tasks (a
        #: local worker) need not: every task seeds them afresh before it starts.
        self.restore_rngs = True
        self._interrupt: KeyboardInterrupt | None = None
        self._functions: OrderedDict[tuple[str, str], Callable[..., Any]] = OrderedDict()
        self._specs: OrderedDict[str, JobSpec] = OrderedDict()
        self._shared: set[tuple[str, str]] = set()  # functions given the initializer's globals

    # -- loading, cached: a worker typically runs many chunks of the same job ---------------

    def spec(self, job_id: str) -> JobSpec:
        spec = self._specs.get(job_id)
        if spec is None:
            spec = self.store.load_spec(job_id)
            self._specs[job_id] = spec
            if len(self._specs) > 32:
                self._specs.popitem(last=False)
        return spec

    def function(self, job_id: str, which: str = "function") -> Callable[..., Any]:
        key = (job_id, which)
        fn = self._functions.get(key)
        if fn is None:
            fn = serialization.loads(self.store.load_function(job_id, which))
            self._functions[key] = fn
            if len(self._functions) > 8:
                self._shared.discard(self._functions.popitem(last=False)[0])
        return fn

    # -- running ---------------------------------------------------------------------------

    def run_chunk(self, chunk: Chunk, on_result: ResultCallback | None = None) -> None:
        """Run every task of ``chunk`` in order; each record is stored before the callback."""
        fn: Callable[..., Any] | None = None
        setup_error: BaseException | None = None
        try:
            mismatch = version_mismatch(self.spec(chunk.job_id))
            if mismatch:
                setup_error = ConfigurationError(mismatch)
            else:
                fn = self.function(chunk.job_id)  # e.g. a module the worker does not have
        except Exception as exc:
            setup_error = exc
        # A store that can fetch a whole chunk's arguments in one request (S3: one ranged
        # GET) does; the local store reads each task's range from an open file instead.
        prefetched: dict[int, bytes] = {}
        if fn is not None and chunk.tasks:
            try:
                prefetched = self.store.read_chunk(chunk.job_id, chunk.tasks)
            except Exception as exc:
                setup_error = exc
        for task in chunk.tasks:
            if self.keep_going is not None and not self.keep_going():
                return  # whoever asked for this chunk is gone; unstarted tasks stay pending
            started = now()
            if setup_error is not None or fn is None:
                assert setup_error is not None
                # Counted as a task start and end like any other: a local worker's
                # supervisor charges deaths by these counts.
                ctx = TaskContext(chunk.job_id, task.index, chunk.attempt, task.seed, self.store)
                if self.on_start is not None:
                    self.on_start(ctx)
                record = self._record(chunk.job_id, task.index, chunk.attempt, started)
                record.status = FAILED
                for key, value in exception_fields(setup_error).items():
                    setattr(record, key, value)
                if self.on_start is not None:
                    self.on_start(None)
            else:
                ctx = TaskContext(chunk.job_id, task.index, chunk.attempt, task.seed, self.store)
                data = prefetched.pop(task.index, None)
                spec = self.spec(chunk.job_id)
                if spec.options.pack:
                    # The global RNGs are seeded once per packed chunk, as its first call
                    # would be seeded as a task of its own (see fanout.packing).
                    ctx.seed = derive_seed(spec.seed, "task", spec.options.pack * task.index)
                    record = self._run_one(
                        ctx, started,
                        lambda t=task, d=data: self._call_pack(  # type: ignore[misc]
                            fn, chunk.job_id, chunk.attempt, t, d),
                        packed=True)
                else:
                    record = self._run_one(
                        ctx, started,
                        lambda t=task, d=data: self._call(  # type: ignore[misc]
                            fn, chunk.job_id, t, d))
            self._finish(record, on_result)
            self._reraise_interrupt()

    def _reraise_interrupt(self) -> None:
        """After the interrupted task's record is stored: stop here, as Ctrl-C asked."""
        interrupt, self._interrupt = self._interrupt, None
        if interrupt is not None:
            raise interrupt

    def _call(self, fn: Callable[..., Any], job_id: str, task: Any, data: bytes | None) -> Any:
        if data is None:
            data = self.store.read_task(job_id, task)
        # Futures among the arguments arrive as references: each becomes its input task's
        # stored result here, or this task fails with DependencyFailed naming that input.
        args, kwargs = loads_call(data, self.store)
        if (job_id, "function") not in self._shared:
            share_initializer_globals(fn, self.spec(job_id).options.initializer)
            self._shared.add((job_id, "function"))
        return fn(*args, **kwargs)

    def _call_pack(self, fn: Callable[..., Any], job_id: str, attempt: int, task: Any,
                   data: bytes | None) -> packing.PackRun:
        """A packed chunk (``fanout.packing``): its calls' outcomes, each in its own context."""
        if data is None:
            data = self.store.read_task(job_id, task)
        (calls,), _ = loads_call(data, self.store)
        if (job_id, "function") not in self._shared:
            share_initializer_globals(fn, self.spec(job_id).options.initializer)
            self._shared.add((job_id, "function"))
        return packing.run_pack(fn, calls, self.spec(job_id), task.index, attempt, self.store,
                                exception_fields, self.interruptible)

    def run_reduce(self, job_id: str, attempt: int,
                   on_result: ResultCallback | None = None) -> None:
        """Run the job's reducer over all map results, in task order, on this worker."""
        started = now()

        def reduce() -> Any:
            reducer = self.function(job_id, "reducer")
            values = []
            for rec in self.store.results(job_id):
                if rec.status != SUCCEEDED:
                    raise RuntimeError(f"task {rec.task_index} of job {job_id} did not succeed")
                values.append(serialization.loads(self.store.load_value(rec)))
            return reducer(values)

        try:
            seed = derive_seed(self.spec(job_id).seed, "reduce")
        except Exception as exc:  # the store cannot say: fail the step, do not crash
            error = exc

            def reduce() -> Any:
                raise error

            seed = 0
        ctx = TaskContext(job_id, REDUCE_INDEX, attempt, seed, self.store)
        self._finish(self._run_one(ctx, started, reduce), on_result)
        self._reraise_interrupt()

    def _record(self, job_id: str, index: int, attempt: int, started: float) -> ResultRecord:
        return ResultRecord(job_id, index, FAILED, attempt, self.worker_id, started, started)

    def _run_one(
        self, ctx: TaskContext, started: float, call: Callable[[], Any], packed: bool = False
    ) -> ResultRecord:
        record = self._record(ctx.job_id, ctx.task_index, ctx.attempt, started)
        if self.on_start is not None:
            self.on_start(ctx)
        timeout = self.spec(ctx.job_id).options.task_timeout if self.enforce_timeouts else None
        with self.capture.task() as captured:
            try:
                # Outside the task's isolation, so what it sets up stays for the worker's
                # later tasks; before the seeding, so random draws in it shift no task's
                # stream: results stay the same on any backend. Outside the task's deadline:
                # a slow setup is not the task overrunning (the platform's limit still holds).
                run_initializer(self.spec(ctx.job_id).options.initializer, ctx.job_id)
                with _deadline(timeout, ctx.task_index), _isolated(self.restore_rngs), \
                        running(ctx):
                    value = call()
                blob = (packing.encode(value, exception_fields) if packed
                        else serialization.dumps_value(value))
            except BaseException as exc:  # a task's exception (even SystemExit) is its result
                if isinstance(exc, KeyboardInterrupt) and self.interruptible:
                    self._interrupt = exc
                record.status = FAILED
                for key, val in exception_fields(exc).items():
                    setattr(record, key, val)
            else:
                record.status = SUCCEEDED
                if packed:
                    packing.finish_record(record, value)
                if len(blob) > self.store.max_record_value_bytes:
                    try:
                        record.value_ref = self.store.put_value_blob(
                            ctx.job_id, ctx.task_index, ctx.attempt, blob
                        )
                    except Exception as exc:  # e.g. a full disk: the task's record says so
                        record.status = FAILED
                        record.extra.pop(packing.ELEMENTS, None)
                        for key, val in exception_fields(exc).items():
                            setattr(record, key, val)
                else:
                    record.value = blob
        record.ended = now()
        record.stdout, record.stderr = captured.stdout, captured.stderr
        if self.on_start is not None:
            self.on_start(None)
        # Only an earlier attempt or this one can have left a checkpoint to clean up. A
        # packed chunk's calls checkpoint under their own indexes, not the chunk's: theirs
        # are left for the job's expiry rather than deleting another call's by mistake.
        if not packed:
            record.extra["checkpoint"] = ctx.checkpointed or ctx.attempt > 1
        return record

    def _finish(self, record: ResultRecord, on_result: ResultCallback | None) -> None:
        if self.sink is not None:
            self.sink(record)
            return
        stored = self.store.put_result(record)
        self.settle(record, stored)
        if on_result is not None:
            on_result(stored)

    def settle(self, record: ResultRecord, stored: ResultRecord) -> None:
        """After the conditional put: drop what the losing side or a success leaves behind."""
        had_checkpoint = record.extra.pop("checkpoint", False)
        stored.extra.pop("checkpoint", None)
        if stored is not record and record.value_ref and stored.value_ref != record.value_ref:
            self.store.delete_value_blob(record.value_ref)  # lost the race: drop our blob
        if had_checkpoint and stored.status == SUCCEEDED:
            self.store.delete_checkpoint(record.job_id, record.task_index)
