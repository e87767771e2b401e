"""template.yaml and statemachine/fanout.asl.json, checked offline (no AWS, no network).

cfn-lint on the SAM template; the SAM transform run locally; the ASL definition against the
States Language schema (cfn-lint rule E3601 on a plain AWS::StepFunctions::StateMachine) and
against dangling state names, which no schema catches; the security properties; and the
contract that fanout.testing (which parses this template) and `fanout configure` (which reads
the stack outputs) rely on. Checkers written here are also run on broken inputs, to show that
they can fail.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import pytest

# Untyped third-party modules: importorskip gives them to mypy as Any. They come with the
# AWS tooling (cfn-lint pulls in aws-sam-translator); without it these checks are skipped.
cfn_yaml = pytest.importorskip("cfnlint.decode.cfn_yaml")
sam_transform = pytest.importorskip("samtranslator.translator.transform")

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "template.yaml"
DEFINITION = ROOT / "statemachine" / "fanout.asl.json"
MAKEFILE = ROOT / "Makefile"
DOCKERFILE = ROOT / "Dockerfile"
CFN_LINT = Path(sys.executable).parent / "cfn-lint"

REGION = "us-east-1"
ACCOUNT = "123456789012"

SUBSTITUTIONS = {
    "WorkerFunctionArn": {"Fn::GetAtt": ["WorkerFunction", "Arn"]},
    "FinalizeFunctionArn": {"Fn::GetAtt": ["FinalizeFunction", "Arn"]},
    "JobQueueArn": {"Ref": "JobQueue"},
    "JobDefinitionArn": {"Ref": "WorkerJobDefinition"},
    "PlanFunctionArn": {"Fn::GetAtt": ["PlanFunction", "Arn"]},
}
PLAUSIBLE_ARNS = {
    "WorkerFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fanout-WorkerFunction-1A2B",
    "FinalizeFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fanout-FinalizeFn-4D5E",
    "JobQueueArn": f"arn:aws:batch:{REGION}:{ACCOUNT}:job-queue/JobQueue-6F7G8H",
    "JobDefinitionArn": f"arn:aws:batch:{REGION}:{ACCOUNT}:job-definition/WorkerJobDef-9I:1",
    "PlanFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fanout-PlanFunction-3C4D",
}
OUTPUTS = {
    "PayloadBucketName": {"Ref": "PayloadBucket"},
    "ResultsTableName": {"Ref": "ResultsTable"},
    "StateMachineArn": {"Ref": "JobStateMachine"},
    "JobQueueArn": {"Ref": "JobQueue"},
    "JobDefinitionArn": {"Ref": "WorkerJobDefinition"},
    "PythonRuntime": {"Ref": "PythonRuntime"},
}
# What store_from_env() and Powertools read in a worker, and where each must come from.
WORKER_ENVIRONMENT = {
    "FANOUT_BUCKET": {"Ref": "PayloadBucket"}, "FANOUT_TABLE": {"Ref": "ResultsTable"},
    "FANOUT_RESULT_RETENTION_DAYS": {"Ref": "ResultRetentionDays"},
    "POWERTOOLS_SERVICE_NAME": "fanout", "POWERTOOLS_METRICS_NAMESPACE": "fanout",
    "POWERTOOLS_LOG_LEVEL": "INFO"}
# cfn-lint findings allowed on the SAM transform's output, each with its reason (none today:
# a finding here must be fixed or named with why it is acceptable).
ALLOWED_SAM_OUTPUT_FINDINGS: dict[str, str] = {}
# The only actions granted inline on Resource "*": they support no resource-level
# permissions (Batch DescribeJobs, Scheduler ListSchedules, CloudWatch Logs delivery for
# Step Functions; the Service Authorization Reference lists no resource type for them). X-Ray comes
# as the AWS managed policy SAM attaches when tracing is on.
WILDCARD_RESOURCE_ACTIONS = {
    "batch:DescribeJobs", "scheduler:ListSchedules",
    "logs:CreateLogDelivery", "logs:GetLogDelivery", "logs:UpdateLogDelivery",
    "logs:DeleteLogDelivery", "logs:ListLogDeliveries", "logs:PutResourcePolicy",
    "logs:DescribeResourcePolicies", "logs:DescribeLogGroups",
}
ALLOWED_MANAGED_POLICIES = {
    "AWSLambdaBasicExecutionRole", "AWSXrayWriteOnlyAccess", "AWSXRayDaemonWriteAccess",
    "AmazonECSTaskExecutionRolePolicy",
    # API Gateway's account-level role for access logs (ManageApiGatewayLoggingRole)
    "AmazonAPIGatewayPushToCloudWatchLogs",
}


# ------------------------------------------------------------------------------- helpers

def load_template() -> dict[str, Any]:
    """template.yaml with intrinsic tags as their JSON forms (!Ref x -> {"Ref": "x"}), as
    plain dicts, lists and strings."""
    loaded: dict[str, Any] = json.loads(json.dumps(cfn_yaml.load(str(TEMPLATE))))
    return loaded


def resources_of(template: dict[str, Any], type_: str) -> dict[str, dict[str, Any]]:
    return {rid: res for rid, res in template["Resources"].items() if res["Type"] == type_}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def run_cfn_lint(path: Path) -> list[dict[str, Any]]:
    """cfn-lint's findings for one template; fails if cfn-lint itself breaks."""
    assert CFN_LINT.exists(), f"cfn-lint not found next to {sys.executable}"
    proc = subprocess.run([str(CFN_LINT), "--format", "json", str(path)], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    # Exit status: a bit set per level found (2 error, 4 warning, 8 info); 1 = cfn-lint failed.
    assert proc.returncode & ~0b1110 == 0, f"cfn-lint failed ({proc.returncode}): {proc.stderr}"
    findings: list[dict[str, Any]] = json.loads(proc.stdout or "[]")
    assert isinstance(findings, list), proc.stdout
    return findings


def describe(finding: dict[str, Any]) -> str:
    where = "/".join(str(p) for p in finding["Location"]["Path"])
    line = finding["Location"]["Start"]["LineNumber"]
    return f"{finding['Rule']['Id']} line {line} {where}: {finding['Message']}"


def substituted_definition(text: str) -> str:
    """The definition file as it is deployed: every ${Name} replaced by an ARN."""
    return re.sub(r"\$\{([^}]*)\}", lambda m: PLAUSIBLE_ARNS[m.group(1)], text)


class NoManagedPolicyLookups:
    """Stands in for samtranslator's ManagedPolicyLoader, which would call IAM."""

    def load(self) -> dict[str, str]:
        return {}


def sam_translate(template: dict[str, Any]) -> dict[str, Any]:
    """Run the SAM transform offline: local code and definition replaced by S3/inline values."""
    sam = copy.deepcopy(template)
    for res in resources_of(sam, "AWS::Serverless::Function").values():
        res["Properties"]["CodeUri"] = "s3://bucket/code.zip"
    for res in resources_of(sam, "AWS::Serverless::StateMachine").values():
        props = res["Properties"]
        props["Definition"] = json.loads((ROOT / props.pop("DefinitionUri")).read_text())
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_DEFAULT_REGION", REGION)
        mp.delenv("AWS_PROFILE", raising=False)
        out: dict[str, Any] = sam_transform.transform(sam, {}, NoManagedPolicyLookups())
    return out


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    return load_template()


@pytest.fixture(scope="module")
def translated(template: dict[str, Any]) -> dict[str, Any]:
    return sam_translate(template)


# ------------------------------------------------------------------- 1. cfn-lint, template

def test_cfn_lint_reports_nothing() -> None:
    # Errors, warnings and informational findings alike: none is allowed on template.yaml.
    assert [describe(f) for f in run_cfn_lint(TEMPLATE)] == []


def test_cfn_lint_reports_no_errors_in_the_sam_output(translated: dict[str, Any],
                                                      tmp_path: Path) -> None:
    # cfn-lint 1.x checks SAM resources against SAM's own schema without transforming them;
    # linting the transform's output checks the Lambda functions and roles SAM generates.
    output = tmp_path / "translated.json"
    output.write_text(json.dumps(translated, indent=1))
    findings = run_cfn_lint(output)
    assert [describe(f) for f in findings
            if f["Rule"]["Id"] not in ALLOWED_SAM_OUTPUT_FINDINGS] == []


# ------------------------------------------------------------------- 2. SAM transform

def test_sam_transform_succeeds_offline(translated: dict[str, Any]) -> None:
    assert "Transform" not in translated
    types = [res["Type"] for res in translated["Resources"].values()]
    assert not [t for t in types if t.startswith("AWS::Serverless::")]

    functions = resources_of(translated, "AWS::Lambda::Function")
    assert sorted(functions) == ["ApiFunction", "FinalizeFunction", "PlanFunction",
                                 "WorkerFunction"]
    for rid, handler in [("WorkerFunction", "functions/worker/app.handler"),
                         ("FinalizeFunction", "functions/finalize/app.handler"),
                         ("ApiFunction", "functions/api/app.app"),
                         ("PlanFunction", "functions/plan/app.handler")]:
        props = functions[rid]["Properties"]
        assert props["Handler"] == handler
        assert props["Runtime"] == {"Ref": "PythonRuntime"}
        assert props["TracingConfig"] == {"Mode": "Active"}
        assert props["Code"] == {"S3Bucket": "bucket", "S3Key": "code.zip"}
        variables = props["Environment"]["Variables"]
        table = variables.get("FANOUT_TABLE") or variables.get("FANOUT_AWS_TABLE")
        assert table == {"Ref": "ResultsTable"}

    machines = resources_of(translated, "AWS::StepFunctions::StateMachine")
    assert list(machines) == ["JobStateMachine"]
    props = machines["JobStateMachine"]["Properties"]
    assert props["DefinitionSubstitutions"] == SUBSTITUTIONS
    assert "DefinitionString" in props
    assert props["StateMachineType"] == "STANDARD"
    assert props["TracingConfiguration"] == {"Enabled": True}
    assert props["LoggingConfiguration"]["Level"] == "ERROR"
    assert props["LoggingConfiguration"]["IncludeExecutionData"] is False

    role_id = props["RoleArn"]["Fn::GetAtt"][0]
    role = translated["Resources"][role_id]["Properties"]
    assert [a.rsplit("/", 1)[-1] for a in role["ManagedPolicyArns"]] == ["AWSXrayWriteOnlyAccess"]
    invoked = [s["Resource"] for p in role["Policies"] for s in p["PolicyDocument"]["Statement"]
               if "lambda:InvokeFunction" in as_list(s["Action"])]
    invoked_names = json.dumps(invoked)
    assert "WorkerFunction" in invoked_names and "FinalizeFunction" in invoked_names


# ------------------------------------------------------------------- 3. ASL schema (E3601)

def test_definition_is_valid_asl(tmp_path: Path) -> None:
    text = substituted_definition(DEFINITION.read_text())
    # The same definition with one state's type misspelt: E3601 must flag it, which shows
    # that the schema check really runs on DefinitionString.
    broken = json.loads(text)
    broken["States"][broken["StartAt"]]["Type"] = "Mapp"

    def machine(definition: str) -> dict[str, Any]:
        return {"Type": "AWS::StepFunctions::StateMachine",
                "Properties": {"RoleArn": f"arn:aws:iam::{ACCOUNT}:role/fanout-states",
                               "StateMachineType": "STANDARD", "DefinitionString": definition}}

    probe = tmp_path / "asl.json"
    probe.write_text(json.dumps({
        "AWSTemplateFormatVersion": "2010-09-09",
        "Resources": {"Fanout": machine(text), "Misspelt": machine(json.dumps(broken))},
    }))
    findings = run_cfn_lint(probe)
    by_resource: dict[str, list[dict[str, Any]]] = {}
    for finding in findings:
        if finding["Level"] == "Error":
            by_resource.setdefault(finding["Location"]["Path"][1], []).append(finding)

    assert "E3601" in {f["Rule"]["Id"] for f in by_resource.get("Misspelt", [])}
    assert [describe(f) for f in by_resource.get("Fanout", [])] == []


# ------------------------------------------------------------------- 4. state names, ${...}

NO_NEXT_TYPES = {"Choice", "Succeed", "Fail"}


def _targets(state: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    if "Next" in state:
        yield "Next", state["Next"]
    if "Default" in state:
        yield "Default", state["Default"]
    for i, rule in enumerate(state.get("Choices", [])):
        yield f"Choices[{i}].Next", rule.get("Next")
    for i, catcher in enumerate(state.get("Catch", [])):
        yield f"Catch[{i}].Next", catcher.get("Next")


def state_name_problems(scope: dict[str, Any], where: str = "$") -> list[str]:
    """Every dangling StartAt/Next/Default, missing Next/End and unreachable state in a
    States scope and in the scopes nested in it (Map ItemProcessor/Iterator, Parallel)."""
    states = scope.get("States")
    if not isinstance(states, dict) or not states:
        return [f"{where}: no States"]
    problems = []
    start = scope.get("StartAt")
    if start not in states:
        problems.append(f"{where}.StartAt names no state: {start!r}")
    edges: dict[str, list[str]] = {}
    for name, state in states.items():
        here = f"{where}.States.{name}"
        edges[name] = []
        for label, target in _targets(state):
            if target in states:
                edges[name].append(target)
            else:
                problems.append(f"{here}.{label} names no state in its scope: {target!r}")
        if state.get("Type") not in NO_NEXT_TYPES and "Next" not in state \
                and state.get("End") is not True:
            problems.append(f"{here}: neither Next nor End")
        for key in ("ItemProcessor", "Iterator"):
            if key in state:
                problems += state_name_problems(state[key], f"{here}.{key}")
        for i, branch in enumerate(state.get("Branches", [])):
            problems += state_name_problems(branch, f"{here}.Branches[{i}]")
    seen: set[str] = set()
    todo: list[str] = [start] if isinstance(start, str) and start in states else []
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += edges[name]
    problems += [f"{where}.States.{name} is unreachable" for name in states if name not in seen]
    return problems


def _inner(state_type: str, inner_states: dict[str, Any]) -> dict[str, Any]:
    scope = {"StartAt": next(iter(inner_states)), "States": inner_states}
    state: dict[str, Any] = {"Type": state_type, "End": True}
    if state_type == "Parallel":
        state["Branches"] = [{"StartAt": "Ok", "States": {"Ok": {"Type": "Succeed"}}}, scope]
    else:
        state["ItemProcessor"] = scope
    return {"StartAt": "Outer", "States": {"Outer": state}}


@pytest.mark.parametrize(("broken", "expected"), [
    ({"StartAt": "Nope", "States": {"A": {"Type": "Succeed"}}}, "StartAt names no state"),
    (_inner("Parallel", {"A": {"Type": "Pass", "Next": "Gone"}}), "Branches[1].States.A.Next"),
    (_inner("Map", {"C": {"Type": "Choice", "Default": "Gone",
                          "Choices": [{"Variable": "$.x", "IsNull": True, "Next": "C"}]}}),
     "ItemProcessor.States.C.Default"),
    (_inner("Map", {"C": {"Type": "Choice", "Default": "C",
                          "Choices": [{"Variable": "$.x", "IsNull": True, "Next": "Outer"}]}}),
     "C.Choices[0].Next names no state in its scope: 'Outer'"),
    (_inner("Map", {"T": {"Type": "Task", "Resource": "arn", "End": True,
                          "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Gone"}]}}),
     "T.Catch[0].Next"),
    ({"StartAt": "A", "States": {"A": {"Type": "Map", "End": True, "Iterator": {
        "StartAt": "Gone", "States": {"B": {"Type": "Succeed"}}}}}}, "Iterator.StartAt"),
    ({"StartAt": "A", "States": {"A": {"Type": "Pass"}}}, "neither Next nor End"),
    ({"StartAt": "A", "States": {"A": {"Type": "Succeed"}, "B": {"Type": "Succeed"}}},
     "B is unreachable"),
])
def test_state_name_checker_catches_dangling_names(broken: dict[str, Any], expected: str) -> None:
    problems = state_name_problems(broken)
    assert any(expected in p for p in problems), problems


