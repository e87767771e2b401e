"""The failures an emulation injects, chosen per test: throttles, crashes, Spot reclaims,
Lambda timeouts, and the account's Lambda concurrency quota."""

from __future__ import annotations

from dataclasses import dataclass

from .. import limits


@dataclass(frozen=True)
class Faults:
    """Injected failures; rates are probabilities per Lambda invocation or Batch attempt."""

    throttle_rate: float = 0.0
    crash_rate: float = 0.0
    spot_interruption_rate: float = 0.0
    lambda_timeout_tasks: frozenset[int] = frozenset()
    lambda_timeout_seconds: float = 2.0
    seed: int = 0
    lambda_concurrency: int = limits.LAMBDA_DEFAULT_CONCURRENCY
    #: A file path: the first Batch attempt during which it appears is reclaimed at that
    #: moment (deterministic Spot interruption; the file is removed for the retry).
    spot_interrupt_on: str | None = None
