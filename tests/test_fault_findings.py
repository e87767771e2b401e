"""Issue 8's findings, one test each: every fault is real (a killed, stopped or forked worker,
a full or read-only disk, a lock held by a frozen process), and every future settles."""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from concurrent.futures import wait
from pathlib import Path

import fault_tasks
import psutil
import pytest

import fanout
from fanout.backends.local.store import LocalStore
from fanout.protocol import CANCELLED, FAILED, SUCCEEDED

import tasks
from conftest import eventually, process_gone, tmpfs

TESTS = Path(__file__).parent
FANOUT = [sys.executable, "-m", "fanout.cli"]


def executions(log: Path) -> collections.Counter[int]:
    return collections.Counter(int(line) for line in log.read_text().split())


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs: a disk that really fills up (needs root, as in CI's container)."""
    with tmpfs(tmp_path / "small-disk", "3m") as mount:
        yield mount


# -- 1. a failed write in the worker's commit thread ---------------------------------------

def test_1_a_lone_surrogate_in_a_task_error_fails_only_that_task(ex: fanout.Executor) -> None:
    futures = ex.map(fault_tasks.lone_surrogate_at, range(20), [5] * 20).futures
    _, not_done = wait(futures, timeout=60)
    assert not not_done, "every future settles"
    for i, future in enumerate(futures):
        if i == 5:
            with pytest.raises(ValueError, match="bad"):
                future.result()
        else:
            assert future.result() == i
    record = ex.backend.record(futures[5].job_id, 5)
    assert record is not None and "\\ud800" in (record.exc_message or "")


def test_1_a_full_disk_fails_the_unstorable_tasks_with_store_error(
        small_disk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = small_disk / "home"
    monkeypatch.setenv("FANOUT_HOME", str(home))
    started = time.monotonic()
    with fanout.Executor(max_workers=2, retries=0, progress=False) as ex:
        # 24 results of 200 KiB cannot all fit in 3 MiB: some must fail to be stored.
        futures = ex.map(fault_tasks.big_result, range(24), [200 * 1024] * 24).futures
        _, not_done = wait(futures, timeout=90)
    assert not not_done, "no future may wait for a record that can never be stored"
    assert time.monotonic() - started < 90
    errors = [f.exception() for f in futures if f.exception() is not None]
    values = [f.result() for f in futures if f.exception() is None]
    assert errors, "the disk should have filled up"
    for error in errors:
        assert isinstance(error, fanout.StoreError), repr(error)
        assert str(home) in str(error) and ("full" in str(error) or "space" in str(error))
    assert all(v == bytes([v[0]]) * (200 * 1024) for v in values)
    # What was stored stays intact and readable once there is room again.
    for path in (home / "jobs").rglob("values/*"):
        path.unlink()
    store = LocalStore(home)
    assert store.integrity_check() == "ok"


def test_1_and_4_a_worker_frozen_while_holding_the_store_lock_is_killed(
        home: Path, tmp_path: Path) -> None:
    started = time.monotonic()
    with fanout.Executor(max_workers=2, retries=1, progress=False, stall_seconds=1.5) as ex:
        results = ex.map(fault_tasks.stop_self_holding_the_lock, range(12),
                         [str(home)] * 12, [str(tmp_path / "stopped-once")] * 12)
        assert list(results) == list(range(12))
        job = fanout.Job.attach(results.job_id)
    # The lock holder was killed by the stall watchdog, long before the others' 60 s lock
    # wait ran out (which would have been "database is locked" errors instead).
    assert time.monotonic() - started < LocalStore.busy_timeout
    records = job.records()
    assert [r.status for r in records] == [SUCCEEDED] * 12
    assert records[0].attempt == 2


# -- 2. the right task is charged ----------------------------------------------------------

@pytest.mark.parametrize("retries", [0, 2])
def test_2_a_worker_death_is_charged_to_its_own_task_only(home: Path, tmp_path: Path,
                                                           retries: int) -> None:
    n, bad = 1000, 250
    log = tmp_path / "executions.log"
    with fanout.Executor(max_workers=1, retries=retries, progress=False) as ex:
        futures = ex.map(fault_tasks.kill_own_worker_at, range(n), [bad] * n,
                         [str(log)] * n).futures
        _, not_done = wait(futures, timeout=120)
    assert not not_done
    failed = [f.task_index for f in futures if f.exception() is not None]
    assert failed == [bad], "only the task that killed its worker fails"
    with pytest.raises(fanout.WorkerLost, match="SIGKILL"):
        futures[bad].result()
    assert [f.result() for f in futures if f.task_index != bad] == [
        i * 10 for i in range(n) if i != bad]
    # retries is a hard bound: the poison task ran exactly retries + 1 times.
    assert executions(log)[bad] == retries + 1


# -- 3. death is seen through the process, not the socket ----------------------------------

def test_3_a_killed_worker_is_noticed_although_its_child_holds_the_socket(
        home: Path, tmp_path: Path) -> None:
    pid_file, gate = tmp_path / "pids", tmp_path / "gate"
    child = 0
    with fanout.Executor(max_workers=1, retries=0, progress=False) as ex:
        future = ex.submit(fault_tasks.fork_a_child_then_block, str(pid_file), str(gate))
        eventually(pid_file.exists, what="the task to fork its child")
        child, worker = map(int, pid_file.read_text().split())
        try:
            os.kill(worker, signal.SIGKILL)
            killed = time.monotonic()
            with pytest.raises(fanout.WorkerLost):
                future.result(timeout=30)
            # The child lives on (60 s) with the socket; the death was seen anyway.
            assert psutil.pid_exists(child)
            assert time.monotonic() - killed < 30
            assert ex.submit(tasks.square, 4).result(timeout=60) == 16
        finally:
            gate.touch()
            os.kill(child, signal.SIGKILL)


def test_3_programs_a_task_starts_do_not_inherit_the_worker_socket(
        ex: fanout.Executor) -> None:
    assert ex.submit(fault_tasks.inherited_sockets).result(timeout=60) == []


# -- 4. a stopped worker is noticed --------------------------------------------------------

def test_4_a_sigstopped_worker_is_killed_and_its_task_retried(home: Path,
                                                             tmp_path: Path) -> None:
    marker = tmp_path / "stopped"
    with fanout.Executor(max_workers=2, retries=1, progress=False, stall_seconds=1.5) as ex:
        results = ex.map(fault_tasks.stop_self_once, range(6), [str(marker)] * 6)
        assert list(results) == list(range(6))
        record = ex.backend.record(results.job_id, 1)
    assert record is not None and record.attempt == 2


def test_4_a_stall_that_exhausts_retries_says_what_happened(home: Path,
                                                           tmp_path: Path) -> None:
    with fanout.Executor(max_workers=1, retries=0, progress=False, stall_seconds=1.0) as ex:
        future = ex.submit(tasks.block_until, str(tmp_path / "never"), 1,
                           str(tmp_path / "started"))
        eventually((tmp_path / "started").exists, what="the task to start")
        (pid,) = ex.backend.worker_pids()  # type: ignore[attr-defined]
        os.kill(pid, signal.SIGSTOP)
        with pytest.raises(fanout.WorkerLost, match="no heartbeat for 1s"):
            future.result(timeout=30)
        assert process_gone(pid)


def test_4_a_task_busy_in_c_holding_the_gil_is_not_a_stall(home: Path) -> None:
    # sum(range(n)) runs in C without releasing the GIL for about 2 s, four intervals: no
    # heartbeat, but CPU time grows, so the worker is working, not stalled.
    n = 2 * 10**8
    with fanout.Executor(max_workers=1, retries=0, progress=False, stall_seconds=0.5) as ex:
        future = ex.submit(fault_tasks.hold_the_gil, n)
        assert future.result(timeout=120) == n * (n - 1) // 2
        record = ex.backend.record(future.job_id, future.task_index)
    assert record is not None and record.attempt == 1


def test_4_a_whole_process_group_stopped_and_resumed_blames_no_task(tmp_path: Path) -> None:
    # Ctrl-Z then fg: the client, its watchdog and its workers all stand still together.
    started = tmp_path / "started"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import fanout, tasks
        with fanout.Executor(max_workers=2, retries=0, progress=False,
                             stall_seconds=1.0) as ex:
            futures = [ex.submit(tasks.block_until, {str(tmp_path / "gate")!r}, i,
                                 {str(started)!r}) for i in range(2)]
            print([f.result(timeout=120) for f in futures], flush=True)
    """)
    env = {**os.environ, "FANOUT_HOME": str(tmp_path / "home")}
    client = subprocess.Popen([sys.executable, "-c", script], env=env, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True)
    try:
        eventually(started.exists, what="a task to start")
        os.killpg(client.pid, signal.SIGSTOP)
        stopped_until = time.monotonic() + 3.0  # three stall intervals
        while time.monotonic() < stopped_until:  # the stop itself is what is tested
            time.sleep(0.1)
        (tmp_path / "gate").touch()
        os.killpg(client.pid, signal.SIGCONT)
        out, err = client.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(client.pid, signal.SIGKILL)
    assert client.returncode == 0, err
    assert out.strip() == "[0, 1]"


def test_4_the_stall_interval_is_validated(home: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(fanout.ConfigurationError, match="stall_seconds"):
        fanout.Executor(stall_seconds=0)
    monkeypatch.setenv("FANOUT_STALL_SECONDS", "soon")
    with pytest.raises(fanout.ConfigurationError, match="FANOUT_STALL_SECONDS"):
        fanout.Executor()


# -- 5. the store refuses, never guesses ---------------------------------------------------

def test_5_a_zero_byte_store_next_to_job_data_is_refused(home: Path) -> None:
    with fanout.Executor(max_workers=1, progress=False) as ex:
        assert list(ex.map(tasks.square, range(3))) == [0, 1, 4]
    db = home / "store.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    db.write_bytes(b"")
    with pytest.raises(fanout.StoreError, match=str(db)) as info:
        fanout.Executor(max_workers=1, progress=False)
    assert "zero bytes" in str(info.value)
    cli = subprocess.run([*FANOUT, "jobs"], capture_output=True, text=True, timeout=60)
    assert cli.returncode != 0 and str(db) in cli.stderr and "Traceback" not in cli.stderr
    assert db.stat().st_size == 0, "the file is left as it was"


def test_5_a_read_only_store_can_be_read(home: Path, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    with fanout.Executor(max_workers=1, progress=False) as ex:
        results = ex.map(tasks.square, range(3))
        assert list(results) == [0, 1, 4]
    # A read-only view of the same store: a bind mount remounted read-only (root needed).
    view = tmp_path / "read-only-view"
    view.mkdir()
    bound = subprocess.run(["mount", "--bind", str(home), str(view)], capture_output=True)
    if bound.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {bound.stderr.decode().strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        monkeypatch.setenv("FANOUT_HOME", str(view))
        expected = {"jobs": results.job_id, "status": "succeeded 3", "results": "2\t4"}
        for command in (["jobs"], ["status", results.job_id], ["results", results.job_id]):
            done = subprocess.run([*FANOUT, *command], capture_output=True, text=True,
                                  timeout=60)
            assert done.returncode == 0, done.stderr
            assert expected[command[0]] in done.stdout
        with (pytest.raises(fanout.StoreError, match="read-only"),
              fanout.Executor(max_workers=1, progress=False) as ex):
            ex.submit(tasks.square, 2).result(timeout=60)
    finally:
        subprocess.run(["umount", "-l", str(view)], check=False)


# -- 6. tasks do not leak into each other --------------------------------------------------

def test_6_a_task_cannot_change_what_the_next_one_sees(home: Path) -> None:
    with fanout.Executor(max_workers=1, progress=False, chunksize=2) as ex:
        before = ex.submit(fault_tasks.look_around, 0).result(timeout=60)
        ex.submit(fault_tasks.leave_a_mess, 0).result(timeout=60)
        after = ex.submit(fault_tasks.look_around, 0).result(timeout=60)
        # Within one chunk as well as across messages.
        messy_then_look = list(ex.map(fault_tasks.leave_a_mess, [0]))
        assert messy_then_look == [0]
        again = ex.submit(fault_tasks.look_around, 0).result(timeout=60)
    assert before == after == again
    assert before[1] is False and before[2] is None


def test_6_the_shared_runtime_restores_its_process_on_every_backend(
        ex: fanout.Executor, tmp_path: Path) -> None:
    """The runtime a Lambda or Batch worker runs in-process leaves that process as it was."""
    import random

    import numpy

    from fanout.runtime import WorkerRuntime

    results = ex.map(fault_tasks.leave_a_mess_with_numpy, range(2))
    assert list(results) == [0, 0]
    store = ex.backend.store
    chunk = store.manifest(results.job_id)[0]
    random.seed(7)
    numpy.random.seed(7)
    expected = (os.getcwd(), list(sys.path), dict(os.environ), random.random(),
                numpy.random.random())
    random.seed(7)
    numpy.random.seed(7)
    records: list[object] = []
    WorkerRuntime(store, "in-process").run_chunk(
        type(chunk)(chunk.job_id, chunk.index, "lambda", 2, chunk.tasks), records.append)
    assert records, "the chunk ran here"
    after = (os.getcwd(), list(sys.path), dict(os.environ), random.random(),
             numpy.random.random())
    assert after == expected


# -- 7. errors that used to come back as WorkerLost, or hang ----------------------------

def test_7_system_exit_while_unpickling_a_result_fails_only_that_future(
        ex: fanout.Executor) -> None:
    bad = ex.submit(fault_tasks.exits_when_unpickled)
    with pytest.raises(fanout.SerializationError, match="SystemExit"):
        bad.result(timeout=60)
    assert ex.submit(tasks.square, 5).result(timeout=60) == 25


def test_7_a_task_error_whose_str_raises_is_the_task_error(ex: fanout.Executor) -> None:
    future = ex.submit(fault_tasks.raise_str_raises)
    exc = future.exception(timeout=60)
    assert type(exc).__name__ == "StrRaises", repr(exc)


def test_7_a_task_that_closes_stdout_returns_and_the_next_task_is_captured(
        home: Path) -> None:
    with fanout.Executor(max_workers=1, progress=False) as ex:
        assert ex.submit(fault_tasks.close_stdout).result(timeout=60) == "closed"
        after = ex.submit(tasks.chatty, 7)
        assert after.result(timeout=60) == 7
        assert "fd-level output of task 7" in after.logs("stdout")


def test_7_os_exit_0_in_a_task_is_a_precise_error_and_keeps_its_output(
        home: Path) -> None:
    with fanout.Executor(max_workers=1, retries=0, progress=False) as ex:
        future = ex.submit(fault_tasks.print_then_exit0)
        with pytest.raises(fanout.WorkerLost, match=r"exited with status 0.*os\._exit"):
            future.result(timeout=60)
        assert "said this before leaving" in future.logs("stdout")
        assert "and this on stderr" in future.logs("stderr")
        assert ex.submit(tasks.square, 3).result(timeout=60) == 9


# -- 8. a script that catches a map's exception and exits normally -------------------------

SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {tests!r})
    import fanout, tasks

    def slow_fail(x):
        time.sleep(0.2)
        return tasks.fail_if(x, 2)

    ex = fanout.Executor(max_workers=2, progress=False)
    results = ex.map(slow_fail, range(20))
    print(results.job_id, flush=True)
    try:
        list(results)
    except ValueError:
        pass
""")


def test_8_leaving_normally_closes_the_job_and_results_lists_every_task(home: Path) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=str(TESTS))],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    job_id = done.stdout.split()[0]
    job = fanout.Job.attach(job_id)
    assert job.info.state in ("finished", "cancelled") and not job.info.orphaned
    records = job.records()
    assert [r.task_index for r in records] == list(range(20))
    statuses = collections.Counter(r.status for r in records)
    assert statuses[FAILED] == 1 and statuses[CANCELLED] > 0
    listing = subprocess.run([*FANOUT, "results", job_id], capture_output=True, text=True,
                             timeout=60)
    lines = listing.stdout.splitlines()
    assert [int(line.split("\t")[0]) for line in lines] == list(range(20))
    assert sum("<cancelled>" in line for line in lines) == statuses[CANCELLED]


