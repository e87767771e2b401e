"""A scale model of fanout's AWS path against AWS's published limits (issue 13).

    python bench/scale_model.py [--client-us 45] [--output docs/scale.md] [--plot docs/scale.png]

Why a model and which kind. No machine here can run 10,000 Lambdas, so whether a job of
10,000 concurrent one-second tasks throttles has to be argued from AWS's published per-key,
per-prefix and per-account rates. Every limit below is a *rate*; what matters is the rate
each key, index key and prefix receives at the job's peak and during its ramp-up. So the
model is analytical where the load is steady (request rates per key, item sizes, capacity
units, cost) and a small discrete-time simulation where it is not: the ramp-up, during
which Lambda's scaling rate (+1,000 environments per 10 s), the Distributed Map's child
start rate and ``MaxConcurrency`` decide how many chunks run. A full discrete-event
simulation of individual requests would add noise, not insight: the published limits are
per-second budgets, and the model compares per-second loads with them. It predicts the
*first* throttle of each kind, not how AWS degrades past it (that only a real account shows).

The write and read paths are taken from the code, not retyped: item sizes come from the
page entries ``client/backends/aws/pages.py`` encodes (a page of one task under the job's
one key for the old design, ``Layout(1, 1, 1)``), sized with DynamoDB's published
item-size rules; the client's per-record CPU cost comes from ``bench/aws_ingest.py``.

Three designs are modelled (see ``docs/scale.md`` for the proposed one in full):

``today``
    The design before result pages (the model's input for it; in the code it is
    ``Layout(1, 1, 1)``): one item per task under partition key ``job_id``, its full copy in the
    ``by_finished`` GSI (hash ``job_id``, range ``finished``, projection ALL), a poll that
    re-reads 5 s of that index every cycle, spilled values under one prefix
    ``jobs/<id>/values/``, the user's chunk size (10 here) and ``MaxConcurrency`` 1,000.
``today-keys``
    Today's keys and items, but with the proposed chunk plan, so the job really reaches the
    requested concurrency: this isolates what the key design alone does at scale. No ramp
    (``concurrency_ramp=False`` in the code): every Map Run starts at its full width.
``proposed``
    Built: per-page result items (up to ``PAGE_TASKS`` consecutive tasks of a chunk in one item,
    written when full or ``FLUSH_SECONDS`` old), write-sharded partition keys
    ``<job_id>#<shard>``, a KEYS_ONLY polling index on ``(<job_id>#<shard>, finished)``,
    hashed value prefixes, and the ``MaxConcurrency`` ramp (``client/backends/aws/ramp.py``:
    the Lambda map starts at ``RAMP_SHARE`` of Lambda's 1,000 new environments per 10 s and
    the state machine raises it by as much every 10 s with ``UpdateMapRun``). The chunk plan
    is the rule ``ramp.min_chunk_seconds`` (a chunk runs long enough that the running chunks
    restart at half the child start rate); in the code it is the user's ``chunksize``, as
    fanout cannot know a task's duration before it runs. Not built: splitting a manifest
    over several Map Runs (the 100,000 rows' ten Map Runs).

Limits are cited by the keys of ``/work/shared/aws-limits.md`` (its Sources list has the
URLs); prices by URL and the date they were read.
"""

from __future__ import annotations

import argparse
import datetime
import math
import sys
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# -- published limits (aws-limits.md keys; all per second unless named otherwise) ------------

#: DynamoDB: per-partition throughput, both capacity modes [D2]; a partition key's items
#: share it; so does each GSI partition key, separately. A throttled GSI write throttles
#: the base-table write that caused it ("GSI back-pressure",
#: https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/gsi-throttling.html).
PARTITION_WCU = 1_000
PARTITION_RCU = 3_000
#: DynamoDB on-demand: a new table serves 4,000 writes + 12,000 reads per second at once,
#: then 2x its previous peak; 40,000 units per table by default [D7 D8].
ON_DEMAND_NEW_TABLE_WRU = 4_000
ON_DEMAND_NEW_TABLE_RRU = 12_000
ON_DEMAND_TABLE_MAX = 40_000
#: DynamoDB item size rules [D1]; write units per 1 KB, read units per 4 KB, an eventually
#: consistent read (every GSI query [D5]) costs half.
WRITE_UNIT_BYTES = 1024
READ_UNIT_BYTES = 4096
QUERY_PAGE_BYTES = 1024 * 1024  # [D10]
#: S3: at least 3,500 PUT/COPY/POST/DELETE and 5,500 GET/HEAD per second per partitioned
#: prefix [S5]; over it: 503 Slow Down.
S3_PUT_PER_PREFIX = 3_500
S3_GET_PER_PREFIX = 5_500
#: Lambda: +1,000 execution environments per 10 s per function, no carry-over [L4];
#: 1,000 concurrent executions per Region by default [L1 L4]; 900 s timeout [L1].
LAMBDA_SCALE_STEP = 1_000
LAMBDA_SCALE_SECONDS = 10.0
LAMBDA_DEFAULT_CONCURRENCY = 1_000
LAMBDA_TIMEOUT = 900.0
#: Step Functions: a Distributed Map runs at most 10,000 children at once [SF1 SF5];
#: Standard children start at most 100 per second (Express 1,000) [SF1]; the StateTransition
#: bucket refills 5,000 per second in us-east-1 [SF1].
MAP_MAX_CHILDREN = 10_000
CHILD_START_RATE_STANDARD = 100.0
STATE_TRANSITIONS = 5_000.0

