"""Checks that the deployed stack can take a job, made before anything is uploaded.

Each failure names what is wrong (a resource missing, a permission, a Python or library
mismatch between this client and the stack's workers) and how to fix it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ...errors import ConfigurationError
from .build_info import find_requirements, requirements_sha256
from .config import AwsConfig
from .store import AwsStore

#: What each worker function reported it was built with (asked once per process).
_WORKER_BUILDS: dict[str, dict[str, Any]] = {}


class StackCheck:
    """Probes the stack once per backend; ``check_stack`` is a no-op after it passed."""

    def __init__(self, config: AwsConfig, store: AwsStore, sfn: Any,
                 python_runtime: str | None) -> None:
        self.config = config
        self.store = store
        self.sfn = sfn
        self.python_runtime = python_runtime
        self._checked = False

    def check_stack(self) -> None:
        """Fail with a specific message if the stack cannot take a job; upload nothing."""
        if self._checked:
            return
        client = "{}.{}".format(*sys.version_info[:2])
        if self.python_runtime and self.python_runtime != f"python{client}":
            raise ConfigurationError(
                f"this client runs Python {client} but the stack's workers run "
                f"{self.python_runtime}; cloudpickle needs the same minor version. Redeploy "
                f"with PythonRuntime=python{client} (and a Batch image built FROM "
                f"python:{client}), or run the client with {self.python_runtime}.")
        probes: list[tuple[str, str, Callable[[], object]]] = [
            ("payload bucket", self.config.bucket,
             lambda: self.store.s3.head_bucket(Bucket=self.config.bucket)),
            ("results table", self.config.table,
             lambda: self.store.dynamodb.describe_table(TableName=self.config.table)),
            ("state machine", self.config.state_machine_arn,
             lambda: self.sfn.describe_state_machine(
                 stateMachineArn=self.config.state_machine_arn)),
        ]
        for what, name, probe in probes:
            try:
                probe()
            except NoCredentialsError as exc:
                raise ConfigurationError(
                    "no AWS credentials found: configure a profile or role (aws configure) "
                    "before using backend='aws'") from exc
            except ClientError as exc:
                code = exc.response["Error"]["Code"]
                if code in ("AccessDenied", "AccessDeniedException", "403", "Forbidden"):
                    raise ConfigurationError(
                        f"not allowed to read the {what} {name!r} ({code}); the client needs "
                        "s3:ListBucket/GetObject/PutObject on the bucket, dynamodb:DescribeTable"
                        "/Query/GetItem/PutItem on the table and states:StartExecution/"
                        "DescribeStateMachine on the state machine") from exc
                raise ConfigurationError(
                    f"the {what} {name!r} does not exist ({code}): is the stack deployed in "
                    "this account and region? Run `fanout configure --stack NAME` again.") from exc
            except BotoCoreError as exc:
                raise ConfigurationError(f"cannot reach AWS for the {what} {name!r}: {exc}. "
                                         "Check the network, the region and AWS_ENDPOINT_URL."
                                         ) from exc
        self.check_worker_build()
        self._checked = True

    def check_worker_build(self) -> None:
        """Compare what the worker artifact was built with to this client; upload nothing.

        The worker answers ``{"action": "build_info"}`` from its ``fanout_build.json`` (once
        per process and function). Older stacks without the WorkerFunctionArn output skip it.
        """
        arn = self.config.worker_function_arn
        if not arn:
            return
        worker = _WORKER_BUILDS.get(arn)
        if worker is None:
            worker = self._ask_worker_build(arn)
            _WORKER_BUILDS[arn] = worker
        from ... import __version__  # not at import time: fanout/__init__ may be loading

        client = {"python": "{}.{}".format(*sys.version_info[:2]), "fanout": __version__}
        requirements = find_requirements()
        fix = ("rebuild and redeploy the stack from the same checkout as this client "
               "(`sam build && sam deploy`, and the Batch image: `docker build` with "
               f"PYTHON_VERSION={client['python']})")
        for what, mine, theirs in (
                ("Python", client["python"], worker.get("runtime_python")),
                ("Python (the artifact was built for)", client["python"], worker.get("python")),
                ("fanout", client["fanout"], worker.get("fanout"))):
            if theirs and mine != theirs:
                raise ConfigurationError(
                    f"the stack's workers have {what} {theirs} but this client has {mine}; "
                    f"cloudpickled tasks need both sides to agree. Either {fix}, or run the "
                    f"client with {what} {theirs}.")
        theirs = worker.get("requirements_sha256")
        if requirements is not None and theirs:
            mine = requirements_sha256(requirements)
            if mine != theirs:
                raise ConfigurationError(
                    f"the stack's workers were built from a worker-requirements.txt with hash "
                    f"{theirs}, but {requirements} here hashes to {mine}: tasks would import "
                    f"libraries the workers lack. {fix[0].upper()}{fix[1:]}.")

    def _ask_worker_build(self, arn: str) -> dict[str, Any]:
        kwargs = {"endpoint_url": self.config.endpoint_url} if self.config.endpoint_url else {}
        lam = self.store.session.client("lambda", **kwargs)
        try:
            response = lam.invoke(FunctionName=arn, Payload=b'{"action": "build_info"}')
            answer = json.loads(response["Payload"].read() or b"{}")
        except (ClientError, BotoCoreError, ValueError) as exc:
            raise ConfigurationError(
                f"cannot ask the worker function {arn} what it was built with ({exc}); the "
                "client needs lambda:InvokeFunction on it (the stack's ClientPolicyArn "
                "output grants it)") from exc
        if response.get("FunctionError") or not isinstance(answer, dict):
            raise ConfigurationError(f"the worker function {arn} failed to report its build: "
                                     f"{answer}; redeploy the stack (`sam build && sam deploy`)")
        return answer
