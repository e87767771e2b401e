"""The embedded, durable store of the local backend: SQLite for records, files for bytes.

Layout under ``FANOUT_HOME`` (default ``~/.fanout``)::

    store.sqlite                 jobs, result records, checkpoints, live workers
    jobs/<job_id>/function.pkl   the job's pickled function (and reducer.pkl)
    jobs/<job_id>/payload-N.bin  task arguments, addressed by byte range
    jobs/<job_id>/values/…       results too large for a record

Every process (client, workers, CLI) opens its own connection; SQLite's WAL mode lets
readers run beside the single writer, and ``synchronous=NORMAL`` makes each commit
durable against the crash of any process (a power cut may lose the last few commits,
which are then simply run again).
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import shutil
import socket
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from ...errors import ConfigurationError, StoreError
from ...protocol import (
    CANCELLED,
    FAILED,
    PENDING,
    REDUCE_INDEX,
    RUNNING,
    SUCCEEDED,
    Chunk,
    JobSpec,
    ResultRecord,
    TaskRef,
)

APPLICATION_ID = 0x66616E6F  # "fano": marks an SQLite file as a fanout store
SCHEMA_VERSION = 3  # 2: schedules and their runs; 3: tasks appended to an open job

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    kind TEXT NOT NULL,
    function TEXT NOT NULL,
    n_tasks INTEGER NOT NULL,
    state TEXT NOT NULL,
    owner TEXT,
    spec TEXT NOT NULL,
    manifest TEXT NOT NULL,
    summary TEXT,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_created ON jobs(created);
CREATE TABLE IF NOT EXISTS job_segments (
    job_id TEXT NOT NULL,
    segment INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    PRIMARY KEY (job_id, segment)
);
CREATE TABLE IF NOT EXISTS results (
    job_id TEXT NOT NULL,
    task_index INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    worker_id TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL NOT NULL,
    value BLOB,
    value_ref TEXT,
    exc_type TEXT,
    exc_message TEXT,
    traceback TEXT,
    exc_pickle BLOB,
    stdout TEXT NOT NULL,
    stderr TEXT NOT NULL,
    extra TEXT NOT NULL,
    PRIMARY KEY (job_id, task_index)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS results_seq ON results(job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL,
    task_index INTEGER NOT NULL,
    data BLOB NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (job_id, task_index)
);
CREATE TABLE IF NOT EXISTS schedules (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    next_fire REAL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS schedule_runs (
    name TEXT NOT NULL,
    fired_at REAL NOT NULL,
    job_id TEXT,
    outcome TEXT NOT NULL,
    PRIMARY KEY (name, fired_at)
);
CREATE TABLE IF NOT EXISTS workers (
    worker_id TEXT PRIMARY KEY,
    pid INTEGER NOT NULL,
    host TEXT NOT NULL,
    job_id TEXT,
    task_index INTEGER,
    attempt INTEGER,
    since REAL NOT NULL
);
"""

_RECORD_COLUMNS = (
    "job_id, task_index, status, attempt, worker_id, started, ended, value, value_ref, "
    "exc_type, exc_message, traceback, exc_pickle, stdout, stderr, extra"
)

# The protocol's conditional put: first writer wins; a later attempt may replace a
# record only when that record is not a success.
_PUT_RESULT = f"""
INSERT INTO results (seq, {_RECORD_COLUMNS})
VALUES ((SELECT COALESCE(MAX(seq), 0) + 1 FROM results WHERE job_id = :job_id),
        :job_id, :task_index, :status, :attempt, :worker_id, :started, :ended, :value,
        :value_ref, :exc_type, :exc_message, :traceback, :exc_pickle, :stdout, :stderr, :extra)
ON CONFLICT (job_id, task_index) DO UPDATE SET
    seq = excluded.seq, status = excluded.status, attempt = excluded.attempt,
    worker_id = excluded.worker_id, started = excluded.started, ended = excluded.ended,
    value = excluded.value, value_ref = excluded.value_ref, exc_type = excluded.exc_type,
    exc_message = excluded.exc_message, traceback = excluded.traceback,
    exc_pickle = excluded.exc_pickle, stdout = excluded.stdout, stderr = excluded.stderr,
    extra = excluded.extra
WHERE results.status != '{SUCCEEDED}' AND results.attempt < excluded.attempt
"""


