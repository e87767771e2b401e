"""fanout: fan thousands of independent Python calls out to workers, get futures back.

    import fanout

    with fanout.Executor(seed=42) as ex:
        results = list(ex.map(simulate, range(10_000)))

The same code runs on the ``local`` backend (processes and an embedded store; the
default) and, by naming another backend, on serverless workers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .joblib_hook import install as _install_joblib_backend

if TYPE_CHECKING:
    from concurrent.futures import (
        ALL_COMPLETED,
        FIRST_COMPLETED,
        FIRST_EXCEPTION,
        as_completed,
        wait,
    )

    from .context import checkpoint, restore, task_rng, task_seed
    from .cost import estimate
    from .errors import (
        ConfigurationError,
        DependencyFailed,
        ExecutorClosed,
        FanoutError,
        InputChanged,
        InvalidArgument,
        InvalidArgumentType,
        JobNotFound,
        JobStillRunning,
        RemoteError,
        ScheduleExists,
        ScheduleNotFound,
        SerializationError,
        StoreError,
        TaskTimeout,
        WorkerLost,
    )
    from .executor import Executor, MapIterator
    from .future import Future
    from .job import Job
    from .s3_inputs import S3Chunk, s3_chunks

_install_joblib_backend()  # joblib.parallel_config(backend="fanout") once joblib is imported

__version__ = "0.1.0"

#: Where each public name lives. They are imported on first use (PEP 562), not here: every
#: worker process imports this package before its first task, and the whole client side
#: (executor, jobs, cost model, S3 inputs, importlib.metadata) would add about a quarter
#: of a second of CPU to each worker's start for names a worker never uses.
_HOMES = {
    "ALL_COMPLETED": "concurrent.futures", "FIRST_COMPLETED": "concurrent.futures",
    "FIRST_EXCEPTION": "concurrent.futures", "as_completed": "concurrent.futures",
    "wait": "concurrent.futures",
    "checkpoint": ".context", "restore": ".context", "task_rng": ".context",
    "task_seed": ".context",
    "estimate": ".cost",
    **{name: ".errors" for name in (
        "ConfigurationError", "DependencyFailed", "ExecutorClosed", "FanoutError",
        "InputChanged", "InvalidArgument", "InvalidArgumentType", "JobNotFound",
        "JobStillRunning", "RemoteError", "ScheduleExists", "ScheduleNotFound",
        "SerializationError", "StoreError", "TaskTimeout", "WorkerLost")},
    "Executor": ".executor", "MapIterator": ".executor",
    "Future": ".future",
    "Job": ".job",
    "S3Chunk": ".s3_inputs", "s3_chunks": ".s3_inputs",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'fanout' has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


__all__ = [
    "ALL_COMPLETED",
    "FIRST_COMPLETED",
    "FIRST_EXCEPTION",
    "ConfigurationError",
    "DependencyFailed",
    "Executor",
    "ExecutorClosed",
    "FanoutError",
    "Future",
    "InputChanged",
    "InvalidArgument",
    "InvalidArgumentType",
    "Job",
    "JobNotFound",
    "JobStillRunning",
    "MapIterator",
    "RemoteError",
    "S3Chunk",
    "ScheduleExists",
    "ScheduleNotFound",
    "SerializationError",
    "StoreError",
    "TaskTimeout",
    "WorkerLost",
    "as_completed",
    "checkpoint",
    "estimate",
    "restore",
    "s3_chunks",
    "task_rng",
    "task_seed",
    "wait",
]
