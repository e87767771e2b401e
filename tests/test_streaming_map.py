"""A long ``map`` streams (issue 9, item 2): bounded submission, results freed, one job.

The stdlib's ``Executor.map(buffersize=)`` (Python 3.14) reads its input at most
``buffersize`` calls ahead of the results taken; fanout does the same by default for long
inputs, appending the tasks to the map's one job. These tests count (how much of the input
was read, what is still referenced), never time. They run on the local backend and on
``inline`` (where each segment runs inside the ``next()`` that appends it); the AWS
emulation's are in ``test_aws_streaming.py``.
"""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

import fanout
import fanout.streaming
from fanout.backends.inline.backend import InlineBackend

from conftest import eventually
from tasks import fail_unless, randomness, square


@pytest.fixture(params=["local", "inline"])
def ex(request: pytest.FixtureRequest, home: Path) -> Iterator[fanout.Executor]:
    executor = fanout.Executor(2, backend=request.param, progress=False)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


class Payload:
    """A result that takes a weak reference (ints do not)."""

    def __init__(self, x: int) -> None:
        self.x = x


def make_payload(x: int) -> Payload:
    return Payload(x)


class CountingInput:
    """An input as big as we like that says how much of it was read."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.read = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.read += 1
            yield i


def test_input_is_read_at_most_buffersize_ahead(ex: fanout.Executor) -> None:
    """Python 3.14 ``map(buffersize=)``: submitted and not yet yielded <= buffersize."""
    source = CountingInput(400)
    results = ex.map(square, source, buffersize=8)
    assert source.read == 8
    assert len(results.futures) == 8
    out = []
    for taken, value in enumerate(results, 1):
        assert source.read <= taken + 8, (source.read, taken)
        out.append(value)
    assert out == [x * x for x in range(400)]
    assert source.read == 400


def test_buffersize_counts_chunks(ex: fanout.Executor) -> None:
    """As ProcessPoolExecutor's (one call per chunk): the window is buffersize chunks."""
    source = CountingInput(300)
    results = ex.map(square, source, chunksize=5, buffersize=4)
    assert source.read == 20
    for taken, _ in enumerate(results, 1):
        assert source.read <= taken + 20
    assert source.read == 300


