"""What moto 5.2 lacks, filled in here and only here: Batch ``submitJob.sync`` casing,
a dropped connection retried as the SDK does, memoised ``jsonpath_ng`` parses, a
Distributed Map that follows ``UpdateMapRun``'s ``maxConcurrency`` while it runs, and
``ListMapRuns`` on an execution whose interpreter has not started yet."""

from __future__ import annotations

import functools
import threading
from typing import Any


def normalise_batch_parameters(service: Any, parameters: dict[str, Any],
                                boto_service_name: str | None = None,
                                service_action_name: str | None = None) -> None:
    """What moto's port leaves out: the ASL's PascalCase names to botocore's casing."""
    import botocore.session

    model = botocore.session.get_session().get_service_model("batch")
    action = service.resource.api_action
    operation = next(op for op in model.operation_names if op.lower() == action.lower())
    _to_shape(parameters, model.operation_model(operation).input_shape)


def normalise_batch_response(service: Any, response: Any,
                              boto_service_name: str | None = None,
                              service_action_name: str | None = None) -> None:
    """And the other way: botocore's camelCase response to the ASL's PascalCase, in place."""
    if isinstance(response, dict):
        for key in list(response):
            value = response.pop(key)
            normalise_batch_response(service, value)
            response[key[:1].upper() + key[1:]] = value
    elif isinstance(response, list):
        for item in response:
            normalise_batch_response(service, item)


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


def client_modules() -> list[Any]:
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


def retrying_client(make: Any) -> Any:
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


def memo_parse(parse: Any) -> Any:
    """jsonpath_ng rebuilds its parser on every call: ~90% of moto's per-item time."""

    @functools.lru_cache(maxsize=4096)
    def cached(path: str) -> Any:
        return parse(path)

    return cached


#: How often a running Map Run looks for a changed maxConcurrency (besides being woken by
#: UpdateMapRun itself).
MAP_RUN_WATCH_SECONDS = 0.2


def following_map_run(job_pool_class: Any, unlimited: int) -> Any:
    """moto's ``DistributedIterationComponent._map_run``, with ``UpdateMapRun`` applied.

    moto records an UpdateMapRun's ``maxConcurrency`` on the Map Run but starts its
    workers once ("TODO: add watch on map_run_record update event"). On AWS the new value
    governs the running Map Run: "the maximum number of child workflow executions that can
    be specified to run in parallel for the Map Run at the same time"
    (docs.aws.amazon.com/step-functions/latest/apireference/API_UpdateMapRun.html), 0 (or
    none) meaning no limit below the Distributed Map's 10,000 (docs.aws.amazon.com/
    step-functions/latest/dg/state-map-distributed.html). So here a raise starts more
    workers at once, and after a lowering a worker that finishes its child takes no next
    one while more workers run than the new value allows: running children are never cut
    short, new ones wait.
    """

    class FollowingJobPool(job_pool_class):  # type: ignore[misc]
        def __init__(self, job_program: Any, job_inputs: list[Any], record: Any) -> None:
            super().__init__(job_program=job_program, job_inputs=job_inputs)
            self.record = record
            self.items = len(job_inputs)
            self.workers = 0
            self.gate = threading.Lock()

        def width(self) -> int:
            wanted = int(self.record.max_concurrency)
            return self.items if wanted == unlimited else min(wanted, self.items)

        def next_job(self) -> Any:
            with self.gate:
                if self.workers > self.width():
                    self.workers -= 1  # this worker retires; its job is closed by moto
                    return None
            job = super().next_job()
            if job is None:
                with self.gate:
                    self.workers -= 1
            return job

        def open_jobs(self) -> int:
            with self._mutex:
                return len(self._open_jobs)

    def map_run(self: Any, env: Any, eval_input: Any) -> None:
        input_items: list[Any] = env.stack.pop()
        record = eval_input.map_run_record
        pool = FollowingJobPool(self._get_iteration_program(), input_items, record)

        def launch() -> None:
            while True:
                with pool.gate:
                    # each live worker holds a child or takes the next one
                    if pool.workers >= pool.width() or not pool.open_jobs():
                        return
                    pool.workers += 1
                self._launch_worker(env=env, eval_input=eval_input, job_pool=pool)

        launch()
        while not pool._is_terminated():
            record.update_event.wait(MAP_RUN_WATCH_SECONDS)
            record.update_event.clear()
            launch()
        pool.await_jobs()
        worker_exception = pool.get_worker_exception()
        if worker_exception is not None:
            raise worker_exception
        env.stack.append([closed.job_output for closed in pool.get_closed_jobs()])

    return map_run


def listing_map_runs_early(original: Any) -> Any:
    """moto's ``list_map_runs``, answering an execution that has no interpreter yet.

    Right after StartExecution, moto's execution has no environment until its worker
    thread starts, and ``list_map_runs`` fails with an AttributeError (an HTTP 500). AWS
    answers such an execution like any other without Map Runs: an empty ``mapRuns`` list
    (docs.aws.amazon.com/step-functions/latest/apireference/API_ListMapRuns.html).
    """
    @functools.wraps(original)
    def list_map_runs(self: Any, execution_arn: str) -> dict[str, Any]:
        execution = self.describe_execution(execution_arn=execution_arn)
        worker = getattr(execution, "exec_worker", None)
        if worker is None or getattr(worker, "env", None) is None:
            return {"mapRuns": []}
        result: dict[str, Any] = original(self, execution_arn)
        return result

    return list_map_runs
