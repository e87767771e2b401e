"""Bad input fails early with a specific message, and loses nothing already computed."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import fanout
from fanout.backends.local.store import LocalStore

import tasks


def test_unpicklable_function_names_the_captured_object(ex: fanout.Executor) -> None:
    lock = threading.Lock()

    def uses_lock(x: int) -> int:
        with lock:
            return x

    with pytest.raises(fanout.SerializationError) as info:
        ex.submit(uses_lock, 1)
    message = str(info.value)
    assert "uses_lock" in message and "closure variable 'lock'" in message
    assert "_thread.lock" in message
    with pytest.raises(fanout.SerializationError):
        ex.map(uses_lock, [1, 2])


def test_unpicklable_argument_names_its_position(ex: fanout.Executor) -> None:
    with pytest.raises(fanout.SerializationError, match=r"argument 1 \(_thread.lock"):
        ex.submit(tasks.add, 1, threading.Lock())
    with pytest.raises(fanout.SerializationError, match="keyword argument 'b'"):
        ex.submit(tasks.add, 1, b=threading.Lock())
    assert isinstance(fanout.SerializationError("x"), TypeError)


def returns_lock(x: int) -> object:
    return threading.Lock() if x == 2 else x


def test_unpicklable_result_fails_only_that_task(ex: fanout.Executor) -> None:
    futures = [ex.submit(returns_lock, i) for i in range(4)]
    with pytest.raises(fanout.SerializationError) as info:
        futures[2].result(timeout=60)
    assert "_thread.lock" in str(info.value) and "cannot be pickled" in str(info.value)
    assert [futures[i].result(timeout=60) for i in (0, 1, 3)] == [0, 1, 3]


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"timeout": -1}, "timeout must be a positive"),
        ({"timeout": float("nan")}, "timeout must be a positive"),
        ({"tier": "gpu"}, "tier must be one of auto, lambda, batch"),
        ({"memory_mb": 64}, "memory_mb must be between 128 and 122880"),
        ({"memory_mb": 10**6}, "memory_mb must be between"),
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"chunksize": 0}, "chunksize must be an integer >= 1"),
        ({"seed": -5}, "seed must be a non-negative integer"),
        ({"tier": "lambda", "timeout": 3600}, "tier='lambda' allows at most 900 s"),
        ({"tier": "lambda", "memory_mb": 20_000}, "tier='lambda' allows at most 10240 MB"),
    ],
)
def test_invalid_options_are_value_errors_at_the_call(home: Path, options: dict[str, object],
                                                      match: str) -> None:
    with pytest.raises(ValueError, match=match):
        fanout.Executor(**options)  # type: ignore[arg-type]


def test_invalid_options_in_options_view(ex: fanout.Executor) -> None:
    with pytest.raises(ValueError, match="timeout"):
        ex.options(timeout=0)
    with pytest.raises(TypeError, match="timeout must be a number"):
        ex.options(timeout="soon")


def test_corrupt_store_is_refused_with_its_path(tmp_path: Path) -> None:
    home = tmp_path / "corrupt"
    home.mkdir()
    (home / "store.sqlite").write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(fanout.ConfigurationError) as info:
        LocalStore(home)
    assert str(home / "store.sqlite") in str(info.value)
    assert "FANOUT_HOME" in str(info.value)


def test_foreign_sqlite_database_is_refused(tmp_path: Path) -> None:
    home = tmp_path / "foreign"
    home.mkdir()
    db = sqlite3.connect(home / "store.sqlite")
    db.execute("CREATE TABLE invoices (id INTEGER)")
    db.commit()
    db.close()
    with pytest.raises(fanout.ConfigurationError, match="another program"):
        fanout.Executor(home=str(home))
    assert sqlite3.connect(home / "store.sqlite").execute(
        "SELECT name FROM sqlite_master").fetchall() == [("invoices",)]  # untouched


def test_home_that_is_a_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "afile"
    path.write_text("x")
    with pytest.raises(fanout.ConfigurationError, match="is a file"):
        LocalStore(path)


def test_unknown_job_id_says_where_it_looked(home: Path) -> None:
    with pytest.raises(KeyError, match="no job 'nope' in the local store"):
        fanout.Job.attach("nope")


def test_a_100_mb_argument_needs_about_two_copies(home: Path) -> None:
    probe = textwrap.dedent(f"""
        import resource, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import fanout, tasks
        with fanout.Executor(max_workers=1, progress=False) as ex:
            ex.submit(tasks.square, 1).result()
            base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            big = b"\x01" * (100 * 1024 * 1024)  # touched pages, unlike bytes(n)
            n = ex.submit(len, big).result(timeout=120)
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(n, (peak - base) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, timeout=300)
    length, grown_mb = out.stdout.split()
    assert int(length) == 100 * 1024 * 1024
    assert float(grown_mb) < 2.3 * 100, f"client grew by {grown_mb} MB for a 100 MB argument"
