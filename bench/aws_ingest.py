"""How fast the aws backend's client absorbs results: poll, unpickle, resolve (issue 13).

    python bench/aws_ingest.py [--records 20000] [--repeat 3] [--output docs/scale.md]

A 10,000-way job produces 10,000 results per second; the client must poll them, turn each
item into a :class:`~fanout.protocol.ResultRecord`, unpickle its value and resolve its
future at that rate, on one core. This measures that path and separates who spends what:

1. **End to end against the emulation's store.** ``fanout.testing.emulated_aws()`` (moto,
   in this process, on 127.0.0.1) holds ``--records`` task records written with
   ``AwsStore._item`` (the workers' exact layout) in the table built from ``template.yaml``.
   The client's own code then ingests them: ``AwsStore.results_since`` (the ``by_finished``
   query with its pages) and ``JobRun.deliver`` for every record, as ``AwsBackend._poll``
   does. Wall time includes moto serving the queries; the calling thread's CPU time
   (``time.thread_time``: moto's server runs in other threads) is the client's share.
2. **The client alone, stage by stage.** The same query responses, captured as the bytes
   DynamoDB sends, are parsed by botocore without a network, then converted
   (``AwsStore._record``), then delivered (unpickle + resolve). This is what one client
   core can do, with no server in the way. A re-read record (today's poll re-reads the
   last 5 s every cycle) costs parse + convert + a no-op deliver.
3. **The peer floor:** ``pickle.loads`` of the value and ``Future.set_result`` on a stdlib
   future, nothing else, measured in the same run: the ratio says how much the client's
   path costs over the irreducible work.
4. **The proposed page layout** (docs/scale.md): 8 records per item in a map attribute,
   decoded by a prototype (``decode_page`` below, benchmark-only) and the KEYS_ONLY index
   entries the new poll re-reads; these feed ``bench/scale_model.py``.

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
    worker = f"lambda/{uuid.uuid4()}"
    items = [store._item(make_record(job_id, i, worker)) for i in range(n)]
    for start in range(0, n, 25):
        request: dict[str, Any] = {store.table: [{"PutRequest": {"Item": item}}
                                                 for item in items[start:start + 25]]}
        while request:
            response = store.dynamodb.batch_write_item(RequestItems=request)
            request = response.get("UnprocessedItems") or {}


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


def capture_bodies(store: AwsStore, job_id: str) -> list[bytes]:
    """The by_finished query's response pages as the JSON bytes DynamoDB sends."""
    bodies = []
    kwargs: dict[str, Any] = {
        "TableName": store.table, "IndexName": "by_finished",
        "KeyConditionExpression": "job_id = :j AND finished > :since",
        "ExpressionAttributeValues": {":j": {"S": job_id}, ":since": {"N": "0"}}}
    while True:
        page = store.dynamodb.query(**kwargs)
        bodies.append(json.dumps({"Count": page["Count"], "ScannedCount": page["Count"],
                                  "Items": [_wire(item) for item in page["Items"]]}).encode())
        if "LastEvaluatedKey" not in page:
            return bodies
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


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


def parser_for(store: AwsStore) -> Callable[[bytes], list[dict[str, Any]]]:
    """botocore's own response parser for Query, without a network."""
    from botocore.parsers import create_parser

    model = store.dynamodb.meta.service_model
    shape = model.operation_model("Query").output_shape
    parser = create_parser(model.metadata["protocol"])

    def parse(body: bytes) -> list[dict[str, Any]]:
        parsed = parser.parse({"body": body, "headers": {}, "status_code": 200}, shape)
        items: list[dict[str, Any]] = parsed["Items"]
        return items

    return parse


def wire_record(item: dict[str, Any]) -> ResultRecord:
    """A prototype of the recommended decoder: DynamoDB's wire JSON straight to a record.

    botocore's shape-driven parser walks every attribute of every item through generic
    handlers; the ``by_finished`` items have one fixed layout, so a ``before-parse`` hook
    can ``json.loads`` the body and build records directly (benchmark-only here).
    """
    def text(name: str) -> str | None:
        value = item.get(name)
        return value["S"] if value is not None else None

    def blob(name: str) -> bytes | None:
        value = item.get(name)
        return base64.b64decode(value["B"]) if value is not None else None

    worker = item["worker_id"]["S"]
    extra = item.get("extra")
    return ResultRecord(
        job_id=item["job_id"]["S"], task_index=int(item["task_index"]["N"]),
        status=item["status"]["S"], attempt=int(item["attempt"]["N"]),
        worker_id="" if worker == "-" else worker, started=float(item["started"]["N"]),
        ended=float(item["ended"]["N"]), value=blob("value"), value_ref=text("value_ref"),
        exc_type=text("exc_type"), exc_message=text("exc_message"),
        traceback=text("traceback"), exc_pickle=blob("exc_pickle"),
        stdout=text("stdout") or "", stderr=text("stderr") or "",
        extra=json.loads(extra["S"]) if extra is not None else {})


