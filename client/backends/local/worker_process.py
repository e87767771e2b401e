"""A local worker process seen from the supervisor: start it, watch it, stop it, read its output.

The supervisor keeps every ``WorkerProcess`` on its own thread; only the watchdog reads
one from another thread (heartbeat, CPU time, ``kill``), under the worker's ``lock``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

import psutil

from .beacon import Beacon, Reading
from .dispatch import Dispatch
from .messages import Stop
from .store import LocalStore

#: Bytes of a dead worker's last output kept with its task's record.
STDERR_TAIL_ON_DEATH = 8 * 1024


@dataclass(eq=False)
class WorkerProcess:
    """One worker process as the supervisor sees it: its socket, beacon, pidfd and the
    dispatches it holds (the first is the one running)."""

    worker_id: str
    proc: subprocess.Popen[bytes]
    conn: Connection
    beacon: Beacon
    pidfd: int | None  # readable once the process has exited; None without pidfd support
    ready: bool = False
    pid: int = 0
    log_paths: list[str] = field(default_factory=list)
    inflight: deque[Dispatch] = field(default_factory=deque)
    task_started: float = 0.0
    reported: int = 0  # tasks whose outcome it reported: the ordinal of inflight's first
    stalled: bool = False  # the watchdog killed it for want of a heartbeat
    cpu_seconds: float = -1.0  # its CPU time when the watchdog last saw it grow
    progress_at: float = 0.0  # when that was (monotonic); the watchdog's reset point
    beacon_grace: float = 0.0  # heartbeats older than this were missed while all stood still
    lock: threading.Lock = field(default_factory=threading.Lock)  # kill vs. close handles
    closed: bool = False
    tasks_given: int = 0  # counted only under max_tasks_per_child

    @classmethod
    def spawn(cls, store: LocalStore, worker_id: str, stall_seconds: float) -> WorkerProcess:
        ours, theirs = socket.socketpair()
        beacon, beacon_fd = Beacon.create(str(store.home))
        env = dict(os.environ)
        # Workers import what the client can import (a project folder, a test directory).
        paths = [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(paths)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "fanout.backends.local.worker",
                 "--fd", str(theirs.fileno()), "--home", str(store.home),
                 "--worker-id", worker_id, "--beacon-fd", str(beacon_fd),
                 "--stall-seconds", repr(stall_seconds)],
                pass_fds=(theirs.fileno(), beacon_fd),
                stdin=subprocess.DEVNULL,
                stderr=subprocess.PIPE,  # only until it is ready: start-up errors come back
                env=env,
                start_new_session=False,
            )
        finally:
            theirs.close()
            os.close(beacon_fd)
        pidfd: int | None = None
        with contextlib.suppress(AttributeError, OSError):  # Linux 5.3+; else we poll
            pidfd = os.pidfd_open(proc.pid)
        return cls(worker_id, proc, Connection(ours.detach()), beacon, pidfd)

    def kill(self) -> None:
        """SIGKILL it, by pidfd where there is one: never a recycled pid's new owner."""
        with self.lock:
            if self.closed:
                return
            with contextlib.suppress(ProcessLookupError, OSError):
                if self.pidfd is not None:
                    signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
                else:
                    self.proc.send_signal(signal.SIGKILL)

    def stopped(self) -> bool:
        """True while the process is stopped (SIGSTOP, a debugger): it runs nothing."""
        try:
            status = psutil.Process(self.proc.pid).status()
        except psutil.Error:
            return False
        return status in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP)

    def working(self, clock: float, window: float) -> bool:
        """True while its CPU time grows: busy in C code that holds the GIL, not stalled.

        The heartbeat thread cannot beat while a task holds the GIL in C (a long ``sorted``,
        big-integer arithmetic, a C extension), but such a worker uses CPU. A stopped
        process (SIGSTOP, state ``T``) or one blocked without using CPU does not.
        """
        try:
            process = psutil.Process(self.proc.pid)
            if process.status() in (psutil.STATUS_STOPPED, psutil.STATUS_TRACING_STOP):
                return False
            times = process.cpu_times()
        except psutil.Error:
            return False
        used = times.user + times.system
        if used > self.cpu_seconds:
            self.cpu_seconds, self.progress_at = used, clock
        return clock - self.progress_at <= window

    def heartbeat_age(self, clock: float) -> float:
        with self.lock:
            return 0.0 if self.closed else clock - self.beacon.read().beat

    def close_handles(self) -> Reading:
        """Last look at its beacon, then release the beacon and the pidfd."""
        with self.lock:
            reading = self.beacon.read()
            if not self.closed:
                self.closed = True
                self.beacon.close()
                if self.pidfd is not None:
                    os.close(self.pidfd)
            return reading

    def output_since(self, reading: Reading) -> tuple[str, str]:
        """What it wrote to stdout and stderr since its last task started (a bounded tail)."""
        texts = []
        for path, start in zip(self.log_paths, (reading.stdout_at, reading.stderr_at),
                               strict=False):
            try:
                with open(path, "rb") as handle:
                    size = handle.seek(0, os.SEEK_END)
                    begin = start if start <= size else 0  # rotated since: all of it
                    handle.seek(max(begin, size - STDERR_TAIL_ON_DEATH))
                    texts.append(handle.read().decode("utf-8", errors="replace"))
            except OSError:
                texts.append("")
        texts += [""] * (2 - len(texts))
        return texts[0], texts[1]

    def cleanup(self) -> None:
        for path in self.log_paths:
            with contextlib.suppress(OSError):
                os.unlink(path)

    def send_stop(self) -> None:
        """Ask it to exit after its current message; it may be gone already."""
        with contextlib.suppress(OSError):
            self.conn.send(Stop())

    def reap(self, timeout: float) -> Reading:
        """Wait up to ``timeout`` for it to exit (then kill it), release every handle, and
        return its beacon's last reading: which task it had started and finished."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            self.proc.wait()
        self.conn.close()
        return self.close_handles()


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    if code is None:
        return "vanished"
    return f"exited with status {code}"