def test_every_state_name_resolves_in_its_scope() -> None:
    definition = json.loads(DEFINITION.read_text())
    assert state_name_problems(definition) == []


ASL_TOOLS = ROOT / "build" / "asl" / "node_modules"


def run_aws_asl_validators(*definitions: Path) -> dict[str, list[str]]:
    """Problems AWS's States Language tooling (npm, installed by `make asl-tools`) finds."""
    assert (ASL_TOOLS / "asl-validator").is_dir(), (
        f"AWS's ASL validators are not installed in {ASL_TOOLS}: run `make asl-tools` "
        "(`make test` does)")
    proc = subprocess.run(["node", str(ROOT / "statemachine" / "validate.js"), str(ASL_TOOLS),
                           *map(str, definitions)], capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), f"validate.js broke: {proc.stderr}"
    reports = [json.loads(line) for line in proc.stdout.splitlines()]
    return {Path(r["file"]).name: r["problems"] for r in reports}


def test_definition_passes_aws_own_validators(tmp_path: Path) -> None:
    deployed = tmp_path / "deployed.asl.json"
    deployed.write_text(substituted_definition(DEFINITION.read_text()))
    # The pre-fix definition's mistake: a state name used in two Map processors.
    duplicated = json.loads(deployed.read_text())
    branches = duplicated["States"]["RunChunks"]["Branches"]
    lambda_states = branches[0]["States"]["LambdaChunks"]["ItemProcessor"]["States"]
    batch_states = branches[1]["States"]["BatchChunks"]["ItemProcessor"]["States"]
    lambda_states["BatchChunkFailed"] = batch_states["BatchChunkFailed"]
    lambda_states["LambdaChunkFailed"]["Next"] = "BatchChunkFailed"
    lambda_states["LambdaChunkFailed"].pop("End")
    (tmp_path / "duplicated.asl.json").write_text(json.dumps(duplicated, indent=2))
    problems = run_aws_asl_validators(deployed, tmp_path / "duplicated.asl.json")
    assert problems["deployed.asl.json"] == []
    assert any("DUPLICATE_STATE_NAME" in p for p in problems["duplicated.asl.json"])


