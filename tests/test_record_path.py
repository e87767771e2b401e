"""The record path, in one process: a task's outcome becomes one stored record, and a stored
record becomes the caller's future outcome.

The same code runs inside every worker (local process, Lambda, Batch) and every client; here
it runs in the test's own process against a real SQLite store, so each step can be seen: the
worker runtime (``runtime.py``) writes records through the conditional put, the collector
(``collector.py``) turns them into futures. Nothing is mocked.
"""

from __future__ import annotations

import concurrent.futures
import io
import os
import pickle
import random
import re
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy
import pytest
import tqdm

import fanout
from fanout import packing, records, serialization
from fanout.backends.local.backend import LocalBackend
from fanout.backends.local.store import LocalStore
from fanout.collector import JobRun, RemoteTraceback, rebuild_exception, resolve
from fanout.dependencies import dumps_call
from fanout.errors import RemoteError, SerializationError, StoreError, TaskTimeout, WorkerLost
from fanout.future import Future
from fanout.manifest import plan_job, write_payload
from fanout.options import TaskOptions
from fanout.protocol import (
    CANCELLED,
    FAILED,
    REDUCE_INDEX,
    SUCCEEDED,
    Chunk,
    JobSpec,
    ResultRecord,
    retry_plan,
    version_mismatch,
)
from fanout.runtime import WorkerRuntime, exception_fields

# -- tasks (run in this process) ---------------------------------------------------------------


class Unpicklable(Exception):
    """An exception that pickles but cannot be loaded again (a required argument)."""

    def __init__(self, code: int, why: str) -> None:
        super().__init__(f"{code}: {why}")


class BrokenNotes(Exception):
    """An exception the traceback module cannot format (its ``__notes__`` raise)."""

    @property
    def __notes__(self) -> list[str]:  # type: ignore[override]
        raise ValueError("notes broken")


def broken_notes(x: int) -> int:
    raise BrokenNotes(f"task {x} failed")


def work(x: int) -> int:
    if x == 3:
        raise ValueError(f"task {x} is bad")
    if x == 4:
        raise Unpicklable(4, "no")
    print(f"out {x}")
    print(f"err {x}", file=sys.stderr)
    return x * 10


def unpicklable_result(x: int) -> Any:
    return threading.Lock()  # nothing pickles a lock


def big(x: int) -> bytes:
    return bytes(100) * (x + 1)


def checkpointing(x: int) -> int:
    fanout.checkpoint({"x": x})
    if x == 1:
        raise RuntimeError("after the checkpoint")
    return x


def seeds(_: int) -> tuple[int, float]:
    return fanout.task_seed(), random.random()


def draws(x: int) -> tuple[Any, ...]:
    """The global RNGs every way a task may use them: plain draws, positional and keyword
    arguments, numpy's legacy functions, and a call that seeds one of them itself."""
    if x % 2:  # its own seed for ``random``, before any draw; numpy keeps the task's seed
        random.seed(x)
        return (fanout.task_seed(), float(numpy.random.random()), random.random(),
                random.randint(0, 10**9))
    ours = (fanout.task_seed(), random.random(), random.random(), random.randint(0, 10**9),
            random.gauss(mu=5.0, sigma=2.0), float(numpy.random.random()))
    numpy.random.seed(seed=x)
    return (*ours, float(numpy.random.random()), random.random())


STATE = 0  # set by ``set_state`` (the executor's initializer), read by ``stateful``
COUNT = 0


def set_state(value: int, token: str = "") -> None:
    """``token`` makes the initializer's text unique per test, so no earlier test's run of
    it in this process (the runtime remembers initializers by their text) stands in."""
    global STATE, COUNT
    STATE, COUNT = value, 0


def stateful(x: int) -> tuple[int, int]:
    """What a task sees of its initializer's globals, and a counter it keeps itself."""
    global COUNT
    COUNT += 1
    return x + STATE, COUNT


def interrupted(x: int) -> int:
    if x == 1:
        raise KeyboardInterrupt
    return x


def resuming(x: int) -> int:
    """Checkpoints and fails on its first attempt; the retry resumes from its own checkpoint."""
    saved = fanout.restore()
    if saved is None:
        fanout.checkpoint(x * 100)
        raise RuntimeError(f"call {x}, first attempt")
    return int(saved)


def lock_at_one(x: int) -> Any:
    return threading.Lock() if x == 1 else x


def scaled(x: int, factor: int = 1, offset: int = 0) -> int:
    return x * factor + offset


def resume(x: int) -> int:
    """Checkpoints and fails on its first attempt; the retry resumes and succeeds."""
    if fanout.restore() is None:
        fanout.checkpoint(x)
        raise RuntimeError("first attempt")
    return x


def sleepy(seconds: float) -> float:
    time.sleep(seconds)  # a task that takes this long, not a synchronisation
    return seconds


def counted(x: int) -> int:
    """``work``, saying that it ran (the chunk's output shows which calls ran); with
    ``$FAIL_ONCE_DIR`` set, a call of 6 or 7 fails the first time (a marker file says)."""
    print(f"ran {x}")
    marker = os.environ.get("FAIL_ONCE_DIR")
    if marker and x in (6, 7) and not os.path.exists(os.path.join(marker, str(x))):
        open(os.path.join(marker, str(x)), "w").close()
        raise KeyError(f"call {x}, first run")
    return work(x)


def ran(records: list[ResultRecord]) -> list[int]:
    return [int(line.split()[1]) for r in records for line in (r.stdout or "").splitlines()
            if line.startswith("ran ")]


# -- a job in a real store ---------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    local = LocalStore(tmp_path / "store")
    state, legacy = random.getstate(), numpy.random.get_state()
    try:
        yield local
    finally:
        random.setstate(state)  # tasks ran here: put the global RNGs back
        numpy.random.set_state(legacy)
        local.close()


def make_job(store: LocalStore, fn: Any, items: list[Any], chunksize: int = 10,
             python: str | None = None, seed: int = 42, timeout: float | None = None,
             kwargs: dict[str, Any] | None = None) -> tuple[JobSpec, list[Chunk]]:
    """What a backend's submit does, by fanout's own functions, into ``store``."""
    job_id = f"path-{fn.__name__}"
    store.write_object(job_id, "function.pkl", serialization.dumps_function(fn))
    with store.open_payload(job_id, "payload-0.bin") as out:
        refs = write_payload(out, [serialization.dumps_call((x,), kwargs or {}) for x in items],
                             seed)
    spec, manifest = plan_job(job_id, "map", fn.__name__, refs,
                              TaskOptions(chunksize=chunksize, timeout=timeout), seed)
    if python is not None:
        spec = replace(spec, python=python)
    store.create_job(spec, manifest, None)
    return spec, manifest


