"""How fast the aws backend's client absorbs results: poll, unpickle, resolve (issue 13).

    python bench/aws_ingest.py [--records 20000] [--repeat 3] [--output docs/scale.md]

A 10,000-way job produces 10,000 results per second; the client must poll them, turn each
page item into :class:`~fanout.protocol.ResultRecord` s, unpickle each value and resolve its
future at that rate, on one core. This measures that path and separates who spends what:

1. **End to end against the emulation's store.** ``fanout.testing.emulated_aws()`` (moto,
   in this process, on 127.0.0.1) holds ``--records`` task records written by
   ``AwsStore.put_results`` (the workers' exact write: result pages of 8 tasks over the
   shards planned for 10,000 concurrent tasks) in the table built from ``template.yaml``.
   The client's own code then ingests them: ``AwsStore.results_since`` (the KEYS_ONLY
   ``by_written`` queries, then a strongly consistent BatchGetItem of the new pages) and
   ``JobRun.deliver`` for every record, as ``AwsBackend._poll`` does. Wall time includes
   moto serving the requests; the calling thread's CPU time (``time.thread_time``: moto's
   server runs in other threads) is the client's share.
2. **The client alone, stage by stage.** The same BatchGetItem responses, captured as the
   bytes DynamoDB sends, are parsed by botocore without a network, then decoded
   (``AwsStore._records_of``), then delivered (unpickle + resolve). A key the poll re-reads
   in its 5-s overlap costs the parse of one KEYS_ONLY index entry.
3. **The peer floor:** ``pickle.loads`` of the value and ``Future.set_result`` on a stdlib
   future, nothing else, measured in the same run: the ratio says how much the client's
   path costs over the irreducible work.

Results per second per core = 1 / (client CPU per result). The target is >= 10,000.
Every figure is the best of ``--repeat`` runs; a cProfile of one end-to-end run says where
the client's time goes.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import datetime
import io
import json
import pickle
import platform
import pstats
import sys
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future as StdFuture
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.run import write_section
from fanout import serialization
from fanout.backends.aws.config import AwsConfig
from fanout.backends.aws.layout import plan_layout
from fanout.backends.aws.store import AwsStore
from fanout.collector import JobRun
from fanout.future import Future
from fanout.ids import new_job_id
from fanout.options import TaskOptions
from fanout.protocol import SUCCEEDED, JobSpec, ResultRecord

START, END = "<!-- bench:aws-ingest:start -->", "<!-- bench:aws-ingest:end -->"
TARGET = 10_000
PAGE_TASKS = 8


class _NoLogs:
    """The futures' log source; the benchmark never reads logs."""

    def logs(self, job_id: str, task_index: int, stream: str) -> str:
        return ""


def make_record(job_id: str, index: int, worker: str) -> ResultRecord:
    """A finished 1-s task that returned a small int, as a Lambda worker stores it."""
    started = 1795000000.0 + index / 1000
    return ResultRecord(job_id, index, SUCCEEDED, 1, worker, started, started + 1.0,
                        value=serialization.dumps_value(index * 7),
                        extra={"checkpoint": False})


def new_run(job_id: str, n: int) -> JobRun:
    spec = JobSpec(job_id, "map", "bench.noop", n, 0, TaskOptions(), "3.11", {}, time.time(),
                   "bench")
    source = _NoLogs()
    futures = [Future(job_id, i, source) for i in range(n)]  # type: ignore[arg-type]
    store_value: Callable[[ResultRecord], bytes] = lambda r: r.value or b""  # noqa: E731
    return JobRun(spec, futures, store_value)


# -- 1. end to end against moto ------------------------------------------------------------


def populate(store: AwsStore, job_id: str, n: int) -> None:
    """Chunks of 200 tasks write their pages as the workers' flusher does."""
    worker = f"lambda/{uuid.uuid4()}"
    for start in range(0, n, 200):
        store.put_results([make_record(job_id, i, worker)
                           for i in range(start, min(n, start + 200))])


def end_to_end(store: AwsStore, job_id: str, n: int) -> dict[str, float]:
    """One client ingest of ``n`` stored records: wall, client CPU, process CPU."""
    run = new_run(job_id, n)
    wall0, cpu0, proc0 = time.perf_counter(), time.thread_time(), time.process_time()
    cursor, polls = 0, 0
    while not run.map_finished:
        records, cursor = store.results_since(job_id, cursor)
        for record in records:
            run.deliver(record)
        polls += 1
        if polls > 100:
            raise RuntimeError("the records did not all come back")
    wall, cpu, proc = (time.perf_counter() - wall0, time.thread_time() - cpu0,
                       time.process_time() - proc0)
    if [f.result() for f in run.futures[:3]] != [0, 7, 14]:
        raise RuntimeError("wrong values delivered")
    return {"wall": wall, "client_cpu": cpu, "process_cpu": proc, "polls": polls}