#: The share of a limit a design may plan to use: headroom for skew, retries and bursts.
PLAN_UTILISATION = 0.5
#: The share of a partition key's write units the shard rule plans for
#: (client/backends/aws/layout.py KEY_HEADROOM): a 4x burst stays under the limit.
KEY_UTILISATION = 0.25

# -- prices: us-east-1 public list prices (USD) ------------------------------------------------
# The table of bench/aws_requests.py (read 2026-11-21), re-checked 2026-11-23 against stored
# copies of the pricing pages:
#   Lambda x86, first 6 billion GB-s tier, and requests: https://aws.amazon.com/lambda/pricing/
#     ($0.0000166667 per GB-s, $0.20 per 1M requests; also the "How AWS pricing works"
#     whitepaper, https://docs.aws.amazon.com/whitepapers/latest/how-aws-pricing-works/lambda.html)
#   Step Functions Standard: https://aws.amazon.com/step-functions/pricing/ ($0.0250 per
#     1,000 state transitions, US East (N. Virginia))
#   DynamoDB on-demand after the 2024-11 cut: https://aws.amazon.com/dynamodb/pricing/on-demand/
#     ($0.625 per 1M WRU, $0.125 per 1M RRU; confirmed on 2026-11-23 only by third-party
#     copies, e.g. https://airbyte.com/data-engineering-resources/dynamodb-pricing)
#   S3 Standard requests: https://aws.amazon.com/s3/pricing/ ($0.005 per 1,000 PUT, $0.0004
#     per 1,000 GET; as read 2026-11-21, not re-checked)
# One price table for both AWS benchmarks: it lives in bench/aws_requests.py.
from bench.aws_requests import (  # noqa: E402
    DDB_RRU,
    DDB_WRU,
    LAMBDA_GB_SECOND,
    LAMBDA_REQUEST,
    S3_GET,
    S3_PUT,
    SFN_TRANSITION,
)

LAMBDA_MEMORY_MB = 1769

# -- fanout's own constants (from the code) ---------------------------------------------------

#: client/backends/aws/store.py: values above this go to S3; the poll re-reads 5 s.
TODAY_INLINE_LIMIT = 200_000
TODAY_POLL_OVERLAP = 5.0
#: client/backends/aws/backend.py: the poller's shortest sleep between polls.
POLL_MIN_SECONDS = 0.2
#: statemachine/fanout.asl.json: MaxConcurrency of each tier's Distributed Map.
TODAY_MAX_CONCURRENCY = 1_000
#: One round trip to DynamoDB from the client (assumed; only a real account measures it).
ROUND_TRIP = 0.010
#: Transitions billed per chunk: the child execution's one task state (bench/aws_requests.py
#: counted 104 for 100 chunks on the emulation, docs/benchmarks.md).
TRANSITIONS_PER_CHUNK = 1

#: The design's parameters (docs/scale.md, "The design, as built").
PAGE_TASKS = 8
FLUSH_SECONDS = 10.0
PROPOSED_POLL_OVERLAP = 5.0
PROPOSED_INLINE_LIMIT = 16_000  # store.MAX_RECORD_VALUE_BYTES
#: The built ramp: MaxConcurrency grows by 80% of Lambda's +1,000 per 10 s; the chunk plan's
#: share of the child start rate (client/backends/aws/ramp.py).
from fanout.backends.aws.ramp import CHILD_START_SHARE, RAMP_SHARE  # noqa: E402

#: Client CPU per polled record (override with --client-us), from bench/aws_ingest.py on
#: 2026-11-23 (docs/scale.md): 44.2 µs of the client thread's CPU end to end against moto
#: (HTTP, botocore's parse, AwsStore._record, unpickle, resolve); offline 41.3 µs for a new
#: record and 38.4 µs for a re-read one. Re-reads are charged at the full cost here.
CLIENT_SECONDS_PER_RECORD = 45e-6
#: The same per task of a result page, as built (8 tasks per item, 8 shards), from
#: bench/aws_ingest.py on 2026-12-02: 50.0 µs of the client thread's CPU end to end against
#: moto (index queries, BatchGetItem, botocore's parse, AwsStore._records_of, unpickle,
#: resolve; offline 35.0 µs), and per KEYS_ONLY index entry the poll re-reads (8.7 µs).
CLIENT_SECONDS_PER_PAGE_TASK = 50e-6
CLIENT_SECONDS_PER_KEY = 9e-6


