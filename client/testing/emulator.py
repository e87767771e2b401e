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
running states), and ``jsonpath_ng`` parses are memoised (the interpreter re-parsed every
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
import fnmatch
import functools
import io
import json
import logging
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..backends.aws.layout import LIMIT_SCALE_ENV
from . import limits
from .throttling import Index, LimitTracker, Throttled, throttled

REGION = "us-east-1"
ACCOUNT = "123456789012"
#: Idle execution environments kept per function (Lambda keeps them for minutes).
WARM_ENVIRONMENTS = 4


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


@dataclass
class EmulatedAws:
    """What a test needs: the backend options, the environment, and what happened."""

    endpoint_url: str
    outputs: dict[str, str]
    env: dict[str, str]
    faults: Faults
    requests: collections.Counter[tuple[str, str, str]] = field(
        default_factory=collections.Counter)
    events: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Seconds the emulated clock is ahead of the real one (``advance_clock``).
    clock_offset: float = 0.0
    #: The scaled per-key/per-prefix limits (``emulated_aws(scale=...)``; throttling.py):
    #: ``limits.throttles`` counts refusals by AWS's throttling reason. None: not applied.
    limits: LimitTracker | None = None

    @property
    def backend_options(self) -> dict[str, Any]:
        """Pass as ``Executor(backend="aws", **aws.backend_options)``."""
        return {
            "bucket": self.outputs["PayloadBucketName"],
            "table": self.outputs["ResultsTableName"],
            "state_machine_arn": self.outputs["StateMachineArn"],
            "job_queue_arn": self.outputs["JobQueueArn"],
            "schedule_group": self.outputs["ScheduleGroupName"],
            "scheduler_role_arn": self.outputs["SchedulerRoleArn"],
            "schedule_dlq_arn": self.outputs["ScheduleDeadLetterQueueArn"],
            "region": REGION,
            "python_runtime": self.outputs["PythonRuntime"],
            "retention_days": self.outputs["ResultRetentionDays"],
            "max_concurrency": self.outputs["MaxConcurrency"],
            "worker_function_arn": self.outputs["WorkerFunctionArn"],
        }

    def client(self, service: str) -> Any:
        import boto3

        return boto3.session.Session(region_name=REGION).client(
            service, endpoint_url=self.endpoint_url)

    def fire_schedule(self, name: str) -> str:
        """Do what EventBridge Scheduler does when ``name`` is due: start its target with
        its input. Returns the execution ARN."""
        group = self.outputs["ScheduleGroupName"]
        target = self.client("scheduler").get_schedule(Name=name, GroupName=group)["Target"]
        response = self.client("stepfunctions").start_execution(
            stateMachineArn=target["Arn"], name=uuid.uuid4().hex, input=target["Input"])
        return str(response["executionArn"])

    def advance_clock(self, days: float) -> dict[str, int]:
        """Move the emulated clock ``days`` ahead and do what AWS does by then.

        The payload bucket's lifecycle rules delete objects older than their expiration
        under their prefix (S3 rounds to the next midnight UTC and runs daily: the objects
        are gone some time after; docs.aws.amazon.com/AmazonS3/latest/API/
        API_LifecycleExpiration.html), and DynamoDB's TTL deletes items whose ``expires`` is
        past ("typically within two days"; .../amazondynamodb/latest/APIReference/
        API_UpdateTimeToLive.html). Returns how many objects and items were deleted.
        """
        self.clock_offset += days * 86400
        now = time.time() + self.clock_offset
        s3, deleted = self.client("s3"), {"objects": 0, "items": 0}
        bucket = self.outputs["PayloadBucketName"]
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
        for rule in rules:
            days_to_live = rule.get("Expiration", {}).get("Days")
            if rule.get("Status") != "Enabled" or not days_to_live:
                continue
            prefix = rule.get("Filter", {}).get("Prefix", rule.get("Prefix", ""))
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                      Prefix=prefix):
                for obj in page.get("Contents", []):
                    if obj["LastModified"].timestamp() + days_to_live * 86400 <= now:
                        s3.delete_object(Bucket=bucket, Key=obj["Key"])
                        deleted["objects"] += 1
        dynamodb = self.client("dynamodb")
        table = self.outputs["ResultsTableName"]
        for page in dynamodb.get_paginator("scan").paginate(TableName=table):
            for item in page["Items"]:
                if "expires" in item and float(item["expires"]["N"]) <= now:
                    dynamodb.delete_item(TableName=table, Key={
                        "job_id": item["job_id"], "item": item["item"]})
                    deleted["items"] += 1
        return deleted

    def state_transitions(self, execution_arn: str) -> int:
        """StateEntered events of an execution (Step Functions bills per transition)."""
        sfn = self.client("stepfunctions")
        events = []
        for page in sfn.get_paginator("get_execution_history").paginate(
                executionArn=execution_arn):
            events.extend(page["events"])
        return sum(1 for e in events if e["type"].endswith("StateEntered"))


