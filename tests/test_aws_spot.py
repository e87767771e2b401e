"""A Fargate Spot reclaim, end to end: Executor -> Step Functions -> Batch's retry strategy."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import fanout
from fanout.protocol import SUCCEEDED
from fanout.testing import emulated_aws


def resumable(marker: str) -> tuple[str, object]:
    state = fanout.restore()
    if state is not None:
        return "resumed", state
    fanout.checkpoint("half-way")
    Path(marker).touch()  # the emulated Spot reclaim comes now
    end = time.monotonic() + 60
    while time.monotonic() < end:  # the first attempt is reclaimed here
        time.sleep(0.01)
    return "never", None


def test_spot_interruption_goes_through_batchs_retry_strategy(tmp_path: Path) -> None:
    """Executor -> Step Functions -> Batch: the reclaimed attempt is retried by the job
    definition's retry strategy (its Spot status reason), and the retry resumes from the
    checkpoint the first attempt wrote."""
    marker = tmp_path / "reclaim-now"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FANOUT_HOME", str(tmp_path / "home"))
        with emulated_aws(spot_interrupt_on=marker) as aws, fanout.Executor(
                backend="aws", progress=False, tier="batch", **aws.backend_options) as ex:
            future = ex.submit(resumable, str(marker))
            assert future.result(timeout=240) == ("resumed", "half-way")
            record = fanout.Job.attach(future.job_id, backend="aws",
                                       **aws.backend_options).records()[0]
            assert aws.events["spot_interruption"] == 1
    assert record.status == SUCCEEDED and record.worker_id.startswith("batch/")
    assert record.worker_id.endswith("#2")  # the Batch job's second attempt
    assert record.extra.get("interruptions") == 1  # the reclaim stays visible
