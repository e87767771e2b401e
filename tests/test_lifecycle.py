"""One job lifecycle for every backend (issue 11): the same records, summaries and errors.

The lifecycle (``fanout.backends.lifecycle``) is written once; these tests hold what that
promises from the outside: a cancelled job keeps the same summary on the local backend
and on (emulated) AWS, both stores return the same job record type, errors are typed
(and the CLI and API report them, while a bug stays a bug), and the local supervisor and
its workers speak in named messages.
"""

from __future__ import annotations

import concurrent.futures
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

import fanout
from fanout import cli
from fanout.backends.local.messages import (
    CancelJob,
    Ready,
    RunChunks,
    RunReduce,
    Shutdown,
    Stop,
    Stored,
    Unstored,
)
from fanout.backends.local.store import LocalStore
from fanout.future import Claim, Future
from fanout.ids import check_job_id
from fanout.job_record import JobRecord, Owner
from fanout.protocol import Chunk, ResultRecord, TaskRef
from fanout.states import JobState, TaskState
from fanout.summary import task_counts
from fanout.testing import EmulatedAws, emulated_aws
from fanout.web.app import create_app

import tasks
from conftest import eventually

SUMMARY_FIELDS = {"succeeded", "failed", "cancelled", "task_seconds", "wall_seconds", "workers"}


def _half_done_then_cancelled(ex: fanout.Executor, tmp_path: Path,
                              options: dict[str, Any]) -> fanout.Job:
    """Two tasks finish, two wait for a file that never comes; then the job is cancelled."""
    done = tmp_path / "go"
    done.touch()
    never = str(tmp_path / "never")
    results = ex.map(tasks.block_until, [str(done), str(done), never, never], chunksize=1)
    job = fanout.Job.attach(results.job_id, **options)
    eventually(lambda: job.status()["succeeded"] == 2, timeout=120,
               what="the two tasks that can finish")
    job.cancel()
    return fanout.Job.attach(results.job_id, **options)


def _check_cancelled_summary(job: fanout.Job) -> dict[str, Any]:
    info = job.info
    assert info.state == JobState.CANCELLED
    summary = info.summary
    assert summary is not None and set(summary) == SUMMARY_FIELDS, summary
    assert (summary["succeeded"], summary["failed"], summary["cancelled"]) == (2, 0, 2)
    assert summary["workers"] >= 1 and summary["task_seconds"] >= 0.0
    assert summary["wall_seconds"] >= 0.0
    return summary


def test_a_cancelled_local_job_records_counts_durations_and_workers(
        home: Path, tmp_path: Path) -> None:
    with fanout.Executor(max_workers=4, progress=False) as ex:
        job = _half_done_then_cancelled(ex, tmp_path, {})
        _check_cancelled_summary(job)
        record = LocalStore(str(home)).job(job.job_id)
    assert isinstance(record, JobRecord) and record.state == "cancelled"
    assert record["state"] == record.state  # the mapping form code may still use
    assert record.owner is not None and record.owner.alive()


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedAws]:
    with pytest.MonkeyPatch.context() as patch, emulated_aws(progress_every=None) as emulation:
        patch.setenv("FANOUT_HOME", str(tmp_path_factory.mktemp("aws-home")))
        yield emulation


def test_a_cancelled_aws_job_records_the_same_summary_as_a_local_one(
        aws: EmulatedAws, tmp_path: Path) -> None:
    options = {"backend": "aws", **aws.backend_options}
    with fanout.Executor(progress=False, **options) as ex:
        job = _half_done_then_cancelled(ex, tmp_path, options)
        summary = _check_cancelled_summary(job)
        assert summary["workers"] >= 1  # the finished tasks ran on Lambda workers
        record = ex.backend.store.job(job.job_id)
    assert isinstance(record, JobRecord) and record.execution_arn
    assert record.owner is not None  # the client that started it, as AWS records it


def test_an_unknown_job_is_a_typed_error_on_both_stores(aws: EmulatedAws, home: Path) -> None:
    for backend in ("local", "aws"):
        options = aws.backend_options if backend == "aws" else {}
        with pytest.raises(fanout.JobNotFound) as missing:
            fanout.Job.attach("20260101-000000-abcdef", backend=backend, **options)
        assert isinstance(missing.value, KeyError) and isinstance(missing.value, fanout.FanoutError)
        assert "20260101-000000-abcdef" in str(missing.value)


# -- errors: typed, reported by the CLI and the API; a bug stays a bug ------------------------


