"""AWS's published limits that a deployed fanout stack meets, as the emulation enforces them.

moto is more forgiving than AWS: it accepts a definition with duplicated state names, runs a
Batch job whose overrides ECS would refuse, and has no Lambda concurrency quota. Each limit
here carries its source (the pages are listed in the project's shared aws-limits notes), so
a mistake that would fail a first deploy fails an offline test instead. moto already
enforces two of them itself: a state's input/output at 256 KiB
(``moto.stepfunctions.parser.quotas``) and a DynamoDB item at ~400 KB (``dynamo_type``);
``tests/test_aws_limits.py`` checks that it still does.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any

# Step Functions, https://states-language.net/spec.html ("State names MUST be unique
# within the scope of the whole state machine") and
# docs.aws.amazon.com/step-functions/latest/apireference/API_StateEnteredEventDetails.html
# (name: 1-80 characters).
STATE_NAME_MAX = 80
# docs.aws.amazon.com/step-functions/latest/dg/service-quotas.html: "Maximum input or output
# size for a task, state, or execution: 256 KiB of data as a UTF-8 encoded string"; this
# also bounds StartExecution's input (API_StartExecution.html).
STATE_IO_MAX_BYTES = 256 * 1024
# docs.aws.amazon.com/AmazonECS/latest/APIReference/API_RunTask.html: "A total of 8192
# characters are allowed for overrides. This limit includes the JSON formatting characters
# of the override structure." AWS Batch on Fargate passes container overrides to RunTask;
# a longer one fails the job ("Container Overrides length must be at most 8192").
ECS_OVERRIDES_MAX_CHARS = 8192
# docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html and
# .../lambda/latest/api/API_Invoke.html: 6 MB for a synchronous request; asynchronous
# invocations 1 MB since 2025-10-24 (aws.amazon.com/about-aws/whats-new/2025/10/
# aws-lambda-payload-size-256-kb-1-mb-invocations/). Lambda's MB is 1,024-based.
LAMBDA_SYNC_PAYLOAD_MAX_BYTES = 6 * 1024 * 1024
LAMBDA_ASYNC_PAYLOAD_MAX_BYTES = 1024 * 1024
# docs.aws.amazon.com/lambda/latest/dg/gettingstarted-limits.html: 1,000 concurrent
# executions per Region by default, "new accounts" lower (unpublished); above the quota an
# invoke fails with TooManyRequestsException (429). The emulation's default is deliberately
# small (a new account's), so throttling paths run in every end-to-end test.
LAMBDA_DEFAULT_CONCURRENCY = 10
# docs.aws.amazon.com/amazondynamodb/latest/developerguide/Constraints.html: 400 KB per item
# including attribute names (1,024-based: 409,600 bytes).
DYNAMODB_ITEM_MAX_BYTES = 400 * 1024
# docs.aws.amazon.com/AmazonECS/latest/developerguide/task-cpu-memory-error.html and
# docs.aws.amazon.com/batch/latest/APIReference/API_ResourceRequirement.html: the vCPU
# values of a Fargate job and the memory (MiB) each one allows.
FARGATE_MEMORY_MIB: dict[str, tuple[int, ...]] = {
    "0.25": (512, 1024, 2048),
    "0.5": tuple(range(1024, 4097, 1024)),
    "1": tuple(range(2048, 8193, 1024)),
    "2": tuple(range(4096, 16385, 1024)),
    "4": tuple(range(8192, 30721, 1024)),
    "8": tuple(range(16384, 61441, 4096)),
    "16": tuple(range(32768, 122881, 8192)),
}


class LimitExceeded(ValueError):
    """A request AWS would refuse; the message names the limit and its value."""


def _states(definition: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (name, state) of a definition, nested Parallel branches and Map processors too."""
    for name, state in definition.get("States", {}).items():
        yield name, state
        for branch in state.get("Branches", []):
            yield from _states(branch)
        for key in ("ItemProcessor", "Iterator"):
            if key in state:
                yield from _states(state[key])


