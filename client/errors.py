"""The exceptions fanout raises.

Each one names a different remedy: fix the code (``RemoteError``), give the task more time
(``TaskTimeout``), look at the machine (``WorkerLost``), change what is sent
(``SerializationError``), change the set-up (``ConfigurationError``), change the call
(``InvalidArgument``), or look again at the name (``JobNotFound``, ``ScheduleNotFound``).
Those that replace a built-in exception of earlier releases also derive from it
(``JobNotFound`` is a ``KeyError``, ``InvalidArgument`` a ``ValueError``), so callers keep
working; the CLI and the dashboard API report every ``FanoutError`` as a message and let
anything else surface as the bug it is.
"""

from __future__ import annotations

import pickle


class FanoutError(Exception):
    """Base class of every error fanout raises itself."""


class RemoteError(FanoutError):
    """A task failed on a worker with an exception the client cannot rebuild.

    Carries the remote exception's type name and traceback text so nothing is lost even
    when the exception object itself did not survive pickling.
    """

    def __init__(self, type_name: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type_name}: {message}" if message else type_name)
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.type_name, self.remote_message, self.remote_traceback))


class TaskTimeout(FanoutError, TimeoutError):
    """A task ran past its ``timeout=`` on every allowed attempt and was stopped."""


class WorkerLost(FanoutError):
    """The process running a task died (killed, crashed, out of memory) on every attempt."""


class SerializationError(FanoutError, pickle.PicklingError, TypeError):
    """A function, argument or result could not be pickled; the message names which.

    Also a ``pickle.PicklingError`` (what ``ProcessPoolExecutor`` raises for the same
    mistake) and a ``TypeError`` (what earlier fanout releases documented), so code that
    catches either keeps working.
    """


class ConfigurationError(FanoutError):
    """The set-up is wrong (store, backend, Python versions); the message says how to fix it."""


class StoreError(ConfigurationError):
    """The store cannot be read or written (full disk, read-only, corrupt, unreachable).

    The message names the path or table and the cause; records already stored stay intact.
    """


class JobNotFound(FanoutError, KeyError):
    """No job with that id in the store; also a ``KeyError`` so lookups keep their idiom."""

    def __str__(self) -> str:  # KeyError's str() would quote the whole sentence
        return str(self.args[0]) if self.args else "job not found"


class ScheduleNotFound(FanoutError, KeyError):
    """No schedule with that name; also a ``KeyError``."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "schedule not found"


class ScheduleExists(FanoutError, ValueError):
    """A schedule with that name exists already; also a ``ValueError``."""


class JobStillRunning(FanoutError, RuntimeError):
    """The job is still running, so it cannot be retried yet: wait for it or cancel it.

    Also a ``RuntimeError``, what earlier releases raised.
    """


class ExecutorClosed(FanoutError, RuntimeError):
    """Work was submitted after ``shutdown()``; also a ``RuntimeError``, as the stdlib's
    executors raise."""


class InvalidArgument(FanoutError, ValueError):
    """A value given to fanout (an option, a schedule expression, a command-line argument)
    is not one it accepts; the message says which values are. Also a ``ValueError``."""


class InvalidArgumentType(FanoutError, TypeError):
    """An argument of the wrong kind (not callable, not a number, an unknown option name);
    also a ``TypeError``, what Python raises for the same mistake."""


class DependencyFailed(FanoutError):
    """A task's input was a future whose task failed; names the upstream job and task."""
