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
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
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
