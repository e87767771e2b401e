"""The AWS path end to end, offline: moto runs the real definition, workers run for real."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import fanout
from fanout.collector import RemoteTraceback
from fanout.protocol import SUCCEEDED
from fanout.testing import EmulatedAws, emulated_aws

import tasks
from conftest import eventually, unique

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedAws]:
    with pytest.MonkeyPatch.context() as patch, emulated_aws() as emulation:
        patch.setenv("FANOUT_HOME", str(tmp_path_factory.mktemp("aws-home")))
        yield emulation


@pytest.fixture
def ex(aws: EmulatedAws) -> Iterator[fanout.Executor]:
    executor = fanout.Executor(backend="aws", progress=False, chunksize=5,
                               **aws.backend_options)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def test_map_submit_and_map_reduce(ex: fanout.Executor, aws: EmulatedAws) -> None:
    results = ex.map(tasks.square, range(23))
    assert list(results) == [i * i for i in range(23)]
    futures = [ex.submit(tasks.add, i, 1) for i in range(4)]
    assert [f.result(timeout=120) for f in futures] == [1, 2, 3, 4]
    assert ex.map_reduce(tasks.square, range(10), sum).result(timeout=120) == 285
    job = fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options)
    records = job.records()
    assert [r.task_index for r in records] == list(range(23))
    assert {r.status for r in records} == {SUCCEEDED}
    assert all(r.worker_id.startswith("lambda/") for r in records)
    info = job.info
    assert info.state == "finished" and info.summary is not None
    assert info.summary["succeeded"] == 23
    assert aws.requests[("stepfunctions", "lambda", "Invoke")] >= 5  # 5 chunks of 5


def test_user_exceptions_are_results(ex: fanout.Executor, aws: EmulatedAws) -> None:
    results = ex.map(tasks.fail_if, range(30), [i if i % 10 == 3 else -1 for i in range(30)])
    futures = results.futures
    failed = [i for i, f in enumerate(futures) if f.exception(timeout=120) is not None]
    assert failed == [3, 13, 23]
    with pytest.raises(ValueError, match="task 13 is bad") as info:
        futures[13].result()
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "fail_if" in str(info.value.__cause__)
    assert [futures[i].result() for i in (0, 1, 29)] == [0, 1, 29]
    counts = fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options).status()
    assert counts["succeeded"] == 27 and counts["failed"] == 3


def test_logs_come_back_from_lambda(ex: fanout.Executor) -> None:
    future = ex.submit(tasks.chatty, 5)
    assert future.result(timeout=120) == 5
    assert "stdout of task 5" in future.logs() and "stderr of task 5" in future.logs()


def test_output_with_a_lone_surrogate_keeps_its_chunk(ex: fanout.Executor,
                                                      aws: EmulatedAws) -> None:
    # Lambda captures sys.stdout in memory; encoding a lone surrogate there used to fail the
    # whole invocation, and with it every task of the chunk.
    results = ex.map(tasks.prints_undecodable_name, range(3), chunksize=3)
    assert list(results) == [0, 1, 2]
    job = fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options)
    assert "task 1 saw data-\\udcff.csv" in job.futures()[1].logs()


def test_a_packed_chunk_is_one_result_item_with_every_calls_outcome(
        ex: fanout.Executor, aws: EmulatedAws) -> None:
    """map's own chunksize packs a chunk into one task on AWS too (fanout.packing)."""
    results = ex.map(tasks.fail_if, range(8), [5] * 8, chunksize=4)
    calls = results.futures
    seen = []
    with pytest.raises(ValueError, match="task 5 is bad"):
        for value in results:
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]
    assert [f.result(timeout=120) for f in calls[:5]] == [0, 1, 2, 3, 4]
    job = fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options)
    stored = ex.backend.records(results.job_id)
    assert [r.task_index for r in stored] == [0, 1]  # two items for eight calls
    assert [r.task_index for r in job.records()] == list(range(8))
    assert [r.task_index for r in job.records() if r.status == "failed"] == [5]


def test_batch_tier_runs_on_batch(ex: fanout.Executor, aws: EmulatedAws) -> None:
    long_tasks = ex.options(tier="batch")
    results = long_tasks.map(tasks.square, range(6), chunksize=3)
    assert list(results) == [i * i for i in range(6)]
    records = fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options).records()
    assert all(r.worker_id.startswith("batch/") for r in records)
    assert aws.requests[("stepfunctions", "batch", "submitjob")] >= 2


