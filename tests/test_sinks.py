"""The record path through a runtime's sink: the local worker's group commit and the AWS
worker's page flusher, in this process, against the real stores.

A sink takes a worker's finished records instead of a put per task and writes them in
batches (one SQLite transaction, one conditional ``UpdateItem`` per result page). What it
must keep from the direct path: each record goes through the conditional put, the caller
hears of the record that is *stored* (the winner when ours lost), only after it is stored,
and the runtime's clean-up (``settle``) runs for each. Nothing here is mocked; a store that
refuses a write is a real refusal (a string SQLite cannot encode, a table that is not there).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from fanout.backends.aws.config import AwsConfig
from fanout.backends.aws.flusher import PageFlusher
from fanout.backends.aws.layout import Layout
from fanout.backends.aws.store import AwsStore
from fanout.backends.local import worker
from fanout.backends.local.messages import Stored, Unstored
from fanout.backends.local.store import LocalStore
from fanout.protocol import FAILED, SUCCEEDED, Chunk, ResultRecord, TaskRef
from fanout.runtime import WorkerRuntime
from fanout.testing import EmulatedAws

from conftest import unique


def record(job_id: str, task: int, status: str, attempt: int, value: str,
           duration: float = 0.0) -> ResultRecord:
    """A record whose payload names its origin, as the runtime leaves it for a sink."""
    rec = ResultRecord(job_id, task, status, attempt, f"worker-{value}", 1.0, 1.0 + duration)
    if status == SUCCEEDED:
        rec.value = value.encode()
    else:
        rec.exc_type, rec.exc_message = "builtins.RuntimeError", value
    rec.extra["checkpoint"] = False
    return rec


def origin(rec: ResultRecord | None) -> tuple[int, str, int, str] | None:
    """(task, status, attempt, payload) of a record: what a caller would get."""
    if rec is None:
        return None
    payload = rec.value.decode() if rec.value is not None else rec.exc_message
    assert payload is not None
    return rec.task_index, rec.status, rec.attempt, payload


# -- the local worker's group commit -----------------------------------------------------------


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalStore]:
    store = LocalStore(tmp_path / "store")
    yield store
    store.close()


@pytest.fixture
def committer(local: LocalStore, monkeypatch: pytest.MonkeyPatch
              ) -> Iterator[tuple[worker.GroupCommitter, Connection]]:
    """A group committer whose window never closes by itself: a group is committed when a
    longer task's record arrives (in the caller's thread) or at close, so each test knows
    which records form one batch."""
    monkeypatch.setattr(worker, "GROUP_WINDOW_SECONDS", 3600.0)
    ours, theirs = Pipe()
    gc = worker.GroupCommitter(WorkerRuntime(local, "w-1"), local, ours)
    yield gc, theirs
    gc.close()
    theirs.close()


def reports(conn: Connection, want: int, within: float = 30.0) -> list[Stored | Unstored]:
    """The next ``want`` messages the committer sends (a deadline, not a sleep)."""
    out: list[Stored | Unstored] = []
    deadline = time.monotonic() + within
    while len(out) < want:
        assert conn.poll(max(0.0, deadline - time.monotonic())), f"only {out} came"
        out.append(conn.recv())
    return out


def test_a_group_is_committed_by_the_conditional_put_and_reports_what_is_stored(
        committer: tuple[worker.GroupCommitter, Connection], local: LocalStore) -> None:
    gc, conn = committer
    job = "sink-group"
    # Task 2 already has a success from another worker: ours, a later attempt, must lose.
    local.put_result(record(job, 2, SUCCEEDED, 1, "earlier"))
    gc.put(record(job, 0, SUCCEEDED, 1, "zero"))
    gc.put(record(job, 1, FAILED, 1, "one"))
    gc.put(record(job, 2, SUCCEEDED, 2, "two", duration=1.0))  # a longer task: commit now
    [message] = reports(conn, 1)
    assert isinstance(message, Stored)
    assert [origin(r) for r in message.records] == [
        (0, SUCCEEDED, 1, "zero"), (1, FAILED, 1, "one"), (2, SUCCEEDED, 1, "earlier")]
    assert [origin(local.result(job, i)) for i in range(3)] == [
        origin(r) for r in message.records]
    # settle() ran before the report: the runtime's note is gone from what the caller sees.
    assert all("checkpoint" not in r.extra for r in message.records)
    assert not conn.poll(0)  # one group, one message


def test_a_lost_race_drops_its_blob_and_a_success_its_checkpoint(
        committer: tuple[worker.GroupCommitter, Connection], local: LocalStore) -> None:
    gc, conn = committer
    job = "sink-settle"
    local.put_result(record(job, 0, SUCCEEDED, 1, "earlier"))
    lost = record(job, 0, SUCCEEDED, 2, "late", duration=1.0)
    lost.value, lost.value_ref = None, local.put_value_blob(job, 0, 2, b"late value")
    gc.put(lost)
    local.put_checkpoint(job, 1, b"state")
    won = record(job, 1, SUCCEEDED, 1, "one", duration=1.0)
    won.extra["checkpoint"] = True
    gc.put(won)
    first, second = reports(conn, 2)
    assert isinstance(first, Stored) and isinstance(second, Stored)
    assert [origin(r) for r in first.records + second.records] == [
        (0, SUCCEEDED, 1, "earlier"), (1, SUCCEEDED, 1, "one")]
    with pytest.raises(FileNotFoundError):
        local.load_value(lost)
    assert local.get_checkpoint(job, 1) is None


def test_a_clean_up_that_fails_is_logged_and_the_record_still_reported(
        committer: tuple[worker.GroupCommitter, Connection], local: LocalStore,
        caplog: pytest.LogCaptureFixture) -> None:
    gc, conn = committer
    job = "sink-cleanup"
    local.put_result(record(job, 0, SUCCEEDED, 1, "earlier"))
    lost = record(job, 0, SUCCEEDED, 2, "late", duration=1.0)
    lost.value, lost.value_ref = None, f"{job}/../elsewhere.pkl"  # the store refuses it
    gc.put(lost)
    [message] = reports(conn, 1)
    assert isinstance(message, Stored)
    assert [origin(r) for r in message.records] == [(0, SUCCEEDED, 1, "earlier")]
    assert "fanout worker could not clean up after task 0" in caplog.messages
    assert "points outside its job" in caplog.text


def test_a_store_error_is_retried_then_its_tasks_are_reported_unstored(
        committer: tuple[worker.GroupCommitter, Connection], local: LocalStore,
        monkeypatch: pytest.MonkeyPatch) -> None:
    gc, conn = committer
    monkeypatch.setattr(worker, "COMMIT_RETRY_SECONDS", 2.0)
    job = "sink-refused"
    refused = record(job, 0, FAILED, 1, "bad", duration=1.0)
    refused.stdout = "half a character: \ud800"  # SQLite cannot encode it: a StoreError
    started = time.monotonic()
    gc.put(refused)
    [message] = reports(conn, 1)
    # Retried with doubling pauses until the next would pass the deadline (at 1.55 s),
    # and no longer: the tasks' futures wait at most COMMIT_RETRY_SECONDS for their error.
    took = time.monotonic() - started
    assert took >= 1.0, "not retried for COMMIT_RETRY_SECONDS"
    assert took < 3.0, "retried past COMMIT_RETRY_SECONDS"
    assert isinstance(message, Unstored)
    assert message.tasks == ((job, 0),)
    assert message.reason.startswith(f"the fanout store {local.db_path} failed: ")
    assert "surrogates not allowed" in message.reason
    # The committer goes on: the next record is stored and reported.
    gc.put(record(job, 1, SUCCEEDED, 1, "next", duration=1.0))
    [after] = reports(conn, 1)
    assert isinstance(after, Stored)
    assert [origin(r) for r in after.records] == [(1, SUCCEEDED, 1, "next")]
    assert local.result(job, 0) is None


def test_a_record_the_store_cannot_take_for_a_bug_is_reported_at_once(
        committer: tuple[worker.GroupCommitter, Connection], local: LocalStore,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    gc, conn = committer
    monkeypatch.setattr(worker, "COMMIT_RETRY_SECONDS", 30.0)
    job = "sink-bug"
    gc.put(record(job, 0, SUCCEEDED, 1, "fine"))
    odd = record(job, 1, SUCCEEDED, 1, "odd", duration=1.0)
    odd.extra["not json"] = object()  # not a StoreError: a bug in whoever built the record
    started = time.monotonic()
    gc.put(odd)
    [message] = reports(conn, 1)
    assert time.monotonic() - started < 10, "a bug is not retried"
    assert isinstance(message, Unstored)
    assert message.tasks == ((job, 0), (job, 1))
    assert message.reason.startswith("the worker could not store the result: TypeError(")
    assert "fanout worker could not store 2 records" in caplog.messages
    assert local.result(job, 0) is None  # one transaction: nothing of the group is stored


# -- the AWS worker's page flusher -------------------------------------------------------------


@pytest.fixture(scope="module")
def aws(offline_aws: EmulatedAws) -> EmulatedAws:
    return offline_aws


def aws_store(aws: EmulatedAws, job_id: str) -> AwsStore:
    options = aws.backend_options
    store = AwsStore(AwsConfig(bucket=options["bucket"], table=options["table"],
                               state_machine_arn=options["state_machine_arn"],
                               region=options["region"], endpoint_url=aws.endpoint_url))
    # Pages of 4 tasks on 2 partition keys: a chunk of tasks 2-9 spans pages 0, 1 and 2.
    store.remember_layout(job_id, Layout(shards=2, page_tasks=4))
    return store


def chunk_of(job_id: str, tasks: range) -> Chunk:
    return Chunk(job_id, 0, "lambda", 1,
                 tuple(TaskRef(i, "payload-0.bin", 0, 0, 0) for i in tasks))


def test_a_page_is_written_when_the_chunks_tasks_of_it_are_done(aws: EmulatedAws) -> None:
    job = unique("flush-pages")
    store = aws_store(aws, job)
    told: list[tuple[ResultRecord, ResultRecord]] = []
    flusher = PageFlusher(store, WorkerRuntime(store, "w-1"), chunk_of(job, range(2, 10)),
                          lambda rec, stored: told.append((rec, stored)), max_age=3600)
    try:
        store.put_result(record(job, 3, SUCCEEDED, 1, "earlier"))  # ours (attempt 2) loses
        flusher(record(job, 2, SUCCEEDED, 2, "two"))
        assert store.result(job, 2) is None, "written before its page was done"
        flusher(record(job, 4, FAILED, 2, "four"))
        flusher(record(job, 3, SUCCEEDED, 2, "three"))  # page 0 (tasks 2, 3 of the chunk)
        assert [origin(store.result(job, i)) for i in (2, 3)] == [
            (2, SUCCEEDED, 2, "two"), (3, SUCCEEDED, 1, "earlier")]
        assert store.result(job, 4) is None, "only the page that is done is written"
        assert [(origin(r), origin(s)) for r, s in told] == [
            ((2, SUCCEEDED, 2, "two"), (2, SUCCEEDED, 2, "two")),
            ((3, SUCCEEDED, 2, "three"), (3, SUCCEEDED, 1, "earlier"))]
        assert all("checkpoint" not in r.extra for pair in told for r in pair)
        flusher(record(job, 8, SUCCEEDED, 2, "eight"))
        assert store.result(job, 4) is None and store.result(job, 8) is None
        assert len(told) == 2
    finally:
        flusher.close()
    assert [origin(store.result(job, i)) for i in (4, 8)] == [
        (4, FAILED, 2, "four"), (8, SUCCEEDED, 2, "eight")]
    assert [origin(r) for r, _ in told[2:]] == [(4, FAILED, 2, "four"), (8, SUCCEEDED, 2,
                                                                          "eight")]
    assert [origin(r) for r in store.results(job)] == [
        (2, SUCCEEDED, 2, "two"), (3, SUCCEEDED, 1, "earlier"), (4, FAILED, 2, "four"),
        (8, SUCCEEDED, 2, "eight")]


def test_records_wait_at_most_max_age(aws: EmulatedAws) -> None:
    job = unique("flush-age")
    store = aws_store(aws, job)
    told: list[ResultRecord] = []
    flusher = PageFlusher(store, WorkerRuntime(store, "w-1"), chunk_of(job, range(0, 8)),
                          lambda rec, stored: told.append(stored), max_age=0.3)
    try:
        flusher(record(job, 5, SUCCEEDED, 1, "five"))  # page 1 is not done: the timer writes
        deadline = time.monotonic() + 30
        while store.result(job, 5) is None:
            assert time.monotonic() < deadline, "a buffered record was never written"
            time.sleep(0.05)  # polling the store, with a deadline
        assert origin(store.result(job, 5)) == (5, SUCCEEDED, 1, "five")
    finally:
        flusher.close()
    assert [origin(r) for r in told] == [(5, SUCCEEDED, 1, "five")]


def wait_for_record(store: AwsStore, job_id: str, task: int, within: float = 30.0) -> None:
    deadline = time.monotonic() + within
    while store.result(job_id, task) is None:
        assert time.monotonic() < deadline, f"task {task}'s record was never written"
        time.sleep(0.05)  # polling the store, with a deadline


def test_what_a_page_flush_leaves_buffered_still_waits_at_most_max_age(
        aws: EmulatedAws) -> None:
    job = unique("flush-age-after-page")
    store = aws_store(aws, job)
    flusher = PageFlusher(store, WorkerRuntime(store, "w-1"), chunk_of(job, range(0, 8)),
                          lambda rec, stored: None, max_age=0.3)
    try:
        flusher(record(job, 5, SUCCEEDED, 1, "five"))
        for task in range(4):  # page 0 is done and written; task 5 stays buffered
            flusher(record(job, task, SUCCEEDED, 1, f"t{task}"))
        assert store.result(job, 0) is not None
        wait_for_record(store, job, 5)  # by the timer, not by close()
    finally:
        flusher.close()


def test_a_write_that_failed_is_tried_again_by_the_timer(aws: EmulatedAws) -> None:
    job = unique("flush-age-after-failure")
    store = aws_store(aws, job)
    table = store.table
    store.table = "no-such-table"  # set first: the timer's own flush fails too
    flusher = PageFlusher(store, WorkerRuntime(store, "w-1"), chunk_of(job, range(0, 8)),
                          lambda rec, stored: None, max_age=0.3)
    try:
        flusher(record(job, 5, SUCCEEDED, 1, "five"))
        with pytest.raises(ClientError, match="ResourceNotFound"):
            flusher.flush()
        store.table = table
        wait_for_record(store, job, 5)  # by the timer, not by close()
    finally:
        store.table = table
        flusher.close()


def test_records_a_failed_write_did_not_store_are_written_later(aws: EmulatedAws) -> None:
    job = unique("flush-retry")
    store = aws_store(aws, job)
    told: list[ResultRecord] = []
    flusher = PageFlusher(store, WorkerRuntime(store, "w-1"), chunk_of(job, range(0, 8)),
                          lambda rec, stored: told.append(stored), max_age=3600)
    table = store.table
    try:
        flusher(record(job, 0, SUCCEEDED, 1, "zero"))
        flusher(record(job, 5, SUCCEEDED, 1, "five"))
        store.table = "no-such-table"  # DynamoDB refuses the write (not a lost condition)
        with pytest.raises(ClientError, match="ResourceNotFound"):
            flusher.flush({0})
        store.table = table
        assert store.result(job, 0) is None and told == []
        flusher.flush({1})  # another page: the refused one is still waiting
        assert store.result(job, 0) is None
        assert [origin(r) for r in told] == [(5, SUCCEEDED, 1, "five")]
    finally:
        store.table = table
        flusher.close()
    assert origin(store.result(job, 0)) == (0, SUCCEEDED, 1, "zero")
    assert [origin(r) for r in told] == [(5, SUCCEEDED, 1, "five"), (0, SUCCEEDED, 1, "zero")]