# -- DynamoDB item sizes ([D1]; https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/CapacityUnitCalculations.html)


def _number_bytes(text: str) -> int:
    digits = text.lstrip("-").replace(".", "").lstrip("0").rstrip("0") or "0"
    return 1 + math.ceil(len(digits) / 2)


def value_bytes(value: dict[str, Any]) -> int:
    """Size of one attribute value in DynamoDB's wire form (``{"S": ...}`` etc.)."""
    (kind, data), = value.items()
    if kind == "S":
        return len(str(data).encode())
    if kind == "N":
        return _number_bytes(str(data))
    if kind == "B":
        return len(data)
    if kind in ("BOOL", "NULL"):
        return 1
    if kind == "M":
        return 3 + sum(len(k.encode()) + value_bytes(v) + 1 for k, v in data.items())
    if kind == "L":
        return 3 + sum(value_bytes(v) + 1 for v in data)
    raise ValueError(f"unsupported attribute type {kind}")


def item_bytes(item: dict[str, dict[str, Any]]) -> int:
    """An item's size as DynamoDB bills it: attribute names plus values."""
    return sum(len(name.encode()) + value_bytes(value) for name, value in item.items())


def write_units(size: int) -> int:
    return max(1, math.ceil(size / WRITE_UNIT_BYTES))


def sample_value(result_bytes: int) -> bytes:
    """A pickled result of about ``result_bytes`` bytes (what the worker would store)."""
    from fanout import serialization

    if result_bytes <= 16:
        return serialization.dumps_value(12345)
    return serialization.dumps_value(b"x" * (result_bytes - 16))


def _page(tasks: int, result_bytes: int, inline_limit: int, shard: str) -> dict[str, Any]:
    """A result page of ``tasks`` records exactly as ``AwsStore.put_results`` writes it
    (``pages.encode`` for each entry, the page's key and stamps)."""
    from fanout.backends.aws.pages import encode, field, page_item
    from fanout.ids import new_job_id
    from fanout.protocol import SUCCEEDED, ResultRecord

    value = sample_value(result_bytes)
    inline = len(value) <= inline_limit
    job_id, worker = new_job_id(), f"lambda/{uuid.uuid4()}"
    item: dict[str, Any] = {
        "job_id": {"S": f"{job_id}#{shard}"}, "item": {"S": page_item(15_432)},
        "first": {"N": "123456"}, "written": {"N": "1795000001123"},
        "expires": {"N": "1802776001"}}
    for offset in range(tasks):
        record = ResultRecord(job_id, 123_456 + offset, SUCCEEDED, 1, worker,
                              1795000000.123456, 1795000001.123789,
                              value=value if inline else None,
                              value_ref=None if inline
                              else f"{job_id}/values/3f/{123_456 + offset}.a1.0123abcd.pkl",
                              extra={"checkpoint": False})
        item[field(offset)] = {"M": encode(record)}
    return item


def today_item(result_bytes: int) -> dict[str, Any]:
    """The old design's task record: a page of one task under the job's one key
    (``Layout(1, 1, 1)``), with the old inline limit."""
    return _page(1, result_bytes, TODAY_INLINE_LIMIT, "00")


def page_item(tasks: int, result_bytes: int) -> dict[str, Any]:
    """A result page holding ``tasks`` records (docs/scale.md has the layout)."""
    return _page(tasks, result_bytes, PROPOSED_INLINE_LIMIT, "03")


def index_key_item() -> dict[str, Any]:
    """What the KEYS_ONLY index holds per page: table keys plus the index key."""
    item = page_item(1, 8)
    return {name: item[name] for name in ("job_id", "item", "written")}


# -- scenario ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """A job: ``concurrency`` tasks asked to run at once, each ``task_seconds`` long."""

    concurrency: int
    task_seconds: float = 1.0
    result_bytes: int = 8
    #: Tasks per worker: the job's size is concurrency x this (10 minutes of 1-s tasks).
    tasks_per_worker: int = 600
    #: The user's chunk size (today's plan uses it as is).
    chunksize: int = 10
    #: The account's Lambda concurrency quota; ``None`` = raised to what the job needs.
    account_concurrency: int | None = None

    @property
    def tasks(self) -> int:
        return self.concurrency * self.tasks_per_worker


@dataclass(frozen=True)
class Design:
    name: str
    #: True: one item per task, index projection ALL (today); False: result pages.
    per_task_items: bool
    shards: int | None  # None: the shard rule decides
    chunk_plan: str  # "user": the user's chunksize; "rate": follow the child start rate
    max_concurrency: int | None  # None: min(requested, 10,000 per Map Run)
    poll_overlap: float
    value_prefixes: int | None  # None: the prefix rule decides
    inline_limit: int
    page_tasks: int = 1
    flush_seconds: float = 0.0
    #: MaxConcurrency raised step by step (UpdateMapRun) to this share of Lambda's scaling
    #: rate; None: the Map Runs start children as fast as Step Functions allows.
    ramp_share: float | None = None