def test_results_larger_than_a_dynamodb_item_go_to_s3(ex: fanout.Executor,
                                                       aws: EmulatedAws) -> None:
    future = ex.submit(tasks.identity, b"x" * 600_000)
    assert future.result(timeout=120) == b"x" * 600_000
    record = ex.backend.record(future.job_id, future.task_index)
    assert record is not None and record.value is None and record.value_ref


def test_attach_from_a_second_process(ex: fanout.Executor, aws: EmulatedAws) -> None:
    results = ex.map(tasks.square, range(12))
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(TESTS)!r})
        import fanout
        job = fanout.Job.attach({results.job_id!r}, backend="aws",
                                **{json.dumps(aws.backend_options)})
        print(json.dumps(job.results(timeout=120)))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, env={**os.environ, **aws.env}, check=True)
    assert json.loads(out.stdout) == [i * i for i in range(12)]
    assert list(results) == [i * i for i in range(12)]


def test_cancel_stops_the_execution(ex: fanout.Executor, aws: EmulatedAws,
                                    tmp_path: Path) -> None:
    results = ex.map(tasks.block_until, [str(tmp_path / "never")] * 4, chunksize=1)
    job = fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options)
    job.cancel()
    info = job.info
    assert info.state == "cancelled"
    assert job.status()["cancelled"] + job.status()["succeeded"] == 4
    arn = ex.backend.store.job(results.job_id)["execution_arn"]
    sfn = aws.client("stepfunctions")
    eventually(lambda: sfn.describe_execution(executionArn=arn)["status"] == "ABORTED",
               what="the execution to be aborted")
    with pytest.raises(concurrent.futures.CancelledError):
        list(results)


def test_retry_reruns_only_what_failed(ex: fanout.Executor, aws: EmulatedAws,
                                       tmp_path: Path) -> None:
    marker = str(tmp_path / "fixed")
    results = ex.map(tasks.fail_unless, [marker] * 6, range(6), [2, 2, 2, 4, 4, 4])
    futures = results.futures
    assert sum(f.exception(timeout=120) is not None for f in futures) == 2
    Path(marker).touch()
    job = fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options)
    counts = job.retry()
    assert counts["succeeded"] == 6
    records = job.records()
    assert [r.attempt for r in records if r.task_index in (2, 4)] == [2, 2]
    assert all(r.attempt == 1 for r in records if r.task_index not in (2, 4))


def test_unconfigured_backend_says_what_is_missing(aws: EmulatedAws, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FANOUT_HOME", str(tmp_path / "empty-home"))
    with pytest.raises(fanout.ConfigurationError, match="fanout configure --stack NAME"):
        fanout.Executor(backend="aws")


def test_wrong_stack_fails_before_uploading(aws: EmulatedAws) -> None:
    options = {**aws.backend_options, "bucket": "no-such-bucket-anywhere"}
    before = sum(n for (_, service, op), n in aws.requests.items()
                 if (service, op) == ("s3", "PutObject"))
    with (fanout.Executor(backend="aws", progress=False, **options) as ex,
          pytest.raises(fanout.ConfigurationError, match="payload bucket 'no-such-bucket")):
        ex.map(tasks.square, range(3))
    after = sum(n for (_, service, op), n in aws.requests.items()
                if (service, op) == ("s3", "PutObject"))
    assert after == before


def test_python_version_mismatch_is_refused_at_submit(aws: EmulatedAws) -> None:
    options = {**aws.backend_options, "python_runtime": "python3.9"}
    with (fanout.Executor(backend="aws", progress=False, **options) as ex,
          pytest.raises(fanout.ConfigurationError, match=r"python3\.9") as info):
        ex.submit(tasks.square, 2)
    assert "Python {}.{}".format(*sys.version_info[:2]) in str(info.value)


def test_configure_reads_the_stack_outputs(aws: EmulatedAws, tmp_path: Path) -> None:
    cloudformation = aws.client("cloudformation")
    body = {"Resources": {"Topic": {"Type": "AWS::SNS::Topic"}},
            "Outputs": {key: {"Value": value} for key, value in aws.outputs.items()}}
    stack = unique("fanout-test")
    cloudformation.create_stack(StackName=stack, TemplateBody=json.dumps(body))
    home = tmp_path / "configured"
    out = subprocess.run([sys.executable, "-m", "fanout.cli", "--home", str(home), "configure",
                          "--stack", stack], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **aws.env}, check=True)
    assert "wrote" in out.stdout
    saved = json.loads((home / "aws.json").read_text())
    assert saved["bucket"] == aws.outputs["PayloadBucketName"]
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import fanout, tasks
        with fanout.Executor(backend="aws", progress=False) as ex:
            print(list(ex.map(tasks.square, range(3))))
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300, env={**os.environ, **aws.env, "FANOUT_HOME": str(home)},
                         check=True)
    assert run.stdout.strip() == "[0, 1, 4]"
    missing = subprocess.run([sys.executable, "-m", "fanout.cli", "--home", str(home),
                              "configure", "--stack", "nope"], capture_output=True, text=True,
                             timeout=120, env={**os.environ, **aws.env})
    assert missing.returncode == 2 and "cannot read stack 'nope'" in missing.stderr


