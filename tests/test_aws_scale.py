"""A 10,000-way job's pressure on 100 emulated workers: no hot key with result pages (issue 13).

``emulated_aws(scale=100)`` divides DynamoDB's per-key and S3's per-prefix limits by 100,
so 100 workers finishing a one-second task each per second load each key as 10,000 would
on AWS. The workers are the real AWS worker path (``handlers.run_chunk``: the runtime, the
page flusher, ``AwsStore.put_results``) running as threads of this process, and the client
polls with ``AwsStore.results_since`` meanwhile. The old key design is the same code with
``Layout(shards=1, page_tasks=1, value_prefixes=1)``: one item per task under the job's one
partition key, each write also landing on one polling-index key.

The same scale divides Lambda's scaling rate (1,000 new execution environments per 10 s
per function, 10 here): a job whose Lambda map starts wider than that is throttled unless
its ``MaxConcurrency`` ramps (``client/backends/aws/ramp.py``), which the last tests run
through the real state machine.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import fanout
from fanout import context, serialization
from fanout.backends.aws import handlers
from fanout.backends.aws.config import AwsConfig
from fanout.backends.aws.layout import Layout
from fanout.backends.aws.ramp import next_raise, plan_ramp, ramp_step
from fanout.backends.aws.store import AwsStore
from fanout.backends.aws.upload import upload_layout
from fanout.manifest import PAYLOAD_OBJECT, plan_job, write_payload
from fanout.options import TaskOptions
from fanout.testing import EmulatedAws, emulated_aws
from fanout.testing.throttling import LimitTracker, Throttled, item_size

from conftest import unique

SCALE = 100
WORKERS = 100
TASKS_PER_WORKER = 8
TASK_SECONDS = 1.0
#: The ramp tests: a Lambda map of 16 one-task chunks, more than the 10 new environments
#: Lambda gives a function per 10 s at this scale; the ramp starts 8 and adds 8 after 10 s
#: (8, 16). Kept this small so that the test stays under a minute on a loaded 2-core
#: machine (each new environment is a fresh interpreter; 24 chunks took up to 74 s at a
#: load average of 18).
RAMP_CHUNKS = 16
RAMP_TASK_SECONDS = 2.0


def one_second(x: int) -> int:
    time.sleep(TASK_SECONDS)
    return x * 3


@pytest.fixture(autouse=True)
def one_current_task_after() -> Iterator[None]:
    """The workers here are threads of one process (on AWS: one process each), and the
    runtime's current task is per process: put back what was there before."""
    before = context._current
    yield
    context._current = before


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedAws]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FANOUT_HOME", str(tmp_path_factory.mktemp("aws-home")))
        with emulated_aws(scale=SCALE, progress_every=None,
                          lambda_concurrency=RAMP_CHUNKS + 8,
                          parameters={"MaxConcurrency": RAMP_CHUNKS}) as emulation:
            yield emulation


@pytest.fixture(autouse=True)
def no_metrics_from_worker_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """The workers here are threads of one process, and a task's output is captured from
    ``sys.stdout``, which on AWS is its worker's own and here is shared. Powertools' one
    ``Metrics`` object collects all 100 threads' task durations and prints them at 100
    values (3-8 KB): into another worker's running task, its page entry, making that page
    write 4-8 write units where AWS makes 1. That put a shard key at 6-9 of its 10 units
    per second and throttled 2 page writes in 1 run of 20. Here the handlers run as they
    do without Powertools' metrics."""
    monkeypatch.setattr(handlers, "metrics", None)