def make_packed_job(store: LocalStore, fn: Any, items: list[Any], pack: int,
                    seed: int = 42, initializer: str | None = None
                    ) -> tuple[JobSpec, list[Chunk]]:
    """What ``map(fn, items, chunksize=pack)`` submits: one task per ``pack`` calls (an
    item may be a future: the call then reads that task's stored result)."""
    job_id = f"packed{pack}-{fn.__name__}"
    store.write_object(job_id, "function.pkl", serialization.dumps_function(fn))
    groups = [[(x,) for x in items[i:i + pack]] for i in range(0, len(items), pack)]
    with store.open_payload(job_id, "payload-0.bin") as out:
        refs = write_payload(out, [dumps_call((g,), {}, store)[0] for g in groups], seed)
    spec, manifest = plan_job(job_id, "map", fn.__name__, refs,
                              TaskOptions(chunksize=2, pack=pack, initializer=initializer),
                              seed)
    store.create_job(spec, manifest, None)
    return spec, manifest


def unrolled(job: JobRun, spec: JobSpec, store: LocalStore) -> list[Future]:
    """Every call's future, settled from its chunk's, as ``results.futures`` makes them."""
    pack = spec.options.pack
    calls = packing.element_count(store, spec)
    logs = packing.ElementLogs(LocalBackend(home=str(store.home)), pack)  # reads its records
    return [f for k in range(spec.n_tasks) for f in packing.element_futures(
        job.future(k), pack * k, min(pack, calls - pack * k), logs)]


def run(store: LocalStore, chunk: Chunk, worker: str = "w-1") -> list[ResultRecord]:
    told: list[ResultRecord] = []
    WorkerRuntime(store, worker).run_chunk(chunk, on_result=told.append)
    return told


def follow(spec: JobSpec, store: LocalStore, records: list[ResultRecord]) -> JobRun:
    futures = [Future(spec.job_id, i, store) for i in range(spec.n_tasks)]  # type: ignore[arg-type]
    job = JobRun(spec, futures, store.load_value)
    for rec in records:
        job.deliver(rec)
    return job


# -- the runtime writes one record per task ----------------------------------------------------


def test_each_task_becomes_one_stored_record_with_its_outcome(store: LocalStore) -> None:
    spec, manifest = make_job(store, work, list(range(6)))
    told = run(store, manifest[0])
    stored = store.results(spec.job_id)
    # The callback gets what the store holds, less the runtime's own checkpoint note.
    assert [replace(r, extra={}) for r in told] == [replace(r, extra={}) for r in stored]
    assert all(r.extra == {} for r in told)
    assert [r.task_index for r in stored] == list(range(6))
    assert [r.status for r in stored] == [SUCCEEDED] * 3 + [FAILED] * 2 + [SUCCEEDED]
    assert all(r.attempt == 1 and r.worker_id == "w-1" for r in stored)
    assert all(0 < r.started <= r.ended for r in stored)
    assert [serialization.loads(store.load_value(r)) for r in stored if r.status == SUCCEEDED
            ] == [0, 10, 20, 50]
    assert stored[2].stdout == "out 2\n" and stored[2].stderr == "err 2\n"

    value_error = stored[3]
    assert value_error.exc_type == "builtins.ValueError"
    assert value_error.exc_message == "task 3 is bad"
    assert value_error.traceback is not None
    assert value_error.traceback.startswith("Traceback (most recent call last):")
    assert "in work" in value_error.traceback and "task 3 is bad" in value_error.traceback
    # The runtime's own frames above the task are noise: the traceback starts at the call.
    # (Not "runtime.py is absent": under mutmut a trampoline frame sits in between.)
    assert "_run_one" not in value_error.traceback and "run_chunk" not in value_error.traceback
    assert value_error.exc_pickle is not None
    assert str(pickle.loads(value_error.exc_pickle)) == "task 3 is bad"

    unloadable = stored[4]
    assert unloadable.exc_type == f"{__name__}.Unpicklable"
    assert unloadable.exc_message == "4: no" and unloadable.exc_pickle is None


def test_outcomes_reach_the_futures_with_type_and_remote_traceback(store: LocalStore) -> None:
    spec, manifest = make_job(store, work, list(range(6)))
    job = follow(spec, store, run(store, manifest[0]))
    assert job.done.is_set() and job.map_finished
    assert [job.future(i).result(timeout=0) for i in (0, 1, 2, 5)] == [0, 10, 20, 50]
    exc = job.future(3).exception(timeout=0)
    assert type(exc) is ValueError and str(exc) == "task 3 is bad"
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert "in work" in str(exc.__cause__) and str(exc.__cause__).startswith('\n"""\n')
    assert str(exc.__cause__).endswith('\n"""')
    remote = job.future(4).exception(timeout=0)
    assert isinstance(remote, RemoteError)
    assert f"{__name__}.Unpicklable" in str(remote) and "4: no" in str(remote)
    assert isinstance(remote.__cause__, RemoteTraceback)
    assert job.counts == {SUCCEEDED: 4, FAILED: 2, CANCELLED: 0}
    assert job.first_failure is not None and job.first_failure.task_index == 3
    assert job.mean_seconds is not None and job.mean_seconds >= 0


def test_an_unpicklable_result_is_that_tasks_serialization_error(store: LocalStore) -> None:
    spec, manifest = make_job(store, unpicklable_result, [1, 2])
    stored = run(store, manifest[0])
    assert [r.status for r in stored] == [FAILED, FAILED]
    assert {r.exc_type for r in stored} == {"fanout.errors.SerializationError"}
    job = follow(spec, store, stored)
    exc = job.future(0).exception(timeout=0)
    # The stdlib's type for the same mistake (ProcessPoolExecutor raises PicklingError), and
    # fanout's own, with the remote traceback as the cause.
    assert isinstance(exc, SerializationError) and isinstance(exc, pickle.PicklingError)
    assert "_thread.lock" in str(exc) and "cannot be pickled" in str(exc)
    assert isinstance(exc.__cause__, RemoteTraceback)
    assert str(exc.__cause__).endswith(f"fanout.errors.SerializationError: {exc}\n\"\"\"")
    assert (stored[0].traceback or "").startswith("Traceback (most recent call last):\n  File ")


