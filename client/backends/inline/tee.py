"""Output capture for tasks that run in the caller's process, at the caller's terminal.

The task's prints reach the terminal as they happen *and* its record (``future.logs()``),
and stdin is left alone, so ``breakpoint()`` in a task opens a usable pdb prompt.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import TextIO

from ...capture import Captured, text_tail
from ...protocol import LOG_TAIL_BYTES


class _Tee(io.TextIOBase):
    """Writes to the terminal stream (flushed at once) and to a buffer for the record."""

    def __init__(self, terminal: TextIO) -> None:
        self.terminal = terminal
        self.buffer_ = io.StringIO()

    def write(self, text: str) -> int:
        self.terminal.write(text)
        self.terminal.flush()
        return self.buffer_.write(text)

    def flush(self) -> None:
        self.terminal.flush()

    def isatty(self) -> bool:
        return self.terminal.isatty()

    def fileno(self) -> int:
        return self.terminal.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self.terminal, "encoding", "utf-8")


class TeeCapture:
    """The ``Capture`` of the inline backend: the terminal keeps seeing everything."""

    def __init__(self, limit: int = LOG_TAIL_BYTES) -> None:
        self.limit = limit

    @contextmanager
    def task(self) -> Iterator[Captured]:
        captured = Captured()
        out, err = _Tee(sys.stdout), _Tee(sys.stderr)
        try:
            with redirect_stdout(out), redirect_stderr(err):
                yield captured
        finally:
            captured.stdout = text_tail(out.buffer_.getvalue(), self.limit)
            captured.stderr = text_tail(err.buffer_.getvalue(), self.limit)