def run_wide_job(aws: EmulatedAws, job_id: str, layout: Layout | None
                 ) -> tuple[dict[int, int], list[BaseException], AwsStore]:
    """WORKERS chunks running at once, their starts spread over one page's time (as a
    running Distributed Map's chunks are: they finish at different moments); the client
    polls until every result is in or a deadline passes."""
    options = aws.backend_options
    store = AwsStore(AwsConfig(bucket=options["bucket"], table=options["table"],
                               state_machine_arn=options["state_machine_arn"],
                               region=options["region"], endpoint_url=aws.endpoint_url,
                               max_concurrency=WORKERS, layout=layout))
    n = WORKERS * TASKS_PER_WORKER
    with io.BytesIO() as out:
        refs = write_payload(out, [serialization.dumps_call((x,), {}) for x in range(n)], 7)
        store.put_object(job_id, PAYLOAD_OBJECT, out.getvalue())
    spec, manifest = plan_job(job_id, "map", "one_second", refs,
                              TaskOptions(chunksize=TASKS_PER_WORKER), 7)
    store.put_bundle(spec, serialization.dumps_function(one_second), None,
                     upload_layout(store, manifest))
    errors: list[BaseException] = []
    start = time.monotonic() + 0.5
    spread = TASKS_PER_WORKER * TASK_SECONDS

    def work(number: int) -> None:
        time.sleep(max(0.0, start + spread * number / WORKERS - time.monotonic()))
        try:
            handlers.run_chunk(manifest[number], f"w{number}", store)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(WORKERS)]
    for thread in threads:
        thread.start()
    seen: dict[int, int] = {}
    cursor = 0
    deadline = time.monotonic() + 3 * spread + 30
    while len(seen) < n and time.monotonic() < deadline:
        records, cursor = store.results_since(job_id, cursor)
        for record in records:
            seen[record.task_index] = serialization.loads(store.load_value(record))
        if not any(t.is_alive() for t in threads) and len(seen) < n:
            # The last look is a deep one (as a client's next one is within
            # deep_poll_every_seconds): a page whose write reached the table late, on
            # this loaded machine, carries a stamp behind the cursor.
            store.deep_poll_every_seconds = 0.0
            records, cursor = store.results_since(job_id, cursor)
            for record in records:
                seen[record.task_index] = serialization.loads(store.load_value(record))
            break
        time.sleep(0.25)  # the poll interval, not a synchronisation
    for thread in threads:  # throttled writes end after botocore's bounded retries
        thread.join(timeout=max(1.0, deadline - time.monotonic()) + 60)
    assert not any(thread.is_alive() for thread in threads), "a worker thread hangs"
    return seen, errors, store


def updates(aws: EmulatedAws) -> int:
    return sum(c for (_, s, op), c in aws.requests.items() if (s, op) == ("dynamodb",
                                                                         "UpdateItem"))


def test_pages_on_sharded_keys_carry_the_scaled_10000_way_job(aws: EmulatedAws) -> None:
    assert aws.limits is not None
    before = dict(aws.limits.throttles)
    writes_before = updates(aws)
    job_id = unique("scale-pages")
    seen, errors, store = run_wide_job(aws, job_id, None)
    throttled = {k: v - before.get(k, 0) for k, v in aws.limits.throttles.items()
                 if v != before.get(k, 0)}
    assert not errors, errors
    n = WORKERS * TASKS_PER_WORKER
    assert seen == {i: 3 * i for i in range(n)}
    layout = store.layout(job_id)
    # The planner chose the shards the 10,000-way job gets on AWS (docs/scale.md).
    assert (layout.shards, layout.page_tasks) == (8, 8)
    assert throttled == {}, f"throttled with result pages: {throttled}"
    assert updates(aws) - writes_before <= n / layout.page_tasks * 1.25  # per task: ~1/8
    # Each page write cost the one write unit the planner counts for a page of small
    # results (plan_layout: entries of ~120 bytes): every stored page is under 1 KB.
    pages = [item for key in layout.partitions(job_id)
             for item in store.dynamodb.query(
                 TableName=store.table, KeyConditionExpression="job_id = :k",
                 ExpressionAttributeValues={":k": {"S": key}})["Items"]]
    assert len(pages) == n / layout.page_tasks
    assert max(item_size(page) for page in pages) <= 1024


def test_the_old_key_design_throttles_at_the_same_scale(aws: EmulatedAws) -> None:
    """One item per task under one key: 100 writes/s against a scaled 10 per key."""
    assert aws.limits is not None
    before = dict(aws.limits.throttles)
    _seen, _errors, _ = run_wide_job(aws, unique("scale-old"), Layout(1, 1, 1))
    throttled = {k: v - before.get(k, 0) for k, v in aws.limits.throttles.items()}
    assert throttled.get("TableWriteKeyRangeThroughputExceeded", 0) > 0
    assert throttled.get("IndexWriteKeyRangeThroughputExceeded", 0) > 0


