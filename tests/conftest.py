"""Shared fixtures: every test gets its own store directory and never touches ~/.fanout."""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psutil
import pytest

import fanout

if TYPE_CHECKING:
    from fanout.testing import EmulatedAws


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    store = tmp_path / "fanout-home"
    monkeypatch.setenv("FANOUT_HOME", str(store))
    monkeypatch.delenv("FANOUT_BACKEND", raising=False)
    return store


@pytest.fixture
def ex(home: Path) -> Iterator[fanout.Executor]:
    executor = fanout.Executor(max_workers=2, progress=False)
    try:
        yield executor
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def unique(name: str) -> str:
    """``name`` made unique per run: an emulation lives for its module, and a repeated test
    (``--count``) must not meet what its earlier run left there."""
    return f"{name}-{uuid.uuid4().hex[:8]}"


def process_gone(process: int | psutil.Process) -> bool:
    """Whether a process has exited (or is a zombie waiting for its parent). Checking
    ``pid_exists`` and then reading the status races with the exit in between: read once.

    Pass the ``psutil.Process`` when the answer is wanted long after the pid was learnt:
    pids wrap (at 32,768 here, within minutes when the machine is busy), and a bare pid may
    by then name another process; a ``psutil.Process`` knows its own by its start time."""
    try:
        proc = process if isinstance(process, psutil.Process) else psutil.Process(process)
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def eventually(condition: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    """Wait for a condition observed from outside (store, files, processes), with a deadline."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.01)


def default_sigint() -> None:
    """``preexec_fn`` for a child the test will Ctrl-C: SIGINT at its default, so Python
    installs its KeyboardInterrupt handler. A shell's ``&`` starts the suite with SIGINT
    ignored, children inherit that, and the child would never see the test's Ctrl-C."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def wait_for_file(path: str, timeout: float = 60.0) -> bool:
    """Inside a task: block until ``path`` exists (an event from the test), bounded."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


@pytest.fixture(scope="module")
def offline_aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedAws]:
    """One offline AWS (``fanout.testing``) per test module; FANOUT_HOME restored after."""
    from fanout.testing import emulated_aws

    old = os.environ.get("FANOUT_HOME")
    os.environ["FANOUT_HOME"] = str(tmp_path_factory.mktemp("aws-home"))
    try:
        with emulated_aws() as emulation:
            yield emulation
    finally:
        if old is None:
            os.environ.pop("FANOUT_HOME", None)
        else:
            os.environ["FANOUT_HOME"] = old

@contextlib.contextmanager
def tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A real, small filesystem at ``mount`` that can fill up (root only: skips otherwise)."""
    mount.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)



#: Under ``make mutation`` a mutant's tests stop at the first failure (mutmut runs
#: ``pytest -x``) and arrive in set order; running the cheap modules first makes a caught
#: mutant cost seconds, not the DynamoDB model test's half minute. Order only: every test
#: that reaches the mutant still runs when nothing fails.
_MUTATION_ORDER = ("test_seeds_pinned.py", "test_record_path.py", "test_sinks.py",
                   "test_guarantees.py", "test_store_model.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not os.environ.get("MUTANT_UNDER_TEST"):
        return

    def rank(item: pytest.Item) -> tuple[int, bool]:
        name = item.path.name
        position = _MUTATION_ORDER.index(name) if name in _MUTATION_ORDER else len(_MUTATION_ORDER)
        return position, item.name.endswith("[dynamodb]")

    items.sort(key=rank)