def capture(store: AwsStore, job_id: str) -> tuple[list[bytes], list[bytes], int]:
    """The poll's responses as the JSON bytes DynamoDB sends: BatchGetItem pages of page
    items, and the index queries' key pages; and how many keys those hold."""
    layout = store.layout(job_id)
    keys: list[dict[str, Any]] = []
    key_bodies = []
    for partition in layout.partitions(job_id):
        found = store._query(
            IndexName="by_written", KeyConditionExpression="job_id = :j AND written > :s",
            ExpressionAttributeValues={":j": {"S": partition}, ":s": {"N": "0"}})
        keys.extend(found)
        key_bodies.append(json.dumps({"Count": len(found), "Items": found}).encode())
    bodies = []
    for start in range(0, len(keys), 100):
        asked = [{"job_id": k["job_id"], "item": k["item"]} for k in keys[start:start + 100]]
        items = store._batch_get(asked)
        bodies.append(json.dumps({"Responses": {store.table: [_wire(i) for i in items]}}
                                 ).encode())
    return bodies, key_bodies, len(keys)


def _wire(value: Any) -> Any:
    """botocore's parsed form back to DynamoDB's wire JSON (binary as base64)."""
    if isinstance(value, dict):
        if set(value) == {"B"}:
            return {"B": base64.b64encode(bytes(value["B"])).decode()}
        return {k: _wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_wire(v) for v in value]
    return value


# -- 2. the client's stages, offline -------------------------------------------------------


def parser_for(store: AwsStore, operation: str) -> Callable[[bytes], list[dict[str, Any]]]:
    """botocore's own response parser, without a network."""
    from botocore.parsers import create_parser

    model = store.dynamodb.meta.service_model
    shape = model.operation_model(operation).output_shape
    parser = create_parser(model.metadata["protocol"])

    def parse(body: bytes) -> list[dict[str, Any]]:
        parsed = parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)
        items: list[dict[str, Any]] = (parsed["Items"] if operation == "Query"
                                       else parsed["Responses"][store.table])
        return items

    return parse