def project_root() -> Path:
    """The folder holding template.yaml (this source tree, or FANOUT_PROJECT_ROOT)."""
    configured = os.environ.get("FANOUT_PROJECT_ROOT")
    candidates = [Path(configured)] if configured else []
    candidates += [Path(__file__).resolve().parents[2], Path.cwd()]
    for candidate in candidates:
        if (candidate / "template.yaml").exists():
            return candidate
    raise FileNotFoundError("template.yaml not found: set FANOUT_PROJECT_ROOT to the fanout "
                            "checkout whose stack should be emulated")


# -- the template ------------------------------------------------------------------------------


class Template:
    """template.yaml with intrinsic functions resolved against emulated resource names."""

    def __init__(self, path: Path, parameters: dict[str, str]) -> None:
        from cfnlint.decode import cfn_yaml

        self.path = path
        self.data = cfn_yaml.load(str(path))
        self.refs: dict[str, Any] = {"AWS::Region": REGION, "AWS::AccountId": ACCOUNT,
                                     "AWS::Partition": "aws", "AWS::StackName": "fanout-emulated",
                                     "AWS::StackId": f"arn:aws:cloudformation:{REGION}:"
                                     f"{ACCOUNT}:stack/fanout-emulated/emulated"}
        self.attrs: dict[tuple[str, str], Any] = {}
        for name, spec in self.data.get("Parameters", {}).items():
            value = parameters.get(name, spec.get("Default"))
            self.refs[name] = value

    def resources(self, kind: str) -> list[tuple[str, dict[str, Any]]]:
        return [(name, res.get("Properties", {})) for name, res in
                self.data["Resources"].items() if res["Type"] == kind]

    def resolve(self, value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"Ref"}:
                return self.refs[value["Ref"]]
            if set(value) == {"Fn::GetAtt"}:
                target = value["Fn::GetAtt"]
                name, attr = target if isinstance(target, list) else target.split(".", 1)
                return self.attrs[(name, attr)]
            if set(value) == {"Fn::Sub"}:
                text = value["Fn::Sub"]
                if isinstance(text, list):
                    text, extra = text
                    for key, val in extra.items():
                        text = text.replace("${" + key + "}", str(self.resolve(val)))
                for (name, attr), val in self.attrs.items():
                    text = text.replace("${" + f"{name}.{attr}" + "}", str(val))
                for name, val in self.refs.items():
                    text = text.replace("${" + name + "}", str(val))
                return text
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        return value


