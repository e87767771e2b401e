"""AWS's per-key and per-prefix request limits, applied by the emulation, scaled down.

``emulated_aws(scale=N)`` divides each limit by N, so a job N times narrower than the one
being judged meets the same pressure per key: 100 emulated workers against limits divided
by 100 stand for 10,000 workers against AWS's. A request over a limit is refused with the
error AWS returns, and botocore's own retries handle it as they would on AWS:

* DynamoDB: 1,000 write units and 3,000 read units per second per partition key, on the
  table and on each global secondary index, in both capacity modes. Over it:
  ``ProvisionedThroughputExceededException`` (HTTP 400) with a ``ThrottlingReasons`` entry
  such as ``TableWriteKeyRangeThroughputExceeded`` or ``IndexWriteKeyRangeThroughputExceeded``
  (docs.aws.amazon.com/amazondynamodb/latest/developerguide/
  throttling-key-range-limit-exceeded-mitigation.html, .../APIReference/
  API_ThrottlingReason.html). A write unit is 1 KB of item, a strongly consistent read
  unit 4 KB (8 KB eventually consistent); an index write costs the projected item's size.
* Lambda: 1,000 new execution environments per 10 s per function, refilled continuously
  (a token bucket of 1,000 refilled at 100/s); over it the invoke fails with
  ``TooManyRequestsException`` (429; docs.aws.amazon.com/lambda/latest/dg/
  scaling-behavior.html), which the state machine's ``Retry`` retries.
* S3: 3,500 PUT/COPY/POST/DELETE and 5,500 GET/HEAD per second per prefix; over it
  ``503 SlowDown`` ("Please reduce your request rate"; docs.aws.amazon.com/AmazonS3/latest/
  userguide/optimizing-performance.html). The emulation takes a key's prefix to be
  everything up to its last ``/`` (S3 partitions at any character, so this is the most
  favourable reading for a design that spreads keys over sub-prefixes).

Every DynamoDB and S3 request is checked against a sliding one-second window. The emulation serves
DynamoDB requests one at a time: DynamoDB applies a conditional write atomically per item,
and moto does not lock, so concurrent conditional writes could otherwise both succeed.
"""

from __future__ import annotations

import collections
import io
import json
import math
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .validation import invalid_value

DYNAMODB_PARTITION_WCU = 1000
DYNAMODB_PARTITION_RCU = 3000
S3_PREFIX_PUT_PER_S = 3500
S3_PREFIX_GET_PER_S = 5500
LAMBDA_NEW_ENVIRONMENTS = 1000
LAMBDA_SCALING_WINDOW = 10.0

_KEY_CONDITION = re.compile(r"(#?\w+)\s*=\s*(:\w+)")


def _value_size(value: dict[str, Any]) -> int:
    """DynamoDB's size of an attribute value (docs.aws.amazon.com/amazondynamodb/latest/
    developerguide/CapacityUnitCalculations.html): strings and binary by length, numbers
    ~1 byte per two digits + 1, maps and lists 3 bytes + 1 per element + their contents."""
    kind, inner = next(iter(value.items()))
    if kind == "S":
        return len(str(inner).encode())
    if kind == "B":
        return len(str(inner)) * 3 // 4  # base64 on the wire
    if kind == "N":
        return len(str(inner)) // 2 + 1
    if kind == "M":
        return 3 + sum(len(k) + 1 + _value_size(v) for k, v in inner.items())
    if kind == "L":
        return 3 + sum(1 + _value_size(v) for v in inner)
    return 1


def item_size(attributes: dict[str, Any]) -> int:
    """The bytes DynamoDB counts for these attributes: names plus values."""
    return sum(len(name) + _value_size(value) for name, value in attributes.items())


@dataclass
class Index:
    """What the throttle needs of a global secondary index."""

    hash_key: str
    range_key: str | None
    keys_only: bool


