"""Where the deployed stack is: backend options, then environment, then ``fanout configure``.

``fanout configure --stack NAME`` reads the stack's Outputs once and writes them to
``$FANOUT_HOME/aws.json``; after that ``Executor(backend="aws")`` needs nothing else.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigurationError
from ...home import default_home
from .layout import Layout

#: The template's ResultRetentionDays default; the stack's value arrives through
#: ``fanout configure`` (client) and FANOUT_RESULT_RETENTION_DAYS (workers).
RECORD_TTL_DAYS = 90

#: Stack Outputs that ``fanout configure`` reads, and the config field each one fills.
OUTPUTS = {
    "PayloadBucketName": "bucket",
    "ResultsTableName": "table",
    "StateMachineArn": "state_machine_arn",
    "JobQueueArn": "job_queue_arn",
    "PythonRuntime": "python_runtime",
    "ScheduleGroupName": "schedule_group",
    "SchedulerRoleArn": "scheduler_role_arn",
    "ScheduleDeadLetterQueueArn": "schedule_dlq_arn",
    "ResultRetentionDays": "retention_days",
    "MaxConcurrency": "max_concurrency",
    "WorkerFunctionArn": "worker_function_arn",
}
ENVIRONMENT = {
    "bucket": "FANOUT_AWS_BUCKET",
    "table": "FANOUT_AWS_TABLE",
    "state_machine_arn": "FANOUT_AWS_STATE_MACHINE",
    "job_queue_arn": "FANOUT_AWS_JOB_QUEUE",
    "schedule_group": "FANOUT_AWS_SCHEDULE_GROUP",
    "scheduler_role_arn": "FANOUT_AWS_SCHEDULER_ROLE",
    "schedule_dlq_arn": "FANOUT_AWS_SCHEDULE_DLQ",
    "retention_days": "FANOUT_AWS_RESULT_RETENTION_DAYS",
    "max_concurrency": "FANOUT_AWS_MAX_CONCURRENCY",
    "worker_function_arn": "FANOUT_AWS_WORKER_FUNCTION",
}


@dataclass(frozen=True)
class AwsConfig:
    """Names of the deployed stack's resources (``fanout configure --stack NAME``)."""

    bucket: str
    table: str
    state_machine_arn: str
    job_queue_arn: str = ""
    schedule_group: str = ""
    scheduler_role_arn: str = ""
    schedule_dlq_arn: str = ""
    region: str | None = None
    endpoint_url: str | None = None
    retention_days: int = RECORD_TTL_DAYS
    worker_function_arn: str = ""
    max_concurrency: int | None = None
    #: The record layout of jobs this client submits (None: planned per job by
    #: ``layout.plan_layout``), and of records written without a job bundle.
    layout: Layout | None = None
    #: Start the Lambda map narrow and raise its MaxConcurrency at Lambda's scaling rate
    #: (``ramp.py``). False: start at the full width, as before the ramp (Lambda throttles
    #: what it cannot scale to; kept as a switch for the scale test and the model).
    concurrency_ramp: bool = True


def config_path(home: str | os.PathLike[str] | None = None) -> Path:
    return Path(home).expanduser() if home else default_home()


def load_config(options: dict[str, Any], home: str | None = None) -> tuple[AwsConfig, str | None]:
    """The stack's resource names, and the stack's Python runtime if known."""
    saved: dict[str, Any] = {}
    path = config_path(home) / "aws.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"{path} is not readable JSON ({exc}); run "
                                     "`fanout configure --stack NAME` again") from exc
    values: dict[str, Any] = {}
    for field, env in ENVIRONMENT.items():
        values[field] = options.get(field) or os.environ.get(env) or saved.get(field)
    missing = [f for f in ("bucket", "table", "state_machine_arn") if not values[f]]
    if missing:
        raise ConfigurationError(
            "the aws backend is not configured: missing "
            + ", ".join(f"{m} (${ENVIRONMENT[m]})" for m in missing)
            + f". Deploy the stack (`sam build && sam deploy --guided`), then run `fanout "
            f"configure --stack NAME` (writes {path}), or pass them as Executor options."
        )
    region = options.get("region") or os.environ.get("AWS_REGION") or saved.get("region") \
        or os.environ.get("AWS_DEFAULT_REGION")
    config = AwsConfig(bucket=values["bucket"], table=values["table"],
                       state_machine_arn=values["state_machine_arn"],
                       job_queue_arn=values["job_queue_arn"] or "",
                       schedule_group=values["schedule_group"] or "",
                       scheduler_role_arn=values["scheduler_role_arn"] or "",
                       schedule_dlq_arn=values["schedule_dlq_arn"] or "", region=region,
                       endpoint_url=options.get("endpoint_url"),
                       retention_days=_positive(values, "retention_days", RECORD_TTL_DAYS),
                       max_concurrency=_positive(values, "max_concurrency", None),
                       worker_function_arn=values["worker_function_arn"] or "",
                       concurrency_ramp=_ramp_switch(options))
    return config, options.get("python_runtime") or saved.get("python_runtime")


#: Set to 0 to start every job's Lambda map at its full width (no ramp; ``ramp.py``).
RAMP_ENVIRONMENT = "FANOUT_AWS_CONCURRENCY_RAMP"


def _ramp_switch(options: dict[str, Any]) -> bool:
    """The ``concurrency_ramp`` option, else $FANOUT_AWS_CONCURRENCY_RAMP, else on."""
    raw = options.get("concurrency_ramp")
    if raw is None:
        raw = os.environ.get(RAMP_ENVIRONMENT, "1")
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"concurrency_ramp must be true or false (1/0), got {raw!r} "
                             f"(from the options or ${RAMP_ENVIRONMENT})")


def _positive(values: dict[str, Any], field: str, default: int | None) -> Any:
    raw = values.get(field)
    if raw in (None, ""):
        return default
    try:
        number = int(raw)
    except (TypeError, ValueError):
        number = 0
    if number <= 0:
        raise ConfigurationError(f"{field} must be a positive integer, got {raw!r} (from the "
                                 f"options, ${ENVIRONMENT[field]} or `fanout configure`)")
    return number


def configure_from_stack(stack: str, region: str | None = None,
                         home: str | None = None) -> Path:
    """Read ``stack``'s Outputs (CloudFormation) and save them for the aws backend."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        cloudformation = boto3.session.Session(region_name=region).client("cloudformation")
        stacks = cloudformation.describe_stacks(StackName=stack)["Stacks"]
    except ClientError as exc:
        raise ConfigurationError(f"cannot read stack {stack!r}: "
                                 f"{exc.response['Error']['Message']}") from exc
    except BotoCoreError as exc:
        raise ConfigurationError(f"cannot reach CloudFormation: {exc}") from exc
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stacks[0].get("Outputs", [])}
    # older stacks lack these: the defaults, and no build check
    optional = ("ResultRetentionDays", "MaxConcurrency", "WorkerFunctionArn")
    absent = [key for key in OUTPUTS if key not in outputs and key not in optional]
    if absent:
        raise ConfigurationError(
            f"stack {stack!r} has no output(s) {', '.join(absent)}: is it a fanout stack "
            "deployed from this version's template.yaml?")
    saved = {field: outputs[key] for key, field in OUTPUTS.items() if key in outputs}
    saved["stack"] = stack
    saved["region"] = region or cloudformation.meta.region_name
    path = config_path(home) / "aws.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(saved, indent=2) + "\n")
    return path
