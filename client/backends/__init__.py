"""Backend selection: ``backend=`` argument, else ``FANOUT_BACKEND``, else ``local``."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError, InvalidArgument, InvalidArgumentType

if TYPE_CHECKING:
    from .base import Backend, JobInfo, JobRequest


def __getattr__(name: str) -> Any:
    """``Backend``, ``JobInfo`` and ``JobRequest`` from :mod:`.base` on first use: a worker
    process imports this package on its way to its own module and needs none of the
    client's side (the collector, futures, schedules) that ``base`` brings in."""
    if name in ("Backend", "JobInfo", "JobRequest"):
        from . import base

        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

BACKENDS = ("local", "aws", "inline")
#: ``mp_context`` start methods whose meaning the local backend has: a fresh interpreter per
#: worker that inherits nothing from the client (how it starts every worker).
FRESH_START_METHODS = ("spawn", "forkserver")


def backend_name(name: str | None) -> str:
    chosen = name or os.environ.get("FANOUT_BACKEND") or "local"
    if chosen not in BACKENDS:
        source = "backend=" if name else "FANOUT_BACKEND"
        raise ConfigurationError(
            f"unknown backend {chosen!r} (from {source}); available: {', '.join(BACKENDS)}"
        )
    return chosen


def worker_options(chosen: str, mp_context: Any, max_tasks_per_child: int | None
                   ) -> dict[str, Any]:
    """Check the stdlib's pool keywords against the backend that would have to honour them."""
    if max_tasks_per_child is not None and (
        isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child, int)
    ):
        raise InvalidArgumentType(
            f"max_tasks_per_child must be an integer, got {max_tasks_per_child!r}")
    if max_tasks_per_child is not None and max_tasks_per_child <= 0:
        raise InvalidArgument("max_tasks_per_child must be >= 1")
    if mp_context is not None:
        if chosen != "local":
            raise ConfigurationError(
                f"mp_context= means nothing on backend {chosen!r}: it does not start "
                "multiprocessing children; leave mp_context=None")
        method = mp_context.get_start_method(allow_none=False)
        if method not in FRESH_START_METHODS:
            raise ConfigurationError(
                f"mp_context with start method {method!r} is not supported: local workers "
                "are fresh interpreters that inherit nothing from the client (like 'spawn'); "
                "pass multiprocessing.get_context('spawn') or leave mp_context=None")
    if max_tasks_per_child is not None and chosen != "local":
        raise ConfigurationError(
            f"max_tasks_per_child= recycles local worker processes; backend {chosen!r} does "
            "not keep worker processes of its own; leave max_tasks_per_child=None")
    return {} if max_tasks_per_child is None else {"max_tasks_per_child": max_tasks_per_child}


def create_backend(name: str | None = None, **options: Any) -> Backend[Any]:
    chosen = backend_name(name)
    if chosen == "local":
        from .local.backend import LocalBackend

        return LocalBackend(**options)
    if chosen == "inline":
        from .inline.backend import InlineBackend

        return InlineBackend(**options)
    if chosen == "aws":
        try:
            from .aws.backend import AwsBackend
        except ImportError as exc:
            raise ConfigurationError(
                f"backend 'aws' needs the aws extra: pip install 'fanout[aws]' ({exc})"
            ) from exc
        return AwsBackend(**options)
    raise AssertionError(chosen)  # pragma: no cover


__all__ = ["BACKENDS", "Backend", "JobInfo", "JobRequest", "backend_name", "create_backend",
           "worker_options"]
