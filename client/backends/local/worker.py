"""A local worker process: ``python -m fanout.backends.local.worker --fd N --home DIR``.

It is a plain interpreter started by the supervisor (not a forked copy of the client), so
a user's script is never re-imported and a crash here cannot take the client with it. It
receives chunks on a socket, runs them with the shared :class:`~fanout.runtime.WorkerRuntime`,
and sends back each result record after it is committed to the store.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection

from ... import packing
from ...capture import FdCapture
from ...context import TaskContext
from ...errors import StoreError
from ...protocol import ResultRecord
from ...runtime import WorkerRuntime, safe_text
from .beacon import Beacon
from .messages import FromWorker, Ready, RunChunks, RunReduce, Stop, Stored, Unstored
from .store import LocalStore

log = logging.getLogger("fanout.local.worker")

#: After a task this long, the task loop commits its record itself (see ``put``).
SYNC_COMMIT_AFTER_SECONDS = 0.001
#: Records of shorter tasks are committed in groups: when this many wait, when the oldest
#: has waited this long, or when the worker has run everything it was sent. A worker that
#: dies loses at most these uncommitted results (never reported, so no future saw them);
#: they are run again without charging an attempt.
GROUP_MAX_RECORDS = 1000
GROUP_WINDOW_SECONDS = 0.005
#: How long a commit that fails with a store error (full disk, a lock held too long) is
#: retried before its tasks' futures get the StoreError: a moment's full disk costs nothing.
COMMIT_RETRY_SECONDS = 5.0


class GroupCommitter:
    """Commits finished records in batches, then reports each batch in one message.

    The task loop never waits for the store: while one transaction commits, the next
    results accumulate and go in the following one. A record is reported only after its
    commit, so the supervisor never resolves a future from an uncommitted result; if this
    process dies, records not yet committed are simply recomputed.
    """

    def __init__(self, runtime: WorkerRuntime, store: LocalStore, conn: Connection) -> None:
        self.runtime = runtime
        self.store = store
        self.conn = conn
        self._pending: list[ResultRecord] = []
        self._first_at = 0.0  # when the oldest pending record was queued (monotonic)
        self._cond = threading.Condition()
        self._closing = False
        self._urgent = False
        self._reporting = True
        self._commit_lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="fanout-commit", daemon=True)
        self._thread.start()

    def put(self, record: ResultRecord) -> None:
        """Queue a record; after a task of a millisecond or more, commit it right here.

        Short tasks gain from batching. After a longer one, a commit costs nothing
        measurable, and doing it in this thread avoids waking the committer, which would
        interrupt the next CPU-bound task to take the GIL. The commit lock keeps records
        committed and reported in task order either way.
        """
        # A packed chunk's record (fanout.packing) goes to the committer whatever its
        # length: its calls are short, and the committer's store write and message then
        # overlap the next chunk's calls.
        if record.duration < SYNC_COMMIT_AFTER_SECONDS or packing.ELEMENTS in record.extra:
            with self._cond:
                self._pending.append(record)
                # Wake the committer only to start a group's window or to close a full
                # group: a wake-up per record would take the GIL from the task loop.
                if len(self._pending) == 1:
                    self._first_at = time.monotonic()
                    self._cond.notify()
                elif len(self._pending) >= GROUP_MAX_RECORDS:
                    self._cond.notify()
            return
        with self._commit_lock:
            with self._cond:
                batch, self._pending = self._pending, []
            batch.append(record)
            self._commit(batch)

    def flush(self) -> None:
        """The worker ran all it was sent: commit what waits now, not at the window's end."""
        with self._cond:
            if self._pending:
                self._urgent = True
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closing:
                    self._cond.wait()
                if not self._pending and self._closing:
                    return
                while (len(self._pending) < GROUP_MAX_RECORDS and not self._closing
                       and not self._urgent):
                    left = self._first_at + GROUP_WINDOW_SECONDS - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                self._urgent = False
            with self._commit_lock:
                with self._cond:
                    batch, self._pending = self._pending, []
                if batch:
                    self._commit(batch)

    def _commit(self, batch: list[ResultRecord]) -> None:
        """Store ``batch`` and report it; a batch that cannot be stored is reported as such.

        Nothing here may end the thread: a record the store refuses (full disk, read-only
        store, a lock that is never released) is retried for ``COMMIT_RETRY_SECONDS`` and
        then reported as "unstored" with the reason, so the supervisor fails exactly those
        futures with a StoreError instead of waiting for them for ever.
        """
        deadline = time.monotonic() + COMMIT_RETRY_SECONDS
        delay = 0.05
        while True:
            try:
                # One record (a longer task's, committed as it ends) needs no explicit
                # transaction: a single statement commits itself, in a third of the calls.
                stored = (self.store.put_results(batch) if len(batch) > 1
                          else [self.store.put_result(batch[0])])
                break
            except StoreError as exc:
                if time.monotonic() + delay > deadline:
                    self._report(Unstored(tuple((r.job_id, r.task_index) for r in batch),
                                          str(exc)))
                    return
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
            except Exception as exc:  # a bug: say so on the futures, never die silently
                log.exception("fanout worker could not store %d records", len(batch))
                self._report(Unstored(
                    tuple((r.job_id, r.task_index) for r in batch),
                    f"the worker could not store the result: {safe_text(repr(exc))}"))
                return
        for record, kept in zip(batch, stored, strict=True):
            try:
                self.runtime.settle(record, kept)
            except Exception:  # leftovers (a blob, a checkpoint) only cost space
                log.exception("fanout worker could not clean up after task %d",
                              record.task_index)
        self._report(Stored(tuple(stored)))

    def _report(self, message: FromWorker) -> None:
        if self._reporting:
            try:
                self.conn.send(message)
            except OSError:
                # The supervisor is gone. Keep committing what the task loop still
                # finishes: those results are stored, so a retry will not redo them.
                self._reporting = False


