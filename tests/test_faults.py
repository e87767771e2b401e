"""Fault injection on real processes: killed, crashing and overrunning workers."""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import psutil
import pytest

import fanout
from fanout.protocol import SUCCEEDED

import tasks
from conftest import eventually, process_gone


def test_sigkill_random_workers_during_a_2000_task_map(home: Path) -> None:
    n = 2000
    rng = random.Random(1234)
    kills: list[psutil.Process] = []
    with fanout.Executor(max_workers=2, retries=10, progress=False) as ex:
        results = ex.map(tasks.spin, [0.002] * n)
        futures = results.futures
        stop = threading.Event()

        def killer() -> None:
            # Kill a random live worker each time another ~8% of the job has finished.
            for step in range(1, 12):
                target = step * n // 13
                deadline = time.monotonic() + 120
                while sum(f.done() for f in futures) < target:
                    if stop.is_set() or time.monotonic() > deadline:
                        return
                    stop.wait(0.005)
                pids = ex.backend.worker_pids()  # type: ignore[attr-defined]
                if pids:
                    victim = rng.choice(pids)
                    try:  # kept as a psutil.Process: by the end its pid may be another's
                        proc = psutil.Process(victim)
                        proc.send_signal(signal.SIGKILL)
                        kills.append(proc)
                    except psutil.NoSuchProcess:
                        pass

        thread = threading.Thread(target=killer)
        thread.start()
        try:
            values = list(results)
        finally:
            stop.set()
            thread.join()
        job = fanout.Job.attach(results.job_id)
        records = job.records()

    assert values == [0.002] * n
    assert len(kills) >= 8, "the killer should have found workers to kill"
    assert all(process_gone(proc) for proc in kills)
    # Exactly one stored result per task, all of them successes, whatever was retried.
    assert [r.task_index for r in records] == list(range(n))
    assert {r.status for r in records} == {SUCCEEDED}
    assert len({r.worker_id for r in records}) > 2  # replacement workers did the rest
    assert max(r.attempt for r in records) >= 2  # at least one kill hit a task in flight
    assert job.status()["succeeded"] == n


@pytest.mark.parametrize("how", ["exit", "kill", "segfault"])
def test_a_task_that_always_kills_its_worker_fails_with_worker_lost(ex: fanout.Executor,
                                                                    how: str) -> None:
    retrying = ex.options(retries=1)
    doomed = retrying.submit(tasks.die, how)
    healthy = [retrying.submit(tasks.square, i) for i in range(10)]
    with pytest.raises(fanout.WorkerLost) as info:
        doomed.result(timeout=120)
    assert "2 attempts" in str(info.value)
    if how != "exit":
        expected = "SIGSEGV" if how == "segfault" else "SIGKILL"
        assert expected in str(info.value)
    if how == "segfault":
        assert "Fatal Python error" in doomed.logs("stderr")  # faulthandler's report
    assert [f.result(timeout=60) for f in healthy] == [i * i for i in range(10)]
    record = ex.backend.record(doomed.job_id, doomed.task_index)
    assert record is not None and record.attempt == 2


def test_a_crash_costs_only_a_retry(ex: fanout.Executor, tmp_path: Path) -> None:
    future = ex.submit(tasks.die_once, str(tmp_path / "died-once"), 42)
    assert future.result(timeout=60) == 42
    record = ex.backend.record(future.job_id, future.task_index)
    assert record is not None and record.attempt == 2


def test_timeout_kills_the_worker_and_raises_task_timeout(ex: fanout.Executor) -> None:
    slow = ex.options(timeout=0.5, retries=1)
    started = time.monotonic()
    future = slow.submit(tasks.spin, 60)
    others = slow.map(tasks.square, range(5))
    with pytest.raises(fanout.TaskTimeout, match=r"timeout=0\.5"):
        future.result(timeout=60)
    assert time.monotonic() - started < 20
    assert list(others) == [i * i for i in range(5)]
    assert isinstance(fanout.TaskTimeout("x"), TimeoutError)
    record = ex.backend.record(future.job_id, future.task_index)
    assert record is not None and record.attempt == 2
    # The pool recovered: the next task runs on a fresh worker.
    assert ex.submit(tasks.square, 3).result(timeout=60) == 9


def test_workers_that_cannot_start_fail_loudly(home: Path, monkeypatch: pytest.MonkeyPatch
                                               ) -> None:
    monkeypatch.setenv("PYTHONSTARTUP", "")
    monkeypatch.setattr("sys.executable", "/bin/false")
    with fanout.Executor(max_workers=1, progress=False) as ex:
        future = ex.submit(tasks.square, 2)
        with pytest.raises(fanout.ConfigurationError, match="died while starting"):
            future.result(timeout=60)


def test_status_counts_running_tasks(ex: fanout.Executor, tmp_path: Path) -> None:
    gate, started = tmp_path / "gate", tmp_path / "started"
    results = ex.map(tasks.block_until, [str(gate)] + [str(gate)] * 3, [1, 2, 3, 4],
                     [str(started), None, None, None])
    job = fanout.Job.attach(results.job_id)
    eventually(lambda: job.status()["running"] >= 1, what="a task to show as running")
    counts = job.status()
    assert counts["succeeded"] == 0 and counts["running"] + counts["pending"] == 4
    gate.touch()
    assert list(results) == [1, 2, 3, 4]
    assert job.status() == {"pending": 0, "running": 0, "succeeded": 4, "failed": 0,
                            "cancelled": 0}