def test_4_a_stopped_idle_worker_is_replaced(home: Path) -> None:
    """A worker stopped while it has no task is killed too, and the pool goes on: it would
    otherwise hold the next task it is given for a whole stall interval."""
    with fanout.Executor(max_workers=2, progress=False, stall_seconds=1.0) as ex:
        assert list(ex.map(tasks.square, range(4))) == [0, 1, 4, 9]
        victim = ex.backend.worker_pids()[0]  # type: ignore[attr-defined]
        os.kill(victim, signal.SIGSTOP)  # idle: its map is done
        eventually(lambda: process_gone(victim), timeout=30,
                   what="the stopped idle worker to be killed")
        assert list(ex.map(tasks.square, range(6))) == [0, 1, 4, 9, 16, 25]
        assert victim not in ex.backend.worker_pids()  # type: ignore[attr-defined]


CANCELLED_QUEUE_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import fanout, tasks

    ex = fanout.Executor(max_workers=1, progress=False)
    running = ex.submit(tasks.block_until, {gate!r}, 1)
    print([f.cancel() for f in [ex.submit(tasks.square, i) for i in range(3)]], flush=True)
    open({gate!r}, "w").close()
    ex.shutdown(wait=True)
    print(running.result(), flush=True)
""")


def test_shutdown_returns_when_what_was_queued_had_been_cancelled(home: Path,
                                                                  tmp_path: Path) -> None:
    """Found by the flake campaign (test_8 hung 1 run in 20, its script 3 in 300): the
    supervisor checked whether it could stop, then dropped the queued chunks whose tasks were
    cancelled meanwhile, and waited with no deadline for a wake-up that never came."""
    script = CANCELLED_QUEUE_SCRIPT.format(tests=str(TESTS), gate=str(tmp_path / "gate"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["[True, True, True]", "1"]
