"""Task functions that misbehave on purpose, for tests/test_fault_findings.py and the soak."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import sys
import time

from conftest import wait_for_file
from tasks import log_execution


def kill_own_worker_at(x: int, bad: int, log_path: str) -> int:
    value = log_execution(x, log_path)
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return value


def lone_surrogate_at(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError("bad \ud800 message")
    return x


def big_result(x: int, size: int) -> bytes:
    return bytes([x % 256]) * size


def fork_a_child_then_block(pid_file: str, gate: str) -> int:
    """Leaves a child holding every descriptor the worker had, then waits to be killed."""
    child = os.fork()
    if child == 0:  # the child: outlive the worker, holding its fds, then leave quietly
        time.sleep(60)
        os._exit(0)
    with open(pid_file + ".tmp", "w") as handle:
        handle.write(f"{child} {os.getpid()}")
    os.replace(pid_file + ".tmp", pid_file)
    wait_for_file(gate)
    return child


def inherited_sockets() -> list[str]:
    """The sockets a program the task starts would inherit (exec'd, close_fds=False)."""
    import subprocess

    code = ("import os\n"
            "out = []\n"
            "for fd in os.listdir('/proc/self/fd'):\n"
            "    try: out.append(os.readlink('/proc/self/fd/' + fd))\n"
            "    except OSError: pass\n"
            "print('\\n'.join(x for x in out if x.startswith('socket:')))\n")
    text = subprocess.run([sys.executable, "-c", code], close_fds=False, check=True,
                          capture_output=True, text=True).stdout
    return text.split()


def stop_self_holding_the_lock(x: int, home: str, marker: str) -> int:
    """First attempt only: take the store's write lock, then SIGSTOP this worker."""
    if x == 0 and not os.path.exists(marker):
        open(marker, "w").close()
        conn = sqlite3.connect(os.path.join(home, "store.sqlite"), isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        os.kill(os.getpid(), signal.SIGSTOP)
    time.sleep(0.05)
    return x


def stop_self_once(x: int, marker: str) -> int:
    if x == 1 and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGSTOP)
    return x


def leave_a_mess(_: int) -> int:
    os.chdir("/")
    sys.path.insert(0, "/nonexistent-from-a-task")
    os.environ["FANOUT_TEST_LEAK"] = "leaked"
    random.seed(12345)
    return 0


def leave_a_mess_with_numpy(x: int) -> int:
    import numpy

    numpy.random.seed(99)
    numpy.random.random()
    return leave_a_mess(x)


def look_around(_: int) -> tuple[str, bool, str | None]:
    return os.getcwd(), "/nonexistent-from-a-task" in sys.path, os.environ.get(
        "FANOUT_TEST_LEAK")


class ExitsWhenUnpickled:
    """A result whose unpickling raises SystemExit in the client."""

    def __reduce__(self) -> tuple[object, ...]:
        return (sys.exit, (3,))


def exits_when_unpickled() -> ExitsWhenUnpickled:
    return ExitsWhenUnpickled()


class StrRaises(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def raise_str_raises() -> None:
    raise StrRaises("x")


def close_stdout() -> str:
    os.close(1)
    return "closed"


def print_then_exit0() -> None:
    print("said this before leaving", flush=True)
    os.write(2, b"and this on stderr\n")
    os._exit(0)


def spin(seconds: float, value: int) -> int:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return value


def hold_the_gil(n: int) -> int:
    """Busy in C for a while without releasing the GIL: the heartbeat thread cannot beat."""
    return sum(range(n))
