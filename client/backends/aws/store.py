"""The AWS store: payloads, functions, large values and checkpoints in S3; records in DynamoDB.

Table layout (one table, on-demand; ``layout.py`` plans a job's numbers S, P and H):

=============  ===============================  ==========================================
item           key (job_id, item)               what
=============  ===============================  ==========================================
job record     (job, "job")                     spec, state, owner, summary; ``entity`` +
                                                ``created`` feed the ``jobs`` index
result page    (job#<g mod S>, "p#000000012")   the records of tasks g*P .. g*P+P-1, one
                                                map attribute ``t<o>`` each (``pages.py``);
                                                ``written`` (ms) feeds the KEYS_ONLY
                                                ``by_written`` index the client polls
reduce result  (job, "reduce")                  the reducer's record (``entry``), same rule
=============  ===============================  ==========================================

A worker writes the finished tasks of a page with one conditional ``UpdateItem``: the
protocol's rule as a condition on each task's entry, so a page write from a retried
attempt never replaces a succeeded task's result. S partition keys spread a wide job's
writes below DynamoDB's per-key limit; spilled values and checkpoints live under H hashed
prefixes ``jobs/<id>/values/<h>/`` for S3's per-prefix limit. ``docs/scale.md`` has the
numbers.
"""

from __future__ import annotations

import json
import pickle
import secrets
import time
from typing import Any

from botocore.exceptions import ClientError

from ...errors import InvalidArgument, JobNotFound, ScheduleNotFound, StoreError
from ...ids import check_job_id
from ...job_record import JobRecord, Owner
from ...protocol import (
    REDUCE_INDEX,
    RUNNING,
    SUCCEEDED,
    Chunk,
    JobSpec,
    ResultRecord,
    TaskRef,
)
from ...states import JobState
from ...summary import Timings, status_counts
from .config import AwsConfig
from .layout import Layout
from .pages import (
    ENTRY_MAX_BYTES,
    PAGE_PREFIX,
    condition,
    decode,
    encode,
    entry_size,
    field,
    may_replace,
    page_item,
    spilled,
    worker_ref,
)

#: A value above this goes to S3 (a hashed prefix) and its page entry keeps a reference: a
#: page of up to 16 entries must fit DynamoDB's 400 KB item limit.
MAX_RECORD_VALUE_BYTES = 16_000
#: A page write whose condition fails is re-read and retried for the entries that may still
#: be written; each round settles at least one entry unless the page changes between the
#: read and the write, so this many rounds means something is wrong: raise, never spin.
PAGE_WRITE_ROUNDS = 20
#: How far back each poll looks again, for records the eventually consistent index shows late.
POLL_OVERLAP_MS = 5_000
#: Every this often, a poll looks back DEEP_LOOKBACK_MS instead: a page's ``written`` is its
#: writer's clock when the request was built, so a write that reached the table late (an
#: SDK retry after a throttle or a 5xx resends the same request; a worker starved of CPU;
#: an index lagging under load) sorts behind the poll cursor by more than the overlap.
#: Such a page is delivered by the next deep look, and at the latest by the full read a
#: client makes when the job ends (AwsBackend._abandon).
DEEP_POLL_EVERY_SECONDS = 30.0
DEEP_LOOKBACK_MS = 120_000
#: The sparse, KEYS_ONLY polling index (HASH job_id, RANGE written): only result pages and
#: the reduce record carry ``written``.
POLL_INDEX = "by_written"
#: Objects under this prefix expire (the bucket's lifecycle rule, PayloadRetentionDays).
JOBS_PREFIX = "jobs/"
#: Long-lived objects (schedule definitions) live here, outside the expiring prefix.
SCHEDULES_PREFIX = "schedules/"


def segment_manifest(segment: int) -> str:
    """The object holding the chunks of a streamed job's appended ``segment`` (1, 2, ...)."""
    return f"manifest-segment-{segment}.json"


def task_key(index: int) -> str:
    return "reduce" if index == REDUCE_INDEX else f"task#{index:09d}"


