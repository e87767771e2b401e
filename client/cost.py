"""What a job consumed, and what that costs in US dollars: for every job, and before a run.

A job's cost is computed from its stored records, so it is the same figure in
``Job.summary()``, ``fanout status``, the jobs API and the dashboard, and it can be worked
out long after the job, from any process. Locally the cloud bill is $0 and the resource is
CPU time (task seconds on this machine's workers). On AWS the meters are the ones AWS bills:

- Lambda: GB-seconds (task time x the worker function's memory) and requests (one per
  chunk, plus the finalize function);
- Fargate (the ``batch`` tier): vCPU-seconds and GB-seconds of each Batch job, with
  Fargate's one-minute minimum per job, on Spot (the stack's first compute environment);
- Step Functions (standard workflows): state transitions, about 5 per job in the parent
  workflow and one per chunk in the Distributed Map's child workflows
  (``statemachine/fanout.asl.json``: one Task state per chunk, no per-item Choice);
- S3 requests (the function, payload and manifests written and read; large results) and
  DynamoDB on-demand write/read request units (one result record per task attempt, the
  job record's updates).

Request counts are derived from the protocol (what the client and the handlers do per job
and per chunk), not read from AWS billing; they are an estimate, labelled as one.

Prices are a dated table per region, each figure with its source. Change them with
``fanout.cost.register_prices(Prices(...))`` or per call (``prices=``); a region without a
table is priced at us-east-1's rates and says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from .errors import InvalidArgument, InvalidArgumentType
from .protocol import CANCELLED, REDUCE_INDEX, JobSpec, ResultRecord

#: Defaults of the deployed stack (template.yaml: WorkerMemorySize, BatchVcpu, BatchMemory).
LAMBDA_MEMORY_MB = 1769
BATCH_VCPU = 1.0
BATCH_MEMORY_MB = 2048
#: Fargate bills per second with a one-minute minimum per task (aws.amazon.com/fargate/pricing).
FARGATE_MINIMUM_SECONDS = 60.0
#: Parent-workflow transitions per job: IsScheduledRun, RunChunks, the two Distributed
#: Maps, the ramp branch's RampDue and NoRamp, Finalize (statemachine/fanout.asl.json). A job
#: whose Lambda map ramps (client/backends/aws/ramp.py: wider than 800 chunks) adds 3 per
#: raise and one plan-function request, at most 13 of each up to 10,000 chunks: not counted.
SFN_TRANSITIONS_PER_JOB = 7
#: S3 PUTs per job: function, payload, spec and the two tiers' manifests (manifest.py);
#: GETs besides three per chunk (its byte range of the manifest, the function bundle and its
#: tasks' byte range of the payload): the two Distributed Maps' ItemReaders and the finalize
#: step's spec. Both checked against the emulation's request counts.
S3_PUTS_PER_JOB = 5
S3_GETS_PER_JOB = 3
S3_GETS_PER_CHUNK = 3
#: DynamoDB writes per job besides the results: job record create, state and summary updates.
DYNAMODB_WRITES_PER_JOB = 3

_HOUR = 3600.0


@dataclass(frozen=True)
class Prices:
    """USD per unit in one region. Units are seconds, requests and request units."""

    region: str
    as_of: str
    lambda_gb_second: float
    lambda_request: float
    fargate_vcpu_second: float
    fargate_gb_second: float
    fargate_spot_vcpu_second: float
    fargate_spot_gb_second: float
    sfn_transition: float
    s3_put: float
    s3_get: float
    dynamodb_write: float
    dynamodb_read: float
    sources: tuple[str, ...] = ()


#: us-east-1, x86 Lambda, Linux/x86 Fargate, Step Functions standard, S3 Standard,
#: DynamoDB on-demand (standard table class). Read 2026-11-23 from the pages below.
US_EAST_1 = Prices(
    region="us-east-1",
    as_of="2026-11-23",
    # aws.amazon.com/lambda/pricing: $0.0000166667 per GB-second (x86), $0.20 per 1M requests
    lambda_gb_second=0.0000166667,
    lambda_request=0.20 / 1e6,
    # aws.amazon.com/fargate/pricing: Linux/x86 $0.04048 per vCPU-hour, $0.004445 per GB-hour
    fargate_vcpu_second=0.04048 / _HOUR,
    fargate_gb_second=0.004445 / _HOUR,
    # Fargate Spot: "up to 70% off" on-demand; its price moves with supply and demand, so
    # this is the ceiling discount (0.3 x on-demand). Override with the current Spot price.
    fargate_spot_vcpu_second=0.3 * 0.04048 / _HOUR,
    fargate_spot_gb_second=0.3 * 0.004445 / _HOUR,
    # aws.amazon.com/step-functions/pricing: standard workflows $0.025 per 1,000 transitions
    sfn_transition=0.025 / 1000,
    # aws.amazon.com/s3/pricing: S3 Standard PUT/COPY/POST/LIST $0.005 per 1,000,
    # GET/SELECT $0.0004 per 1,000
    s3_put=0.005 / 1000,
    s3_get=0.0004 / 1000,
    # aws.amazon.com/dynamodb/pricing/on-demand (after the 2024-11-01 50% reduction):
    # $0.625 per million write request units, $0.125 per million read request units
    dynamodb_write=0.625 / 1e6,
    dynamodb_read=0.125 / 1e6,
    sources=(
        "https://aws.amazon.com/lambda/pricing/",
        "https://aws.amazon.com/fargate/pricing/",
        "https://aws.amazon.com/step-functions/pricing/",
        "https://aws.amazon.com/s3/pricing/",
        "https://aws.amazon.com/dynamodb/pricing/on-demand/",
    ),
)

_TABLES: dict[str, Prices] = {US_EAST_1.region: US_EAST_1}
DEFAULT_REGION = US_EAST_1.region


def register_prices(prices: Prices) -> None:
    """Use ``prices`` for its region from now on (your negotiated or current rates)."""
    if not isinstance(prices, Prices):
        raise InvalidArgumentType(f"register_prices takes a fanout.cost.Prices, not {prices!r}")
    for item in fields(prices):
        value = getattr(prices, item.name)
        if isinstance(value, float) and (not math.isfinite(value) or value < 0):
            raise InvalidArgument(f"price {item.name} must be a finite number >= 0, got {value!r}")
    _TABLES[prices.region] = prices


def prices_for(region: str | None = None, **overrides: Any) -> Prices:
    """The table for ``region`` (us-east-1's when there is none), with ``overrides`` applied."""
    table = _TABLES.get(region or DEFAULT_REGION, _TABLES[DEFAULT_REGION])
    unknown = set(overrides) - {f.name for f in fields(Prices)} - {"region", "as_of"}
    if unknown:
        raise InvalidArgumentType(f"unknown price(s) {sorted(unknown)}; known: "
                                  f"{[f.name for f in fields(Prices)][2:-1]}")
    return replace(table, **overrides) if overrides else table


@dataclass
class Usage:
    """What a job consumed, in the units the services bill."""

    tasks: int = 0
    cpu_seconds: float = 0.0  # local: task seconds on this machine
    lambda_gb_seconds: float = 0.0
    lambda_requests: int = 0
    fargate_spot_vcpu_seconds: float = 0.0
    fargate_spot_gb_seconds: float = 0.0
    fargate_vcpu_seconds: float = 0.0
    fargate_gb_seconds: float = 0.0
    sfn_transitions: int = 0
    s3_puts: int = 0
    s3_gets: int = 0
    dynamodb_writes: int = 0
    dynamodb_reads: int = 0

    def extrapolated(self, fixed: Usage, factor: float) -> Usage:
        """This usage with its per-task part (beyond ``fixed``) multiplied by ``factor``."""
        out = Usage()
        for item in fields(self):
            base = getattr(fixed, item.name)
            value = base + (getattr(self, item.name) - base) * factor
            setattr(out, item.name, math.ceil(value - 1e-9) if item.type == "int" else value)
        return out


def usage_of(backend: str, spec: JobSpec, records: Iterable[ResultRecord], *,
             lambda_memory_mb: int = LAMBDA_MEMORY_MB, batch_vcpu: float = BATCH_VCPU,
             batch_memory_mb: int = BATCH_MEMORY_MB) -> Usage:
    """The resources a job used, from its stored records (what ran, where, how long)."""
    ran = [r for r in records if r.worker_id and r.status != CANCELLED]
    usage = Usage(tasks=spec.n_tasks)
    seconds = sum(r.duration for r in ran)
    if backend != "aws":
        usage.cpu_seconds = round(seconds, 6)
        return usage
    chunksize = max(1, spec.options.chunksize)
    on_batch = [r for r in ran if r.worker_id.startswith("batch/")]
    on_lambda = [r for r in ran if not r.worker_id.startswith("batch/")]
    lambda_chunks = math.ceil(len(on_lambda) / chunksize)
    batch_chunks = len({r.worker_id for r in on_batch})
    usage.lambda_gb_seconds = sum(r.duration for r in on_lambda) * lambda_memory_mb / 1024
    usage.lambda_requests = lambda_chunks + 1  # + the finalize function
    batch_seconds = max(sum(r.duration for r in on_batch),
                        FARGATE_MINIMUM_SECONDS * batch_chunks)
    usage.fargate_spot_vcpu_seconds = batch_seconds * batch_vcpu
    usage.fargate_spot_gb_seconds = batch_seconds * batch_memory_mb / 1024
    usage.sfn_transitions = SFN_TRANSITIONS_PER_JOB + lambda_chunks + batch_chunks
    large = sum(1 for r in ran if r.value_ref)
    usage.s3_puts = S3_PUTS_PER_JOB + large
    # A chunk reads its reference's byte range of the manifest, the function bundle and its
    # tasks' byte range of the payload: three ranged GETs (handlers.run_chunk).
    usage.s3_gets = S3_GETS_PER_CHUNK * (lambda_chunks + batch_chunks) + S3_GETS_PER_JOB + large
    # A worker writes each result page it has tasks in once (backends/aws/flusher.py): one
    # conditional write per page, worker and attempt, plus the reduce record's own.
    from .backends.aws.layout import page_tasks_for

    per_page = page_tasks_for(chunksize)
    usage.dynamodb_writes = len({
        (r.task_index // per_page if r.task_index != REDUCE_INDEX else -1, r.worker_id,
         r.attempt) for r in ran}) + DYNAMODB_WRITES_PER_JOB
    # Reads depend on how often the client polls; count each result read back once, and
    # the conditional check before each write.
    usage.dynamodb_reads = len(ran) + spec.n_tasks
    return usage


def price(usage: Usage, prices: Prices) -> dict[str, float]:
    """USD per service line, and ``total``."""
    lines = {
        "lambda": usage.lambda_gb_seconds * prices.lambda_gb_second
        + usage.lambda_requests * prices.lambda_request,
        "fargate": usage.fargate_vcpu_seconds * prices.fargate_vcpu_second
        + usage.fargate_gb_seconds * prices.fargate_gb_second
        + usage.fargate_spot_vcpu_seconds * prices.fargate_spot_vcpu_second
        + usage.fargate_spot_gb_seconds * prices.fargate_spot_gb_second,
        "step_functions": usage.sfn_transitions * prices.sfn_transition,
        "s3": usage.s3_puts * prices.s3_put + usage.s3_gets * prices.s3_get,
        "dynamodb": usage.dynamodb_writes * prices.dynamodb_write
        + usage.dynamodb_reads * prices.dynamodb_read,
    }
    lines["total"] = sum(lines.values())
    return lines


def report(backend: str, usage: Usage, prices: Prices | None = None,
           region: str | None = None) -> dict[str, Any]:
    """The ``cost`` entry of a job summary: resources, USD by line, and the price table used."""
    resources = {k: (round(v, 6) if isinstance(v, float) else v)
                 for k, v in asdict(usage).items() if v}
    if backend != "aws":
        return {"backend": backend, "resources": resources, "usd": 0.0,
                "note": "local workers: no cloud cost; resources are CPU-seconds"}
    table = prices or prices_for(region)
    lines = price(usage, table)
    out: dict[str, Any] = {
        "backend": backend, "resources": resources, "usd": round(lines.pop("total"), 10),
        "usd_by_service": {k: round(v, 10) for k, v in lines.items()},
        "prices": {"region": table.region, "as_of": table.as_of},
        "note": "estimate from the job's records and fanout's request model",
    }
    if region and region != table.region:
        out["note"] += f"; no price table for {region}, priced at {table.region} rates"
    return out


def job_cost(backend: Any, spec: JobSpec, records: Iterable[ResultRecord],
             prices: Prices | None = None) -> dict[str, Any]:
    """The ``cost`` of a stored job on ``backend`` (a Backend object)."""
    name = getattr(backend, "name", "local")
    region = getattr(getattr(backend, "config", None), "region", None)
    return report(name, usage_of(name, spec, records), prices, region)


def describe(cost: Mapping[str, Any]) -> str:
    """One line for ``fanout status``."""
    res = cost.get("resources", {})
    if cost.get("backend") != "aws":
        return f"cost: {res.get('cpu_seconds', 0.0):.2f} CPU-seconds on local workers, $0.00"
    parts = [f"Lambda {res.get('lambda_gb_seconds', 0):.1f} GB-s, "
             f"{res.get('lambda_requests', 0)} requests"]
    if res.get("fargate_spot_vcpu_seconds"):
        parts.append(f"Fargate Spot {res['fargate_spot_vcpu_seconds']:.0f} vCPU-s")
    parts.append(f"{res.get('sfn_transitions', 0)} transitions")
    prices = cost.get("prices", {})
    return (f"cost: ~${cost['usd']:.4f} ({'; '.join(parts)}) at {prices.get('region')} "
            f"prices of {prices.get('as_of')}")


def estimate(fn: Callable[..., Any], items: Iterable[Any], *, sample: int = 10,
             backend: str | None = None, prices: Prices | None = None,
             **executor_options: Any) -> dict[str, Any]:
    """The cost of ``map(fn, items)`` before running it: run a sample, scale it up.

    ``sample`` items, spread evenly over ``items``, run as one job on ``backend`` with the
    same options; their usage, scaled to the whole, is priced as a finished job would be.
    """
    from .executor import Executor

    everything = list(items)
    if not everything:
        raise InvalidArgument("estimate needs at least one item")
    if isinstance(sample, bool) or not isinstance(sample, int) or sample < 1:
        raise InvalidArgument(f"sample must be an integer >= 1, got {sample!r}")
    step = max(1, len(everything) // sample)
    chosen = everything[::step][:sample]
    executor_options.setdefault("progress", False)
    with Executor(backend=backend, **executor_options) as ex:
        results = ex.map(fn, chosen)
        list(results)
        # Read the sample through the executor's own backend: rebuilding one from the
        # options would have to tell backend options from executor-only ones.
        store = ex.backend
        spec = store.job_info(results.job_id).spec
        records = store.records(results.job_id)
    name = store.name
    region = getattr(getattr(store, "config", None), "region", None)
    usage = usage_of(name, spec, records)
    per_job = usage_of(name, replace(spec, n_tasks=0), [])  # does not grow with the tasks
    whole = usage.extrapolated(per_job, len(everything) / len(chosen))
    out = report(name, whole, prices, region)
    out.update(estimate=True, sample=len(chosen), tasks=len(everything),
               sample_job=results.job_id)
    return out
