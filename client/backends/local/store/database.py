"""The SQLite database under a local store: opening, validating, the schema, transactions.

Every process (client, workers, CLI) opens its own connection; SQLite's WAL mode lets
readers run beside the single writer, and ``synchronous=NORMAL`` makes each commit
durable against the crash of any process (a power cut may lose the last few commits,
which are then simply run again). The tables' own rooms (jobs, results, checkpoints,
schedules, live workers) build on :class:`Database` and share its one connection per thread.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ....errors import ConfigurationError, StoreError
from ....home import default_home
from ....ids import check_job_id

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


class Database:
    """One store directory's database. Safe to share between threads; each thread gets
    its own connection."""

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
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def _no_job(self, job_id: str) -> str:
        """What a missing job's ``JobNotFound`` says: which store was looked in, what next."""
        return (f"no job {job_id!r} in the local store at {self.home}; "
                "`fanout jobs` lists the jobs there")

    def job_dir(self, job_id: str) -> Path:
        """Where a job's files are (function, payload, large values)."""
        return self.home / "jobs" / check_job_id(job_id)

    def integrity_check(self) -> str:
        return str(self._query("PRAGMA quick_check")[0][0])
