"""Futures as task arguments on the AWS emulation: waves, reads by reference, failures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from dependency_tasks import boom, step, value_of
from test_dependencies import check_diamond, run_diamond

import fanout
from fanout.testing import EmulatedAws

from conftest import eventually


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


def test_diamond_has_no_barrier_on_aws(ex: fanout.Executor, aws: EmulatedAws,
                                       tmp_path: Path) -> None:
    futures: dict[str, fanout.Future] = {}
    out = run_diamond(ex, tmp_path, futures)
    check_diamond(out)
    # D read its inputs by reference on the worker: the payloads in the bucket hold
    # (job, task) references, never an upstream value (a dict with a "started" key).
    d = futures["D"]
    payload = ex.backend.store.get_object(d.job_id, "payload-0.bin")
    assert b"fanout.future" in payload and futures["B2"].job_id.encode() in payload
    assert b"started" not in payload
    job = fanout.Job.attach(d.job_id, backend="aws", **aws.backend_options)
    assert job.info.state == "finished"


def test_dependency_failed_on_aws(ex: fanout.Executor, aws: EmulatedAws) -> None:
    bad = ex.submit(boom, 7)
    dependent = ex.map(value_of, [{"x": bad}, 5])
    with pytest.raises(fanout.DependencyFailed) as info:
        next(dependent)
    assert info.value.job_id == bad.job_id and info.value.task_index == bad.task_index
    assert isinstance(info.value.__cause__, ValueError)
    assert "ValueError: boom 7" in str(info.value)
    job = fanout.Job.attach(dependent.job_id, backend="aws", **aws.backend_options)
    fanout_wait = job.records()
    assert sorted(r.status for r in fanout_wait) == ["failed", "succeeded"]
    assert job.info.state == "finished"


def test_shutdown_cancels_tasks_waiting_for_inputs(aws: EmulatedAws, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    ex = fanout.Executor(backend="aws", progress=False, **aws.backend_options)
    upstream = ex.submit(step, "up", wait_for=str(gate))
    eventually(lambda: upstream.running() or upstream.job_id in _jobs(ex), what="upload")
    waiting = ex.submit(value_of, upstream)
    eventually(lambda: waiting.job_id in _jobs(ex), what="the dependent's job")
    ex.shutdown(wait=False, cancel_futures=True)
    # at once if its job already holds it, else when the poller registers the job
    eventually(waiting.cancelled, timeout=30, what="the held task's cancellation")
    gate.touch()
    assert upstream.result(timeout=120)["name"] == "up"
    job = fanout.Job.attach(waiting.job_id, backend="aws", **aws.backend_options)
    assert [r.status for r in job.records()] == ["cancelled"]
    info = job.info
    assert info.state == "finished" and info.summary is not None
    assert info.summary["cancelled"] == 1
    ex.shutdown(wait=True)  # the upstream job is followed until it is finalized


def _jobs(ex: fanout.Executor) -> set[str]:
    return {info.job_id for info in ex.backend.list_jobs(50)}
