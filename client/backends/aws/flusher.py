"""An AWS worker's results, written a page at a time.

A chunk's records go into a buffer (the runtime's sink) and are written with one
conditional ``UpdateItem`` per result page (``AwsStore.put_results``) when the chunk's tasks
of that page are all done, when the oldest buffered record is FLUSH_SECONDS old (a timer
thread, so a long task does not hold the results before it), and when the chunk ends. This
is the AWS half of durability at the grain of the work: one-second tasks write 1/P items
per task instead of one, and a worker that dies loses at most the results it finished in
its last FLUSH_SECONDS (those tasks run again on the retry; nothing stored is lost).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from ...protocol import Chunk, ResultRecord
from ...runtime import WorkerRuntime
from .store import AwsStore

#: The longest a finished result waits in a worker before it is written: longer than a
#: page of one-second tasks takes, so such a page is written once.
FLUSH_SECONDS = 10.0

_active: list[PageFlusher] = []


def active_flusher() -> PageFlusher | None:
    """The flusher of the chunk this process is running (Batch's SIGTERM handler flushes
    it before the process exits)."""
    return _active[-1] if _active else None


class PageFlusher:
    """The sink of one chunk's records; ``close()`` writes what is left."""

    def __init__(self, store: AwsStore, runtime: WorkerRuntime, chunk: Chunk,
                 on_stored: Callable[[ResultRecord, ResultRecord], None],
                 max_age: float = FLUSH_SECONDS) -> None:
        self.store, self.runtime, self.on_stored = store, runtime, on_stored
        self.layout = store.layout(chunk.job_id)
        self.max_age = max_age
        self._waiting: dict[int, set[int]] = {}  # page -> the chunk's tasks not yet done
        for task in chunk.tasks:
            self._waiting.setdefault(self.layout.page(task.index), set()).add(task.index)
        self._buffer: list[ResultRecord] = []
        self._oldest: float | None = None
        # Reentrant: Batch's SIGTERM handler may flush while this thread is flushing.
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._timer = threading.Thread(target=self._flush_when_old, daemon=True,
                                       name="fanout-page-flusher")
        self._timer.start()
        _active.append(self)

    def __call__(self, record: ResultRecord) -> None:
        with self._lock:
            self._buffer.append(record)
            if self._oldest is None:
                self._oldest = time.monotonic()
            page = self.layout.page(record.task_index)
            waiting = self._waiting.get(page, set())
            waiting.discard(record.task_index)
            if not waiting:
                self.flush({page})

    def _flush_when_old(self) -> None:
        while not self._stop.wait(min(1.0, self.max_age)):
            with self._lock:
                if self._oldest is not None and time.monotonic() - self._oldest >= self.max_age:
                    try:
                        self.flush()
                    except Exception:  # kept in the buffer; close() tries again and raises
                        self._oldest = time.monotonic()

    def flush(self, pages: set[int] | None = None) -> None:
        """Write the buffered records (of ``pages`` only, if given)."""
        with self._lock:
            if pages is None:
                batch, self._buffer = self._buffer, []
            else:
                batch = [r for r in self._buffer if self.layout.page(r.task_index) in pages]
                self._buffer = [r for r in self._buffer
                                if self.layout.page(r.task_index) not in pages]
            self._oldest = time.monotonic() if self._buffer else None
            if not batch:
                return
            try:
                stored_records = self.store.put_results(batch)
            except BaseException:
                # Not written (e.g. throttled past botocore's retries): back into the buffer,
                # so a later flush or the chunk's end writes them or fails the chunk.
                self._buffer[:0] = batch
                self._oldest = self._oldest or time.monotonic()
                raise
            for record, stored in zip(batch, stored_records, strict=True):
                self.runtime.settle(record, stored)
                self.on_stored(record, stored)

    def close(self) -> None:
        """Stop the timer and write everything left."""
        self._stop.set()
        try:
            self.flush()
        finally:
            if self in _active:
                _active.remove(self)
            if self._timer is not threading.current_thread():
                self._timer.join(timeout=5)
