"""A long ``map``'s input, read as its results are consumed: bounded client memory.

``for r in ex.map(f, range(10**7))`` must not hold ten million pickled calls, futures and
results. As the stdlib's ``Executor.map(buffersize=)`` (Python 3.14) does, the map submits
a window of tasks and tops it up as results are yielded, so the input is read at most one
window ahead of the caller. Unlike the stdlib, the tasks do not become independent
submissions: they are appended, segment by segment, to the map's one job, so
``results.job_id``, ``Job.attach``, ``fanout status`` and retry keep working on the whole
map. A segment costs one payload file and one store transaction, so the window is topped
up half a window at a time rather than one task at a time.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .errors import InvalidArgument, InvalidArgumentType
from .future import Future

if TYPE_CHECKING:
    from .backends import Backend
    from .collector import JobRun

#: A map over more tasks than this (and at least four chunks per worker) streams by
#: default: about 2 KB of client memory per task in flight, so ~20 MB for the window.
AUTO_WINDOW_TASKS = 10_000
#: ``buffersize="auto"``: stream a long input with the default window.
AUTO = "auto"
#: The default window of a packed map (``chunksize`` > 1 given to ``map``, see
#: :mod:`fanout.packing`), in calls: a call in flight costs its arguments and result
#: only (futures are per chunk), so the window is ten times longer, in whole chunks.
AUTO_WINDOW_PACKED_CALLS = 100_000


def window_tasks(buffersize: int | str | None, chunksize: int, workers: int) -> int | None:
    """The window in tasks (None: submit everything at once), checking ``buffersize``.

    ``buffersize`` counts chunks, as ProcessPoolExecutor's does (it submits one call per
    chunk); with the default ``chunksize=1`` that is tasks.
    """
    if buffersize is None:
        return None
    if buffersize == AUTO:
        return max(AUTO_WINDOW_TASKS, 4 * workers * chunksize)
    return _explicit(buffersize) * chunksize


def window_chunks(buffersize: int | str | None, chunksize: int, workers: int) -> int | None:
    """A packed map's window in chunks (None: submit everything at once)."""
    if buffersize is None:
        return None
    if buffersize == AUTO:
        return max(4 * workers, AUTO_WINDOW_PACKED_CALLS // chunksize)
    return _explicit(buffersize)


def _explicit(buffersize: int | str) -> int:
    if isinstance(buffersize, bool) or not isinstance(buffersize, int):
        raise InvalidArgumentType(f"buffersize must be an integer or None, got {buffersize!r}")
    if buffersize < 1:
        raise InvalidArgument(f"buffersize must be None or > 0, got {buffersize!r}")
    return buffersize


def known_length(iterables: tuple[Iterable[Any], ...]) -> int | None:
    """How many calls ``zip(*iterables)`` makes, when every input knows its length."""
    lengths = []
    for iterable in iterables:
        try:
            lengths.append(len(iterable))  # type: ignore[arg-type]
        except TypeError:
            return None
    return min(lengths) if lengths else None


class MapFeed:
    """Tops up a streaming map's job from its input; used by the map's iterator only."""

    def __init__(self, backend: Backend[Any], run: JobRun, payloads: Iterator[bytes],
                 window: int, chunksize: int) -> None:
        self.backend = backend
        self.run = run
        self._payloads = payloads
        self.window = window
        # Append whole chunks, and at least half a window: a segment has a fixed cost.
        self.step = max(chunksize, (window // 2) // chunksize * chunksize)
        self.sealed = False

    def top_up(self, pending: int) -> list[Future]:
        """New tasks' futures when ``pending`` (submitted, not yielded) left room for a step.

        Never more than ``window`` pending after it: the input is read at most one window
        ahead of what the caller has received. Seals the job when the input is exhausted.
        """
        if self.sealed or pending > self.window - self.step:
            return []
        batch = list(itertools.islice(self._payloads, self.window - pending))
        futures = self.backend.extend_job(self.run, batch) if batch else []
        if len(batch) < self.window - pending:
            self.seal()
        return futures

    def seal(self) -> None:
        """No more input for this job (exhausted, closed, or failed): let it finish."""
        if not self.sealed:
            self.sealed = True
            self._payloads = iter(())
            self.backend.seal_job(self.run)