def test_a_python_version_mismatch_fails_every_task_with_the_fix(store: LocalStore) -> None:
    spec, manifest = make_job(store, work, [0, 1], python="2.7.18")
    assert version_mismatch(spec) is not None
    stored = run(store, manifest[0])
    assert [r.status for r in stored] == [FAILED, FAILED]
    assert all(r.exc_type == "fanout.errors.ConfigurationError" for r in stored)
    here = "{}.{}".format(*sys.version_info[:2])
    assert {r.exc_message for r in stored} == {
        f"the client pickled this job with Python 2.7 but the worker runs Python {here}; "
        "cloudpickle needs the same minor version on both sides. Run the client with Python "
        f"{here}, or deploy workers with Python 2.7."}
    this = replace(spec, python=serialization.python_version())
    assert version_mismatch(this) is None


def test_a_function_that_cannot_load_fails_its_tasks(store: LocalStore) -> None:
    spec, manifest = make_job(store, work, [0, 1])
    (store.job_dir(spec.job_id) / "function.pkl").write_bytes(b"not a pickle")
    stored = run(store, manifest[0])
    assert [r.status for r in stored] == [FAILED, FAILED]
    assert all(r.exc_type and r.exc_type.endswith("UnpicklingError") for r in stored)


def test_large_values_go_to_a_blob_and_a_lost_race_drops_its_blob(store: LocalStore) -> None:
    store.max_record_value_bytes = 150
    spec, manifest = make_job(store, big, [0, 1, 2])
    first = run(store, manifest[0])
    assert first[0].value is not None and first[0].value_ref is None
    assert all(r.value is None and r.value_ref for r in first[1:])
    assert [serialization.loads(store.load_value(r)) for r in first] == [
        bytes(100), bytes(200), bytes(300)]
    blobs = store.job_dir(spec.job_id) / "values"
    kept = sorted(p.name for p in blobs.iterdir())
    assert len(kept) == 2
    # The same chunk again at a later attempt (a duplicate Batch run): the stored successes
    # stand, the callback is told about them, and the second run's blobs are deleted.
    again = run(store, replace(manifest[0], attempt=2), worker="w-2")
    assert [(r.attempt, r.worker_id, r.value_ref) for r in again] == [
        (r.attempt, r.worker_id, r.value_ref) for r in first]
    assert all(r.extra == {} for r in again), "the runtime's note leaked to the callback"
    assert sorted(p.name for p in blobs.iterdir()) == kept


def test_a_success_deletes_its_checkpoint_and_a_failure_keeps_it(store: LocalStore) -> None:
    spec, manifest = make_job(store, checkpointing, [0, 1])
    stored = run(store, manifest[0])
    assert [r.status for r in stored] == [SUCCEEDED, FAILED]
    assert store.get_checkpoint(spec.job_id, 0) is None
    assert store.get_checkpoint(spec.job_id, 1) is not None
    # The retry succeeds at attempt 2 (it replaces the failure) and cleans up after itself.
    plan = retry_plan(manifest, stored)
    assert [(c.attempt, [t.index for t in c.tasks]) for c in plan] == [(2, [1])]
    fanout_retry = run(store, plan[0])
    assert [(r.task_index, r.attempt) for r in fanout_retry] == [(1, 2)]
    assert store.get_checkpoint(spec.job_id, 1) is not None  # it failed again: kept


def test_a_chunk_stops_when_its_caller_is_gone(store: LocalStore) -> None:
    spec, manifest = make_job(store, work, [0, 1, 2])
    runtime = WorkerRuntime(store, "w-1")
    asked = []

    def keep_going() -> bool:
        asked.append(1)
        return len(asked) <= 2

    runtime.keep_going = keep_going
    runtime.run_chunk(manifest[0])
    assert [r.task_index for r in store.results(spec.job_id)] == [0, 1]


def test_seeds_come_from_the_manifest_and_chunking_does_not_matter(store: LocalStore) -> None:
    _, manifest = make_job(store, seeds, list(range(4)), chunksize=3)
    assert len(manifest) == 2
    stored = [r for chunk in reversed(manifest) for r in run(store, chunk)]
    values = {r.task_index: serialization.loads(store.load_value(r)) for r in stored}
    refs = {t.index: t.seed for chunk in manifest for t in chunk.tasks}
    assert {i: v[0] for i, v in values.items()} == refs
    assert len({v[1] for v in values.values()}) == 4


def test_the_manifest_and_spec_round_trip_through_the_store(store: LocalStore) -> None:
    spec, manifest = make_job(store, work, list(range(5)), chunksize=2)
    assert store.manifest(spec.job_id) == manifest
    assert [Chunk.from_json(c.to_json()) for c in manifest] == manifest
    assert store.load_spec(spec.job_id) == spec
    assert JobSpec.from_json(spec.to_json()) == spec
    assert [len(c.tasks) for c in manifest] == [2, 2, 1]


# -- the collector: records become futures, once ----------------------------------------------


def record(index: int, status: str, value: Any = None, attempt: int = 1) -> ResultRecord:
    rec = ResultRecord("collect", index, status, attempt, f"w{index}", 1.0, 1.0 + index)
    if status == SUCCEEDED:
        rec.value = serialization.dumps_value(value)
    return rec


def test_the_first_delivered_record_settles_a_future_and_later_ones_are_ignored() -> None:
    spec = JobSpec("collect", "map", "f", 3, 1, TaskOptions(), "3.11", {}, 0.0, "c")
    futures = [Future("collect", i, None) for i in range(3)]  # type: ignore[arg-type]
    job = JobRun(spec, futures, lambda r: r.value or b"")
    job.deliver(record(1, SUCCEEDED, "one"))
    job.deliver(record(1, SUCCEEDED, "other", attempt=2))
    assert futures[1].result(timeout=0) == "one"
    assert job.open_tasks() == [0, 2] and not job.map_finished
    failure = ResultRecord("collect", 2, FAILED, 1, "w", 1.0, 2.0, exc_type="x.Bad",
                           exc_message="bad", traceback="Traceback: bad")
    job.deliver(failure)
    job.deliver(record(0, CANCELLED))
    assert futures[0].cancelled() and job.done.is_set()
    assert job.counts == {SUCCEEDED: 1, FAILED: 1, CANCELLED: 1}
    assert job.first_failure is failure
    exc = futures[2].exception(timeout=0)
    assert isinstance(exc, RemoteError) and isinstance(exc.__cause__, RemoteTraceback)
    # A moving average of durations: 1 s (task 1), 1 s (task 2), then 0 s (task 0).
    assert job.mean_seconds == pytest.approx(0.8 * 1.0 + 0.2 * 0.0)