TODAY = Design("today", True, 1, "user", TODAY_MAX_CONCURRENCY, TODAY_POLL_OVERLAP, 1,
               TODAY_INLINE_LIMIT)
TODAY_KEYS = replace(TODAY, name="today-keys", chunk_plan="rate", max_concurrency=None)
PROPOSED = Design("proposed", False, None, "rate", None, PROPOSED_POLL_OVERLAP, None,
                  PROPOSED_INLINE_LIMIT, PAGE_TASKS, FLUSH_SECONDS, RAMP_SHARE)
DESIGNS = (TODAY, TODAY_KEYS, PROPOSED)


@dataclass
class Load:
    """One resource's peak load against its limit."""

    resource: str
    rate: float
    limit: float
    unit: str
    source: str
    note: str = ""
    #: A quota the account must have raised before the job (not a throttle of the design).
    quota: bool = False

    @property
    def share(self) -> float:
        return self.rate / self.limit if self.limit else 0.0

    @property
    def throttles(self) -> bool:
        return not self.quota and self.rate > self.limit

    @property
    def at_risk(self) -> bool:
        """At 90% or more of a limit: any skew or burst throttles."""
        return not self.quota and self.share >= 0.9


@dataclass
class Prediction:
    workload: Workload
    design: Design
    chunk_tasks: int
    chunk_seconds: float
    maps: int
    concurrency: float  # peak tasks running at once
    wall_seconds: float
    ramp_seconds: float
    shards: int
    prefixes: int
    loads: list[Load] = field(default_factory=list)
    #: Share of one client core the poll needs (above 1: more cores than one).
    client_core_share: float = 0.0
    poll_cycle: float = 0.0
    cost: dict[str, float] = field(default_factory=dict)
    series: list[tuple[float, float]] = field(default_factory=list)  # (t, results/s)

    @property
    def throttled(self) -> list[Load]:
        return [load for load in self.loads if load.throttles]

    @property
    def quotas(self) -> list[Load]:
        """Account quotas the job needs raised (the default is below its peak)."""
        return [load for load in self.loads if load.quota and load.rate > load.limit]

    @property
    def result_rate(self) -> float:
        return self.concurrency / self.workload.task_seconds


# -- the chunk plan and the ramp ------------------------------------------------------------


def plan_chunks(workload: Workload, design: Design) -> tuple[int, int, int]:
    """(tasks per chunk, Map Runs, MaxConcurrency per Map Run) for the design's plan.

    The proposed plan: a chunk must run long enough that the requested concurrency needs
    at most half the Standard child start rate, ``C / chunk_seconds <= 0.5 x 100/s``, and
    not longer than 80% of Lambda's 900-s timeout, in whole result pages; one Map Run holds
    at most 10,000 children, so larger jobs split their manifest over several Map Runs.
    """
    c = workload.concurrency
    maps = 1 if design.chunk_plan == "user" else max(1, math.ceil(c / MAP_MAX_CHILDREN))
    if design.chunk_plan == "user":
        chunk = workload.chunksize
    else:
        per_map = c / maps
        seconds = per_map / (CHILD_START_SHARE * CHILD_START_RATE_STANDARD)
        seconds = min(seconds, 0.8 * LAMBDA_TIMEOUT)
        chunk = max(workload.chunksize, math.ceil(seconds / workload.task_seconds))
        # Whole pages per chunk, so two chunks never write to one page item.
        chunk = design.page_tasks * math.ceil(chunk / design.page_tasks)
    max_conc = design.max_concurrency or min(MAP_MAX_CHILDREN, math.ceil(c / maps))
    return chunk, maps, max_conc