@dataclass
class Window:
    """Units consumed in the last second on one key."""

    spent: collections.deque[tuple[float, float]] = field(default_factory=collections.deque)
    total: float = 0.0

    def used(self, now: float) -> float:
        while self.spent and self.spent[0][0] <= now - 1.0:
            self.total -= self.spent.popleft()[1]
        return self.total

    def charge(self, now: float, units: float) -> None:
        self.spent.append((now, units))
        self.total += units


class Throttled(Exception):
    def __init__(self, reason: str, resource: str) -> None:
        super().__init__(reason)
        self.reason, self.resource = reason, resource


class LimitTracker:
    """The per-key and per-prefix windows, and what was throttled (``throttles``)."""

    def __init__(self, scale: float, describe_table: Callable[[str], tuple[str, dict[str, Index]]]
                 ) -> None:
        self.scale = scale
        self.describe_table = describe_table
        self.tables: dict[str, tuple[str, dict[str, Index]]] = {}
        self.windows: dict[tuple[str, ...], Window] = collections.defaultdict(Window)
        self.throttles: collections.Counter[str] = collections.Counter()
        #: The most units any one key or prefix spent in a second, per kind of limit.
        self.peaks: dict[str, float] = collections.defaultdict(float)
        #: Units spent in all, per kind ("table-write", "index-write", ...): what a bill
        #: counts as write and read request units.
        self.consumed: dict[str, float] = collections.defaultdict(float)
        #: Lambda's scaling bucket per function: (tokens, when last refilled).
        self.scaling: dict[str, tuple[float, float]] = {}
        #: When each function got each new execution environment (monotonic seconds).
        self.new_environments: dict[str, list[float]] = collections.defaultdict(list)
        self.lock = threading.Lock()

    def limit(self, units: int) -> float:
        return units / self.scale

    def table(self, name: str) -> tuple[str, dict[str, Index]]:
        if name not in self.tables:
            self.tables[name] = self.describe_table(name)
        return self.tables[name]

    def spend(self, kind: str, key: tuple[str, ...], units: float, limit: float,
              reason: str, resource: str) -> None:
        self.spend_all([(kind, key, units, limit, reason, resource)])

    def spend_all(self, charges: list[tuple[str, tuple[str, ...], float, float, str, str]]
                  ) -> None:
        """All or nothing: a write over the limit of its table key or of an index key it
        feeds is refused (a throttled index throttles the table write, "GSI back-pressure"),
        and every limit it is over is counted."""
        now = time.monotonic()
        with self.lock:
            over = []
            for kind, key, units, limit, reason, resource in charges:
                window = self.windows[(kind, *key)]
                if window.used(now) + units > limit and window.total > 0:
                    over.append((reason, resource))
            if over:
                for reason, _ in over:
                    self.throttles[reason] += 1
                raise Throttled(*over[0])
            for kind, key, units, _limit, _reason, _resource in charges:
                window = self.windows[(kind, *key)]
                window.charge(now, units)
                self.consumed[kind] += units
                self.peaks[kind] = max(self.peaks[kind], window.total)

    # -- DynamoDB --------------------------------------------------------------------------

    def dynamodb(self, operation: str, body: dict[str, Any]) -> None:
        """Charge a request's units before it runs; raise Throttled when over a limit."""
        if operation in ("PutItem", "UpdateItem", "DeleteItem"):
            self._write(body["TableName"], body.get("Item") or body.get("Key") or {},
                        body, operation)
        elif operation == "GetItem":
            self._read(body["TableName"], None, body["Key"], 1.0)
        elif operation == "BatchGetItem":
            for table, request in body.get("RequestItems", {}).items():
                for key in request.get("Keys", []):
                    self._read(table, None, key, 1.0)
        elif operation == "Query":
            self._query(body)

    def _partition(self, hash_key: str, item: dict[str, Any]) -> str | None:
        value = item.get(hash_key)
        return None if value is None else json.dumps(value, sort_keys=True)

    def _write(self, table: str, item: dict[str, Any], body: dict[str, Any],
               operation: str) -> None:
        hash_key, indexes = self.table(table)
        written_values = body.get("Item") or body.get("ExpressionAttributeValues") or {}
        units = max(1, math.ceil(item_size(written_values) / 1024))
        partition = self._partition(hash_key, item)
        resource = f"table/{table}"
        charges: list[tuple[str, tuple[str, ...], float, float, str, str]] = []
        if partition is not None:
            charges.append(("table-write", (table, partition), units,
                            self.limit(DYNAMODB_PARTITION_WCU),
                            "TableWriteKeyRangeThroughputExceeded", resource))
        written = set(item)
        if operation == "UpdateItem":
            written |= set(body.get("ExpressionAttributeNames", {}).values())
            written |= set(re.findall(r"\b([A-Za-z_]\w*)\s*=", body.get("UpdateExpression", "")))
        for name, index in indexes.items():
            if index.hash_key in written or (index.range_key and index.range_key in written):
                if index.range_key is not None and index.range_key not in written:
                    continue  # sparse: the item does not appear in this index
                index_partition = self._partition(index.hash_key, item)
                if index_partition is None:
                    continue
                charges.append(("index-write", (table, name, index_partition),
                                1 if index.keys_only else units,
                                self.limit(DYNAMODB_PARTITION_WCU),
                                "IndexWriteKeyRangeThroughputExceeded",
                                f"{resource}/index/{name}"))
        self.spend_all(charges)

    def _read(self, table: str, index: str | None, key: dict[str, Any], units: float) -> None:
        hash_key, indexes = self.table(table)
        if index is not None:
            hash_key = indexes[index].hash_key if index in indexes else hash_key
        partition = self._partition(hash_key, key)
        if partition is None:
            return
        where = f"table/{table}" + (f"/index/{index}" if index else "")
        self.spend("index-read" if index else "table-read", (table, index or "", partition),
                   units, self.limit(DYNAMODB_PARTITION_RCU),
                   f"{'Index' if index else 'Table'}ReadKeyRangeThroughputExceeded", where)

    def _query(self, body: dict[str, Any]) -> None:
        names = body.get("ExpressionAttributeNames", {})
        values = body.get("ExpressionAttributeValues", {})
        index = body.get("IndexName")
        hash_key, indexes = self.table(body["TableName"])
        want = indexes[index].hash_key if index in indexes else hash_key
        for name, placeholder in _KEY_CONDITION.findall(body.get("KeyConditionExpression", "")):
            if names.get(name, name) == want and placeholder in values:
                self._read(body["TableName"], index, {want: values[placeholder]}, 1.0)
                return

    def charge_read(self, operation: str, body: dict[str, Any], response: bytes) -> None:
        """After a read: the units its response actually cost, beyond the one charged."""
        if operation != "Query":
            return
        per_unit = 4096 if body.get("ConsistentRead") else 8192
        extra = max(0.0, math.ceil(len(response) / per_unit) - 1.0)
        if not extra:
            return
        with self.lock:
            index = body.get("IndexName") or ""
            values = list(body.get("ExpressionAttributeValues", {}).values())
            if values:
                kind = "index-read" if index else "table-read"
                for key, window in self.windows.items():
                    if key[0] == kind and key[2] == index and \
                            key[3] == json.dumps(values[0], sort_keys=True):
                        window.charge(time.monotonic(), extra)
                        self.consumed[kind] += extra
                        break

    # -- Lambda ----------------------------------------------------------------------------

    def lambda_start(self, function: str, warm: bool) -> None:
        """An invocation that needs a new execution environment: Lambda adds at most 1,000
        per 10 s per function, "refill[ed] continuously over time" and never more than
        1,000 at any time (docs.aws.amazon.com/lambda/latest/dg/scaling-behavior.html,
        "Concurrency scaling rate"): a token bucket of 1,000 refilled at 100 per second,
        both divided by the scale. Over it the invoke fails with
        ``TooManyRequestsException`` (429)."""
        if warm:
            return
        name = function.split(":function:")[-1].split(":")[0]
        now = time.monotonic()
        capacity = self.limit(LAMBDA_NEW_ENVIRONMENTS)
        with self.lock:
            tokens, last = self.scaling.get(name, (capacity, now))
            tokens = min(capacity, tokens + (now - last) * capacity / LAMBDA_SCALING_WINDOW)
            if tokens < 1:
                self.scaling[name] = (tokens, now)
                self.throttles["TooManyRequestsException"] += 1
                raise Throttled("TooManyRequestsException", name)
            self.scaling[name] = (tokens - 1, now)
            self.consumed["lambda-scaling"] += 1
            self.new_environments[name].append(now)

    # -- S3 --------------------------------------------------------------------------------

    def s3(self, method: str, path: str) -> None:
        if method not in ("GET", "HEAD", "PUT", "POST", "DELETE"):
            return
        parts = path.lstrip("/").split("/", 1)
        if len(parts) < 2 or not parts[1]:
            return  # bucket operations
        prefix = parts[0] + "/" + parts[1].rsplit("/", 1)[0] if "/" in parts[1] else parts[0]
        reading = method in ("GET", "HEAD")
        self.spend("s3-get" if reading else "s3-put", (prefix,), 1.0,
                   self.limit(S3_PREFIX_GET_PER_S if reading else S3_PREFIX_PUT_PER_S),
                   "SlowDown", prefix)


