"""ProcessPoolExecutor's documented behaviours, checked on fanout.Executor (issue 9).

Each test names the stdlib behaviour it ports: most come from CPython 3.11's
``Lib/test/test_concurrent_futures.py`` (the test named in the docstring), the rest from the
``concurrent.futures`` documentation. The inline backend's tests check that the serial
path gives what the parallel ones give.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fanout
from fanout.testing import emulated_aws

from conftest import default_sigint, eventually

TESTS = Path(__file__).parent


# -- task functions (pickled by value: this module is not installed) -----------------------

_initialized: list[str] = []


def remember_init(directory: str, tag: str) -> None:
    """An initializer: leaves one file per run, so the test counts runs per process."""
    _initialized.append(tag)
    Path(directory, f"init-{os.getpid()}-{len(_initialized)}").touch()


def init_state(_: object) -> tuple[int, list[str]]:
    time.sleep(0.01)
    return os.getpid(), list(_initialized)


def failing_init() -> None:
    raise ValueError("no database here")


def slow_init(seconds: float) -> None:
    time.sleep(seconds)  # a setup (a model, a connection) slower than one task's timeout


def flaky_init(marker: str) -> None:
    """Fails the first time only: a transient error (a database still starting)."""
    if not os.path.exists(marker):
        Path(marker).touch()
        raise ValueError("database not up yet")


counter = 0


def start_counter(start: int) -> None:
    global counter
    counter = start


def count_calls(_: object) -> int:
    """Rebinds a module global, as a lazily built cache does."""
    global counter
    counter += 1
    return counter


def pid_of(_: object) -> int:
    return os.getpid()


class Dummy:
    """``make_dummy_object`` of the stdlib test: a result that can be weakly referenced."""


def make_dummy_object(_: object) -> Dummy:
    return Dummy()


class MyObject:
    def my_method(self) -> None:
        pass


def returns_lock(_: object) -> threading.Lock:
    return threading.Lock()


def draw(i: int) -> tuple[int, int, list[float], float]:
    """What a seeded simulation uses: the task seed, its RNG, the global random module."""
    fanout.checkpoint(i)
    print(f"task {i}")
    return i, fanout.task_seed(), fanout.task_rng().random(3).tolist(), random.random()


# -- 1. the signature and keywords of the stdlib ---------------------------------------------


def test_max_workers_is_the_first_positional_parameter(home: Path) -> None:
    """ProcessPoolExecutor(max_workers): the stdlib tests write ``executor_type(4)``."""
    with fanout.Executor(3, progress=False) as ex:
        assert ex.backend.max_workers == 3  # type: ignore[attr-defined]
        assert ex.submit(pid_of, 0).result(timeout=60) != os.getpid()
    with pytest.raises(TypeError, match=r"Executor\(backend='aws'\)"):
        fanout.Executor("aws")  # type: ignore[arg-type]


def test_initializer_runs_once_in_each_worker_before_its_tasks(home: Path,
                                                                tmp_path: Path) -> None:
    """test_initializer (InitializerMixin): initializer(*initargs) ran in every worker."""
    marks = tmp_path / "marks"
    marks.mkdir()
    with fanout.Executor(2, None, remember_init, (str(marks), "ready"),
                         progress=False) as ex:
        results = list(ex.map(init_state, range(40)))
        results += [f.result(timeout=60) for f in [ex.submit(init_state, 0) for _ in range(5)]]
    pids = {pid for pid, _ in results}
    assert all(state == ["ready"] for _, state in results)  # once, before the first task
    runs = sorted(p.name for p in marks.iterdir())
    assert sorted(f"init-{pid}-1" for pid in pids) == runs  # exactly once per process


def test_initializer_that_raises_fails_that_workers_tasks(home: Path) -> None:
    """test_initializer (FailingInitializerMixin): the stdlib breaks the pool; fanout fails
    each task of that worker with the initializer's own error (docs/design.md says why)."""
    with fanout.Executor(1, initializer=failing_init, progress=False) as ex:
        futures = [ex.submit(pid_of, i) for i in range(3)]
        for future in futures:
            with pytest.raises(ValueError, match="no database here") as info:
                future.result(timeout=60)
            assert any("initializer" in note for note in info.value.__notes__)


def test_initializer_runs_outside_the_first_tasks_timeout(home: Path) -> None:
    """A setup slower than timeout= is not the first task overrunning, nor every task's."""
    with fanout.Executor(backend="inline", initializer=slow_init, initargs=(0.6,), timeout=0.3,
                         progress=False) as ex:
        assert list(ex.map(pid_of, range(4))) == [os.getpid()] * 4


