"""The failures an emulation injects, chosen per test: throttles, crashes, Spot reclaims,
Lambda timeouts, and the account's Lambda concurrency quota."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .. import limits


@dataclass(frozen=True)
class Faults:
    """Injected failures; rates are probabilities per Lambda invocation or Batch attempt.

    Whether a fault strikes is a function of ``seed`` and *what* is being tried (which
    chunk, its how-manyth invocation or Batch attempt), never of the order in which threads
    happen to ask: the same seed gives the same faults on the same chunks in every run, so a
    test can assert that each kind of fault occurred.
    """

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

    def draw(self, kind: str, subject: str, nth: int) -> float:
        """A number in [0, 1) for the ``nth`` try of ``subject`` (a chunk's task indexes,
        or a function name) at fault ``kind``: a hash, so the same in every run."""
        digest = hashlib.blake2b(f"{self.seed}|{kind}|{subject}|{nth}".encode(),
                                 digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2**64
