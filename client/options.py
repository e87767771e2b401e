"""Task options: validated once, at the call, so a mistake fails before anything is uploaded.

The limits mirror the AWS tiers the options must eventually fit: Lambda runs 128 to 10,240 MB
for at most 15 minutes; Fargate (the ``batch`` tier) goes up to 120 GiB and has no such limit.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .errors import InvalidArgument, InvalidArgumentType

TIERS = ("auto", "lambda", "batch")
LAMBDA_MEMORY_MB = (128, 10_240)
BATCH_MEMORY_MB = (512, 122_880)
LAMBDA_MAX_SECONDS = 15 * 60
# Leave Lambda headroom for start-up and writing results: longer tasks go to Batch.
LAMBDA_PLANNING_SECONDS = 13 * 60


@dataclass(frozen=True)
class TaskOptions:
    """How each task of a job runs; part of the job spec, identical on every backend."""

    timeout: float | None = None
    memory_mb: int | None = None
    retries: int = 2
    tier: str = "auto"
    chunksize: int = 1
    seed: int | None = None
    #: The executor's ``initializer(*initargs)``, pickled once and base64-encoded, so it
    #: travels inside the job spec to every backend's worker runtime (see runtime.py).
    initializer: str | None = field(default=None, repr=False)
    #: Elements per packed task (``map(..., chunksize=n)`` with n > 1; see ``fanout.packing``):
    #: each task of the job is a chunk of ``pack`` calls run, stored and delivered as one
    #: unit. 0: every call is a task of its own.
    pack: int = 0

    def __post_init__(self) -> None:
        validate(self)

    @property
    def task_timeout(self) -> float | None:
        """How long one task of the job may run: ``timeout``, times ``pack`` for a packed
        chunk. ``timeout=`` bounds a call, and a chunk of n calls gets n times that in all:
        calls of a minute each under ``timeout=120`` must not fail because ten of them were
        packed together (a single call may then use more than its share, up to the whole)."""
        if self.timeout is None:
            return None
        return self.timeout * max(1, self.pack)

    def with_overrides(self, **overrides: Any) -> TaskOptions:
        unknown = set(overrides) - set(asdict(self))
        if unknown:
            raise InvalidArgumentType(
                f"unknown task option(s) {sorted(unknown)}; known: {sorted(asdict(self))}"
            )
        return replace(self, **overrides)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TaskOptions:
        return cls(**data)


def validate(options: TaskOptions) -> None:
    """Raise ValueError/TypeError naming the bad option, its value and what is accepted."""
    t = options.timeout
    if t is not None:
        if isinstance(t, bool) or not isinstance(t, (int, float)):
            raise InvalidArgumentType(f"timeout must be a number of seconds or None, not {t!r}")
        if not math.isfinite(t) or t <= 0:
            raise InvalidArgument(f"timeout must be a positive number of seconds, got {t!r}")
    m = options.memory_mb
    if m is not None:
        if isinstance(m, bool) or not isinstance(m, int):
            raise InvalidArgumentType(
                f"memory_mb must be an integer number of MB or None, not {m!r}")
        low, high = LAMBDA_MEMORY_MB[0], BATCH_MEMORY_MB[1]
        if not low <= m <= high:
            raise InvalidArgument(f"memory_mb must be between {low} and {high} MB, got {m}")
    r = options.retries
    if isinstance(r, bool) or not isinstance(r, int) or r < 0:
        raise InvalidArgument(f"retries must be an integer >= 0, got {r!r}")
    if options.tier not in TIERS:
        raise InvalidArgument(f"tier must be one of {', '.join(TIERS)}; got {options.tier!r}")
    c = options.chunksize
    if isinstance(c, bool) or not isinstance(c, int) or c < 1:
        raise InvalidArgument(f"chunksize must be an integer >= 1, got {c!r}")
    k = options.pack
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InvalidArgument(f"pack must be an integer >= 0, got {k!r}")
    s = options.seed
    if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0):
        raise InvalidArgument(f"seed must be a non-negative integer or None, got {s!r}")
    if options.initializer is not None and not isinstance(options.initializer, str):
        raise InvalidArgumentType(
            "initializer is set through Executor(initializer=..., initargs=...)")
    if options.tier == "lambda":
        if t is not None and t > LAMBDA_MAX_SECONDS:
            raise InvalidArgument(
                f"tier='lambda' allows at most {LAMBDA_MAX_SECONDS} s per task, got timeout={t}; "
                "use tier='batch' or tier='auto'"
            )
        if m is not None and m > LAMBDA_MEMORY_MB[1]:
            raise InvalidArgument(
                f"tier='lambda' allows at most {LAMBDA_MEMORY_MB[1]} MB, got memory_mb={m}; "
                "use tier='batch' or tier='auto'"
            )


def plan_tier(options: TaskOptions) -> str:
    """Choose ``lambda`` or ``batch`` for a chunk from the call's hints."""
    if options.tier != "auto":
        return options.tier
    longest = options.task_timeout  # a packed chunk may take its calls' timeouts together
    too_long = longest is not None and longest > LAMBDA_PLANNING_SECONDS
    too_big = options.memory_mb is not None and options.memory_mb > LAMBDA_MEMORY_MB[1]
    return "batch" if too_long or too_big else "lambda"