def test_a_failed_initializer_is_retried_by_the_next_job(home: Path, tmp_path: Path) -> None:
    """A transient failure fails that job's tasks here, each with a fresh exception chained
    to the initializer's; it does not poison the process (a warm Lambda) for later jobs."""
    with fanout.Executor(backend="inline", initializer=flaky_init,
                         initargs=(str(tmp_path / "tried"),), progress=False) as ex:
        errors = [f.exception() for f in ex.map(pid_of, range(2)).futures]
        assert list(ex.map(pid_of, range(2))) == [os.getpid()] * 2  # retried, and ran
    for error in errors:
        assert isinstance(error, ValueError)  # ``except ValueError`` still catches it
        remote = str(error.__cause__)  # the worker's traceback, as the stdlib chains it
        assert "database not up yet" in remote and "direct cause" in remote
        assert any("flaky_init" in note for note in error.__notes__)
    # A fresh exception per task: the second task's traceback did not grow on the first's.
    first, second = errors
    assert first is not None and second is not None
    assert str(first.__cause__) == str(second.__cause__)


def test_initializer_globals_do_not_undo_what_tasks_rebind(home: Path) -> None:
    """ProcessPoolExecutor on one worker gives 1, 2, 3...: the task's global counter keeps
    counting; the initializer's globals are shared once, not before every task."""
    # One local worker: the task and initializer arrive by value there, as from a script.
    with fanout.Executor(1, initializer=start_counter, initargs=(100,), progress=False) as ex:
        assert list(ex.map(count_calls, range(5))) == [101, 102, 103, 104, 105]


def test_initializer_must_be_callable_and_initargs_picklable(home: Path) -> None:
    with pytest.raises(TypeError, match="initializer must be a callable"):
        fanout.Executor(initializer=42)  # type: ignore[arg-type]
    with pytest.raises(pickle.PicklingError, match="initargs"):
        fanout.Executor(initializer=remember_init, initargs=(threading.Lock(), "x"))


def test_max_tasks_per_child_replaces_the_worker(home: Path) -> None:
    """test_max_tasks_per_child: a worker is replaced after that many tasks."""
    with fanout.Executor(1, max_tasks_per_child=3, progress=False) as ex:
        pids = [ex.submit(pid_of, i).result(timeout=60) for i in range(7)]
        mapped = list(ex.options(chunksize=4).map(pid_of, range(6)))
        # map's own chunksize: a chunk is one task (one work item, as in the stdlib).
        packed = list(ex.map(pid_of, range(12), chunksize=4))
    assert pids[0] == pids[1] == pids[2] != pids[3] == pids[4] == pids[5] != pids[6]
    # The seventh task's worker has two tasks left; chunks of 4 are split to fit.
    assert mapped[0] == mapped[1] == pids[6] != mapped[2] == mapped[3] == mapped[4] != mapped[5]
    # mapped[5]'s worker has two tasks left: the first two chunks, then a new worker.
    assert packed[:8] == [mapped[5]] * 8 and packed[8:] == [packed[8]] * 4 != packed[:4]


def test_max_tasks_per_child_validation(home: Path) -> None:
    """test_max_tasks_per_child_defaults / ProcessPoolExecutor's ValueError for < 1."""
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
        fanout.Executor(max_tasks_per_child=0)
    with pytest.raises(fanout.ConfigurationError, match="recycles local worker processes"):
        fanout.Executor(max_tasks_per_child=2, backend="inline")


def test_mp_context_accepted_where_it_means_something(home: Path) -> None:
    """ProcessPoolExecutor(mp_context=...): fanout's local workers are fresh interpreters."""
    for method in ("spawn", "forkserver"):
        with fanout.Executor(1, multiprocessing.get_context(method), progress=False) as ex:
            assert ex.submit(pid_of, 0).result(timeout=60) != os.getpid()
    with pytest.raises(fanout.ConfigurationError, match="inherit nothing"):
        fanout.Executor(1, multiprocessing.get_context("fork"))
    with pytest.raises(fanout.ConfigurationError, match="means nothing on backend 'inline'"):
        fanout.Executor(1, multiprocessing.get_context("spawn"), backend="inline")


# -- 2. maps and the function cache hold no references -------------------------------------