def test_substitutions_match_definition_placeholders(template: dict[str, Any]) -> None:
    placeholders = set(re.findall(r"\$\{([^}]*)\}", DEFINITION.read_text()))
    machine = template["Resources"]["JobStateMachine"]["Properties"]
    substitutions = machine["DefinitionSubstitutions"]
    assert placeholders == set(substitutions)
    assert substitutions == SUBSTITUTIONS


# ------------------------------------------------------------------- 5. security

def iam_statements(template: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(resource id, statement) for every permission statement of a (transformed) template."""
    for rid, res in template["Resources"].items():
        props = res.get("Properties", {})
        documents = []
        if res["Type"] == "AWS::IAM::Role":
            documents = [p["PolicyDocument"] for p in props.get("Policies", [])]
        elif res["Type"] in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy",
                             "AWS::S3::BucketPolicy"):
            documents = [props["PolicyDocument"]]
        elif res["Type"].startswith("AWS::Serverless::"):
            documents = [p for p in props.get("Policies", []) if isinstance(p, dict)
                         and "Statement" in p]
        for document in documents:
            for statement in as_list(document["Statement"]):
                yield rid, statement


def permission_problems(template: dict[str, Any]) -> list[str]:
    problems = []
    for rid, statement in iam_statements(template):
        if statement["Effect"] != "Allow":
            continue
        actions = [a for a in as_list(statement.get("Action", [])) if isinstance(a, str)]
        for action in actions:
            if action == "*" or action.endswith(":*"):
                problems.append(f"{rid}: Allow {action}")
        if "Principal" in statement or "NotAction" in statement or "NotResource" in statement:
            problems.append(f"{rid}: Allow with Principal/NotAction/NotResource: {statement}")
        if "*" in as_list(statement.get("Resource", [])):
            broad = sorted(set(actions) - WILDCARD_RESOURCE_ACTIONS)
            if broad or len(actions) != len(as_list(statement["Action"])):
                problems.append(f"{rid}: {broad or statement['Action']} on Resource '*'")
    for rid, res in resources_of(template, "AWS::IAM::Role").items():
        for arn in res["Properties"].get("ManagedPolicyArns", []):
            text = arn["Fn::Sub"] if isinstance(arn, dict) and "Fn::Sub" in arn else arn
            if not isinstance(text, str) or text.rsplit("/", 1)[-1] not in ALLOWED_MANAGED_POLICIES:
                problems.append(f"{rid}: managed policy {arn}")
        for statement in as_list(res["Properties"]["AssumeRolePolicyDocument"]["Statement"]):
            if statement.get("Principal") == "*" or "AWS" in statement.get("Principal", {}):
                problems.append(f"{rid}: assumable by {statement['Principal']}")
    return problems


def test_permission_checker_catches_broad_grants(template: dict[str, Any]) -> None:
    broken = copy.deepcopy(template)
    policies = broken["Resources"]["BatchJobRole"]["Properties"]["Policies"]
    statements = policies[0]["PolicyDocument"]["Statement"]
    statements[0]["Action"] = ["s3:*"]
    statements[1]["Action"] = "dynamodb:*"
    statements.append({"Effect": "Allow", "Action": "*", "Resource": "arn:aws:s3:::x"})
    statements.append({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"})
    problems = "\n".join(permission_problems(broken))
    for expected in ("Allow s3:*", "Allow dynamodb:*", "Allow *", "['s3:GetObject'] on Resource"):
        assert expected in problems


@pytest.mark.parametrize("which", ["template", "translated"])
def test_no_broad_permissions(which: str, request: pytest.FixtureRequest) -> None:
    # The translated template also holds the roles SAM generates from policy templates.
    subject: dict[str, Any] = request.getfixturevalue(which)
    assert list(iam_statements(subject)) != []
    assert permission_problems(subject) == []


def test_data_access_is_limited_to_job_objects_and_the_table(template: dict[str, Any]) -> None:
    jobs_objects = {"Fn::Sub": "${PayloadBucket.Arn}/jobs/*"}
    table = [{"Fn::GetAtt": ["ResultsTable", "Arn"]}, {"Fn::Sub": "${ResultsTable.Arn}/index/*"}]
    for rid in ("WorkerFunction", "FinalizeFunction", "BatchJobRole", "JobStateMachine"):
        statements = [s for r, s in iam_statements(template) if r == rid]
        s3 = [s for s in statements if any(a.startswith("s3:") for a in as_list(s["Action"]))]
        dynamodb = [s for s in statements
                    if any(a.startswith("dynamodb:") for a in as_list(s["Action"]))]
        objects = [s for s in s3 if as_list(s["Action"]) != ["s3:ListBucket"]]
        listing = [s for s in s3 if as_list(s["Action"]) == ["s3:ListBucket"]]
        assert objects and all(s["Resource"] == jobs_objects for s in objects), rid
        # Listing only so a missing key is a 404 (no checkpoint), and only under jobs/.
        assert all(s["Resource"] == {"Fn::GetAtt": ["PayloadBucket", "Arn"]}
                   and s["Condition"] == {"StringLike": {"s3:prefix": "jobs/*"}}
                   for s in listing), rid
        assert all(s["Resource"] == table for s in dynamodb), rid
        if rid != "JobStateMachine":
            assert {a for s in dynamodb for a in as_list(s["Action"])} == {
                "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
                "dynamodb:Query", "dynamodb:BatchGetItem"}, rid


def test_bucket_is_private_encrypted_and_tls_only(template: dict[str, Any]) -> None:
    bucket = template["Resources"]["PayloadBucket"]
    assert bucket["Type"] == "AWS::S3::Bucket"
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True, "BlockPublicPolicy": True,
        "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
    assert props["OwnershipControls"]["Rules"] == [{"ObjectOwnership": "BucketOwnerEnforced"}]
    [encryption] = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert encryption["ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")

    rules = props["LifecycleConfiguration"]["Rules"]
    expiring = [r for r in rules if r["Status"] == "Enabled" and r.get("Prefix") == "jobs/"]
    assert [r["ExpirationInDays"] for r in expiring] == [{"Ref": "PayloadRetentionDays"}]
    assert any("AbortIncompleteMultipartUpload" in r and "Prefix" not in r for r in rules)

    [policy] = [r["Properties"] for r in resources_of(template, "AWS::S3::BucketPolicy").values()
                if r["Properties"]["Bucket"] == {"Ref": "PayloadBucket"}]
    tls_only = [s for s in policy["PolicyDocument"]["Statement"]
                if s["Effect"] == "Deny" and s["Principal"] == "*" and s["Action"] == "s3:*"
                and s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}]
    assert len(tls_only) == 1
    assert tls_only[0]["Resource"] == [{"Fn::GetAtt": ["PayloadBucket", "Arn"]},
                                       {"Fn::Sub": "${PayloadBucket.Arn}/*"}]


def test_results_table_has_pitr_ttl_sse_and_the_contract_indexes(template: dict[str, Any]) -> None:
    table = template["Resources"]["ResultsTable"]
    assert table["Type"] == "AWS::DynamoDB::Table"
    props = table["Properties"]
    assert props["PointInTimeRecoverySpecification"] == {"PointInTimeRecoveryEnabled": True}
    assert props["TimeToLiveSpecification"] == {"AttributeName": "expires", "Enabled": True}
    assert props["SSESpecification"]["SSEEnabled"] is True
    assert props["BillingMode"] == "PAY_PER_REQUEST"
    assert {(a["AttributeName"], a["AttributeType"]) for a in props["AttributeDefinitions"]} == {
        ("job_id", "S"), ("item", "S"), ("finished", "N"), ("written", "N"), ("entity", "S"),
        ("created", "N")}
    assert props["KeySchema"] == [{"AttributeName": "job_id", "KeyType": "HASH"},
                                  {"AttributeName": "item", "KeyType": "RANGE"}]
    indexes = {i["IndexName"]: i for i in props["GlobalSecondaryIndexes"]}
    assert set(indexes) == {"by_written", "by_finished", "jobs"}
    for name, (hash_key, range_key, projection) in {
            "by_written": ("job_id", "written", "KEYS_ONLY"),
            "by_finished": ("job_id", "finished", "ALL"),
            "jobs": ("entity", "created", "ALL")}.items():
        assert indexes[name]["KeySchema"] == [{"AttributeName": hash_key, "KeyType": "HASH"},
                                              {"AttributeName": range_key, "KeyType": "RANGE"}]
        assert indexes[name]["Projection"] == {"ProjectionType": projection}


def test_job_queue_prefers_fargate_spot(template: dict[str, Any]) -> None:
    resources = template["Resources"]
    queue = resources["JobQueue"]["Properties"]
    order = sorted(queue["ComputeEnvironmentOrder"], key=lambda e: int(e["Order"]))
    kinds = [resources[e["ComputeEnvironment"]["Ref"]]["Properties"]["ComputeResources"]["Type"]
             for e in order]
    assert kinds == ["FARGATE_SPOT", "FARGATE"]
    assert order[0]["ComputeEnvironment"] == {"Ref": "BatchSpotEnvironment"}
    for rid in ("BatchSpotEnvironment", "BatchOnDemandEnvironment"):
        compute = resources[rid]["Properties"]["ComputeResources"]
        assert compute["Subnets"] == {"Ref": "Subnets"}
        assert compute["SecurityGroupIds"] == {"Ref": "SecurityGroupIds"}
        assert compute["MaxvCpus"] == {"Ref": "BatchMaxVcpus"}


def batch_retry_action(rules: list[dict[str, Any]], status_reason: str, reason: str,
                       exit_code: str | None) -> str:
    """What AWS Batch does with a failed attempt: the first EvaluateOnExit rule whose
    conditions all match decides; no match means retry (while attempts remain)."""
    facts = {"OnStatusReason": status_reason, "OnReason": reason, "OnExitCode": exit_code}
    for rule in rules:
        conditions = {k: v for k, v in rule.items() if k in facts}
        if all(facts[k] is not None and fnmatchcase(str(facts[k]), v)
               for k, v in conditions.items()):
            return str(rule["Action"]).upper()
    return "RETRY"


def test_job_definition_retries_spot_interruptions_and_exits_otherwise(
        template: dict[str, Any]) -> None:
    definition = template["Resources"]["WorkerJobDefinition"]["Properties"]
    strategy = definition["RetryStrategy"]
    assert int(strategy["Attempts"]) >= 2
    rules = strategy["EvaluateOnExit"]
    spot = "Your Spot Task was interrupted."
    host = "Host EC2 (instance i-0123456789abcdef0) terminated."
    crash = "Essential container in task exited"
    assert batch_retry_action(rules, spot, "", None) == "RETRY"
    assert batch_retry_action(rules, host, "", None) == "RETRY"
    assert batch_retry_action(rules, crash, "OutOfMemoryError: Container killed", "137") == "EXIT"
    assert batch_retry_action(rules, crash, crash, "1") == "EXIT"
    assert batch_retry_action([], crash, crash, "1") == "RETRY"  # why the catch-all matters
    assert definition["Timeout"] == {"AttemptDurationSeconds": {"Ref": "BatchAttemptSeconds"}}
    assert definition["PlatformCapabilities"] == ["FARGATE"]


# ------------------------------------------------------------------- 6. outputs, contract

def test_outputs_are_the_ones_fanout_configure_reads(template: dict[str, Any]) -> None:
    values = {name: out["Value"] for name, out in template["Outputs"].items()}
    assert {name: values.get(name) for name in OUTPUTS} == OUTPUTS


def test_parameters_match_the_contract(template: dict[str, Any]) -> None:
    params = template["Parameters"]
    runtime = params["PythonRuntime"]
    assert runtime["Type"] == "String" and runtime["Default"] == "python3.12"
    assert runtime["AllowedValues"] == ["python3.11", "python3.12", "python3.13"]
    assert "cloudpickle" in runtime["Description"]
    expected_defaults = {
        "WorkerMemorySize": 1769, "WorkerTimeout": 900, "BatchVcpu": "1", "BatchMemory": "2048",
        "BatchMaxVcpus": 256, "BatchAttemptSeconds": 21600, "AssignPublicIp": "ENABLED",
        "PayloadRetentionDays": 30, "ResultRetentionDays": 90, "LogRetentionDays": 30,
    }
    assert {name: params[name].get("Default") for name in expected_defaults} == expected_defaults
    assert params["WorkerMemorySize"]["MinValue"] == 128
    assert params["WorkerMemorySize"]["MaxValue"] == 10240
    assert params["WorkerTimeout"]["MaxValue"] == 900
    assert params["AssignPublicIp"]["AllowedValues"] == ["ENABLED", "DISABLED"]
    assert params["Subnets"]["Type"] == "List<AWS::EC2::Subnet::Id>"
    assert params["SecurityGroupIds"]["Type"] == "List<AWS::EC2::SecurityGroup::Id>"
    assert params["BatchImage"]["Type"] == "String" and "Default" not in params["BatchImage"]


@pytest.mark.parametrize(("rid", "handler"), [
    ("WorkerFunction", "functions/worker/app.handler"),
    ("FinalizeFunction", "functions/finalize/app.handler"),
    ("PlanFunction", "functions/plan/app.handler"),
])
def test_functions_match_the_contract(template: dict[str, Any], rid: str, handler: str) -> None:
    function = template["Resources"][rid]
    assert function["Type"] == "AWS::Serverless::Function"
    assert function["Metadata"] == {"BuildMethod": "makefile"}
    props = function["Properties"]
    assert (props["CodeUri"], props["Handler"]) == (".", handler)
    assert props["Runtime"] == {"Ref": "PythonRuntime"}
    assert props["Architectures"] == ["x86_64"]
    assert props["Tracing"] == "Active"
    variables = props["Environment"]["Variables"]
    assert {k: variables[k] for k in WORKER_ENVIRONMENT} == WORKER_ENVIRONMENT
    assert set(variables) - set(WORKER_ENVIRONMENT) <= {"FANOUT_MAX_CONCURRENCY"}
    [log_group] = [r["Properties"] for r in resources_of(template, "AWS::Logs::LogGroup").values()
                   if r["Properties"].get("LogGroupName") == {"Fn::Sub": f"/aws/lambda/${{{rid}}}"}]
    assert log_group["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_every_function_has_a_make_rule_for_sam_build(template: dict[str, Any]) -> None:
    # SAM's makefile build runs `make build-<LogicalId>`: ask make itself (dry run) whether
    # it knows how, for every function of the template (a missing one failed `sam build`).
    functions = resources_of(template, "AWS::Serverless::Function")
    assert len(functions) == 4
    for rid, function in functions.items():
        assert function["Metadata"] == {"BuildMethod": "makefile"}
        dry = subprocess.run(["make", "-n", "-C", str(ROOT), f"build-{rid}",
                              "ARTIFACTS_DIR=/nonexistent/artifact"],
                             capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, f"make build-{rid}: {dry.stderr}"
        assert "--platform manylinux2014_x86_64" in dry.stdout
        assert "--only-binary=:all:" in dry.stdout
    broken = subprocess.run(["make", "-n", "-C", str(ROOT), "build-NoSuchFunction"],
                            capture_output=True, text=True, timeout=60)
    assert broken.returncode != 0  # the check can fail


def test_state_machine_matches_the_contract(template: dict[str, Any]) -> None:
    machine = template["Resources"]["JobStateMachine"]
    assert machine["Type"] == "AWS::Serverless::StateMachine"
    props = machine["Properties"]
    assert props["Type"] == "STANDARD"
    assert (ROOT / props["DefinitionUri"]).resolve() == DEFINITION
    assert props["Name"] == {"Fn::Sub": "${AWS::StackName}-jobs"}
    assert props["Tracing"] == {"Enabled": True}
    assert (props["Logging"]["Level"], props["Logging"]["IncludeExecutionData"]) == ("ERROR", False)
    [destination] = props["Logging"]["Destinations"]
    log_group = destination["CloudWatchLogsLogGroup"]["LogGroupArn"]["Fn::GetAtt"][0]
    assert template["Resources"][log_group]["Type"] == "AWS::Logs::LogGroup"


def test_batch_worker_image_and_job_definition_agree(template: dict[str, Any]) -> None:
    container = template["Resources"]["WorkerJobDefinition"]["Properties"]["ContainerProperties"]
    command = ["python", "-m", "fanout.backends.aws.batch_entry"]
    assert container["Command"] == command
    assert container["Image"] == {"Ref": "BatchImage"}
    assert {e["Name"]: e["Value"] for e in container["Environment"]} == {
        k: v for k, v in WORKER_ENVIRONMENT.items() if not k.startswith("POWERTOOLS")}
    dockerfile = DOCKERFILE.read_text()
    [cmd] = re.findall(r"^CMD\s+(.+)$", dockerfile, re.MULTILINE)
    assert json.loads(cmd) == command
    assert re.search(r"^ARG PYTHON_VERSION=3\.\d+$", dockerfile, re.MULTILINE)
    assert re.search(r"^FROM python:\$\{PYTHON_VERSION\}-slim$", dockerfile, re.MULTILINE)
    assert re.search(r"^USER (?!root\b)\S+$", dockerfile, re.MULTILINE)



# ------------------------------------------------------------------- 7. operating on AWS

# Every AWS call the client makes (fanout/backends/aws/backend.py, store.py, config.py), as
# the IAM action that authorises it. Written from the code, not from the template.
CLIENT_ACTIONS = {
    "s3:GetObject", "s3:PutObject",  # payloads, manifests, bundles, values, schedules
    "s3:ListBucket",  # head_bucket in check_stack
    "dynamodb:DescribeTable", "dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem",
    "dynamodb:Query", "dynamodb:BatchGetItem",
    "states:StartExecution", "states:DescribeStateMachine", "states:DescribeExecution",
    "states:StopExecution",
    "lambda:InvokeFunction",  # the worker's build record (check_worker_build)
    "scheduler:CreateSchedule", "scheduler:GetSchedule", "scheduler:UpdateSchedule",
    "scheduler:DeleteSchedule", "scheduler:ListSchedules", "iam:PassRole",
    "cloudformation:DescribeStacks",  # fanout configure
}


def test_client_policy_grants_exactly_what_the_client_calls(template: dict[str, Any]) -> None:
    policy = template["Resources"]["ClientPolicy"]
    assert policy["Type"] == "AWS::IAM::ManagedPolicy"
    statements = as_list(policy["Properties"]["PolicyDocument"]["Statement"])
    granted = {a for s in statements if s["Effect"] == "Allow" for a in as_list(s["Action"])}
    assert granted == CLIENT_ACTIONS
    assert "batch:TerminateJob" not in granted  # stopping the execution ends its Batch jobs
    wildcard = [s for s in statements if "*" in as_list(s["Resource"])]
    assert [as_list(s["Action"]) for s in wildcard] == [["scheduler:ListSchedules"]]
    [passing] = [s for s in statements if "iam:PassRole" in as_list(s["Action"])]
    assert passing["Resource"] == {"Fn::GetAtt": ["SchedulerRole", "Arn"]}
    assert passing["Condition"] == {"StringEquals": {
        "iam:PassedToService": "scheduler.amazonaws.com"}}
    outputs = template["Outputs"]
    assert outputs["ClientPolicyArn"]["Value"] == {"Ref": "ClientPolicy"}


def test_stack_outputs_cover_what_fanout_configure_reads(template: dict[str, Any]) -> None:
    from fanout.backends.aws.config import OUTPUTS as READ_BY_CONFIGURE

    assert set(READ_BY_CONFIGURE) <= set(template["Outputs"])


def test_max_concurrency_leaves_a_new_accounts_quota_room_for_plan_and_finalize(
        template: dict[str, Any]) -> None:
    from fanout.testing import limits

    parameter = template["Parameters"]["MaxConcurrency"]
    # Plan and Finalize each need a slot while a job's Lambda chunks run.
    assert parameter["Default"] <= limits.LAMBDA_DEFAULT_CONCURRENCY - 2
    definition = json.loads(DEFINITION.read_text())
    maps = [s for _, s in limits._states(definition) if s.get("Type") == "Map"]
    assert len(maps) == 2
    # The Batch map runs at the stack's MaxConcurrency; the Lambda map starts at the
    # ramp's first width (client/backends/aws/ramp.py: never above MaxConcurrency) and
    # is labelled so that the ramp finds its Map Run.
    paths = {m.get("Label", "batch"): m.get("MaxConcurrencyPath") for m in maps}
    assert paths == {"LambdaChunks": "$.lambda_max_concurrency", "batch": "$.max_concurrency"}
    from fanout.backends.aws.upload import DEFAULT_MAX_CONCURRENCY

    assert DEFAULT_MAX_CONCURRENCY <= limits.LAMBDA_DEFAULT_CONCURRENCY


def test_alarms_watch_failed_executions_and_dead_letters(template: dict[str, Any]) -> None:
    alarms = resources_of(template, "AWS::CloudWatch::Alarm")
    watched = {(a["Properties"]["Namespace"], a["Properties"]["MetricName"]) for a in
               alarms.values()}
    assert watched == {("AWS/States", "ExecutionsFailed"),
                       ("AWS/SQS", "ApproximateNumberOfMessagesVisible")}
    for alarm in alarms.values():
        props = alarm["Properties"]
        assert props["AlarmActions"] == {"Fn::If": ["HasAlarmEmail", [{"Ref": "AlarmTopic"}],
                                                    {"Ref": "AWS::NoValue"}]}
    topic = template["Resources"]["AlarmTopic"]
    assert topic["Condition"] == "HasAlarmEmail"
    assert topic["Properties"]["Subscription"] == [{"Protocol": "email",
                                                    "Endpoint": {"Ref": "AlarmEmail"}}]


def test_the_api_has_what_its_routes_need_and_logs_access(template: dict[str, Any]) -> None:
    from fanout.backends.aws.config import ENVIRONMENT

    api = template["Resources"]["ApiFunction"]["Properties"]
    variables = api["Environment"]["Variables"]
    # every setting load_config reads, so /api/schedules and /runs see the stack's schedules
    assert set(ENVIRONMENT.values()) - {"FANOUT_AWS_JOB_QUEUE", "FANOUT_AWS_WORKER_FUNCTION"} \
        <= set(variables)
    statements = as_list(api["Policies"][0]["Statement"])
    actions = {a for s in statements for a in as_list(s["Action"])}
    assert {"scheduler:GetSchedule", "scheduler:ListSchedules", "s3:GetObject"} <= actions
    readable = json.dumps([s["Resource"] for s in statements
                           if "s3:GetObject" in as_list(s["Action"])])
    assert "/schedules/*" in readable
    stage = template["Resources"]["JobsApi"]["Properties"]
    log_group = stage["AccessLogSetting"]["DestinationArn"]["Fn::GetAtt"][0]
    assert template["Resources"][log_group]["Type"] == "AWS::Logs::LogGroup"


def test_schedules_live_outside_the_expiring_prefix(template: dict[str, Any]) -> None:
    from fanout.backends.aws.store import JOBS_PREFIX, AwsStore

    rules = template["Resources"]["PayloadBucket"]["Properties"]["LifecycleConfiguration"]
    expiring = [r.get("Prefix", "") for r in rules["Rules"] if "ExpirationInDays" in r]
    assert expiring == [JOBS_PREFIX]
    assert not AwsStore.schedule_key("nightly").startswith(JOBS_PREFIX)
    plan = template["Resources"]["PlanFunction"]["Properties"]
    readable = json.dumps([s["Resource"] for s in as_list(plan["Policies"][0]["Statement"])])
    assert "/" + AwsStore.schedule_key("x").split("/")[0] + "/*" in readable


def test_both_tiers_install_the_same_worker_requirements(template: dict[str, Any]) -> None:
    dockerfile = DOCKERFILE.read_text()
    assert re.search(r'pip install [^\n]*"\.\[aws\]" -r worker-requirements\.txt', dockerfile)
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "build-WorkerFunction",
                          "ARTIFACTS_DIR=/nonexistent/WorkerFunction"],
                         capture_output=True, text=True, timeout=60)
    assert re.search(r"\[aws\]\" -r worker-requirements\.txt", dry.stdout), dry.stdout
    assert "numpy" in (ROOT / "worker-requirements.txt").read_text()
    # The runtime of the template, the image's default and the README's build-arg agree.
    runtime = template["Parameters"]["PythonRuntime"]["Default"].removeprefix("python")
    assert re.search(rf"^ARG PYTHON_VERSION={re.escape(runtime)}$", dockerfile, re.MULTILINE)
    readme = (ROOT / "README.md").read_text()
    build_args = set(re.findall(r"--build-arg PYTHON_VERSION=(\d+\.\d+)", readme))
    assert build_args == {runtime}
    assert "--platform linux/amd64" in readme


def test_an_artifact_too_big_for_lambda_is_refused_at_build(tmp_path: Path) -> None:
    artifact = tmp_path / "WorkerFunction"
    artifact.mkdir()
    (artifact / "big_library.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    refused = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT),
                              "lambda-artifact", f"ARTIFACTS_DIR={artifact}", "LAMBDA_MAX_MB=2"],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0
    assert re.search(r"WorkerFunction is [3-9] MB unzipped: Lambda allows 250 MB", refused.stdout)
    assert "Trim worker-requirements.txt" in refused.stdout
    accepted = subprocess.run(["make", "--no-print-directory", "-C", str(ROOT),
                               "lambda-artifact", f"ARTIFACTS_DIR={artifact}"],
                              capture_output=True, text=True, timeout=120)
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert re.search(r"lambda artifact WorkerFunction: [3-9] MB unzipped", accepted.stdout)
    recorded = json.loads((artifact / "fanout_build.json").read_text())
    assert set(recorded) == {"python", "fanout", "requirements_sha256"}


def test_input_objects_are_read_only_and_granted_only_when_named(template: dict[str, Any]
                                                                  ) -> None:
    """S3 inputs (map over s3://..., fanout.s3_chunks) are read by the workers, whose roles
    otherwise reach only the stack's jobs/ prefix: InputObjects grants s3:GetObject on the
    named objects to the two worker roles, and nothing at all when it is empty."""
    param = template["Parameters"]["InputObjects"]
    assert param["Type"] == "CommaDelimitedList" and param["Default"] == ""
    assert template["Conditions"]["HasInputObjects"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "InputObjects"}]}, ""]}]}
    policy = template["Resources"]["InputReadPolicy"]
    assert policy["Type"] == "AWS::IAM::Policy" and policy["Condition"] == "HasInputObjects"
    roles = policy["Properties"]["Roles"]
    assert roles == [{"Ref": "WorkerFunctionRole"}, {"Ref": "BatchJobRole"}]
    assert [(rid, s) for rid, s in iam_statements(template) if rid == "InputReadPolicy"] == [
        ("InputReadPolicy", {"Sid": "InputObjects", "Effect": "Allow",
                             "Action": "s3:GetObject", "Resource": {"Ref": "InputObjects"}})]


def test_scheduled_s3_items_can_be_listed_only_in_the_named_buckets(template: dict[str, Any]
                                                                     ) -> None:
    """A schedule with items="s3://bucket/prefix/" lists the prefix when it fires, in the
    plan function: ListObjectsV2 needs s3:ListBucket on the bucket itself, which object
    ARNs (InputObjects) cannot grant. InputBuckets grants it to the plan function's role
    only, and nothing when empty."""
    param = template["Parameters"]["InputBuckets"]
    assert param["Type"] == "CommaDelimitedList" and param["Default"] == ""
    assert template["Conditions"]["HasInputBuckets"] == {
        "Fn::Not": [{"Fn::Equals": [{"Fn::Join": ["", {"Ref": "InputBuckets"}]}, ""]}]}
    policy = template["Resources"]["InputListPolicy"]
    assert policy["Type"] == "AWS::IAM::Policy" and policy["Condition"] == "HasInputBuckets"
    assert policy["Properties"]["Roles"] == [{"Ref": "PlanFunctionRole"}]
    granted = [s for rid, s in iam_statements(template) if rid == "InputListPolicy"]
    assert granted == [{"Sid": "ListInputBuckets", "Effect": "Allow",
                        "Action": "s3:ListBucket", "Resource": {"Ref": "InputBuckets"}}]
    # No other statement lets the plan function list a bucket that is not the stack's own.
    for rid, statement in iam_statements(template):
        if rid == "PlanFunction" and "s3:ListBucket" in str(statement.get("Action")):
            assert statement["Resource"] == {"Fn::GetAtt": ["PayloadBucket", "Arn"]}
