"""Reading template.yaml and creating its resources in moto, so the tested stack is the
deployed one: the same functions, definition, job definition, tables and buckets."""

from __future__ import annotations

import io
import json
import os
import uuid
import zipfile
from pathlib import Path
from typing import Any

from .emulation import ACCOUNT, REGION


def project_root() -> Path:
    """The folder holding template.yaml (this source tree, or FANOUT_PROJECT_ROOT)."""
    configured = os.environ.get("FANOUT_PROJECT_ROOT")
    candidates = [Path(configured)] if configured else []
    candidates += [Path(__file__).resolve().parents[3], Path.cwd()]
    for candidate in candidates:
        if (candidate / "template.yaml").exists():
            return candidate
    raise FileNotFoundError("template.yaml not found: set FANOUT_PROJECT_ROOT to the fanout "
                            "checkout whose stack should be emulated")


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