def simulate(workload: Workload, chunk_tasks: int, maps: int, max_conc: int,
             ramp_share: float | None = None, dt: float = 0.5
             ) -> tuple[float, float, float, float, list[tuple[float, float]]]:
    """Discrete-time run of the job's chunks: (wall s, peak running, ramp s, scaling
    pressure, series of (t, results/s)).

    Each step starts as many pending chunks as the binding limit allows: MaxConcurrency
    per Map Run (raised step by step to ``ramp_share`` of Lambda's scaling when the design
    ramps), the account's Lambda quota, Lambda's scaling rate (environments available =
    1,000 + 1,000 per 10 s elapsed; finished environments are reused) and each Map Run's
    child start rate. Tasks finish evenly over a chunk's run. The scaling pressure is the
    largest ratio, over the run, of the executions Step Functions would start (its start
    rate and MaxConcurrency permitting) to the environments Lambda has: above 1, Lambda
    answers TooManyRequestsException.
    """
    chunk_seconds = chunk_tasks * workload.task_seconds
    n_chunks = math.ceil(workload.tasks / chunk_tasks)
    quota = workload.account_concurrency or workload.concurrency
    pending, running, t = n_chunks, 0, 0.0
    ends: deque[tuple[float, int]] = deque()
    start_credit = 0.0
    peak, ramp, pressure = 0.0, 0.0, 0.0
    target = min(max_conc * maps, quota, n_chunks)
    series: list[tuple[float, float]] = []
    while pending or running:
        while ends and ends[0][0] <= t + 1e-9:
            running -= ends.popleft()[1]
        window = 1 + math.floor(t / LAMBDA_SCALE_SECONDS)
        envs = LAMBDA_SCALE_STEP * window
        cap = float(min(max_conc * maps, quota))
        if ramp_share is not None:
            cap = min(cap, ramp_share * envs)
        start_credit = min(start_credit + CHILD_START_RATE_STANDARD * maps * dt,
                           CHILD_START_RATE_STANDARD * maps)
        wanted = min(cap, running + min(pending, math.floor(start_credit)))
        pressure = max(pressure, wanted / envs)
        room = min(cap, envs) - running
        starts = int(max(0, min(pending, room, math.floor(start_credit))))
        if starts:
            pending -= starts
            running += starts
            start_credit -= starts
            ends.append((t + chunk_seconds, starts))
        peak = max(peak, running)
        if not ramp and running >= target:
            ramp = t
        series.append((t, running / workload.task_seconds))
        t += dt
        if t > 1e7:
            raise RuntimeError("simulation did not finish")
    return t, float(peak), ramp, pressure, series


# -- the shard and prefix rules -------------------------------------------------------------


def page_writes(design: Design, task_seconds: float, result_bytes: int
                ) -> tuple[float, float]:
    """(item writes, write units) per task for a design's record items."""
    if design.per_task_items:
        return 1.0, float(write_units(item_bytes(today_item(result_bytes))))
    page_time = design.page_tasks * task_seconds
    writes = max(1, math.ceil(page_time / design.flush_seconds))
    units = 0
    for k in range(1, writes + 1):
        held = min(design.page_tasks, math.ceil(k * design.flush_seconds / task_seconds))
        units += write_units(item_bytes(page_item(held, result_bytes)))
    return writes / design.page_tasks, units / design.page_tasks


def shard_count(concurrency: float, task_seconds: float, result_bytes: int,
                design: Design = PROPOSED) -> int:
    """The proposed shard rule: the power of two that keeps the hottest partition of the
    table and of the polling index at or below a quarter of its write limit.

    ``S = 2 ** ceil(log2(max(1, table_wcu / 250, index_wcu / 250)))`` with the job's planned
    concurrency and, for the task duration, the planner's estimate (the mean of the
    function's previous runs, or 1 s when it has none).
    """
    rate = concurrency / task_seconds
    writes, units = page_writes(design, task_seconds, result_bytes)
    need = max(1.0, rate * units / (KEY_UTILISATION * PARTITION_WCU),
               rate * writes / (KEY_UTILISATION * PARTITION_WCU))
    return 1 << math.ceil(math.log2(need))


def prefix_count(put_rate: float, get_rate: float) -> int:
    """Hashed value prefixes: a power of two keeping each at half S3's per-prefix rates."""
    need = max(1.0, put_rate / (PLAN_UTILISATION * S3_PUT_PER_PREFIX),
               get_rate / (PLAN_UTILISATION * S3_GET_PER_PREFIX))
    return max(16, 1 << math.ceil(math.log2(need)))


# -- the model ------------------------------------------------------------------------------