def reducing_job(n_tasks: int) -> tuple[JobRun, Future]:
    """A map_reduce job of ``n_tasks`` as a client follows it, and its reduce future."""
    spec = JobSpec("collect", "map_reduce", "f", n_tasks, 1, TaskOptions(), "3.11", {}, 0.0,
                   "c", has_reducer=True)
    futures = [Future("collect", i, None) for i in range(n_tasks)]  # type: ignore[arg-type]
    reduce_future = Future("collect", REDUCE_INDEX, None)  # type: ignore[arg-type]
    return JobRun(spec, futures, lambda r: r.value or b"", reduce_future), reduce_future


def test_a_failure_in_task_order_settles_the_reduce_future() -> None:
    job, reduce_future = reducing_job(3)
    job.deliver(record(0, SUCCEEDED, 0))
    assert not job.needs_reduce()
    late = ResultRecord("collect", 2, FAILED, 1, "w", 1.0, 2.0, exc_message="second")
    early = ResultRecord("collect", 1, FAILED, 1, "w", 1.0, 2.0, exc_message="first")
    job.deliver(late)
    job.deliver(early)
    assert job.map_finished and not job.done.is_set() and not job.needs_reduce()
    job.fail_reduce()
    assert job.done.is_set()
    assert "first" in str(reduce_future.exception(timeout=0))


def test_a_reduce_runs_only_when_every_task_succeeded() -> None:
    job, reduce_future = reducing_job(2)
    job.deliver(record(0, SUCCEEDED, 0))
    assert not job.needs_reduce()
    job.deliver(record(1, SUCCEEDED, 1))
    assert job.needs_reduce() and not job.done.is_set()
    job.deliver(ResultRecord("collect", REDUCE_INDEX, SUCCEEDED, 1, "w", 0.0, 0.0,
                             value=serialization.dumps_value("total")))
    assert reduce_future.result(timeout=0) == "total" and job.done.is_set()
    assert not job.needs_reduce()


def test_a_cancelled_job_without_failures_cancels_its_reduce() -> None:
    job, reduce_future = reducing_job(1)
    job.deliver(record(0, CANCELLED))
    job.fail_reduce()
    assert reduce_future.cancelled() and job.done.is_set()


def test_a_cancel_record_for_a_running_future_is_a_cancelled_error() -> None:
    future = Future("collect", 0, None)  # type: ignore[arg-type]
    assert future.claim() == "run"
    resolve(future, record(0, CANCELLED), lambda r: b"")
    with pytest.raises(concurrent.futures.CancelledError, match="task 0 of job collect"):
        future.result(timeout=0)


def test_a_value_that_cannot_load_here_is_a_serialization_error() -> None:
    future = Future("collect", 0, None)  # type: ignore[arg-type]
    resolve(future, record(0, SUCCEEDED, 1), lambda r: b"garbage")
    exc = future.exception(timeout=0)
    assert isinstance(exc, SerializationError)
    assert "task 0 of job collect succeeded" in str(exc) and exc.__cause__ is not None
    assert str(exc).endswith("Import the modules that define the result's types here.")
    resolve(future, record(0, SUCCEEDED, 2), lambda r: r.value or b"")  # settled: ignored
    assert future.exception(timeout=0) is exc


def test_an_exception_is_rebuilt_with_its_type_or_as_a_remote_error() -> None:
    try:
        raise KeyError("missing")
    except KeyError as exc:
        fields = exception_fields(exc)
        text = "".join(traceback.format_exception(exc))
    # Raised here, outside the runtime: every frame is the caller's, so nothing is cut.
    assert fields["traceback"] == text
    assert fields["exc_type"] == "builtins.KeyError" and fields["exc_message"] == "'missing'"
    rec = ResultRecord("collect", 0, FAILED, 1, "w", 0.0, 0.0, **fields)
    rebuilt = rebuild_exception(rec)
    assert type(rebuilt) is KeyError and rebuilt.args == ("missing",)
    assert isinstance(rebuilt.__cause__, RemoteTraceback)
    assert rebuilt.__cause__.tb == f'\n"""\n{text.rstrip()}\n"""' == str(rebuilt.__cause__)
    assert rebuilt.__cause__.args == (rebuilt.__cause__.tb,)
    # Without a usable pickle: a RemoteError that names the type and keeps the text.
    for blob in (pickle.dumps("not an exception"), b"not a pickle", None):
        bare = rebuild_exception(ResultRecord("collect", 0, FAILED, 1, "w", 0.0, 0.0,
                                              exc_pickle=blob))
        assert isinstance(bare, RemoteError) and bare.__cause__ is None
        assert str(bare) == "Exception" and bare.remote_traceback == ""
    named = rebuild_exception(ResultRecord("collect", 0, FAILED, 1, "w", 0.0, 0.0,
                                           exc_type="mod.Gone", exc_message="it left",
                                           traceback="Traceback: gone\n"))
    assert isinstance(named, RemoteError) and str(named) == "mod.Gone: it left"
    assert named.remote_traceback == "Traceback: gone\n"
    assert str(named.__cause__) == '\n"""\nTraceback: gone\n"""'


def test_keyword_arguments_reach_the_task(store: LocalStore) -> None:
    _, manifest = make_job(store, scaled, [1, 2], kwargs={"factor": 10, "offset": 3})
    assert [serialization.loads(store.load_value(r)) for r in run(store, manifest[0])] == [
        13, 23]


@pytest.mark.parametrize("python", [None, "2.7.18"], ids=["runs", "cannot-run"])
def test_the_runtime_says_which_task_runs_and_when_none_does(store: LocalStore,
                                                             python: str | None) -> None:
    """A local worker's supervisor charges a death to the task these calls name, also
    for tasks that fail before they start (here: a Python version the job cannot load)."""
    spec, manifest = make_job(store, scaled, [0, 1], python=python)
    chunk = replace(manifest[0], attempt=3)
    seen: list[tuple[Any, ...] | None] = []
    runtime = WorkerRuntime(store, "w-1", on_start=lambda ctx: seen.append(
        None if ctx is None else (ctx.job_id, ctx.task_index, ctx.attempt, ctx.seed,
                                  ctx.store)))
    runtime.run_chunk(chunk)
    seeds = [t.seed for t in chunk.tasks]
    assert seen == [(spec.job_id, 0, 3, seeds[0], store), None,
                    (spec.job_id, 1, 3, seeds[1], store), None]