def _freed(ref: weakref.ref[Any]) -> bool:
    if ref() is None:  # freed by its reference count: no full collection needed
        return True
    gc.collect()
    return ref() is None


def test_free_reference(ex: fanout.Executor) -> None:
    """test_free_reference (issue #14406): a result map yielded is not kept alive."""
    for obj in ex.map(make_dummy_object, range(10)):
        ref = weakref.ref(obj)
        del obj
        eventually(lambda r=ref: _freed(r), what="the yielded result to be freed")  # type: ignore[misc]


def test_free_reference_with_chunks(ex: fanout.Executor) -> None:
    """test_free_reference, with ``chunksize``: the stdlib's map pops each result from its
    chunk's list as it yields it. fanout's packed chunk must not keep a yielded result
    alive either: not in the chunk's outcome, nor in the per-call futures ``futures``
    made before (the window's futures, asked for first, as a caller may)."""
    results = ex.map(make_dummy_object, range(12), chunksize=4)
    assert len(results.futures) == 12
    for obj in results:
        ref = weakref.ref(obj)
        del obj
        eventually(lambda r=ref: _freed(r), what="the yielded result to be freed")  # type: ignore[misc]


def test_no_stale_references(ex: fanout.Executor) -> None:
    """test_no_stale_references (issue #16284): a submitted bound method's object is freed."""
    my_object = MyObject()
    collected = threading.Event()
    ref = weakref.ref(my_object, lambda _: collected.set())
    ex.submit(my_object.my_method).result(timeout=60)
    del my_object
    eventually(lambda: _freed(ref), what="the bound method's object to be freed")
    assert collected.is_set()


# -- 3. the stdlib's exception types and shutdown semantics --------------------------------


def test_unpicklable_argument_raises_pickling_error_from_submit(ex: fanout.Executor) -> None:
    """ProcessPoolExecutor fails a call whose arguments cannot be pickled with PicklingError."""
    with pytest.raises(pickle.PicklingError, match="argument 0"):
        ex.submit(pid_of, threading.Lock())


def test_unpicklable_result_fails_its_future_with_pickling_error(ex: fanout.Executor) -> None:
    """ProcessPoolExecutor sets a PicklingError on the future of an unpicklable result."""
    futures = [ex.submit(returns_lock, i) for i in range(2)]
    for future in futures:
        error = future.exception(timeout=60)
        assert isinstance(error, pickle.PicklingError), error
        assert "cannot be pickled" in str(error)


def test_cancel_futures(home: Path) -> None:
    """test_cancel_futures (ExecutorShutdownTest): some submitted calls are cancelled, and
    the ones already handed to workers (max_workers + 1) finish without error."""
    ex = fanout.Executor(2, progress=False)
    futures = [ex.submit(time.sleep, 0.1) for _ in range(50)]
    ex.shutdown(cancel_futures=True)
    cancelled = [f for f in futures if f.cancelled()]
    others = [f for f in futures if not f.cancelled()]
    assert len(cancelled) > 20
    assert 0 < len(others) <= 3 + 2  # max_workers + 1 handed over, plus the running ones
    for future in others:
        assert future.done() and future.exception() is None
    jobs = {f.job_id for f in futures}
    assert {info.state for info in ex.backend.list_jobs() if info.job_id in jobs} <= {
        "finished", "cancelled"}  # every job of those calls reached its end in the store


def test_future_repr_is_the_stdlibs(ex: fanout.Executor) -> None:
    """test_repr (FutureTests): the stdlib's patterns match fanout's futures exactly."""
    done = ex.submit(pid_of, 0)
    done.result(timeout=60)
    assert re.fullmatch(r"<Future at 0x[0-9a-f]+ state=finished returned int>", repr(done))
    failed = ex.submit(returns_lock, 0)
    failed.exception(timeout=60)
    assert re.fullmatch(r"<Future at 0x[0-9a-f]+ state=finished raised SerializationError>",
                        repr(failed))


# -- 4. the inline backend --------------------------------------------------------------------


@pytest.fixture
def inline(home: Path) -> Iterator[fanout.Executor]:
    with fanout.Executor(backend="inline", seed=7, progress=False) as ex:
        yield ex


