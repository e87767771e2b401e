"""joblib's "fanout" backend: scikit-learn's n_jobs fans out as fanout tasks, on every backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import joblib
import numpy as np
import pytest
from joblib import Parallel, delayed

import fanout
from fanout.backends import create_backend
from fanout.protocol import SUCCEEDED
from fanout.testing import EmulatedAws

import tasks

sklearn = pytest.importorskip("sklearn")


def _fanout_jobs(home: Path) -> list[fanout.Job]:
    backend = create_backend("local", home=str(home))
    try:
        return [fanout.Job.attach(info.job_id, "local", home=str(home))
                for info in backend.list_jobs(1000)]
    finally:
        backend.shutdown(wait=True)


def _grid_search(**config: object) -> dict[str, np.ndarray]:
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_iris(return_X_y=True)
    search = GridSearchCV(SVC(), {"C": [0.1, 1.0, 10.0], "gamma": [0.01, 0.1, 1.0]}, cv=5)
    if config:
        with joblib.parallel_config(**config):
            search.fit(X, y)
    else:
        search.set_params(n_jobs=1).fit(X, y)
    return search.cv_results_  # type: ignore[no-any-return]


def test_grid_search_on_fanout_scores_as_on_one_process(home: Path) -> None:
    expected = _grid_search()
    got = _grid_search(backend="fanout", n_jobs=2)
    score_keys = [k for k in expected if k.endswith("_test_score")]
    assert len(score_keys) >= 7  # split0..4, mean, std, rank
    for key in score_keys:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert list(got["params"]) == list(expected["params"])
    # ...and the fits really ran as fanout tasks: one stored record per batch, by a worker.
    jobs = _fanout_jobs(home)
    records = [r for job in jobs for r in job.records()]
    assert records and all(r.status == SUCCEEDED and r.worker_id for r in records)
    fits = sum(len(batch) for job in jobs for batch in job.results())
    assert fits == 9 * 5  # every (candidate, fold) fit, once


def test_parallel_backend_and_task_options_pass_through(home: Path) -> None:
    with joblib.parallel_backend("fanout", n_jobs=2, timeout=120, memory_mb=512, retries=1,
                                 tier="lambda", seed=7):
        squares = Parallel()(delayed(tasks.square)(i) for i in range(25))
    assert squares == [i * i for i in range(25)]
    jobs = _fanout_jobs(home)
    assert jobs
    for job in jobs:
        options = job.info.spec.options
        assert (options.timeout, options.memory_mb, options.retries, options.tier,
                options.seed) == (120, 512, 1, "lambda", 7)


def test_a_failing_call_raises_its_own_exception_and_cancels_the_rest(home: Path) -> None:
    with joblib.parallel_config(backend="fanout", n_jobs=2), \
            pytest.raises(ValueError, match="task 3 is bad") as caught:
        Parallel(batch_size=1)(delayed(tasks.fail_if)(i, 3) for i in range(200))
    assert "fail_if" in str(caught.value.__cause__)  # the remote traceback comes along
    records = [r for job in _fanout_jobs(home) for r in job.records()]
    assert len(records) < 200  # abort_everything: Parallel stopped dispatching, rest cancelled


def test_an_existing_executor_is_used_and_left_open(ex: fanout.Executor) -> None:
    with joblib.parallel_config(backend="fanout", executor=ex, n_jobs=2):
        assert Parallel()(delayed(tasks.add)(i, 1) for i in range(10)) == list(range(1, 11))
    assert ex.submit(tasks.square, 4).result(timeout=60) == 16


def _nested(n: int) -> list[int]:
    # Runs in a task: the inner Parallel stays inside it (sequential, same process).
    return Parallel(n_jobs=4)(delayed(os.getpid)() for _ in range(n))  # type: ignore[no-any-return]


def test_nested_parallel_runs_inside_the_task(home: Path) -> None:
    with joblib.parallel_config(backend="fanout", n_jobs=2):
        inner = Parallel()(delayed(_nested)(3) for _ in range(4))
    for pids in inner:
        assert len(set(pids)) == 1 and pids[0] != os.getpid()


@pytest.mark.parametrize(("option", "message"), [
    ({"tier": "gpu"}, "tier must be one of"),
    ({"memory_mb": 64}, "memory_mb must be between"),
    ({"executor": "local"}, "executor must be a fanout.Executor"),
])
def test_bad_options_fail_at_parallel_config(home: Path, option: dict[str, object],
                                             message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=message):
        joblib.parallel_config(backend="fanout", **option)


def test_import_fanout_neither_needs_nor_imports_joblib(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "import fanout\n"
        "assert 'joblib' not in sys.modules, 'import fanout imported joblib'\n"
        "import joblib.parallel\n"
        "assert 'fanout' in joblib.parallel.BACKENDS, 'not registered on import'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.stdout.strip() == "ok", done.stderr
    absent = ("import sys\nsys.modules['joblib'] = None  # as if not installed\n"
              "import fanout\nprint(fanout.Executor.__name__)\n")
    done = subprocess.run([sys.executable, "-c", absent], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.stdout.strip() == "Executor", done.stderr


@pytest.fixture(scope="module")
def aws(offline_aws: EmulatedAws) -> EmulatedAws:
    return offline_aws


def test_parallel_on_the_emulated_aws_backend(aws: EmulatedAws) -> None:
    invokes = aws.requests[("stepfunctions", "lambda", "Invoke")]
    with joblib.parallel_config(backend="fanout", n_jobs=4, fanout_backend="aws",
                                tier="lambda", memory_mb=256, **aws.backend_options):
        got = Parallel()(delayed(tasks.square)(i) for i in range(12))
    assert got == [i * i for i in range(12)]
    assert aws.requests[("stepfunctions", "lambda", "Invoke")] > invokes  # ran on "Lambda"
