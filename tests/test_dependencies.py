"""Futures as task arguments: no barriers, DependencyFailed, any container, both backends."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path
from typing import Any

import pytest
from dependency_tasks import Pair, boom, step, total, value_of

import fanout


def run_diamond(ex: fanout.Executor, tmp: Path,
                futures: dict[str, fanout.Future] | None = None) -> dict[str, dict[str, Any]]:
    """A -> B1, B2 -> D, with C depending on B1 only; B2 finishes only after C has run.

    B2 waits (boundedly) for a file that C writes: with a barrier after the first layer, C
    would wait for B2 and B2 for C, and B2 would fail at its deadline.
    """
    c_ran = str(tmp / "c-ran")
    a = ex.submit(step, "A")
    b1 = ex.submit(step, "B1", a)
    b2 = ex.submit(step, "B2", a, wait_for=c_ran)  # the slow one
    c = ex.submit(step, "C", b1, signal=c_ran)
    d = ex.submit(step, "D", {"left": b1, "right": [b2]})
    named = {"A": a, "B1": b1, "B2": b2, "C": c, "D": d}
    if futures is not None:
        futures.update(named)
    return {name: f.result(timeout=120) for name, f in named.items()}


def check_diamond(out: dict[str, dict[str, Any]]) -> None:
    # C (second layer below A) started before the slowest first-layer task B2 ended...
    assert out["C"]["started"] < out["B2"]["ended"]
    # ...while D, which takes B2, started only after B2 ended and received both values.
    assert out["D"]["started"] >= out["B2"]["ended"]
    assert out["B1"]["started"] >= out["A"]["ended"]
    assert out["D"]["inputs"]["left"]["name"] == "B1"
    assert out["D"]["inputs"]["right"][0]["name"] == "B2"
    assert out["B2"]["inputs"]["name"] == "A"


def test_diamond_has_no_barrier_locally(ex: fanout.Executor, tmp_path: Path) -> None:
    check_diamond(run_diamond(ex, tmp_path))


def test_nested_containers_and_dataclasses(ex: fanout.Executor) -> None:
    ones = [ex.submit(value_of, i) for i in range(1, 5)]
    args = ((ones[0], [ones[1], {"k": ones[2]}]), frozenset({3}))
    f = ex.submit(total, *args, named=Pair(ones[3], (ones[0],)))
    assert f.result(timeout=60) == 1 + 2 + 3 + 3 + 4 + 1
    mapped = list(ex.map(value_of, [ones[0], {"x": ones[1]}, Pair(ones[2], 7)], timeout=60))
    assert mapped[0] == 1 and mapped[1] == {"x": 2} and mapped[2] == Pair(3, 7)


def test_map_tasks_wait_only_for_their_own_input(ex: fanout.Executor, tmp_path: Path) -> None:
    gate = str(tmp_path / "gate")
    slow = ex.submit(step, "slow", wait_for=gate)
    fast = ex.submit(value_of, 5)
    # Task 0 takes the fast input and opens the gate the slow input waits for; task 1 takes
    # the slow one. One chunk for both (chunksize=2) would wait for the slow input first.
    results = ex.options(chunksize=2).map(step, ["t0", "t1"], [fast, slow],
                                          [None, None], [gate, None])
    t0, t1 = list(results)
    assert t0["inputs"] == 5 and t1["inputs"]["name"] == "slow"


def test_failed_input_fails_the_dependent(ex: fanout.Executor) -> None:
    bad = ex.submit(boom, 3)
    dependent = ex.submit(value_of, [bad])
    with pytest.raises(fanout.DependencyFailed) as info:
        dependent.result(timeout=60)
    error = info.value
    assert error.job_id == bad.job_id and error.task_index == bad.task_index
    assert f"task {bad.task_index} of job {bad.job_id}" in str(error)
    assert "ValueError: boom 3" in str(error)
    assert isinstance(error.__cause__, ValueError) and str(error.__cause__) == "boom 3"
    assert "boom" in error.upstream_traceback
    # ...and downstream of the dependent, the failure names the dependent's own task.
    second = ex.submit(value_of, dependent)
    with pytest.raises(fanout.DependencyFailed, match=dependent.job_id):
        second.result(timeout=60)


def test_cancelled_input(ex: fanout.Executor, tmp_path: Path) -> None:
    gate = str(tmp_path / "never")
    blocker = [ex.submit(step, f"busy{i}", wait_for=gate) for i in range(2)]
    queued = ex.submit(value_of, 1)
    assert queued.cancel()
    dependent = ex.submit(value_of, queued)
    Path(gate).touch()
    with pytest.raises(fanout.DependencyFailed, match="cancelled"):
        dependent.result(timeout=60)
    error = dependent.exception()
    assert error is not None
    assert isinstance(error.__cause__, concurrent.futures.CancelledError)
    assert all(b.result(timeout=60)["name"].startswith("busy") for b in blocker)


def test_retry_of_dependent_reads_the_retried_input(home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "fixed"
    with fanout.Executor(max_workers=2, progress=False) as ex:
        upstream = ex.submit(step, "up", wait_for=None, signal=None)
        flaky = ex.submit(_fails_until, str(marker))
        dependent = ex.submit(total, upstream.result(timeout=60)["name"] == "up", flaky)
        with pytest.raises(fanout.DependencyFailed):
            dependent.result(timeout=60)
    marker.touch()
    assert fanout.Job.attach(flaky.job_id).retry()["succeeded"] == 1
    job = fanout.Job.attach(dependent.job_id)
    assert job.retry()["succeeded"] == 1
    assert job.results(timeout=60) == [1 + 41]


def _fails_until(marker: str) -> int:
    import os

    if not os.path.exists(marker):
        raise RuntimeError("not yet")
    return 41


def test_future_from_another_store_is_refused(home: Path, tmp_path: Path) -> None:
    with fanout.Executor(max_workers=1, progress=False, home=str(tmp_path / "other")) as other, \
            fanout.Executor(max_workers=1, progress=False) as ex:
        elsewhere = other.submit(value_of, 1)
        with pytest.raises(ValueError, match="cannot read"):
            ex.submit(value_of, elsewhere)
        with pytest.raises(ValueError, match="cannot read"):
            list(ex.map(value_of, [elsewhere]))
        plain: concurrent.futures.Future[int] = concurrent.futures.Future()
        with pytest.raises(fanout.SerializationError, match=r"only a fanout\.Future"):
            ex.submit(value_of, plain)


def test_executors_on_one_store_share_futures(home: Path, tmp_path: Path) -> None:
    with fanout.Executor(max_workers=1, progress=False) as first, \
            fanout.Executor(max_workers=1, progress=False) as second, \
            fanout.Executor(backend="inline", progress=False) as inline:
        gate = str(tmp_path / "go")
        upstream = first.submit(step, "up", wait_for=gate)
        downstream = second.submit(value_of, upstream)
        Path(gate).touch()
        assert downstream.result(timeout=60)["name"] == "up"
        # inline waits for a local future it is given, then reads it from the same store
        assert inline.submit(total, [inline.submit(value_of, 2), upstream == upstream]) \
            .result() == 3
        assert inline.submit(value_of, second.submit(value_of, 9)).result() == 9
        # a future of an attached job (another process's, as far as it knows) is one too
        attached = fanout.Job.attach(upstream.job_id).futures()[upstream.task_index]
        assert second.submit(value_of, [attached]).result(timeout=60)[0]["name"] == "up"


def test_map_over_a_maps_futures_is_a_pipeline(ex: fanout.Executor, tmp_path: Path) -> None:
    """Stage two's task 0 runs while stage one's task 1 is still running (and waits for it)."""
    g0_ran = str(tmp_path / "g0-ran")
    first = ex.map(step, ["f0", "f1"], [None, None], [None, g0_ran])
    second = ex.map(step, ["g0", "g1"], first.futures, [None, None], [g0_ran, None])
    g0, g1 = list(second)
    f0, f1 = list(first)
    assert f0["name"] == "f0"
    assert g0["started"] < f1["ended"] and g0["inputs"]["name"] == "f0"
    assert g1["started"] >= f1["ended"] and g1["inputs"]["name"] == "f1"


def test_shutdown_cancels_tasks_waiting_for_inputs(home: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ex = fanout.Executor(max_workers=1, progress=False)
    upstream = ex.submit(step, "up", wait_for=str(gate))
    waiting = [ex.submit(value_of, upstream) for _ in range(3)]
    ex.shutdown(wait=False, cancel_futures=True)
    gate.touch()
    assert upstream.result(timeout=60)["name"] == "up"
    ex.shutdown(wait=True)  # cancelled as the stdlib cancels: cancel(), no waiter woken
    assert all(f.cancelled() for f in waiting)
    statuses = {r.status for f in waiting for r in fanout.Job.attach(f.job_id).records()}
    assert statuses == {"cancelled"}


def test_a_streaming_map_over_futures_holds_each_task_for_its_own_input(
        ex: fanout.Executor, tmp_path: Path) -> None:
    """A map that streams (buffersize=) appends its tasks in segments: each appended task
    that takes a future still waits for that future, and gets its value."""
    gate = tmp_path / "gate"
    upstream = [ex.submit(step, f"u{i}", wait_for=str(gate) if i % 3 == 0 else None)
                for i in range(9)]
    second = ex.map(step, [f"d{i}" for i in range(9)], upstream, chunksize=1, buffersize=2)
    gate.touch()  # the first window is held until here
    out = list(second)
    ups = [f.result(timeout=60) for f in upstream]
    assert [o["inputs"]["name"] for o in out] == [f"u{i}" for i in range(9)]
    assert all(o["started"] >= u["ended"] for o, u in zip(out, ups, strict=True))
    assert len(fanout.Job.attach(second.job_id).records()) == 9  # one job, all segments