def _lifecycle_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A CloudFormation lifecycle rule in the S3 API's shape."""
    out: dict[str, Any] = {"ID": rule["Id"], "Status": rule["Status"],
                           "Filter": {"Prefix": rule.get("Prefix", "")}}
    if "ExpirationInDays" in rule:
        out["Expiration"] = {"Days": int(rule["ExpirationInDays"])}
    if "AbortIncompleteMultipartUpload" in rule:
        out["AbortIncompleteMultipartUpload"] = {"DaysAfterInitiation": int(
            rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"])}
    return out


def _camel(value: Any) -> Any:
    """CloudFormation's PascalCase property names to the API's camelCase (Batch)."""
    if isinstance(value, dict):
        return {k[:1].lower() + k[1:]: _camel(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel(v) for v in value]
    return value


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("README.txt", "code runs from the project's functions/ folder")
    return buffer.getvalue()


def create_stack(template: Template) -> dict[str, str]:
    """Create every resource of the template in moto; return the stack's Outputs."""
    import boto3

    session = boto3.session.Session(region_name=REGION)
    iam, s3 = session.client("iam"), session.client("s3")
    dynamodb, lam = session.client("dynamodb"), session.client("lambda")
    ec2, batch, sfn = session.client("ec2"), session.client("batch"), session.client(
        "stepfunctions")
    suffix = uuid.uuid4().hex[:8]

    def role(name: str, service: str) -> str:
        trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action":
                 "sts:AssumeRole", "Principal": {"Service": service}}]}
        return str(iam.create_role(RoleName=f"{name}-{suffix}",
                                   AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"])

    for name, props in template.resources("AWS::S3::Bucket"):
        bucket = f"fanout-emulated-{name.lower()}-{suffix}"
        s3.create_bucket(Bucket=bucket)
        rules = template.resolve(props.get("LifecycleConfiguration", {}).get("Rules", []))
        if rules:
            s3.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={
                "Rules": [_lifecycle_rule(rule) for rule in rules]})
        template.refs[name] = bucket
        template.attrs[(name, "Arn")] = f"arn:aws:s3:::{bucket}"
    for name, props in template.resources("AWS::DynamoDB::Table"):
        table = f"fanout-emulated-{name.lower()}-{suffix}"
        kwargs = {k: props[k] for k in ("AttributeDefinitions", "KeySchema",
                                        "GlobalSecondaryIndexes", "BillingMode") if k in props}
        dynamodb.create_table(TableName=table, **kwargs)
        ttl = props.get("TimeToLiveSpecification")
        if ttl:
            dynamodb.update_time_to_live(TableName=table, TimeToLiveSpecification=ttl)
        template.refs[name] = table
        template.attrs[(name, "Arn")] = f"arn:aws:dynamodb:{REGION}:{ACCOUNT}:table/{table}"
    logs = session.client("logs")
    for name, _props in template.resources("AWS::Logs::LogGroup"):
        group_name = f"/fanout-emulated/{name}-{suffix}"
        logs.create_log_group(logGroupName=group_name)
        template.refs[name] = group_name
        template.attrs[(name, "Arn")] = f"arn:aws:logs:{REGION}:{ACCOUNT}:log-group:{group_name}"
    lambda_role = role("fanout-lambda", "lambda.amazonaws.com")
    deferred: list[tuple[str, dict[str, Any]]] = []

    def create_function(name: str, props: dict[str, Any]) -> None:
        function = f"{name}-{suffix}"
        env = template.resolve(props.get("Environment", {}).get("Variables", {}))
        response = lam.create_function(
            FunctionName=function, Runtime=template.resolve(props["Runtime"]),
            Role=lambda_role, Handler=props["Handler"], Code={"ZipFile": _zip()},
            Timeout=int(template.resolve(props.get("Timeout", 3))),
            MemorySize=int(template.resolve(props.get("MemorySize", 128))),
            Environment={"Variables": {k: str(v) for k, v in env.items()}})
        template.refs[name] = function
        template.attrs[(name, "Arn")] = response["FunctionArn"]

    for name, props in template.resources("AWS::Serverless::Function"):
        try:
            create_function(name, props)
        except KeyError:  # refers to something made later (the API needs the state machine)
            deferred.append((name, props))
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    group = ec2.create_security_group(GroupName=f"fanout-{suffix}", Description="fanout",
                                      VpcId=vpc)["GroupId"]
    template.refs["Subnets"], template.refs["SecurityGroupIds"] = [subnet], [group]
    sqs, scheduler = session.client("sqs"), session.client("scheduler")
    for name, _props in template.resources("AWS::SQS::Queue"):
        url = sqs.create_queue(QueueName=f"{name}-{suffix}")["QueueUrl"]
        template.refs[name] = url
        template.attrs[(name, "Arn")] = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    for name, props in template.resources("AWS::Scheduler::ScheduleGroup"):
        group = f"{template.resolve(props.get('Name', name))}-{suffix}"
        scheduler.create_schedule_group(Name=group)
        template.refs[name] = group
    for name, _props in template.resources("AWS::IAM::Role"):
        template.attrs[(name, "Arn")] = role(name, "ecs-tasks.amazonaws.com")
    batch_role = role("fanout-batch-service", "batch.amazonaws.com")
    for name, props in template.resources("AWS::Batch::ComputeEnvironment"):
        resources = _camel(template.resolve(props["ComputeResources"]))
        response = batch.create_compute_environment(
            computeEnvironmentName=f"{name}-{suffix}", type=props["Type"],
            state=props.get("State", "ENABLED"), computeResources=resources,
            serviceRole=batch_role)
        template.refs[name] = response["computeEnvironmentArn"]
    for name, props in template.resources("AWS::Batch::JobQueue"):
        order = _camel(template.resolve(props["ComputeEnvironmentOrder"]))
        response = batch.create_job_queue(jobQueueName=f"{name}-{suffix}", state="ENABLED",
                                          priority=int(props.get("Priority", 1)),
                                          computeEnvironmentOrder=order)
        template.refs[name] = response["jobQueueArn"]
    for name, props in template.resources("AWS::Batch::JobDefinition"):
        resolved = _camel(template.resolve(props))
        container = resolved["containerProperties"]
        for variable in container.get("environment", []):  # CloudFormation passes strings
            variable["value"] = str(variable["value"])
        response = batch.register_job_definition(
            jobDefinitionName=f"{name}-{suffix}", type=resolved["type"],
            containerProperties={k: container[k] for k in
                                 ("image", "command", "environment", "resourceRequirements",
                                  "jobRoleArn", "executionRoleArn") if k in container},
            retryStrategy=resolved.get("retryStrategy", {}),
            timeout=resolved.get("timeout", {}),
            platformCapabilities=resolved.get("platformCapabilities", []))
        template.refs[name] = response["jobDefinitionArn"]
    sfn_role = role("fanout-states", "states.amazonaws.com")
    for name, props in template.resources("AWS::Serverless::StateMachine"):
        definition = (template.path.parent / props["DefinitionUri"]).read_text()
        for key, value in template.resolve(props.get("DefinitionSubstitutions", {})).items():
            definition = definition.replace("${" + key + "}", str(value))
        response = sfn.create_state_machine(name=f"{name}-{suffix}", definition=definition,
                                            roleArn=sfn_role, type=props.get("Type", "STANDARD"))
        template.refs[name] = response["stateMachineArn"]
    for name, props in deferred:
        create_function(name, props)
    for name, props in template.resources("AWS::IAM::ManagedPolicy"):
        document = template.resolve(props["PolicyDocument"])
        template.refs[name] = iam.create_policy(
            PolicyName=f"{name}-{suffix}", PolicyDocument=json.dumps(document))["Policy"]["Arn"]
    return {key: str(template.resolve(out["Value"]))
            for key, out in template.data.get("Outputs", {}).items()}


# -- bridging moto to local processes ----------------------------------------------------------


class _Bridge:
    """The patches that make moto run fanout's workers locally, with faults injected."""

    def __init__(self, root: Path, faults: Faults, env: dict[str, str],
                 events: collections.Counter[str]) -> None:
        self.root = root
        self.faults = faults
        self.env = env
        self.events = events
        self.rng = random.Random(faults.seed)
        self.lock = threading.Lock()
        self.running: dict[subprocess.Popen[bytes], str] = {}  # worker process -> job id
        self.closed = False
        self.in_flight = 0  # Lambda invocations running now (the concurrency quota)
        self.idle: dict[str, list[subprocess.Popen[bytes]]] = {}  # warm environments

    def _started(self, proc: subprocess.Popen[bytes], job_id: str) -> None:
        with self.lock:
            self.running[proc] = job_id
            closed = self.closed
        if closed:
            proc.kill()

    def _ended(self, proc: subprocess.Popen[bytes]) -> None:
        with self.lock:
            self.running.pop(proc, None)

    def kill(self, job_id: str | None = None) -> None:
        """Kill the workers of ``job_id`` (its execution was stopped), or all of them."""
        with self.lock:
            victims = [p for p, job in self.running.items() if job_id in (None, job)]
            if job_id is None:
                self.closed = True
                victims += [p for procs in self.idle.values() for p in procs]
                self.idle.clear()
        for proc in victims:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()

    def chance(self, rate: float) -> bool:
        with self.lock:
            return rate > 0 and self.rng.random() < rate

    def invoke_lambda(self, function: Any, event: Any) -> tuple[str, bool, str]:
        """Run one invocation of ``function`` (moto's model) in one of its execution
        environments: a warm one when one is idle, as on Lambda, else a new interpreter."""
        text = event if isinstance(event, str) else json.dumps(event or {})
        timeout = float(function.timeout)
        chunk = json.loads(text).get("chunk") or {}
        task_indexes = {t[0] for t in _chunk_tasks(chunk)}
        self.events["lambda_invocations"] += 1
        if task_indexes & self.faults.lambda_timeout_tasks:
            timeout = min(timeout, self.faults.lambda_timeout_seconds)
        crash_after = None
        if chunk and self.chance(self.faults.crash_rate):
            crash_after = 1 + self.rng.randrange(max(1, len(task_indexes)))
            self.events["lambda_crash"] += 1
        with tempfile.TemporaryDirectory() as tmp:
            response_path = os.path.join(tmp, "response.json")
            log_path = os.path.join(tmp, "log.txt")
            request = {"root": str(self.root), "handler": function.handler, "event": text,
                       "response": response_path, "log": log_path,
                       "request_id": str(uuid.uuid4()),
                       "function_name": function.function_name,
                       "memory": str(function.memory_size), "timeout": timeout,
                       "crash_after": crash_after}
            proc = self._environment(function)
            self._started(proc, chunk.get("job_id") or json.loads(text).get("job_id", ""))
            try:
                answered = self._call(proc, request, timeout)
            finally:
                self._ended(proc)
            log_text = ""
            if os.path.exists(log_path):
                with open(log_path, "rb") as log:
                    log_text = log.read().decode(errors="replace")
            if answered is None:
                proc.kill()
                proc.wait()
                self.events["lambda_timeout"] += 1
                return json.dumps({"errorType": "Sandbox.Timedout", "errorMessage":
                                   f"Task timed out after {timeout:.2f} seconds"}), True, log_text
            if not answered or not os.path.exists(response_path):
                code = proc.wait()
                return json.dumps({"errorType": "Runtime.ExitError", "errorMessage":
                                   f"Runtime exited with error: exit status {code}"}
                                  ), True, log_text
            self._release(function, proc, reuse=crash_after is None)
            with open(response_path) as handle:
                response = json.load(handle)
        if "ok" in response:
            return json.dumps(response["ok"]), False, log_text
        return json.dumps(response), True, log_text

    def _environment(self, function: Any) -> subprocess.Popen[bytes]:
        """A warm execution environment of ``function``, or a new one (a cold start)."""
        with self.lock:
            idle = self.idle.setdefault(function.function_name, [])
            while idle:
                proc = idle.pop()
                if proc.poll() is None:
                    return proc
        self.events["lambda_cold_starts"] += 1
        env = {**self.env, **{k: str(v) for k, v in function.environment_vars.items()}}
        return subprocess.Popen([sys.executable, "-m", "fanout.testing.lambda_runner"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                env=env, cwd=str(self.root))

    def _release(self, function: Any, proc: subprocess.Popen[bytes], reuse: bool) -> None:
        """Keep the environment warm for the next invocation, or let it go."""
        with self.lock:
            idle = self.idle.setdefault(function.function_name, [])
            if reuse and not self.closed and len(idle) < WARM_ENVIRONMENTS:
                idle.append(proc)
                return
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @staticmethod
    def _call(proc: subprocess.Popen[bytes], request: dict[str, Any],
              timeout: float) -> bool | None:
        """Send one request; True when answered, False when the process died, None when
        ``timeout`` passed first."""
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(json.dumps(request).encode() + b"\n")
            proc.stdin.flush()
        except OSError:
            return False
        ready, _, _ = select.select([proc.stdout], [], [], timeout)
        if not ready:
            return None
        return proc.stdout.readline() == b"done\n"

    def throttle(self) -> None:
        if self.chance(self.faults.throttle_rate):
            self.events["lambda_throttle"] += 1
            raise _TooManyRequests()

    @contextlib.contextmanager
    def concurrency(self) -> Iterator[None]:
        """One running invocation; above the quota Lambda throttles instead of queueing."""
        with self.lock:
            if self.in_flight >= self.faults.lambda_concurrency:
                self.events["lambda_quota_throttle"] += 1
                raise _TooManyRequests()
            self.in_flight += 1
        try:
            yield
        finally:
            with self.lock:
                self.in_flight -= 1

    def run_batch_job(self, job: Any) -> None:
        """moto's ``batch.models.Job.run`` without Docker: the command as a local process."""
        from moto.batch.utils import JobStatus

        try:
            job.job_started_at = datetime.now()
            job.status = JobStatus.RUNNING
            container = job.job_definition.container_properties or {}
            command = job.container_overrides.get("command") or container.get("command", [])
            command = [sys.executable if part == "python" else part for part in command]
            env = dict(self.env)
            for item in container.get("environment", []) + job.container_overrides.get(
                    "environment", []):
                env[item["name"]] = item["value"]
            env["AWS_BATCH_JOB_ID"] = job.job_id
            length = limits.overrides_length(job.container_overrides or {})
            if length > limits.ECS_OVERRIDES_MAX_CHARS:
                self.events["overrides_too_long"] += 1
                job.job_stopped_reason = (
                    "Container Overrides length must be at most "
                    f"{limits.ECS_OVERRIDES_MAX_CHARS} (got {length})")
                job._mark_stopped(success=False)
                return
            strategy = job.job_definition.retry_strategy or {}
            attempts = int(strategy.get("attempts", 1))
            limit = float((job.timeout or {}).get("attemptDurationSeconds")
                          or (job.job_definition.timeout or {}).get("attemptDurationSeconds")
                          or 3600)
            for attempt in range(1, attempts + 1):
                job._start_attempt()
                env["AWS_BATCH_JOB_ATTEMPT"] = str(attempt)
                code, reason = self._batch_attempt(command, env, limit)
                if code == 0:
                    job._mark_stopped(success=True)
                    return
                job.job_stopped_reason = reason
                if _exit_action(strategy.get("evaluateOnExit", []), reason, code) != "retry":
                    break
                job.job_stopped = False
            job._mark_stopped(success=False)
        except Exception as exc:  # a bug here must fail the job, not hang the execution
            job.job_stopped_reason = f"emulator error: {exc!r}"
            job._mark_stopped(success=False)

    def _batch_attempt(self, command: list[str], env: dict[str, str],
                       limit: float) -> tuple[int, str]:
        interrupt = self.chance(self.faults.spot_interruption_rate)
        self.events["batch_attempts"] += 1
        proc = subprocess.Popen(command, env=env, cwd=str(self.root), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        chunk = json.loads(env.get("FANOUT_CHUNK_REF", "{}"))
        self._started(proc, chunk.get("job_id", ""))
        try:
            return self._wait_attempt(proc, interrupt, limit)
        finally:
            self._ended(proc)

    def _notice_when_file(self, proc: subprocess.Popen[bytes], limit: float) -> bool:
        """Wait for the ``spot_interrupt_on`` file (or the attempt's end); claim it once."""
        path = self.faults.spot_interrupt_on
        if not path:
            return False
        deadline = time.monotonic() + limit
        while proc.poll() is None and time.monotonic() < deadline:
            with self.lock:
                if os.path.exists(path):
                    os.unlink(path)
                    return True
            time.sleep(0.02)
        return False

    def _reclaim(self, proc: subprocess.Popen[bytes]) -> tuple[int, str]:
        """Spot's two-minute warning, compressed: SIGTERM, then the Spot status reason."""
        self.events["spot_interruption"] += 1
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.read()
        return (proc.returncode or 143), "Your Spot Task was interrupted."

    def _wait_attempt(self, proc: subprocess.Popen[bytes], interrupt: bool,
                      limit: float) -> tuple[int, str]:
        if self._notice_when_file(proc, limit):
            return self._reclaim(proc)
        if interrupt:
            with self.lock:
                notice = self.rng.uniform(0.05, 0.6)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=notice)
            return self._reclaim(proc)
        try:
            proc.communicate(timeout=limit)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            return 137, "Job attempt duration exceeded timeout"
        code = proc.returncode
        return code, "Essential container in task exited" if code else ""


def _chunk_tasks(chunk: dict[str, Any]) -> list[list[Any]]:
    """A map item's tasks: inline, or read from moto's S3 where its reference points."""
    if "tasks" in chunk or "key" not in chunk:
        return list(chunk.get("tasks", []))
    from moto.s3.models import s3_backends

    start, length = int(chunk["offset"]), int(chunk["length"])
    for backend in s3_backends[ACCOUNT].values():
        for candidate in backend.buckets.values():
            key = candidate.keys.get(chunk["key"])
            if key is not None:
                return list(json.loads(key.value[start:start + length])["tasks"])
    return []


def _exit_action(rules: list[dict[str, str]], reason: str, code: int) -> str:
    """AWS Batch's evaluateOnExit: the first matching rule decides; no match retries."""
    for rule in rules:
        checks = []
        if "onStatusReason" in rule:
            checks.append(fnmatch.fnmatchcase(reason, rule["onStatusReason"]))
        if "onReason" in rule:
            checks.append(fnmatch.fnmatchcase(reason, rule["onReason"]))
        if "onExitCode" in rule:
            checks.append(fnmatch.fnmatchcase(str(code), rule["onExitCode"]))
        if checks and all(checks):
            return rule["action"].lower()
    return "retry"


class _TooManyRequests(Exception):
    """Raised in moto's Lambda backend; turned into a 429 by the patched response."""


def _normalise_batch_parameters(service: Any, parameters: dict[str, Any],
                                boto_service_name: str | None = None,
                                service_action_name: str | None = None) -> None:
    """What moto's port leaves out: the ASL's PascalCase names to botocore's casing."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("batch")
    action = service.resource.api_action
    operation = next(op for op in model.operation_names if op.lower() == action.lower())
    _to_shape(parameters, model.operation_model(operation).input_shape)


def _normalise_batch_response(service: Any, response: Any,
                              boto_service_name: str | None = None,
                              service_action_name: str | None = None) -> None:
    """And the other way: botocore's camelCase response to the ASL's PascalCase, in place."""
    if isinstance(response, dict):
        for key in list(response):
            value = response.pop(key)
            _normalise_batch_response(service, value)
            response[key[:1].upper() + key[1:]] = value
    elif isinstance(response, list):
        for item in response:
            _normalise_batch_response(service, item)


def _to_shape(value: Any, shape: Any) -> Any:
    if shape is None:
        return value
    if shape.type_name == "structure" and isinstance(value, dict):
        members = {name.lower(): (name, member) for name, member in shape.members.items()}
        for key in list(value):
            if key.lower() in members:
                name, member = members[key.lower()]
                value[name] = _to_shape(value.pop(key), member)
        return value
    if shape.type_name == "list" and isinstance(value, list):
        return [_to_shape(v, shape.member) for v in value]
    return value


def _counting(app: Any, requests: collections.Counter[tuple[str, str, str]]) -> Any:
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _patched(target: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, original)


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
    ``scale``: apply DynamoDB's per-key and S3's per-prefix request limits divided by this
    factor (``throttling.py``), so a job ``scale`` times narrower meets the pressure of the
    wide one; the factor is published to clients and workers through the environment.
    """
    from moto.awslambda.models import LambdaBackend, LambdaFunction
    from moto.batch.exceptions import ClientException as BatchClientException
    from moto.batch.models import BatchBackend, Job
    from moto.core.exceptions import AWSError, JsonRESTError
    from moto.moto_api._internal.models import moto_api_backend
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from moto.stepfunctions.models import StepFunctionBackend
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_batch,
    )
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend
    from werkzeug.serving import make_server

    if not _active.acquire(blocking=False):
        raise RuntimeError("an emulated AWS is already running in this process")
    root = Path(template).resolve().parent if template else project_root()
    faults = Faults(throttle_rate, crash_rate, spot_interruption_rate,
                    frozenset(lambda_timeout_tasks), lambda_timeout_seconds, seed,
                    lambda_concurrency, str(spot_interrupt_on) if spot_interrupt_on else None)
    port = _free_port()
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
    bridge = _Bridge(root, faults, child_env, events)

    class TooManyRequests(JsonRESTError):
        code = 429

        def __init__(self) -> None:
            super().__init__("TooManyRequestsException", "Rate exceeded (emulated throttle)")

    class TooLarge(JsonRESTError):
        code = 413

        def __init__(self, message: str) -> None:
            super().__init__("RequestTooLargeException", message)

    original_invoke = LambdaBackend.invoke
    original_stop = StepFunctionBackend.stop_execution
    original_create = StepFunctionsParserBackend.create_state_machine
    original_start = StepFunctionsParserBackend.start_execution
    original_register = BatchBackend.register_job_definition

    def create_state_machine(self: Any, name: str, definition: str, *args: Any,
                             **kwargs: Any) -> Any:
        try:
            limits.check_definition(definition)
        except limits.LimitExceeded as exc:
            raise AWSError(f"Invalid State Machine Definition: '{exc}'",
                           "InvalidDefinition") from None
        # AWS's schema wants an integer percentage; moto 5.2's parser only takes a float.
        definition = re.sub(r'("ToleratedFailurePercentage"\s*:\s*)(\d+)(\s*[,}])',
                            r"\1\2.0\3", definition)
        return original_create(self, name, definition, *args, **kwargs)

    def start_execution(self: Any, state_machine_arn: str, name: Any = None,
                        execution_input: Any = None, *args: Any, **kwargs: Any) -> Any:
        try:
            limits.check_state_io(execution_input or "", "the execution input")
        except limits.LimitExceeded as exc:
            raise AWSError(str(exc), "InvalidExecutionInput") from None
        return original_start(self, state_machine_arn, name, execution_input, *args, **kwargs)

    def register_job_definition(self: Any, *args: Any, **kwargs: Any) -> Any:
        container = kwargs.get("container_properties") or {}
        if "FARGATE" in (kwargs.get("platform_capabilities") or []):
            need = {r["type"]: str(r["value"]) for r in container.get(
                "resourceRequirements", [])}
            try:
                limits.check_fargate(need.get("VCPU", ""), need.get("MEMORY", ""))
            except limits.LimitExceeded as exc:
                raise BatchClientException(str(exc)) from None
        return original_register(self, *args, **kwargs)

    def stop_execution(self: Any, execution_arn: str) -> Any:
        """Real AWS aborts at once; moto waits for running states, so end their workers."""
        execution = original_stop(self, execution_arn)
        with contextlib.suppress(Exception):
            bridge.kill(json.loads(execution.execution_input).get("job_id"))
        return execution

    def invoke(self: Any, function_name: str, qualifier: str | None, body: Any, headers: Any,
               response_headers: Any) -> Any:
        asynchronous = (headers or {}).get("x-amz-invocation-type") == "Event"
        try:
            limits.check_lambda_payload(body or b"", asynchronous)
        except limits.LimitExceeded as exc:
            raise TooLarge(str(exc)) from None
        try:
            bridge.throttle()
            if tracker is not None:
                name = function_name.split(":function:")[-1].split(":")[0]
                try:
                    tracker.lambda_start(name, warm=bool(bridge.idle.get(name)))
                except Throttled:
                    raise _TooManyRequests() from None
            with bridge.concurrency():
                return original_invoke(self, function_name, qualifier, body, headers,
                                       response_headers)
        except _TooManyRequests:
            raise TooManyRequests() from None

    class QuietHandler(MotoRequestHandler):
        def log_request(self, *args: Any, **kwargs: Any) -> None:
            pass

    stop_reporting = threading.Event()
    tracker = LimitTracker(scale, _describe_table) if scale else None
    app = _counting(throttled(DomainDispatcherApplication(create_backend_app), tracker),
                    requests)
    server = make_server("127.0.0.1", port, app, True, request_handler=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="fanout-emulated-aws",
                              daemon=True)
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(_patched(LambdaFunction, "_invoke_lambda",
                                         lambda fn, event=None: bridge.invoke_lambda(fn, event)))
            stack.enter_context(_patched(LambdaBackend, "invoke", invoke))
            stack.enter_context(_patched(Job, "run", lambda job: bridge.run_batch_job(job)))
            stack.enter_context(_patched(StepFunctionBackend, "stop_execution", stop_execution))
            stack.enter_context(_patched(StepFunctionsParserBackend, "create_state_machine",
                                         create_state_machine))
            stack.enter_context(_patched(StepFunctionsParserBackend, "start_execution",
                                         start_execution))
            stack.enter_context(_patched(BatchBackend, "register_job_definition",
                                         register_job_definition))
            for module in _client_modules():
                stack.enter_context(_patched(module, "boto_client_for",
                                             _retrying_client(module.boto_client_for)))
            parser_log = logging.getLogger("moto.stepfunctions.parser")
            stack.enter_context(_patched(parser_log, "level", logging.CRITICAL))
            batch_service = state_task_service_batch.StateTaskServiceBatch
            stack.enter_context(_patched(batch_service, "_normalise_parameters",
                                         _normalise_batch_parameters))
            stack.enter_context(_patched(batch_service, "_normalise_response",
                                         _normalise_batch_response))
            from moto.stepfunctions.parser.asl.utils import json_path

            parse = json_path.parse  # type: ignore[attr-defined]
            stack.enter_context(_patched(json_path, "parse", _memo_parse(parse)))
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
                reporter = threading.Thread(target=_report_progress, daemon=True,
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


def _report_progress(events: collections.Counter[str], every: float,
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


def _client_modules() -> list[Any]:
    """moto's interpreter modules that build AWS clients with ``boto_client_for``."""
    import importlib
    import pkgutil

    import moto.stepfunctions.parser.asl.component as package

    found = []
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if info.name.split(".")[-1].startswith(("resource_eval", "lambda_eval",
                                                "state_task_service")):
            module = importlib.import_module(info.name)
            if hasattr(module, "boto_client_for"):
                found.append(module)
    return found


def _retrying_client(make: Any) -> Any:
    """The interpreter's clients retry a dropped connection as the AWS SDK does.

    moto builds them with retries off, so a connection the loaded local server closed
    before answering failed the state as ``States.Runtime``. The SDK retries such transient
    connection errors (up to 3 attempts in its standard mode, with backoff); throttling and
    service errors are left alone, so they reach the definition's own Retry as on AWS.
    """
    from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

    transient = (ConnectionClosedError, EndpointConnectionError, ConnectionError)

    def needs_retry(attempts: int, caught_exception: Exception | None = None,
                    **kwargs: Any) -> float | None:
        if isinstance(caught_exception, transient) and attempts < 3:
            return 0.05 * 2.0 ** attempts
        return None

    def boto_client_for(region: str, service: str, state_credentials: Any = None) -> Any:
        client = make(region, service, state_credentials)
        client.meta.events.register("needs-retry", needs_retry)
        return client

    return boto_client_for


def _memo_parse(parse: Any) -> Any:
    """jsonpath_ng rebuilds its parser on every call: ~90% of moto's per-item time."""

    @functools.lru_cache(maxsize=4096)
    def cached(path: str) -> Any:
        return parse(path)

    return cached


__all__ = ["EmulatedAws", "Faults", "create_stack", "emulated_aws"]
