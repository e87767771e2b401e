"""The inline backend: every task runs in the calling process, in submission order.

For debugging and for the serial half of "the same code, serial and parallel": the tasks
go through the same job writing (local store), the same :class:`~fanout.runtime.WorkerRuntime`
(seeds, checkpoints, captured logs, result records) and the same collector as on the
other backends, so results are bit-identical; only where the runtime runs differs. Output
still reaches the terminal and stdin is untouched, so ``breakpoint()`` in a task works.

A long ``map`` streams here too (:mod:`fanout.streaming`): each segment the map appends to
its one job runs inside the ``next()`` that appends it, so the input is read, and the
tasks run, at most one window ahead of the results the caller has taken.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket

from ... import records
from ...collector import LIVE_RUNS, JobRun
from ...future import Claim, Future
from ...ids import new_job_id
from ...job_record import JobRecord
from ...options import TaskOptions
from ...protocol import Chunk
from ...runtime import WorkerRuntime
from ...states import JobState
from ...summary import job_summary
from ..local.backend import LocalBackend
from .tee import TeeCapture


class InlineBackend(LocalBackend):
    """``max_workers`` is accepted (so a pool's code runs unchanged) and has no effect."""

    name = "inline"

    def __init__(self, max_workers: int | None = None, home: str | None = None) -> None:
        super().__init__(max_workers=max_workers, home=home)
        self._runtime = WorkerRuntime(self.store, f"inline/{socket.gethostname()}/{os.getpid()}",
                                      TeeCapture())
        # Nobody watches from outside, so the runtime stops an overrunning task itself
        # (SIGALRM, when the caller is the main thread) as on AWS workers.
        self._runtime.enforce_timeouts = True
        self._runtime.interruptible = True

    def submit(self, fn_key: object, function: bytes, function_name: str, payload: bytes,
               options: TaskOptions, seed: int, inputs: tuple[Future, ...] = ()) -> Future:
        """Write a one-task job and run it now; the future is done when ``submit`` returns."""
        self._check_open()
        job_id = new_job_id()
        spec, manifest = self._write_job(job_id, "submit", function, function_name, [payload],
                                         [seed], options, options.seed or 0)
        future = Future(job_id, 0, self)
        run = JobRun(spec, [future], self.store.load_value)
        if inputs:
            run.inputs = {0: inputs}
        self._start(run, manifest)
        return future

    def _start(self, run: JobRun, manifest: list[Chunk]) -> None:
        """Run the job's chunks here, in order; then, unless a streaming map will append
        more, its reduce step and its end."""
        LIVE_RUNS[run.job_id] = run
        run.driver = self  # Job.attach(...).cancel() in this process asks this backend
        self._run_chunks(run, manifest)
        if run.sealed:
            self._end(run)

    def _launch_segment(self, run: JobRun, chunks: list[Chunk]) -> None:
        self._run_chunks(run, chunks)  # inside the map's next(): the window bounds it

    def _sealed(self, run: JobRun) -> None:
        if not run.stored.is_set():  # not ended already (cancelled, interrupted)
            self._end(run)

    def _run_chunks(self, run: JobRun, chunks: list[Chunk]) -> None:
        try:
            for chunk in chunks:
                self._run_chunk(run, chunk)
        except KeyboardInterrupt:
            self._interrupted(run)
            raise

    def _end(self, run: JobRun) -> None:
        """Every task has run: the reduce step, then the job's end in the store."""
        try:
            if run.reduce_future is not None and not run.reduce_future.done():
                if run.needs_reduce():
                    self._runtime.run_reduce(run.job_id, run.reduce_attempt, run.deliver)
                else:
                    run.fail_reduce()
        except KeyboardInterrupt:
            self._interrupted(run)
            raise
        if run.streaming and self.store.job(run.job_id).state == JobState.CANCELLED:
            run.cancelled = True  # cancelled by another process while the map was open
        state = JobState.CANCELLED if run.cancelled else JobState.FINISHED
        self.store.set_job_state(run.job_id, state, summary=job_summary(self.store, run.job_id,
                                                 run.spec.options.pack))
        run.close()

    def _interrupted(self, run: JobRun) -> None:
        """Ctrl-C stopped the job: cancel what has not run and record the job as cancelled.

        The interrupted task keeps the record the runtime stored for it (a KeyboardInterrupt
        failure); every task without a record gets a CANCELLED one, as cancelling a job on
        the local backend does, so ``fanout status`` and ``Job.attach`` tell the truth.
        """
        run.cancelled = True
        open_tasks = run.open_tasks()
        for index in open_tasks:
            run.future(index).cancel()
        for stored in self.store.put_results(records.cancelled(run.job_id, open_tasks)):
            run.deliver(stored)
        if run.reduce_future is not None and not run.reduce_future.done():
            run.fail_reduce()
        self.store.set_job_state(run.job_id, JobState.CANCELLED,
                                 summary=job_summary(self.store, run.job_id,
                                                 run.spec.options.pack))
        run.close()

    def _run_chunk(self, run: JobRun, chunk: Chunk) -> None:
        # An inline future is done when its call returns; a future from a local executor on
        # the same store may still run: wait for it here, since waiting is all inline can do.
        concurrent.futures.wait([f for t in chunk.tasks for f in run.inputs.get(t.index, ())])
        keep, dropped = [], []
        for task in chunk.tasks:
            if run.future(task.index).claim() == Claim.RUN:
                keep.append(task)
            else:  # cancelled before its turn came (by another thread)
                dropped.append(task.index)
        for stored in self.store.put_results(records.cancelled(run.job_id, dropped,
                                                               chunk.attempt)):
            run.deliver(stored)
        if keep:
            self._runtime.run_chunk(Chunk(chunk.job_id, chunk.index, chunk.tier, chunk.attempt,
                                          tuple(keep)), run.deliver)

    def _stop(self, job: JobRecord) -> bool:
        """Cancel a job of this process: only an open streaming map's job can be running
        (any other ran whole inside its call); its tasks have run, so the job ends here."""
        run = LIVE_RUNS.get(job.job_id)
        if run is None or run.stored.is_set():
            return super()._stop(job)
        self._interrupted(run)
        return True

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        with self._lock:
            self._closed = True  # every task has run by the time its call returned
        self._seal_streams()  # an open streaming map ends with the tasks it appended

    def __repr__(self) -> str:
        return f"InlineBackend(home={str(self.store.home)!r})"
