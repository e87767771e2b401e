"""The ``MaxConcurrency`` ramp: a wide job's Lambda map starts as fast as Lambda can scale.

Lambda adds at most 1,000 execution environments per function every 10 seconds, refilled
continuously and never accrued beyond 1,000 (docs.aws.amazon.com/lambda/latest/dg/
scaling-behavior.html, "Concurrency scaling rate"); an invoke above it fails with
``TooManyRequestsException`` (429). A Distributed Map started at ``MaxConcurrency`` 10,000
asks for 10,000 environments at once, and 9,000 of its first invocations are throttled
and retried with backoff. Step Functions starts at most 100 Standard child executions per
second per Map Run (docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html),
which the same ramp stays under (800 new children per 10 s is 80/s).

So the Lambda tier's map starts at ``step`` children (80% of what Lambda adds in one
scaling interval, after the emulation's scale factor) and a third branch of the state
machine's ``RunChunks`` raises its Map Run's ``maxConcurrency`` by ``step`` every
interval with ``UpdateMapRun`` (docs.aws.amazon.com/step-functions/latest/apireference/
API_UpdateMapRun.html) until it reaches the target: the stack's ``MaxConcurrency`` (the
cap, which the user keeps at or below the account's Lambda quota) or the job's number of
Lambda chunks, whichever is smaller. A job no wider than one step has no ramp. The 20%
headroom absorbs children that start late after a raise (a slow child start, a cold
environment's init) without crossing the scaling rate.

Chunks that finish hand their warm environment to the next child, so only the *increase*
in width needs new environments; the ramp paces exactly that. The ramp runs in the
execution (the plan function is its Lambda), so a job ramps whether or not a client is
watching (scheduled runs, a client that exits after submitting).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from .layout import limit_scale

#: Lambda: new execution environments per function per scaling interval (see above).
LAMBDA_SCALING_ENVIRONMENTS = 1000
LAMBDA_SCALING_SECONDS = 10.0
#: Step Functions: Standard child executions started per second per Map Run.
CHILD_STARTS_PER_SECOND = 100
#: The share of both rates the ramp uses.
RAMP_SHARE = 0.8
#: The share of the child start rate a running job's chunk restarts may plan for.
CHILD_START_SHARE = 0.5
#: The Lambda map's label: its Map Run ARN is ``…:mapRun:<machine>/<label>:<id>``.
LAMBDA_MAP_LABEL = "LambdaChunks"


@dataclass(frozen=True)
class Ramp:
    """One execution's ramp: start at ``width``, add ``step`` every ``interval`` seconds
    until ``target``. ``raised_at``: when the Map Run's width was last set (epoch s; 0
    until the ramp has seen the Map Run start)."""

    width: int
    step: int
    target: int
    interval: float = LAMBDA_SCALING_SECONDS
    raised_at: float = 0.0
    #: Seconds the state machine waits before the next raise.
    wait: int = int(LAMBDA_SCALING_SECONDS)
    done: bool = False

    def __post_init__(self) -> None:
        if self.step < 1 or self.width < 1 or self.target < 1:
            raise ValueError(f"a ramp needs width, step and target >= 1, got width "
                             f"{self.width}, step {self.step}, target {self.target}")

    def widths(self) -> list[int]:
        """The Map Run's width after each interval, from the start to the target."""
        out = [min(self.width, self.target)]
        while out[-1] < self.target:
            out.append(min(self.target, out[-1] + self.step))
        return out

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Ramp:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def ramp_step(scale: float | None = None) -> int:
    """Children added per interval: RAMP_SHARE of Lambda's new environments per interval
    and of the Map Run's child starts per interval, whichever is smaller, divided by the
    emulation's scale factor (1 on AWS)."""
    scale = limit_scale() if scale is None else scale
    per_interval = min(LAMBDA_SCALING_ENVIRONMENTS,
                       CHILD_STARTS_PER_SECOND * LAMBDA_SCALING_SECONDS) / scale
    return max(1, math.floor(RAMP_SHARE * per_interval))


def plan_ramp(lambda_chunks: int, cap: int, enabled: bool = True,
              scale: float | None = None) -> tuple[int, Ramp | None]:
    """(the Lambda map's starting MaxConcurrency, the ramp or None).

    ``cap``: the stack's MaxConcurrency. ``enabled=False`` is the behaviour before the
    ramp (start at the full width; Lambda throttles what it cannot scale to), kept as a
    switch so the scale test can show what the ramp prevents.
    """
    target = max(1, min(cap, lambda_chunks))
    step = ramp_step(scale)
    if not enabled or target <= step:
        return target, None
    return step, Ramp(width=step, step=step, target=target)


def next_raise(ramp: Ramp, current: int, started_at: float, now: float) -> tuple[int, Ramp]:
    """The width to set now (``current`` if it is not yet time) and the ramp after it.

    A raise waits ``interval`` after the previous one (or after the Map Run started), so
    no two raises fall in one scaling interval; the ramp never lowers a width someone set
    higher by hand.
    """
    since = ramp.raised_at or started_at
    if now - since < ramp.interval:
        wait = max(1, math.ceil(ramp.interval - (now - since)))
        return current, Ramp(ramp.width, ramp.step, ramp.target, ramp.interval, since, wait)
    width = min(ramp.target, max(current, ramp.width) + ramp.step)
    done = width >= ramp.target
    return width, Ramp(width, ramp.step, ramp.target, ramp.interval, now,
                       math.ceil(ramp.interval), done)


def min_chunk_seconds(width: int) -> float:
    """The chunk plan's rule: how long a chunk must run so that ``width`` chunks running at
    once restart at no more than half of a Map Run's child start rate (100/s, Standard).

    Shorter chunks are not throttled: Step Functions makes the extra children wait
    (service-quotas.html), so the job runs narrower than its ``MaxConcurrency``. fanout
    does not know a task's duration before it runs, so this is the rule for the user's
    ``chunksize`` (``chunksize * task seconds >= min_chunk_seconds(width)``; at 10,000 wide,
    200 s of work per chunk), and the scale model's plan.
    """
    return width / (CHILD_START_SHARE * CHILD_STARTS_PER_SECOND)


__all__ = ["CHILD_STARTS_PER_SECOND", "CHILD_START_SHARE", "LAMBDA_MAP_LABEL",
           "LAMBDA_SCALING_ENVIRONMENTS", "LAMBDA_SCALING_SECONDS", "RAMP_SHARE", "Ramp",
           "min_chunk_seconds", "next_raise", "plan_ramp", "ramp_step"]
