"""The promises fanout's results rest on, each with a test that fails when it is broken.

One result per task and the first success wins; an attempt never writes twice; a retry
re-runs only what did not succeed. The stores are driven with interleaved attempts that
return *different* values, so a test can see which one survived, on both stores: the local
SQLite store and the DynamoDB store (moto, with the table the template defines).
"""

from __future__ import annotations

import collections
import functools
import io
import json
import os
import pickle
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import fanout
from fanout import serialization
from fanout.backends.aws import flusher, handlers
from fanout.backends.aws.config import AwsConfig
from fanout.backends.aws.pages import ENTRY_MAX_BYTES, page_item, worker_ref
from fanout.backends.aws.store import POLL_OVERLAP_MS, AwsStore
from fanout.backends.local.store import LocalStore
from fanout.errors import StoreError
from fanout.manifest import PAYLOAD_OBJECT, plan_job, write_payload
from fanout.options import TaskOptions
from fanout.protocol import (
    CANCELLED,
    FAILED,
    REDUCE_INDEX,
    RUNNING,
    SUCCEEDED,
    ResultRecord,
    TaskStore,
)
from fanout.runtime import WorkerRuntime
from fanout.testing import EmulatedAws, emulated_aws

AnyStore = LocalStore | AwsStore


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedAws]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("FANOUT_HOME", str(tmp_path_factory.mktemp("aws-home")))
        with emulated_aws() as emulation:
            yield emulation


def aws_store(aws: EmulatedAws) -> AwsStore:
    options = aws.backend_options
    return AwsStore(AwsConfig(bucket=options["bucket"], table=options["table"],
                              state_machine_arn=options["state_machine_arn"],
                              region=options["region"], endpoint_url=aws.endpoint_url))