class AwsStore:
    """The :class:`~fanout.protocol.TaskStore` and :class:`~fanout.backends.job_store.JobStore`
    of the AWS backend (client and workers).

    Why one class of this size: every method is one or two requests against the same
    bucket and table, sharing their clients, the key scheme (``key``, ``task_key``) and the
    bundle cache; a warm Lambda keeps this one object for its life. The logic above the
    requests lives elsewhere (``fanout.backends.lifecycle``, ``fanout.summary``).
    """

    max_record_value_bytes = MAX_RECORD_VALUE_BYTES

    #: How often a poll looks DEEP_LOOKBACK_MS back (per job); an instance may change it.
    deep_poll_every_seconds: float = DEEP_POLL_EVERY_SECONDS

    def __init__(self, config: AwsConfig, session: Any = None) -> None:
        import boto3

        self.config = config
        self.session = session or boto3.session.Session(region_name=config.region)
        kwargs = {"endpoint_url": config.endpoint_url} if config.endpoint_url else {}
        self.s3 = self.session.client("s3", **kwargs)
        self.dynamodb = self.session.client("dynamodb", **kwargs)
        self.bucket = config.bucket
        self.table = config.table
        self._bundles: dict[str, dict[str, Any]] = {}
        self._layouts: dict[str, Layout] = {}
        self._polled: dict[str, dict[tuple[str, str], int]] = {}
        self._deep_polled: dict[str, float] = {}  # job -> when a poll last looked far back

    # -- S3 objects ------------------------------------------------------------------------

    @staticmethod
    def key(job_id: str, name: str) -> str:
        return f"{JOBS_PREFIX}{check_job_id(job_id)}/{name}"

    def put_object(self, job_id: str, name: str, data: bytes) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.key(job_id, name), Body=data)

    def get_object(self, job_id: str, name: str) -> bytes:
        body = self.s3.get_object(Bucket=self.bucket, Key=self.key(job_id, name))["Body"]
        return bytes(body.read())

    def put_chunks(self, job_id: str, name: str, chunks: list[Chunk]) -> list[dict[str, Any]]:
        """Write ``chunks`` as one JSON array; return a reference (key + byte range) to each.

        Workers receive references, not chunks: a Batch job's container overrides are capped
        at 8,192 characters and a state's input at 256 KiB, and a chunk of a few hundred
        tasks exceeds the first. The array stays a plain JSON list for ``retry``.
        """
        key = self.key(job_id, name)
        parts = [json.dumps(c.to_json(), separators=(",", ":")).encode() for c in chunks]
        refs, offset = [], 1
        for chunk, part in zip(chunks, parts, strict=True):
            refs.append({"job_id": job_id, "index": chunk.index, "tier": chunk.tier,
                         "key": key, "offset": offset, "length": len(part)})
            offset += len(part) + 1
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=b"[" + b",".join(parts) + b"]")
        return refs

    def read_chunk_ref(self, ref: dict[str, Any]) -> Chunk:
        """The chunk a reference from :meth:`put_chunks` points to (one ranged GET)."""
        key, offset, length = str(ref["key"]), int(ref["offset"]), int(ref["length"])
        if not key.startswith(f"{JOBS_PREFIX}{ref['job_id']}/") or ".." in key:
            raise StoreError(f"chunk reference {key!r} points outside job {ref['job_id']}")
        response = self.s3.get_object(Bucket=self.bucket, Key=key,
                                      Range=f"bytes={offset}-{offset + length - 1}")
        data = bytes(response["Body"].read())
        if len(data) != length:
            raise OSError(f"chunk {ref['index']} of job {ref['job_id']} is truncated in {key}")
        return Chunk.from_json(json.loads(data))

    def put_bundle(self, spec: JobSpec, function: bytes, reducer: bytes | None,
                   layout: Layout | None = None) -> None:
        """The spec, the pickled functions and the record layout as one object: one GET per
        cold worker."""
        layout = layout or self.config.layout or Layout()
        bundle = {"spec": spec.to_json(), "function": function, "reducer": reducer,
                  "layout": layout.to_json()}
        self.remember_layout(spec.job_id, layout)
        self.put_object(spec.job_id, "bundle.pkl", pickle.dumps(bundle, protocol=5))

    def _bundle(self, job_id: str) -> dict[str, Any]:
        bundle = self._bundles.get(job_id)
        if bundle is None:
            bundle = pickle.loads(self.get_object(job_id, "bundle.pkl"))
            self._bundles[job_id] = bundle
            while len(self._bundles) > 8:
                self._bundles.pop(next(iter(self._bundles)))
        return bundle

    def load_spec(self, job_id: str) -> JobSpec:
        return JobSpec.from_json(self._bundle(job_id)["spec"])

    def load_function(self, job_id: str, which: str) -> bytes:
        if which not in ("function", "reducer"):
            raise ValueError(f"unknown function object {which!r}")
        data = self._bundle(job_id)[which]
        if data is None:
            raise ValueError(f"job {job_id} has no {which}")
        return bytes(data)

    def read_task(self, job_id: str, task: TaskRef) -> bytes:
        """One task's arguments: a ranged GET of the job's payload object."""
        end = task.offset + task.length - 1
        response = self.s3.get_object(Bucket=self.bucket, Key=self.key(job_id, task.object),
                                      Range=f"bytes={task.offset}-{end}")
        data = bytes(response["Body"].read())
        if len(data) != task.length:
            raise OSError(f"payload {task.object} of job {job_id} is truncated: "
                          f"task {task.index} is missing")
        return data

    def read_chunk(self, job_id: str, tasks: tuple[TaskRef, ...]) -> dict[int, bytes]:
        """All of a chunk's arguments with one ranged GET per payload object."""
        out: dict[int, bytes] = {}
        by_object: dict[str, list[TaskRef]] = {}
        for task in tasks:
            by_object.setdefault(task.object, []).append(task)
        for name, refs in by_object.items():
            first = min(t.offset for t in refs)
            last = max(t.offset + t.length for t in refs)
            response = self.s3.get_object(Bucket=self.bucket, Key=self.key(job_id, name),
                                          Range=f"bytes={first}-{last - 1}")
            data = bytes(response["Body"].read())
            if len(data) != last - first:
                raise OSError(f"payload {name} of job {job_id} is truncated")
            for task in refs:
                out[task.index] = data[task.offset - first:task.offset - first + task.length]
        return out

    # -- records ---------------------------------------------------------------------------

    def expires(self) -> dict[str, str]:
        """The TTL attribute of a record written now (ResultRetentionDays ahead)."""
        return {"N": str(int(time.time()) + self.config.retention_days * 86400)}

    def layout(self, job_id: str) -> Layout:
        """The job's layout: from its bundle (planned at submit), else the configured one
        (a store that only writes records, as the guarantee tests do, has no bundle)."""
        layout = self._layouts.get(job_id)
        if layout is None:
            try:
                layout = Layout.from_json(self._bundle(job_id).get("layout"))
            except ClientError as exc:
                if exc.response["Error"]["Code"] not in ("NoSuchKey", "404"):
                    raise
                layout = self.config.layout or Layout()
            self.remember_layout(job_id, layout)
        return layout

    def remember_layout(self, job_id: str, layout: Layout) -> None:
        self._layouts[job_id] = layout
        while len(self._layouts) > 64:
            self._layouts.pop(next(iter(self._layouts)))

    def _reduce_item(self, record: ResultRecord) -> dict[str, Any]:
        """The reduce record: an item of its own, flat (its layout predates pages)."""
        stamp = {"N": str(int(time.time() * 1000))}
        item: dict[str, Any] = {
            "job_id": {"S": record.job_id}, "item": {"S": task_key(REDUCE_INDEX)},
            "task_index": {"N": str(record.task_index)}, "status": {"S": record.status},
            "attempt": {"N": str(record.attempt)}, "worker_id": {"S": record.worker_id or "-"},
            "started": {"N": repr(record.started)}, "ended": {"N": repr(record.ended)},
            "written": stamp, "stdout": {"S": record.stdout}, "stderr": {"S": record.stderr},
            "extra": {"S": json.dumps(record.extra)}, "expires": self.expires(),
        }
        for name in ("value", "exc_pickle"):
            value = getattr(record, name)
            if value is not None:
                item[name] = {"B": value}
        for name in ("value_ref", "exc_type", "exc_message", "traceback"):
            value = getattr(record, name)
            if value is not None:
                item[name] = {"S": value}
        return item

    @staticmethod
    def _reduce_record(item: dict[str, Any]) -> ResultRecord:
        def text(name: str) -> str | None:
            return item[name]["S"] if name in item else None

        def blob(name: str) -> bytes | None:
            return bytes(item[name]["B"]) if name in item else None

        worker = item["worker_id"]["S"]
        return ResultRecord(
            job_id=item["job_id"]["S"], task_index=int(item["task_index"]["N"]),
            status=item["status"]["S"], attempt=int(item["attempt"]["N"]),
            worker_id="" if worker == "-" else worker, started=float(item["started"]["N"]),
            ended=float(item["ended"]["N"]), value=blob("value"), value_ref=text("value_ref"),
            exc_type=text("exc_type"), exc_message=text("exc_message"),
            traceback=text("traceback"), exc_pickle=blob("exc_pickle"),
            stdout=item.get("stdout", {}).get("S", ""), stderr=item.get("stderr", {}).get("S", ""),
            extra=json.loads(item.get("extra", {}).get("S", "{}")))

    def _page_key(self, job_id: str, layout: Layout, page: int) -> dict[str, Any]:
        return {"job_id": {"S": layout.partition(job_id, page)}, "item": {"S": page_item(page)}}

    def _records_of(self, job_id: str, item: dict[str, Any]) -> list[ResultRecord]:
        """Every task record an item holds (a page: its entries; the reduce item: one)."""
        if item["item"]["S"] == task_key(REDUCE_INDEX):
            return [self._reduce_record(item)]
        first = int(item["first"]["N"])
        out = []
        for name, value in item.items():
            if name[0] == "t" and name[1:].isdigit():
                out.append(self._resolve(decode(job_id, first + int(name[1:]), value["M"], item),
                                         value["M"]))
        return out

    def _resolve(self, record: ResultRecord, entry: dict[str, Any]) -> ResultRecord:
        """A spilled entry's whole record, from S3."""
        if "R" not in entry:
            return record
        whole: ResultRecord = pickle.loads(self._get_ref(record.job_id, entry["R"]["S"]))
        return whole

    def _get_ref(self, job_id: str, ref: str) -> bytes:
        owner, _, name = ref.partition("/")
        if owner != job_id or ".." in name:
            raise ValueError(f"reference {ref!r} points outside job {job_id}")
        return self.get_object(job_id, name)

    def _entry(self, record: ResultRecord, layout: Layout) -> tuple[dict[str, Any], str | None]:
        """The record's page entry, spilling the whole record to S3 when it is too large."""
        entry = encode(record)
        if entry_size(entry) <= ENTRY_MAX_BYTES:
            return entry, None
        name = (f"records/{layout.prefix(record.task_index)}/{record.task_index}"
                f".a{record.attempt}.{secrets.token_hex(4)}.pkl")
        self.put_object(record.job_id, name, pickle.dumps(record, protocol=5))
        ref = f"{record.job_id}/{name}"
        return spilled(record, ref), ref

    def put_result(self, record: ResultRecord) -> ResultRecord:
        """The conditional write: first success wins, a later attempt replaces a failure.

        A ``running`` record (a Batch attempt interrupted by SIGTERM, waiting for Batch's
        retry) is not a result: it never replaces a stored record but an older ``running``
        one, and any final record replaces it, so neither a cancellation nor the retry's
        own result can be hidden behind an interruption.
        """
        return self.put_results([record])[0]

    def put_results(self, records: list[ResultRecord]) -> list[ResultRecord]:
        """Write ``records`` with one conditional ``UpdateItem`` per page they fall in;
        return, for each, the record that is stored (``record`` itself when it won)."""
        stored: dict[int, ResultRecord] = {}
        groups: dict[tuple[str, int], list[tuple[int, ResultRecord]]] = {}
        for position, record in enumerate(records):
            if record.task_index == REDUCE_INDEX:
                stored[position] = self._put_reduce(record)
                continue
            page = self.layout(record.job_id).page(record.task_index)
            group = groups.setdefault((record.job_id, page), [])
            if any(r.task_index == record.task_index for _, r in group):
                stored.update(self._put_page(record.job_id, page, group))
                group.clear()
            group.append((position, record))
        for (job_id, page), group in groups.items():
            if group:
                stored.update(self._put_page(job_id, page, group))
        return [stored[n] for n in range(len(records))]

    def _put_page(self, job_id: str, page: int, group: list[tuple[int, ResultRecord]]
                  ) -> dict[int, ResultRecord]:
        layout = self.layout(job_id)
        first = page * layout.page_tasks
        key = self._page_key(job_id, layout, page)
        entries = {pos: self._entry(rec, layout) for pos, rec in group}
        for pos, record in group:
            if record.worker_id:
                entries[pos][0]["w"] = {"S": "@" + worker_ref(record.worker_id)}
        pending = list(group)
        out: dict[int, ResultRecord] = {}
        for _round in range(PAGE_WRITE_ROUNDS):
            if not pending:
                break
            cond, names, values = condition([(r.task_index - first, r) for _, r in pending])
            sets = []
            workers = {r.worker_id for _, r in pending if r.worker_id}
            for n, (pos, _record) in enumerate(pending):
                values[f":r{n}"] = {"M": entries[pos][0]}
                sets.append(f"#t{n} = :r{n}")
            for n, worker in enumerate(sorted(workers)):
                names[f"#w{n}"] = worker_ref(worker)
                values[f":w{n}"] = {"S": worker}
                sets.append(f"#w{n} = :w{n}")
            names.update({"#first": "first", "#written": "written", "#expires": "expires"})
            values.update({":first": {"N": str(first)},
                           ":now": {"N": str(int(time.time() * 1000))},
                           ":expires": self.expires()})
            try:
                self.dynamodb.update_item(
                    TableName=self.table, Key=key,
                    UpdateExpression="SET " + ", ".join(sets)
                    + ", #first = :first, #written = :now, #expires = :expires",
                    ConditionExpression=cond, ExpressionAttributeNames=names,
                    ExpressionAttributeValues=values,
                    ReturnValuesOnConditionCheckFailure="ALL_OLD")
            except ClientError as exc:
                if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                    raise
                old = exc.response.get("Item") or self.dynamodb.get_item(
                    TableName=self.table, Key=key, ConsistentRead=True).get("Item") or {}
                kept = []
                for pos, record in pending:
                    entry = old.get(field(record.task_index - first), {}).get("M")
                    if may_replace(entry, record):
                        kept.append((pos, record))
                        continue
                    assert entry is not None
                    out[pos] = self._resolve(decode(job_id, record.task_index, entry, old),
                                             entry)
                    ref = entries[pos][1]
                    if ref is not None:  # lost: its spilled record is nobody's
                        self.s3.delete_object(Bucket=self.bucket,
                                              Key=self.key(*ref.split("/", 1)))
                pending = kept
                continue
            for pos, record in pending:
                out[pos] = record
            pending = []
        if pending:
            raise StoreError(
                f"the write of page {page} of job {job_id} was refused {PAGE_WRITE_ROUNDS} "
                "times although each re-read allowed it: the stored entries and the write "
                "condition disagree (a bug, or another writer changing this page as fast); "
                "the records are not stored, so their tasks count as unfinished")
        return out

    def _put_reduce(self, record: ResultRecord) -> ResultRecord:
        """The reduce record's conditional put: the protocol's rule on the whole item."""
        if record.status == RUNNING:
            condition = ("attribute_not_exists(job_id) "
                         "OR (#status = :running AND attempt < :attempt)")
            values = {":running": {"S": RUNNING}}
        else:
            condition = ("attribute_not_exists(job_id) OR #status = :running "
                         "OR (#status <> :succeeded AND attempt < :attempt)")
            values = {":running": {"S": RUNNING}, ":succeeded": {"S": SUCCEEDED}}
        try:
            self.dynamodb.put_item(
                TableName=self.table, Item=self._reduce_item(record),
                ConditionExpression=condition, ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={**values, ":attempt": {"N": str(record.attempt)}})
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            stored = self.result(record.job_id, REDUCE_INDEX)
            assert stored is not None
            return stored
        return record

    def result(self, job_id: str, task_index: int) -> ResultRecord | None:
        if task_index == REDUCE_INDEX:
            key = {"job_id": {"S": job_id}, "item": {"S": task_key(REDUCE_INDEX)}}
        else:
            layout = self.layout(job_id)
            key = self._page_key(job_id, layout, layout.page(task_index))
        item = self.dynamodb.get_item(TableName=self.table, ConsistentRead=True,
                                      Key=key).get("Item")
        if item is None:
            return None
        for record in self._records_of(job_id, item):
            if record.task_index == task_index:
                return record
        return None

    def _query(self, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        paginator = self.dynamodb.get_paginator("query")
        for page in paginator.paginate(TableName=self.table, **kwargs):
            items.extend(page["Items"])
        return items

    def results(self, job_id: str) -> list[ResultRecord]:
        """Every map-task record of a job, in task order (strongly consistent)."""
        out: list[ResultRecord] = []
        for partition in self.layout(job_id).partitions(job_id):
            for item in self._query(
                    KeyConditionExpression="job_id = :j AND begins_with(#item, :page)",
                    ExpressionAttributeNames={"#item": "item"},
                    ExpressionAttributeValues={":j": {"S": partition},
                                               ":page": {"S": PAGE_PREFIX}},
                    ConsistentRead=True):
                out.extend(self._records_of(job_id, item))
        out.sort(key=lambda r: r.task_index)
        return out

    def _batch_get(self, keys: list[dict[str, Any]], **extra: Any
                   ) -> list[dict[str, Any]]:
        """BatchGetItem, strongly consistent, at most 100 keys a request (DynamoDB's limit,
        API_BatchGetItem.html), asking again for what comes back unprocessed."""
        items: list[dict[str, Any]] = []
        for start in range(0, len(keys), 100):
            request: dict[str, Any] = {self.table: {
                "Keys": keys[start:start + 100], "ConsistentRead": True, **extra}}
            while request:
                response = self.dynamodb.batch_get_item(RequestItems=request)
                items.extend(response["Responses"].get(self.table, []))
                request = response.get("UnprocessedKeys") or {}
        return items

    def finished_tasks(self, job_id: str, indexes: list[int]) -> set[int]:
        """Which of ``indexes`` already have a successful record (a re-run skips them)."""
        layout = self.layout(job_id)
        pages = sorted({layout.page(i) for i in indexes})
        offsets = range(layout.page_tasks)
        names = {"#key": "job_id", "#item": "item", "#first": "first", "#s": "s",
                 **{f"#t{o}": field(o) for o in offsets}}
        items = self._batch_get(
            [self._page_key(job_id, layout, g) for g in pages],
            ProjectionExpression=", ".join(["#key", "#item", "#first",
                                            *(f"#t{o}.#s" for o in offsets)]),
            ExpressionAttributeNames=names)
        asked, done = set(indexes), set()
        for item in items:
            first = int(item["first"]["N"])
            for o in offsets:
                entry = item.get(field(o))
                if entry and entry["M"]["s"]["S"] == SUCCEEDED and first + o in asked:
                    done.add(first + o)
        return done

    def results_since(self, job_id: str, cursor: int) -> tuple[list[ResultRecord], int]:
        """Records written after ``cursor`` (ms); O(new pages).

        Queries the KEYS_ONLY ``by_written`` index on each of the job's partitions, looking
        a short overlap back (the index is eventually consistent and ``written`` is the
        writer's clock), and every ``deep_poll_every_seconds`` much further back (see
        DEEP_LOOKBACK_MS); skips page versions already read, and reads the new ones from the
        table, strongly consistently. A cursor of 0 starts over.
        """
        seen = self._polled.setdefault(job_id, {})
        if cursor == 0:
            seen.clear()
        clock = time.monotonic()
        deep = clock - self._deep_polled.get(job_id, clock) >= self.deep_poll_every_seconds
        if deep or job_id not in self._deep_polled:
            self._deep_polled[job_id] = clock
        since = max(0, cursor - (DEEP_LOOKBACK_MS if deep else POLL_OVERLAP_MS))
        fresh: dict[tuple[str, str], int] = {}
        for partition in [job_id, *self.layout(job_id).partitions(job_id)]:
            for key in self._query(
                    IndexName=POLL_INDEX,
                    KeyConditionExpression="job_id = :j AND written > :since",
                    ExpressionAttributeValues={":j": {"S": partition},
                                               ":since": {"N": str(since)}}):
                name = (key["job_id"]["S"], key["item"]["S"])
                written = int(key["written"]["N"])
                if seen.get(name, -1) < written and fresh.get(name, -1) < written:
                    fresh[name] = written
        if not fresh:
            return [], cursor
        records: list[ResultRecord] = []
        for item in self._batch_get([{"job_id": {"S": p}, "item": {"S": i}} for p, i in fresh]):
            written = int(item["written"]["N"])
            name = (item["job_id"]["S"], item["item"]["S"])
            seen[name] = max(written, fresh[name])
            records.extend(self._records_of(job_id, item))
        newest = max(fresh.values())
        # Versions a deep look could still return are remembered, so it re-reads none.
        for name in [n for n, w in seen.items() if w < newest - 2 * DEEP_LOOKBACK_MS]:
            del seen[name]
        return records, max(cursor, newest)

    # -- job records -----------------------------------------------------------------------

    def put_job(self, spec: JobSpec, state: str, owner: str) -> None:
        self.dynamodb.put_item(TableName=self.table, Item={
            "job_id": {"S": spec.job_id}, "item": {"S": "job"}, "entity": {"S": "job"},
            "created": {"N": repr(spec.created)}, "spec": {"S": spec.to_json()},
            "state": {"S": state}, "owner": {"S": owner},
            "expires": self.expires(),
        })

    def job(self, job_id: str) -> JobRecord:
        response = self.dynamodb.get_item(
            TableName=self.table, ConsistentRead=True,
            Key={"job_id": {"S": job_id}, "item": {"S": "job"}})
        if "Item" not in response:
            raise JobNotFound(f"no job {job_id!r} in the results table {self.table!r}; "
                              "`fanout --backend aws jobs` lists the jobs there")
        return self._job(response["Item"])

    @staticmethod
    def _job(item: dict[str, Any]) -> JobRecord:
        return JobRecord(
            job_id=item["job_id"]["S"],
            spec=JobSpec.from_json(item["spec"]["S"]),
            state=item["state"]["S"],
            summary=json.loads(item["summary"]["S"]) if "summary" in item else None,
            owner=Owner.from_json(item.get("owner", {}).get("S")),
            execution_arn=item.get("execution_arn", {}).get("S"),
            # started in waves (tasks that take futures): no one execution covers every task
            waves=item.get("waves", {}).get("S") == "1",
            open=item.get("open", {}).get("S") == "1",
        )

    def jobs(self, limit: int = 50) -> list[JobRecord]:
        response = self.dynamodb.query(
            TableName=self.table, IndexName="jobs", ScanIndexForward=False, Limit=limit,
            KeyConditionExpression="entity = :e", ExpressionAttributeValues={":e": {"S": "job"}})
        return [self._job(item) for item in response["Items"]]

    def manifest(self, job_id: str) -> list[Chunk]:
        """The job's first chunks (``manifest.json``), then each appended segment's."""
        response = self.dynamodb.get_item(
            TableName=self.table, ConsistentRead=True, ProjectionExpression="#segments",
            ExpressionAttributeNames={"#segments": "segments"},
            Key={"job_id": {"S": job_id}, "item": {"S": "job"}})
        segments = int(response.get("Item", {}).get("segments", {}).get("N", "0"))
        names = ["manifest.json", *(segment_manifest(s) for s in range(1, segments + 1))]
        return [Chunk.from_json(c) for name in names
                for c in json.loads(self.get_object(job_id, name))]

    def append_tasks(self, spec: JobSpec, segment: int, chunks: list[Chunk]) -> bool:
        """Add a streamed segment to a running job: its chunks as their own object, then
        the record's spec (task count) and segment count in one conditional update, so a
        job cancelled meanwhile takes nothing (False)."""
        self.put_chunks(spec.job_id, segment_manifest(segment), chunks)
        try:
            self.dynamodb.update_item(
                TableName=self.table, Key={"job_id": {"S": spec.job_id}, "item": {"S": "job"}},
                UpdateExpression="SET #spec = :spec, #segments = :segment",
                ConditionExpression="#state = :running",
                ExpressionAttributeNames={"#spec": "spec", "#segments": "segments",
                                          "#state": "state"},
                ExpressionAttributeValues={":spec": {"S": spec.to_json()},
                                           ":segment": {"N": str(segment)},
                                           ":running": {"S": JobState.RUNNING.value}})
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            return False
        return True

    def set_job_state(self, job_id: str, state: str, *,
                      summary: dict[str, Any] | None = None) -> bool:
        fields: dict[str, Any] = {"state": state}
        if summary is not None:
            fields["summary"] = summary
        self.update_job(job_id, **fields)
        return True

    def status_counts(self, job_id: str) -> dict[str, int]:
        return status_counts(self.results(job_id))

    def timings(self, job_id: str) -> Timings:
        return Timings.of(self.results(job_id))

    def update_job(self, job_id: str, **fields: Any) -> None:
        names, values, sets = {}, {}, []
        for n, (name, value) in enumerate(fields.items()):
            names[f"#f{n}"] = name
            if isinstance(value, (dict, list)):
                value = json.dumps(value)
            values[f":v{n}"] = {"S": str(value)}
            sets.append(f"#f{n} = :v{n}")
        self.dynamodb.update_item(
            TableName=self.table, Key={"job_id": {"S": job_id}, "item": {"S": "job"}},
            UpdateExpression="SET " + ", ".join(sets), ExpressionAttributeNames=names,
            ExpressionAttributeValues=values)

    # -- schedules: the stored definition in S3, runs in the table -------------------------

    @staticmethod
    def schedule_prefix(name: str) -> str:
        return f"schedule-{name}"

    @staticmethod
    def schedule_key(name: str) -> str:
        """A schedule lives as long as the schedule, so never under the expiring jobs/."""
        if not name or "/" in name or name.startswith("."):
            raise InvalidArgument(f"invalid schedule name {name!r}")
        return f"{SCHEDULES_PREFIX}{name}/schedule.pkl"

    def put_schedule_bundle(self, name: str, bundle: dict[str, Any]) -> str:
        key = self.schedule_key(name)
        self.s3.put_object(Bucket=self.bucket, Key=key,
                           Body=pickle.dumps(bundle, protocol=5))
        return key

    def schedule_bundle(self, name: str) -> dict[str, Any]:
        """The stored schedule; one stored by an older release is moved out of ``jobs/``.

        Releases before 0.1.0's deploy fix kept schedules at ``jobs/schedule-NAME/``, which
        the bucket's lifecycle rule expires: the first read copies such a bundle to its
        lasting key, so an upgraded stack keeps firing the schedules it already had.
        """
        data = self._schedule_object(self.schedule_key(name))
        if data is None:
            legacy = self.key(self.schedule_prefix(name), "schedule.pkl")
            data = self._schedule_object(legacy)
            if data is None:
                raise ScheduleNotFound(f"no schedule {name!r} in s3://{self.bucket}/"
                                       f"{self.schedule_key(name)}")
            self.s3.put_object(Bucket=self.bucket, Key=self.schedule_key(name), Body=data)
        bundle: dict[str, Any] = pickle.loads(data)
        return bundle

    def _schedule_object(self, key: str) -> bytes | None:
        try:
            body: bytes = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise
        return body

    def put_schedule_run(self, name: str, fired_at: float, job_id: str | None,
                         outcome: str) -> None:
        item = {"job_id": {"S": self.schedule_prefix(name)},
                "item": {"S": f"run#{fired_at:017.6f}"},
                "fired_at": {"N": repr(fired_at)}, "outcome": {"S": outcome},
                "expires": self.expires()}
        if job_id:
            item["run_job_id"] = {"S": job_id}
        self.dynamodb.put_item(TableName=self.table, Item=item)

    def schedule_runs(self, name: str, limit: int = 100) -> list[tuple[float, str | None, str]]:
        response = self.dynamodb.query(
            TableName=self.table, ScanIndexForward=False, Limit=limit, ConsistentRead=True,
            KeyConditionExpression="job_id = :s AND begins_with(#item, :run)",
            ExpressionAttributeNames={"#item": "item"},
            ExpressionAttributeValues={":s": {"S": self.schedule_prefix(name)},
                                       ":run": {"S": "run#"}})
        return [(float(i["fired_at"]["N"]), i.get("run_job_id", {}).get("S"),
                 i["outcome"]["S"]) for i in response["Items"]]

    # -- values and checkpoints ------------------------------------------------------------

    def put_value_blob(self, job_id: str, task_index: int, attempt: int, data: bytes) -> str:
        prefix = self.layout(job_id).prefix(task_index)
        name = f"values/{prefix}/{task_index}.a{attempt}.{secrets.token_hex(4)}.pkl"
        self.put_object(job_id, name, data)
        return f"{job_id}/{name}"

    def load_value(self, record: ResultRecord) -> bytes:
        if record.value is not None:
            return record.value
        if record.value_ref is None:
            raise ValueError(f"task {record.task_index} has no value")
        job_id, _, name = record.value_ref.partition("/")
        if job_id != record.job_id or ".." in name:
            raise StoreError(f"value reference {record.value_ref!r} points outside its job")
        return self.get_object(job_id, name)

    def _checkpoint(self, job_id: str, task_index: int) -> str:
        return f"checkpoints/{self.layout(job_id).prefix(task_index)}/{task_index}.pkl"

    def delete_value_blob(self, ref: str) -> None:
        job_id, _, name = ref.partition("/")
        self.s3.delete_object(Bucket=self.bucket, Key=self.key(job_id, name))

    def get_checkpoint(self, job_id: str, task_index: int) -> bytes | None:
        try:
            return self.get_object(job_id, self._checkpoint(job_id, task_index))
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def put_checkpoint(self, job_id: str, task_index: int, data: bytes) -> None:
        self.put_object(job_id, self._checkpoint(job_id, task_index), data)

    def delete_checkpoint(self, job_id: str, task_index: int) -> None:
        self.s3.delete_object(Bucket=self.bucket,
                              Key=self.key(job_id, self._checkpoint(job_id, task_index)))
