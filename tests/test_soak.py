"""The soak test: a seeded map under every fault at once, bounded (well under 3 minutes).

A controller SIGKILLs and SIGSTOPs random workers, fills the store's disk (a real tmpfs) for
a moment, SIGKILLs the client itself, and a second client finishes the job with ``retry``.
Then every task must have exactly one record, every value must equal a fault-free run's
(same seed), and nothing may have waited past its deadline.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

import fanout
from fanout import serialization
from fanout.backends.local.store import LocalStore
from fanout.backends.local.watchdog import STARTUP_GRACE_SECONDS
from fanout.protocol import SUCCEEDED

from conftest import process_gone, tmpfs

TESTS = Path(__file__).parent
N = 800
SEED = 20261123
STALL = 1.5
PHASE_DEADLINE = 90.0  # seconds any one phase may take before the test fails

CLIENT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {tests!r})
    import fanout, test_soak
    ex = fanout.Executor(max_workers=3, retries=50, seed={seed}, progress=False)
    results = ex.map(test_soak.soak_task, range({n}))
    print(results.job_id, flush=True)
    for _ in results:
        pass
""")


def soak_task(i: int) -> tuple[int, float]:
    """About 30 ms in flight (mostly asleep: the machine is shared) and a seeded draw."""
    time.sleep(0.03)
    return i, random.random()


@pytest.fixture
def disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    with tmpfs(tmp_path / "disk", "48m") as mount:
        monkeypatch.setenv("FANOUT_HOME", str(mount / "home"))
        monkeypatch.setenv("FANOUT_STALL_SECONDS", str(STALL))
        monkeypatch.delenv("FANOUT_BACKEND", raising=False)
        yield mount


def workers_of(home: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if "fanout.backends.local.worker" in cmdline and str(home) in cmdline:
            found.append(proc)
    return found


class Controller:
    """Injects faults as the job progresses; records what it did."""

    def __init__(self, home: Path, disk: Path, rng: random.Random) -> None:
        self.home = home
        self.disk = disk
        self.rng = rng
        self.store = LocalStore(home)
        self.stopped: list[psutil.Process] = []
        self.log: list[str] = []
        self.survivors: list[int] = []

    def done(self, job_id: str) -> int:
        counts = self.store.counts(job_id)
        return counts["succeeded"] + counts["failed"] + counts["cancelled"]

    def wait_for(self, job_id: str, target: int) -> None:
        deadline = time.monotonic() + PHASE_DEADLINE
        while self.done(job_id) < target:
            assert time.monotonic() < deadline, f"stuck below {target} finished tasks"
            time.sleep(0.02)

    def signal_a_worker(self, sig: signal.Signals) -> None:
        """Send ``sig`` to a random worker; a stopped one must then be killed by the watchdog."""
        victims = [p for p in workers_of(self.home)
                   if p.pid not in {s.pid for s in self.stopped} and not process_gone(p)]
        if not victims:
            return
        victim = self.rng.choice(victims)
        with _quiet():
            victim.send_signal(sig)
            self.log.append(f"{sig.name} {victim.pid}")
            if sig == signal.SIGSTOP:
                self.stopped.append(victim)
                # A worker stopped while starting gets the watchdog's start-up grace on top.
                deadline = time.monotonic() + STARTUP_GRACE_SECONDS + 3 * STALL + 15
                while not process_gone(victim):
                    assert time.monotonic() < deadline, "the stopped worker was never killed"
                    time.sleep(0.05)

    def fill_the_disk(self, seconds: float) -> None:
        filler = self.disk / "filler"
        with open(filler, "wb") as handle:
            try:
                while True:
                    handle.write(b"\0" * (1 << 20))
                    handle.flush()
            except OSError:
                pass  # full
        self.log.append("disk full")
        time.sleep(seconds)
        filler.unlink()

    def release_stopped(self) -> None:
        """No stopped process may outlive the test (the watchdog should have killed them).
        Each is known by its ``psutil.Process``, not its pid, which by now may be another's."""
        survivors: list[int] = []
        for proc in self.stopped:
            with _quiet():
                if not process_gone(proc):
                    survivors.append(proc.pid)
                    proc.kill()
        self.survivors = survivors


class _quiet:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return exc[0] is not None and issubclass(exc[0], psutil.Error)  # type: ignore[arg-type]


def run_with_deadline(fn: Callable[[], object], what: str) -> None:
    failure: list[BaseException] = []

    def target() -> None:
        try:
            fn()
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(PHASE_DEADLINE)
    assert not thread.is_alive(), f"{what} waited past its {PHASE_DEADLINE}s deadline"
    if failure:
        raise failure[0]


def test_soak_kill_stop_fill_and_restart(disk: Path) -> None:
    home = disk / "home"
    rng = random.Random(SEED)
    started = time.monotonic()
    client = subprocess.Popen(
        [sys.executable, "-c", CLIENT.format(tests=str(TESTS), seed=SEED, n=N)],
        stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    assert client.stdout is not None
    job_id = client.stdout.readline().strip()
    assert job_id, "the client did not start its job"
    control = Controller(home, disk, rng)
    try:
        # Phase 1: the first client, under fire, until it is killed at 60%.
        plan = [signal.SIGKILL, signal.SIGSTOP, "fill", signal.SIGKILL, signal.SIGSTOP,
                signal.SIGKILL]
        for step, action in enumerate(plan, start=1):
            control.wait_for(job_id, step * N // 10)
            if action == "fill":
                control.fill_the_disk(1.0)
            else:
                assert isinstance(action, signal.Signals)
                control.signal_a_worker(action)
        control.wait_for(job_id, 6 * N // 10)
        assert client.poll() is None, "the job ended before the client could be killed"
        assert control.done(job_id) < N
        client.kill()
        client.wait(timeout=30)
        control.log.append("client killed")

        # Phase 2: a new client finishes the job while workers keep dying.
        job = fanout.Job.attach(job_id)
        retry_done = threading.Event()

        def keep_killing() -> None:
            for action in (signal.SIGKILL, signal.SIGSTOP, signal.SIGKILL):
                if retry_done.wait(0.8):
                    return
                control.signal_a_worker(action)

        killer = threading.Thread(target=keep_killing)
        killer.start()
        try:
            run_with_deadline(job.retry, "the restarted client's retry")
        finally:
            retry_done.set()
            killer.join()
    finally:
        if client.poll() is None:
            client.kill()
        control.release_stopped()

    # Every task has exactly one record, a success, with the fault-free run's value.
    records = job.records()
    assert [r.task_index for r in records] == list(range(N))
    assert {r.status for r in records} == {SUCCEEDED}
    store = LocalStore(home)
    values = [serialization.loads(store.load_value(r)) for r in records]
    with fanout.Executor(max_workers=2, seed=SEED, progress=False,
                         home=str(disk / "reference")) as ex:
        reference = list(ex.map(soak_task, range(N), timeout=PHASE_DEADLINE))
    assert values == reference
    assert job.status() == {"pending": 0, "running": 0, "succeeded": N, "failed": 0,
                            "cancelled": 0}
    assert job.info.state == "finished"
    # The controller really did all of it, and the watchdog killed every stopped worker.
    assert "disk full" in control.log and "client killed" in control.log
    assert sum(entry.startswith("SIGSTOP") for entry in control.log) >= 2, control.log
    assert sum(entry.startswith("SIGKILL") for entry in control.log) >= 3, control.log
    assert control.survivors == [], "a stopped worker was never killed"
    assert max(r.attempt for r in records) >= 2  # some fault hit a task in flight
    assert time.monotonic() - started < 180
