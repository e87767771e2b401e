"""What a running task can ask of fanout: its seed, its RNG, and its checkpoint.

These are plain functions (not methods) because they are called from user code deep inside
a task, where no executor object is in reach; the worker runtime sets the current task.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cloudpickle

from . import serialization
from .seeding import derive_seed

if TYPE_CHECKING:
    import numpy

    from .protocol import TaskStore


@dataclass
class TaskContext:
    job_id: str
    task_index: int
    attempt: int
    seed: int
    store: TaskStore
    checkpointed: bool = False
    _rng: Any = field(default=None, repr=False)


_current: TaskContext | None = None


def _context(api: str) -> TaskContext:
    if _current is None:
        raise RuntimeError(
            f"fanout.{api}() can only be called inside a running fanout task. To call the "
            "task function yourself (in a debugger, with the seeds, checkpoints and logs it "
            "gets on workers), run it with fanout.Executor(backend=\"inline\")")
    return _current


class ElementContext(TaskContext):
    """The calls of a packed chunk (``fanout.packing``), one after another: one object whose
    ``task_index`` the runner moves on per call, so a call costs one attribute store.

    The seed (and ``task_rng()``'s generator) belong to the current index and are derived
    only when the call asks for them: deriving costs more than a no-op call, and most calls
    never ask. The seed is the one the same call gets as a task of its own,
    ``derive_seed(job seed, "task", index)``.
    """

    def __init__(self, job_id: str, task_index: int, attempt: int, job_seed: int,
                 store: TaskStore) -> None:
        self.job_id = job_id
        self.task_index = task_index
        self.attempt = attempt
        self.store = store
        self.checkpointed = False
        self._job_seed = job_seed
        self._seed: tuple[int, int] | None = None  # (index, its seed)
        self._rng_of: tuple[int, Any] | None = None  # (index, its generator)

    @property
    def seed(self) -> int:
        cached = self._seed
        if cached is None or cached[0] != self.task_index:
            cached = (self.task_index, derive_seed(self._job_seed, "task", self.task_index))
            self._seed = cached
        return cached[1]

    @seed.setter
    def seed(self, value: int) -> None:
        self._seed = (self.task_index, value)

    @property
    def _rng(self) -> Any:
        cached = self._rng_of
        return cached[1] if cached is not None and cached[0] == self.task_index else None

    @_rng.setter
    def _rng(self, value: Any) -> None:
        self._rng_of = None if value is None else (self.task_index, value)


def swap(ctx: TaskContext | None) -> TaskContext | None:
    """Make ``ctx`` the current task without seeding anything; return the previous one.

    The packed runner's per-call step: a packed chunk seeds the global RNGs once, as its
    whole (see ``fanout.packing``), and each call only changes what ``task_seed()`` sees.
    """
    global _current
    previous, _current = _current, ctx
    return previous


@contextmanager
def running(ctx: TaskContext) -> Iterator[TaskContext]:
    """Make ``ctx`` the current task and seed the global RNGs from its seed."""
    global _current
    previous = _current
    _current = ctx
    random.seed(ctx.seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:  # legacy np.random.* users get a deterministic stream too
        numpy.random.seed(ctx.seed % 2**32)
    try:
        yield ctx
    finally:
        _current = previous


def current_task() -> TaskContext | None:
    return _current


def task_seed() -> int:
    """The deterministic seed of the running task, derived from (job seed, task index)."""
    return _context("task_seed").seed


def task_rng() -> numpy.random.Generator:
    """The running task's ``numpy.random.Generator``, seeded from :func:`task_seed`.

    Repeated calls in one task return the same generator, so draws continue the stream.
    """
    ctx = _context("task_rng")
    if ctx._rng is None:
        try:
            import numpy
        except ImportError as exc:  # pragma: no cover - numpy is an optional extra
            raise RuntimeError(
                "fanout.task_rng() needs numpy: pip install 'fanout[numpy]', "
                "or use fanout.task_seed() with the random module"
            ) from exc
        ctx._rng = numpy.random.default_rng(ctx.seed)
    rng: numpy.random.Generator = ctx._rng
    return rng


def checkpoint(obj: Any) -> None:
    """Save progress of the running task; a retry of this task gets it from :func:`restore`."""
    ctx = _context("checkpoint")
    data = cloudpickle.dumps(obj, protocol=serialization.PROTOCOL)
    ctx.store.put_checkpoint(ctx.job_id, ctx.task_index, bytes(data))
    ctx.checkpointed = True


def restore() -> Any:
    """The last object this task passed to :func:`checkpoint` on any attempt, or None."""
    ctx = _context("restore")
    data = ctx.store.get_checkpoint(ctx.job_id, ctx.task_index)
    return None if data is None else serialization.loads(data)
