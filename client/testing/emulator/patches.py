"""The patches that turn moto into the emulation: each one applies an AWS rule moto lets
through (``fanout.testing.limits``, each limit with its source), routes work to the
:class:`~.bridge.Bridge`, or fills a gap of moto's (``moto_gaps``)."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

from .. import limits
from ..throttling import LimitTracker, Throttled
from .bridge import Bridge, TooManyRequestsError
from .moto_gaps import (
    client_modules,
    following_map_run,
    listing_map_runs_early,
    memo_parse,
    normalise_batch_parameters,
    normalise_batch_response,
    retrying_client,
)


@contextlib.contextmanager
def patched(target: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(target, name)
    setattr(target, name, value)
    try:
        yield
    finally:
        setattr(target, name, original)


def install_patches(stack: contextlib.ExitStack, bridge: Bridge,
                    tracker: LimitTracker | None = None) -> None:
    """Patch moto for the life of ``stack``; every original comes back when it closes.
    ``tracker``: the scaled limits (``emulated_aws(scale=...)``), here Lambda's scaling."""
    from moto.awslambda.models import LambdaBackend, LambdaFunction
    from moto.batch.exceptions import ClientException as BatchClientException
    from moto.batch.models import BatchBackend, Job
    from moto.core.exceptions import AWSError, JsonRESTError
    from moto.stepfunctions.models import StepFunctionBackend
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import (
        state_task_service_batch,
    )
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

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
            bridge.throttle(function_name, body)
            if tracker is not None:
                name = function_name.split(":function:")[-1].split(":")[0]
                try:
                    tracker.lambda_start(name, warm=bool(bridge.idle.get(name)))
                except Throttled:
                    raise TooManyRequestsError() from None
            with bridge.concurrency():
                return original_invoke(self, function_name, qualifier, body, headers,
                                       response_headers)
        except TooManyRequestsError:
            raise TooManyRequests() from None

    stack.enter_context(patched(LambdaFunction, "_invoke_lambda",
                                 lambda fn, event=None: bridge.invoke_lambda(fn, event)))
    stack.enter_context(patched(LambdaBackend, "invoke", invoke))
    stack.enter_context(patched(Job, "run", lambda job: bridge.run_batch_job(job)))
    stack.enter_context(patched(StepFunctionBackend, "stop_execution", stop_execution))
    stack.enter_context(patched(StepFunctionsParserBackend, "create_state_machine",
                                 create_state_machine))
    stack.enter_context(patched(StepFunctionsParserBackend, "start_execution",
                                 start_execution))
    stack.enter_context(patched(BatchBackend, "register_job_definition",
                                 register_job_definition))
    for module in client_modules():
        stack.enter_context(patched(module, "boto_client_for",
                                     retrying_client(module.boto_client_for)))
    parser_log = logging.getLogger("moto.stepfunctions.parser")
    stack.enter_context(patched(parser_log, "level", logging.CRITICAL))
    batch_service = state_task_service_batch.StateTaskServiceBatch
    stack.enter_context(patched(batch_service, "_normalise_parameters",
                                 normalise_batch_parameters))
    stack.enter_context(patched(batch_service, "_normalise_response",
                                 normalise_batch_response))
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration import (
        distributed_iteration_component as distributed,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.iteration.job import (
        JobPool,
    )
    from moto.stepfunctions.parser.asl.component.state.exec.state_map.max_concurrency import (
        DEFAULT_MAX_CONCURRENCY_VALUE,
    )

    stack.enter_context(patched(distributed.DistributedIterationComponent, "_map_run",
                                 following_map_run(JobPool, DEFAULT_MAX_CONCURRENCY_VALUE)))
    stack.enter_context(patched(StepFunctionsParserBackend, "list_map_runs",
                                 listing_map_runs_early(StepFunctionsParserBackend.list_map_runs)))
    from moto.stepfunctions.parser.asl.utils import json_path

    parse = json_path.parse  # type: ignore[attr-defined]
    stack.enter_context(patched(json_path, "parse", memo_parse(parse)))