def best(fn: Callable[[], float], repeat: int) -> float:
    return min(fn() for _ in range(repeat))


def stages(store: AwsStore, job_id: str, bodies: list[bytes], n: int, repeat: int
           ) -> dict[str, float]:
    """Seconds per record of each client stage, best of ``repeat``."""
    parse = parser_for(store)
    items = [item for body in bodies for item in parse(body)]
    records = [AwsStore._record(item) for item in items]

    def t_parse() -> float:
        t0 = time.thread_time()
        for body in bodies:
            parse(body)
        return (time.thread_time() - t0) / n

    def t_record() -> float:
        t0 = time.thread_time()
        for item in items:
            AwsStore._record(item)
        return (time.thread_time() - t0) / n

    def t_deliver() -> float:
        run = new_run(job_id, n)
        t0 = time.thread_time()
        for record in records:
            run.deliver(record)
        return (time.thread_time() - t0) / n

    def t_redeliver() -> float:
        run = new_run(job_id, n)
        for record in records:
            run.deliver(record)
        t0 = time.thread_time()
        for record in records:
            run.deliver(record)
        return (time.thread_time() - t0) / n

    def t_wire() -> float:
        run = new_run(job_id, n)
        t0 = time.thread_time()
        for body in bodies:
            for item in json.loads(body)["Items"]:
                run.deliver(wire_record(item))
        elapsed = time.thread_time() - t0
        if not run.map_finished or run.futures[5].result() != 35:
            raise RuntimeError("the wire decoder lost or garbled records")
        return elapsed / n

    def t_floor() -> float:
        values = [r.value or b"" for r in records]
        futures: list[StdFuture[Any]] = [StdFuture() for _ in range(n)]
        t0 = time.thread_time()
        for future, value in zip(futures, values, strict=True):
            future.set_result(pickle.loads(value))
        return (time.thread_time() - t0) / n

    return {"parse": best(t_parse, repeat), "record": best(t_record, repeat),
            "deliver": best(t_deliver, repeat), "redeliver": best(t_redeliver, repeat),
            "wire": best(t_wire, repeat),
            "floor": best(t_floor, repeat)}


# -- 4. the proposed page layout (prototype decoder, benchmark only) -----------------------


def page_items(job_id: str, n: int) -> list[dict[str, Any]]:
    """The proposed result pages (docs/scale.md) for ``n`` tasks, in wire JSON."""
    worker = f"lambda/{uuid.uuid4()}"
    items = []
    for first in range(0, n, PAGE_TASKS):
        tasks = {}
        for index in range(first, min(n, first + PAGE_TASKS)):
            record = make_record(job_id, index, worker)
            tasks[str(index - first)] = {"M": {
                "s": {"S": record.status}, "a": {"N": str(record.attempt)},
                "w": {"N": "0"}, "b": {"N": repr(record.started)},
                "e": {"N": repr(record.ended)},
                "v": {"B": base64.b64encode(record.value or b"").decode()}}}
        chunk, page = divmod(first, 200)
        items.append({"job_id": {"S": f"{job_id}#{chunk % 4:02d}"},
                      "item": {"S": f"p#{chunk:07d}#{page // PAGE_TASKS:04d}"},
                      "first": {"N": str(first)}, "finished": {"N": "1795000001123"},
                      "workers": {"L": [{"S": worker}]}, "t": {"M": tasks}})
    return items


def decode_page(item: dict[str, Any]) -> list[ResultRecord]:
    """A page item (botocore's parsed form) to its task records."""
    job_id = item["job_id"]["S"].rpartition("#")[0]
    first = int(item["first"]["N"])
    workers = [w["S"] for w in item["workers"]["L"]]
    out = []
    for offset, entry in item["t"]["M"].items():
        t = entry["M"]
        value = t.get("v")
        out.append(ResultRecord(
            job_id, first + int(offset), t["s"]["S"], int(t["a"]["N"]),
            workers[int(t["w"]["N"])], float(t["b"]["N"]), float(t["e"]["N"]),
            value=bytes(value["B"]) if value else None,
            value_ref=t["r"]["S"] if "r" in t else None))
    return out