def test_a_throttled_request_carries_aws_error_and_reason(aws: EmulatedAws,
                                                          tmp_path: Path) -> None:
    """What a client sees: DynamoDB's ProvisionedThroughputExceededException with its
    ThrottlingReasons, S3's 503 SlowDown; botocore retries both, so they are provoked
    here with retries off."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import ClientError

    options = aws.backend_options
    quiet = Config(retries={"max_attempts": 1, "mode": "standard"})
    dynamodb = boto3.client("dynamodb", region_name=options["region"],
                            endpoint_url=aws.endpoint_url, config=quiet)
    s3 = boto3.client("s3", region_name=options["region"], endpoint_url=aws.endpoint_url,
                      config=quiet)
    codes: dict[str, dict[str, object]] = {}
    for n in range(50):  # 10 write units per second per key, at scale 100
        try:
            dynamodb.put_item(TableName=options["table"], Item={
                "job_id": {"S": "scale-hot"}, "item": {"S": f"x{n}"}})
        except ClientError as exc:
            codes["dynamodb"] = dict(exc.response)
            break
    def put(n: int) -> None:  # 35 PUTs per second per prefix, from 8 threads at once
        for k in range(n, 400, 8):
            if "s3" in codes:
                return
            try:
                s3.put_object(Bucket=options["bucket"], Key=f"jobs/scale-hot/values/{k}",
                              Body=b"x")
            except ClientError as exc:
                codes["s3"] = dict(exc.response)

    threads = [threading.Thread(target=put, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    dynamo = codes["dynamodb"]
    assert dynamo["Error"]["Code"] == "ProvisionedThroughputExceededException"  # type: ignore[index]
    assert dynamo["ResponseMetadata"]["HTTPStatusCode"] == 400  # type: ignore[index]
    assert codes["s3"]["Error"]["Code"] == "SlowDown"  # type: ignore[index]
    assert codes["s3"]["ResponseMetadata"]["HTTPStatusCode"] == 503  # type: ignore[index]


def test_lambda_scaling_rate_is_applied_scaled() -> None:
    """1,000 new execution environments per 10 s per function, divided by the scale; a warm
    environment is not a new one."""
    tracker = LimitTracker(SCALE, lambda name: ("job_id", {}))
    for _ in range(10):
        tracker.lambda_start("arn:aws:lambda:us-east-1:1:function:worker", warm=False)
    tracker.lambda_start("worker", warm=True)
    with pytest.raises(Throttled) as refused:
        tracker.lambda_start("worker", warm=False)
    assert refused.value.reason == "TooManyRequestsException"
    tracker.lambda_start("other", warm=False)  # per function
    assert tracker.throttles == {"TooManyRequestsException": 1}


def hold(x: int) -> int:
    time.sleep(RAMP_TASK_SECONDS)
    return x + 1


def hold_until(x: int, marker: str) -> int:
    """A chunk that runs until ``marker`` exists (at most a minute): the first chunks of
    the ramped map last until the ramp's raise, so the Map Run is still running when it
    comes, however fast this machine runs the rest."""
    deadline = time.monotonic() + 60
    while not Path(marker).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return x + 1


def new_environment_throttles(aws: EmulatedAws) -> int:
    assert aws.limits is not None
    return aws.limits.throttles.get("TooManyRequestsException", 0)


def worker_starts(aws: EmulatedAws, since: float) -> list[float]:
    """When the worker function got each new execution environment, from ``since``."""
    assert aws.limits is not None
    name = aws.backend_options["worker_function_arn"].split(":function:")[-1].split(":")[0]
    return [t - since for t in aws.limits.new_environments.get(name, []) if t >= since]


def test_the_ramp_plan_follows_the_scaled_scaling_rate() -> None:
    """80% of what Lambda adds per 10 s, after the scale: 8 at scale 100, 800 on AWS."""
    assert ramp_step(SCALE) == 8 and ramp_step(1) == 800
    start, ramp = plan_ramp(RAMP_CHUNKS, cap=RAMP_CHUNKS, scale=SCALE)
    assert start == 8 and ramp is not None and ramp.widths() == [8, 16]
    start, ramp = plan_ramp(24, cap=24, scale=SCALE)
    assert start == 8 and ramp is not None and ramp.widths() == [8, 16, 24]
    start, ramp = plan_ramp(10_000, cap=10_000, scale=1)
    assert start == 800 and ramp is not None and len(ramp.widths()) == 13  # 2 minutes
    assert plan_ramp(6, cap=RAMP_CHUNKS, scale=SCALE) == (6, None)  # narrow: no ramp
    assert plan_ramp(RAMP_CHUNKS, cap=RAMP_CHUNKS, enabled=False, scale=SCALE) == (16, None)


def test_a_raise_waits_a_scaling_interval_and_never_lowers() -> None:
    _, ramp = plan_ramp(24, cap=24, scale=SCALE)
    assert ramp is not None
    # 4 s after the Map Run started: not yet; the state machine waits the remaining 6 s.
    width, after = next_raise(ramp, 8, started_at=100.0, now=104.0)
    assert (width, after.wait, after.done) == (8, 6, False)
    width, after = next_raise(after, 8, started_at=100.0, now=110.5)
    assert (width, after.raised_at, after.done) == (16, 110.5, False)
    width, after2 = next_raise(after, 16, started_at=100.0, now=115.0)  # 4.5 s later
    assert width == 16
    width, after = next_raise(after, 16, started_at=100.0, now=121.0)
    assert (width, after.done) == (24, True)
    # Someone raised the Map Run by hand (UpdateMapRun): the ramp goes on from there.
    width, _ = next_raise(after2, 20, started_at=100.0, now=130.0)
    assert width == 24


def test_a_wide_job_ramps_its_map_and_lambda_never_throttles(aws: EmulatedAws,
                                                             tmp_path: Path) -> None:
    """16 chunks against 10 new environments per 10 s: the Lambda map starts at 8 and the
    state machine's ramp raises it with UpdateMapRun after 10 s; no invoke is refused."""
    before = new_environment_throttles(aws)
    started = time.monotonic()
    marker = tmp_path / "raised"
    sfn = aws.client("stepfunctions")
    raised: list[int] = []

    def watch(execution_arn: str) -> None:
        """Touch the marker once the Lambda Map Run is at its full width (the raise)."""
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                runs = sfn.list_map_runs(executionArn=execution_arn)["mapRuns"]
                lambda_runs = [r for r in runs if "/LambdaChunks:" in r["mapRunArn"]]
                if lambda_runs:
                    width = sfn.describe_map_run(mapRunArn=lambda_runs[0]["mapRunArn"])[
                        "maxConcurrency"]
                    if width == RAMP_CHUNKS:
                        raised.append(width)
                        break
                time.sleep(0.2)  # polling the emulation, with a deadline
        finally:
            marker.touch()  # the held chunks end even if this watch failed

    machine = aws.backend_options["state_machine_arn"]
    with fanout.Executor(backend="aws", progress=False, chunksize=1,
                         **aws.backend_options) as ex:
        results = ex.map(hold_until, range(RAMP_CHUNKS), [str(marker)] * RAMP_CHUNKS)
        arn = f"{machine.replace(':stateMachine:', ':execution:')}:{results.job_id}"
        watcher = threading.Thread(target=watch, args=(arn,), daemon=True)
        watcher.start()
        assert list(results) == [x + 1 for x in range(RAMP_CHUNKS)]
        watcher.join(timeout=60)
    took = time.monotonic() - started
    assert raised == [RAMP_CHUNKS], "the ramp never raised the Map Run to its target"
    assert new_environment_throttles(aws) == before, "Lambda throttled a ramped job"
    starts = worker_starts(aws, started)
    # Not all at once: within 9 s of the first new worker environment, at most the
    # first step's (the raise comes 10 s after the Map Run starts; warm environments are
    # reused, so later steps may need fewer new ones).
    assert starts and len([t for t in starts if t - starts[0] < 9.0]) <= ramp_step(SCALE), \
        starts
    runs = sfn.list_map_runs(executionArn=arn)["mapRuns"]
    lambda_run = [r for r in runs if "/LambdaChunks:" in r["mapRunArn"]]
    assert lambda_run, runs
    assert sfn.describe_map_run(mapRunArn=lambda_run[0]["mapRunArn"])[
        "maxConcurrency"] == RAMP_CHUNKS  # raised to the target
    assert took < 60, f"the ramped job took {took:.0f} s"


def test_without_the_ramp_the_same_job_is_throttled(aws: EmulatedAws) -> None:
    """The behaviour before the ramp (``concurrency_ramp=False``): the map starts all 16
    children at once and Lambda refuses what it cannot scale to. The job is cancelled as
    soon as that is seen (its retries would take minutes of backoff)."""
    before = new_environment_throttles(aws)
    with fanout.Executor(backend="aws", progress=False, chunksize=1, concurrency_ramp=False,
                         **aws.backend_options) as ex:
        results = ex.map(hold, range(RAMP_CHUNKS))
        deadline = time.monotonic() + 45
        while new_environment_throttles(aws) == before and time.monotonic() < deadline:
            time.sleep(0.2)  # polling the emulation's counter, with a deadline
        throttled = new_environment_throttles(aws) - before
        fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options).cancel()
    assert throttled > 0, "starting 16 at once should exceed 10 new environments per 10 s"
