"""The ``fanout`` command, run as a user would: a real process against a real store."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import psutil

import fanout
from fanout.backends.local.store import LocalStore

import tasks
from conftest import default_sigint

TESTS = Path(__file__).parent


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "fanout.cli", *args], capture_output=True,
                            text=True, timeout=300, env=os.environ.copy())
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_demo_prints_estimate_time_and_worker_table(home: Path) -> None:
    out = cli("demo", "--tasks", "60", "--draws", "2000", "--workers", "2").stdout
    assert "pi ~ 3.1" in out and "wall time" in out
    assert "worker" in out and "tasks" in out and "busy seconds" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("w")]
    assert sum(int(row[1]) for row in rows if row[1].isdigit()) == 60
    again = cli("demo", "--tasks", "60", "--draws", "2000", "--workers", "1").stdout
    estimate = next(line for line in out.splitlines() if line.startswith("pi ~")).split()[2]
    assert estimate in again  # seeded: same estimate on 1 worker as on 2


def test_jobs_status_results_logs_and_plot(home: Path, tmp_path: Path) -> None:
    with fanout.Executor(max_workers=2, progress=False) as ex:
        results = ex.map(tasks.chatty, range(4))
        list(results)
    job_id = results.job_id
    assert job_id in cli("jobs").stdout
    status = cli("status", job_id).stdout
    assert "finished" in status and "succeeded 4" in status
    assert cli("results", job_id).stdout.splitlines() == ["0\t0", "1\t1", "2\t2", "3\t3"]
    logs = cli("logs", job_id, "2").stdout
    assert "stdout of task 2" in logs and "stderr of task 2" in logs
    image = tmp_path / "timeline.png"
    assert "wrote" in cli("plot", job_id, "-o", str(image)).stdout
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and image.stat().st_size > 5000


def test_retry_exits_zero_only_when_every_task_succeeded(home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "fixed"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import fanout, tasks
        with fanout.Executor(max_workers=2, retries=0, progress=False) as ex:
            results = ex.map(tasks.die_once, [{str(marker)!r}] * 3, [1, 2, 3])
            print(results.job_id)
            futures = results.futures
        print(sum(f.exception() is not None for f in futures))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True, timeout=300).stdout.split()
    job_id, failures = out[0], int(out[1])
    assert failures >= 1
    failed = cli("results", job_id, check=False)
    assert failed.returncode == 1 and "WorkerLost" in failed.stdout
    retried = cli("retry", job_id)
    assert "succeeded 3" in retried.stdout
    assert cli("results", job_id).stdout.splitlines() == ["0\t1", "1\t2", "2\t3"]


def test_cancel_an_orphaned_job(home: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(TESTS)!r})
        import fanout, tasks
        ex = fanout.Executor(max_workers=1, progress=False)
        results = ex.map(tasks.block_until, [{str(tmp_path / "never")!r}] * 3)
        print(results.job_id, flush=True)
        os._exit(0)  # the client vanishes without finishing the job
    """)
    job_id = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            check=True, timeout=300).stdout.split()[0]
    assert "orphaned" in cli("status", job_id).stdout
    out = cli("cancel", job_id).stdout
    assert "cancelled" in out and "cancelled 3" in out


def test_errors_are_messages_not_tracebacks(home: Path) -> None:
    missing = cli("status", "no-such-job", check=False)
    assert missing.returncode == 2
    assert "no job 'no-such-job'" in missing.stderr and "Traceback" not in missing.stderr
    bad_task = cli("demo", "--tasks", "3", "--draws", "10", check=True)
    job_id = bad_task.stdout.split("job ")[1].split()[0]
    out_of_range = cli("logs", job_id, "99", check=False)
    assert out_of_range.returncode != 0 and "tasks 0..2" in out_of_range.stderr


def test_doctor_checks_the_store(home: Path) -> None:
    out = cli("doctor").stdout
    assert "cloudpickle 3.1.2" in out and "integrity: ok" in out


def test_dashboard_refuses_other_interfaces_without_a_token(home: Path) -> None:
    refused = cli("dashboard", "--host", "0.0.0.0", "--port", "8799", check=False)
    assert refused.returncode == 2
    assert "without a token" in refused.stderr and "--token-file" in refused.stderr
    assert "FANOUT_DASHBOARD_TOKEN" in refused.stderr


