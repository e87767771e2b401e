"""fanout.Executor behaves as concurrent.futures documents (ProcessPoolExecutor users switch)."""

from __future__ import annotations

import concurrent.futures as cf
import traceback
from pathlib import Path

import pytest

import fanout
from fanout.collector import RemoteTraceback

import tasks
from conftest import eventually


def test_is_a_real_executor_with_real_futures(ex: fanout.Executor) -> None:
    assert isinstance(ex, cf.Executor)
    future = ex.submit(tasks.add, 2, b=3)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=60) == 5
    assert future.job_id and future.task_index == 0


def test_stdlib_wait_and_as_completed_work(ex: fanout.Executor) -> None:
    futures = [ex.submit(tasks.square, i) for i in range(20)]
    done, not_done = cf.wait(futures, timeout=60)
    assert len(done) == 20 and not not_done
    assert sorted(f.result() for f in cf.as_completed(futures, timeout=60)) == sorted(
        i * i for i in range(20))
    assert fanout.wait is cf.wait and fanout.as_completed is cf.as_completed


def test_map_is_ordered_even_when_later_tasks_finish_first(ex: fanout.Executor) -> None:
    durations = [0.2, 0.0, 0.1, 0.0, 0.05, 0.0]
    assert list(ex.map(tasks.spin, durations)) == durations


def test_map_yields_before_the_job_is_done(ex: fanout.Executor, tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    results = ex.map(tasks.block_until, ["/", gate], ["first", "second"])
    assert next(results) == "first"  # task 1 cannot finish until we open the gate
    Path(gate).touch()
    assert next(results) == "second"
    with pytest.raises(StopIteration):
        next(results)


def test_map_timeout_raises_timeout_error_from_the_iterator(ex: fanout.Executor,
                                                            tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    results = ex.map(tasks.block_until, [str(gate)], timeout=0.3)
    assert results.job_id
    with pytest.raises(TimeoutError):
        next(results)
    gate.touch()


def test_map_accepts_several_iterables_and_starmap(ex: fanout.Executor) -> None:
    assert list(ex.map(tasks.add, [1, 2, 3], [10, 20, 30, 40])) == [11, 22, 33]
    assert list(ex.starmap(tasks.add, [(1, 1), (2, 2)])) == [2, 4]


def test_map_chunksize_groups_tasks_into_chunks(ex: fanout.Executor) -> None:
    # The executor's chunksize groups tasks that keep a record each...
    results = ex.options(chunksize=7).map(tasks.square, range(20))
    assert list(results) == [i * i for i in range(20)]
    manifest = ex.backend.store.manifest(results.job_id)
    assert [len(c.tasks) for c in manifest] == [7, 7, 6]
    # ...map's own chunksize packs each chunk into one task (fanout.packing), as
    # ProcessPoolExecutor sends a chunk as one call.
    results = ex.map(tasks.square, range(20), chunksize=7)
    assert list(results) == [i * i for i in range(20)]
    manifest = ex.backend.store.manifest(results.job_id)
    assert [len(c.tasks) for c in manifest] == [1, 1, 1]
    assert fanout.Job.attach(results.job_id).n_tasks == 20
    with pytest.raises(ValueError, match="chunksize"):
        ex.map(tasks.square, range(3), chunksize=0)


def test_each_map_is_one_job_with_its_id(ex: fanout.Executor) -> None:
    first, second = ex.map(tasks.square, range(3)), ex.map(tasks.square, range(3))
    assert first.job_id != second.job_id
    assert {f.job_id for f in first.futures} == {first.job_id}
    assert list(first) == list(second)
    assert first.futures == []  # yielded results are not kept (see test_stdlib_compat)
    assert len(fanout.Job.attach(first.job_id).futures()) == 3


def test_submit_after_shutdown_raises_runtime_error(home: Path) -> None:
    executor = fanout.Executor(max_workers=1, progress=False)
    executor.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(tasks.square, 2)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.map(tasks.square, [1])


def test_shutdown_cancel_futures_cancels_what_has_not_started(home: Path,
                                                              tmp_path: Path) -> None:
    gate, started = tmp_path / "gate", tmp_path / "started"
    executor = fanout.Executor(max_workers=1, progress=False)
    blocker = executor.submit(tasks.block_until, str(gate), "done", str(started))
    eventually(started.exists, what="the first task to start")
    queued = [executor.submit(tasks.square, i) for i in range(5)]
    executor.shutdown(wait=False, cancel_futures=True)
    gate.touch()
    assert blocker.result(timeout=60) == "done"
    # As ProcessPoolExecutor: max_workers + 1 calls were handed over and still run.
    assert queued[0].result(timeout=60) == 0
    assert all(f.cancelled() for f in queued[1:])
    with pytest.raises(cf.CancelledError):
        queued[1].result()


@pytest.mark.parametrize("workers", [0, -1])
def test_max_workers_must_be_positive(home: Path, workers: int) -> None:
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        fanout.Executor(max_workers=workers)


class DomainError(Exception):
    pass


def raise_domain_error(x: int) -> None:
    raise DomainError(f"no good: {x}")


def test_task_exception_keeps_type_and_remote_traceback(ex: fanout.Executor) -> None:
    future = ex.submit(raise_domain_error, 7)
    with pytest.raises(DomainError, match="no good: 7") as info:
        future.result(timeout=60)
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "raise_domain_error" in str(cause) and "DomainError" in str(cause)
    rendered = "".join(traceback.format_exception(info.value))
    assert "raise_domain_error" in rendered


def test_map_raises_the_task_exception_in_order(ex: fanout.Executor) -> None:
    results = ex.map(tasks.fail_if, range(5), [3] * 5)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="task 3 is bad"):
        next(results)


class Unpicklable(Exception):
    def __init__(self) -> None:
        super().__init__("carries a lock")
        import threading

        self.lock = threading.Lock()


def raise_unpicklable() -> None:
    raise Unpicklable()


def test_unpicklable_exception_becomes_remote_error(ex: fanout.Executor) -> None:
    with pytest.raises(fanout.RemoteError) as info:
        ex.submit(raise_unpicklable).result(timeout=60)
    assert info.value.type_name.endswith("Unpicklable")
    assert "raise_unpicklable" in info.value.remote_traceback


def test_options_returns_an_executor_on_the_same_backend(ex: fanout.Executor) -> None:
    quick = ex.options(timeout=30, retries=0)
    assert quick.backend is ex.backend
    assert quick.task_options.timeout == 30 and ex.task_options.timeout is None
    assert quick.submit(tasks.square, 4).result(timeout=60) == 16
    with pytest.raises(TypeError, match="unknown task option"):
        ex.options(colour="red")


def test_context_manager_waits_for_submitted_work(home: Path) -> None:
    with fanout.Executor(max_workers=2, progress=False) as executor:
        futures = [executor.submit(tasks.spin, 0.05) for _ in range(4)]
    assert all(f.done() for f in futures)
