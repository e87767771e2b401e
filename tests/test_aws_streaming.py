"""A long ``map`` streams on the AWS emulation too: segments are waves of the map's one job.

Each segment the map appends is one more Step Functions execution of the same job; the
job record is open (``JobRecord.open``) until the map seals it, so no segment's finalize
ends the job early. These tests count (input read, futures held, tasks stored), never time.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
import weakref
from collections.abc import Iterator
from concurrent.futures import CancelledError
from pathlib import Path

import pytest

import fanout
from fanout.collector import LIVE_RUNS
from fanout.testing import EmulatedAws

import tasks
from conftest import eventually

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def aws(offline_aws: EmulatedAws) -> EmulatedAws:
    return offline_aws


@pytest.fixture
def ex(aws: EmulatedAws) -> Iterator[fanout.Executor]:
    executor = fanout.Executor(backend="aws", progress=False, **aws.backend_options)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


class CountingInput:
    """An input that says how much of it was read."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.read = 0

    def __iter__(self) -> Iterator[int]:
        for i in range(self.n):
            self.read += 1
            yield i


class Payload:
    """A result that takes a weak reference (ints do not)."""

    def __init__(self, x: int) -> None:
        self.x = x


def make_payload(x: int) -> Payload:
    return Payload(x)


def _segments(aws: EmulatedAws, job_id: str) -> int:
    item = aws.client("dynamodb").get_item(
        TableName=aws.backend_options["table"], ConsistentRead=True,
        Key={"job_id": {"S": job_id}, "item": {"S": "job"}})["Item"]
    return int(item.get("segments", {}).get("N", "0"))


def test_a_streamed_map_on_aws_is_one_job(ex: fanout.Executor, aws: EmulatedAws) -> None:
    """Input read at most a window ahead, futures held bounded by the window, yielded
    results freed, every result in order, one job that a second executor sees whole."""
    source = CountingInput(32)
    results = ex.map(make_payload, source, chunksize=2, buffersize=4)  # window: 8 tasks
    job_id = results.job_id
    assert source.read == 8 and len(results.futures) == 8
    run = LIVE_RUNS[job_id]
    held_most = taken = 0
    # (not enumerate(results): it keeps its last tuple, and so the last result, alive)
    while (obj := next(results, None)) is not None:
        taken += 1
        assert obj.x == taken - 1
        assert source.read <= taken + 8, (source.read, taken)
        held_most = max(held_most, len(run._by_index), len(results.futures))
        if taken % 8 == 1:  # one result a window (a full collection costs ~1 s here)
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None, f"result {taken - 1} is still referenced after it was yielded"
    assert source.read == 32
    assert held_most <= 8  # the client never held more than a window of futures
    assert _segments(aws, job_id) >= 3  # the first window, then 3+ appended segments

    other = fanout.Executor(backend="aws", progress=False, **aws.backend_options)
    try:
        job = fanout.Job.attach(job_id, backend="aws", **aws.backend_options)
        eventually(lambda: job.info.state == "finished", timeout=120,
                   what="the streamed job to be finalized")
        assert job.n_tasks == 32
        assert [r.task_index for r in job.records()] == list(range(32))
        assert [p.x for p in job.results(timeout=120)] == list(range(32))
        info = job.info
        assert info.summary is not None and info.summary["succeeded"] == 32
        manifest = other.backend.store.manifest(job_id)
        # map's chunksize=2 packs two calls into one task (fanout.packing): 16 tasks
        assert [t.index for c in manifest for t in c.tasks] == list(range(16))
        assert len({c.index for c in manifest}) == len(manifest)  # chunk numbers unique
    finally:
        other.shutdown(wait=True)


def test_streamed_and_eager_maps_give_identical_results_on_aws(aws: EmulatedAws) -> None:
    """A task's seed follows its index: segments change nothing, on AWS as locally."""
    with fanout.Executor(backend="aws", progress=False, seed=5, **aws.backend_options) as ex:
        streamed = list(ex.map(tasks.randomness, range(12), buffersize=6))
    with fanout.Executor(2, progress=False, seed=5) as ex:
        eager = list(ex.map(tasks.randomness, range(12), buffersize=None))
    assert streamed == eager


def test_an_open_stream_is_not_retried_under_its_client(ex: fanout.Executor,
                                                        aws: EmulatedAws) -> None:
    """While a map feeds its job (between segments no execution runs), the job is neither
    orphaned nor retryable; once the map is closed it ends with the tasks it has."""
    results = ex.map(tasks.square, CountingInput(10**9), buffersize=4)
    assert next(results) == 0
    job = fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options)
    assert job.info.state == "running" and not job.info.orphaned
    counts = job.status()
    assert sum(counts[k] for k in ("pending", "running", "succeeded")) == job.n_tasks >= 4
    with pytest.raises(fanout.JobStillRunning, match="streaming map still being fed"):
        job.retry()
    results.close()  # the rest of the input is never read; the job ends
    eventually(lambda: job.info.state in ("finished", "cancelled"), timeout=120,
               what="the closed stream's job to end")
    assert job.n_tasks == fanout.Job.attach(results.job_id, backend="aws",
                                            **aws.backend_options).n_tasks


def test_cancelling_a_streamed_aws_job_stops_its_map(ex: fanout.Executor,
                                                     aws: EmulatedAws) -> None:
    """``fanout cancel`` mid-stream: the map raises CancelledError, reads no more input,
    and the job stays cancelled (no later segment is appended or revives it)."""
    source = CountingInput(10**9)
    results = ex.map(tasks.square, source, buffersize=4)
    assert next(results) == 0
    job = fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options)
    job.cancel()
    assert job.info.state == "cancelled"
    taken = 1
    with pytest.raises(CancelledError):
        for _ in results:
            taken += 1
    assert source.read <= taken + 4
    read = source.read
    assert list(results) == [] and source.read == read
    assert job.info.state == "cancelled"
    counts = job.status()
    assert counts["succeeded"] + counts["cancelled"] == job.n_tasks


def test_retry_of_a_stream_whose_client_died(aws: EmulatedAws, tmp_path: Path) -> None:
    """A client that dies mid-stream leaves its job open and running; once its executions
    end the job is orphaned, and retry runs the tasks the job has (the rest of the input
    was never submitted), sealing it: the job then finishes."""
    script = textwrap.dedent(f"""
        import json, os, sys
        sys.path.insert(0, {str(TESTS)!r})
        import fanout, tasks
        ex = fanout.Executor(backend="aws", progress=False, **{json.dumps(aws.backend_options)})
        results = ex.map(tasks.square, range(10**9), buffersize=4)
        for _ in range(9):
            next(results)
        print(results.job_id, flush=True)
        os._exit(0)  # dies without closing the map: nobody seals the job
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, env={**os.environ, **aws.env}, check=True)
    job_id = out.stdout.strip().splitlines()[-1]
    job = fanout.Job.attach(job_id, backend="aws", **aws.backend_options)
    eventually(lambda: job.info.orphaned, timeout=120,
               what="the dead client's job to be seen orphaned")
    assert job.info.state == "running"
    n_tasks = job.n_tasks
    assert 9 <= n_tasks <= 9 + 4
    counts = job.retry()
    assert counts["succeeded"] == n_tasks
    info = fanout.Job.attach(job_id, backend="aws", **aws.backend_options).info
    assert info.state == "finished" and info.spec.n_tasks == n_tasks
    assert [r.task_index for r in job.records()] == list(range(n_tasks))
