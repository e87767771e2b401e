"""Capturing a task's stdout and stderr, keeping only a bounded tail.

Two strategies, one interface. A worker process that owns its file descriptors redirects
fds 1 and 2 into files once and, per task, reads back only what that task appended: this
also catches output from C extensions and child processes, and costs two ``fstat`` calls
per task. Where the runtime shares its process (tests, in-process emulation), only Python's
``sys.stdout``/``sys.stderr`` can be redirected.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, redirect_stderr, redirect_stdout
from typing import Protocol

from .protocol import LOG_TAIL_BYTES


def text_tail(text: str, limit: int) -> str:
    """The last ``limit`` bytes of text a task wrote through ``sys.stdout``/``sys.stderr``.

    Such text may hold lone surrogates (``os.fsdecode`` of an undecodable file name): they
    are kept as ``\\udcff`` escapes, because an encoding error here, in the capture's
    ``finally``, would fail the whole chunk rather than show the task's output.
    """
    return _decode_tail(text.encode("utf-8", "backslashreplace"), limit)


def _decode_tail(data: bytes, limit: int) -> str:
    if len(data) > limit:
        data = b"[... earlier output truncated ...]\n" + data[-limit:]
    return data.decode("utf-8", errors="replace")


class Captured:
    stdout: str = ""
    stderr: str = ""


class Capture(Protocol):
    def task(self) -> AbstractContextManager[Captured]: ...


class FdCapture:
    """Redirects this process's fds 1 and 2 to files; for dedicated worker processes."""

    ROTATE_BYTES = 32 * 1024 * 1024

    def __init__(self, directory: str | None = None, limit: int = LOG_TAIL_BYTES) -> None:
        self.limit = limit
        self.files = []
        for fd, name in ((1, "stdout"), (2, "stderr")):
            handle = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the worker
                prefix=f"fanout-{os.getpid()}-{name}-", dir=directory, delete=False
            )
            sys.stdout.flush() if fd == 1 else sys.stderr.flush()
            os.dup2(handle.fileno(), fd)
            self.files.append(handle)
        self.paths = [f.name for f in self.files]
        self._ours = [self._identity(f.fileno()) for f in self.files]

    @staticmethod
    def _identity(fd: int) -> tuple[int, int]:
        st = os.fstat(fd)
        return st.st_dev, st.st_ino

    def close(self) -> None:
        for path in self.paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def offsets(self) -> tuple[int, int]:
        """How much stdout and stderr hold now: where the next task's output will start."""
        _flush()
        out, err = (os.fstat(f.fileno()).st_size for f in self.files)
        return out, err

    def _restore(self) -> list[int | None]:
        """Point fds 1 and 2 at the capture files again if a task closed or replaced them.

        Reads go through the files' own descriptors, so ``os.close(1)`` in a task costs
        that task nothing and the next one starts with its output captured as usual.
        Returns each file's size where the check already learnt it (fd 1 or 2 is still a
        duplicate of it, so one ``fstat`` told both), else None.
        """
        sizes: list[int | None] = []
        for fd, handle, ours in zip((1, 2), self.files, self._ours, strict=True):
            try:
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) == ours:
                    sizes.append(st.st_size)
                    continue
            except OSError:
                pass
            os.dup2(handle.fileno(), fd)
            sizes.append(None)
        return sizes

    @contextmanager
    def task(self) -> Iterator[Captured]:
        captured = Captured()
        _flush()
        starts = [os.fstat(f.fileno()).st_size for f in self.files]
        try:
            yield captured
        finally:
            _flush()
            known = self._restore()
            texts = []
            for handle, start, size in zip(self.files, starts, known, strict=True):
                fd = handle.fileno()
                end = os.fstat(fd).st_size if size is None else size
                if end <= start:
                    texts.append("")
                    continue
                begin = max(start, end - self.limit - 1)
                texts.append(_decode_tail(os.pread(fd, end - begin, begin), self.limit))
                if end > self.ROTATE_BYTES:
                    os.ftruncate(fd, 0)
                    os.lseek(fd, 0, os.SEEK_SET)  # shared with fd 1 or 2: a dup of it
            captured.stdout, captured.stderr = texts


def _flush() -> None:
    """Flush Python's buffers; a task that closed fd 1 makes that fail, which is its own affair."""
    for stream in (sys.stdout, sys.stderr):
        try:  # noqa: SIM105 - not contextlib.suppress: this runs twice per task
            stream.flush()
        except Exception:
            pass


class StreamCapture:
    """Redirects ``sys.stdout``/``sys.stderr`` only; for a runtime sharing its process."""

    def __init__(self, limit: int = LOG_TAIL_BYTES) -> None:
        self.limit = limit

    @contextmanager
    def task(self) -> Iterator[Captured]:
        captured = Captured()
        out, err = io.StringIO(), io.StringIO()
        try:
            with redirect_stdout(out), redirect_stderr(err):
                yield captured
        finally:
            captured.stdout = text_tail(out.getvalue(), self.limit)
            captured.stderr = text_tail(err.getvalue(), self.limit)
