"""The AWS path under injected faults: throttles, crashes, Spot reclaims, Lambda timeouts."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

import fanout
from fanout.protocol import SUCCEEDED
from fanout.testing import EmulatedAws, emulated_aws

N_TASKS = 500
CHUNKSIZE = 10
#: One slow task in every fifth chunk: those chunks outgrow the (emulated) Lambda timeout
#: and are re-run on Batch, so a fifth of the job's tasks end up on the batch tier.
SLOW = frozenset(range(0, N_TASKS, CHUNKSIZE * 5))


def work(i: int) -> int:
    if i in SLOW:
        time.sleep(2.0)
    return i * 3


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedAws]:
    with pytest.MonkeyPatch.context() as patch, emulated_aws(
            throttle_rate=0.10, crash_rate=0.05, spot_interruption_rate=0.20,
            lambda_timeout_tasks=SLOW, lambda_timeout_seconds=1.5,
            seed=20261121) as emulation:
        patch.setenv("FANOUT_HOME", str(tmp_path_factory.mktemp("aws-faults-home")))
        yield emulation


def test_500_tasks_under_faults_every_result_exactly_once(aws: EmulatedAws) -> None:
    with fanout.Executor(backend="aws", progress=False, chunksize=CHUNKSIZE,
                         **aws.backend_options) as ex:
        results = ex.map(work, range(N_TASKS))
        values = list(results)
    assert values == [i * 3 for i in range(N_TASKS)]
    job = fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options)
    records = job.records()
    assert [r.task_index for r in records] == list(range(N_TASKS))  # one record per task
    assert {r.status for r in records} == {SUCCEEDED}
    on_batch = {r.task_index for r in records if r.worker_id.startswith("batch/")}
    slow_chunks = {i // CHUNKSIZE for i in SLOW}
    # Every slow chunk timed out on Lambda and was re-run on Batch: its slow task's record
    # names a Batch worker (the emulated Lambda ends itself at its deadline, as Lambda does,
    # so a timed-out chunk stores nothing).
    assert on_batch >= SLOW
    assert aws.events["lambda_timeout"] >= len(slow_chunks)
    # Faults really happened, and were absorbed. Whether one strikes is drawn from the
    # seed and the chunk's try (Faults.draw), not from thread timing: with this seed every
    # kind occurs, in every run.
    assert aws.events["lambda_throttle"] > 0
    assert aws.events["lambda_crash"] > 0
    assert aws.events["spot_interruption"] > 0
    assert job.info.state == "finished" and job.info.summary is not None
    assert job.info.summary["succeeded"] == N_TASKS