def predict(workload: Workload, design: Design,
            client_seconds: float = CLIENT_SECONDS_PER_RECORD) -> Prediction:
    chunk_tasks, maps, max_conc = plan_chunks(workload, design)
    wall, peak, ramp, pressure, series = simulate(workload, chunk_tasks, maps, max_conc,
                                                  design.ramp_share)
    d = workload.task_seconds
    rate = peak / d  # results per second at the peak
    chunk_seconds = chunk_tasks * d
    chunk_starts = peak / chunk_seconds
    writes, units = page_writes(design, d, workload.result_bytes)
    shards = design.shards or shard_count(peak, d, workload.result_bytes, design)
    spilled = len(sample_value(workload.result_bytes)) > design.inline_limit
    value_puts = rate if spilled else 0.0
    value_gets = rate if spilled else 0.0  # the client loads each spilled value once
    prefixes = design.value_prefixes or prefix_count(value_puts, value_gets)
    loads: list[Load] = []

    # DynamoDB: the record items and their index copies, per partition key.
    item_size = item_bytes(today_item(workload.result_bytes)) if design.per_task_items \
        else item_bytes(page_item(design.page_tasks, workload.result_bytes))
    key_size = item_size if design.per_task_items else item_bytes(index_key_item())
    table_wcu = rate * units
    index_wcu = rate * writes * write_units(key_size)
    loads.append(Load("DynamoDB table: hottest partition key, writes", table_wcu / shards,
                      PARTITION_WCU, "WCU/s", "D2",
                      "key `job_id`" if shards == 1 else f"keys `job_id#00..{shards - 1:02d}`"))
    loads.append(Load("DynamoDB GSI by_finished: hottest key, writes", index_wcu / shards,
                      PARTITION_WCU, "WCU/s", "D2",
                      "sort key only grows: split for heat cannot help" if shards == 1
                      else "KEYS_ONLY projection"))

    # The client's poll: cycle time T solves T = 0.2 + cpu(T) + round trips(T).
    overlap = design.poll_overlap
    if design.per_task_items:
        per_item_cpu, reread_cpu = client_seconds, client_seconds
        items_per_s = rate
    else:
        per_item_cpu = CLIENT_SECONDS_PER_PAGE_TASK * client_seconds \
            / CLIENT_SECONDS_PER_RECORD * design.page_tasks
        reread_cpu = CLIENT_SECONDS_PER_KEY
        items_per_s = rate * writes
    load_per_item = per_item_cpu  # CPU of each new item (new tasks in it)
    cycle = POLL_MIN_SECONDS
    converged = False
    for _ in range(500):
        reread = items_per_s * overlap  # items in the overlap window, read again
        new = items_per_s * cycle
        pages = (reread + new) * key_size / QUERY_PAGE_BYTES + shards
        cpu = new * load_per_item + reread * reread_cpu
        nxt = POLL_MIN_SECONDS + cpu + pages * ROUND_TRIP
        if abs(nxt - cycle) < 1e-6:
            converged = True
            break
        if nxt > 3600:
            break
        cycle = nxt
    if not converged:
        cycle = 1.0  # one core cannot keep up: report the cores a 1-s cycle would need
    core_share = (items_per_s * cycle * load_per_item + items_per_s * overlap * reread_cpu) \
        / cycle
    query_rcu = (items_per_s * (overlap + cycle) / cycle) * key_size / READ_UNIT_BYTES * 0.5
    fetch_rcu = 0.0 if design.per_task_items else \
        items_per_s * math.ceil(item_size / READ_UNIT_BYTES)
    loads.append(Load("DynamoDB GSI by_finished: hottest key, poll reads", query_rcu / shards,
                      PARTITION_RCU, "RCU/s", "D2 D5",
                      f"re-reads the last {overlap:g} s every {cycle:.2f} s cycle"))
    if fetch_rcu:
        loads.append(Load("DynamoDB table: hottest partition key, page reads",
                          fetch_rcu / shards, PARTITION_RCU, "RCU/s", "D2",
                          "strongly consistent BatchGetItem of new pages"))
    total_wcu = table_wcu + index_wcu
    loads.append(Load("DynamoDB table: on-demand writes, new table", table_wcu,
                      ON_DEMAND_NEW_TABLE_WRU, "WRU/s", "D7",
                      "above: pre-warm (WarmThroughput) or ramp up gradually"))
    loads.append(Load("DynamoDB table: on-demand writes, per-table quota", total_wcu,
                      ON_DEMAND_TABLE_MAX, "WRU/s", "D8"))

    # S3: the values prefix; payload and bundle reads share `jobs/<id>/` (one prefix).
    loads.append(Load("S3: hottest values prefix, PUT", value_puts / prefixes,
                      S3_PUT_PER_PREFIX, "req/s", "S5",
                      "`jobs/<id>/values/`" if prefixes == 1
                      else f"`jobs/<id>/values/<h>/`, {prefixes} hashed prefixes"))
    job_prefix_gets = chunk_starts + value_gets / prefixes + LAMBDA_SCALE_STEP \
        / LAMBDA_SCALE_SECONDS  # a ranged payload GET per chunk, a bundle GET per new env
    loads.append(Load("S3: hottest prefix, GET", job_prefix_gets, S3_GET_PER_PREFIX, "req/s",
                      "S5", "payload + bundle + values"))

    # Lambda and Step Functions.
    quota = workload.account_concurrency or LAMBDA_DEFAULT_CONCURRENCY
    loads.append(Load("Lambda: concurrent executions vs account quota", peak,
                      quota, "executions", "L1 L4",
                      "default 1,000: raise the quota first" if peak > quota else "",
                      quota=True))
    loads.append(Load("Lambda: environments wanted vs scaling rate (ramp)",
                      pressure * LAMBDA_SCALE_STEP / LAMBDA_SCALE_SECONDS,
                      LAMBDA_SCALE_STEP / LAMBDA_SCALE_SECONDS, "envs/s equiv.", "L4",
                      "largest ratio of executions started to environments available"
                      + ("; MaxConcurrency ramped" if design.ramp_share else "")))
    loads.append(Load("Step Functions: child starts per Map Run", chunk_starts / maps,
                      CHILD_START_RATE_STANDARD, "starts/s", "SF1",
                      f"{maps} Map Run(s); children wait when over"))
    loads.append(Load("Step Functions: state transitions", chunk_starts *
                      TRANSITIONS_PER_CHUNK, STATE_TRANSITIONS, "transitions/s", "SF1"))

    # Cost of the whole job.
    n = workload.tasks
    n_chunks = math.ceil(n / chunk_tasks)
    reads_rru = (items_per_s * (overlap + cycle) / cycle * key_size / READ_UNIT_BYTES * 0.5
                 + fetch_rcu) * (n / max(rate, 1e-9))
    cost = {
        "Lambda compute": n * d * LAMBDA_MEMORY_MB / 1024 * LAMBDA_GB_SECOND,
        "Lambda requests": n_chunks * LAMBDA_REQUEST,
        "Step Functions": (n_chunks * TRANSITIONS_PER_CHUNK + 10) * SFN_TRANSITION,
        "DynamoDB writes": n * (units + writes * write_units(key_size)) * DDB_WRU,
        "DynamoDB reads": reads_rru * DDB_RRU,
        "S3": n * (S3_PUT + S3_GET) * (1 if spilled else 0) + n_chunks * S3_GET,
    }
    return Prediction(workload, design, chunk_tasks, chunk_seconds, maps, peak, wall, ramp,
                      shards, prefixes, loads, core_share, cycle, cost, series)


