"""The AWS store: payloads, functions, large values and checkpoints in S3; records in DynamoDB.

Table layout (one table, on-demand):

=============  ==========================  ===============================================
item           key (job_id, item)          what
=============  ==========================  ===============================================
job record     (job, "job")                spec, state, owner, summary; ``entity="job"`` +
                                           ``created`` feed the ``jobs`` index for listing
task result    (job, "task#000000012")     one ``ResultRecord``; ``finished`` (ms) feeds the
                                           ``by_finished`` index, so polling reads only
                                           records written since the last poll
reduce result  (job, "reduce")             the reducer's record
=============  ==========================  ===============================================

The conditional put is the protocol's rule as a condition expression: write if there is no
record, or if the stored one did not succeed and comes from an earlier attempt.
"""

from __future__ import annotations

import json
import pickle
import secrets
import time
from typing import Any

from botocore.exceptions import ClientError

from ...errors import InvalidArgument, JobNotFound, ScheduleNotFound
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
from ...summary import Timings, status_counts
from .config import AwsConfig

#: Records must fit DynamoDB's 400 KB item limit with their logs (two 64 KiB tails).
MAX_RECORD_VALUE_BYTES = 200_000
#: How far back each poll looks again, for records the eventually consistent index shows late.
POLL_OVERLAP_MS = 5_000
#: Objects under this prefix expire (the bucket's lifecycle rule, PayloadRetentionDays).
JOBS_PREFIX = "jobs/"
#: Long-lived objects (schedule definitions) live here, outside the expiring prefix.
SCHEDULES_PREFIX = "schedules/"


def task_key(index: int) -> str:
    return "reduce" if index == REDUCE_INDEX else f"task#{index:09d}"


