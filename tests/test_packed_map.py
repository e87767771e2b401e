"""``map(f, xs, chunksize=n)``: a chunk is one task (one record), its calls keep their own
outcomes, seeds, exceptions and retries (``fanout.packing``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import fanout
from fanout.backends.local.store import LocalStore
from fanout.collector import RemoteTraceback
from fanout.protocol import FAILED, SUCCEEDED

import tasks
from conftest import eventually, wait_for_file


def test_a_chunk_is_one_record_and_results_come_in_order(ex: fanout.Executor,
                                                         home: Path) -> None:
    results = ex.map(tasks.add, range(1000), range(1000), chunksize=64)
    assert list(results) == [2 * i for i in range(1000)]
    stored = LocalStore(home).results(results.job_id)
    assert len(stored) == 16  # ceil(1000 / 64) records, not 1000
    assert all(r.status == SUCCEEDED for r in stored)
    assert [r.extra["elements"] for r in stored] == [64] * 15 + [40]
    job = fanout.Job.attach(results.job_id)
    assert job.n_tasks == 1000
    assert job.status()["succeeded"] == 1000 and job.status()["pending"] == 0
    records = job.records()
    assert [r.task_index for r in records] == list(range(1000))
    assert job.results(timeout=60) == [2 * i for i in range(1000)]


def test_a_failed_call_raises_at_its_position_with_type_and_remote_traceback(
        ex: fanout.Executor) -> None:
    results = ex.map(tasks.fail_if, range(20), [7] * 20, chunksize=5)
    seen = []
    with pytest.raises(ValueError, match="task 7 is bad") as info:
        for value in results:
            seen.append(value)
    assert seen == list(range(7))  # the results before it came first, as the stdlib does
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "fail_if" in cause.tb and "packing.py" not in cause.tb  # the user's frames


def test_per_call_futures_only_when_asked(ex: fanout.Executor, home: Path) -> None:
    results = ex.map(tasks.fail_if, range(12), [5] * 12, chunksize=4)
    futures = results.futures
    assert [f.task_index for f in futures] == list(range(12))
    assert isinstance(futures[5].exception(timeout=60), ValueError)
    assert [f.result(timeout=60) for i, f in enumerate(futures) if i != 5] == [
        i for i in range(12) if i != 5]
    job = fanout.Job.attach(results.job_id)
    counts = job.status()
    assert (counts["succeeded"], counts["failed"]) == (11, 1)
    failed = [r for r in job.records() if r.status == FAILED]
    assert [r.task_index for r in failed] == [5] and "task 5 is bad" in (failed[0].traceback or "")
    # The iterator and the futures agree; iterating after taking the futures still works,
    # and futures asked for midway through a chunk get that chunk's remaining results.
    assert next(results) == 0
    assert [f.result(timeout=60) for f in results.futures[:4]] == [1, 2, 3, 4]
    results = ex.map(tasks.square, range(8), chunksize=4)
    assert next(results) == 0
    assert [f.result(timeout=60) for f in results.futures] == [i * i for i in range(1, 8)]


def test_a_calls_future_keeps_its_value_when_the_iterator_yields_it_first(
        ex: fanout.Executor, tmp_path: Path) -> None:
    """A chunk's future wakes the map's iterator before it runs the callback that settles
    the calls' futures, and the iterator frees each value it yields. Here that callback is
    held on the collector's thread after call 0 until the iterator has yielded (and freed)
    every value: the calls' futures must still hold their values, not None (the race
    ``test_aws.py`` hit once in 540 runs)."""
    gate = tmp_path / "gate"
    values = [10, 11, 12, 13]
    results = ex.map(tasks.block_until, [str(gate)] * 4, values, chunksize=4)
    futures = results.futures
    iterating = threading.get_ident()
    release = threading.Event()

    def hold(_: object) -> None:
        # Only on the thread settling the chunk: the iterator may settle call 0 itself.
        if threading.get_ident() != iterating:
            release.wait(60)

    futures[0].add_done_callback(hold)
    gate.touch()
    try:
        assert list(results) == values
    finally:
        release.set()
    assert [f.result(timeout=60) for f in futures] == values


def test_seeds_and_rngs_of_a_call_do_not_depend_on_chunking(home: Path) -> None:
    def draws(chunksize: int, workers: int) -> list[tuple[int, float, float]]:
        with fanout.Executor(max_workers=workers, seed=11, progress=False) as ex:
            return list(ex.map(tasks.randomness, range(25), chunksize=chunksize))

    reference = draws(1, 2)
    assert draws(4, 2) == reference
    assert draws(25, 1) == reference
    assert len({r[0] for r in reference}) == 25


def test_retry_reruns_only_the_calls_that_failed(ex: fanout.Executor, tmp_path: Path) -> None:
    log, marker = str(tmp_path / "log"), str(tmp_path / "fixed")
    results = ex.map(_logged_fail_unless, [marker] * 30, range(30), [log] * 30, chunksize=10)
    with pytest.raises(RuntimeError, match="task 13 is not fixed"):
        list(results)
    job = fanout.Job.attach(results.job_id)
    eventually(lambda: job.info.state != "running", what="the job to end")
    before = job.status()
    assert sum(before.values()) == 30 and before["failed"] >= 1 and before["pending"] == 0
    Path(marker).touch()
    counts = job.retry()
    assert counts["succeeded"] == 30 and counts["failed"] == 0
    assert job.results(timeout=60) == list(range(30))
    runs = Counter(int(line) for line in Path(log).read_text().split())
    # A call that succeeded keeps its first result; only 13 ran again. Calls after the
    # map's exception may not have run at all the first time (their chunks were cancelled).
    assert runs[13] == 2
    assert all(count == 1 for index, count in runs.items() if index != 13)
    assert set(runs) == set(range(30))


def _logged_fail_unless(marker: str, x: int, log: str) -> int:
    with open(log, "a") as out:
        out.write(f"{x}\n")
    return tasks.fail_unless(marker, x, 13)


def test_killing_a_worker_mid_chunk_reruns_that_chunk(ex: fanout.Executor,
                                                      tmp_path: Path, home: Path) -> None:
    started, go = str(tmp_path / "started"), str(tmp_path / "go")
    results = ex.map(_block_at, range(200), [57] * 200, [started] * 200, [go] * 200,
                     chunksize=20)
    eventually(lambda: os.path.exists(started) and Path(started).read_text() != "",
               what="the blocking call to start")
    pid = int(Path(started).read_text())
    os.unlink(started)
    os.kill(pid, signal.SIGKILL)
    Path(go).touch()
    assert list(results) == list(range(200))
    stored = LocalStore(home).results(results.job_id)
    assert all(r.status == SUCCEEDED for r in stored) and len(stored) == 10
    # The chunk in flight is charged one attempt; the others ran once.
    assert {r.task_index for r in stored if r.attempt > 1} == {57 // 20}


def _block_at(x: int, at: int, started: str, go: str) -> int:
    if x == at and not os.path.exists(go):
        Path(started).write_text(str(os.getpid()))
        if not wait_for_file(go):
            raise TimeoutError("the test never released the blocked call")
    return x


def test_a_streaming_packed_map_reads_its_input_a_window_ahead(ex: fanout.Executor) -> None:
    read = []

    def source() -> Iterator[int]:
        for i in range(500):
            read.append(i)
            yield i

    results = ex.map(tasks.square, source(), chunksize=10, buffersize=3)
    for n, value in enumerate(results):
        assert value == n * n
        assert len(read) <= n + 1 + 3 * 10  # one window (3 chunks) ahead, at most
    assert len(read) == 500
    assert fanout.Job.attach(results.job_id).status()["succeeded"] == 500


def test_inline_backend_runs_packed_chunks_the_same_way(home: Path) -> None:
    with fanout.Executor(backend="inline", seed=3, progress=False) as inline:
        got = list(inline.map(tasks.randomness, range(9), chunksize=4))
    with fanout.Executor(max_workers=2, seed=3, progress=False) as local:
        assert list(local.map(tasks.randomness, range(9), chunksize=1)) == got


def test_a_calls_future_can_be_another_tasks_argument(ex: fanout.Executor) -> None:
    results = ex.map(tasks.fail_if, range(10), [6] * 10, chunksize=4)
    calls = results.futures
    assert ex.submit(tasks.add, calls[5], 100).result(timeout=60) == 105
    with pytest.raises(fanout.DependencyFailed, match="task 6 is bad"):
        ex.submit(tasks.add, calls[6], 100).result(timeout=60)


def test_the_cli_counts_and_lists_calls(ex: fanout.Executor, home: Path) -> None:
    results = ex.map(tasks.fail_if, range(10), [3] * 10, chunksize=4)
    futures = results.futures
    assert isinstance(futures[3].exception(timeout=60), ValueError)
    assert [f.result(timeout=60) for f in futures[4:]] == list(range(4, 10))
    job = fanout.Job.attach(results.job_id)
    eventually(lambda: job.info.state == "finished", what="the job to be recorded finished")

    def cli(*args: str) -> str:
        return subprocess.run([sys.executable, "-m", "fanout.cli", *args], capture_output=True,
                              text=True, check=False, env=os.environ.copy()).stdout

    status = cli("status", results.job_id)
    assert "10 tasks" in status and "succeeded 9  failed 1" in status
    listing = cli("results", results.job_id).splitlines()
    assert len(listing) == 10 and "task 3 is bad" in listing[3]
    assert "ValueError: task 3 is bad" in cli("logs", results.job_id, "3")


def test_timeout_bounds_a_call_so_a_chunk_gets_the_sum(ex: fanout.Executor) -> None:
    """``timeout=`` is per call: four calls of 0.3 s under timeout=0.5 run as one packed
    chunk (1.2 s) without a timeout, and a chunk whose calls together outrun 4 x 0.5 s is
    stopped with a TaskTimeout that names both numbers."""
    bounded = ex.options(timeout=0.5, retries=0)
    assert list(bounded.map(tasks.spin, [0.3] * 4, chunksize=4)) == [0.3] * 4
    with pytest.raises(fanout.TaskTimeout, match=r"2\.0s \(timeout=0\.5s per call, 4 calls"):
        list(bounded.map(tasks.spin, [0.3, 0.3, 0.3, 60.0], chunksize=4))