def default_home() -> Path:
    return Path(os.environ.get("FANOUT_HOME") or Path.home() / ".fanout").expanduser()


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


@dataclass(frozen=True)
class Owner:
    """The client process that drives a job; a dead owner means an orphaned job."""

    host: str
    pid: int
    create_time: float

    @classmethod
    def me(cls) -> Owner:
        pid = os.getpid()
        return cls(socket.gethostname(), pid, psutil.Process(pid).create_time())

    def alive(self) -> bool:
        if self.host != socket.gethostname():
            return True  # cannot tell from here; assume it is
        try:
            return abs(psutil.Process(self.pid).create_time() - self.create_time) < 1.0
        except psutil.Error:
            return False

    def to_json(self) -> str:
        return json.dumps({"host": self.host, "pid": self.pid, "create_time": self.create_time})

    @classmethod
    def from_json(cls, text: str | None) -> Owner | None:
        return None if not text else cls(**json.loads(text))


@dataclass(frozen=True)
class JobRow:
    job_id: str
    created: float
    kind: str
    function: str
    n_tasks: int
    state: str
    owner: Owner | None
    spec: JobSpec
    summary: dict[str, Any] | None


class LocalStore:
    """One store directory. Safe to share between threads; each thread gets a connection."""

    max_record_value_bytes = 1024 * 1024

    #: Seconds a writer waits for SQLite's write lock. Longer than any local worker's stall
    #: interval: a worker frozen while holding the lock is killed (and the lock released)
    #: before anyone waiting for it gives up.
    busy_timeout = 60.0

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self.home = Path(home).expanduser() if home is not None else default_home()
        self.db_path = self.home / "store.sqlite"
        #: True when the store could only be opened for reading (a read-only disk or copy):
        #: jobs and results can be read, and every write says why it cannot be done.
        self.read_only = False
        self._local = threading.local()
        self._payload_fds: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._check_home()
        self._connect()  # validates (and on first use creates) the schema

    # -- opening and validating ------------------------------------------------------------

    def _refuse(self, why: str) -> StoreError:
        return StoreError(
            f"{self.db_path} {why}. fanout will not touch it: move it away, or point "
            "FANOUT_HOME (or backend option home=) at another directory."
        )

    def _check_home(self) -> None:
        if self.home.exists() and not self.home.is_dir():
            raise ConfigurationError(
                f"FANOUT_HOME {self.home} is a file, not a directory; point it at a directory"
            )
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            (self.home / "jobs").mkdir(exist_ok=True)
        except OSError as exc:
            if not (self.home / "jobs").is_dir():
                raise StoreError(f"cannot create the fanout store at {self.home}: {exc}; "
                                 "point FANOUT_HOME at a writable directory") from exc
        # SQLite turns a zero-byte file into a new, empty store. Next to job data that file
        # was a store once (truncated by a full disk, a bad copy): never paper over it.
        if (self.db_path.is_file() and self.db_path.stat().st_size == 0
                and any((self.home / "jobs").iterdir())):
            raise self._refuse(
                "is empty (zero bytes) although job data exists next to it in "
                f"{self.home / 'jobs'}; it was a store once and may be restorable from a copy")
        # Never open the database file outside SQLite: closing any descriptor of it drops
        # every POSIX lock this process holds on it, and other connections here would then
        # write unprotected (the classic way to corrupt SQLite). SQLite itself reports a file
        # that is not a database when we connect.

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            conn = self._open()
            tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            app_id = conn.execute("PRAGMA application_id").fetchone()[0]
            if app_id != APPLICATION_ID and tables:
                conn.close()
                raise self._refuse("is an SQLite database of another program, not a fanout store")
            if not self.read_only:
                conn.execute("PRAGMA journal_mode = WAL")
                conn.execute("PRAGMA synchronous = NORMAL")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if self.read_only and (app_id != APPLICATION_ID or version < SCHEMA_VERSION):
                conn.close()
                raise self._refuse("is read-only and not (yet) a fanout store of this version")
            if app_id != APPLICATION_ID or version < SCHEMA_VERSION:
                # New store, or one written by an older fanout: every statement of the
                # schema is CREATE ... IF NOT EXISTS, so this creates what is missing.
                with self._write(conn):
                    conn.executescript(
                        "BEGIN IMMEDIATE;"
                        + _SCHEMA
                        + f"PRAGMA application_id = {APPLICATION_ID};"
                        + f"PRAGMA user_version = {SCHEMA_VERSION};COMMIT;"
                    )
                version = SCHEMA_VERSION
            if version > SCHEMA_VERSION:
                conn.close()
                raise self._refuse(
                    f"was written by a newer fanout (schema {version}, this one knows "
                    f"{SCHEMA_VERSION}); upgrade fanout"
                )
        except sqlite3.OperationalError as exc:
            raise self._failure(exc) from exc
        except sqlite3.DatabaseError as exc:
            raise self._refuse(f"cannot be read as a fanout store ({exc})") from exc
        self._local.conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        """A connection for reading and writing, or for reading only when that is all we get."""
        if not self.read_only:
            try:
                conn = sqlite3.connect(self.db_path, timeout=self.busy_timeout,
                                       isolation_level=None)
                conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
                return conn
            except sqlite3.OperationalError:
                if os.access(self.home, os.W_OK) and (
                        not self.db_path.exists() or os.access(self.db_path, os.W_OK)):
                    raise
        # A read-only disk or directory: SQLite cannot even create the WAL's shared-memory
        # file, so open the file as immutable (nobody can be writing to it there).
        self.read_only = True
        uri = f"file:{self.db_path}?mode=ro"
        if not os.access(self.home, os.W_OK):
            uri += "&immutable=1"
        return sqlite3.connect(uri, uri=True, timeout=self.busy_timeout, isolation_level=None)

    def _failure(self, exc: BaseException) -> StoreError:
        """One message for a store that fails: which store, what SQLite said, what to do."""
        text = str(exc)
        if "full" in text:
            hint = "free space on that disk; results stored so far are intact"
        elif "readonly" in text or self.read_only:
            hint = ("the store is read-only here: it can be read (`fanout jobs`, `status`, "
                    "`results`) but jobs need a writable FANOUT_HOME")
        elif "locked" in text or "busy" in text:
            hint = (f"another process held its write lock for over {self.busy_timeout:g}s; "
                    "a stopped (SIGSTOP) process may be holding it")
        else:
            hint = "check the disk; `fanout` commands that read may still work"
        return StoreError(f"the fanout store {self.db_path} failed: {text} ({hint})")

    @contextmanager
    def _write(self, conn: sqlite3.Connection | None = None) -> Iterator[sqlite3.Connection]:
        """Wrap SQLite errors in one StoreError that says which store failed and why."""
        try:
            yield conn or self._connect()
        except (sqlite3.Error, UnicodeError) as exc:
            raise self._failure(exc) from exc

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._write() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")  # a full disk may fail here: roll back then too
            except BaseException:
                if conn.in_transaction:
                    with suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise

    def _query(self, sql: str, params: Any = ()) -> list[Any]:
        with self._write() as conn:
            return conn.execute(sql, params).fetchall()

    def close(self) -> None:
        for fd in self._payload_fds.values():
            os.close(fd)
        self._payload_fds.clear()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    # -- jobs ------------------------------------------------------------------------------

    def job_dir(self, job_id: str) -> Path:
        if not job_id or "/" in job_id or job_id.startswith("."):
            raise ValueError(f"invalid job id {job_id!r}")
        return self.home / "jobs" / job_id

    def create_job(self, spec: JobSpec, manifest: list[Chunk], owner: Owner | None) -> None:
        manifest_json = json.dumps([c.to_json() for c in manifest], separators=(",", ":"))
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO jobs (job_id, created, kind, function, n_tasks, state, owner, spec,"
                " manifest, updated) VALUES (?, ?, ?, ?, ?, 'running', ?, ?, ?, ?)",
                (
                    spec.job_id,
                    spec.created,
                    spec.kind,
                    spec.function,
                    spec.n_tasks,
                    owner.to_json() if owner else None,
                    spec.to_json(),
                    manifest_json,
                    time.time(),
                ),
            )

    def job(self, job_id: str) -> JobRow:
        rows = self._query(
            "SELECT job_id, created, kind, function, n_tasks, state, owner, spec, summary"
            " FROM jobs WHERE job_id = ?",
            (job_id,),
        )
        if not rows:
            raise KeyError(job_id)
        return self._job_row(rows[0])

    @staticmethod
    def _job_row(row: Any) -> JobRow:
        return JobRow(
            job_id=row[0],
            created=row[1],
            kind=row[2],
            function=row[3],
            n_tasks=row[4],
            state=row[5],
            owner=Owner.from_json(row[6]),
            spec=JobSpec.from_json(row[7]),
            summary=json.loads(row[8]) if row[8] else None,
        )

    def jobs(self, limit: int = 50) -> list[JobRow]:
        rows = self._query(
            "SELECT job_id, created, kind, function, n_tasks, state, owner, spec, summary"
            " FROM jobs ORDER BY created DESC LIMIT ?",
            (limit,),
        )
        return [self._job_row(r) for r in rows]

    def manifest(self, job_id: str) -> list[Chunk]:
        """Every chunk of the job: those it was created with, then each appended segment."""
        rows = self._query("SELECT manifest FROM jobs WHERE job_id = ?", (job_id,))
        if not rows:
            raise KeyError(job_id)
        texts = [rows[0][0], *(r[0] for r in self._query(
            "SELECT manifest FROM job_segments WHERE job_id = ? ORDER BY segment", (job_id,)))]
        return [Chunk.from_json(c) for text in texts for c in json.loads(text)]

    def append_tasks(self, spec: JobSpec, segment: int, chunks: list[Chunk]) -> None:
        """Add ``chunks`` to an open job whose new spec (task count) is ``spec``, atomically.

        Each segment is its own row, so appending costs the new tasks only, never a rewrite
        of the job's earlier manifest. Tasks exist from this commit on: a retry, ``fanout
        status`` and ``Job.attach`` see them together with their new ``n_tasks``.
        """
        manifest_json = json.dumps([c.to_json() for c in chunks], separators=(",", ":"))
        with self._transaction() as conn:
            conn.execute("INSERT INTO job_segments (job_id, segment, manifest) VALUES (?, ?, ?)",
                         (spec.job_id, segment, manifest_json))
            conn.execute("UPDATE jobs SET n_tasks = ?, spec = ?, updated = ? WHERE job_id = ?",
                         (spec.n_tasks, spec.to_json(), time.time(), spec.job_id))

    def set_job_state(
        self, job_id: str, state: str, *, summary: dict[str, Any] | None = None,
        owner: Owner | None = None, only_if: str | None = None,
    ) -> bool:
        sets = ["state = ?", "updated = ?"]
        params: list[Any] = [state, time.time()]
        if summary is not None:
            sets.append("summary = ?")
            params.append(json.dumps(summary))
        if owner is not None:
            sets.append("owner = ?")
            params.append(owner.to_json())
        sql = f"UPDATE jobs SET {', '.join(sets)} WHERE job_id = ?"
        params.append(job_id)
        if only_if is not None:
            sql += " AND state = ?"
            params.append(only_if)
        with self._transaction() as conn:
            return conn.execute(sql, params).rowcount == 1

    def job_states(self, job_ids: Iterable[str]) -> dict[str, str]:
        ids = list(job_ids)
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = self._query(f"SELECT job_id, state FROM jobs WHERE job_id IN ({marks})", ids)
        return dict(rows)

    # -- payloads and functions ------------------------------------------------------------

    @contextmanager
    def writing_file(self, path: Path) -> Iterator[None]:
        """Turn an OSError while writing ``path`` (full disk, read-only) into a StoreError."""
        try:
            yield
        except OSError as exc:
            raise StoreError(
                f"cannot write {path} in the fanout store: {exc.strerror or exc}"
                + (" (free space on that disk)" if exc.errno == errno.ENOSPC else "")
            ) from exc

    def write_object(self, job_id: str, name: str, data: bytes) -> None:
        directory = self.job_dir(job_id)
        tmp = directory / f".{name}.tmp"
        with self.writing_file(tmp):
            directory.mkdir(parents=True, exist_ok=True)
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, directory / name)

    def remove_job_files(self, job_id: str) -> None:
        """Delete a job's directory: for a job whose start failed before it was recorded."""
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)

    def open_payload(self, job_id: str, name: str) -> Any:
        directory = self.job_dir(job_id)
        directory.mkdir(parents=True, exist_ok=True)
        return open(directory / name, "wb")

    def load_spec(self, job_id: str) -> JobSpec:
        return self.job(job_id).spec

    def load_function(self, job_id: str, which: str) -> bytes:
        if which not in ("function", "reducer"):
            raise ValueError(f"unknown function object {which!r}")
        return (self.job_dir(job_id) / f"{which}.pkl").read_bytes()

    def read_task(self, job_id: str, task: TaskRef) -> bytes:
        key = (job_id, task.object)
        fd = self._payload_fds.get(key)
        if fd is None:
            fd = os.open(self.job_dir(job_id) / task.object, os.O_RDONLY)
            self._payload_fds[key] = fd
            if len(self._payload_fds) > 16:
                os.close(self._payload_fds.popitem(last=False)[1])
        data = os.pread(fd, task.length, task.offset)
        if len(data) != task.length:
            raise OSError(f"payload {task.object} of job {job_id} is truncated: "
                          f"task {task.index} is missing")
        return data

    # -- results ---------------------------------------------------------------------------

    @staticmethod
    def _params(record: ResultRecord) -> dict[str, Any]:
        return {
            "job_id": record.job_id,
            "task_index": record.task_index,
            "status": record.status,
            "attempt": record.attempt,
            "worker_id": record.worker_id,
            "started": record.started,
            "ended": record.ended,
            "value": record.value,
            "value_ref": record.value_ref,
            "exc_type": record.exc_type,
            "exc_message": record.exc_message,
            "traceback": record.traceback,
            "exc_pickle": record.exc_pickle,
            "stdout": record.stdout,
            "stderr": record.stderr,
            "extra": json.dumps(record.extra),
        }

    @staticmethod
    def _record(row: Any) -> ResultRecord:
        (job_id, task_index, status, attempt, worker_id, started, ended, value, value_ref,
         exc_type, exc_message, tb, exc_pickle, stdout, stderr, extra) = row[:16]
        return ResultRecord(job_id, task_index, status, attempt, worker_id, started, ended,
                            value, value_ref, exc_type, exc_message, tb, exc_pickle, stdout,
                            stderr, json.loads(extra))

    def put_result(self, record: ResultRecord) -> ResultRecord:
        # One statement is its own transaction: the common case costs a single commit.
        with self._write() as conn:
            if conn.execute(_PUT_RESULT, self._params(record)).rowcount == 1:
                return record
        stored = self.result(record.job_id, record.task_index)
        assert stored is not None
        return stored

    def put_results(self, records: list[ResultRecord]) -> list[ResultRecord]:
        """Conditionally store each record in one transaction; return what is stored."""
        stored: list[ResultRecord] = []
        with self._transaction() as conn:
            for record in records:
                if conn.execute(_PUT_RESULT, self._params(record)).rowcount == 1:
                    stored.append(record)
                    continue
                row = conn.execute(
                    f"SELECT {_RECORD_COLUMNS} FROM results WHERE job_id = ? AND task_index = ?",
                    (record.job_id, record.task_index),
                ).fetchone()
                stored.append(self._record(row))
        return stored

    def result(self, job_id: str, task_index: int) -> ResultRecord | None:
        rows = self._query(
            f"SELECT {_RECORD_COLUMNS} FROM results WHERE job_id = ? AND task_index = ?",
            (job_id, task_index),
        )
        return self._record(rows[0]) if rows else None

    def results(self, job_id: str) -> list[ResultRecord]:
        rows = self._query(
            f"SELECT {_RECORD_COLUMNS} FROM results WHERE job_id = ? AND task_index >= 0"
            " ORDER BY task_index",
            (job_id,),
        )
        return [self._record(r) for r in rows]

    def results_since(self, job_id: str, seq: int) -> tuple[list[ResultRecord], int]:
        """Records written after ``seq``: polling costs O(new results), not O(tasks)."""
        rows = self._query(
            f"SELECT {_RECORD_COLUMNS}, seq FROM results WHERE job_id = ? AND seq > ?"
            " ORDER BY seq",
            (job_id, seq),
        )
        if not rows:
            return [], seq
        return [self._record(r[:16]) for r in rows], rows[-1][16]

    def counts(self, job_id: str) -> dict[str, int]:
        job = self.job(job_id)
        counts = {PENDING: 0, RUNNING: 0, SUCCEEDED: 0, FAILED: 0, CANCELLED: 0}
        for status, n in self._query(
            "SELECT status, COUNT(*) FROM results WHERE job_id = ? AND task_index >= 0"
            " GROUP BY status",
            (job_id,),
        ):
            counts[status] = n
        running = {
            row[0]
            for row in self._query(
                "SELECT task_index FROM workers w WHERE job_id = ? AND task_index >= 0 AND NOT"
                " EXISTS (SELECT 1 FROM results r WHERE r.job_id = w.job_id"
                " AND r.task_index = w.task_index AND r.status = 'succeeded')",
                (job_id,),
            )
        }
        finished = counts[SUCCEEDED] + counts[FAILED] + counts[CANCELLED]
        counts[RUNNING] = len(running) if job.state == "running" else 0
        counts[PENDING] = max(0, job.n_tasks - finished - counts[RUNNING])
        return counts

    def summarize(self, job_id: str) -> dict[str, Any]:
        """The job summary written on the job record when it ends: counts and durations."""
        counts = self.counts(job_id)
        row = self._query(
            "SELECT COALESCE(SUM(ended - started), 0), MIN(started), MAX(ended),"
            " COUNT(DISTINCT worker_id) FROM results WHERE job_id = ? AND task_index >= 0"
            " AND status != 'cancelled'",
            (job_id,),
        )[0]
        return {
            **{k: v for k, v in counts.items() if k not in (PENDING, RUNNING)},
            "task_seconds": round(row[0], 6),
            "wall_seconds": round((row[2] - row[1]) if row[1] is not None else 0.0, 6),
            "workers": row[3],
        }

    def put_value_blob(self, job_id: str, task_index: int, attempt: int, data: bytes) -> str:
        ref = f"values/{task_index}.a{attempt}.{secrets.token_hex(4)}.pkl"
        directory = self.job_dir(job_id) / "values"
        with self.writing_file(self.job_dir(job_id) / ref):
            directory.mkdir(parents=True, exist_ok=True)
            with open(self.job_dir(job_id) / ref, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        return f"{job_id}/{ref}"

    def _blob_path(self, ref: str) -> Path:
        job_id, _, rel = ref.partition("/")
        path = (self.job_dir(job_id) / rel).resolve()
        if not path.is_relative_to(self.job_dir(job_id).resolve()):
            raise ValueError(f"value reference {ref!r} points outside its job")
        return path

    def load_value(self, record: ResultRecord) -> bytes:
        if record.value is not None:
            return record.value
        if record.value_ref is None:
            raise ValueError(f"task {record.task_index} has no value")
        return self._blob_path(record.value_ref).read_bytes()

    def delete_value_blob(self, ref: str) -> None:
        self._blob_path(ref).unlink(missing_ok=True)

    # -- checkpoints -----------------------------------------------------------------------

    def get_checkpoint(self, job_id: str, task_index: int) -> bytes | None:
        rows = self._query(
            "SELECT data FROM checkpoints WHERE job_id = ? AND task_index = ?",
            (job_id, task_index),
        )
        return bytes(rows[0][0]) if rows else None

    def put_checkpoint(self, job_id: str, task_index: int, data: bytes) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO checkpoints (job_id, task_index, data, updated) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (job_id, task_index) DO UPDATE SET data = excluded.data,"
                " updated = excluded.updated",
                (job_id, task_index, data, time.time()),
            )

    def delete_checkpoint(self, job_id: str, task_index: int) -> None:
        # A read first: most tasks never checkpoint, and a read does not take the write lock.
        if self._query(
            "SELECT 1 FROM checkpoints WHERE job_id = ? AND task_index = ?", (job_id, task_index)
        ):
            with self._transaction() as conn:
                conn.execute(
                    "DELETE FROM checkpoints WHERE job_id = ? AND task_index = ?",
                    (job_id, task_index),
                )

    # -- schedules -------------------------------------------------------------------------

    def schedule_dir(self, name: str) -> Path:
        from ...schedules import validate_name

        return self.home / "schedules" / validate_name(name)

    def put_schedule(self, spec_json: str, name: str, next_fire: float | None,
                     objects: dict[str, bytes]) -> None:
        directory = self.schedule_dir(name)
        directory.mkdir(parents=True, exist_ok=True)
        for object_name, data in objects.items():
            (directory / object_name).write_bytes(data)
        with self._transaction() as conn:
            if conn.execute("SELECT 1 FROM schedules WHERE name = ?", (name,)).fetchone():
                raise ValueError(f"a schedule named {name!r} exists already; remove it first "
                                 f"(`fanout schedule remove {name}`)")
            conn.execute("INSERT INTO schedules (name, spec, next_fire, updated) "
                         "VALUES (?, ?, ?, ?)", (name, spec_json, next_fire, time.time()))

    def schedule_object(self, name: str, object_name: str) -> bytes | None:
        path = self.schedule_dir(name) / object_name
        return path.read_bytes() if path.exists() else None

    def schedules(self) -> list[tuple[str, float | None]]:
        return [(row[0], row[1]) for row in
                self._query("SELECT spec, next_fire FROM schedules ORDER BY name")]

    def schedule(self, name: str) -> tuple[str, float | None]:
        rows = self._query("SELECT spec, next_fire FROM schedules WHERE name = ?", (name,))
        if not rows:
            raise KeyError(name)
        return rows[0][0], rows[0][1]

    def update_schedule(self, name: str, *, spec_json: str | None = None,
                        next_fire: float | None = None) -> None:
        with self._transaction() as conn:
            if spec_json is not None:
                conn.execute("UPDATE schedules SET spec = ?, updated = ? WHERE name = ?",
                             (spec_json, time.time(), name))
            if next_fire is not None:
                conn.execute("UPDATE schedules SET next_fire = ?, updated = ? WHERE name = ?",
                             (next_fire, time.time(), name))

    def delete_schedule(self, name: str) -> None:
        with self._transaction() as conn:
            if conn.execute("DELETE FROM schedules WHERE name = ?", (name,)).rowcount == 0:
                raise KeyError(name)

    def add_schedule_run(self, name: str, fired_at: float, job_id: str | None,
                         outcome: str) -> None:
        with self._transaction() as conn:
            conn.execute("INSERT OR REPLACE INTO schedule_runs (name, fired_at, job_id, outcome)"
                         " VALUES (?, ?, ?, ?)", (name, fired_at, job_id, outcome))

    def schedule_runs(self, name: str, limit: int = 100) -> list[tuple[float, str | None, str]]:
        return [(r[0], r[1], r[2]) for r in self._query(
            "SELECT fired_at, job_id, outcome FROM schedule_runs WHERE name = ?"
            " ORDER BY fired_at DESC LIMIT ?", (name, limit))]

    # -- live workers (for status: which tasks are running now) ----------------------------

    def worker_started(self, worker_id: str, pid: int) -> None:
        with self._transaction() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO workers (worker_id, pid, host, since) VALUES (?, ?, ?, ?)",
                (worker_id, pid, socket.gethostname(), time.time()),
            )

    def worker_running(self, worker_id: str, job_id: str | None, task_index: int | None,
                       attempt: int | None) -> None:
        with self._transaction() as conn:
            conn.execute(
                "UPDATE workers SET job_id = ?, task_index = ?, attempt = ?, since = ?"
                " WHERE worker_id = ?",
                (job_id, task_index, attempt, time.time(), worker_id),
            )

    def worker_gone(self, worker_ids: Iterable[str]) -> None:
        ids = [(w,) for w in worker_ids]
        if ids:
            with self._transaction() as conn:
                conn.executemany("DELETE FROM workers WHERE worker_id = ?", ids)

    def prune_dead_workers(self) -> None:
        """Forget worker rows of processes on this host that no longer exist."""
        if self.read_only:
            return
        host = socket.gethostname()
        dead = [
            wid for wid, pid in self._query(
                "SELECT worker_id, pid FROM workers WHERE host = ?", (host,)
            ) if not psutil.pid_exists(pid)
        ]
        self.worker_gone(dead)

    def integrity_check(self) -> str:
        return str(self._query("PRAGMA quick_check")[0][0])


__all__ = ["REDUCE_INDEX", "JobRow", "LocalStore", "Owner", "default_home", "new_job_id"]