@pytest.fixture(params=["sqlite", "dynamodb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AnyStore]:
    if request.param == "sqlite":
        local = LocalStore(tmp_path / "store")
        yield local
        local.close()
    else:
        yield aws_store(request.getfixturevalue("aws"))


@pytest.fixture(params=[0, 1001, REDUCE_INDEX], ids=["task", "later-page", "reduce"])
def task(request: pytest.FixtureRequest) -> int:
    """The rule holds for a task's record (a page entry on DynamoDB: on the first page and
    on a later one, whose entries are numbered from the page's first task) and for the
    reduce record (an item of its own there, written by its own conditional put)."""
    index: int = request.param
    return index


@pytest.fixture
def job_id(request: pytest.FixtureRequest) -> str:
    """A job of its own for every test (the DynamoDB table is shared by the module)."""
    name: str = request.node.name
    return "guard-" + name.replace("[", "-").rstrip("]")


def record(job_id: str, status: str, attempt: int, value: str, task: int = 0) -> ResultRecord:
    """A record whose payload names its origin: the test can see which attempt survived."""
    rec = ResultRecord(job_id, task, status, attempt, f"worker-{value}", 1.0, 2.0)
    if status == SUCCEEDED:
        rec.value = value.encode()
    else:
        rec.exc_type, rec.exc_message = "builtins.RuntimeError", value
    return rec


def origin(rec: ResultRecord | None) -> tuple[str, int, str] | None:
    """(status, attempt, value) of a stored record: what a caller would get."""
    if rec is None:
        return None
    payload = rec.value.decode() if rec.value is not None else rec.exc_message
    assert payload is not None
    return rec.status, rec.attempt, payload


def put(store: TaskStore, rec: ResultRecord) -> tuple[str, int, str] | None:
    return origin(store.put_result(rec))


# -- first success wins; no attempt writes twice ---------------------------------------------


def test_a_success_is_never_replaced_by_a_later_attempt(store: AnyStore, job_id: str,
                                                        task: int) -> None:
    assert put(store, record(job_id, SUCCEEDED, 1, "first", task)) == (SUCCEEDED, 1, "first")
    # A second attempt that ran anyway (a Lambda timeout whose task finished, then Batch):
    # its different value must not replace the first success, and the caller learns which
    # record stands.
    assert put(store, record(job_id, SUCCEEDED, 2, "second", task)) == (SUCCEEDED, 1, "first")
    assert put(store, record(job_id, FAILED, 3, "third", task)) == (SUCCEEDED, 1, "first")
    assert put(store, record(job_id, CANCELLED, 4, "cancel", task)) == (SUCCEEDED, 1, "first")
    assert origin(store.result(job_id, task)) == (SUCCEEDED, 1, "first")


def test_a_later_attempt_replaces_a_failure_once(store: AnyStore, job_id: str, task: int) -> None:
    assert put(store, record(job_id, FAILED, 1, "boom", task)) == (FAILED, 1, "boom")
    assert put(store, record(job_id, SUCCEEDED, 2, "fixed", task)) == (SUCCEEDED, 2, "fixed")
    assert put(store, record(job_id, SUCCEEDED, 3, "again", task)) == (SUCCEEDED, 2, "fixed")
    assert origin(store.result(job_id, task)) == (SUCCEEDED, 2, "fixed")


def test_an_attempt_never_writes_twice(store: AnyStore, job_id: str, task: int) -> None:
    assert put(store, record(job_id, FAILED, 1, "boom-1", task)) == (FAILED, 1, "boom-1")
    # The same attempt delivered again (a re-driven chunk) with another outcome: ignored.
    assert put(store, record(job_id, FAILED, 1, "boom-1b", task)) == (FAILED, 1, "boom-1")
    assert put(store, record(job_id, SUCCEEDED, 1, "late-1", task)) == (FAILED, 1, "boom-1")
    assert put(store, record(job_id, FAILED, 2, "boom-2", task)) == (FAILED, 2, "boom-2")
    # A straggler of an earlier attempt arrives after a later one: it is stale.
    assert put(store, record(job_id, SUCCEEDED, 1, "stale-1", task)) == (FAILED, 2, "boom-2")
    assert origin(store.result(job_id, task)) == (FAILED, 2, "boom-2")


def test_a_cancellation_that_lands_first_stands_for_its_attempt(store: AnyStore,
                                                                 job_id: str, task: int) -> None:
    assert put(store, record(job_id, CANCELLED, 1, "cancel", task)) == (CANCELLED, 1, "cancel")
    assert put(store, record(job_id, SUCCEEDED, 1, "too-late", task)) == (CANCELLED, 1, "cancel")
    # A retry is a later attempt: it may replace the cancellation.
    assert put(store, record(job_id, SUCCEEDED, 2, "retried", task)) == (SUCCEEDED, 2, "retried")


def test_a_batch_of_puts_applies_the_rule_record_by_record(store: AnyStore,
                                                           job_id: str) -> None:
    store.put_result(record(job_id, FAILED, 1, "old-0", task=0))
    store.put_result(record(job_id, SUCCEEDED, 1, "done-1", task=1))
    stored = store.put_results([
        record(job_id, SUCCEEDED, 2, "new-0", task=0),  # replaces the failure
        record(job_id, SUCCEEDED, 2, "new-1", task=1),  # the success stays
        record(job_id, FAILED, 1, "first-2", task=2),  # nothing there yet
        record(job_id, SUCCEEDED, 1, "dup-2", task=2),  # same attempt, same batch: ignored
    ])
    assert [origin(r) for r in stored] == [
        (SUCCEEDED, 2, "new-0"), (SUCCEEDED, 1, "done-1"), (FAILED, 1, "first-2"),
        (FAILED, 1, "first-2")]
    assert [origin(r) for r in store.results(job_id)] == [
        (SUCCEEDED, 2, "new-0"), (SUCCEEDED, 1, "done-1"), (FAILED, 1, "first-2")]


def test_racing_attempts_agree_on_one_survivor(store: AnyStore, job_id: str) -> None:
    """Eight writers at once, each with its own value: all are told the same winner."""
    writers = 8
    barrier = threading.Barrier(writers)
    told: dict[int, tuple[str, int, str] | None] = {}
    errors: list[BaseException] = []
    # Each thread gets its own store object (its own connection or HTTP client), as
    # separate worker processes would.
    make: Callable[[], AnyStore] = (
        (lambda: LocalStore(store.home)) if isinstance(store, LocalStore)
        else (lambda: AwsStore(store.config)))

    def write(n: int) -> None:
        try:
            mine = make()
            barrier.wait(timeout=30)
            told[n] = put(mine, record(job_id, SUCCEEDED, 1 + n % 2, f"writer-{n}"))
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    stored = origin(store.result(job_id, 0))
    assert stored is not None and stored[2].startswith("writer-")
    assert set(told.values()) == {stored}, "writers were told different winners"


# -- nothing computed is lost: a record comes back whole ---------------------------------------


def full_records(job_id: str) -> list[ResultRecord]:
    """Every field set, on a success, a failure with a pickled exception, and a blob."""
    return [
        ResultRecord(job_id, 0, SUCCEEDED, 2, "host-a/101", 10.25, 12.5, value=b"\x00value",
                     stdout="out\n", stderr="err\n", extra={"checkpoint": True, "n": 3}),
        ResultRecord(job_id, 1, FAILED, 1, "", 20.0, 20.75,
                     exc_type="builtins.ValueError", exc_message="bad input",
                     traceback="Traceback (most recent call last):\n  ...\nValueError",
                     exc_pickle=b"\x80\x05pickled", stdout="", stderr="oops"),
        ResultRecord(job_id, 2, SUCCEEDED, 1, "w", 1.5, 3.0,
                     value_ref=f"{job_id}/values/2.a1.abcd.pkl"),
    ]


def test_a_record_comes_back_whole(store: AnyStore, job_id: str) -> None:
    records = full_records(job_id)
    assert store.put_results(records) == records
    assert store.results(job_id) == records
    assert [store.result(job_id, r.task_index) for r in records] == records
    assert store.result(job_id, 3) is None
    # A lost put hands back the stored record whole, not just its status.
    loser = ResultRecord(job_id, 0, SUCCEEDED, 3, "late", 0.0, 0.0, value=b"other")
    assert store.put_result(loser) == records[0]
    assert store.put_results([loser]) == [records[0]]


def test_a_rerun_skips_exactly_the_succeeded_tasks(aws: EmulatedAws, job_id: str) -> None:
    """A Batch attempt after a Lambda one, or a retry, asks which tasks are done: at most
    100 keys per BatchGetItem request (DynamoDB's limit), so 201 keys take three."""
    store = aws_store(aws)
    # Records live in pages of P tasks, one key per page: 201 pages take three requests.
    pages = store.layout(job_id).page_tasks
    statuses = {i: (SUCCEEDED, FAILED, CANCELLED)[i % 3] for i in range(0, 230 * pages, 2)}
    store.put_results([record(job_id, status, 1, f"t{index}", task=index)
                       for index, status in statuses.items()])
    asked = list(range(6 * pages, 207 * pages))  # odd ones have no record at all
    expected = {i for i, status in statuses.items()
                if status == SUCCEEDED and 6 * pages <= i < 207 * pages}
    before = batch_gets(aws)
    assert store.finished_tasks(job_id, asked) == expected
    assert batch_gets(aws) - before == 3
    assert store.finished_tasks(job_id, []) == set()


def requests(aws: EmulatedAws, service: str, operation: str) -> int:
    """How many requests of this kind the emulation has served so far."""
    return sum(n for (_, s, op), n in aws.requests.items() if (s, op) == (service, operation))


def test_the_reduce_record_and_the_poll_cursor_keep_the_documented_layout(
        aws: EmulatedAws, job_id: str) -> None:
    """The table layout is a stored format (backends/aws/store.py's docstring): the reduce
    record lives under item "reduce", outside the task records, and each record carries the
    wall-clock millisecond it finished, which the client's polling cursor follows."""
    store = aws_store(aws)
    before_ms = int(time.time() * 1000)
    store.put_result(record(job_id, SUCCEEDED, 1, "task-0"))
    polled, first_cursor = store.results_since(job_id, 0)
    assert [r.task_index for r in polled] == [0]
    # every field of the reduce record, an empty worker id and output included
    reduced = ResultRecord(job_id, REDUCE_INDEX, SUCCEEDED, 1, "", 1.0, 2.0, value=b"sum",
                           stdout="reduced\n", stderr="warned\n", extra={"n": 2})
    assert store.put_result(reduced) is reduced
    after_ms = int(time.time() * 1000)
    # the next poll, from the cursor the first one returned, finds it
    polled, next_cursor = store.results_since(job_id, first_cursor)
    assert polled == [reduced] and first_cursor <= next_cursor <= after_ms
    # a failed reduce and one whose value is a blob come back whole too
    failed = ResultRecord(f"{job_id}-failed", REDUCE_INDEX, FAILED, 2, "host/7", 1.0, 2.0,
                          exc_type="builtins.ValueError", exc_message="bad reduce",
                          traceback="Traceback (most recent call last):\n  ...\nValueError",
                          exc_pickle=b"\x80\x05pickled")
    blob = ResultRecord(f"{job_id}-blob", REDUCE_INDEX, SUCCEEDED, 1, "w", 1.0, 2.0,
                        value_ref=f"{job_id}-blob/values/reduce.pkl")
    for other in (failed, blob):
        assert store.put_result(other) is other
        assert store.result(other.job_id, REDUCE_INDEX) == other
    raw = store.dynamodb.get_item(TableName=store.table, ConsistentRead=True,
                                  Key={"job_id": {"S": job_id}, "item": {"S": "reduce"}})
    assert raw["Item"]["value"]["B"] == b"sum"
    # Records expire after RECORD_TTL_DAYS (90) through the table's TTL attribute.
    ttl = store.dynamodb.describe_time_to_live(TableName=store.table)["TimeToLiveDescription"]
    expires = int(raw["Item"][ttl["AttributeName"]]["N"])
    assert before_ms // 1000 + 90 * 86400 <= expires <= after_ms // 1000 + 90 * 86400 + 1
    assert store.result(job_id, REDUCE_INDEX) == reduced
    assert [r.task_index for r in store.results(job_id)] == [0]
    polled, cursor = store.results_since(job_id, 0)
    assert sorted(r.task_index for r in polled) == [REDUCE_INDEX, 0]
    assert before_ms <= cursor <= after_ms


def test_a_page_written_late_is_still_polled(aws: EmulatedAws, job_id: str) -> None:
    """A page's ``written`` is its writer's clock when the request was built; a request the
    SDK resends after a long backoff lands with an old stamp, behind the poll cursor by more
    than the poll's overlap. The regular poll cannot see it (shown first, so this test
    fails if that ever changes without the deep look being needed); the periodic deep
    look does. The stale stamp is put into the real UpdateItem request, as a resend has it."""
    store = aws_store(aws)
    store.deep_poll_every_seconds = 3600.0
    store.put_result(record(job_id, SUCCEEDED, 1, "on-time", task=0))
    polled, cursor = store.results_since(job_id, 0)
    assert [r.task_index for r in polled] == [0]
    stale = str(cursor - POLL_OVERLAP_MS - 60_000)

    def resent(params: dict[str, Any], **_: Any) -> None:
        params["ExpressionAttributeValues"][":now"] = {"N": stale}

    store.dynamodb.meta.events.register("provide-client-params.dynamodb.UpdateItem", resent)
    try:
        store.put_result(record(job_id, SUCCEEDED, 1, "late", task=100))  # another page
    finally:
        store.dynamodb.meta.events.unregister("provide-client-params.dynamodb.UpdateItem",
                                              resent)
    store.put_result(record(job_id, SUCCEEDED, 1, "after", task=200))
    polled, cursor = store.results_since(job_id, cursor)
    assert [r.task_index for r in polled] == [200]  # the regular look misses the late page
    store.deep_poll_every_seconds = 0.0
    polled, cursor = store.results_since(job_id, cursor)
    assert [origin(r) for r in polled] == [("succeeded", 1, "late")]
    polled, _ = store.results_since(job_id, cursor)
    assert polled == []  # and a deep look re-reads no page it has read


def test_keys_dynamodb_leaves_unprocessed_are_asked_again(aws: EmulatedAws,
                                                         job_id: str) -> None:
    """BatchGetItem may answer part of a request and return the rest as UnprocessedKeys
    (response over 16 MB, or throttling: "BatchGetItem", DynamoDB API Reference). moto always
    answers in full, so the first answer is cut down here the way DynamoDB would cut it."""
    store = aws_store(aws)
    for index in range(6):
        store.put_result(record(job_id, SUCCEEDED, 1, f"t{index}", task=index))
    cut: list[tuple[str, str]] = []
    asked: list[dict[str, Any]] = []

    def remember(params: dict[str, Any], **_: Any) -> None:
        asked.append(params["RequestItems"][store.table])

    def partial(parsed: dict[str, Any], **_: Any) -> None:
        if cut:
            return
        # The whole first answer is left unprocessed: DynamoDB then returns no entry for
        # the table under Responses at all.
        cut.extend((item["job_id"]["S"], item["item"]["S"])
                   for item in parsed["Responses"][store.table])
        del parsed["Responses"][store.table]
        parsed["UnprocessedKeys"] = {store.table: {
            **asked[0], "Keys": [{"job_id": {"S": key}, "item": {"S": item}}
                                 for key, item in cut]}}

    store.dynamodb.meta.events.register("provide-client-params.dynamodb.BatchGetItem",
                                        remember)
    store.dynamodb.meta.events.register("after-call.dynamodb.BatchGetItem", partial)
    before = batch_gets(aws)
    assert store.finished_tasks(job_id, list(range(6))) == set(range(6))
    assert len(cut) == len(asked[0]["Keys"]) and batch_gets(aws) - before == 2
    assert sorted((k["job_id"]["S"], k["item"]["S"]) for k in asked[1]["Keys"]) == sorted(cut)


def test_a_winning_put_hands_back_the_callers_record(store: AnyStore, job_id: str) -> None:
    """No read after a write that won: the runtime tells a won race from a lost one by
    identity, and a put costs one request."""
    first = record(job_id, FAILED, 1, "boom")
    assert store.put_result(first) is first
    batch = [record(job_id, SUCCEEDED, 2, "ok"), record(job_id, FAILED, 1, "new", task=1)]
    assert all(a is b for a, b in zip(store.put_results(batch), batch, strict=True))
    loser = record(job_id, SUCCEEDED, 3, "late")
    assert store.put_result(loser) is not loser


def test_the_aws_store_reads_records_strongly_consistently(aws: EmulatedAws,
                                                           job_id: str) -> None:
    """DynamoDB reads are eventually consistent unless asked (moto is always consistent, so
    the requests themselves are checked): a re-run deciding what to skip, or a client
    reading a record just put, must see the latest write."""
    store = aws_store(aws)
    sent: list[tuple[str, dict[str, Any]]] = []

    def capture(params: dict[str, Any], model: Any, **_: Any) -> None:
        sent.append((model.name, params))

    store.dynamodb.meta.events.register("provide-client-params.dynamodb.*", capture)
    store.put_result(record(job_id, SUCCEEDED, 1, "v"))
    store.result(job_id, 0)
    store.results(job_id)
    store.finished_tasks(job_id, [0, 1])
    reads = {name: params for name, params in sent if name not in ("PutItem", "UpdateItem")}
    assert set(reads) == {"GetItem", "Query", "BatchGetItem"}
    assert reads["GetItem"]["ConsistentRead"] is True
    assert reads["Query"]["ConsistentRead"] is True
    assert reads["BatchGetItem"]["RequestItems"][store.table]["ConsistentRead"] is True


def batch_gets(aws: EmulatedAws) -> int:
    return requests(aws, "dynamodb", "BatchGetItem")


def triple(x: int, plus: int = 0) -> int:
    return 3 * x + plus


def test_an_aws_worker_reads_a_chunks_arguments_with_one_ranged_get(aws: EmulatedAws,
                                                                     job_id: str) -> None:
    """The worker runtime on the AWS store, in this process: one GET for the whole chunk."""
    store = aws_store(aws)
    with io.BytesIO() as out:
        refs = write_payload(out, [serialization.dumps_call((x,), {"plus": 1})
                                   for x in range(5)], 7)
        store.put_object(job_id, PAYLOAD_OBJECT, out.getvalue())
    spec, manifest = plan_job(job_id, "map", "triple", refs, TaskOptions(chunksize=5), 7)
    store.put_bundle(spec, serialization.dumps_function(triple), None)
    gets, deletes = requests(aws, "s3", "GetObject"), requests(aws, "s3", "DeleteObject")
    WorkerRuntime(store, "w-aws").run_chunk(manifest[0])
    # the bundle (spec and function), then one ranged GET for all five tasks
    assert requests(aws, "s3", "GetObject") - gets == 2
    # first attempts that never checkpointed have no checkpoint to delete: no request
    assert requests(aws, "s3", "DeleteObject") == deletes
    stored = store.results(job_id)
    assert [serialization.loads(store.load_value(r)) for r in stored] == [1, 4, 7, 10, 13]
    assert {r.worker_id for r in stored} == {"w-aws"}


def announce_and_wait(x: int) -> int:
    print(x)
    time.sleep(0.1)
    return x


def test_a_tasks_output_stays_its_own_while_pages_flush_behind_it(
        aws: EmulatedAws, job_id: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """An AWS worker captures a task's output from ``sys.stdout``, and the page flusher's
    timer thread writes pages while the next task runs: nothing that thread does may print.
    It used to add a task-duration metric per stored record, and Powertools prints a
    metric's values once it holds 100 - into the running task's output, lost to CloudWatch.
    The metric is now added on the chunk's thread once the task's capture has ended."""
    assert handlers.metrics is not None  # Powertools is in the dev extra
    n = 105  # the 100th duration is stored while task 100 or 101 runs
    store = aws_store(aws)
    with io.BytesIO() as out:
        refs = write_payload(out, [serialization.dumps_call((x,), {}) for x in range(n)], 7)
        store.put_object(job_id, PAYLOAD_OBJECT, out.getvalue())
    spec, manifest = plan_job(job_id, "map", "announce_and_wait", refs,
                              TaskOptions(chunksize=n), 7)
    store.put_bundle(spec, serialization.dumps_function(announce_and_wait), None)
    # The timer writes a record 0.05 s after it is buffered (10 s on AWS, where tasks last
    # minutes): here, too, while the next task runs.
    monkeypatch.setattr(handlers, "PageFlusher",
                        functools.partial(flusher.PageFlusher, max_age=0.05))
    handlers.metrics.clear_metrics()
    capsys.readouterr()
    try:
        handlers.run_chunk(manifest[0], "w-metrics", store)
        printed = capsys.readouterr().out
    finally:
        handlers.metrics.clear_metrics()
    assert [r.stdout for r in store.results(job_id)] == [f"{i}\n" for i in range(n)]
    # The metrics are not lost: Powertools printed the first 100 durations, between tasks.
    emf = [json.loads(line) for line in printed.splitlines() if '"_aws"' in line]
    assert [len(m["TaskDuration"]) for m in emf if "TaskDuration" in m] == [100]


def test_a_truncated_payload_fails_each_task_of_the_chunk(aws: EmulatedAws,
                                                          job_id: str) -> None:
    store = aws_store(aws)
    with io.BytesIO() as out:
        refs = write_payload(out, [serialization.dumps_call((x,), {}) for x in range(3)], 7)
        store.put_object(job_id, PAYLOAD_OBJECT, out.getvalue()[:-3])  # the tail is lost
    spec, manifest = plan_job(job_id, "map", "triple", refs, TaskOptions(chunksize=3), 7)
    store.put_bundle(spec, serialization.dumps_function(triple), None)
    WorkerRuntime(store, "w-aws").run_chunk(manifest[0])
    stored = store.results(job_id)
    assert [(r.status, r.exc_type) for r in stored] == [(FAILED, "builtins.OSError")] * 3
    # one read of the chunk failed, and that failure is each task's, said once for all
    assert {r.exc_message for r in stored} == {
        f"payload {PAYLOAD_OBJECT} of job {job_id} is truncated"}


# -- retry re-runs only what did not succeed, counted by executions --------------------------


def log_then_fail_unless(marker: str, log_path: str, x: int, bad: tuple[int, ...]) -> int:
    """Appends one line per execution (O_APPEND: whole lines from concurrent workers),
    then fails for ``x in bad`` until ``marker`` exists (a bug the user then fixes)."""
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    if x in bad and not os.path.exists(marker):
        raise RuntimeError(f"task {x} is not fixed yet")
    return x * 10


def executions(log: Path) -> collections.Counter[int]:
    return collections.Counter(int(line) for line in log.read_text().split())


def test_retry_on_aws_reruns_only_unfinished_tasks(aws: EmulatedAws, tmp_path: Path) -> None:
    marker, log = tmp_path / "fixed", tmp_path / "executions.log"
    n, bad = 7, (2, 4)
    with fanout.Executor(backend="aws", progress=False, chunksize=3,
                         **aws.backend_options) as ex:
        results = ex.map(log_then_fail_unless, [str(marker)] * n, [str(log)] * n, range(n),
                         [bad] * n)
        failed = {f.task_index for f in results.futures if f.exception(timeout=120)}
    assert failed == set(bad)
    assert executions(log) == collections.Counter(range(n))
    marker.touch()
    job = fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options)
    counts = job.retry()
    assert counts["succeeded"] == n and counts["failed"] == 0
    assert job.results(timeout=60) == [x * 10 for x in range(n)]
    # What the retry's Distributed Map was given to run (its manifest in S3), and what ran.
    store = aws_store(aws)
    listing = store.s3.list_objects_v2(Bucket=store.bucket,
                                       Prefix=store.key(job.job_id, "manifest-retry-"))
    retry_manifests = [o["Key"] for o in listing.get("Contents", [])
                       if o["Key"].endswith(".json") and not o["Key"].endswith(
                           ("-lambda.json", "-batch.json"))]
    assert len(retry_manifests) == 1, retry_manifests
    chunks: list[dict[str, Any]] = json.loads(
        store.s3.get_object(Bucket=store.bucket, Key=retry_manifests[0])["Body"].read())
    assert sorted(t[0] for c in chunks for t in c["tasks"]) == list(bad)
    assert {c["attempt"] for c in chunks} == {2}
    ran = executions(log)
    assert ran == collections.Counter({**{x: 1 for x in range(n)}, **{x: 2 for x in bad}}), (
        f"the retry re-ran finished tasks: {sorted(ran.items())}")
    records = job.records()
    assert [r.attempt for r in records] == [2 if r.task_index in bad else 1 for r in records]


# -- an interrupted Batch attempt (AWS only) -------------------------------------------------


def test_an_interruption_never_hides_a_final_record(aws: EmulatedAws, job_id: str,
                                                    task: int) -> None:
    # Batch's SIGTERM handler stores a ``running`` record for the interrupted attempt. It may
    # stand in for nothing final: a cancellation (written with attempt 1 while attempt 2 was
    # being stopped) stays, and any final record replaces an interruption.
    store = aws_store(aws)
    cancelled = (CANCELLED, 1, "cancelled")
    assert put(store, record(job_id, CANCELLED, 1, "cancelled", task)) == cancelled
    assert put(store, record(job_id, RUNNING, 2, "interrupted", task)) == cancelled
    other = job_id + "-b"
    assert put(store, record(other, RUNNING, 2, "interrupted", task)) == (RUNNING, 2, "interrupted")
    assert put(store, record(other, RUNNING, 2, "again", task)) == (RUNNING, 2, "interrupted")
    assert put(store, record(other, RUNNING, 3, "later", task)) == (RUNNING, 3, "later")
    assert put(store, record(other, CANCELLED, 1, "cancelled", task)) == (CANCELLED, 1, "cancelled")
    third = job_id + "-c"
    assert put(store, record(third, RUNNING, 1, "interrupted", task)) == (RUNNING, 1, "interrupted")
    assert put(store, record(third, SUCCEEDED, 2, "retried", task)) == (SUCCEEDED, 2, "retried")
    assert put(store, record(third, RUNNING, 3, "late", task)) == (SUCCEEDED, 2, "retried")


# -- a record too large for its page entry -----------------------------------------------------


def page_entry(store: AwsStore, job_id: str, task: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The raw page item holding ``task`` and the task's entry in it (pages.py's format)."""
    layout = store.layout(job_id)
    page = layout.page(task)
    raw = store.dynamodb.get_item(
        TableName=store.table, ConsistentRead=True,
        Key={"job_id": {"S": layout.partition(job_id, page)},
             "item": {"S": page_item(page)}})["Item"]
    return raw, raw[f"t{task - page * layout.page_tasks}"]["M"]


def test_a_page_item_carries_its_ttl_its_written_stamp_and_worker_names(
        aws: EmulatedAws, job_id: str) -> None:
    """The page's own attributes (pages.py's format): the table's TTL attribute, the
    millisecond the page was written (the poll cursor follows it), and each worker id once
    under a ``W<crc32>`` name, even one whose name is all digits after the W."""
    store = aws_store(aws)
    # a worker id whose reference looks like an entry's number, "W" + 8 decimal digits
    worker = next(w for w in (f"host/{n}" for n in range(100_000))
                  if worker_ref(w)[1:].isdigit())
    before_ms = int(time.time() * 1000)
    mine = record(job_id, SUCCEEDED, 1, "paged")
    mine.worker_id = worker
    assert store.put_result(mine) is mine
    after_ms = int(time.time() * 1000)
    raw, entry = page_entry(store, job_id, 0)
    assert entry["w"] == {"S": "@" + worker_ref(worker)} and raw[worker_ref(worker)] == {
        "S": worker}
    assert before_ms <= int(raw["written"]["N"]) <= after_ms
    ttl = store.dynamodb.describe_time_to_live(TableName=store.table)["TimeToLiveDescription"]
    expires = int(raw[ttl["AttributeName"]]["N"])
    assert before_ms // 1000 + 90 * 86400 <= expires <= after_ms // 1000 + 90 * 86400 + 1
    assert store.results(job_id) == [mine] and store.result(job_id, 0) == mine


def test_a_page_write_that_can_never_land_fails_fast_with_a_store_error(
        aws: EmulatedAws, job_id: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the re-read entries and the write condition ever disagreed (a bug), the write
    would be refused for ever: it gives up after PAGE_WRITE_ROUNDS with an error that
    says so, and stores nothing. The disagreement is made by approving every entry."""
    from fanout.backends.aws import store as aws_store_module

    store = aws_store(aws)
    store.put_result(record(job_id, SUCCEEDED, 1, "first"))
    monkeypatch.setattr(aws_store_module, "may_replace", lambda stored, rec: True)
    with pytest.raises(StoreError) as refused:
        store.put_result(record(job_id, SUCCEEDED, 2, "second"))
    assert str(refused.value) == (
        f"the write of page 0 of job {job_id} was refused "
        f"{aws_store_module.PAGE_WRITE_ROUNDS} times although each re-read allowed it: the "
        "stored entries and the write condition disagree (a bug, or another writer changing "
        "this page as fast); the records are not stored, so their tasks count as unfinished")
    assert origin(store.result(job_id, 0)) == (SUCCEEDED, 1, "first")


def spilled_objects(store: AwsStore, job_id: str) -> list[str]:
    listing = store.s3.list_objects_v2(Bucket=store.bucket, Prefix=f"jobs/{job_id}/records/")
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_a_record_too_large_for_its_entry_is_kept_whole_in_s3(aws: EmulatedAws,
                                                              job_id: str) -> None:
    """pages.py's format: an entry over ENTRY_MAX_BYTES keeps s/a/w/b/e and R, a reference
    to the whole record pickled in S3, so a page stays under DynamoDB's 400 KB item limit
    (docs.aws.amazon.com/amazondynamodb/latest/developerguide/Constraints.html); the rule
    still holds on that entry, and a spilled record that loses leaves no object behind."""
    store = aws_store(aws)
    big = record(job_id, FAILED, 1, "big")
    big.stdout = "o" * 30_000
    assert store.put_result(big) is big
    raw, entry = page_entry(store, job_id, 0)
    assert set(entry) == {"s", "a", "w", "b", "e", "R"}
    assert (entry["s"], entry["a"], entry["b"], entry["e"]) == (
        {"S": FAILED}, {"N": "1"}, {"N": "1.0"}, {"N": "2.0"})
    worker = entry["w"]["S"]
    assert worker.startswith("@W") and raw[worker[1:]] == {"S": "worker-big"}
    ref = entry["R"]["S"]
    # records/<the task's S3 prefix shard>/<task>.a<attempt>.<8 hex digits>.pkl
    shard = store.layout(job_id).prefix(0)
    assert re.fullmatch(rf"{re.escape(job_id)}/records/{shard}/0\.a1\.[0-9a-f]{{8}}\.pkl", ref)
    assert pickle.loads(store.get_object(job_id, ref.split("/", 1)[1])) == big
    assert store.result(job_id, 0) == big and store.results(job_id) == [big]
    assert store.finished_tasks(job_id, [0]) == set()
    # A later attempt replaces the spilled failure; its success, spilled too, then stands.
    retried = record(job_id, SUCCEEDED, 2, "retried")
    retried.stderr = "e" * 30_000
    assert store.put_result(retried) is retried
    assert store.result(job_id, 0) == retried
    assert store.finished_tasks(job_id, [0]) == {0}
    objects = spilled_objects(store, job_id)
    late = record(job_id, SUCCEEDED, 3, "late")
    late.stdout = "l" * 30_000
    assert store.put_result(late) == retried
    assert spilled_objects(store, job_id) == objects, "the loser's object was left behind"


def test_an_entry_of_exactly_the_limit_stays_in_the_page(aws: EmulatedAws, job_id: str) -> None:
    """ENTRY_MAX_BYTES counts as DynamoDB does, attribute names plus values (pages.py):
    s, a, w, b, e, xt, xm and so here."""
    store = aws_store(aws)

    def sized(task: int, size: int) -> ResultRecord:
        rec = record(job_id, FAILED, 1, "edge", task=task)
        assert rec.exc_type is not None and rec.exc_message is not None
        fixed = (1 + len(FAILED) + 1 + 1 + 1 + len(rec.worker_id) + 1 + 3 + 1 + 3
                 + 2 + len(rec.exc_type) + 2 + len(rec.exc_message) + 2)
        rec.stdout = "s" * (size - fixed)
        return rec

    at, over = sized(0, ENTRY_MAX_BYTES), sized(1, ENTRY_MAX_BYTES + 1)
    store.put_results([at, over])
    assert "R" not in page_entry(store, job_id, 0)[1]
    assert page_entry(store, job_id, 0)[1]["so"] == {"S": at.stdout}
    assert "R" in page_entry(store, job_id, 1)[1]
    assert store.results(job_id) == [at, over]
