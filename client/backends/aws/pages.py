"""A result page: the DynamoDB item holding the records of up to ``page_tasks`` tasks.

Each task of the page has one entry, a map attribute ``t<o>`` (``o`` = its offset in the
page), so one conditional ``UpdateItem`` writes several tasks' results and never touches
another task's entry. The protocol's rule (first success wins; a failure is replaced only
by a later attempt; a ``running`` marker only by a final record or a later marker) holds per
entry, as a condition on that entry.

Entry fields: ``s`` status, ``a`` attempt, ``w`` worker (``@W<crc32>``: the page attribute
``W<crc32>`` holds the worker id), ``b``/``e`` started/ended; ``v``
value or ``r`` its S3 reference; ``xt``/``xm``/``tb``/``xp`` the exception; ``so``/``se``
output tails; ``x`` extra (JSON). An entry larger than ENTRY_MAX_BYTES (long logs or a large
exception) keeps ``s``/``a``/``w``/``b``/``e`` and ``R``, a reference to the whole record
pickled in S3, so a page always fits DynamoDB's 400 KB item limit
(docs.aws.amazon.com/amazondynamodb/latest/developerguide/Constraints.html).
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

from ...protocol import RUNNING, SUCCEEDED, ResultRecord

#: Above this an entry's record is spilled to S3 (16 entries of it stay under 400 KB).
ENTRY_MAX_BYTES = 20_000
#: The sort key prefix of page items.
PAGE_PREFIX = "p#"


def page_item(page: int) -> str:
    return f"{PAGE_PREFIX}{page:09d}"


def field(offset: int) -> str:
    return f"t{offset}"


def entry_size(entry: dict[str, Any]) -> int:
    """Roughly what DynamoDB counts: names plus values."""
    size = 0
    for name, value in entry.items():
        size += len(name) + len(next(iter(value.values())))
    return size


def encode(record: ResultRecord) -> dict[str, Any]:
    """A record as a page entry (a DynamoDB map)."""
    entry: dict[str, Any] = {
        "s": {"S": record.status}, "a": {"N": str(record.attempt)},
        "w": {"S": record.worker_id or "-"},
        "b": {"N": repr(record.started)}, "e": {"N": repr(record.ended)},
    }
    for key, name in (("v", "value"), ("xp", "exc_pickle")):
        blob = getattr(record, name)
        if blob is not None:
            entry[key] = {"B": blob}
    for key, name in (("r", "value_ref"), ("xt", "exc_type"), ("xm", "exc_message"),
                      ("tb", "traceback")):
        text = getattr(record, name)
        if text is not None:
            entry[key] = {"S": text}
    if record.stdout:
        entry["so"] = {"S": record.stdout}
    if record.stderr:
        entry["se"] = {"S": record.stderr}
    # The runtime's "no checkpoint to clean up" flag is the worker's own business (settle()
    # drops it after the write); leaving it out keeps a page of 10 small results in 1 KB.
    extra = {k: v for k, v in record.extra.items() if not (k == "checkpoint" and v is False)}
    if extra:
        entry["x"] = {"S": json.dumps(extra, separators=(",", ":"))}
    return entry


def spilled(record: ResultRecord, ref: str) -> dict[str, Any]:
    """The entry of a record whose whole content lives in S3 under ``ref``."""
    entry = encode(ResultRecord(record.job_id, record.task_index, record.status,
                                record.attempt, record.worker_id, record.started,
                                record.ended))
    entry["R"] = {"S": ref}
    return entry


def worker_ref(worker_id: str) -> str:
    """The page attribute holding a worker id: an entry names it by this short key, so
    eight entries of one worker do not repeat a 43-byte Lambda request id."""
    return f"W{zlib.crc32(worker_id.encode()):08x}"


def decode(job_id: str, task_index: int, entry: dict[str, Any],
           page: dict[str, Any] | None = None) -> ResultRecord:
    """A page entry as a record (a spilled entry's ``R`` is resolved by the store); an
    entry's worker ``@W…`` is read from the page's attribute of that name."""
    def text(key: str) -> str | None:
        return entry[key]["S"] if key in entry else None

    def blob(key: str) -> bytes | None:
        return bytes(entry[key]["B"]) if key in entry else None

    worker = entry["w"]["S"]
    if worker.startswith("@") and page is not None and worker[1:] in page:
        worker = page[worker[1:]]["S"]
    return ResultRecord(
        job_id=job_id, task_index=task_index, status=entry["s"]["S"],
        attempt=int(entry["a"]["N"]), worker_id="" if worker == "-" else worker,
        started=float(entry["b"]["N"]), ended=float(entry["e"]["N"]),
        value=blob("v"), value_ref=text("r"), exc_type=text("xt"),
        exc_message=text("xm"), traceback=text("tb"), exc_pickle=blob("xp"),
        stdout=text("so") or "", stderr=text("se") or "",
        extra=json.loads(entry["x"]["S"]) if "x" in entry else {},
    )


def may_replace(stored: dict[str, Any] | None, record: ResultRecord) -> bool:
    """The protocol's rule on one entry, as :func:`condition` states it to DynamoDB."""
    if stored is None:
        return True
    status, attempt = stored["s"]["S"], int(stored["a"]["N"])
    if record.status == RUNNING:
        return status == RUNNING and attempt < record.attempt
    return status == RUNNING or (status != SUCCEEDED and attempt < record.attempt)


def condition(records: list[tuple[int, ResultRecord]]) -> tuple[str, dict[str, str],
                                                               dict[str, Any]]:
    """The condition expression (and its names/values) under which every entry may be
    written: :func:`may_replace` for each, all or none (a failed check writes nothing)."""
    clauses = []
    names = {"#s": "s", "#a": "a"}
    values: dict[str, Any] = {":running": {"S": RUNNING}, ":ok": {"S": SUCCEEDED}}
    for n, (offset, record) in enumerate(records):
        names[f"#t{n}"] = field(offset)
        values[f":a{n}"] = {"N": str(record.attempt)}
        if record.status == RUNNING:
            clause = (f"(attribute_not_exists(#t{n}) OR "
                      f"(#t{n}.#s = :running AND #t{n}.#a < :a{n}))")
        else:
            clause = (f"(attribute_not_exists(#t{n}) OR #t{n}.#s = :running OR "
                      f"(#t{n}.#s <> :ok AND #t{n}.#a < :a{n}))")
        clauses.append(clause)
    expression = " AND ".join(clauses)
    # DynamoDB refuses a request naming a value no expression uses.
    values = {k: v for k, v in values.items() if re.search(re.escape(k) + r"\b", expression)}
    return expression, names, values