def proposed_stages(store: AwsStore, n: int, repeat: int) -> dict[str, float]:
    parse = parser_for(store)
    job_id = new_job_id()
    items = page_items(job_id, n)
    per_body = 1000  # ~640-byte pages: ~1,600 fit a 1 MB query page; BatchGetItem takes 100
    bodies = [json.dumps({"Count": len(items[i:i + per_body]),
                          "Items": items[i:i + per_body]}).encode()
              for i in range(0, len(items), per_body)]
    keys = [{k: item[k] for k in ("job_id", "item", "finished")} for item in items]
    key_bodies = [json.dumps({"Count": len(keys[i:i + 4000]), "Items": keys[i:i + 4000]}
                             ).encode() for i in range(0, len(keys), 4000)]

    def t_pages() -> float:
        run = new_run(job_id, n)
        t0 = time.thread_time()
        for body in bodies:
            for item in parse(body):
                for record in decode_page(item):
                    run.deliver(record)
        elapsed = time.thread_time() - t0
        if not run.map_finished:
            raise RuntimeError("the page decoder lost records")
        return elapsed / n

    def t_keys() -> float:
        t0 = time.thread_time()
        for body in key_bodies:
            parse(body)
        return (time.thread_time() - t0) / len(keys)

    return {"page_task": best(t_pages, repeat), "key": best(t_keys, repeat)}


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
        store = AwsStore(AwsConfig(bucket=options["bucket"], table=options["table"],
                                   state_machine_arn=options["state_machine_arn"],
                                   region=options["region"], endpoint_url=aws.endpoint_url))
        job_id = new_job_id()
        t0 = time.perf_counter()
        populate(store, job_id, n)
        populate_s = time.perf_counter() - t0
        runs = [end_to_end(store, job_id, n) for _ in range(repeat)]
        e2e = min(runs, key=lambda r: r["client_cpu"])
        bodies = capture_bodies(store, job_id)
        st = stages(store, job_id, bodies, n, repeat)
        new = proposed_stages(store, n, repeat)
        top = profile_top(store, job_id, n)
    return {"n": n, "repeat": repeat, "populate_s": populate_s, "e2e": e2e, "stages": st,
            "new": new, "top": top, "pages": len(bodies),
            "body_bytes": sum(len(b) for b in bodies)}


def render(m: dict[str, Any]) -> str:
    n, e2e, st, new = m["n"], m["e2e"], m["stages"], m["new"]
    client = st["parse"] + st["record"] + st["deliver"]
    reread = st["parse"] + st["record"] + st["redeliver"]
    e2e_cpu = e2e["client_cpu"] / n
    verdict = "met" if 1 / client >= TARGET else "**not met**"
    lines = [
        START,
        "### Client ingest rate (bench/aws_ingest.py)",
        "",
        f"- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; Python "
        f"{platform.python_version()}; {n:,} task records (small int results, "
        f"{m['body_bytes'] / n:.0f} bytes each on the wire, {m['pages']} query pages); best "
        f"of {m['repeat']} runs",
        f"- Command: `.venv/bin/python bench/aws_ingest.py --records {n}`",
        "",
        "| path | per result | results / s / core | note |",
        "|---|---|---|---|",
        f"| end to end on moto: wall (client + moto serving the query) | "
        f"{e2e['wall'] / n * 1e6:.1f} µs | {n / e2e['wall']:,.0f} | {e2e['polls']:.0f} "
        "polls; moto's in-process server included |",
        f"| end to end on moto: client thread CPU | {e2e_cpu * 1e6:.1f} µs | "
        f"{1 / e2e_cpu:,.0f} | urllib3 + botocore + convert + deliver |",
        f"| moto's share (process CPU - client thread CPU) | "
        f"{(e2e['process_cpu'] - e2e['client_cpu']) / n * 1e6:.1f} µs | — | not on AWS |",
        f"| client, offline: botocore parse of the query pages | {st['parse'] * 1e6:.1f} µs "
        f"| {1 / st['parse']:,.0f} | JSON + shape-driven typing, base64 of the value |",
        f"| client, offline: `AwsStore._record` | {st['record'] * 1e6:.1f} µs | "
        f"{1 / st['record']:,.0f} | item to ResultRecord (json.loads of `extra`) |",
        f"| client, offline: `JobRun.deliver` (unpickle + resolve) | "
        f"{st['deliver'] * 1e6:.1f} µs | {1 / st['deliver']:,.0f} | |",
        f"| **client, offline: parse + convert + deliver** | **{client * 1e6:.1f} µs** | "
        f"**{1 / client:,.0f}** | target ≥ {TARGET:,}: {verdict} |",
        f"| client, offline: a re-read record (today's 5-s poll overlap) | "
        f"{reread * 1e6:.1f} µs | — | parse + convert + no-op deliver |",
        f"| recommended decoder (prototype): `json.loads` of the body + direct wire "
        f"decoding + deliver | {st['wire'] * 1e6:.1f} µs | {1 / st['wire']:,.0f} | "
        f"{client / st['wire']:.1f}x faster than botocore's path |",
        f"| peer floor: `pickle.loads` + stdlib `Future.set_result` | "
        f"{st['floor'] * 1e6:.1f} µs | {1 / st['floor']:,.0f} | client path = "
        f"{client / st['floor']:.1f}x the floor |",
        f"| proposed pages (8 tasks per item): parse + decode + deliver, per task | "
        f"{new['page_task'] * 1e6:.1f} µs | {1 / new['page_task']:,.0f} | prototype "
        "decoder in bench/aws_ingest.py |",
        f"| proposed poll: one KEYS_ONLY index entry re-read | {new['key'] * 1e6:.1f} µs | "
        "— | |",
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
