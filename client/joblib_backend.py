"""joblib's ``"fanout"`` backend: ``joblib.Parallel`` (and scikit-learn's ``n_jobs``) on fanout.

    import fanout, joblib
    with joblib.parallel_config(backend="fanout", n_jobs=8):
        search.fit(X, y)                     # GridSearchCV's fits run as fanout tasks

    with joblib.parallel_config(backend="fanout", n_jobs=200, fanout_backend="aws",
                                tier="lambda", memory_mb=2048, seed=7):
        ...

Every joblib batch is one ``Executor.submit``, so it is a task of an ordinary fanout job
(kept in the store, visible to ``fanout jobs``, retried when its worker dies). joblib's own
name for its option is ``backend``, so the fanout backend is chosen with ``fanout_backend=``;
the task options (``timeout``, ``memory_mb``, ``retries``, ``tier``, ``seed``) and backend
options (``home``, ...) pass through; ``executor=`` reuses an Executor you already have.

``n_jobs`` is how many batches joblib keeps in flight (and, locally, the number of worker
processes); a negative value counts from the machine's CPUs as joblib does. A ``Parallel``
called *inside* a task runs sequentially in that task: a task is one worker's share, and a
worker must not fan out again behind the client's back.

fanout imports this module only once joblib itself is imported (see ``fanout.joblib_hook``),
so ``import fanout`` stays cheap (joblib takes half a second to import) and works
without joblib installed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from joblib._parallel_backends import (
    AutoBatchingMixin,
    ParallelBackendBase,
    SequentialBackend,
)
from joblib.parallel import register_parallel_backend

from .executor import Executor
from .future import Future
from .options import TaskOptions

NAME = "fanout"
_TASK_OPTIONS = frozenset(TaskOptions.__dataclass_fields__) - {"chunksize"}


class FanoutBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """A joblib ``ParallelBackendBase`` whose batches are fanout tasks.

    Follows joblib's documented contract: ``submit`` returns a future and arranges the
    callback, ``retrieve_result_callback`` returns the result or raises the task's own
    exception, ``abort_everything`` cancels what has not started, ``terminate`` releases
    the workers this backend started (never an ``executor=`` it was given).
    """

    # A batch is shipped to another process (or machine): no shared memory, and results
    # come back through callbacks, which also gives Parallel its timeout and generators.
    supports_retrieve_callback = True
    supports_timeout = True
    supports_return_generator = True
    supports_sharedmem = False
    uses_threads = False
    default_n_jobs = -1
    # A fanout task costs a store round trip (locally) or an upload and a Lambda start (on
    # AWS): aim for batches long enough to hide that, short enough to spread well.
    MIN_IDEAL_BATCH_DURATION = 0.5
    MAX_IDEAL_BATCH_DURATION = 5.0

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        fanout_backend: str | None = None,
        executor: Executor | None = None,
        **options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level,
                         inner_max_num_threads=inner_max_num_threads)
        task = {k: v for k, v in options.items() if k in _TASK_OPTIONS}
        if executor is not None:
            if fanout_backend is not None or options:
                raise TypeError(
                    "give either executor= or fanout_backend=/task and backend options to the "
                    f"fanout joblib backend, not both (got {sorted(options)})")
            if not isinstance(executor, Executor):
                raise TypeError(f"executor must be a fanout.Executor, not {executor!r}")
        else:
            TaskOptions(**task)  # a bad option fails here, at parallel_config, not mid-run
        self._given = executor
        self._fanout_backend = fanout_backend
        self._task_options = task
        self._backend_options = {k: v for k, v in options.items() if k not in _TASK_OPTIONS}
        self._executor: Executor | None = executor
        self._workers: int | None = None
        self._lock = threading.Lock()
        self._in_flight: set[Future] = set()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs < 0:
            n_jobs = max((os.cpu_count() or 1) + 1 + n_jobs, 1)
        return int(n_jobs)

    def configure(self, n_jobs: int | None = 1, parallel: Any = None, prefer: str | None = None,
                  require: str | None = None, **backend_kwargs: Any) -> int:
        self.parallel = parallel
        n = self.effective_n_jobs(n_jobs)
        with self._lock:
            if self._given is None and self._executor is not None and self._workers != n:
                self._executor.shutdown(wait=True)
                self._executor = None
            if self._executor is None:
                self._executor = Executor(n, backend=self._fanout_backend, progress=False,
                                          **self._task_options, **self._backend_options)
                self._workers = n
        return n

    def submit(self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None
               ) -> Future:
        executor = self._executor
        if executor is None:
            raise RuntimeError("the fanout joblib backend was used before Parallel configured it")
        future = executor.submit(func)
        with self._lock:
            self._in_flight.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _forget(self, future: Any) -> None:
        with self._lock:
            self._in_flight.discard(future)

    def retrieve_result_callback(self, out: Future) -> Any:
        # The task's own exception, with the remote traceback as its __cause__.
        return out.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A batch failed: Parallel will raise and read nothing else, so cancel the rest."""
        with self._lock:
            pending = list(self._in_flight)
            self._in_flight.clear()
        for future in pending:
            future.cancel()
        if not ensure_ready:
            self.terminate()

    def terminate(self) -> None:
        with self._lock:
            executor = self._executor
            if executor is not self._given:  # the caller's executor stays theirs, and open
                self._executor = self._workers = None
        if executor is not None and executor is not self._given:
            executor.shutdown(wait=True, cancel_futures=True)
        self.reset_batch_stats()

    def get_nested_backend(self) -> tuple[ParallelBackendBase, int | None]:
        nesting_level = (self.nesting_level or 0) + 1
        return SequentialBackend(nesting_level=nesting_level), None

    def __reduce__(self) -> Any:
        raise TypeError("the fanout joblib backend holds an Executor and cannot be pickled")


def register() -> None:
    """Make ``backend="fanout"`` known to joblib (idempotent)."""
    register_parallel_backend(NAME, FanoutBackend)
