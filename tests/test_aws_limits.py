"""The emulation refuses what AWS refuses (fanout.testing.limits), and fanout stays inside.

Each check below sends the emulated AWS a request the published limit forbids and expects
AWS's answer; the limits' sources are cited in fanout/testing/limits.py. The module's
emulation has a Lambda concurrency quota of 2 and a 7-day ResultRetentionDays, so a job here
also shows throttled chunks being retried (never lost) and the retention reaching every
record.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

import fanout
from fanout.protocol import SUCCEEDED
from fanout.testing import EmulatedAws, emulated_aws, limits

from conftest import eventually, unique

DEFINITION = Path(__file__).resolve().parent.parent / "statemachine" / "fanout.asl.json"
RETENTION_DAYS = 7


@pytest.fixture(scope="module")
def aws(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatedAws]:
    with pytest.MonkeyPatch.context() as patch, emulated_aws(
            lambda_concurrency=2,
            parameters={"ResultRetentionDays": RETENTION_DAYS}) as emulation:
        patch.setenv("FANOUT_HOME", str(tmp_path_factory.mktemp("aws-limits-home")))
        yield emulation


def role_arn(aws: EmulatedAws) -> str:
    trust = {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action":
             "sts:AssumeRole", "Principal": {"Service": "states.amazonaws.com"}}]}
    return str(aws.client("iam").create_role(RoleName=unique("limits"),
                                             AssumeRolePolicyDocument=json.dumps(trust)
                                             )["Role"]["Arn"])


def error_code(exc: pytest.ExceptionInfo[ClientError]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_a_duplicated_state_name_is_refused(aws: EmulatedAws) -> None:
    definition = json.loads(DEFINITION.read_text())
    sfn, role = aws.client("stepfunctions"), role_arn(aws)
    branches = definition["States"]["RunChunks"]["Branches"]
    batch_states = branches[1]["States"]["BatchChunks"]["ItemProcessor"]["States"]
    batch_states["RunOnLambda"] = {"Type": "Pass", "End": True}  # also in the Lambda branch
    with pytest.raises(ClientError) as refused:
        sfn.create_state_machine(name="duplicated", definition=json.dumps(definition),
                                 roleArn=role)
    assert error_code(refused) == "InvalidDefinition"
    assert "DUPLICATE_STATE_NAME" in str(refused.value) and "RunOnLambda" in str(refused.value)
    del batch_states["RunOnLambda"]
    sfn.create_state_machine(name="unique", definition=json.dumps(definition), roleArn=role)


def test_an_execution_input_over_256_kib_is_refused(aws: EmulatedAws) -> None:
    sfn = aws.client("stepfunctions")
    arn = aws.outputs["StateMachineArn"]
    with pytest.raises(ClientError) as refused:
        sfn.start_execution(stateMachineArn=arn, name=uuid.uuid4().hex,
                            input=json.dumps({"pad": "x" * limits.STATE_IO_MAX_BYTES}))
    assert error_code(refused) == "InvalidExecutionInput"
    # moto itself holds a state's input and output to the same 256 KiB
    from moto.stepfunctions.parser import quotas

    assert quotas.MAX_STATE_SIZE_UTF8_BYTES == limits.STATE_IO_MAX_BYTES


def wait_for_batch_job(aws: EmulatedAws, job_id: str) -> dict[str, Any]:
    batch = aws.client("batch")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        [job] = batch.describe_jobs(jobs=[job_id])["jobs"]
        if job["status"] in ("SUCCEEDED", "FAILED"):
            return dict(job)
        time.sleep(0.1)
    raise AssertionError(f"Batch job {job_id} did not end within 120 s")


def test_batch_container_overrides_over_8192_characters_fail_the_job(aws: EmulatedAws) -> None:
    batch = aws.client("batch")
    definition = aws.outputs["JobDefinitionArn"]
    overrides = {"environment": [{"name": "FANOUT_CHUNK", "value": "x" * 8200}]}
    assert limits.overrides_length(overrides) > limits.ECS_OVERRIDES_MAX_CHARS
    job = batch.submit_job(jobName="too-long", jobQueue=aws.outputs["JobQueueArn"],
                           jobDefinition=definition, containerOverrides=overrides)
    ended = wait_for_batch_job(aws, job["jobId"])
    assert ended["status"] == "FAILED"
    assert "Container Overrides length must be at most 8192" in ended["statusReason"]
    assert aws.events["overrides_too_long"] >= 1


def test_fargate_takes_only_its_vcpu_memory_combinations(aws: EmulatedAws) -> None:
    batch = aws.client("batch")

    def register(vcpu: str, memory: str) -> Any:
        return batch.register_job_definition(
            jobDefinitionName=f"fargate-{uuid.uuid4().hex[:6]}", type="container",
            platformCapabilities=["FARGATE"], containerProperties={
                "image": "x", "command": ["true"],
                "resourceRequirements": [{"type": "VCPU", "value": vcpu},
                                         {"type": "MEMORY", "value": memory}]})

    for vcpu, memory in (("1", "512"), ("4", "4096"), ("3", "8192"), ("16", "32000")):
        with pytest.raises(ClientError) as refused:
            register(vcpu, memory)
        assert error_code(refused) == "ClientException"
    for vcpu, memory in (("0.25", "512"), ("1", "2048"), ("4", "30720"), ("16", "122880")):
        register(vcpu, memory)


def test_lambda_payloads_over_the_invoke_limits_are_refused(aws: EmulatedAws) -> None:
    lam = aws.client("lambda")
    worker = aws.outputs["WorkerFunctionArn"]
    big = json.dumps({"pad": "x" * limits.LAMBDA_SYNC_PAYLOAD_MAX_BYTES}).encode()
    with pytest.raises(ClientError) as refused:
        lam.invoke(FunctionName=worker, Payload=big)
    assert error_code(refused) == "RequestTooLargeException"
    medium = json.dumps({"pad": "x" * limits.LAMBDA_ASYNC_PAYLOAD_MAX_BYTES}).encode()
    with pytest.raises(ClientError) as refused:
        lam.invoke(FunctionName=worker, Payload=medium, InvocationType="Event")
    assert error_code(refused) == "RequestTooLargeException"


def test_a_dynamodb_item_over_400_kb_is_refused(aws: EmulatedAws) -> None:
    dynamodb = aws.client("dynamodb")
    with pytest.raises(ClientError) as refused:
        dynamodb.put_item(TableName=aws.outputs["ResultsTableName"], Item={
            "job_id": {"S": "big"}, "item": {"S": "x"},
            "pad": {"S": "x" * limits.DYNAMODB_ITEM_MAX_BYTES}})
    assert error_code(refused) == "ValidationException"


def test_a_dynamodb_parameter_outside_its_enum_is_refused(aws: EmulatedAws) -> None:
    """moto ignores a value the API model does not allow; DynamoDB refuses the request
    (fanout/testing/validation.py). fanout's page writes ask for ALL_OLD."""
    dynamodb = aws.client("dynamodb")
    table = aws.outputs["ResultsTableName"]
    key = {"job_id": {"S": "enum"}, "item": {"S": "x"}}
    dynamodb.put_item(TableName=table, Item={**key, "n": {"N": "1"}})
    for value in ("all_old", "OLD"):
        with pytest.raises(ClientError) as refused:
            dynamodb.update_item(TableName=table, Key=key, UpdateExpression="SET n = :n",
                                 ConditionExpression="n = :old",
                                 ExpressionAttributeValues={":n": {"N": "2"}, ":old": {"N": "0"}},
                                 ReturnValuesOnConditionCheckFailure=value)
        assert error_code(refused) == "ValidationException"
        assert "ALL_OLD, NONE" in str(refused.value)
    with pytest.raises(ClientError) as lost:
        dynamodb.update_item(TableName=table, Key=key, UpdateExpression="SET n = :n",
                             ConditionExpression="n = :old",
                             ExpressionAttributeValues={":n": {"N": "2"}, ":old": {"N": "0"}},
                             ReturnValuesOnConditionCheckFailure="ALL_OLD")
    assert error_code(lost) == "ConditionalCheckFailedException"
    assert lost.value.response["Item"]["n"] == {"N": "1"}  # what the page writes read back