def test_a_timeout_is_enforced_only_when_the_runtime_is_asked_to(store: LocalStore) -> None:
    """AWS workers enforce ``timeout=`` themselves (SIGALRM); a local worker leaves it to its
    supervisor, which kills the process instead."""
    spec, manifest = make_job(store, sleepy, [0.5], timeout=0.05)
    enforcing = WorkerRuntime(store, "w-1")
    enforcing.enforce_timeouts = True
    enforcing.run_chunk(manifest[0])
    [stopped] = store.results(spec.job_id)
    assert stopped.status == FAILED and stopped.exc_type == "fanout.errors.TaskTimeout"
    assert stopped.exc_message == ("task 0 ran longer than timeout=0.05s and was stopped; "
                                   "raise timeout= or split the task")
    assert isinstance(rebuild_exception(stopped), TaskTimeout)
    patient = WorkerRuntime(store, "w-2")  # not enforcing: the task runs to its end
    patient.run_chunk(replace(manifest[0], attempt=2))
    [finished] = store.results(spec.job_id)
    assert (finished.status, finished.attempt) == (SUCCEEDED, 2)


def test_a_job_without_tasks_is_done_at_once_unless_it_reduces() -> None:
    spec = JobSpec("collect", "map", "f", 0, 1, TaskOptions(), "3.11", {}, 0.0, "c")
    assert JobRun(spec, [], lambda r: b"").done.is_set()
    reducing = JobRun(spec, [], lambda r: b"", Future("collect", REDUCE_INDEX, None))  # type: ignore[arg-type]
    assert not reducing.done.is_set()
    one = JobRun(spec, [Future("collect", 0, None)], lambda r: b"")  # type: ignore[arg-type]
    assert not one.done.is_set()


def test_a_job_run_starts_clean_and_closes_its_progress_bar() -> None:
    spec = JobSpec("collect", "map", "f", 2, 1, TaskOptions(), "3.11", {}, 0.0, "c")
    futures = [Future("collect", i, None) for i in range(2)]  # type: ignore[arg-type]
    bar = tqdm.tqdm(total=2, file=io.StringIO(), disable=False)
    job = JobRun(spec, futures, lambda r: r.value or b"", progress=bar)
    assert job.job_id == "collect" and job.spec is spec
    assert (job.cancelled, job.reduce_queued, job.reduce_attempt) == (False, False, 1)
    assert job.first_failure is None and job.mean_seconds is None and job.inputs == {}
    assert not job.done.is_set() and not job.stored.is_set()
    job.deliver(record(0, SUCCEEDED, 0))
    assert bar.n == 1 and not job.done.is_set(), "one of two tasks is not the whole job"
    assert job.progress is bar
    job.deliver(record(1, SUCCEEDED, 1))
    assert bar.n == 2 and job.done.is_set() and not job.stored.is_set()
    assert job.progress is None, "the bar's line ends with the last task, before close()"
    job.close()
    assert job.stored.is_set() and job.progress is None


def test_a_sink_takes_the_records_instead_of_a_put(store: LocalStore) -> None:
    """The local worker batches its records: the runtime hands each one to the sink."""
    spec, manifest = make_job(store, scaled, [0, 1, 2])
    runtime = WorkerRuntime(store, "w-1")
    sunk: list[ResultRecord] = []
    runtime.sink = sunk.append
    runtime.run_chunk(manifest[0])
    assert [(r.task_index, r.status) for r in sunk] == [(i, SUCCEEDED) for i in range(3)]
    assert store.results(spec.job_id) == []  # putting them is the sink's job
    stored = store.put_results(sunk)
    for rec, kept in zip(sunk, stored, strict=True):
        runtime.settle(rec, kept)
    assert len(store.results(spec.job_id)) == 3


def test_a_value_of_exactly_the_limit_stays_in_the_record(store: LocalStore) -> None:
    store.max_record_value_bytes = len(serialization.dumps_value(bytes(100)))
    spec, manifest = make_job(store, big, [0, 1])
    inline, blob = run(store, manifest[0])
    assert inline.value is not None and inline.value_ref is None
    assert blob.value is None and blob.value_ref is not None
    assert re.fullmatch(rf"{spec.job_id}/values/1\.a1\.[0-9a-f]{{8}}\.pkl", blob.value_ref)


def test_a_duplicate_run_that_loses_with_a_small_value_deletes_nothing(store: LocalStore
                                                                        ) -> None:
    store.max_record_value_bytes = 150
    _, manifest = make_job(store, big, [1])
    [first] = run(store, manifest[0])
    assert first.value_ref is not None
    store.max_record_value_bytes = 10_000  # the second run's value fits its record
    [again] = run(store, replace(manifest[0], attempt=2))
    assert again.value_ref == first.value_ref
    assert serialization.loads(store.load_value(again)) == bytes(200)


def test_a_retry_that_resumes_deletes_the_checkpoint_of_the_earlier_attempt(
        store: LocalStore) -> None:
    spec, manifest = make_job(store, resume, [7])
    [failed] = run(store, manifest[0])
    assert failed.status == FAILED and store.get_checkpoint(spec.job_id, 0) is not None
    [resumed] = run(store, retry_plan(manifest, [failed])[0])
    assert (resumed.status, resumed.attempt) == (SUCCEEDED, 2)
    assert store.get_checkpoint(spec.job_id, 0) is None, "the retry left the checkpoint"


# -- a streaming run: tasks appended while it runs, a record the store could not take --------


def streaming_job(n_tasks: int, progress: Any = None) -> tuple[JobRun, list[Future]]:
    spec = JobSpec("collect", "map", "f", n_tasks, 1, TaskOptions(), "3.11", {}, 0.0, "c")
    futures = [Future("collect", i, None) for i in range(n_tasks)]  # type: ignore[arg-type]
    return JobRun(spec, futures, lambda r: r.value or b"", progress=progress,
                  streaming=True), futures


def map_finished(job: JobRun) -> bool:
    """Read through a call: mypy would keep an asserted property narrowed across steps."""
    return job.map_finished


def test_a_streaming_run_follows_appended_tasks_and_finishes_once_sealed() -> None:
    job, first = streaming_job(1)
    assert not job.done.is_set()
    assert job.take_futures() == first
    assert job.futures == [], "a streaming run keeps no futures (its memory would grow)"
    job.deliver(record(0, SUCCEEDED, "zero"))
    assert first[0].result(timeout=0) == "zero"
    assert not job.done.is_set() and job.open_tasks() == [], "its input is not exhausted"
    assert not map_finished(job)
    # The settled task's future is forgotten; a backend asking for it gets one that is done.
    assert job.future(0) is not first[0] and job.future(0).done()
    more = [Future("collect", i, None) for i in (1, 2)]  # type: ignore[arg-type]
    job.add(more)
    assert job.n_tasks == 3 and job.open_tasks() == [1, 2]
    assert job.future(1) is more[0] and job.future(2) is more[1]
    job.deliver(record(1, SUCCEEDED, "one"))
    job.seal()
    assert job.sealed and not job.done.is_set(), "task 2 is still open"
    job.deliver(record(2, SUCCEEDED, "two"))
    assert [f.result(timeout=0) for f in more] == ["one", "two"]
    assert job.map_finished and job.done.is_set()
    assert job.counts == {SUCCEEDED: 3, FAILED: 0, CANCELLED: 0}