def test_unreachable_endpoint_is_a_clear_error(aws: EmulatedAws) -> None:
    with socket.socket() as probe:  # a loopback port that nothing listens on
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    options = {**aws.backend_options, "endpoint_url": f"http://127.0.0.1:{closed}"}
    with (fanout.Executor(backend="aws", progress=False, **options) as ex,
          pytest.raises(fanout.ConfigurationError, match="cannot reach AWS")):
        ex.submit(tasks.square, 2)


def test_the_client_can_leave_and_the_job_goes_on(aws: EmulatedAws, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import fanout, tasks
        ex = fanout.Executor(backend="aws", progress=False, chunksize=2,
                             **{aws.backend_options!r})
        results = ex.map(tasks.block_until, [{str(gate)!r}] * 4, range(4))
        print(results.job_id, flush=True)
        # no shutdown(): the interpreter exits while the job is still running on AWS
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, env={**os.environ, **aws.env}, check=True)
    job = fanout.Job.attach(out.stdout.strip(), backend="aws", **aws.backend_options)
    assert job.info.state == "running"
    gate.touch()
    assert job.results(timeout=120) == [0, 1, 2, 3]


def test_schedules_fire_as_ordinary_jobs(ex: fanout.Executor, aws: EmulatedAws,
                                         tmp_path: Path) -> None:
    options = aws.backend_options
    name = unique("nightly-risk")
    spec = ex.schedule(name, tasks.square, [1, 2, 3], cron="cron(0 2 * * ? *)",
                       timezone="Europe/Zurich", reducer=sum)
    assert spec.enabled and spec.next_fire
    scheduler, sfn = aws.client("scheduler"), aws.client("stepfunctions")
    remote = scheduler.get_schedule(Name=name, GroupName=options["schedule_group"])
    assert remote["ScheduleExpression"] == "cron(0 2 * * ? *)"
    assert remote["ScheduleExpressionTimezone"] == "Europe/Zurich"
    assert remote["Target"]["Arn"] == options["state_machine_arn"]
    assert remote["Target"]["RoleArn"] == options["scheduler_role_arn"]
    assert remote["Target"]["DeadLetterConfig"]["Arn"] == options["schedule_dlq_arn"]
    assert remote["Target"]["RetryPolicy"]["MaximumRetryAttempts"] == 5

    def fire() -> None:  # what EventBridge Scheduler does at 02:00 (with a fresh name)
        sfn.start_execution(stateMachineArn=remote["Target"]["Arn"], name=uuid.uuid4().hex,
                            input=remote["Target"]["Input"])

    backend = ex.backend
    fire()
    eventually(lambda: backend.schedule_runs(name), what="the first run")
    [run] = backend.schedule_runs(name)
    job = fanout.Job.attach(run["job_id"], backend="aws", **options)
    assert job.results(timeout=120) == [1, 4, 9]
    reduced = job.reduce_future()
    assert reduced is not None and reduced.result(timeout=120) == 14
    eventually(lambda: backend.schedule_runs(name)[0]["state"] == "finished",
               what="the run to finish")
    fire()
    eventually(lambda: len(backend.schedule_runs(name)) == 2, what="a second run")
    second = backend.schedule_runs(name)[0]["job_id"]
    assert second and second != run["job_id"]  # each run is its own job

    assert [s.name for s in backend.list_schedules()] == [name]
    assert not backend.set_schedule_enabled(name, False).enabled
    assert scheduler.get_schedule(Name=name, GroupName=options["schedule_group"]
                                  )["State"] == "DISABLED"
    assert backend.set_schedule_enabled(name, True).enabled
    backend.delete_schedule(name)
    with pytest.raises(KeyError):
        backend.get_schedule(name)


