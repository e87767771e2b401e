"""What a test holds while the emulation runs: where it is, and what happened in it."""

from __future__ import annotations

import collections
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from .faults import Faults

REGION = "us-east-1"
ACCOUNT = "123456789012"


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
