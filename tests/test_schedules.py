"""Scheduled runs on the local backend, fired with an injected clock (no real waiting)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fanout
from fanout.backends.local.backend import LocalBackend
from fanout.backends.local.scheduler import ScheduleRunner

import tasks
from conftest import eventually

TESTS = Path(__file__).parent


def local(ex: fanout.Executor) -> LocalBackend:
    backend = ex.backend
    assert isinstance(backend, LocalBackend)
    return backend


def attach(job_id: str | None) -> fanout.Job:
    assert job_id, "the schedule should have started a job"
    return fanout.Job.attach(job_id)


def items_now() -> list[int]:
    """Items computed when the run fires (a function given as items)."""
    return [int(os.environ.get("FANOUT_TEST_ITEM", "5"))]


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"cron": "0 2 * * *"}, "needs 6 fields"),
    ({"cron": "cron(0 2 * * * *)"}, "exactly one of day-of-month and day-of-week"),
    ({"cron": "cron(0 25 * * ? *)"}, "accepted forms"),
    ({"rate": "rate(1 minutes)"}, "rate\\(1 minute\\)"),
    ({"rate": "every minute"}, "accepted forms"),
    ({"rate": "rate(1 minute)", "cron": "cron(0 2 * * ? *)"}, "exactly one of cron= or rate="),
    ({}, "exactly one of cron= or rate="),
    ({"rate": "rate(1 minute)", "timezone": "Mars/Olympus"}, "unknown timezone"),
])
def test_malformed_schedules_are_rejected_at_creation(home: Path, kwargs: dict[str, str],
                                                      match: str) -> None:
    with fanout.Executor(max_workers=1, progress=False) as ex:
        with pytest.raises(ValueError, match=match) as info:
            ex.schedule("bad", tasks.square, [1], **kwargs)  # type: ignore[arg-type]
        assert ex.backend.list_schedules() == []
    if "forms" in match or "fields" in match:
        assert "rate(5 minutes)" in str(info.value) and "cron(0 2 * * ? *)" in str(info.value)


def test_bad_names_and_items(home: Path) -> None:
    with fanout.Executor(max_workers=1, progress=False) as ex:
        with pytest.raises(ValueError, match="schedule name"):
            ex.schedule("../x", tasks.square, [1], rate="rate(1 hour)")
        with pytest.raises(ValueError, match="S3 prefix"):
            ex.schedule("x", tasks.square, "not-a-prefix", rate="rate(1 hour)")
        with pytest.raises(TypeError, match="items must be a list"):
            ex.schedule("x", tasks.square, 42, rate="rate(1 hour)")
        ex.schedule("dup", tasks.square, [1], rate="rate(1 hour)")
        with pytest.raises(ValueError, match="exists already"):
            ex.schedule("dup", tasks.square, [1], rate="rate(1 hour)")


def test_a_rate_schedule_fires_on_the_injected_clock(home: Path) -> None:
    with fanout.Executor(max_workers=2, progress=False, seed=3) as ex:
        spec = ex.schedule("every-minute", tasks.square, [1, 2, 3], rate="rate(1 minute)",
                           reducer=sum)
        runner = ScheduleRunner(local(ex), clock=lambda: 0.0)
        assert spec.next_fire is not None
        assert runner.tick(spec.next_fire - 1) == []  # not due yet
        [(name, job_id)] = runner.tick(spec.next_fire)
        assert name == "every-minute" and job_id
        job = attach(job_id)
        assert job.results(timeout=60) == [1, 4, 9]
        reduced = job.reduce_future()
        assert reduced is not None and reduced.result(timeout=60) == 14
        [after] = ex.backend.list_schedules()
        assert after.next_fire == pytest.approx(spec.next_fire + 60)
        assert runner.tick(spec.next_fire + 30) == []
        eventually(lambda: job.info.state == "finished", what="the first run to finish")
        [(_, second)] = runner.tick(spec.next_fire + 60)
        assert second != job_id  # each run is its own job
        attach(second).results(timeout=60)
        runs = ex.backend.schedule_runs("every-minute")
        assert [r["job_id"] for r in runs] == [second, job_id]
        eventually(lambda: {r["state"] for r in ex.backend.schedule_runs("every-minute")}
                   == {"finished"}, what="both runs to be recorded as finished")


def test_items_from_a_function_are_made_at_run_time(home: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    with fanout.Executor(max_workers=1, progress=False) as ex:
        spec = ex.schedule("live", tasks.square, items_now, cron="cron(0 2 * * ? *)",
                           timezone="Europe/Zurich")
        assert spec.items == "function"
        monkeypatch.setenv("FANOUT_TEST_ITEM", "7")
        runner = ScheduleRunner(local(ex))
        assert spec.next_fire is not None
        [(_, job_id)] = runner.tick(spec.next_fire)
        assert attach(job_id).results(timeout=60) == [49]


def test_a_run_due_while_the_previous_one_runs_is_skipped(home: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    with fanout.Executor(max_workers=1, progress=False) as ex:
        spec = ex.schedule("slow", tasks.block_until, [str(gate)], rate="rate(5 minutes)")
        runner = ScheduleRunner(local(ex))
        assert spec.next_fire is not None
        [(_, first)] = runner.tick(spec.next_fire)
        assert runner.tick(spec.next_fire + 300) == [("slow", None)]
        runs = ex.backend.schedule_runs("slow")
        assert [r["state"] for r in runs] == ["skipped", "running"]
        gate.touch()
        attach(first).results(timeout=60)


def test_paused_schedules_do_not_fire(home: Path) -> None:
    with fanout.Executor(max_workers=1, progress=False) as ex:
        spec = ex.schedule("p", tasks.square, [2], rate="rate(1 hour)", enabled=False)
        runner = ScheduleRunner(local(ex))
        assert spec.next_fire is not None
        assert runner.tick(spec.next_fire + 7200) == []
        resumed = local(ex).set_schedule_enabled("p", True)
        assert resumed.enabled and resumed.next_fire is not None
        [(_, job_id)] = runner.tick(resumed.next_fire)
        assert attach(job_id).results(timeout=60) == [4]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "fanout.cli", *args], capture_output=True,
                            text=True, timeout=300, cwd=str(TESTS), env=os.environ.copy())
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_schedule_commands(home: Path, tmp_path: Path) -> None:
    items = tmp_path / "items.json"
    items.write_text(json.dumps([1, 2, 3]))
    added = cli("schedule", "add", "nightly-risk", "--function", "tasks:square",
                "--items-json", str(items), "--cron", "cron(0 2 * * ? *)",
                "--timezone", "Europe/Zurich").stdout
    assert "nightly-risk: cron(0 2 * * ? *) (Europe/Zurich), enabled" in added
    assert "nightly-risk" in cli("schedule", "list").stdout
    assert "3 items" in cli("schedule", "show", "nightly-risk").stdout
    assert "paused" in cli("schedule", "pause", "nightly-risk").stdout
    assert "enabled" in cli("schedule", "resume", "nightly-risk").stdout
    assert "no runs yet" in cli("schedule", "runs", "nightly-risk").stdout
    bad = cli("schedule", "add", "x", "--function", "tasks:square", "--items-json",
              str(items), "--cron", "0 2 * * *", check=False)
    assert bad.returncode == 2 and "accepted forms" in bad.stderr
    zone = cli("schedule", "add", "y", "--function", "tasks:square", "--items-json",
               str(items), "--rate", "rate(1 hour)", "--timezone", "Nowhere/Else", check=False)
    assert zone.returncode == 2 and "unknown timezone" in zone.stderr
    assert "removed" in cli("schedule", "remove", "nightly-risk").stdout
    missing = cli("schedule", "show", "nightly-risk", check=False)
    assert missing.returncode == 2 and "no schedule 'nightly-risk'" in missing.stderr
