"""A job as every store returns it, and the client process that drives it.

The local store (SQLite) and the AWS store (DynamoDB) both read their job rows into a
:class:`JobRecord`, so the job lifecycle (``backends/lifecycle.py``) is written once over
either.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from .protocol import JobSpec


@dataclass(frozen=True)
class Owner:
    """The client process that drives a job; a dead owner means an orphaned job."""

    host: str
    pid: int
    create_time: float | None  # None: not recorded (an AWS job records host and pid only)

    @classmethod
    def me(cls) -> Owner:
        import psutil

        pid = os.getpid()
        return cls(socket.gethostname(), pid, psutil.Process(pid).create_time())

    def alive(self) -> bool:
        import psutil

        if self.host != socket.gethostname():
            return True  # cannot tell from here; assume it is
        try:
            process = psutil.Process(self.pid)
            return self.create_time is None or abs(process.create_time() - self.create_time) < 1.0
        except psutil.Error:
            return False

    def describe(self) -> str:
        return f"pid {self.pid} on {self.host}"

    def to_json(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "create_time": self.create_time})

    @classmethod
    def from_json(cls, text: str | None) -> Owner | None:
        """Read an owner as stored: JSON (local store), or ``host/pid`` (``client_id()``,
        what the AWS store records)."""
        if not text:
            return None
        if text.startswith("{"):
            return cls(**json.loads(text))
        host, _, pid = text.rpartition("/")
        return cls(host, int(pid), None) if pid.isdigit() else None


@dataclass(frozen=True)
class JobRecord:
    """A stored job: what it runs, where it stands, who drives it, how it ended."""

    job_id: str
    spec: JobSpec
    state: str  # a JobState value
    summary: dict[str, Any] | None
    owner: Owner | None  # the client that started (or last retried) it
    execution_arn: str | None = None  # aws: the Step Functions execution running it
    waves: bool = False  # aws: started in waves (tasks that take futures), see dependencies
    #: aws: a streaming map still appends segments to it (not sealed): no execution's
    #: finalize may end it, whatever its tasks so far have recorded.
    open: bool = False

    @property
    def n_tasks(self) -> int:
        return self.spec.n_tasks  # when it was made, what it runs: also on its spec

    def __getitem__(self, name: str) -> Any:
        """``record["state"]``: the mapping form ``AwsStore.job`` returned before records
        had a type of their own, kept so code written against it keeps working."""
        if name not in {"job_id", "spec", "state", "summary", "owner", "execution_arn"}:
            raise KeyError(name)
        return getattr(self, name)
