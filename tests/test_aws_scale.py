"""A 10,000-way job's pressure on 100 emulated workers: no hot key with result pages (issue 13).

``emulated_aws(scale=100)`` divides DynamoDB's per-key and S3's per-prefix limits by 100,
so 100 workers finishing a one-second task each per second load each key as 10,000 would
on AWS. The workers are the real AWS worker path (``handlers.run_chunk``: the runtime, the
page flusher, ``AwsStore.put_results``) running as threads of this process, and the client
polls with ``AwsStore.results_since`` meanwhile. The old key design is the same code with
``Layout(shards=1, page_tasks=1, value_prefixes=1)``: one item per task under the job's one
partition key, each write also landing on one polling-index key.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from fanout import context, serialization
from fanout.backends.aws import handlers
from fanout.backends.aws.config import AwsConfig
from fanout.backends.aws.layout import Layout
from fanout.backends.aws.store import AwsStore
from fanout.backends.aws.upload import upload_layout
from fanout.manifest import PAYLOAD_OBJECT, plan_job, write_payload
from fanout.options import TaskOptions
from fanout.testing import EmulatedAws, emulated_aws
from fanout.testing.throttling import LimitTracker, Throttled

SCALE = 100
WORKERS = 100
TASKS_PER_WORKER = 8
TASK_SECONDS = 1.0


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
        with emulated_aws(scale=SCALE, progress_every=None) as emulation:
            yield emulation


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
    job_id = f"scale-pages-{uuid.uuid4().hex[:8]}"
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


def test_the_old_key_design_throttles_at_the_same_scale(aws: EmulatedAws) -> None:
    """One item per task under one key: 100 writes/s against a scaled 10 per key."""
    assert aws.limits is not None
    before = dict(aws.limits.throttles)
    _seen, _errors, _ = run_wide_job(aws, f"scale-old-{uuid.uuid4().hex[:8]}", Layout(1, 1, 1))
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
