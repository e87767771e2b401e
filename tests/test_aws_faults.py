"""The AWS path under injected faults: throttles, crashes, Spot reclaims, Lambda timeouts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fanout
from fanout.backends.aws.backend import AwsBackend
from fanout.options import TaskOptions
from fanout.protocol import FAILED, SUCCEEDED, Chunk
from fanout.serialization import dumps_call, dumps_function
from fanout.testing import EmulatedAws, emulated_aws

from conftest import eventually

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
    os.environ["FANOUT_HOME"] = str(tmp_path_factory.mktemp("aws-faults-home"))
    with emulated_aws(throttle_rate=0.10, crash_rate=0.05, spot_interruption_rate=0.20,
                      lambda_timeout_tasks=SLOW, lambda_timeout_seconds=1.5,
                      seed=20261121) as emulation:
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
    assert {i // CHUNKSIZE for i in on_batch} >= slow_chunks
    assert len(on_batch) >= N_TASKS // 5
    # The faults really happened, and were absorbed.
    assert aws.events["lambda_throttle"] > 0
    assert aws.events["lambda_crash"] > 0
    assert aws.events["lambda_timeout"] >= len(slow_chunks)
    assert aws.events["spot_interruption"] > 0
    assert job.info.state == "finished" and job.info.summary is not None
    assert job.info.summary["succeeded"] == N_TASKS


def resumable(marker: str) -> tuple[str, object]:
    state = fanout.restore()
    if state is not None:
        return "resumed", state
    fanout.checkpoint("half-way")
    Path(marker).touch()
    end = time.monotonic() + 60
    while time.monotonic() < end:  # the first attempt is reclaimed here
        pass
    return "never", None


def test_spot_sigterm_is_recorded_and_the_retry_resumes(aws: EmulatedAws,
                                                        tmp_path: Path) -> None:
    backend = AwsBackend(**aws.backend_options)
    job_id = "spot-" + os.urandom(3).hex()
    marker = str(tmp_path / "running")
    options = TaskOptions(tier="batch")
    _, manifest = backend._upload(job_id, "map", dumps_function(resumable), "resumable",
                                  [dumps_call((marker,), {})], None, options, 1)
    env = {**os.environ, **aws.env, "FANOUT_BUCKET": aws.backend_options["bucket"],
           "FANOUT_TABLE": aws.backend_options["table"],
           "FANOUT_CHUNK": json.dumps(Chunk.to_json(manifest[0]))}

    def attempt(n: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "fanout.backends.aws.batch_entry"],
                                env={**env, "AWS_BATCH_JOB_ATTEMPT": str(n)})

    first = attempt(1)
    eventually(lambda: os.path.exists(marker), timeout=60, what="the task to start")
    first.send_signal(signal.SIGTERM)  # Fargate Spot's two-minute notice
    assert first.wait(timeout=60) == 143
    record = backend.record(job_id, 0)
    assert record is not None and record.status == FAILED and record.attempt == 2
    assert record.extra == {"interrupted": True, "interruptions": 1}
    assert "interrupted" in (record.exc_message or "")

    second = attempt(2)
    assert second.wait(timeout=120) == 0
    record = backend.record(job_id, 0)
    assert record is not None and record.status == SUCCEEDED and record.attempt == 3
    assert record.extra.get("interruptions") == 1  # the retry stays visible
    assert fanout.serialization.loads(backend.load_value(record)) == ("resumed", "half-way")
    assert backend.store.get_checkpoint(job_id, 0) is None  # removed on success