class AwsStore:
    """The :class:`~fanout.protocol.TaskStore` of the AWS backend (client and workers)."""

    max_record_value_bytes = MAX_RECORD_VALUE_BYTES

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
            raise ValueError(f"chunk reference {key!r} points outside job {ref['job_id']}")
        response = self.s3.get_object(Bucket=self.bucket, Key=key,
                                      Range=f"bytes={offset}-{offset + length - 1}")
        data = bytes(response["Body"].read())
        if len(data) != length:
            raise OSError(f"chunk {ref['index']} of job {ref['job_id']} is truncated in {key}")
        return Chunk.from_json(json.loads(data))

    def put_bundle(self, spec: JobSpec, function: bytes, reducer: bytes | None) -> None:
        """The spec and the pickled functions as one object: one GET per cold worker."""
        bundle = {"spec": spec.to_json(), "function": function, "reducer": reducer}
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

    def _item(self, record: ResultRecord) -> dict[str, Any]:
        finished_ms = int(time.time() * 1000)
        item: dict[str, Any] = {
            "job_id": {"S": record.job_id},
            "item": {"S": task_key(record.task_index)},
            "task_index": {"N": str(record.task_index)},
            "status": {"S": record.status},
            "attempt": {"N": str(record.attempt)},
            "worker_id": {"S": record.worker_id or "-"},
            "started": {"N": repr(record.started)},
            "ended": {"N": repr(record.ended)},
            "finished": {"N": str(finished_ms)},
            "stdout": {"S": record.stdout},
            "stderr": {"S": record.stderr},
            "extra": {"S": json.dumps(record.extra)},
            "expires": self.expires(),
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
    def _record(item: dict[str, Any]) -> ResultRecord:
        def text(name: str) -> str | None:
            return item[name]["S"] if name in item else None

        def blob(name: str) -> bytes | None:
            return bytes(item[name]["B"]) if name in item else None

        worker = item["worker_id"]["S"]
        return ResultRecord(
            job_id=item["job_id"]["S"],
            task_index=int(item["task_index"]["N"]),
            status=item["status"]["S"],
            attempt=int(item["attempt"]["N"]),
            worker_id="" if worker == "-" else worker,
            started=float(item["started"]["N"]),
            ended=float(item["ended"]["N"]),
            value=blob("value"),
            value_ref=text("value_ref"),
            exc_type=text("exc_type"),
            exc_message=text("exc_message"),
            traceback=text("traceback"),
            exc_pickle=blob("exc_pickle"),
            stdout=item.get("stdout", {}).get("S", ""),
            stderr=item.get("stderr", {}).get("S", ""),
            extra=json.loads(item.get("extra", {}).get("S", "{}")),
        )

    def put_result(self, record: ResultRecord) -> ResultRecord:
        """The conditional put: first success wins, a later attempt replaces a failure.

        A ``running`` record (a Batch attempt interrupted by SIGTERM, waiting for Batch's
        retry) is not a result: it never replaces a stored record but an older ``running``
        one, and any final record replaces it, so neither a cancellation nor the retry's
        own result can be hidden behind an interruption.
        """
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
                TableName=self.table,
                Item=self._item(record),
                ConditionExpression=condition,
                ExpressionAttributeNames={"#status": "status"},
                ExpressionAttributeValues={**values, ":attempt": {"N": str(record.attempt)}},
            )
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ConditionalCheckFailedException":
                raise
            stored = self.result(record.job_id, record.task_index)
            assert stored is not None
            return stored
        return record

    def put_results(self, records: list[ResultRecord]) -> list[ResultRecord]:
        return [self.put_result(r) for r in records]

    def result(self, job_id: str, task_index: int) -> ResultRecord | None:
        response = self.dynamodb.get_item(
            TableName=self.table, ConsistentRead=True,
            Key={"job_id": {"S": job_id}, "item": {"S": task_key(task_index)}})
        item = response.get("Item")
        return None if item is None else self._record(item)

    def _query(self, **kwargs: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        paginator = self.dynamodb.get_paginator("query")
        for page in paginator.paginate(TableName=self.table, **kwargs):
            items.extend(page["Items"])
        return items

    def results(self, job_id: str) -> list[ResultRecord]:
        """Every map-task record of a job, in task order (strongly consistent)."""
        items = self._query(
            KeyConditionExpression="job_id = :j AND begins_with(#item, :task)",
            ExpressionAttributeNames={"#item": "item"},
            ExpressionAttributeValues={":j": {"S": job_id}, ":task": {"S": "task#"}},
            ConsistentRead=True,
        )
        return [self._record(item) for item in items]

    def finished_tasks(self, job_id: str, indexes: list[int]) -> set[int]:
        """Which of ``indexes`` already have a successful record (a re-run skips them)."""
        done: set[int] = set()
        for start in range(0, len(indexes), 100):
            keys = [{"job_id": {"S": job_id}, "item": {"S": task_key(i)}}
                    for i in indexes[start:start + 100]]
            request: dict[str, Any] = {self.table: {
                "Keys": keys, "ConsistentRead": True,
                "ProjectionExpression": "task_index, #status",
                "ExpressionAttributeNames": {"#status": "status"}}}
            while request:
                response = self.dynamodb.batch_get_item(RequestItems=request)
                for item in response["Responses"].get(self.table, []):
                    if item["status"]["S"] == SUCCEEDED:
                        done.add(int(item["task_index"]["N"]))
                request = response.get("UnprocessedKeys") or {}
        return done

    def results_since(self, job_id: str, cursor: int) -> tuple[list[ResultRecord], int]:
        """Records finished after ``cursor`` (ms), re-reading a short overlap; O(new)."""
        items = self._query(
            IndexName="by_finished",
            KeyConditionExpression="job_id = :j AND finished > :since",
            ExpressionAttributeValues={":j": {"S": job_id},
                                       ":since": {"N": str(max(0, cursor - POLL_OVERLAP_MS))}},
        )
        if not items:
            return [], cursor
        newest = max(int(item["finished"]["N"]) for item in items)
        return [self._record(item) for item in items], max(cursor, newest)

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
        )

    def jobs(self, limit: int = 50) -> list[JobRecord]:
        response = self.dynamodb.query(
            TableName=self.table, IndexName="jobs", ScanIndexForward=False, Limit=limit,
            KeyConditionExpression="entity = :e", ExpressionAttributeValues={":e": {"S": "job"}})
        return [self._job(item) for item in response["Items"]]

    def manifest(self, job_id: str) -> list[Chunk]:
        return [Chunk.from_json(c) for c in json.loads(self.get_object(job_id, "manifest.json"))]

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
        name = f"values/{task_index}.a{attempt}.{secrets.token_hex(4)}.pkl"
        self.put_object(job_id, name, data)
        return f"{job_id}/{name}"

    def load_value(self, record: ResultRecord) -> bytes:
        if record.value is not None:
            return record.value
        if record.value_ref is None:
            raise ValueError(f"task {record.task_index} has no value")
        job_id, _, name = record.value_ref.partition("/")
        if job_id != record.job_id or ".." in name:
            raise ValueError(f"value reference {record.value_ref!r} points outside its job")
        return self.get_object(job_id, name)

    def delete_value_blob(self, ref: str) -> None:
        job_id, _, name = ref.partition("/")
        self.s3.delete_object(Bucket=self.bucket, Key=self.key(job_id, name))

    def get_checkpoint(self, job_id: str, task_index: int) -> bytes | None:
        try:
            return self.get_object(job_id, f"checkpoints/{task_index}.pkl")
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("NoSuchKey", "404"):
                return None
            raise

    def put_checkpoint(self, job_id: str, task_index: int, data: bytes) -> None:
        self.put_object(job_id, f"checkpoints/{task_index}.pkl", data)

    def delete_checkpoint(self, job_id: str, task_index: int) -> None:
        self.s3.delete_object(Bucket=self.bucket,
                              Key=self.key(job_id, f"checkpoints/{task_index}.pkl"))
