"""What the supervisor and its workers say to each other, one small frozen class a message.

As in CPython's ``concurrent.futures.process`` (``_CallItem``, ``_ResultItem``): each
message names its fields, so neither side reads a tuple by position and a new field cannot
shift the others. Worker messages travel pickled over the worker's socket; the inbox
messages stay in the client process (another thread posts them to the supervisor).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ...protocol import Chunk, ResultRecord

if TYPE_CHECKING:  # only the client process builds these; workers need not import them
    from ...collector import JobRun
    from .dispatch import Dispatch


# -- supervisor -> worker --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunChunks:
    """Run these chunks in order; report each record once it is committed."""

    chunks: tuple[Chunk, ...]


@dataclass(frozen=True, slots=True)
class RunReduce:
    """Run the reduce step of ``job_id`` as ``attempt``."""

    job_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class Stop:
    """Exit after the message in hand (the pool shuts down or replaces the worker)."""


ToWorker = RunChunks | RunReduce | Stop


# -- worker -> supervisor --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ready:
    """The worker is up: its pid, and the files its captured stdout and stderr go to."""

    worker_id: str
    pid: int
    log_paths: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Stored:
    """These records are committed, in the order their tasks ran."""

    records: tuple[ResultRecord, ...]


@dataclass(frozen=True, slots=True)
class Unstored:
    """These tasks ran, but the store refused their records (``reason`` says why)."""

    tasks: tuple[tuple[str, int], ...]  # (job_id, task_index), in the order they ran
    reason: str


FromWorker = Ready | Stored | Unstored


# -- client threads -> supervisor (its inbox) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class StartRun:
    """Follow ``run`` and queue its dispatches."""

    run: JobRun
    dispatches: tuple[Dispatch, ...]


@dataclass(frozen=True, slots=True)
class SealRun:
    """A streaming map appends no more tasks to ``run``: it may finish once they settle."""

    run: JobRun


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Cancel the job: stop its workers, record its unfinished tasks as cancelled."""

    job_id: str


@dataclass(frozen=True, slots=True)
class Shutdown:
    """Finish what is queued and stop; with ``cancel_futures``, cancel what has not started."""

    cancel_futures: bool


ToSupervisor = StartRun | SealRun | CancelJob | Shutdown