def test_long_input_streams_by_default(ex: fanout.Executor,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``buffersize="auto"``: an input longer than the window is read as results are taken."""
    monkeypatch.setattr(fanout.streaming, "AUTO_WINDOW_TASKS", 40)
    source = CountingInput(10**9)  # never materialised: it would not fit in memory
    results = ex.map(square, source)
    assert source.read == 40
    for taken, value in enumerate(results, 1):
        assert value == (taken - 1) ** 2
        assert source.read <= taken + 40
        if taken == 500:
            break
    assert source.read <= 540
    del results  # the map is closed: the job ends, the rest of the input is never read
    read = source.read
    assert read <= 540


def test_short_input_is_one_plain_job(ex: fanout.Executor,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """An input that fits the default window is submitted at once, as the stdlib does."""
    monkeypatch.setattr(fanout.streaming, "AUTO_WINDOW_TASKS", 40)
    source = CountingInput(40)
    results = ex.map(square, source)
    assert source.read == 40
    assert len(results.futures) == 40
    assert list(results) == [x * x for x in range(40)]
    unbounded = CountingInput(100)
    results = ex.map(square, unbounded, buffersize=None)  # the stdlib's default: all at once
    assert unbounded.read == 100
    assert list(results) == [x * x for x in range(100)]


def test_yielded_results_are_freed_while_the_map_runs(ex: fanout.Executor) -> None:
    """test_free_reference, at once: a yielded result is referenced by nobody but the caller.

    With a streaming map the job is still running (more tasks pending and being appended),
    so nothing may keep the futures of the tasks already handed out.
    """
    results = ex.map(make_payload, range(200), buffersize=10)
    seen = 0
    for obj in results:
        assert obj.x == seen
        ref = weakref.ref(obj)
        del obj
        if ref() is not None:  # not freed by its reference count: collect cycles, once
            gc.collect()  # (a full collection costs ~0.75 s in a long test session)
        assert ref() is None, f"result {seen} is still referenced after it was yielded"
        seen += 1
    assert seen == 200


def test_a_streamed_map_is_one_job(ex: fanout.Executor, home: Path) -> None:
    """``results.job_id`` names the whole map: attach, status and records see every task."""
    results = ex.map(square, CountingInput(250), chunksize=3, buffersize=5)
    job_id = results.job_id
    assert list(results) == [x * x for x in range(250)]
    job = fanout.Job.attach(job_id)
    eventually(lambda: job.info.state == "finished", what="the job to be recorded finished")
    assert job.n_tasks == 250
    assert job.status()["succeeded"] == 250
    assert [r.task_index for r in job.records()] == list(range(250))
    assert job.results() == [x * x for x in range(250)]
    store = ex.backend.store
    manifest = store.manifest(job_id)
    # map's chunksize packs each chunk of 3 calls into one stored task (fanout.packing)
    assert [t.index for c in manifest for t in c.tasks] == list(range(84))
    assert len({c.index for c in manifest}) == len(manifest)  # chunk numbers stay unique


@pytest.mark.parametrize("backend", ["local", "inline"])
def test_streamed_and_eager_maps_give_identical_seeds(home: Path, backend: str) -> None:
    """A task's seed follows its index, so appending in segments changes no result, and
    a streamed inline map gives what an eager local one gives (bit-identical)."""
    with fanout.Executor(2, backend=backend, progress=False, seed=11) as ex:
        streamed = list(ex.map(randomness, range(60), buffersize=7))
    with fanout.Executor(2, progress=False, seed=11) as ex:
        eager = list(ex.map(randomness, range(60), buffersize=None))
    assert streamed == eager
    assert len({seed for seed, _, _ in streamed}) == 60


def test_retry_of_a_streamed_map_reruns_only_failures(ex: fanout.Executor,
                                                      tmp_path: Path) -> None:
    marker = str(tmp_path / "fixed")
    results = ex.map(fail_unless, [marker] * 120, range(120), [77] * 120, buffersize=6)
    job_id = results.job_id
    out: list[int] = []
    with pytest.raises(RuntimeError, match="task 77 is not fixed yet"):
        out.extend(results)
    assert out == list(range(77))
    job = fanout.Job.attach(job_id)
    eventually(lambda: job.info.state != "running", what="the failed map's job to end")
    open(marker, "w").close()
    counts = job.retry()
    # The map stopped at its failure: what it had submitted is the job, and retry runs
    # exactly those tasks that did not succeed (the failure and what was cancelled).
    assert counts["succeeded"] == job.n_tasks
    assert 77 < job.n_tasks <= 77 + 1 + 6
    assert fanout.Job.attach(job_id).results() == list(range(job.n_tasks))


def test_cancelling_a_streamed_job_stops_its_map(ex: fanout.Executor) -> None:
    """``Job.cancel`` (or ``fanout cancel``) ends the map: CancelledError, no more input."""
    source = CountingInput(10**9)
    results = ex.map(square, source, buffersize=10)
    assert next(results) == 0
    fanout.Job.attach(results.job_id).cancel()
    taken = 1
    with pytest.raises(CancelledError):
        for _ in results:
            taken += 1
    assert source.read <= taken + 10
    read = source.read
    job = fanout.Job.attach(results.job_id)
    eventually(lambda: job.info.state == "cancelled", what="the job to be recorded cancelled")
    assert list(results) == []
    assert source.read == read


def test_buffersize_is_checked_as_the_stdlib_does(ex: fanout.Executor) -> None:
    with pytest.raises(TypeError, match="buffersize must be an integer or None"):
        ex.map(square, range(3), buffersize=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="buffersize must be None or > 0"):
        ex.map(square, range(3), buffersize=0)


@pytest.mark.parametrize("backend", ["local", "inline"])
def test_executor_shutdown_ends_an_unfinished_stream(home: Path, backend: str) -> None:
    """An open job never stays "running": shutdown seals it and records it cancelled."""
    ex = fanout.Executor(2, backend=backend, progress=False)
    results = ex.map(square, CountingInput(10**9), buffersize=4)
    assert next(results) == 0
    ex.shutdown(wait=True)
    job = fanout.Job.attach(results.job_id)
    assert job.info.state in ("cancelled", "finished")
    with pytest.raises(RuntimeError, match=r"after shutdown|takes no more tasks"):
        for _ in results:
            pass
    assert os.path.isdir(home)


def test_inline_map_runs_at_most_a_window_ahead(home: Path) -> None:
    """``inline`` streams: a task runs in the caller's ``next()``, in submission order, at
    most one window ahead of the results taken; no worker processes. (A task's record is
    stored when it has run, so the store counts what ran.)"""
    source = CountingInput(10**9)  # never materialised
    with fanout.Executor(backend="inline", progress=False) as ex:
        results = ex.map(square, source, buffersize=8)
        job_id = results.job_id
        store = ex.backend.store

        def ran() -> list[int]:
            return [r.task_index for r in store.results(job_id)]

        assert source.read == 8 and ran() == list(range(8))
        for taken, value in enumerate(results, 1):
            assert value == (taken - 1) ** 2
            done = ran()
            assert done == list(range(len(done)))  # in order, each once
            assert len(done) <= taken + 8, (len(done), taken)
            assert source.read == len(done)
            if taken == 300:
                break
        results.close()
        backend = ex.backend
        assert isinstance(backend, InlineBackend)
        assert backend.worker_pids() == []
    job = fanout.Job.attach(job_id)
    assert job.info.state in ("cancelled", "finished")
    assert 300 <= job.n_tasks <= 308
    assert job.status()["succeeded"] == job.n_tasks


def test_inline_streamed_job_is_recorded_finished_when_exhausted(home: Path) -> None:
    with fanout.Executor(backend="inline", progress=False) as ex:
        results = ex.map(square, CountingInput(103), buffersize=10)
        assert list(results) == [x * x for x in range(103)]
        job = fanout.Job.attach(results.job_id)
        assert job.info.state == "finished"  # at once: inline ends the job in the call
        assert job.n_tasks == 103
        assert job.info.summary is not None and job.info.summary["succeeded"] == 103
