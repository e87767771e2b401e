"""Supervised worker processes for the local backend.

One supervisor thread owns every worker process and every piece of pool state, so there
are no locks around them; other threads talk to it through :meth:`Supervisor.post`. A
second, tiny thread (the watchdog) only reads each worker's heartbeat and kills a worker
that stopped: it never touches the store, so a worker frozen while holding the store's
write lock is killed even while the supervisor itself waits for that lock.

Why not ``ProcessPoolExecutor``: it breaks the whole pool when one worker dies and cannot
stop a single task. Here a worker that dies (SIGKILL, ``os._exit``, segfault, the OOM
killer) or overruns its task's ``timeout`` costs only its in-flight task: that task is
charged an attempt and re-queued on a fresh process, and the worker's other queued tasks
are re-queued uncharged. Results never travel only in memory: a worker commits each record
to the store and then reports it, so a future resolves only from a stored result.

Deaths are seen through a pidfd (the process itself), not only through the socket, which a
task's own child could keep open; which task was in flight comes from the worker's
:class:`~.beacon.Beacon`, so the task that died is charged, exactly once, and no other.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait
from typing import Any

from ... import records
from ...collector import JobRun
from ...dependencies import record_cancelled
from ...errors import ConfigurationError, StoreError, TaskTimeout, WorkerLost
from ...future import Claim
from ...protocol import REDUCE_INDEX, Chunk, ResultRecord
from ...runtime import safe_text
from ...states import JobState
from ...summary import job_summary
from .dispatch import BATCH_MAX_TASKS, BATCH_SECONDS, Dispatch, expected_seconds, rechunk
from .messages import (
    CancelJob,
    FromWorker,
    Ready,
    RunChunks,
    RunReduce,
    SealRun,
    Shutdown,
    StartRun,
    Stored,
    ToSupervisor,
    Unstored,
)
from .store import LocalStore
from .watchdog import Watchdog
from .worker_process import STDERR_TAIL_ON_DEATH, WorkerProcess, describe_exit

log = logging.getLogger("fanout.local")

#: Seconds between checks for a cancel issued by another process (``fanout cancel``).
CANCEL_POLL_SECONDS = 0.5
MAX_STARTUP_FAILURES = 3
#: A worker holding a task whose heartbeat is older than this is killed (SIGSTOP, a hang in
#: C code that holds the GIL) and its task retried like any other death.
DEFAULT_STALL_SECONDS = 10.0


class Supervisor:
    """Runs dispatches on up to ``max_workers`` processes; see the module docstring.

    Why one class of this size: one thread owns all pool state (the queue, the workers, each
    worker's in-flight dispatches, the runs), which is what keeps it free of locks. Assigning
    work, accounting for a death and cancelling all read and change that same state, so
    they stay methods of its one owner; what does not touch it has moved out
    (``dispatch.py``, ``worker_process.py``, ``watchdog.py``, ``messages.py``, and the
    records it writes, ``fanout.records``).
    """

    def __init__(
        self,
        store: LocalStore,
        max_workers: int,
        pull_submits: Callable[[bool], list[Dispatch]],
        next_submit_deadline: Callable[[], float | None],
        stall_seconds: float = DEFAULT_STALL_SECONDS,
    ) -> None:
        self.store = store
        self.max_workers = max_workers
        self.stall_seconds = stall_seconds
        self._pull_submits = pull_submits
        self._next_submit_deadline = next_submit_deadline
        self._queue: deque[Dispatch] = deque()
        #: Chunks whose tasks take futures not yet done: each joins the queue the moment its
        #: own inputs are done (a done-callback wakes the loop), never at a barrier.
        self._held: list[Dispatch] = []
        self._workers: list[WorkerProcess] = []
        self._runs: dict[str, JobRun] = {}
        self._inbox: deque[ToSupervisor] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._wake_lock = threading.Lock()  # no write to the pipe after it is closed
        self._wake_closed = False
        self._stopping = False
        self._cancel_futures = False
        self._last_cancel_poll = 0.0
        self._spawned = 0
        self._startup_failures = 0
        #: Replace a worker after it ran this many tasks (the stdlib's max_tasks_per_child).
        self.max_tasks_per_child: int | None = None
        # A daemon: at exit, ``executor._finish_at_exit`` completes outstanding work and stops it
        # (a non-daemon thread would be joined before atexit hooks run, and wait forever).
        self._thread = threading.Thread(target=self._loop, name="fanout-supervisor", daemon=True)
        self._watchdog = Watchdog(lambda: self._workers, stall_seconds, self.wake)
        self._thread.start()
        self._watchdog.start()

    # -- called from other threads ---------------------------------------------------------

    def post(self, message: ToSupervisor) -> None:
        self._inbox.append(message)
        self.wake()

    def wake(self) -> None:
        with self._wake_lock:
            if self._wake_closed:
                return
            with contextlib.suppress(BlockingIOError):  # full of wake-ups already: fine
                os.write(self._wake_w, b"x")

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def worker_pids(self) -> list[int]:
        return [w.pid for w in list(self._workers) if w.ready]

    # -- the loop --------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                self._read_inbox()
                self._release_held()
                self._poll_external_cancels()
                idle = any(w.ready and not w.inflight for w in self._workers) or (
                    len(self._workers) < self.max_workers
                )
                for dispatch in self._pull_submits(idle or self._stopping):
                    self._add(dispatch)
                if self._may_stop():
                    break
                self._spawn_workers()
                self._assign()
                if self._may_stop():
                    # _assign may have dropped the last queued chunks (their tasks were
                    # settled meanwhile, e.g. cancelled): nothing would wake the wait then
                    break
                self._wait_and_handle()
                self._enforce_timeouts()
            self._close_unfinished()
        except BaseException as exc:  # a bug here must not hang the client
            log.exception("fanout supervisor crashed; failing outstanding tasks")
            if isinstance(exc, StoreError):
                self._fail_everything(str(exc), StoreError)
            else:
                self._fail_everything(
                    "the fanout supervisor thread crashed, so this task's outcome is unknown: "
                    f"{type(exc).__name__}: {safe_text(str(exc))} (please report this bug)")
        finally:
            self._watchdog.stop()
            with contextlib.suppress(Exception):
                self._stop_workers()
            with self._wake_lock:
                self._wake_closed = True
                os.close(self._wake_r)
                os.close(self._wake_w)

    def _may_stop(self) -> bool:
        """Shutting down and nothing is left: no chunk queued, running or held, no submit."""
        return (self._stopping and not self._queue and not self._busy() and not self._held
                and self._next_submit_deadline() is None)

    def _busy(self) -> bool:
        return any(w.inflight for w in self._workers)

    def _read_inbox(self) -> None:
        while self._inbox:
            message = self._inbox.popleft()
            if isinstance(message, StartRun):
                run = message.run
                self._runs[run.job_id] = run
                if run.cancelled:  # tasks appended to a job cancelled meanwhile
                    self._cancel_tasks(run, [t.index for d in message.dispatches
                                             if not d.is_reduce for t in d.chunk.tasks],
                                       1, only_pending=False)
                else:
                    for dispatch in message.dispatches:
                        self._add(dispatch)
                self._maybe_finish(run)
            elif isinstance(message, SealRun):
                if message.run.job_id in self._runs:
                    self._maybe_finish(message.run)
            elif isinstance(message, CancelJob):
                self._cancel_job(message.job_id)
            elif isinstance(message, Shutdown):
                self._stopping = True
                if message.cancel_futures:
                    self._cancel_queued()

    def _add(self, dispatch: Dispatch) -> None:
        self._runs.setdefault(dispatch.run.job_id, dispatch.run)
        if self._stopping and self._cancel_futures and not dispatch.is_reduce:
            self._cancel_tasks(dispatch.run, [t.index for t in dispatch.chunk.tasks],
                               dispatch.chunk.attempt, only_pending=True)
            remaining = tuple(t for t in dispatch.chunk.tasks
                              if not dispatch.run.future(t.index).done())
            if not remaining:
                return
            dispatch = Dispatch(dispatch.run, rechunk(dispatch.chunk, remaining))
        if not self._inputs_ready(dispatch, watch=True):
            self._held.append(dispatch)
            return
        self._queue.append(dispatch)

    def _inputs_ready(self, dispatch: Dispatch, watch: bool = False) -> bool:
        """True when every future the chunk's tasks take is done; else (``watch``) have
        each open one wake the loop when it settles."""
        inputs = dispatch.run.inputs
        if dispatch.is_reduce or not inputs:
            return True
        waiting = [f for t in dispatch.chunk.tasks for f in inputs.get(t.index, ())
                   if not f.done()]
        if watch:
            for future in waiting:
                future.add_done_callback(lambda _: self.wake())
        return not waiting

    def _release_held(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        for dispatch in held:
            if self._inputs_ready(dispatch):
                inputs = dispatch.run.inputs
                with contextlib.suppress(StoreError):  # the dependent then says "missing"
                    record_cancelled(self.store, [f for t in dispatch.chunk.tasks
                                                  for f in inputs.get(t.index, ())])
                self._queue.append(dispatch)
            else:
                self._held.append(dispatch)

    def _spawn_workers(self) -> None:
        wanted = min(self.max_workers, len(self._queue) + sum(1 for w in self._workers
                                                              if w.inflight))
        while len(self._workers) < wanted:
            self._spawned += 1
            worker_id = f"{socket.gethostname()}/w{self._spawned}-{os.getpid()}"
            self._workers.append(WorkerProcess.spawn(self.store, worker_id, self.stall_seconds))

    def _assign(self) -> None:
        """Hand queued chunks to ready workers, several per message when tasks are short.

        A worker gets more chunks until it holds about ``BATCH_SECONDS`` of work, judged by
        the job's measured mean task time; a job whose tasks have not been timed yet gets
        one chunk per worker. Nobody takes more than a fair share of the queue, so long
        chunks are not hoarded while another worker idles.
        """
        ready = sorted((w for w in self._workers if w.ready), key=lambda w: len(w.inflight))
        if not ready or not self._queue:
            return
        share = max(1, len(self._queue) // len(ready))
        # While a worker is still starting, a busy one takes nothing more: the queued chunk
        # would wait behind work of unknown length (a slow first-layer task) instead of
        # going to the worker about to be ready (a dependent released by its inputs).
        starting = any(not w.ready for w in self._workers)
        for worker in ready:
            limit = self._task_budget(worker)
            if limit is not None and (worker.inflight or limit <= 0):
                continue
            batch: list[Dispatch] = []
            load = sum(expected_seconds(d, d.done) for d in worker.inflight)
            tasks = sum(d.size - d.done for d in worker.inflight)
            while self._queue:
                if (worker.inflight or batch) and (
                    starting or load >= BATCH_SECONDS or tasks >= BATCH_MAX_TASKS
                    or len(batch) >= share
                ):
                    break
                if limit is not None and batch:
                    break
                dispatch = self._claim(self._queue.popleft())
                if dispatch is None:
                    continue
                if limit is not None:
                    dispatch = self._split_to_budget(dispatch, limit)
                    worker.tasks_given += dispatch.size
                if not worker.inflight and not batch:
                    worker.task_started = time.monotonic()
                batch.append(dispatch)
                load += expected_seconds(dispatch, 0)
                tasks += dispatch.size
            if batch:
                worker.inflight.extend(batch)
                self._send(worker, batch)

    @staticmethod
    def _send(worker: WorkerProcess, batch: list[Dispatch]) -> None:
        chunks: list[Chunk] = []
        try:
            for dispatch in batch:
                if dispatch.is_reduce:
                    if chunks:
                        worker.conn.send(RunChunks(tuple(chunks)))
                        chunks = []
                    worker.conn.send(RunReduce(dispatch.chunk.job_id, dispatch.chunk.attempt))
                else:
                    chunks.append(dispatch.chunk)
            if chunks:
                worker.conn.send(RunChunks(tuple(chunks)))
        except OSError:
            pass  # it died; the death is handled when its socket reports EOF

    def _claim(self, dispatch: Dispatch) -> Dispatch | None:
        """Mark the chunk's futures running; drop tasks whose futures were cancelled."""
        run = dispatch.run
        if run.cancelled:
            return None
        if dispatch.is_reduce:
            return dispatch
        keep = []
        dropped = []
        for task in dispatch.chunk.tasks:
            state = run.future(task.index).claim()
            if state == Claim.CANCELLED:
                dropped.append(task.index)
            elif state != Claim.DONE:
                keep.append(task)
        if dropped:
            self._cancel_tasks(run, dropped, dispatch.chunk.attempt, only_pending=False)
        if not keep:
            return None
        if len(keep) == len(dispatch.chunk.tasks):
            return dispatch
        return Dispatch(run, rechunk(dispatch.chunk, tuple(keep)))

    def _next_timeout(self) -> float | None:
        deadlines = []
        for worker in self._workers:
            limit = self._limit(worker)
            if limit is not None:
                deadlines.append(worker.task_started + limit)
        submit = self._next_submit_deadline()
        if submit is not None:
            deadlines.append(submit)
        if self._runs:
            deadlines.append(self._last_cancel_poll + CANCEL_POLL_SECONDS)
        if any(w.pidfd is None for w in self._workers):  # no pidfd: look now and then
            deadlines.append(time.monotonic() + 0.5)
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - time.monotonic())

    @staticmethod
    def _limit(worker: WorkerProcess) -> float | None:
        if not worker.inflight or worker.inflight[0].is_reduce:
            return None
        return worker.inflight[0].run.spec.options.task_timeout

    def _wait_and_handle(self) -> None:
        conns: list[Any] = [w.conn for w in self._workers]
        pidfds: list[Any] = [w.pidfd for w in self._workers if w.pidfd is not None]
        ready = wait([*conns, *pidfds, self._wake_r], timeout=self._next_timeout())
        if self._wake_r in ready:
            os.read(self._wake_r, 65536)
        # Messages first: a shutdown(cancel_futures=True) or cancel posted before a worker's
        # results arrived applies before those results wake anyone up.
        self._read_inbox()
        by_handle: dict[Any, WorkerProcess] = {id(w.conn): w for w in self._workers}
        by_handle.update({w.pidfd: w for w in self._workers if w.pidfd is not None})
        for handle in ready:
            worker = by_handle.get(handle if isinstance(handle, int) else id(handle))
            if worker is None or worker not in self._workers:
                continue
            if isinstance(handle, int):
                self._lost(worker, "died")  # the process is gone, whoever holds its socket
            else:
                self._drain(worker)
                if worker in self._workers and self._task_budget(worker) == 0 \
                        and not worker.inflight:
                    self._retire(worker)
        for worker in list(self._workers):
            if worker.pidfd is None and worker.proc.poll() is not None:
                self._lost(worker, "died")

    # -- max_tasks_per_child: a worker is replaced after that many tasks -------------------

    def _task_budget(self, worker: WorkerProcess) -> int | None:
        if self.max_tasks_per_child is None:
            return None
        return max(0, self.max_tasks_per_child - worker.tasks_given)

    def _split_to_budget(self, dispatch: Dispatch, limit: int) -> Dispatch:
        """Hand over at most ``limit`` tasks; the rest of the chunk goes back to the queue."""
        if dispatch.is_reduce or dispatch.size <= limit:
            return dispatch
        tasks = dispatch.chunk.tasks
        self._queue.appendleft(Dispatch(dispatch.run, rechunk(dispatch.chunk, tasks[limit:])))
        return Dispatch(dispatch.run, rechunk(dispatch.chunk, tasks[:limit]))

    def _retire(self, worker: WorkerProcess) -> None:
        """Stop a worker that used up its tasks; ``_spawn_workers`` starts a fresh one."""
        self._workers.remove(worker)
        worker.send_stop()
        worker.reap(timeout=10)
        self._forget_workers([worker])

    def _drain(self, worker: WorkerProcess) -> None:
        try:
            while worker.conn.poll():
                self._handle(worker, worker.conn.recv())
        except (EOFError, OSError):
            self._lost(worker, "died")

    def _collect(self, worker: WorkerProcess) -> None:
        """Handle what a dead worker sent before it died; never wait for more."""
        with contextlib.suppress(EOFError, OSError):
            while worker.conn.poll(0):
                self._handle(worker, worker.conn.recv())

    def _handle(self, worker: WorkerProcess, message: FromWorker) -> None:
        if isinstance(message, Ready):
            worker.ready = True
            worker.pid = message.pid
            worker.log_paths = list(message.log_paths)
            if worker.proc.stderr is not None:  # its fd 2 now goes to the capture file
                worker.proc.stderr.close()
            return
        worker.task_started = time.monotonic()
        items = message.records if isinstance(message, Stored) else message.tasks
        for item in items:
            if not worker.inflight:
                return
            head = worker.inflight[0]
            head.done += 1
            worker.reported += 1
            if head.done >= head.size:
                worker.inflight.popleft()
            if isinstance(item, ResultRecord):
                self._deliver(head.run, item)
            else:  # its record could not be stored: the future says why, the job goes on
                assert isinstance(message, Unstored)
                job_id, index = item
                head.run.settle_error(index, StoreError(
                    f"the result of task {index} of job {job_id} could not be stored, so "
                    f"it is lost: {message.reason}"))
                self._maybe_finish(head.run)

    def _deliver(self, run: JobRun, record: ResultRecord) -> None:
        run.deliver(record)
        self._maybe_finish(run)

    def _maybe_finish(self, run: JobRun) -> None:
        if run.job_id not in self._runs or not run.map_finished:
            return
        if run.reduce_future is not None and not run.reduce_future.done():
            if run.needs_reduce():
                if not run.reduce_queued:
                    run.reduce_queued = True
                    chunk = Chunk(run.job_id, REDUCE_INDEX, "lambda", run.reduce_attempt, ())
                    self._queue.appendleft(Dispatch(run, chunk))
                return
            run.fail_reduce()
        if run.done.is_set():
            del self._runs[run.job_id]
            state = JobState.CANCELLED if run.cancelled else JobState.FINISHED
            try:
                self.store.set_job_state(run.job_id, state,
                                         summary=job_summary(self.store, run.job_id,
                                                                 run.spec.options.pack))
            except StoreError:  # the futures have their outcomes; the store is told later
                log.exception("fanout could not record the end of job %s", run.job_id)
            run.close()

    # -- faults ----------------------------------------------------------------------------

    def _enforce_timeouts(self) -> None:
        clock = time.monotonic()
        for worker in list(self._workers):
            limit = self._limit(worker)
            if limit is not None and clock - worker.task_started > limit:
                worker.kill()
                self._lost(worker, "timeout")

    def _lost(self, worker: WorkerProcess, reason: str, charge: bool = True) -> None:
        """A worker is gone: charge the task it was running, re-queue the rest uncharged.

        Its beacon says how many tasks it started and finished. Counting from the first
        task it had not reported, the one it started and did not finish is the task in
        flight, the only one charged; ones it finished may have been committed but not
        reported (their stored record is delivered) or not committed (run again, uncharged).
        """
        if worker not in self._workers:
            return
        self._collect(worker)  # results it sent before it died are not lost
        self._workers.remove(worker)
        reading = worker.reap(timeout=10)
        if not worker.ready:
            self._startup_failed(worker)
            return
        self._startup_failures = 0
        if worker.stalled and reason == "died":
            reason = "stalled"
        output = worker.output_since(reading)
        self._forget_workers([worker])
        code = worker.proc.returncode
        requeue: list[Dispatch] = []
        ordinal = worker.reported
        for dispatch in worker.inflight:
            run, chunk = dispatch.run, dispatch.chunk
            indexes = ([REDUCE_INDEX] if dispatch.is_reduce
                       else [t.index for t in chunk.tasks[dispatch.done:]])
            keep: list[int] = []
            for index in indexes:
                this, ordinal = ordinal, ordinal + 1
                if run.cancelled:
                    continue
                if charge and this == reading.running:
                    self._charge(run, chunk, index, reason, code, output, worker, requeue)
                elif this < reading.finished and self._recover(run, chunk, index):
                    continue
                else:
                    keep.append(index)
            if keep and dispatch.is_reduce:
                requeue.append(Dispatch(run, chunk))
            elif keep:
                tasks = tuple(t for t in chunk.tasks if t.index in set(keep))
                requeue.append(Dispatch(run, rechunk(chunk, tasks)))
        self._queue.extendleft(reversed(requeue))

    def _recover(self, run: JobRun, chunk: Chunk, index: int) -> bool:
        """Deliver a record a dead worker committed but did not report; False if none."""
        try:
            stored = self.store.result(run.job_id, index)
        except StoreError:
            return False
        if stored is None or stored.attempt < chunk.attempt:
            return False
        self._deliver(run, stored)
        return True

    def _startup_failed(self, worker: WorkerProcess) -> None:
        """A worker died before it was ready: retry a few times, then fail loudly."""
        output = b""
        if worker.proc.stderr is not None:
            output = worker.proc.stderr.read()[-STDERR_TAIL_ON_DEATH:]
            worker.proc.stderr.close()
        self._startup_failures += 1
        if self._startup_failures < MAX_STARTUP_FAILURES:
            return
        why = (
            f"{self._startup_failures} local worker processes in a row died while starting "
            f"({describe_exit(worker.proc.returncode)}); fanout cannot run tasks with "
            f"{sys.executable}. Their last output:\n{output.decode(errors='replace')}"
        )
        self._queue.clear()
        self._fail_everything(why, ConfigurationError)

    def _charge(self, run: JobRun, chunk: Chunk, index: int, reason: str, code: int | None,
                output: tuple[str, str], worker: WorkerProcess,
                requeue: list[Dispatch]) -> None:
        retries = run.spec.options.retries
        if chunk.attempt <= retries:
            if index == REDUCE_INDEX:
                run.reduce_attempt = chunk.attempt + 1
                requeue.append(Dispatch(run, Chunk(run.job_id, REDUCE_INDEX, chunk.tier,
                                                   chunk.attempt + 1, ())))
            else:
                task = next(t for t in chunk.tasks if t.index == index)
                requeue.append(Dispatch(run, Chunk(chunk.job_id, chunk.index, chunk.tier,
                                                   chunk.attempt + 1, (task,))))
            return
        what = "the reduce step" if index == REDUCE_INDEX else f"task {index}"
        attempts = f"{chunk.attempt} attempt{'s' if chunk.attempt > 1 else ''}"
        exc: Exception
        if reason == "timeout":
            options = run.spec.options
            limit = (f"timeout={options.timeout}s" if options.pack <= 1 else
                     f"{options.task_timeout}s (timeout={options.timeout}s per call, "
                     f"{options.pack} calls per chunk)")
            exc = TaskTimeout(
                f"{what} of job {run.job_id} ran longer than {limit} on each of {attempts} "
                "and was stopped; raise timeout= or split the task"
            )
        elif reason == "stalled":
            exc = WorkerLost(
                f"the worker process running {what} of job {run.job_id} sent no heartbeat for "
                f"{self.stall_seconds:g}s (stopped, e.g. by SIGSTOP, or stuck in C code that "
                f"holds the GIL) and was killed, on each of {attempts} (retries={retries})"
            )
        else:
            how = describe_exit(code)
            if code == 0:
                how += (" while the task was running (the task ended the process itself, "
                        "e.g. with os._exit(0))")
            exc = WorkerLost(
                f"the worker process running {what} of job {run.job_id} {how} on each of "
                f"{attempts} (retries={retries}); see future.logs() for its last output"
            )
        stdout, stderr = output
        self._deliver(run, self._put(records.lost(
            run.job_id, index, chunk.attempt, exc, worker_id=worker.worker_id, stdout=stdout,
            stderr=stderr, extra={"lost": reason})))

    def _put(self, record: ResultRecord) -> ResultRecord:
        """Store a record the supervisor made; if the store fails, the future still settles."""
        try:
            return self.store.put_result(record)
        except StoreError:
            log.exception("fanout could not store the record of task %d", record.task_index)
            return record

    # -- cancelling ------------------------------------------------------------------------

    def _cancel_tasks(self, run: JobRun, indexes: list[int], attempt: int,
                      only_pending: bool) -> None:
        cancel = []
        for index in indexes:
            future = run.future(index)
            # A future cancelled by its caller (map's iterator closed) still needs its
            # record, or the job would wait for it for ever; a settled one keeps its outcome.
            if (future.done() and not future.cancelled()) or (only_pending and future.running()):
                continue
            future.cancel()
            cancel.append(index)
        if cancel:
            for stored in self._put_all(records.cancelled(run.job_id, cancel, attempt)):
                self._deliver(run, stored)

    def _put_all(self, records: list[ResultRecord]) -> list[ResultRecord]:
        try:
            return self.store.put_results(records)
        except StoreError:
            log.exception("fanout could not store %d cancellations", len(records))
            return records

    def _cancel_queued(self) -> None:
        self._hand_over_before_cancel()
        self._cancel_futures = True
        queued, self._queue = self._queue, deque()
        held, self._held = self._held, []
        for dispatch in [*queued, *held]:
            self._add(dispatch)

    def _hand_over_before_cancel(self) -> None:
        """Start ``max_workers + 1`` tasks before cancelling the rest, as the stdlib does.

        ProcessPoolExecutor has moved that many calls to its call queue (and so marked them
        running) by the time ``shutdown(cancel_futures=True)`` runs; code that relies on
        some submitted work finishing gets the same here.
        """
        for dispatch in self._pull_submits(True):
            self._add(dispatch)
        started = sum(d.size - d.done for w in self._workers for d in w.inflight)
        for dispatch in self._queue:
            if dispatch.is_reduce:
                continue
            for task in dispatch.chunk.tasks:
                if started > self.max_workers:
                    return
                if dispatch.run.future(task.index).claim() == Claim.RUN:
                    started += 1

    def _cancel_job(self, job_id: str) -> None:
        run = self._runs.get(job_id)
        if run is None or run.cancelled:
            return
        run.cancelled = True
        run.seal()  # a streaming map appends nothing more to a cancelled job
        self._queue = deque(d for d in self._queue if d.run is not run)
        self._held = [d for d in self._held if d.run is not run]
        for worker in list(self._workers):
            if any(d.run is run for d in worker.inflight):
                others = [d for d in worker.inflight if d.run is not run]
                worker.inflight = deque(others)
                worker.kill()
                self._lost(worker, "cancelled", charge=False)
        for stored in self._put_all(records.cancelled(job_id, run.open_tasks())):
            self._deliver(run, stored)
        if run.reduce_future is not None and not run.reduce_future.done():
            run.fail_reduce()
        self._maybe_finish(run)

    def _poll_external_cancels(self) -> None:
        clock = time.monotonic()
        if not self._runs or clock - self._last_cancel_poll < CANCEL_POLL_SECONDS:
            return
        self._last_cancel_poll = clock
        try:
            states = self.store.job_states(self._runs)
        except StoreError:
            return  # asked again in CANCEL_POLL_SECONDS
        for job_id, state in states.items():
            if state == JobState.CANCELLED:
                self._cancel_job(job_id)

    # -- stopping --------------------------------------------------------------------------

    def _stop_workers(self) -> None:
        for worker in self._workers:
            worker.send_stop()
        deadline = time.monotonic() + 10
        for worker in self._workers:
            if worker.heartbeat_age(time.monotonic()) > self.stall_seconds:
                worker.kill()  # stopped (SIGSTOP): it would never read "stop"
            worker.reap(timeout=max(0.1, deadline - time.monotonic()))
        self._forget_workers(self._workers)
        self._workers.clear()

    def _forget_workers(self, workers: list[WorkerProcess]) -> None:
        """The last of stopped workers: their capture files and their rows in the store."""
        for worker in workers:
            worker.cleanup()
        with contextlib.suppress(StoreError):  # `fanout status` prunes dead pids anyway
            self.store.worker_gone([w.worker_id for w in workers])

    def _close_unfinished(self) -> None:
        """At the end: a job with tasks nobody will run ends cancelled, never "running"."""
        for run in list(self._runs.values()):
            self._cancel_job(run.job_id)

    def _fail_everything(self, why: str, error: type[Exception] = WorkerLost) -> None:
        self._held.clear()
        for run in list(self._runs.values()):
            futures = [run.future(i) for i in run.open_tasks()]
            if run.reduce_future is not None:
                futures.append(run.reduce_future)
            for future in futures:
                if not future.done():
                    future.set_exception(error(why))
            run.done.set()
            run.close()
        self._runs.clear()


