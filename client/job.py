"""``fanout.Job``: a job by its id, from any process — the one that started it or not."""

from __future__ import annotations

import threading
import time
from typing import Any

from . import packing
from .backends import Backend, JobInfo, create_backend
from .collector import LIVE_RUNS, JobRun
from .errors import WorkerLost
from .future import Future
from .protocol import REDUCE_INDEX, ResultRecord
from .states import JobState

POLL_MIN_SECONDS = 0.02
POLL_MAX_SECONDS = 1.0


class _Watcher(threading.Thread):
    """Feeds stored records into futures by polling new records only (by sequence)."""

    def __init__(self, backend: Backend[Any], run: JobRun) -> None:
        super().__init__(name=f"fanout-watch-{run.job_id}", daemon=True)
        self.backend = backend
        self.run_ = run
        self.stop = threading.Event()

    def _settled(self) -> bool:
        run = self.run_
        return run.map_finished and (run.reduce_future is None or run.reduce_future.done())

    def run(self) -> None:
        run, seq, delay = self.run_, 0, POLL_MIN_SECONDS
        while not self.stop.is_set() and not self._settled():
            records, seq = self.backend.records_since(run.job_id, seq)
            for record in records:
                run.deliver(record)
            if self._settled():
                break
            if records:
                delay = POLL_MIN_SECONDS
            else:
                info = self.backend.job_info(run.job_id)
                if info.orphaned or info.state != JobState.RUNNING:
                    records, seq = self.backend.records_since(run.job_id, seq)
                    for record in records:
                        run.deliver(record)
                    self._abandon(info)
                    break
                delay = min(delay * 1.5, POLL_MAX_SECONDS)
            self.stop.wait(delay)
        run.close()

    def _abandon(self, info: JobInfo) -> None:
        """The job will get no more results without a retry: say so instead of hanging."""
        why = (
            f"job {info.job_id} stopped before this task finished: its client process "
            f"({info.owner}) is gone. Run `fanout retry {info.job_id}` (or Job.retry()) "
            "to run the unfinished tasks; finished results are kept."
        )
        futures = [self.run_.future(i) for i in self.run_.open_tasks()]
        if self.run_.reduce_future is not None:
            futures.append(self.run_.reduce_future)
        for future in futures:
            if not future.done():
                future.set_exception(WorkerLost(why))


class Job:
    """A handle on one job. ``Job.attach(job_id)`` works from any process."""

    def __init__(self, backend: Backend[Any], info: JobInfo, backend_name: str | None,
                 backend_options: dict[str, Any]) -> None:
        self._backend = backend
        self._info = info
        self._backend_name = backend_name
        self._backend_options = backend_options
        self._run: JobRun | None = None
        self._watcher: _Watcher | None = None
        self._n_calls: int | None = None
        self._calls: tuple[JobRun, list[Future]] | None = None  # a packed job's, per call
        self._lock = threading.Lock()

    @classmethod
    def attach(cls, job_id: str, backend: str | None = None, **backend_options: Any) -> Job:
        """The job ``job_id`` as stored by ``backend`` (default: as for ``Executor``)."""
        store = create_backend(backend, **backend_options)
        return cls(store, store.job_info(job_id), backend, backend_options)

    @property
    def job_id(self) -> str:
        return self._info.job_id

    id = job_id

    @property
    def info(self) -> JobInfo:
        self._info = self._backend.job_info(self.job_id)
        return self._info

    @property
    def n_tasks(self) -> int:
        """How many calls the job runs (a packed job's are more than its stored tasks)."""
        spec = self._info.spec
        if not spec.options.pack:
            return spec.n_tasks
        if self._n_calls is None:
            self._n_calls = packing.element_count(self._backend.store, spec)
        return self._n_calls

    def _live(self) -> JobRun:
        with self._lock:
            run = LIVE_RUNS.get(self.job_id)
            if run is not None and len(run.futures) == self._info.spec.n_tasks:
                return run  # this process drives the job: share its futures
            if self._run is None:
                spec = self._info.spec
                futures = [Future(self.job_id, i, self._backend) for i in range(spec.n_tasks)]
                reduce_future = (
                    Future(self.job_id, REDUCE_INDEX, self._backend) if spec.has_reducer else None
                )
                self._run = JobRun(spec, futures, self._backend.load_value, reduce_future)
                self._watcher = _Watcher(self._backend, self._run)
                self._watcher.start()
            return self._run

    def futures(self) -> list[Future]:
        """One future per task, in task order; they settle as results are stored.

        A packed job (``map(..., chunksize=n)``) has one per call, made here from its
        chunks' futures; ``logs()`` of one is its chunk's output.
        """
        run = self._live()
        pack = self._info.spec.options.pack
        if not pack:
            return list(run.futures)
        with self._lock:
            if self._calls is None or self._calls[0] is not run:
                total = self.n_tasks
                logs = packing.ElementLogs(self._backend, pack)
                calls: list[Future] = []
                for chunk in run.futures:
                    first = chunk.task_index * pack
                    calls.extend(packing.element_futures(chunk, first,
                                                         min(pack, total - first), logs))
                self._calls = (run, calls)
            return list(self._calls[1])

    def reduce_future(self) -> Future | None:
        """For a ``map_reduce`` job, the future of the reduced value."""
        return self._live().reduce_future

    def results(self, timeout: float | None = None) -> list[Any]:
        """Every result in task order; raises the first task failure, as ``map`` does."""
        deadline = None if timeout is None else time.monotonic() + timeout
        out = []
        for future in self.futures():
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            out.append(future.result(remaining))
        return out

    def records(self) -> list[ResultRecord]:
        """The stored records in task order; a packed job's as one per call, derived from
        its chunks' records (a chunk's captured output is on each of its calls')."""
        records = self._backend.records(self.job_id)
        pack = self._info.spec.options.pack
        if pack:
            return packing.element_records(records, pack, self._backend.load_value)
        return records

    def status(self) -> dict[str, int]:
        """Task counts by state: pending, running, succeeded, failed, cancelled."""
        return self._backend.counts(self.job_id)

    def summary(self, prices: Any = None) -> dict[str, Any]:
        """Counts and durations, and ``cost``: what the job consumed and its USD estimate.

        Computed from the stored records, so it is the same from any process; ``prices``
        (a ``fanout.cost.Prices``) replaces the region's table for this call.
        """
        from .cost import job_cost

        info = self.info
        summary = dict(info.summary or self.status())
        summary["cost"] = job_cost(self._backend, info.spec, self.records(), prices)
        return summary

    def cancel(self) -> None:
        """Stop the job: unfinished tasks are recorded as cancelled; finished results stay."""
        self._backend.cancel_job(self.job_id)

    def retry(self, progress: Any = None) -> dict[str, int]:
        """Re-run only the tasks that did not succeed, wait for them, return the counts.

        Futures from :meth:`futures` taken before the retry keep their old outcome; call
        :meth:`futures` or :meth:`results` again for the new one.
        """
        backend = create_backend(self._backend_name, **self._backend_options)
        try:
            counts = backend.retry_job(self.job_id, progress=progress)
        finally:
            backend.shutdown(wait=True)
        with self._lock:
            if self._watcher is not None:
                self._watcher.stop.set()
            self._run = self._watcher = None
        self._info = self._backend.job_info(self.job_id)
        return counts

    def __repr__(self) -> str:
        return f"<fanout.Job {self.job_id} {self._info.state} tasks={self.n_tasks}>"