def _dynamodb_error(exc: Throttled) -> tuple[str, list[tuple[str, str]], bytes]:
    body = json.dumps({
        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        "message": f"Throughput exceeds the limit of a partition key ({exc.reason}; "
                   "emulated, scaled)",
        "ThrottlingReasons": [{"reason": exc.reason,
                               "resource": f"arn:aws:dynamodb:us-east-1:123456789012:"
                                           f"{exc.resource}"}],
    }).encode()
    return "400 Bad Request", [("Content-Type", "application/x-amz-json-1.0"),
                               ("Content-Length", str(len(body)))], body


def _validation_error(message: str) -> tuple[str, list[tuple[str, str]], bytes]:
    body = json.dumps({"__type": "com.amazon.coral.validate#ValidationException",
                       "message": message}).encode()
    return "400 Bad Request", [("Content-Type", "application/x-amz-json-1.0"),
                               ("Content-Length", str(len(body)))], body


def _s3_error(exc: Throttled) -> tuple[str, list[tuple[str, str]], bytes]:
    body = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate.</Message>"
            b"<Resource>" + exc.resource.encode() + b"</Resource></Error>")
    return "503 Slow Down", [("Content-Type", "application/xml"),
                             ("Content-Length", str(len(body)))], body


def throttled(app: Any, tracker: LimitTracker | None) -> Any:
    """WSGI middleware: refuse DynamoDB requests AWS would refuse (``validation.py``),
    serialize DynamoDB, apply the scaled limits when ``tracker`` is set."""
    dynamo_lock = threading.Lock()

    def middleware(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        auth = environ.get("HTTP_AUTHORIZATION", "")
        if target.startswith("DynamoDB_"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            raw = environ["wsgi.input"].read(length) if length else b""
            environ["wsgi.input"] = io.BytesIO(raw)
            operation = target.split(".")[-1]
            body = json.loads(raw or b"{}")
            problem = invalid_value("dynamodb", operation, body)
            if problem is not None:
                status, headers, payload = _validation_error(problem)
                start_response(status, headers)
                return [payload]
            with dynamo_lock:
                if tracker is not None:
                    try:
                        tracker.dynamodb(operation, body)
                    except Throttled as exc:
                        status, headers, payload = _dynamodb_error(exc)
                        start_response(status, headers)
                        return [payload]
                out = b"".join(app(environ, start_response))
                if tracker is not None:
                    tracker.charge_read(operation, body, out)
                return [out]
        if tracker is not None and "/s3/" in auth:
            try:
                tracker.s3(str(environ.get("REQUEST_METHOD", "")),
                           str(environ.get("PATH_INFO", "")))
            except Throttled as exc:
                status, headers, payload = _s3_error(exc)
                start_response(status, headers)
                return [payload]
        result: Iterable[bytes] = app(environ, start_response)
        return result

    return middleware