def test_sealing_a_streaming_run_whose_tasks_are_settled_finishes_it() -> None:
    bar = tqdm.tqdm(file=io.StringIO(), disable=False)
    job, _ = streaming_job(1, progress=bar)
    job.deliver(record(0, SUCCEEDED, 0))
    assert not job.done.is_set() and job.progress is bar, "more tasks may come"
    job.seal()
    assert job.done.is_set() and job.map_finished
    assert job.progress is None, "the bar's line ends with the job"


def test_a_plain_run_keeps_its_futures() -> None:
    spec = JobSpec("collect", "map", "f", 2, 1, TaskOptions(), "3.11", {}, 0.0, "c")
    futures = [Future("collect", i, None) for i in range(2)]  # type: ignore[arg-type]
    job = JobRun(spec, futures, lambda r: r.value or b"")
    assert job.sealed
    assert job.take_futures() == futures and job.futures == futures
    job.deliver(record(0, SUCCEEDED, 0))
    assert job.future(0) is futures[0]


def test_a_task_whose_record_could_not_be_stored_fails_with_that_error() -> None:
    job, reduce_future = reducing_job(2)
    error = StoreError("the store is full")
    job.settle_error(0, error)
    assert job.future(0).exception(timeout=0) is error
    assert job.counts[FAILED] == 1 and job.open_tasks() == [1]
    job.settle_error(0, StoreError("again"))  # settled already: ignored
    job.deliver(record(0, SUCCEEDED, 0))
    assert job.future(0).exception(timeout=0) is error and job.counts[FAILED] == 1
    job.deliver(record(1, SUCCEEDED, 1))
    assert job.map_finished and not job.needs_reduce(), "one task failed: no reduce"
    assert not job.done.is_set()
    job.settle_error(REDUCE_INDEX, error)
    assert reduce_future.exception(timeout=0) is error and job.done.is_set()
    job.settle_error(REDUCE_INDEX, StoreError("again"))  # the reduce is settled: ignored
    assert reduce_future.exception(timeout=0) is error


def test_the_last_unstored_task_finishes_the_job_and_its_bar() -> None:
    bar = tqdm.tqdm(total=2, file=io.StringIO(), disable=False)
    job, futures = streaming_job(2, progress=bar)
    job.seal()
    job.deliver(record(0, SUCCEEDED, 0))
    error = StoreError("the store is full")
    job.settle_error(1, error)
    assert futures[1].exception(timeout=0) is error
    assert job.future(1) is not futures[1], "a streaming run forgets a settled future"
    assert job.done.is_set() and job.progress is None and bar.n == 2
    spec = JobSpec("collect", "map", "f", 0, 1, TaskOptions(), "3.11", {}, 0.0, "c")
    no_reducer = JobRun(spec, [], lambda r: b"")
    no_reducer.settle_error(REDUCE_INDEX, error)  # a job without a reduce: nothing to fail


def test_closing_a_run_early_releases_its_bar_once() -> None:
    """A job cancelled or abandoned before its tasks settle is closed with its bar open."""
    bar = tqdm.tqdm(total=2, file=io.StringIO(), disable=False)
    spec = JobSpec("collect", "map", "f", 2, 1, TaskOptions(), "3.11", {}, 0.0, "c")
    futures = [Future("collect", i, None) for i in range(2)]  # type: ignore[arg-type]
    job = JobRun(spec, futures, lambda r: r.value or b"", progress=bar)
    job.close()
    assert job.progress is None and job.done.is_set() and job.stored.is_set()
    job.close()  # a backend's finally after its own close: nothing left to release
    job.deliver(record(0, SUCCEEDED, 0))  # a late record reaches its future, not the bar
    assert futures[0].result(timeout=0) == 0


def test_an_unstored_task_is_one_failure_and_finishes_nothing_early() -> None:
    spec = JobSpec("collect", "map", "f", 3, 1, TaskOptions(), "3.11", {}, 0.0, "c")
    futures = [Future("collect", i, None) for i in range(3)]  # type: ignore[arg-type]
    job = JobRun(spec, futures, lambda r: r.value or b"")
    # The caller cancelled task 2 and the backend dropped it: its error has nowhere to go.
    assert futures[2].cancel() and futures[2].claim() == "cancelled"
    job.settle_error(0, StoreError("full"))
    job.settle_error(2, StoreError("full"))
    assert futures[2].cancelled()
    assert job.counts[FAILED] == 2 and job.open_tasks() == [1]
    assert not job.done.is_set(), "task 1 is still open"
    streaming, _ = streaming_job(1)
    streaming.settle_error(0, StoreError("full"))
    assert not streaming.done.is_set(), "a streaming run's input is not exhausted yet"


# -- packed chunks: one task, one record, one future for several calls (fanout.packing) -----