def test_inline_runs_in_the_calling_process_in_submission_order(
        inline: fanout.Executor, capsys: pytest.CaptureFixture[str]) -> None:
    futures = [inline.submit(pid_of, i) for i in range(3)]
    assert all(f.done() for f in futures)  # ran during submit, in order
    assert {f.result() for f in futures} == {os.getpid()}
    results = list(inline.map(draw, range(4)))
    assert [r[0] for r in results] == [0, 1, 2, 3]
    assert capsys.readouterr().out == "task 0\ntask 1\ntask 2\ntask 3\n"  # at the terminal
    job = fanout.Job.attach(inline.map(draw, [9]).job_id, backend="inline")
    assert [r.stdout for r in job.records()] == ["task 9\n"]  # and in the record
    assert job.info.state == "finished"


def test_same_results_inline_local_and_on_aws(home: Path, tmp_path: Path) -> None:
    """The same seeded script gives bit-identical results on every backend."""
    def run(**options: object) -> list[object]:
        with fanout.Executor(seed=11, progress=False, **options) as ex:  # type: ignore[arg-type]
            mapped = list(ex.map(draw, range(12), chunksize=5))
            submitted = [f.result(timeout=120) for f in [ex.submit(draw, i) for i in range(3)]]
            return [mapped, submitted]

    inline = run(backend="inline")
    assert inline == run(max_workers=2)
    marks = tmp_path / "marks"
    marks.mkdir()
    with emulated_aws() as aws:
        assert inline == run(backend="aws", **aws.backend_options)
        # The initializer reaches AWS workers too, through the same runtime.
        with fanout.Executor(None, None, remember_init, (str(marks), "ready"), backend="aws",
                             progress=False, **aws.backend_options) as ex:
            states = [state for _, state in ex.map(init_state, range(6))]
    assert states == [["ready"]] * 6 and any(marks.iterdir())


def test_task_seed_outside_a_task_points_to_inline() -> None:
    for call in (fanout.task_seed, fanout.task_rng):
        with pytest.raises(RuntimeError, match='backend="inline"'):
            call()


def test_breakpoint_in_an_inline_task_opens_pdb(tmp_path: Path) -> None:
    """pdb reads the real stdin and writes to the terminal while the task's output is kept."""
    script = tmp_path / "debug_me.py"
    script.write_text(textwrap.dedent("""
        import fanout

        def task(x):
            secret = x * 6
            breakpoint()
            return secret

        if __name__ == "__main__":
            with fanout.Executor(backend="inline", progress=False) as ex:
                print("result", list(ex.map(task, [7])))
    """))
    env = {**os.environ, "FANOUT_HOME": str(tmp_path / "home"), "PYTHONBREAKPOINT": ""}
    env.pop("FANOUT_BACKEND", None)
    done = subprocess.run([sys.executable, str(script)], input="p secret + 1000\nc\n",
                          capture_output=True, text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "(Pdb)" in done.stdout and "1042" in done.stdout
    assert "result [42]" in done.stdout


def test_ctrl_c_stops_an_inline_job_and_cancels_the_rest(tmp_path: Path) -> None:
    """Ctrl-C during an inline task stops the caller now: later tasks never run, they are
    recorded as cancelled, the job too, and KeyboardInterrupt reaches the caller."""
    marks = tmp_path / "marks"
    marks.mkdir()
    script = tmp_path / "interrupt_me.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from pathlib import Path
        import fanout

        def task(i):
            Path({str(marks)!r}, f"started-{{i}}").touch()
            time.sleep(0.5)
            Path({str(marks)!r}, f"done-{{i}}").touch()
            return i

        if __name__ == "__main__":
            with fanout.Executor(backend="inline", progress=False) as ex:
                print(list(ex.map(task, range(8))))
    """))
    home = tmp_path / "home"
    env = {**os.environ, "FANOUT_HOME": str(home)}
    env.pop("FANOUT_BACKEND", None)
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        eventually(lambda: (marks / "started-0").exists() or proc.poll() is not None,
                   timeout=60, what="the first task to start")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in err and out == "", err  # map never returned
    assert proc.returncode == -signal.SIGINT  # Python's exit on an uncaught Ctrl-C
    started = sorted(int(p.name.split("-")[1]) for p in marks.glob("started-*"))
    interrupted = started[-1]
    assert started == list(range(interrupted + 1)) and interrupted < 7  # the rest never ran
    from fanout.backends.local.store import LocalStore
    (row,) = LocalStore(str(home)).jobs()
    job = fanout.Job.attach(row.job_id, backend="inline", home=str(home))
    records = job.records()
    assert [r.status for r in records[interrupted + 1:]] == ["cancelled"] * (7 - interrupted)
    assert records[interrupted].exc_type == "builtins.KeyboardInterrupt"
    assert job.info.state == "cancelled"
