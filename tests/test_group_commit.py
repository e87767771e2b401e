"""Short tasks' results are committed in groups (issue 10.1), and every guarantee stays.

A local worker commits the records of sub-millisecond tasks together (at most
``GROUP_MAX_RECORDS`` of them, or ``GROUP_WINDOW_SECONDS`` after the first). These tests
check what the README promises about that: a future resolves only from a stored record,
and killing a worker costs at most its uncommitted group, re-run without charging an
attempt, while the task in flight is charged once.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import fanout
from fanout.backends.local.store import LocalStore
from fanout.backends.local.worker import GROUP_MAX_RECORDS
from fanout.protocol import SUCCEEDED

from conftest import eventually, process_gone, wait_for_file


def tiny(x: int, log: str, block_at: int, started: str, go: str) -> int:
    """Log each execution; task ``block_at`` says which process runs it, then waits."""
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, f"{x}\n".encode())
    finally:
        os.close(fd)
    if x == block_at:
        Path(started).write_text(str(os.getpid()))
        if not wait_for_file(go):
            raise TimeoutError("the test never released the blocked task")
    return x


def test_a_grouped_result_is_stored_before_its_future_resolves(ex: fanout.Executor,
                                                               home: Path) -> None:
    # options(chunksize=): tasks grouped in chunks, each with its own record (map's own
    # chunksize packs a chunk into one record; tests/test_packed_map.py covers that).
    results = ex.options(chunksize=100).map(abs, range(-3000, 0))
    reader = LocalStore(home)  # another connection, as another process would have
    for n, value in enumerate(results):
        index = n
        assert value == 3000 - n
        if index % 97 == 0:
            record = reader.result(results.job_id, index)
            assert record is not None and record.status == SUCCEEDED, index


def test_killing_a_worker_costs_at_most_its_uncommitted_group(ex: fanout.Executor,
                                                              tmp_path: Path,
                                                              home: Path) -> None:
    n, block_at = 3000, 1700
    log, started, go = (str(tmp_path / name) for name in ("log", "started", "go"))
    results = ex.options(chunksize=50).map(tiny, range(n), [log] * n, [block_at] * n,
                                           [started] * n, [go] * n, buffersize=None)
    eventually(lambda: os.path.exists(started) and Path(started).read_text() != "",
               what="the blocking task to start")
    pid = int(Path(started).read_text())
    os.kill(pid, signal.SIGKILL)
    eventually(lambda: process_gone(pid), what="the killed worker to be gone")
    Path(go).touch()
    assert list(results) == list(range(n))
    records = LocalStore(home).results(results.job_id)
    assert [r.task_index for r in records] == list(range(n))
    assert all(r.status == SUCCEEDED for r in records)
    # Only the task in flight is charged; what the dead worker finished is re-run (if its
    # group was not committed yet) at the same attempt.
    assert {r.task_index for r in records if r.attempt > 1} == {block_at}
    runs = Counter(int(line) for line in Path(log).read_text().split())
    assert set(runs) == set(range(n))
    rerun = [x for x, count in runs.items() if count > 1]
    assert block_at in rerun
    assert len(rerun) <= GROUP_MAX_RECORDS + 1