def test_a_packed_chunk_is_one_record_and_each_call_keeps_its_outcome(store: LocalStore
                                                                       ) -> None:
    spec, manifest = make_packed_job(store, counted, list(range(7)), pack=3)
    assert spec.n_tasks == 3 and packing.element_count(store, spec) == 7
    stored = [r for chunk in manifest for r in run(store, chunk)]
    assert ran(stored) == list(range(7))
    assert [r.task_index for r in store.results(spec.job_id)] == [0, 1, 2]
    assert [r.status for r in stored] == [SUCCEEDED, FAILED, SUCCEEDED]
    assert [(r.extra[packing.ELEMENTS], r.extra[packing.FAILURES]) for r in stored] == [
        (3, 0), (3, 2), (1, 0)]
    # the chunk's record carries its first failure, as a task's record would
    assert stored[1].exc_type == "builtins.ValueError"
    assert stored[1].exc_message == "task 3 is bad"
    assert "ran 3\nerr 3" not in (stored[1].stdout or "")  # stderr is kept apart
    assert stored[1].stdout == "ran 3\nran 4\nran 5\nout 5\n"  # its calls' output

    job = follow(spec, store, stored)
    assert job.done.is_set() and job.map_finished
    chunk = job.future(1).result(timeout=0)
    assert isinstance(chunk, packing.PackOutcome) and len(chunk) == 3
    assert chunk.values == [None, None, 50] and sorted(chunk.failures) == [0, 1]
    futures = unrolled(job, spec, store)
    assert [f.task_index for f in futures] == list(range(7))
    assert {f.job_id for f in futures} == {spec.job_id}
    # a call's output is its chunk's: calls 3-5 are chunk 1
    assert [futures[i].logs("stdout") for i in (2, 5)] == [stored[0].stdout, stored[1].stdout]
    assert [futures[i].result(timeout=0) for i in (0, 1, 2, 5, 6)] == [0, 10, 20, 50, 60]
    exc = futures[3].exception(timeout=0)
    assert type(exc) is ValueError and str(exc) == "task 3 is bad"
    assert isinstance(exc.__cause__, RemoteTraceback) and "in work" in str(exc.__cause__)
    assert "run_pack" not in str(exc.__cause__)  # fanout's own frames are left out
    remote = futures[4].exception(timeout=0)
    assert isinstance(remote, RemoteError) and "4: no" in str(remote)
    assert isinstance(remote.__cause__, RemoteTraceback)
    per_call = packing.element_records(store.results(spec.job_id), 3, store.load_value)
    assert [(r.task_index, r.status) for r in per_call] == [
        (i, FAILED if i in (3, 4) else SUCCEEDED) for i in range(7)]
    # a call's record is the one it would have as a task of its own: the success beside
    # two failures carries no exception, the failures their own
    assert [serialization.loads(store.load_value(r)) for r in per_call
            if r.status == SUCCEEDED] == [0, 10, 20, 50, 60]
    assert all((r.exc_type, r.exc_message, r.traceback, r.exc_pickle, r.value_ref, r.extra)
               == (None, None, None, None, None, {}) for r in per_call if r.status == SUCCEEDED)
    assert [(r.exc_type, r.exc_message, r.value) for r in per_call if r.status == FAILED] == [
        ("builtins.ValueError", "task 3 is bad", None),
        (f"{__name__}.Unpicklable", "4: no", None)]
    assert "in work" in (per_call[4].traceback or "") and per_call[4].exc_pickle is None
    assert packing.final_counts(stored, 3, 7) == {SUCCEEDED: 5, FAILED: 2}


@pytest.mark.parametrize("limit", [None, 64], ids=["in-record", "blob"])
def test_a_packed_retry_reruns_only_the_calls_that_failed(
        store: LocalStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        limit: int | None) -> None:
    monkeypatch.setenv("FAIL_ONCE_DIR", str(tmp_path))
    if limit is not None:  # the chunk's outcomes in a value blob, not in its record
        store.max_record_value_bytes = limit
    spec, manifest = make_packed_job(store, counted, [5, 6, 7, 8, 9, 10], pack=3)
    first = [r for chunk in manifest for r in run(store, chunk)]
    assert [r.status for r in first] == [FAILED, SUCCEEDED]
    assert first[0].exc_type == "builtins.KeyError"
    assert ran(first) == [5, 6, 7, 8, 9, 10]
    again = retry_plan(manifest, store.results(spec.job_id))
    assert [t.index for chunk in again for t in chunk.tasks] == [0]
    second = [r for chunk in again for r in run(store, chunk, worker="w-2")]
    assert ran(second) == [6, 7]  # call 5 succeeded on attempt 1: its value stands
    assert [(r.task_index, r.status, r.attempt) for r in second] == [(0, SUCCEEDED, 2)]
    assert (first[0].value_ref is not None) is (limit is not None)
    futures = unrolled(follow(spec, store, store.results(spec.job_id)), spec, store)
    assert [f.result(timeout=0) for f in futures] == [50, 60, 70, 80, 90, 100]


def test_a_packed_call_draws_what_it_would_draw_as_a_task(store: LocalStore) -> None:
    """Seeds and global RNGs per call, however the calls are packed (fanout.packing)."""
    _, alone = make_job(store, draws, list(range(7)), chunksize=7)
    single = {r.task_index: serialization.loads(store.load_value(r)) for r in run(store, alone[0])}
    assert len({v[0] for v in single.values()}) == 7
    assert len({v[1:3] for v in single.values()}) == 7
    for pack in (2, 3):
        spec, manifest = make_packed_job(store, draws, list(range(7)), pack=pack)
        job = follow(spec, store, [r for chunk in manifest for r in run(store, chunk)])
        packed = [f.result(timeout=0) for f in unrolled(job, spec, store)]
        assert packed == [single[i] for i in range(7)], f"pack={pack}"
    # the global RNGs are the module's own again once the chunk is done
    assert random.random.__self__ is random._inst  # type: ignore[attr-defined]
    assert numpy.random.random.__self__ is numpy.random.mtrand._rand  # type: ignore[attr-defined]


@pytest.mark.parametrize("pack", [0, 2], ids=["tasks", "packed"])
def test_a_call_reads_its_input_futures_and_its_initializers_globals(store: LocalStore,
                                                                     pack: int) -> None:
    upstream, up_manifest = make_job(store, work, [7])
    run(store, up_manifest[0])
    source = Future(upstream.job_id, 0, store)  # type: ignore[arg-type]
    items: list[Any] = [source, 1, 2, 3]
    initializer = serialization.dumps_initializer(set_state, (1000, uuid.uuid4().hex))
    if pack:
        spec, manifest = make_packed_job(store, stateful, items, pack=pack,
                                         initializer=initializer)
    else:
        job_id = "tasks-stateful"
        store.write_object(job_id, "function.pkl", serialization.dumps_function(stateful))
        with store.open_payload(job_id, "payload-0.bin") as out:
            refs = write_payload(out, [dumps_call((x,), {}, store)[0] for x in items], 42)
        spec, manifest = plan_job(job_id, "map", "stateful", refs,
                                  TaskOptions(chunksize=4, initializer=initializer), 42)
        store.create_job(spec, manifest, None)
    assert len(manifest) == 1  # one worker runs them all, in order
    job = follow(spec, store, run(store, manifest[0]))
    futures = unrolled(job, spec, store) if pack else [job.future(i) for i in range(4)]
    # the initializer's globals are shared once per loaded function, so the calls'
    # own counter keeps counting across the job's tasks (the stdlib's worker globals)
    assert [f.result(timeout=0) for f in futures] == [(1070, 1), (1001, 2), (1002, 3),
                                                     (1003, 4)]


