"""Backend selection: ``backend=`` argument, else ``FANOUT_BACKEND``, else ``local``."""

from __future__ import annotations

import os
from typing import Any

from ..errors import ConfigurationError
from .base import Backend, JobInfo, JobRequest

BACKENDS = ("local", "aws")


def backend_name(name: str | None) -> str:
    chosen = name or os.environ.get("FANOUT_BACKEND") or "local"
    if chosen not in BACKENDS:
        source = "backend=" if name else "FANOUT_BACKEND"
        raise ConfigurationError(
            f"unknown backend {chosen!r} (from {source}); available: {', '.join(BACKENDS)}"
        )
    return chosen


def create_backend(name: str | None = None, **options: Any) -> Backend:
    chosen = backend_name(name)
    if chosen == "local":
        from .local.backend import LocalBackend

        return LocalBackend(**options)
    if chosen == "aws":
        try:
            from .aws.backend import AwsBackend
        except ImportError as exc:
            raise ConfigurationError(
                f"backend 'aws' needs the aws extra: pip install 'fanout[aws]' ({exc})"
            ) from exc
        return AwsBackend(**options)
    raise AssertionError(chosen)  # pragma: no cover


__all__ = ["BACKENDS", "Backend", "JobInfo", "JobRequest", "backend_name", "create_backend"]