# -- reporting --------------------------------------------------------------------------------


def _fmt(x: float) -> str:
    if x == float("inf"):
        return "inf"
    return f"{x:,.0f}" if x >= 100 else f"{x:,.2f}" if x < 10 else f"{x:,.1f}"


def summary_table(preds: list[Prediction]) -> str:
    lines = [
        "| concurrent tasks | design | chunk (tasks x s) | Map Runs | peak running | wall "
        "| hottest key WCU/s, table / index (keys) | hottest index key RCU/s "
        "| client poll: cores, cycle | throttles (x limit) | at ≥ 90% of a limit "
        "| quotas to raise |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for p in preds:
        loads = {load.resource: load for load in p.loads}
        table = loads["DynamoDB table: hottest partition key, writes"]
        index = loads["DynamoDB GSI by_finished: hottest key, writes"]
        reads = loads["DynamoDB GSI by_finished: hottest key, poll reads"]
        throttled = ", ".join(_short(load) for load in p.throttled) or "none"
        risky = ", ".join(_short(load) for load in p.loads
                          if load.at_risk and not load.throttles) or "none"
        quotas = ", ".join(f"{_short(load, False)} ≥ {load.rate:,.0f}"
                           for load in p.quotas) or "none"
        lines.append(
            f"| {p.workload.concurrency:,} | {p.design.name} | {p.chunk_tasks} x "
            f"{p.workload.task_seconds:g} | {p.maps} | {p.concurrency:,.0f} | "
            f"{p.wall_seconds / 60:,.1f} min | {_fmt(table.rate)} / {_fmt(index.rate)} "
            f"({p.shards}) | {_fmt(reads.rate)} | {p.client_core_share:.2f}, "
            f"{p.poll_cycle:.1f} s | "
            f"{throttled} | {risky} | {quotas} |")
    return "\n".join(lines)


def _short(load: Load, times: bool = True) -> str:
    names = {
        "DynamoDB table: hottest partition key, writes": "table key writes",
        "DynamoDB GSI by_finished: hottest key, writes": "index key writes",
        "DynamoDB GSI by_finished: hottest key, poll reads": "index key reads",
        "DynamoDB table: hottest partition key, page reads": "page reads",
        "DynamoDB table: on-demand writes, new table": "new-table WRU",
        "DynamoDB table: on-demand writes, per-table quota": "table quota",
        "S3: hottest values prefix, PUT": "S3 PUT/prefix",
        "S3: hottest prefix, GET": "S3 GET/prefix",
        "Lambda: concurrent executions vs account quota": "Lambda concurrency",
        "Lambda: environments wanted vs scaling rate (ramp)": "Lambda scaling",
        "Step Functions: child starts per Map Run": "child starts",
        "Step Functions: state transitions": "transitions",
    }
    name = names.get(load.resource, load.resource)
    return f"{name} {load.share:.1f}x" if times else name


def detail_table(p: Prediction) -> str:
    lines = [f"`{p.design.name}` at {p.workload.concurrency:,} concurrent "
             f"{p.workload.task_seconds:g}-s tasks, {p.workload.result_bytes:,}-byte results "
             f"({p.workload.tasks:,} tasks; chunks of {p.chunk_tasks}; {p.shards} shard(s); "
             f"{p.prefixes} value prefix(es); poll cycle {p.poll_cycle:.2f} s):", "",
             "| resource | peak | limit | share | source | note |", "|---|---|---|---|---|---|"]
    for load in p.loads:
        flag = " **throttles**" if load.throttles else " (quota to raise)" \
            if load.quota and load.rate > load.limit else " (at risk)" if load.at_risk else ""
        lines.append(f"| {load.resource} | {_fmt(load.rate)} {load.unit} | {load.limit:,.0f} "
                     f"| {load.share:.0%}{flag} | {load.source} | {load.note} |")
    return "\n".join(lines)


def cost_table(preds: list[Prediction]) -> str:
    lines = ["| concurrent tasks | design | USD per million tasks: Lambda compute | Lambda "
             "requests | Step Functions | DynamoDB | S3 | orchestration / compute |",
             "|---|---|---|---|---|---|---|---|"]
    for p in preds:
        per = 1e6 / p.workload.tasks
        c = {k: v * per for k, v in p.cost.items()}
        share = (sum(c.values()) - c["Lambda compute"]) / c["Lambda compute"]
        lines.append(f"| {p.workload.concurrency:,} | {p.design.name} | "
                     f"{c['Lambda compute']:.2f} | {c['Lambda requests']:.2f} | "
                     f"{c['Step Functions']:.2f} | "
                     f"{c['DynamoDB writes'] + c['DynamoDB reads']:.2f} | {c['S3']:.2f} | "
                     f"{share:.1%} |")
    return "\n".join(lines)


def run_all(client_seconds: float, concurrencies: tuple[int, ...] = (1_000, 10_000, 100_000),
            result_bytes: int = 8) -> list[Prediction]:
    return [predict(Workload(c, result_bytes=result_bytes), design, client_seconds)
            for c in concurrencies for design in DESIGNS]


def plot(path: Path, client_seconds: float) -> None:
    """Hottest-key write and read load, and child starts, against concurrency (log-log)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    panels = [
        ("DynamoDB table: hottest partition key, writes", "hottest table key, WCU/s",
         PARTITION_WCU),
        ("DynamoDB GSI by_finished: hottest key, writes", "hottest index key, WCU/s",
         PARTITION_WCU),
        ("DynamoDB GSI by_finished: hottest key, poll reads", "hottest index key, RCU/s",
         PARTITION_RCU),
    ]
    styles = {"today": ("tab:red", "o"), "today-keys": ("tab:orange", "s"),
              "proposed": ("tab:green", "^")}
    preds = {d.name: [predict(Workload(x), d, client_seconds) for x in xs] for d in DESIGNS}
    for ax, (resource, label, limit) in zip(axes, panels, strict=True):
        for name, series in preds.items():
            ys = [next(load.rate for load in p.loads if load.resource == resource)
                  for p in series]
            color, marker = styles[name]
            ax.plot(xs, [max(y, 1e-1) for y in ys], marker=marker, color=color, label=name)
        ax.axhline(limit, color="black", linestyle="--", linewidth=1)
        ax.text(xs[0], limit * 1.15, f"per-partition limit {limit:,}", fontsize=8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("concurrent 1-s tasks requested")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle("fanout on AWS: peak load on the hottest DynamoDB key (scale model, "
                 "bench/scale_model.py)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


START, END = "<!-- scale:model:start -->", "<!-- scale:model:end -->"


def render(client_seconds: float) -> str:
    preds = run_all(client_seconds)
    big = [predict(Workload(10_000, result_bytes=300_000), d, client_seconds)
           for d in (TODAY_KEYS, PROPOSED)]
    at_10k = [p for p in preds if p.workload.concurrency == 10_000]
    parts = [
        START,
        f"Generated by `.venv/bin/python bench/scale_model.py` on "
        f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; client CPU per polled "
        f"record {client_seconds * 1e6:.0f} µs (from `bench/aws_ingest.py`). Each job runs "
        "10 minutes of 1-s tasks per worker (600 x the concurrency), 8-byte results.",
        "",
        summary_table(preds),
        "",
        "Cost of the same jobs (us-east-1 list prices read 2026-11-21 and re-checked "
        "2026-11-23; sources in `bench/scale_model.py`; 1,769 MB Lambda, x86):",
        "",
        cost_table(preds),
        "",
        "Every load at 10,000 concurrent tasks:",
        "",
    ]
    for p in at_10k:
        parts += [detail_table(p), ""]
    parts += ["Large results (300 KB each: above today's 200,000-byte inline limit, so every "
              "value is an S3 object) at 10,000 concurrent tasks:", ""]
    for p in big:
        parts += [detail_table(p), ""]
    parts.append(END)
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client-us", type=float, default=CLIENT_SECONDS_PER_RECORD * 1e6,
                        help="client CPU per polled record in µs (bench/aws_ingest.py)")
    parser.add_argument("--output", default="", help="markdown file to write the section to")
    parser.add_argument("--plot", default="", help="PNG to draw")
    args = parser.parse_args(argv)
    client_seconds = args.client_us / 1e6
    section = render(client_seconds)
    print(section)
    if args.output:
        from bench.run import write_section

        write_section(Path(args.output), section, START, END)
    if args.plot:
        plot(Path(args.plot), client_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