def test_a_packed_call_interrupted_is_its_failure_unless_the_caller_pressed_ctrl_c(
        store: LocalStore) -> None:
    _, manifest = make_packed_job(store, interrupted, [0, 1, 2], pack=3)
    [record] = run(store, manifest[0])
    assert record.exc_type == "builtins.KeyboardInterrupt"
    assert record.extra == {packing.ELEMENTS: 3, packing.FAILURES: 1}
    # the inline backend runs chunks in the caller's thread: Ctrl-C stops the map there
    inline = WorkerRuntime(store, "w-inline")
    inline.interruptible = True
    with pytest.raises(KeyboardInterrupt):
        inline.run_chunk(replace(manifest[0], attempt=2))
    # ...and any other exception is still the one call's (or task's) outcome
    _, manifest = make_packed_job(store, work, [2, 3, 5], pack=3)
    told: list[ResultRecord] = []
    inline.run_chunk(manifest[0], on_result=told.append)
    assert [(r.status, r.extra) for r in told] == [
        (FAILED, {packing.ELEMENTS: 3, packing.FAILURES: 1})]
    _, manifest = make_job(store, work, [3, 5])
    told = []
    inline.run_chunk(manifest[0], on_result=told.append)
    assert [(r.status, r.exc_type) for r in told] == [
        (FAILED, "builtins.ValueError"), (SUCCEEDED, None)]


@pytest.mark.parametrize("pack", [0, 2], ids=["task", "packed"])
def test_a_value_blob_that_cannot_be_written_fails_the_task_with_that_error(
        store: LocalStore, pack: int) -> None:
    """A result too large for its record goes to a blob; when that write fails (here the
    blob directory's place is taken by a file) the task's record says so, and a packed
    chunk's record is a loss for each of its calls, not outcomes it does not hold."""
    store.max_record_value_bytes = 10
    spec, manifest = (make_packed_job(store, big, [0, 1], pack=pack) if pack
                      else make_job(store, big, [0, 1]))
    store.job_dir(spec.job_id).mkdir(parents=True, exist_ok=True)
    (store.job_dir(spec.job_id) / "values").write_bytes(b"not a directory")
    stored = run(store, manifest[0])
    # the store names itself and the disk: a StoreError
    assert {(r.status, r.exc_type) for r in stored} == {(FAILED, "fanout.errors.StoreError")}
    assert all(r.value is None and r.value_ref is None for r in stored)
    if pack:
        assert packing.ELEMENTS not in stored[0].extra
        job = follow(spec, store, stored)
        assert [type(f.exception(timeout=0)) for f in unrolled(job, spec, store)] == [
            StoreError] * 2


def test_a_packed_call_resumes_from_its_own_checkpoint(store: LocalStore) -> None:
    spec, manifest = make_packed_job(store, resuming, [1, 2, 3], pack=3)
    [first] = run(store, manifest[0])
    assert first.extra == {packing.ELEMENTS: 3, packing.FAILURES: 3}
    [again] = run(store, retry_plan(manifest, [first])[0], worker="w-2")
    assert (again.status, again.attempt) == (SUCCEEDED, 2)
    futures = unrolled(follow(spec, store, [again]), spec, store)
    assert [f.result(timeout=0) for f in futures] == [100, 200, 300]


def test_a_packed_call_whose_result_cannot_be_pickled_fails_alone(store: LocalStore) -> None:
    spec, manifest = make_packed_job(store, lock_at_one, [0, 1, 2], pack=3)
    [record] = run(store, manifest[0])
    assert record.status == FAILED and record.exc_type == "fanout.errors.SerializationError"
    assert record.extra == {packing.ELEMENTS: 3, packing.FAILURES: 1}
    futures = unrolled(follow(spec, store, [record]), spec, store)
    assert futures[0].result(timeout=0) == 0 and futures[2].result(timeout=0) == 2
    exc = futures[1].exception(timeout=0)
    assert isinstance(exc, SerializationError) and "_thread.lock" in str(exc)


def test_a_packed_chunk_whose_outcomes_cannot_load_here_fails_its_calls(store: LocalStore
                                                                        ) -> None:
    spec, manifest = make_packed_job(store, work, [0, 1], pack=2)
    [record] = run(store, manifest[0])
    futures = [Future(spec.job_id, 0, store)]  # type: ignore[arg-type]
    job = JobRun(spec, futures, lambda r: b"not a pickle")
    job.deliver(record)
    exc = job.future(0).exception(timeout=0)
    assert isinstance(exc, SerializationError) and "cannot be unpickled" in str(exc)
    assert str(exc).endswith("Import the modules that define the results' types here.")
    calls = unrolled(job, spec, store)
    assert [type(f.exception(timeout=0)) for f in calls] == [SerializationError] * 2


def test_a_packed_chunk_lost_as_a_whole_fails_each_call_with_that_error(store: LocalStore
                                                                         ) -> None:
    """A worker that died mid-chunk leaves no outcomes: the chunk's record is the loss."""
    spec, _ = make_packed_job(store, work, [0, 1, 2], pack=3)
    lost = records.lost(spec.job_id, 0, 1, WorkerLost("the worker died"))
    assert lost.value is None and lost.value_ref is None
    job = follow(spec, store, [lost])
    calls = unrolled(job, spec, store)
    assert [type(f.exception(timeout=0)) for f in calls] == [WorkerLost] * 3
    assert packing.final_counts([lost], 3, 3) == {FAILED: 3}


@pytest.mark.parametrize("chunk", ["outcomes", "lost"])
def test_a_calls_future_settled_before_its_chunk_keeps_that_and_the_rest_still_settle(
        store: LocalStore, chunk: str) -> None:
    """A call's future can be done before its chunk's callback reaches it: cancelled by its
    user, or settled by the map's iterator, which yields a call (and settles its future)
    as soon as the chunk's future wakes it, before that callback may have run. It keeps
    what it has, and the calls after it still get their own outcomes."""
    spec, manifest = make_packed_job(store, work, [0, 1, 2], pack=3)
    job = follow(spec, store, [])
    calls = unrolled(job, spec, store)
    assert not any(f.done() for f in calls)
    assert calls[0].cancel()
    calls[1].set_result("settled first")
    if chunk == "outcomes":
        run(store, manifest[0])
        delivered = store.results(spec.job_id)
    else:
        delivered = [records.lost(spec.job_id, 0, 1, WorkerLost("the worker died"))]
    for record in delivered:
        job.deliver(record)
    assert calls[0].cancelled()
    assert calls[1].result(timeout=0) == "settled first"
    if chunk == "outcomes":
        assert calls[2].result(timeout=0) == 20
    else:
        assert type(calls[2].exception(timeout=0)) is WorkerLost


def test_an_exception_the_traceback_module_cannot_format_still_names_itself(
        store: LocalStore) -> None:
    _, manifest = make_job(store, broken_notes, [1])
    [stored] = run(store, manifest[0])
    assert stored.status == FAILED and stored.exc_type == f"{__name__}.BrokenNotes"
    assert stored.exc_message == "task 1 failed"
    assert stored.traceback == "BrokenNotes: task 1 failed\n"  # the type and message, at least
