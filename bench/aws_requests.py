"""AWS requests per task, counted on an emulated run, and what 1 million tasks would cost.

    python bench/aws_requests.py [--tasks 1000] [--chunksize 10] [--output docs/benchmarks.md]

Runs one job on ``fanout.testing.emulated_aws()`` (moto executing the real state machine,
the real handlers), counts every request the emulated services receive by service and
operation, and turns the counts into a cost model for 1,000,000 one-second tasks on
1,769 MB Lambda workers with public us-east-1 prices. Like Lambda, the emulation keeps
execution environments warm between invocations (up to 4 idle per function), so a chunk
re-reads the job's spec and function only on a cold start.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import fanout
from bench.run import write_section
from fanout.testing import emulated_aws

START, END = "<!-- bench:aws:start -->", "<!-- bench:aws:end -->"
#: Billed items that come once per chunk (their count per task scales with 1/chunksize).
PER_CHUNK = ("Lambda invocations", "Step Functions transitions", "S3 reads")
LARGER_CHUNKSIZE = 30


def noop(x: int) -> int:
    return x

# Public us-east-1 prices (USD), read 2026-11-21:
#   Lambda x86: https://aws.amazon.com/lambda/pricing/
#   Step Functions Standard: https://aws.amazon.com/step-functions/pricing/
#   S3 Standard requests: https://aws.amazon.com/s3/pricing/
#   DynamoDB on-demand: https://aws.amazon.com/dynamodb/pricing/on-demand/
LAMBDA_GB_SECOND = 0.0000166667
LAMBDA_REQUEST = 0.20 / 1e6
SFN_TRANSITION = 0.025 / 1000
S3_PUT = 0.005 / 1000
S3_GET = 0.0004 / 1000
DDB_WRU = 0.625 / 1e6
DDB_RRU = 0.125 / 1e6
S3_WRITES = {"PutObject", "UploadPart", "CreateMultipartUpload", "CompleteMultipartUpload",
             "ListObjects", "PostObject"}


def run_job(n: int, chunksize: int
            ) -> tuple[Counter[tuple[str, str, str]], int, float, dict[str, float]]:
    """Run one job; return the request counts, the state transitions, the wall time and
    the DynamoDB units consumed (the emulation's meter at AWS's own limits, scale 1)."""
    with emulated_aws(scale=1) as aws:
        with fanout.Executor(backend="aws", progress=False, chunksize=chunksize,
                             **aws.backend_options) as ex:
            aws.requests.clear()
            assert aws.limits is not None
            aws.limits.consumed.clear()
            started = time.monotonic()
            results = ex.map(noop, range(n))
            values = list(results)
            job = fanout.Job.attach(results.job_id, backend="aws", **aws.backend_options)
            deadline = time.monotonic() + 300
            while job.info.state == "running" and time.monotonic() < deadline:
                time.sleep(0.2)
            wall = time.monotonic() - started
        if values != list(range(n)):
            raise RuntimeError("the emulated job returned wrong results")
        counts = Counter(aws.requests)
        units = dict(aws.limits.consumed)
        arn = ex.backend.store.job(results.job_id)["execution_arn"]
        transitions = aws.state_transitions(arn)
    # moto lists a Distributed Map's child executions only in the parent's history; each
    # child enters exactly one state (its tier's task state), one per chunk.
    chunks = -(-n // chunksize)
    return counts, transitions + chunks, wall, units


def billed(counts: Counter[tuple[str, str, str]], transitions: int) -> dict[str, float]:
    """Billed requests by service (Step Functions bills transitions, not API calls)."""
    out: dict[str, float] = {"Step Functions transitions": transitions}
    for (_caller, service, operation), n in counts.items():
        if service == "s3":
            key = "S3 writes" if operation in S3_WRITES else "S3 reads"
        elif service == "dynamodb":
            key = "DynamoDB"
        elif service == "lambda" and operation == "Invoke":
            key = "Lambda invocations"
        elif service == "batch":
            key = "Batch"
        else:
            continue  # Step Functions API calls and describe/setup calls are not billed
        out[key] = out.get(key, 0) + n
    return out


def cost_model(per_task: dict[str, float], units: dict[str, float],
               tasks_total: int = 1_000_000, seconds: float = 1.0,
               memory_mb: int = 1769) -> list[tuple[str, float, str]]:
    """``units``: DynamoDB write and read units per task, as the emulation metered them."""
    compute = tasks_total * seconds * memory_mb / 1024 * LAMBDA_GB_SECOND
    rows = [("Lambda compute", compute, f"{tasks_total:,} x {seconds:g} s x {memory_mb} MB")]
    invocations = per_task.get("Lambda invocations", 0) * tasks_total
    rows.append(("Lambda requests", invocations * LAMBDA_REQUEST,
                 f"{invocations:,.0f} invocations (one per chunk, plus Finalize)"))
    transitions = per_task.get("Step Functions transitions", 0) * tasks_total
    rows.append(("Step Functions", transitions * SFN_TRANSITION,
                 f"{transitions:,.0f} state transitions"))
    rows.append(("S3", per_task.get("S3 writes", 0) * tasks_total * S3_PUT
                 + per_task.get("S3 reads", 0) * tasks_total * S3_GET,
                 f"{per_task.get('S3 reads', 0) * tasks_total:,.0f} GET, "
                 f"{per_task.get('S3 writes', 0) * tasks_total:,.0f} PUT"))
    wru = tasks_total * (units.get("table-write", 0) + units.get("index-write", 0))
    rru = tasks_total * (units.get("table-read", 0) + units.get("index-read", 0))
    rows.append(("DynamoDB", wru * DDB_WRU + rru * DDB_RRU,
                 f"{wru:,.0f} write units (result pages + their KEYS_ONLY index keys), "
                 f"{rru:,.0f} read units (metered)"))
    return rows


def render(n: int, chunksize: int, counts: Counter[tuple[str, str, str]], transitions: int,
           wall: float, units: dict[str, float]) -> str:
    per_op = sorted(counts.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0]))
    billed_counts = billed(counts, transitions)
    per_task = {k: v / n for k, v in billed_counts.items()}
    total_per_task = sum(per_task.values())
    lines = [
        START,
        "## AWS path: requests per task and a cost model",
        "",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; one job of "
        f"{n:,} no-op tasks, chunksize {chunksize}, on `fanout.testing.emulated_aws()` "
        f"({wall:.1f} s wall)",
        f"- Command: `.venv/bin/python bench/aws_requests.py --tasks {n} --chunksize "
        f"{chunksize}`",
        "",
        "Every request the emulated services received, by who sent it (the client and the "
        "workers, or Step Functions itself) and operation:",
        "",
        "| sender | service | operation | requests | per task |",
        "|---|---|---|---|---|",
    ]
    for (caller, service, operation), count in per_op:
        lines.append(f"| {caller} | {service} | {operation} | {count:,} | {count / n:.3f} |")
    lines += [
        f"| Step Functions | states | state transitions | {transitions:,} | "
        f"{transitions / n:.3f} |",
        "",
        "Billed requests per task (Step Functions bills state transitions, not its API calls):",
        "",
        "| billed as | per task |",
        "|---|---|",
    ]
    for key, value in sorted(per_task.items()):
        lines.append(f"| {key} | {value:.3f} |")
    verdict = "met" if total_per_task <= 1.5 else "**not met**"
    lines += [f"| **total** | **{total_per_task:.3f}** (target <= 1.5: {verdict}) |", ""]
    lines += ["DynamoDB capacity units per task, metered by the emulation (`emulated_aws("
              "scale=1)`: a write unit per KB written, the index's per key; a strongly "
              "consistent read unit per 4 KB):", "", "| units | per task |", "|---|---|"]
    for kind in ("table-write", "index-write", "table-read", "index-read"):
        lines.append(f"| {kind} | {units.get(kind, 0) / n:.3f} |")
    lines.append("")
    larger = {k: v * chunksize / LARGER_CHUNKSIZE if k in PER_CHUNK else v
              for k, v in per_task.items()}
    unit_per_task = {k: v / n for k, v in units.items()}
    # A page holds a chunk's tasks (up to 16), so its writes are once per chunk too.
    unit_larger = {k: v * chunksize / LARGER_CHUNKSIZE if k.endswith("write") else v
                   for k, v in unit_per_task.items()}
    rows = cost_model(per_task, unit_per_task)
    rows_larger = cost_model(larger, unit_larger)
    compute = rows[0][1]
    lines += [
        "Cost model: 1,000,000 tasks of 1 s at 1,769 MB on Lambda (x86), us-east-1 public "
        "prices (Lambda $0.0000166667/GB-s and $0.20 per million requests; Step Functions "
        "Standard $0.025 per 1,000 transitions; S3 $0.005 per 1,000 PUT and $0.0004 per "
        "1,000 GET; DynamoDB on-demand $0.625 per million write units and $0.125 per million "
        "read units; sources in `bench/aws_requests.py`). The first column uses the counts "
        f"measured above (chunksize {chunksize}); the second scales the once-per-chunk terms "
        f"to chunksize {LARGER_CHUNKSIZE} (30-second chunks), everything else unchanged:",
        "",
        f"| item | USD, chunksize {chunksize} | USD, chunksize {LARGER_CHUNKSIZE} | from "
        f"(chunksize {chunksize}) |",
        "|---|---|---|---|",
    ]
    for (name, cost, basis), (_, cost_larger, _) in zip(rows, rows_larger, strict=True):
        lines.append(f"| {name} | {cost:,.2f} | {cost_larger:,.2f} | {basis} |")
    share = sum(cost for _, cost, _ in rows[1:]) / compute
    verdict = "met" if share <= 0.10 else "**not met**"
    share_larger = sum(cost for _, cost, _ in rows_larger[1:]) / compute
    verdict_larger = "met" if share_larger <= 0.10 else "**not met**"
    lines += [
        f"| **orchestration / compute** | **{share:.1%}** ({verdict}) | **{share_larger:.1%}**"
        f" ({verdict_larger}) | target <= 10% |",
        "",
        "What the analysis after this section says about each term is kept outside the "
        "generated block.",
        END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--chunksize", type=int, default=10)
    parser.add_argument("--output", default="docs/benchmarks.md")
    args = parser.parse_args(argv)
    counts, transitions, wall, units = run_job(args.tasks, args.chunksize)
    section = render(args.tasks, args.chunksize, counts, transitions, wall, units)
    print(section)
    if args.output:
        write_section(Path(args.output), section, START, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