def _orphan_with_two_results(tmp_path: Path) -> str:
    """A job whose client died after tasks 0 and 1 finished, while 2 ran; 3 never started."""
    done = tmp_path / "done"
    done.touch()
    script = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(TESTS)!r})
        import fanout, tasks
        ex = fanout.Executor(max_workers=1, progress=False)
        results = ex.map(tasks.block_until, [{str(done)!r}, {str(done)!r},
                                             {str(tmp_path / "never")!r}, {str(done)!r}],
                         ["zero", "one", "two", "three"])
        assert [next(results), next(results)] == ["zero", "one"]
        print(results.job_id, flush=True)
        import psutil
        for child in psutil.Process().children(recursive=True):
            child.kill()  # the client and its workers vanish (a killed process group)
        os._exit(0)
    """)
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True, timeout=300).stdout.split()[0]


def test_jobs_fills_ok_and_failed_for_an_orphaned_job(home: Path, tmp_path: Path) -> None:
    job_id = _orphan_with_two_results(tmp_path)
    [row] = [line.split() for line in cli("jobs").stdout.splitlines() if job_id in line]
    assert row[-3:] == ["orphaned", "2", "0"], row


def test_results_json_is_json_lines_with_every_task_and_its_state(home: Path,
                                                                  tmp_path: Path) -> None:
    import json

    with fanout.Executor(max_workers=2, progress=False) as ex:
        failing = ex.map(tasks.fail_if, [0, 1, 2], [1, 1, 1])
        list(fanout.wait(failing.futures, timeout=120))
        odd = ex.map(tasks.identity, [{"a": [1, 2.5]}, {1, 2}, float("nan")])
        list(odd)
    out = cli("results", failing.job_id, "--json", check=False)
    assert out.returncode == 1  # a task failed, as in text mode
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["task"], r["state"]) for r in rows] == [
        (0, "succeeded"), (1, "failed"), (2, "succeeded")]
    assert rows[0]["value"] == 0 and rows[2]["value"] == 2
    assert rows[1]["error"] == {"type": "builtins.ValueError", "message": "task 1 is bad"}
    rows = [json.loads(line) for line in cli("results", odd.job_id, "--json").stdout.splitlines()]
    assert rows[0]["value"] == {"a": [1, 2.5]}
    assert rows[1]["repr"] == "{1, 2}" and "value" not in rows[1]  # not JSON: no lossy value
    assert rows[2]["repr"] == "nan"  # NaN is not JSON either
    orphan = _orphan_with_two_results(tmp_path)
    rows = [json.loads(line) for line in cli("results", orphan, "--json").stdout.splitlines()]
    assert [(r["task"], r["state"], r.get("value")) for r in rows] == [
        (0, "succeeded", "zero"), (1, "succeeded", "one"), (2, "unfinished", None),
        (3, "unfinished", None)]


def test_logs_of_a_task_without_output_says_so(home: Path) -> None:
    with fanout.Executor(max_workers=1, progress=False) as ex:
        results = ex.map(tasks.square, [3])
        assert list(results) == [9]
    quiet = cli("logs", results.job_id, "0")
    assert quiet.stdout == ""
    assert "no output" in quiet.stderr and "succeeded" in quiet.stderr
    assert "no output on stdout" in cli("logs", results.job_id, "0", "--stream",
                                        "stdout").stderr


def test_schedule_times_carry_the_schedules_zone(home: Path, tmp_path: Path) -> None:
    import re

    items = tmp_path / "items.json"
    items.write_text("[1, 4, 9]")
    zurich = cli("schedule", "add", "nightly", "--function", "math:sqrt", "--items-json",
                 str(items), "--cron", "cron(0 2 * * ? *)", "--timezone", "Europe/Zurich").stdout
    assert re.search(r"next run \d{4}-\d\d-\d\d 02:00 CES?T \(Europe/Zurich\)", zurich), zurich
    utc = cli("schedule", "add", "utc", "--function", "math:sqrt", "--items-json",
              str(items), "--cron", "cron(30 6 * * ? *)").stdout
    assert re.search(r"next run \d{4}-\d\d-\d\d 06:30 UTC$", utc, re.M), utc
    listed = cli("schedule", "list").stdout
    assert "(Europe/Zurich)" in listed and re.search(r"06:30 UTC$", listed, re.M)


def test_bad_numbers_are_usage_errors_not_tracebacks(home: Path) -> None:
    for args, says in ((["demo", "--tasks", "0"], "must be 1 or more"),
                       (["dashboard", "--port", "99999"], "from 1 to 65535"),
                       (["demo", "--workers", "-1"], "must be 1 or more")):
        done = cli(*args, check=False)
        assert done.returncode == 2 and says in done.stderr, done.stderr
        assert "Traceback" not in done.stderr


def test_the_dashboard_token_never_comes_from_argv(home: Path) -> None:
    refused = cli("dashboard", "--token", "s3cret", check=False)
    assert refused.returncode == 2 and "FANOUT_DASHBOARD_TOKEN" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_dashboard_prints_its_url_once_keeps_the_token_out_and_stops_quietly(
        home: Path, tmp_path: Path) -> None:
    import signal
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token_file = tmp_path / "token"
    token_file.write_text("t0ps3cret\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fanout.cli", "dashboard", "--port", str(port),
         "--token-file", str(token_file)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(),
        preexec_fn=default_sigint)
    try:
        assert proc.stdout is not None
        banner = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/" in banner
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/jobs",
                                         headers={"Authorization": "Bearer t0ps3cret"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200
        assert "t0ps3cret" not in " ".join(psutil.Process(proc.pid).cmdline())
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    everything = banner + out + err
    assert everything.count("http://") == 1, everything
    assert "t0ps3cret" not in everything  # not in the banner, not in the access log
    assert "Traceback" not in everything and "KeyboardInterrupt" not in everything


def test_a_map_that_fails_to_start_leaves_no_job_directory(home: Path) -> None:
    def arguments() -> Iterator[int]:
        yield 1
        raise RuntimeError("the input ran dry")

    with fanout.Executor(max_workers=1, progress=False) as ex:
        try:
            ex.map(tasks.square, arguments())
        except RuntimeError as exc:
            assert "ran dry" in str(exc)
        else:
            raise AssertionError("the map should have failed")
    assert list((home / "jobs").iterdir()) == []
    assert LocalStore(home).jobs() == []