def test_a_scheduled_run_is_skipped_while_the_previous_one_runs(
        ex: fanout.Executor, aws: EmulatedAws, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    name = unique("slow-one")
    ex.schedule(name, tasks.block_until, [str(gate)], rate="rate(5 minutes)")
    remote = aws.client("scheduler").get_schedule(
        Name=name, GroupName=aws.backend_options["schedule_group"])
    sfn = aws.client("stepfunctions")
    def fire() -> None:
        sfn.start_execution(stateMachineArn=remote["Target"]["Arn"], name=uuid.uuid4().hex,
                            input=remote["Target"]["Input"])

    backend = ex.backend
    try:
        fire()
        eventually(lambda: backend.schedule_runs(name), what="the first run")
        fire()
        eventually(lambda: len(backend.schedule_runs(name)) == 2, what="the second firing")
        assert [r["state"] for r in backend.schedule_runs(name)] == ["skipped", "running"]
        gate.touch()
        first = backend.schedule_runs(name)[1]["job_id"]
        fanout.Job.attach(first, backend="aws", **aws.backend_options).results(timeout=120)
    finally:
        gate.touch()
        backend.delete_schedule(name)


def test_a_schedule_over_an_s3_prefix_runs_one_task_per_object(ex: fanout.Executor,
                                                               aws: EmulatedAws) -> None:
    s3 = aws.client("s3")
    s3.create_bucket(Bucket="portfolio-data")
    for name in ("a.csv", "b.csv", "c.csv"):
        s3.put_object(Bucket="portfolio-data", Key=f"today/{name}", Body=b"1,2,3")
    s3.put_object(Bucket="portfolio-data", Key="yesterday/x.csv", Body=b"0")
    # folder markers, as the S3 console makes them: not objects to run on
    for marker in ("today/", "today/archive/"):
        s3.put_object(Bucket="portfolio-data", Key=marker, Body=b"")
    name = unique("per-file")
    ex.schedule(name, tasks.identity, "s3://portfolio-data/today/", rate="rate(1 day)")
    remote = aws.client("scheduler").get_schedule(
        Name=name, GroupName=aws.backend_options["schedule_group"])
    aws.client("stepfunctions").start_execution(
        stateMachineArn=remote["Target"]["Arn"], name=uuid.uuid4().hex,
        input=remote["Target"]["Input"])
    backend = ex.backend
    try:
        eventually(lambda: backend.schedule_runs(name), what="the run")
        job_id = backend.schedule_runs(name)[0]["job_id"]
        job = fanout.Job.attach(job_id, backend="aws", **aws.backend_options)
        assert sorted(job.results(timeout=120)) == [
            f"s3://portfolio-data/today/{key}" for key in ("a.csv", "b.csv", "c.csv")]
    finally:
        backend.delete_schedule(name)


@pytest.mark.parametrize("tier", ["lambda", "batch"])
def test_task_timeout_is_enforced_on_aws(ex: fanout.Executor, tier: str) -> None:
    limited = ex.options(timeout=1.0, tier=tier)
    slow, quick = limited.submit(tasks.spin, 30), limited.submit(tasks.spin, 0.0)
    with pytest.raises(fanout.TaskTimeout, match=r"timeout=1\.0"):
        slow.result(timeout=120)
    assert quick.result(timeout=120) == 0.0


def test_2000_tasks_in_chunks_of_200_on_batch(aws: EmulatedAws) -> None:
    # 200 tasks inline would be ~12.7 KB of container overrides (ECS allows 8,192
    # characters): the job works because a Batch job receives a reference to its chunk.
    with fanout.Executor(backend="aws", progress=False, chunksize=200, tier="batch",
                         **aws.backend_options) as ex:
        results = ex.map(tasks.square, range(2000))
        assert list(results) == [x * x for x in range(2000)]
    records = fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options).records()
    assert len(records) == 2000 and all(r.worker_id.startswith("batch/") for r in records)
    assert len({r.worker_id for r in records}) == 10  # one Batch job per chunk
    assert aws.events["overrides_too_long"] == 0


def draw(_: int) -> float:
    import numpy  # from worker-requirements.txt, on either tier

    rng = fanout.task_rng()
    assert isinstance(rng, numpy.random.Generator)
    return float(rng.standard_normal())


