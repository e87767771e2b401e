"""Schedules on AWS: EventBridge Scheduler starts the state machine with a schedule's input.

A schedule's definition (function, items, reducer) is a bundle in S3 outside the expiring
prefix; the schedule itself lives in the stack's schedule group; each firing's plan step
(``handlers.plan``) turns it into an ordinary job and records the run.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from botocore.exceptions import ClientError

from ...errors import ConfigurationError, ScheduleExists, ScheduleNotFound
from ...schedules import ScheduleRequest, ScheduleSpec, next_fire, request_json
from .config import AwsConfig
from .store import AwsStore


class AwsSchedules:
    """The aws backend's schedule methods; ``check_stack`` runs before one is created."""

    def __init__(self, config: AwsConfig, store: AwsStore,
                 check_stack: Callable[[], None]) -> None:
        self.config = config
        self.store = store
        self.check_stack = check_stack

    def _scheduler(self) -> Any:
        if not (self.config.schedule_group and self.config.scheduler_role_arn):
            raise ConfigurationError(
                "this stack's schedule group and scheduler role are unknown: redeploy the "
                "current template.yaml and run `fanout configure --stack NAME` again")
        kwargs = {"endpoint_url": self.config.endpoint_url} if self.config.endpoint_url else {}
        return self.store.session.client("scheduler", **kwargs)

    def put_schedule(self, request: ScheduleRequest) -> ScheduleSpec:
        self.check_stack()
        scheduler = self._scheduler()
        spec = request.spec
        key = self.store.put_schedule_bundle(spec.name, {
            "spec": request_json(spec), "function": request.function,
            "items": request.items, "reducer": request.reducer})
        target: dict[str, Any] = {
            "Arn": self.config.state_machine_arn, "RoleArn": self.config.scheduler_role_arn,
            "Input": json.dumps({"schedule": spec.name, "bucket": self.config.bucket,
                                 "schedule_key": key}),
            "RetryPolicy": {"MaximumRetryAttempts": 5, "MaximumEventAgeInSeconds": 3600}}
        if self.config.schedule_dlq_arn:
            target["DeadLetterConfig"] = {"Arn": self.config.schedule_dlq_arn}
        try:
            scheduler.create_schedule(
                Name=spec.name, GroupName=self.config.schedule_group,
                ScheduleExpression=spec.expression,
                ScheduleExpressionTimezone=spec.timezone,
                FlexibleTimeWindow={"Mode": "OFF"},
                State="ENABLED" if spec.enabled else "DISABLED", Target=target,
                Description=f"fanout: {spec.function} over {spec.items_detail}")
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ConflictException":
                raise ScheduleExists(f"a schedule named {spec.name!r} exists already; remove it "
                                     f"first (`fanout --backend aws schedule remove {spec.name}`)"
                                     ) from exc
            raise
        return self.get_schedule(spec.name)

    def _remote_schedule(self, name: str) -> dict[str, Any]:
        try:
            remote: dict[str, Any] = self._scheduler().get_schedule(
                Name=name, GroupName=self.config.schedule_group)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ResourceNotFoundException":
                raise self._no_schedule(name) from None
            raise
        return remote

    def _no_schedule(self, name: str) -> ScheduleNotFound:
        return ScheduleNotFound(f"no schedule {name!r} in the schedule group "
                                f"{self.config.schedule_group!r}; `fanout --backend aws "
                                "schedule list` lists them")

    def get_schedule(self, name: str) -> ScheduleSpec:
        remote = self._remote_schedule(name)
        data = json.loads(self.store.schedule_bundle(name)["spec"])
        data["enabled"] = remote.get("State") == "ENABLED"
        upcoming = next_fire(data["expression"], data["timezone"], datetime.now(UTC))
        data["next_fire"] = upcoming.timestamp()
        return ScheduleSpec.from_json(data)

    def list_schedules(self) -> list[ScheduleSpec]:
        if not (self.config.schedule_group and self.config.scheduler_role_arn):
            return []
        scheduler = self._scheduler()
        names = []
        for page in scheduler.get_paginator("list_schedules").paginate(
                GroupName=self.config.schedule_group):
            names += [item["Name"] for item in page.get("Schedules", [])]
        return [self.get_schedule(name) for name in sorted(names)]

    def set_schedule_enabled(self, name: str, enabled: bool) -> ScheduleSpec:
        scheduler = self._scheduler()
        remote = self._remote_schedule(name)
        keep = ("ScheduleExpression", "ScheduleExpressionTimezone", "FlexibleTimeWindow",
                "Target", "Description")
        scheduler.update_schedule(Name=name, GroupName=self.config.schedule_group,
                                  State="ENABLED" if enabled else "DISABLED",
                                  **{k: remote[k] for k in keep if k in remote})
        return self.get_schedule(name)

    def delete_schedule(self, name: str) -> None:
        try:
            self._scheduler().delete_schedule(Name=name, GroupName=self.config.schedule_group)
        except ClientError as exc:
            if exc.response["Error"]["Code"] == "ResourceNotFoundException":
                raise self._no_schedule(name) from None
            raise