def test_the_cli_reports_fanout_errors_in_one_line(home: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["status", "20260101-000000-abcdef"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fanout: no job '20260101-000000-abcdef'") and err.count("\n") == 1
    assert cli.main(["schedule", "show", "nope"]) == 2
    assert "no schedule 'nope'" in capsys.readouterr().err


def test_a_bug_under_the_cli_is_a_traceback_not_a_message(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> object:
        raise TypeError("a bug in fanout")

    monkeypatch.setattr(fanout.Job, "attach", broken)
    with pytest.raises(TypeError, match="a bug in fanout"):
        cli.main(["status", "20260101-000000-abcdef"])


def test_the_api_answers_errors_by_kind(home: Path) -> None:
    with Client(create_app()) as client:
        missing = client.http.get("/api/jobs/20260101-000000-abcdef")
        assert missing.status_code == 404
        runs = client.http.get("/api/schedules/nope/runs")
        assert runs.status_code == 404 and b"nope" in runs.body


def test_typed_errors_are_also_their_old_builtins() -> None:
    assert issubclass(fanout.ScheduleNotFound, KeyError)
    assert issubclass(fanout.ScheduleExists, ValueError)
    assert issubclass(fanout.InvalidArgument, ValueError)
    assert issubclass(fanout.InvalidArgumentType, TypeError)
    assert issubclass(fanout.JobStillRunning, RuntimeError)
    assert issubclass(fanout.ExecutorClosed, RuntimeError)
    with pytest.raises(fanout.InvalidArgument):
        check_job_id("a/b")
    with pytest.raises(fanout.InvalidArgument, match="timeout"):
        fanout.Executor(backend="inline", timeout=-1)
    with fanout.Executor(backend="inline") as ex:
        pass
    with pytest.raises(fanout.ExecutorClosed):
        ex.submit(tasks.square, 2)


def test_retrying_a_job_that_still_runs_is_refused(home: Path, tmp_path: Path) -> None:
    never = str(tmp_path / "never")
    with fanout.Executor(max_workers=1, progress=False) as ex:
        results = ex.map(tasks.block_until, [never], chunksize=1)
        job = fanout.Job.attach(results.job_id)
        with pytest.raises(fanout.JobStillRunning, match="still running"):
            job.retry()
        job.cancel()


# -- states, records, messages ----------------------------------------------------------------


def test_task_counts_are_computed_once_for_every_backend() -> None:
    stored = {"succeeded": 3, "failed": 1, "running": 2}
    assert task_counts(stored, 10) == {"pending": 4, "running": 2, "succeeded": 3, "failed": 1,
                                       "cancelled": 0}
    assert task_counts(stored, 10, running=5)["pending"] == 1  # live workers say 5
    assert task_counts({"succeeded": 12}, 10)["pending"] == 0
    assert [str(s) for s in TaskState] == ["pending", "running", "succeeded", "failed",
                                          "cancelled"]


def test_an_owner_reads_both_stored_forms() -> None:
    me = Owner.me()
    assert Owner.from_json(me.to_json()) == me and me.alive()
    legacy = Owner.from_json("some-host/123")  # what the AWS store records
    assert legacy == Owner("some-host", 123, None) and legacy.describe() == "pid 123 on some-host"
    assert Owner.from_json(None) is None and Owner.from_json("garbage") is None


def test_claim_runs_a_pending_future_and_reports_a_cancelled_one_once() -> None:
    class NoLogs:
        def logs(self, job_id: str, task_index: int, stream: str = "both") -> str:
            return ""

    pending, cancelled, finished = (Future("j", i, NoLogs()) for i in range(3))
    assert pending.claim() == Claim.RUN and pending.running()
    assert pending.claim() == Claim.RUN  # claimed again: still running, not started twice
    assert cancelled.cancel()
    waiter = concurrent.futures.wait([cancelled], timeout=0)
    assert not waiter.done  # not yet reported: wait() sees it once claim reports it
    assert cancelled.claim() == Claim.CANCELLED
    assert concurrent.futures.wait([cancelled], timeout=5).done == {cancelled}
    assert cancelled.claim() == Claim.DONE
    finished.set_result(1)
    assert finished.claim() == Claim.DONE


def test_supervisor_and_worker_messages_are_named_and_travel_pickled() -> None:
    chunk = Chunk("j", 0, "lambda", 1, (TaskRef(0, "payload-0.bin", 0, 10, 7),))
    record = ResultRecord("j", 0, TaskState.SUCCEEDED, 1, "w", 1.0, 2.0, value=b"x")
    for message in (RunChunks((chunk,)), RunReduce("j", 2), Stop(), Ready("w", 42, ("a", "b")),
                    Stored((record,)), Unstored((("j", 0),), "disk full"), CancelJob("j"),
                    Shutdown(True)):
        # frozen and slotted (3.11's frozen slots classes raise TypeError from __setattr__)
        with pytest.raises((AttributeError, TypeError)):
            message.x = 1  # type: ignore[union-attr]
        if not isinstance(message, (CancelJob, Shutdown)):  # these stay in the client
            assert pickle.loads(pickle.dumps(message)) == message