def slow_square(x: int) -> int:
    time.sleep(0.3)
    return x * x


def test_throttled_chunks_are_retried_not_lost_and_records_follow_the_retention(
        aws: EmulatedAws) -> None:
    # 12 chunks and MaxConcurrency 8 against a quota of 2: Lambda throttles most starts.
    with fanout.Executor(backend="aws", progress=False, chunksize=1,
                         **aws.backend_options) as ex:
        results = ex.map(slow_square, range(12))
        assert list(results) == [x * x for x in range(12)]
    assert aws.events["lambda_quota_throttle"] > 0
    job = fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options)
    assert {r.status for r in job.records()} == {SUCCEEDED}
    eventually(lambda: job.info.state == "finished", timeout=60, what="the job to finalize")
    # ResultRetentionDays=7 reached the client (job record) and the workers (task records).
    # The job record under the job's key; result pages under its shard keys (one shard
    # for a job this narrow).
    items = [item for key in (results.job_id, f"{results.job_id}#00")
             for item in aws.client("dynamodb").query(
                 TableName=aws.outputs["ResultsTableName"],
                 KeyConditionExpression="job_id = :j",
                 ExpressionAttributeValues={":j": {"S": key}})["Items"]]
    assert {i["item"]["S"].split("#")[0] for i in items} == {"job", "p"}
    for item in items:
        days = (float(item["expires"]["N"]) - time.time()) / 86400
        assert RETENTION_DAYS - 0.1 < days <= RETENTION_DAYS, item["item"]
