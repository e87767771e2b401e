"""The task protocol's records and payloads, captured output, and the progress bar."""

from __future__ import annotations

import itertools
import json
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fanout
from fanout import serialization
from fanout.backends.local.store import LocalStore
from fanout.protocol import LOG_TAIL_BYTES, SUCCEEDED, JobSpec, ResultRecord
from fanout.runtime import WorkerRuntime

import tasks


def test_a_job_is_one_function_object_and_one_payload_object(ex: fanout.Executor) -> None:
    results = ex.options(chunksize=8).map(tasks.add, range(50), range(50))
    assert list(results) == [2 * i for i in range(50)]
    store: LocalStore = ex.backend.store
    files = sorted(p.name for p in store.job_dir(results.job_id).iterdir())
    assert files == ["function.pkl", "payload-0.bin"]
    manifest = store.manifest(results.job_id)
    tasks_in_order = [t for chunk in manifest for t in chunk.tasks]
    assert [t.index for t in tasks_in_order] == list(range(50))
    # Each task is addressed by a byte range of the one payload object.
    assert serialization.loads(store.read_task(results.job_id, tasks_in_order[7])) == ((7, 7), {})
    offsets = [(t.offset, t.length) for t in tasks_in_order]
    assert all(a[0] + a[1] == b[0] for a, b in itertools.pairwise(offsets))


def test_result_record_fields(ex: fanout.Executor) -> None:
    future = ex.submit(tasks.chatty, 3)
    assert future.result(timeout=60) == 3
    record = ex.backend.record(future.job_id, future.task_index)
    assert record is not None
    assert record.status == SUCCEEDED and record.attempt == 1
    assert serialization.loads(ex.backend.load_value(record)) == 3
    assert record.started <= record.ended and record.worker_id
    assert "stdout of task 3" in record.stdout and "stderr of task 3" in record.stderr
    spec = ex.backend.job_info(future.job_id).spec
    assert spec.python == serialization.python_version()
    assert spec.packages["cloudpickle"] == "3.1.2" and spec.n_tasks >= 1


def test_logs_capture_python_and_fd_level_output_per_task(ex: fanout.Executor) -> None:
    futures = [ex.submit(tasks.chatty, i) for i in range(4)]
    for i, future in enumerate(futures):
        future.result(timeout=60)
        logs = future.logs()
        assert f"stdout of task {i}" in logs and f"stderr of task {i}" in logs
        assert f"fd-level output of task {i}" in logs  # written with os.write(1, ...)
        assert f"task {i + 1}" not in logs and f"task {i - 1}" not in logs
        assert future.logs("stderr").strip() == f"stderr of task {i}"


def shout(lines: int) -> int:
    for n in range(lines):
        print(f"line {n:06d} " + "x" * 90)
    return lines


def test_logs_keep_a_bounded_tail(ex: fanout.Executor) -> None:
    future = ex.submit(shout, 5000)  # ~500 KB of output
    assert future.result(timeout=60) == 5000
    logs = future.logs("stdout")
    assert len(logs.encode()) <= LOG_TAIL_BYTES + 100
    assert "earlier output truncated" in logs and "line 004999" in logs


def test_progress_bar_when_asked(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with fanout.Executor(max_workers=2, progress=True) as ex:
        assert list(ex.map(tasks.square, range(25))) == [i * i for i in range(25)]
    err = capsys.readouterr().err
    assert "25/25" in err and "square" in err


def test_no_progress_bar_when_not_a_terminal(home: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    with fanout.Executor(max_workers=2) as ex:  # progress=None: only on a terminal
        list(ex.map(tasks.square, range(5)))
    assert "5/5" not in capsys.readouterr().err


def test_python_minor_version_mismatch_is_a_configuration_error(ex: fanout.Executor) -> None:
    results = ex.map(tasks.square, range(2))
    list(results)
    store: LocalStore = ex.backend.store
    spec = json.loads(store.job(results.job_id).spec.to_json())
    spec["python"] = "3.9.18"  # as if a Python 3.9 client had submitted it
    spec["job_id"] = "mismatch-job"
    store.create_job(JobSpec.from_json(json.dumps(spec)), store.manifest(results.job_id), None)
    store.write_object("mismatch-job", "function.pkl",
                       (store.job_dir(results.job_id) / "function.pkl").read_bytes())
    chunk = store.manifest(results.job_id)[0]
    runtime = WorkerRuntime(store, "test-worker")  # the worker runtime every backend runs
    records: list[ResultRecord] = []
    runtime.run_chunk(type(chunk)("mismatch-job", 0, "lambda", 1, chunk.tasks), records.append)
    assert records[0].exc_type == "fanout.errors.ConfigurationError"
    message = records[0].exc_message or ""
    worker = "{}.{}".format(*sys.version_info[:2])
    assert "Python 3.9" in message and f"Python {worker}" in message


def test_function_from_a_project_module_travels_by_value(tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "helpers_mod.py").write_text("def scale(x):\n    return 3 * x\n")
    (project / "analysis_mod.py").write_text(
        "import helpers_mod\n\ndef run(x):\n    return helpers_mod.scale(x) + 1\n")
    sys.path.insert(0, str(project))
    try:
        import analysis_mod  # type: ignore[import-not-found]

        blob = serialization.dumps_function(analysis_mod.run)
    finally:
        sys.path.remove(str(project))
    loader = textwrap.dedent("""
        import sys, pickle
        assert not any("project" in p for p in sys.path)
        print(pickle.loads(sys.stdin.buffer.read())(4))
    """)
    out = subprocess.run([sys.executable, "-c", loader], input=blob, capture_output=True,
                         check=True, cwd="/")
    assert out.stdout.decode().strip() == "13"


def test_unknown_backend_is_a_configuration_error(home: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(fanout.ConfigurationError, match="unknown backend 'gpu'"):
        fanout.Executor(backend="gpu")
    monkeypatch.setenv("FANOUT_BACKEND", "nope")
    with pytest.raises(fanout.ConfigurationError, match="FANOUT_BACKEND"):
        fanout.Executor()


def test_store_records_are_plain_sqlite(ex: fanout.Executor) -> None:
    list(ex.map(tasks.square, range(3)))
    db = sqlite3.connect(ex.backend.store.db_path)
    try:
        assert db.execute("SELECT count(*) FROM results").fetchone()[0] == 3
    finally:
        db.close()


def big_result(n: int) -> bytes:
    return bytes([n % 251]) * (3 * 1024 * 1024)


def test_large_results_go_to_a_blob_with_a_pointer(ex: fanout.Executor) -> None:
    futures = [ex.submit(big_result, i) for i in range(3)]
    assert [f.result(timeout=60)[:1] for f in futures] == [b"\x00", b"\x01", b"\x02"]
    record = ex.backend.record(futures[1].job_id, futures[1].task_index)
    assert record is not None and record.value is None and record.value_ref
    store: LocalStore = ex.backend.store
    assert len(store.load_value(record)) > store.max_record_value_bytes
    job = fanout.Job.attach(futures[1].job_id)  # another reader follows the pointer too
    assert job.results(timeout=60)[futures[1].task_index] == big_result(1)
