"""The moto server on 127.0.0.1 and what the emulation counts and reports about it."""

from __future__ import annotations

import collections
import socket
import sys
import threading
import time
from typing import Any


def counting(app: Any, requests: collections.Counter[tuple[str, str, str]]) -> Any:
    """WSGI middleware: count requests by (caller, service, operation)."""

    def middleware(environ: dict[str, Any], start_response: Any) -> Any:
        auth = environ.get("HTTP_AUTHORIZATION", "")
        parts = auth.split("Credential=")[-1].split("/") if "Credential=" in auth else []
        service = parts[3] if len(parts) > 3 else "?"
        caller = "stepfunctions" if parts and parts[0] == "ak" else "client/worker"
        target = environ.get("HTTP_X_AMZ_TARGET", "")
        operation = target.split(".")[-1] if target else _rest_operation(service, environ)
        requests[(caller, service, operation)] += 1
        return app(environ, start_response)

    return middleware


def _rest_operation(service: str, environ: dict[str, Any]) -> str:
    method = str(environ.get("REQUEST_METHOD", ""))
    path = str(environ.get("PATH_INFO", ""))
    query = str(environ.get("QUERY_STRING", ""))
    if service == "s3":
        if method == "GET":
            return "ListObjects" if path.count("/") <= 1 else "GetObject"
        if method == "PUT":
            return "UploadPart" if "partNumber" in query else "PutObject"
        if method == "POST":
            return "CreateMultipartUpload" if "uploads" in query else \
                "CompleteMultipartUpload" if "uploadId" in query else "PostObject"
        if method == "HEAD":
            return "HeadBucket" if path.strip("/").count("/") == 0 else "HeadObject"
        return {"DELETE": "DeleteObject"}.get(method, method)
    if service == "lambda" and path.endswith("/invocations"):
        return "Invoke"
    if service == "batch":
        return path.rstrip("/").rsplit("/", 1)[-1]
    return f"{method} {path}"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def report_progress(events: collections.Counter[str], every: float,
                     stop: threading.Event) -> None:
    """Every ``every`` seconds, one line on stderr when something happened: a long emulated
    job (hundreds of fresh interpreters on a small machine) is never silent."""
    started, last = time.monotonic(), ""
    while not stop.wait(every):
        line = (f"emulated AWS, {time.monotonic() - started:.0f} s: "
                f"{events['lambda_invocations']} Lambda invocations, "
                f"{events['batch_attempts']} Batch attempts"
                + "".join(f", {events[k]} {label}" for k, label in (
                    ("lambda_throttle", "injected throttles"),
                    ("lambda_quota_throttle", "throttles over the concurrency quota"),
                    ("lambda_crash", "crashes"), ("lambda_timeout", "Lambda timeouts"),
                    ("spot_interruption", "Spot reclaims")) if events[k]))
        if line.split(": ", 1)[1] != last:
            print(line, file=sys.stderr, flush=True)
            last = line.split(": ", 1)[1]