class RunningMarker:
    """Shows a task as running in the store once it has run for ``delay`` seconds.

    Writing a marker for every task would double the store writes of short tasks, whose
    running state nobody can observe anyway. A background thread looks a few times per
    ``delay`` while the worker is busy and marks only slow tasks; starting a task costs one
    assignment, so a CPU-bound task is not interrupted to wake this thread.
    """

    def __init__(self, store: LocalStore, worker_id: str, delay: float = 0.2) -> None:
        self.store = store
        self.worker_id = worker_id
        self.delay = delay
        self._current: tuple[TaskContext, float] | None = None
        self._busy = threading.Event()
        threading.Thread(target=self._run, name="fanout-marker", daemon=True).start()

    def set(self, ctx: TaskContext | None) -> None:
        self._current = None if ctx is None else (ctx, time.monotonic())
        if ctx is not None and not self._busy.is_set():
            self._busy.set()

    def _run(self) -> None:
        marked: TaskContext | None = None
        while True:
            self._busy.wait()
            time.sleep(self.delay / 4)
            current = self._current
            if current is None:
                self._busy.clear()
                if self._current is not None:  # a task started while we cleared
                    self._busy.set()
                target = None
            elif time.monotonic() - current[1] >= self.delay:
                target = current[0]
            else:
                continue
            if target is not marked:
                marked = target
                try:
                    if target is None:
                        self.store.worker_running(self.worker_id, None, None, None)
                    else:
                        self.store.worker_running(self.worker_id, target.job_id,
                                                  target.task_index, target.attempt)
                except StoreError:
                    marked = None  # only `fanout status` misses it; try again next time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fanout-worker")
    parser.add_argument("--fd", type=int, required=True)
    parser.add_argument("--home", required=True)
    parser.add_argument("--worker-id", required=True)
    parser.add_argument("--beacon-fd", type=int, required=True)
    parser.add_argument("--stall-seconds", type=float, required=True)
    args = parser.parse_args(argv)

    # Ctrl-C in the terminal reaches the whole process group; the client decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Keep our end of the socket out of processes a task starts: a child that outlives this
    # worker must not look like it to the supervisor (it watches our pid as well).
    os.set_inheritable(args.fd, False)
    conn = Connection(args.fd)
    beacon = Beacon(args.beacon_fd)
    os.close(args.beacon_fd)  # the mapping stays; the descriptor would only leak to children
    beacon.beat_forever(args.stall_seconds / 5)
    store = LocalStore(args.home)
    capture = FdCapture(directory=str(store.home))
    faulthandler.enable(file=sys.stderr)  # a segfault's traceback lands in the task's stderr
    worker_id = args.worker_id
    with contextlib.suppress(StoreError):  # only `fanout status` would miss this worker
        store.worker_started(worker_id, os.getpid())

    marker = RunningMarker(store, worker_id)

    def on_start(ctx: TaskContext | None) -> None:
        if ctx is None:
            beacon.task_finished()
        else:
            beacon.task_started(*capture.offsets())
        marker.set(ctx)

    runtime = WorkerRuntime(store, worker_id, capture, on_start=on_start)
    runtime.restore_rngs = False  # nothing here draws from them; each task reseeds them
    committer = GroupCommitter(runtime, store, conn)
    runtime.sink = committer.put
    parent = os.getppid()
    runtime.keep_going = lambda: os.getppid() == parent
    conn.send(Ready(worker_id, os.getpid(), tuple(capture.paths)))
    try:
        while True:
            try:
                message = conn.recv()
            except EOFError:
                break  # the supervisor is gone: nothing more will be asked of us
            if isinstance(message, RunChunks):
                for chunk in message.chunks:
                    runtime.run_chunk(chunk)
            elif isinstance(message, RunReduce):
                runtime.run_reduce(message.job_id, message.attempt)
            elif isinstance(message, Stop):
                break
            if not conn.poll():
                committer.flush()  # idle now: nobody should wait for the group's window
    finally:
        committer.close()
        with contextlib.suppress(StoreError):  # `fanout status` prunes dead pids anyway
            store.worker_gone([worker_id])
        capture.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
