"""An offline AWS for fanout jobs: moto runs the real state machine, with real workers.

``emulated_aws()`` starts a moto server on 127.0.0.1 and creates the stack's resources from
the pieces of ``template.yaml`` itself (its functions' handlers and environment, the
definition file and its substitutions, the Batch job definition and retry strategy), so the
tested definition is the deployed one. moto's Step Functions interpreter runs the
definition; its Lambda invocations run ``functions/`` handlers in local interpreters that
stay warm between invocations, as Lambda's execution environments do, and its
Batch jobs run the container command as a local process. Everything stays on loopback.

What moto 5.2 lacks is filled in here, and only here: Batch's ``submitJob.sync``
parameters and responses are normalised between the ASL's and the API's casing, Batch
retry strategies are applied, a stopped execution's workers are ended (moto waits for
running states), a running Distributed Map follows ``UpdateMapRun``'s ``maxConcurrency``
(moto records it but starts a Map Run's workers once), and ``jsonpath_ng`` parses are
memoised (the interpreter re-parsed every
path on every lookup). The interpreter's own AWS clients retry a dropped connection the way
the SDK's standard retry mode does (moto builds them with retries off, so a connection the
loaded local server closed failed the chunk as ``States.Runtime``).

What moto lets through and AWS does not is refused here (``fanout.testing.limits``, each
limit with its source): duplicated state names, an execution input over 256 KiB, Batch
container overrides over 8,192 characters, a Lambda payload over 6 MB (1 MB
asynchronous), invocations above the account's Lambda concurrency quota (throttled with
``TooManyRequestsException``), and Fargate vCPU/memory pairs that do not exist.

Fault knobs: Lambda throttling (``TooManyRequestsException`` before the function runs),
worker crashes (the Lambda process exits after storing a result), Spot interruptions (a
Batch attempt gets SIGTERM, then fails with Fargate's Spot status reason), and a Lambda
timeout for chunks holding chosen tasks.
"""

from __future__ import annotations

import collections
import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...backends.aws.layout import LIMIT_SCALE_ENV
from .. import limits
from ..throttling import Index, LimitTracker, throttled
from .bridge import Bridge
from .emulation import ACCOUNT, REGION, EmulatedAws
from .faults import Faults
from .patches import install_patches
from .server import counting, free_port, report_progress
from .template import Template, create_stack, project_root

_active = threading.Lock()


@contextlib.contextmanager
def emulated_aws(
    *,
    throttle_rate: float = 0.0,
    crash_rate: float = 0.0,
    spot_interruption_rate: float = 0.0,
    lambda_timeout_tasks: frozenset[int] | set[int] = frozenset(),
    lambda_timeout_seconds: float = 2.0,
    seed: int = 0,
    lambda_concurrency: int = limits.LAMBDA_DEFAULT_CONCURRENCY,
    spot_interrupt_on: str | os.PathLike[str] | None = None,
    template: str | os.PathLike[str] | None = None,
    parameters: dict[str, str | int] | None = None,
    progress_every: float | None = 30.0,
    scale: float | None = None,
) -> Iterator[EmulatedAws]:
    """Run the fanout stack offline for the duration of the ``with`` block.

    Sets ``AWS_ENDPOINT_URL`` and test credentials in this process's environment (and so for
    its children), so ``Executor(backend="aws", **aws.backend_options)`` and
    ``Job.attach(job_id, backend="aws", **aws.backend_options)`` reach the emulation. One
    emulation per process at a time.

    ``parameters`` override the template's parameters (e.g. ``ResultRetentionDays``);
    ``lambda_concurrency`` is the account's Lambda quota (a new account's by default);
    ``progress_every`` seconds, a line on stderr tells what the emulation has run (None: quiet);
    ``scale``: apply DynamoDB's per-key, S3's per-prefix and Lambda's scaling limits divided
    by this factor (``throttling.py``), so a job ``scale`` times narrower meets the pressure
    of the wide one; the factor is published to clients and workers through the environment
    (the layout planner and the ``MaxConcurrency`` ramp plan against the scaled limits).
    """
    from moto.moto_api._internal.models import moto_api_backend
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    if not _active.acquire(blocking=False):
        raise RuntimeError("an emulated AWS is already running in this process")
    root = Path(template).resolve().parent if template else project_root()
    faults = Faults(throttle_rate, crash_rate, spot_interruption_rate,
                    frozenset(lambda_timeout_tasks), lambda_timeout_seconds, seed,
                    lambda_concurrency, str(spot_interrupt_on) if spot_interrupt_on else None)
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    minor = "{}.{}".format(*sys.version_info[:2])
    env_overrides = {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION, "AWS_REGION": REGION, "MOTO_PORT": str(port),
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "POWERTOOLS_TRACE_DISABLED": "true", "POWERTOOLS_DEV": "false",
    }
    if scale:
        env_overrides[LIMIT_SCALE_ENV] = repr(float(scale))
    saved_env = {key: os.environ.get(key) for key in env_overrides}
    os.environ.update(env_overrides)
    requests: collections.Counter[tuple[str, str, str]] = collections.Counter()
    events: collections.Counter[str] = collections.Counter()
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
    bridge = Bridge(root, faults, child_env, events)

    class QuietHandler(MotoRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    stop_reporting = threading.Event()
    tracker = LimitTracker(scale, _describe_table) if scale else None
    app = counting(throttled(DomainDispatcherApplication(create_backend_app), tracker),
                   requests)
    server = make_server("127.0.0.1", port, app, True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="fanout-emulated-aws",
                              daemon=True)
    with contextlib.ExitStack() as stack:
        try:
            install_patches(stack, bridge, tracker)
            moto_api_backend.reset()
            moto_api_backend.set_config({"stepfunctions": {"execute_state_machine": True},
                                         "batch": {"use_docker": True},
                                         "lambda": {"use_docker": True}})
            thread.start()
            parsed = Template(root / "template.yaml", {
                "PythonRuntime": f"python{minor}", "BatchImage": "fanout-worker:emulated",
                **{k: str(v) for k, v in (parameters or {}).items()}})
            outputs = create_stack(parsed)
            emulation = EmulatedAws(endpoint, outputs, dict(child_env), faults, requests,
                                    events, limits=tracker)
            requests.clear()
            if progress_every:
                reporter = threading.Thread(target=report_progress, daemon=True,
                                            args=(events, progress_every, stop_reporting),
                                            name="fanout-emulated-aws-progress")
                reporter.start()
            yield emulation
        finally:
            stop_reporting.set()
            bridge.kill()  # in-flight executions must not outlive the emulation
            server.shutdown()
            thread.join(timeout=10)
            with contextlib.suppress(Exception):
                moto_api_backend.reset()
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            _active.release()


def _describe_table(name: str) -> tuple[str, dict[str, Index]]:
    """A moto table's hash key and global secondary indexes, for the throttle."""
    from moto.dynamodb.models import dynamodb_backends

    table = dynamodb_backends[ACCOUNT][REGION].get_table(name)
    indexes = {}
    for index in table.global_indexes:
        keys = {k["KeyType"]: k["AttributeName"] for k in index.schema}
        indexes[index.name] = Index(keys["HASH"], keys.get("RANGE"),
                                    (index.projection or {}).get("ProjectionType") == "KEYS_ONLY")
    return table.hash_key_attr, indexes


__all__ = ["EmulatedAws", "Faults", "Template", "create_stack", "emulated_aws", "project_root"]
