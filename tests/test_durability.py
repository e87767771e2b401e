"""The client process can die: nothing finished is lost, and a retry finishes the job."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

import fanout
from fanout.protocol import SUCCEEDED

from conftest import eventually, process_gone

TESTS = Path(__file__).parent

CLIENT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import fanout, tasks
    ex = fanout.Executor(max_workers=2, progress=False, chunksize={chunksize})
    results = ex.map(tasks.log_execution, range({n}), [{log!r}] * {n}, [{seconds}] * {n})
    print(results.job_id, flush=True)
    for value in results:
        pass
    print("finished", flush=True)
""")


def start_client(tmp_path: Path, n: int, seconds: float, chunksize: int = 1
                 ) -> tuple[subprocess.Popen[str], str, Path]:
    log = tmp_path / "executions.log"
    script = CLIENT.format(tests=str(TESTS), n=n, log=str(log), seconds=seconds,
                           chunksize=chunksize)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                            env=os.environ.copy())
    assert proc.stdout is not None
    job_id = proc.stdout.readline().strip()
    assert job_id, "the client script did not start a job"
    return proc, job_id, log


def executions(log: Path) -> collections.Counter[int]:
    if not log.exists():
        return collections.Counter()
    return collections.Counter(int(line) for line in log.read_text().split())


def test_client_killed_mid_job_then_attach_and_retry(home: Path, tmp_path: Path) -> None:
    n = 60
    proc, job_id, log = start_client(tmp_path, n, seconds=0.05, chunksize=3)
    job = fanout.Job.attach(job_id)
    eventually(lambda: job.status()["succeeded"] >= 12, what="a fifth of the tasks")
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) == 2
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # Orphaned workers finish the task in hand (and store it), then notice and exit.
    psutil.wait_procs(workers, timeout=30)
    assert all(process_gone(w) for w in workers)

    attached = fanout.Job.attach(job_id)
    assert attached.info.orphaned
    finished_before = {r.task_index for r in attached.records() if r.status == SUCCEEDED}
    assert 12 <= len(finished_before) < n
    # Waiting on an orphaned job ends with a clear error instead of hanging.
    with pytest.raises(fanout.WorkerLost, match="fanout retry"):
        attached.results(timeout=60)
    futures = attached.futures()
    assert all(futures[i].result(timeout=0) == i * 10 for i in finished_before)

    counts = attached.retry()
    assert counts["succeeded"] == n and counts["failed"] == 0
    assert attached.results(timeout=60) == [i * 10 for i in range(n)]
    ran = executions(log)
    assert set(ran) == set(range(n))
    assert all(ran[i] == 1 for i in finished_before), "a finished task was recomputed"
    assert sum(ran.values()) == n, f"tasks ran more than once: {ran.most_common(3)}"
    assert fanout.Job.attach(job_id).info.state == "finished"


def test_attach_from_another_process_follows_a_running_job(home: Path, tmp_path: Path
                                                           ) -> None:
    n = 30
    proc, job_id, log = start_client(tmp_path, n, seconds=0.02)
    job = fanout.Job.attach(job_id)
    assert not job.info.orphaned
    assert job.results(timeout=120) == [i * 10 for i in range(n)]
    assert proc.stdout is not None and proc.stdout.readline().strip() == "finished"
    assert proc.wait(timeout=60) == 0
    assert sum(executions(log).values()) == n
    # Its client has exited, so a retry runs: every task succeeded, so it re-runs none.
    counts = fanout.Job.attach(job_id).retry()
    assert counts["succeeded"] == n and counts["failed"] == 0
    assert sum(executions(log).values()) == n, "a retry re-ran finished tasks"


def test_retry_of_a_running_job_owned_elsewhere_is_refused(home: Path, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import fanout, tasks
        with fanout.Executor(max_workers=1, progress=False) as ex:
            results = ex.map(tasks.block_until, [{str(gate)!r}])
            print(results.job_id, flush=True)
            print(list(results), flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    job_id = proc.stdout.readline().strip()
    with pytest.raises(RuntimeError, match="still running"):
        fanout.Job.attach(job_id).retry()
    gate.touch()
    assert proc.wait(timeout=60) == 0


def test_cancel_from_another_process(home: Path, tmp_path: Path) -> None:
    gate = tmp_path / "never"
    script = textwrap.dedent(f"""
        import sys, concurrent.futures
        sys.path.insert(0, {str(TESTS)!r})
        import fanout, tasks
        with fanout.Executor(max_workers=2, progress=False) as ex:
            results = ex.map(tasks.block_until, [{str(gate)!r}] * 6)
            print(results.job_id, flush=True)
            try:
                list(results)
            except concurrent.futures.CancelledError:
                print("cancelled", flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    job_id = proc.stdout.readline().strip()
    job = fanout.Job.attach(job_id)
    eventually(lambda: job.status()["running"] >= 1, what="a running task")
    job.cancel()
    assert proc.stdout.readline().strip() == "cancelled"
    assert proc.wait(timeout=60) == 0
    counts = job.status()
    assert counts["cancelled"] == 6 and job.info.state == "cancelled"