@pytest.mark.parametrize("tier", ["lambda", "batch"])
def test_tasks_import_numpy_on_both_tiers(aws: EmulatedAws, tier: str) -> None:
    with fanout.Executor(backend="aws", progress=False, tier=tier, seed=7, chunksize=4,
                         **aws.backend_options) as ex:
        remote = list(ex.map(draw, range(8)))
    with fanout.Executor(max_workers=1, seed=7, chunksize=4, progress=False) as ex:
        assert remote == list(ex.map(draw, range(8)))  # same seeds, same draws as locally


def test_a_schedule_outlives_the_payload_expiry(aws: EmulatedAws) -> None:
    options = aws.backend_options
    name = unique("monthly")
    with fanout.Executor(backend="aws", progress=False, **options) as ex:
        ex.schedule(name, tasks.square, [2, 3], cron="cron(0 3 1 * ? *)")
        backend = ex.backend
        aws.fire_schedule(name)
        eventually(lambda: backend.schedule_runs(name), what="the first run")
        first = backend.schedule_runs(name)[0]["job_id"]
        job = fanout.Job.attach(first, backend="aws", **options)
        assert job.results(timeout=120) == [4, 9]
        eventually(lambda: backend.schedule_runs(name)[0]["state"] == "finished",
                   what="the first run to finish")
        # Past PayloadRetentionDays (30): the lifecycle rule removes every job object, as
        # on AWS; the schedule's own definition must survive it.
        s3 = aws.client("s3")
        removed = aws.advance_clock(days=31)
        assert removed["objects"] > 0
        left = s3.list_objects_v2(Bucket=options["bucket"], Prefix=f"jobs/{first}/")
        assert left.get("KeyCount", 0) == 0
        aws.fire_schedule(name)
        # a later run, not a second one: the emulated clock is the module's, so on a
        # repeat it is past ResultRetentionDays and TTL has taken the first run's record
        eventually(lambda: [r for r in backend.schedule_runs(name) if r["job_id"] != first],
                   what="a later run")
        later = backend.schedule_runs(name)[0]["job_id"]
        assert later and later != first
        assert fanout.Job.attach(later, backend="aws", **options).results(timeout=120) == [4, 9]
        backend.delete_schedule(name)


def test_a_schedule_stored_by_an_older_release_keeps_firing(aws: EmulatedAws) -> None:
    # Older releases kept the definition at jobs/schedule-NAME/ (under the expiring prefix):
    # an upgraded stack must still run such a schedule, and moves it to its lasting key.
    options = aws.backend_options
    s3 = aws.client("s3")
    with fanout.Executor(backend="aws", progress=False, **options) as ex:
        ex.schedule("legacy", tasks.square, [5], cron="cron(0 3 1 * ? *)")
        backend = ex.backend
        key = "schedules/legacy/schedule.pkl"
        body = s3.get_object(Bucket=options["bucket"], Key=key)["Body"].read()
        s3.put_object(Bucket=options["bucket"], Key="jobs/schedule-legacy/schedule.pkl",
                      Body=body)
        s3.delete_object(Bucket=options["bucket"], Key=key)
        aws.fire_schedule("legacy")
        eventually(lambda: backend.schedule_runs("legacy"), what="the run")
        run = backend.schedule_runs("legacy")[0]["job_id"]
        assert fanout.Job.attach(run, backend="aws", **options).results(timeout=120) == [25]
        assert s3.get_object(Bucket=options["bucket"], Key=key)["Body"].read() == body
        backend.delete_schedule("legacy")


def test_a_worker_built_from_other_requirements_is_refused_before_upload(
        aws: EmulatedAws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fanout.backends.aws import stack_check as aws_backend

    other = tmp_path / "worker-requirements.txt"
    other.write_text("numpy>=1.26\nscipy>=1.11\n")
    monkeypatch.setenv("FANOUT_WORKER_REQUIREMENTS", str(other))
    monkeypatch.setattr(aws_backend, "_WORKER_BUILDS", {})
    s3 = aws.client("s3")
    before = s3.list_objects_v2(Bucket=aws.backend_options["bucket"]).get("KeyCount", 0)
    with fanout.Executor(backend="aws", progress=False, **aws.backend_options) as ex, \
            pytest.raises(fanout.ConfigurationError) as refused:
        ex.submit(tasks.square, 3)
    message = str(refused.value)
    assert "worker-requirements.txt" in message and str(other) in message
    assert "sam build && sam deploy" in message
    after = s3.list_objects_v2(Bucket=aws.backend_options["bucket"]).get("KeyCount", 0)
    assert after == before  # nothing uploaded