def best(fn: Callable[[], float], repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def stages(store: AwsStore, job_id: str, bodies: list[bytes], key_bodies: list[bytes],
           n_keys: int, n: int, repeat: int) -> dict[str, float]:
    """Seconds per record of each client stage, best of ``repeat``."""
    parse = parser_for(store, "BatchGetItem")
    parse_keys = parser_for(store, "Query")
    items = [item for body in bodies for item in parse(body)]
    records = [r for item in items for r in store._records_of(job_id, item)]

    def t_parse() -> float:
        t0 = time.thread_time()
        for body in bodies:
            parse(body)
        return (time.thread_time() - t0) / n

    def t_record() -> float:
        t0 = time.thread_time()
        for item in items:
            store._records_of(job_id, item)
        return (time.thread_time() - t0) / n

    def t_deliver() -> float:
        run = new_run(job_id, n)
        t0 = time.thread_time()
        for record in records:
            run.deliver(record)
        if not run.map_finished:
            raise RuntimeError("records were lost")
        return (time.thread_time() - t0) / n

    def t_key() -> float:
        t0 = time.thread_time()
        for body in key_bodies:
            parse_keys(body)
        return (time.thread_time() - t0) / n_keys

    def t_floor() -> float:
        values = [r.value or b"" for r in records]
        futures: list[StdFuture[Any]] = [StdFuture() for _ in range(n)]
        t0 = time.thread_time()
        for future, value in zip(futures, values, strict=True):
            future.set_result(pickle.loads(value))
        return (time.thread_time() - t0) / n

    return {"parse": best(t_parse, repeat), "record": best(t_record, repeat),
            "deliver": best(t_deliver, repeat), "key": best(t_key, repeat),
            "floor": best(t_floor, repeat)}


# -- report ---------------------------------------------------------------------------------


def profile_top(store: AwsStore, job_id: str, n: int, limit: int = 10) -> list[str]:
    profiler = cProfile.Profile(time.thread_time)  # this thread's CPU, not moto's
    profiler.enable()
    end_to_end(store, job_id, n)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime")
    rows = []
    entries = stats.stats.items()  # type: ignore[attr-defined]
    total = sum(v[2] for _, v in entries)
    for func, (_cc, calls, tottime, _cum, _callers) in sorted(
            entries, key=lambda kv: -kv[1][2])[:limit]:
        filename, line, name = func
        where = "/".join(Path(filename).parts[-2:]) if filename != "~" else "builtin"
        rows.append(f"| `{name}` ({where}:{line}) | {calls / n:,.1f} | {tottime / total:.0%} |")
    return rows


def measure(n: int, repeat: int) -> dict[str, Any]:
    from fanout.testing import emulated_aws

    with emulated_aws() as aws:
        options = aws.backend_options
        layout = plan_layout(10_000)
        store = AwsStore(AwsConfig(bucket=options["bucket"], table=options["table"],
                                   state_machine_arn=options["state_machine_arn"],
                                   region=options["region"], endpoint_url=aws.endpoint_url,
                                   layout=layout))
        job_id = new_job_id()
        t0 = time.perf_counter()
        populate(store, job_id, n)
        populate_s = time.perf_counter() - t0
        writes = sum(c for (_, s, op), c in aws.requests.items()
                     if (s, op) == ("dynamodb", "UpdateItem"))
        runs = [end_to_end(store, job_id, n) for _ in range(repeat)]
        e2e = min(runs, key=lambda r: r["client_cpu"])
        bodies, key_bodies, n_keys = capture(store, job_id)
        st = stages(store, job_id, bodies, key_bodies, n_keys, n, repeat)
        top = profile_top(store, job_id, n)
    return {"n": n, "repeat": repeat, "populate_s": populate_s, "e2e": e2e, "stages": st,
            "top": top, "pages": n_keys, "writes": writes, "layout": layout,
            "body_bytes": sum(len(b) for b in bodies)}


def render(m: dict[str, Any]) -> str:
    n, e2e, st = m["n"], m["e2e"], m["stages"]
    client = st["parse"] + st["record"] + st["deliver"]
    e2e_cpu = e2e["client_cpu"] / n
    verdict = "met" if 1 / e2e_cpu >= TARGET else "**not met**"
    layout = m["layout"]
    lines = [
        START,
        "### Client ingest rate (bench/aws_ingest.py)",
        "",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; Python "
        f"{platform.python_version()}; {n:,} task records (small int results) in "
        f"{m['pages']:,} result pages of {layout.page_tasks} over {layout.shards} shards "
        f"({m['writes']:,} conditional writes, {m['body_bytes'] / n:.0f} bytes per record "
        f"on the wire); best of {m['repeat']} runs",
        f"- Command: `.venv/bin/python bench/aws_ingest.py --records {n}`",
        "",
        "| path | per result | results / s / core | note |",
        "|---|---|---|---|",
        f"| end to end on moto: wall (client + moto serving the requests) | "
        f"{e2e['wall'] / n * 1e6:.1f} µs | {n / e2e['wall']:,.0f} | {e2e['polls']:.0f} "
        "polls; moto's in-process server included |",
        f"| **end to end on moto: client thread CPU** | **{e2e_cpu * 1e6:.1f} µs** | "
        f"**{1 / e2e_cpu:,.0f}** | urllib3 + botocore + decode + deliver; target ≥ "
        f"{TARGET:,}: {verdict} |",
        f"| moto's share (process CPU - client thread CPU) | "
        f"{(e2e['process_cpu'] - e2e['client_cpu']) / n * 1e6:.1f} µs | — | not on AWS |",
        f"| client, offline: botocore parse of the BatchGetItem pages | "
        f"{st['parse'] * 1e6:.1f} µs | {1 / st['parse']:,.0f} | per task record |",
        f"| client, offline: `AwsStore._records_of` | {st['record'] * 1e6:.1f} µs | "
        f"{1 / st['record']:,.0f} | page item to its records |",
        f"| client, offline: `JobRun.deliver` (unpickle + resolve) | "
        f"{st['deliver'] * 1e6:.1f} µs | {1 / st['deliver']:,.0f} | |",
        f"| client, offline: parse + decode + deliver | {client * 1e6:.1f} µs | "
        f"{1 / client:,.0f} | |",
        f"| a key re-read in the poll's 5-s overlap (KEYS_ONLY index entry) | "
        f"{st['key'] * 1e6:.1f} µs | — | skipped before any table read |",
        f"| peer floor: `pickle.loads` + stdlib `Future.set_result` | "
        f"{st['floor'] * 1e6:.1f} µs | {1 / st['floor']:,.0f} | client path = "
        f"{client / st['floor']:.1f}x the floor |",
        "",
        "Where the client's time goes (cProfile of one end-to-end ingest, timed by the "
        "client thread's CPU clock; share of the thread's profiled time, top 10):",
        "",
        "| function | calls per result | share of client CPU |",
        "|---|---|---|",
        *m["top"],
        END,
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", default="", help="markdown file to write the section to")
    args = parser.parse_args(argv)
    if args.records < PAGE_TASKS:
        parser.error(f"--records must be at least {PAGE_TASKS}")
    section = render(measure(args.records, args.repeat))
    print(section)
    if args.output:
        write_section(Path(args.output), section, START, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
