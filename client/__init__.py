"""fanout: fan thousands of independent Python calls out to workers, get futures back.

    import fanout

    with fanout.Executor(seed=42) as ex:
        results = list(ex.map(simulate, range(10_000)))

The same code runs on the ``local`` backend (processes and an embedded store; the
default) and, by naming another backend, on serverless workers.
"""

from concurrent.futures import ALL_COMPLETED, FIRST_COMPLETED, FIRST_EXCEPTION, as_completed, wait

from .context import checkpoint, restore, task_rng, task_seed
from .cost import estimate
from .errors import (
    ConfigurationError,
    DependencyFailed,
    ExecutorClosed,
    FanoutError,
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
from .joblib_hook import install as _install_joblib_backend

_install_joblib_backend()  # joblib.parallel_config(backend="fanout") once joblib is imported

__version__ = "0.1.0"

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
    "InvalidArgument",
    "InvalidArgumentType",
    "Job",
    "JobNotFound",
    "JobStillRunning",
    "MapIterator",
    "RemoteError",
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
    "task_rng",
    "task_seed",
    "wait",
]
