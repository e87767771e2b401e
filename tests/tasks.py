"""Task functions used across tests (pickled by value: this folder is not installed)."""

from __future__ import annotations

import os
import random
import sys
import time

import fanout

from conftest import wait_for_file


def square(x: int) -> int:
    return x * x


def add(a: int, b: int) -> int:
    return a + b


def identity(x: object) -> object:
    return x


def pid_and_square(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


def spin(seconds: float) -> float:
    """Busy for about ``seconds`` (not sleeping: the worker is really in flight)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass
    return seconds


def block_until(path: str, value: object = None, started: str | None = None) -> object:
    if started:
        open(started, "w").close()
    if not wait_for_file(path):
        raise TimeoutError(f"{path} never appeared")
    return value


def fail_if(x: int, bad: int) -> int:
    if x == bad:
        raise ValueError(f"task {x} is bad")
    return x


def log_execution(x: int, log_path: str, seconds: float = 0.0) -> int:
    """Append one line per execution, so a test can count how often each task ran."""
    spin(seconds)
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    return x * 10


def randomness(_: int) -> tuple[int, float, float]:
    return fanout.task_seed(), random.random(), float(fanout.task_rng().random())


def die(how: str) -> None:
    if how == "exit":
        os._exit(3)
    if how == "kill":
        os.kill(os.getpid(), 9)
    if how == "segfault":
        import ctypes

        ctypes.string_at(0)
    raise AssertionError(how)


def die_once(marker: str, value: int) -> int:
    """Dies on the first attempt (no marker yet), succeeds on the next."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(1)
    return value


def prints_undecodable_name(x: int) -> int:
    """Prints what ``os.fsdecode`` makes of a file name that is not UTF-8: a lone surrogate."""
    name = os.fsdecode(b"data-\xff.csv")
    print(f"task {x} saw {name}")
    return x


def chatty(x: int) -> int:
    print(f"stdout of task {x}")
    print(f"stderr of task {x}", file=sys.stderr)
    sys.stdout.flush()
    os.write(1, f"fd-level output of task {x}\n".encode())
    return x


def fail_unless(marker: str, x: int, bad: int) -> int:
    """Fails for ``x == bad`` until ``marker`` exists (a bug the user then fixes)."""
    if x == bad and not os.path.exists(marker):
        raise RuntimeError(f"task {x} is not fixed yet")
    return x
