"""A local store's files: functions, payload objects and values too large for a record.

They live under ``jobs/<job_id>/``; every write goes to a temporary name, is synced, then
renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ....errors import StoreError
from ....protocol import ResultRecord, TaskRef
from .database import Database


class JobFiles(Database):
    """Reads task arguments by byte range through a few cached descriptors (a worker reads
    many tasks of one payload object)."""

    def __init__(self, home: str | os.PathLike[str] | None = None) -> None:
        self._payload_fds: OrderedDict[tuple[str, str], int] = OrderedDict()
        super().__init__(home)

    def close(self) -> None:
        for fd in self._payload_fds.values():
            os.close(fd)
        self._payload_fds.clear()
        super().close()

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

    def load_function(self, job_id: str, which: str) -> bytes:
        if which not in ("function", "reducer"):
            raise ValueError(f"unknown function object {which!r}")
        return (self.job_dir(job_id) / f"{which}.pkl").read_bytes()

    def read_chunk(self, job_id: str, tasks: tuple[TaskRef, ...]) -> dict[int, bytes]:
        """None at once: a local read is one ``pread`` of an open file, cheapest just
        before its task runs (no chunk's arguments held in memory together)."""
        return {}

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