def check_definition(text: str) -> None:
    """Refuse a definition AWS would: duplicated or over-long state names, dangling ``Next``."""
    definition = json.loads(text)
    names = [name for name, _ in _states(definition)]
    duplicated = sorted(name for name, count in Counter(names).items() if count > 1)
    if duplicated:
        raise LimitExceeded(f"DUPLICATE_STATE_NAME: state names must be unique in the whole "
                            f"state machine, but {', '.join(duplicated)} appear more than once")
    long = [name for name in names if len(name) > STATE_NAME_MAX]
    if long:
        raise LimitExceeded(f"state names are at most {STATE_NAME_MAX} characters: {long}")
    _check_transitions(definition)


def _check_transitions(scope: dict[str, Any]) -> None:
    states = scope.get("States", {})
    targets = [("StartAt", scope.get("StartAt"))]
    for name, state in states.items():
        targets.append((f"{name}.Next", state.get("Next")))
        targets.append((f"{name}.Default", state.get("Default")))
        targets += [(f"{name}.Choices", c.get("Next")) for c in state.get("Choices", [])]
        targets += [(f"{name}.Catch", c.get("Next")) for c in state.get("Catch", [])]
        for branch in state.get("Branches", []):
            _check_transitions(branch)
        for key in ("ItemProcessor", "Iterator"):
            if key in state:
                _check_transitions(state[key])
    for where, target in targets:
        if target is not None and target not in states:
            raise LimitExceeded(f"MISSING_TRANSITION_TARGET: {where} names {target!r}, "
                                "which is not a state of its scope")


def check_state_io(text: str, what: str) -> None:
    size = len(text.encode())
    if size > STATE_IO_MAX_BYTES:
        raise LimitExceeded(f"{what} is {size} bytes; Step Functions allows at most "
                            f"{STATE_IO_MAX_BYTES} (256 KiB)")


def overrides_length(overrides: dict[str, Any]) -> int:
    """Characters of the container overrides as ECS receives them (compact JSON)."""
    return len(json.dumps(overrides, separators=(",", ":")))


def check_lambda_payload(body: bytes | str, asynchronous: bool) -> None:
    size = len(body.encode() if isinstance(body, str) else body)
    limit = LAMBDA_ASYNC_PAYLOAD_MAX_BYTES if asynchronous else LAMBDA_SYNC_PAYLOAD_MAX_BYTES
    if size > limit:
        raise LimitExceeded(f"Request must be smaller than {limit} bytes for the "
                            f"{'Event' if asynchronous else 'RequestResponse'} invocation type "
                            f"(got {size})")


def check_fargate(vcpu: str, memory: str) -> None:
    """Refuse a vCPU/memory pair Fargate cannot run."""
    key = vcpu.rstrip("0").rstrip(".") if "." in vcpu else vcpu
    allowed = FARGATE_MEMORY_MIB.get(key)
    if allowed is None:
        raise LimitExceeded(f"Fargate has no {vcpu} vCPU size; use one of "
                            f"{', '.join(FARGATE_MEMORY_MIB)}")
    if not memory.isdigit() or int(memory) not in allowed:
        raise LimitExceeded(f"Invalid 'cpu' setting for task: {vcpu} vCPU on Fargate takes "
                            f"{allowed[0]}-{allowed[-1]} MiB in its steps, not {memory}")


__all__ = [
    "DYNAMODB_ITEM_MAX_BYTES", "ECS_OVERRIDES_MAX_CHARS", "FARGATE_MEMORY_MIB",
    "LAMBDA_ASYNC_PAYLOAD_MAX_BYTES", "LAMBDA_DEFAULT_CONCURRENCY",
    "LAMBDA_SYNC_PAYLOAD_MAX_BYTES", "STATE_IO_MAX_BYTES", "STATE_NAME_MAX", "LimitExceeded",
    "check_definition", "check_fargate", "check_lambda_payload", "check_state_io",
    "overrides_length",
]
