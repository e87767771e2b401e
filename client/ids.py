"""Job ids: made once, the same on every backend, safe as a directory name and an S3 key.

An id sorts by creation time (UTC, to the second) and carries six random hex digits, so
two clients starting jobs in the same second do not collide.
"""

from __future__ import annotations

import secrets
import time

from .errors import InvalidArgument


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-", time.gmtime()) + secrets.token_hex(3)


def check_job_id(job_id: str) -> str:
    """Refuse an id that would escape its folder or prefix (``..``, ``a/b``, empty)."""
    if not job_id or "/" in job_id or job_id.startswith("."):
        raise InvalidArgument(f"invalid job id {job_id!r}: a job id has no '/' and does not "
                              "start with '.'")
    return job_id
