"""S3 objects as task inputs: one task per object, or per byte range of a large object.

``ex.map(fn, "s3://bucket/prefix/")`` gives ``fn`` one :class:`S3Chunk` per object under the
prefix; ``ex.map(fn, fanout.s3_chunks(uri, chunk_bytes=...))`` splits large objects into
byte ranges. Only a small descriptor (bucket, key, byte range) travels in the payload; the
task reads its range on the worker with a ranged GET, so the data goes from S3 straight to
the worker that needs it (the client only lists the objects).

Text is split on lines (``lines=True``, the default) so that every line belongs to exactly
one chunk, whole: the chunk ``[start, end)`` holds the lines whose first byte lies in that
range. It begins after the first newline at or after ``start - 1`` (at 0 for the first
chunk) and runs through the line that crosses ``end``, to its newline or the end of the
object. A line longer than ``chunk_bytes`` is read whole by the chunk it starts in, and the
chunks it spans without starting in are empty. ``"\\r\\n"`` endings stay in the data (the
split is on ``"\\n"``), and a last line without a newline is kept.

The client lists with the default boto3 credentials and endpoint (``AWS_ENDPOINT_URL``);
workers read with theirs: on the aws backend the worker role must be allowed
``s3:GetObject`` on the input bucket (see the README).

S3's rules applied here: a GET takes one byte range, ``bytes=first-last`` with both ends
inclusive, and S3 "doesn't support retrieving multiple ranges of data per GET request"
(GetObject API reference, ``Range``; RFC 9110 section 14.2); ``ListObjectsV2`` returns at
most 1,000 keys per page, so listing follows the continuation token (boto3's paginator).
Every GET sends ``If-Match`` with the ETag seen when listing: an object replaced since then
fails with 412 Precondition Failed (GetObject, ``IfMatch``), raised as
:class:`~fanout.errors.InputChanged`, instead of chunks cut from two versions.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import InputChanged, InvalidArgument

#: How far past a chunk's end the first GET reads, to finish its last line in one request.
LINE_SLACK_BYTES = 64 * 1024
S3_SCHEME = "s3://"


@functools.cache
def _client() -> Any:
    """One S3 client per process (a warm Lambda keeps it): boto3's defaults, endpoint too."""
    import boto3

    return boto3.client("s3")


def parse_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key-or-prefix`` -> (bucket, key-or-prefix), with a specific error."""
    if not isinstance(uri, str) or not uri.startswith(S3_SCHEME):
        raise InvalidArgument(f"expected an S3 URI like 's3://bucket/prefix/', got {uri!r}")
    bucket, _, key = uri[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise InvalidArgument(f"the S3 URI {uri!r} names no bucket: use 's3://bucket/prefix/'")
    return bucket, key


@dataclass(frozen=True, slots=True)
class S3Chunk:
    """One task's share of an S3 object: ``[start, end)`` of ``key`` (``size`` bytes)."""

    bucket: str
    key: str
    start: int
    end: int
    size: int
    lines: bool = True
    etag: str | None = None  # the version listed: a read of another version fails

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"

    def read(self) -> bytes:
        """This chunk's bytes: its byte range, widened to whole lines when ``lines``."""
        if not self.lines:
            return self._get(self.start, self.end)
        begin = self._first_line_start()
        if begin is None or begin >= self.end:
            return b""  # no line starts in this chunk (a long line's middle, or the tail)
        data = self._get(begin, min(self.size, self.end + LINE_SLACK_BYTES))
        cut = data.find(b"\n", self.end - 1 - begin)
        if cut >= 0:
            return data[:cut + 1]
        parts = [data]  # the last line runs past the slack: read on to its newline
        at = begin + len(data)
        while at < self.size:
            block = self._get(at, min(self.size, at + LINE_SLACK_BYTES))
            cut = block.find(b"\n")
            if cut >= 0:
                parts.append(block[:cut + 1])
                break
            parts.append(block)
            at += len(block)
        return b"".join(parts)

    def text(self, encoding: str = "utf-8") -> str:
        """:meth:`read`, decoded (a chunk of whole lines never splits a UTF-8 character)."""
        return self.read().decode(encoding)

    def _first_line_start(self) -> int | None:
        if self.start == 0:
            return 0
        at = self.start - 1  # a newline right before start means a line starts at start
        while at < self.size:
            block = self._get(at, min(self.size, at + LINE_SLACK_BYTES))
            cut = block.find(b"\n")
            if cut >= 0:
                return at + cut + 1
            at += len(block)
        return None

    def _get(self, first: int, stop: int) -> bytes:
        """Bytes ``[first, stop)`` with one ranged GET (HTTP ranges are inclusive)."""
        if stop <= first:
            return b""
        from botocore.exceptions import ClientError

        extra = {"IfMatch": self.etag} if self.etag else {}
        try:
            response = _client().get_object(Bucket=self.bucket, Key=self.key,
                                            Range=f"bytes={first}-{stop - 1}", **extra)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412"):
                raise InputChanged(
                    f"{self.uri} changed after fanout.s3_chunks listed it (ETag {self.etag} "
                    "then): its byte ranges belong to that version. List it again and rerun"
                ) from exc
            raise
        data: bytes = response["Body"].read()
        return data

    def __repr__(self) -> str:
        return f"S3Chunk({self.uri!r}, bytes {self.start}-{self.end} of {self.size})"


def list_objects(uri: str) -> list[tuple[str, str, int, str | None]]:
    """(bucket, key, size, ETag) of the object ``uri`` names, or of every one under it.

    A key that names an object exactly is that object alone; otherwise it is a prefix, in
    S3's (lexicographic) order. Folder markers (keys ending in ``/``) are skipped.
    """
    bucket, prefix = parse_uri(uri)
    found: list[tuple[str, str, int, str | None]] = []
    paginator = _client().get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/"):
                continue  # a folder marker, even the one named by the prefix itself
            entry = (bucket, obj["Key"], int(obj["Size"]), obj.get("ETag"))
            if obj["Key"] == prefix and prefix:
                return [entry]
            found.append(entry)
    if not found:
        raise FileNotFoundError(f"no objects under {uri}: check the bucket and prefix (and "
                                "that these credentials may list them)")
    return found


def s3_chunks(uri: str, chunk_bytes: int | None = None, *, lines: bool = True
              ) -> list[S3Chunk]:
    """The tasks' inputs for the objects under ``uri``: byte ranges of ``chunk_bytes`` each.

    Without ``chunk_bytes`` each object is one chunk. Every object gives at least one chunk
    (an empty one reads as ``b""``), so each is seen by a task. ``lines=False`` splits at
    exact byte offsets (binary data); see the module docstring for how lines are kept whole.
    """
    if chunk_bytes is not None and (isinstance(chunk_bytes, bool)
                                    or not isinstance(chunk_bytes, int) or chunk_bytes <= 0):
        raise InvalidArgument(f"chunk_bytes must be a positive integer, got {chunk_bytes!r}")
    chunks = []
    for bucket, key, size, etag in list_objects(uri):
        step = chunk_bytes or max(size, 1)
        for start in range(0, max(size, 1), step):
            chunks.append(S3Chunk(bucket, key, start, min(size, start + step), size, lines,
                                  etag))
    return chunks


def expand(iterable: Iterable[Any] | str) -> Iterable[Any]:
    """An ``"s3://..."`` string given to ``map`` as an iterable means its objects' chunks."""
    if isinstance(iterable, str) and iterable.startswith(S3_SCHEME):
        return s3_chunks(iterable)
    return iterable
