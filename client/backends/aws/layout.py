"""Where a job's results live in DynamoDB and S3: pages, shards and hashed prefixes.

A job's task results are written as *pages* of ``page_tasks`` consecutive tasks (one item per
page, so a chunk's results cost few writes), spread over ``shards`` partition keys
(``<job_id>#<g mod S>``), with spilled values under ``value_prefixes`` hashed S3 prefixes.
The numbers are planned once per job (:func:`plan_layout`) from the rate the job can write
at, kept in the job's bundle next to its spec, and read by every writer and reader.

DynamoDB serves at most 1,000 write units and 3,000 read units per second per partition key
("KeyRangeThroughputExceeded", both capacity modes; docs.aws.amazon.com/amazondynamodb/
latest/developerguide/throttling-key-range-limit-exceeded-mitigation.html); S3 at least
3,500 PUT and 5,500 GET per second per partitioned prefix (docs.aws.amazon.com/AmazonS3/
latest/userguide/optimizing-performance.html). The plan keeps the hottest key at a quarter
and the hottest prefix at half of those. ``Layout(shards=1, page_tasks=1,
value_prefixes=1)`` is the design before pages: one item per task under the job's one key
(the scale tests run it as the old design).
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import asdict, dataclass
from typing import Any

#: Per-partition-key write and read units per second (see the module docstring).
PARTITION_WCU = 1000
PARTITION_RCU = 3000
#: Per-prefix S3 requests per second.
PREFIX_PUT_PER_S = 3500
PREFIX_GET_PER_S = 5500
#: The share of a limit the plan allows itself, for skew and bursts: a quarter of a
#: partition key's write units (a burst of 4x the average, e.g. chunks finishing together
#: or a stalled worker catching up, stays under the limit), half of a prefix's requests.
KEY_HEADROOM = 0.25
HEADROOM = 0.5
#: Tasks per result page. Eight small results fit one write unit (1 KB); eight entries of
#: at most ENTRY_MAX_BYTES stay far below DynamoDB's 400 KB item limit.
PAGE_TASKS = 8
#: Spread never goes below this many value prefixes (a cold prefix splits slowly).
MIN_VALUE_PREFIXES = 16
#: The emulation serves AWS's limits divided by this factor (``emulated_aws(scale=...)``)
#: and says so here, so a job planned against it meets the pressure of a job ``scale``
#: times wider on AWS. Unset on AWS: the published limits apply.
LIMIT_SCALE_ENV = "FANOUT_EMULATED_LIMIT_SCALE"


def limit_scale() -> float:
    """The factor the account's limits are divided by (1 on AWS)."""
    try:
        return max(1.0, float(os.environ.get(LIMIT_SCALE_ENV) or 1))
    except ValueError:
        return 1.0


def _power_of_two(x: float) -> int:
    return 1 if x <= 1 else 2 ** math.ceil(math.log2(x))


@dataclass(frozen=True)
class Layout:
    """How one job's records and values are keyed; fixed for the job's life."""

    shards: int = 1
    page_tasks: int = PAGE_TASKS
    value_prefixes: int = MIN_VALUE_PREFIXES

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= 256:
            raise ValueError(f"shards must be 1..256, not {self.shards}")
        if not 1 <= self.page_tasks <= 16:
            raise ValueError(f"page_tasks must be 1..16 (a page must fit DynamoDB's 400 KB "
                             f"item limit), not {self.page_tasks}")
        if not 1 <= self.value_prefixes <= 256:
            raise ValueError(f"value_prefixes must be 1..256, not {self.value_prefixes}")

    def page(self, task_index: int) -> int:
        return task_index // self.page_tasks

    def partition(self, job_id: str, page: int) -> str:
        """The partition key of a page: pages of concurrent chunks land on different keys."""
        return f"{job_id}#{page % self.shards:02x}"

    def partitions(self, job_id: str) -> list[str]:
        return [f"{job_id}#{s:02x}" for s in range(self.shards)]

    def prefix(self, task_index: int) -> str:
        """The hashed S3 sub-prefix of a task's spilled value or checkpoint."""
        return f"{zlib.crc32(str(task_index).encode()) % self.value_prefixes:02x}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Layout:
        return cls(**data) if data else cls()


def page_tasks_for(chunksize: int) -> int:
    """A chunk's results in as few pages as fit: the largest page size up to 16 that
    divides the chunk size (a chunk of 10 is one page, of 200 is 25 pages of 8), so no page
    is shared by two chunks; PAGE_TASKS when only a small divisor exists."""
    best = max(d for d in range(1, 17) if chunksize % d == 0)
    return best if best >= 4 or chunksize < 4 else PAGE_TASKS


def plan_layout(concurrency: int, task_seconds: float = 1.0, page_tasks: int = PAGE_TASKS,
                value_bytes: int = 0, inline_bytes: int = 16_000) -> Layout:
    """The layout that keeps each key at KEY_HEADROOM of its limit for ``concurrency`` running
    tasks of ``task_seconds`` each.

    Writes per second per key: results/s over S shards, 1/P page writes per task (and as
    many index writes: the polling index holds keys only, 1 unit each), each page write
    ceil(page bytes / 1 KB) units. Values above ``inline_bytes`` go to S3, one PUT and one
    GET per result, spread over H prefixes.
    """
    scale = limit_scale()
    rate = max(1, concurrency) / max(task_seconds, 1e-3)  # results per second at the peak
    entry = min(value_bytes, inline_bytes) + 120
    page_units = math.ceil(entry * page_tasks / 1024)
    key_budget = PARTITION_WCU / scale * KEY_HEADROOM
    shards = _power_of_two(rate / page_tasks * page_units / key_budget)
    prefixes = MIN_VALUE_PREFIXES
    if value_bytes > inline_bytes:
        prefixes = max(prefixes, _power_of_two(rate / (PREFIX_PUT_PER_S / scale * HEADROOM)))
    return Layout(min(shards, 256), page_tasks, min(prefixes, 256))
