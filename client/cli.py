"""The ``fanout`` command: run the demo, and inspect, retry, cancel and plot jobs.

Every command that takes a job id works from any shell, while the job runs or long
after, because everything it shows comes from the store.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__, packing
from .backends import create_backend
from .errors import ConfigurationError, FanoutError, InvalidArgument
from .job import Job
from .protocol import FAILED, SUCCEEDED, TASK_STATES, ResultRecord


def _backend_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"home": args.home} if args.home else {}


def _attach(args: argparse.Namespace) -> Job:
    return Job.attach(args.job, args.backend, **_backend_options(args))


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _when(stamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


# -- commands ---------------------------------------------------------------------------------


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import estimate_pi
    from .executor import Executor

    print(f"fanout demo: estimating pi from {args.tasks:,} tasks of {args.draws:,} random "
          f"points each, on {args.workers or os.cpu_count()} local worker processes")
    started = time.perf_counter()
    with Executor(args.workers, backend=args.backend, seed=args.seed, chunksize=args.chunksize,
                  progress=None if not args.quiet else False, **_backend_options(args)) as ex:
        results = ex.map(estimate_pi, [args.draws] * args.tasks)
        estimates = list(results)
        job = Job.attach(results.job_id, args.backend, **_backend_options(args))
    wall = time.perf_counter() - started
    estimate = sum(estimates) / len(estimates)
    import math

    print(f"\npi ~ {estimate:.6f}  (error {estimate - math.pi:+.2e}; "
          f"{args.tasks * args.draws:,} points)")
    print(f"wall time {wall:.2f} s; job {job.job_id}\n")
    per_worker: dict[str, list[float]] = {}
    for record in job.records():
        per_worker.setdefault(record.worker_id, []).append(record.duration)
    rows = [(worker.rsplit("/", 1)[-1], len(times), f"{sum(times):.2f}")
            for worker, times in sorted(per_worker.items())]
    print(_table(rows, ("worker", "tasks", "busy seconds")))
    print(f"\nnext: fanout status {job.job_id} | fanout plot {job.job_id} -o timeline.png")
    return 0


def _n_calls(backend: Any, info: Any) -> int:
    """The job's tasks as the user counts them: a packed map's calls, not its chunks."""
    if not info.spec.options.pack:
        return int(info.spec.n_tasks)
    return packing.element_count(backend.store, info.spec)


def cmd_jobs(args: argparse.Namespace) -> int:
    backend = create_backend(args.backend, **_backend_options(args))
    rows = []
    for info in backend.list_jobs(args.limit):
        # A job that never finished (orphaned, or still running) has no summary yet: count
        # its stored results instead of leaving ok/failed blank.
        summary = info.summary or backend.counts(info.job_id)
        state = "orphaned" if info.orphaned else info.state
        rows.append((info.job_id, _when(info.spec.created), info.spec.kind,
                     info.spec.function.rsplit(".", 1)[-1], _n_calls(backend, info), state,
                     summary.get(SUCCEEDED, ""), summary.get(FAILED, "")))
    if not rows:
        print("no jobs yet; try `fanout demo`")
        return 0
    print(_table(rows, ("job", "created", "kind", "function", "tasks", "state", "ok", "failed")))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    job = _attach(args)
    info = job.info
    counts = job.status()
    from .cost import describe

    cost = job.summary()["cost"]
    if args.json:
        print(json.dumps({"job_id": job.job_id, "state": info.state, "orphaned": info.orphaned,
                          "counts": counts, "summary": info.summary, "cost": cost}, indent=2))
        return 0
    state = f"{info.state} (orphaned: its client {info.owner} is gone)" if info.orphaned \
        else info.state
    print(f"job {job.job_id}: {info.spec.function}, {job.n_tasks} tasks, {state}")
    print("  " + "  ".join(f"{name} {counts[name]}" for name in TASK_STATES))
    if info.summary:
        print(f"  task time {info.summary.get('task_seconds', 0):.2f} s over "
              f"{info.summary.get('wall_seconds', 0):.2f} s wall, "
              f"{info.summary.get('workers', 0)} workers")
    print(f"  {describe(cost)}")
    if info.orphaned:
        print(f"  run `fanout retry {job.job_id}` to finish it")
    return 0


def cmd_results(args: argparse.Namespace) -> int:
    job = _attach(args)
    from . import serialization

    backend = create_backend(args.backend, **_backend_options(args))
    if args.json:
        return _print_results_json(job, backend)
    failed = 0
    records = {r.task_index: r for r in job.records()}
    for index in range(job.n_tasks):  # every task, with its state: a missing one is pending
        record = records.get(index)
        if record is None:
            failed += 1
            print(f"{index}\t<pending: no result yet>")
            continue
        if record.status == SUCCEEDED:
            value = serialization.loads(backend.load_value(record))
            text = json.dumps(value, default=repr) if args.json else repr(value)
        else:
            failed += record.status == FAILED
            detail = f"{record.exc_type or ''} {record.exc_message or ''}".strip()
            text = f"<{record.status}: {detail}>" if detail else f"<{record.status}>"
        print(f"{record.task_index}\t{text}")
    return 1 if failed else 0


def _print_results_json(job: Job, backend: Any) -> int:
    """JSON Lines: one object per task, in task order, every task (finished or not).

    One object per line rather than one document, so a million-task job streams through
    ``jq``/``head`` without being held in memory; ``jq -s`` makes it one array.
    """
    records = {record.task_index: record for record in job.records()}
    failed = 0
    for index in range(job.n_tasks):
        record = records.get(index)
        row: dict[str, Any] = {"task": index}
        if record is None:
            row["state"] = "unfinished"  # pending or running: no result stored yet
        else:
            row.update(state=record.status, attempt=record.attempt, worker=record.worker_id,
                       seconds=round(record.duration, 6))
            if record.status == SUCCEEDED:
                row.update(_json_value(backend, record))
            else:
                failed += record.status == FAILED
                row["error"] = {"type": record.exc_type, "message": record.exc_message}
        print(json.dumps(row, allow_nan=False))
    return 1 if failed else 0


def _json_value(backend: Any, record: ResultRecord) -> dict[str, Any]:
    """``{"value": v}`` when ``v`` is plain JSON, else ``{"repr": repr(v)}`` (never lossy JSON)."""
    from . import serialization

    try:
        value = serialization.loads(backend.load_value(record))
    except Exception as exc:
        return {"repr": None, "unreadable": f"cannot unpickle the result here: {exc!r}"}
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return {"repr": repr(value)}
    return {"value": value}


def cmd_logs(args: argparse.Namespace) -> int:
    job = _attach(args)
    if not 0 <= args.task < job.n_tasks:
        raise SystemExit(f"fanout: job {job.job_id} has tasks 0..{job.n_tasks - 1}, "
                         f"not {args.task}")
    pack = job.info.spec.options.pack
    if pack:  # a packed map's call: its own record, its chunk's output (fanout.packing)
        record = next((r for r in job.records() if r.task_index == args.task), None)
    else:
        record = job._backend.record(job.job_id, args.task)
    if record is None:
        print(f"task {args.task} has not finished; its output appears when it does",
              file=sys.stderr)
        return 1
    output = job._backend.logs(job.job_id, args.task // pack if pack else args.task,
                               args.stream)
    sys.stdout.write(output)
    if record.status == FAILED and record.traceback and args.stream != "stdout":
        sys.stdout.write(f"\n--- task {args.task} failed (attempt {record.attempt}) ---\n")
        sys.stdout.write(record.traceback)
    elif not output:  # say so on stderr: silence looks like a broken command
        streams = "stdout or stderr" if args.stream == "both" else args.stream
        print(f"task {args.task} of job {job.job_id} ({record.status}) wrote no output on "
              f"{streams}", file=sys.stderr)
    return 0


def cmd_retry(args: argparse.Namespace) -> int:
    job = _attach(args)
    before = job.status()
    todo = job.n_tasks - before[SUCCEEDED]
    print(f"job {job.job_id}: re-running {todo} of {job.n_tasks} tasks")
    counts = job.retry()
    print("  " + "  ".join(f"{name} {counts[name]}" for name in TASK_STATES))
    return 0 if counts[SUCCEEDED] == job.n_tasks else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    job = _attach(args)
    job.cancel()
    counts = job.status()
    print(f"job {job.job_id}: {job.info.state}; "
          + "  ".join(f"{name} {counts[name]}" for name in TASK_STATES))
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .timeline import plot_timeline

    job = _attach(args)
    path = plot_timeline(job.records(), args.output,
                         title=f"job {job.job_id}: {job.info.spec.function}")
    print(f"wrote {path}")
    return 0


def cmd_configure(args: argparse.Namespace) -> int:
    from .backends.aws.config import configure_from_stack

    path = configure_from_stack(args.stack, region=args.region, home=args.home)
    saved = json.loads(path.read_text())
    print(f"wrote {path}")
    for key in ("bucket", "table", "state_machine_arn", "job_queue_arn", "python_runtime"):
        print(f"  {key:18} {saved[key]}")
    print('next: fanout.Executor(backend="aws") or FANOUT_BACKEND=aws')
    return 0


def _load(reference: str) -> Any:
    """``module:function`` from the current directory or the installed packages."""
    import importlib

    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise InvalidArgument(f"expected MODULE:FUNCTION, got {reference!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise InvalidArgument(f"cannot load {reference!r}: {exc}") from exc


def _items_json(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise InvalidArgument(f"cannot read --items-json {path}: {exc.strerror or exc}"
                              ) from exc
    except ValueError as exc:
        raise InvalidArgument(f"--items-json {path} is not JSON: {exc}") from exc


def _schedule_backend(args: argparse.Namespace) -> Any:
    return create_backend(args.backend, **_backend_options(args))


def _print_schedule(spec: Any) -> None:
    from .schedules import show_time

    upcoming = show_time(spec.next_fire, spec.timezone) if spec.next_fire else "-"
    state = "enabled" if spec.enabled else "paused"
    print(f"{spec.name}: {spec.expression} ({spec.timezone}), {state}, next run {upcoming}")
    print(f"  runs {spec.function} over {spec.items_detail} ({spec.items})"
          + (f", reduced by {spec.reducer}" if spec.reducer else ""))


def cmd_schedule(args: argparse.Namespace) -> int:
    from .executor import Executor

    action = args.action
    if action not in ("list", "serve") and not args.name:
        raise InvalidArgument(f"`fanout schedule {action}` needs a schedule name")
    if action == "add":
        if args.items_json:
            items: Any = _items_json(args.items_json)
        elif args.items_s3:
            items = args.items_s3
        elif args.items_function:
            items = _load(args.items_function)
        else:
            raise InvalidArgument("give the items: --items-json FILE, --items-s3 "
                                  "s3://bucket/prefix/ or --items-function MODULE:FUNCTION")
        with Executor(backend=args.backend, progress=False, **_backend_options(args)) as ex:
            spec = ex.schedule(args.name, _load(args.function), items, cron=args.cron,
                               rate=args.rate, timezone=args.timezone,
                               reducer=_load(args.reducer) if args.reducer else None,
                               enabled=not args.disabled)
        _print_schedule(spec)
        return 0
    backend = _schedule_backend(args)
    try:
        if action == "list":
            specs = backend.list_schedules()
            if not specs:
                print("no schedules; add one with `fanout schedule add`")
            for spec in specs:
                _print_schedule(spec)
        elif action == "show":
            _print_schedule(backend.get_schedule(args.name))
        elif action in ("pause", "resume"):
            _print_schedule(backend.set_schedule_enabled(args.name, action == "resume"))
        elif action == "remove":
            backend.delete_schedule(args.name)
            print(f"removed schedule {args.name}; its past runs stay in the store")
        elif action == "runs":
            from .schedules import show_time

            zone = backend.get_schedule(args.name).timezone
            rows = [(r["job_id"] or "-", show_time(r["fired_at"], zone), r["state"])
                    for r in backend.schedule_runs(args.name)]
            print(_table(rows, ("job", "fired", "state")) if rows else "no runs yet")
        elif action == "serve":
            from .backends.local.backend import LocalBackend
            from .backends.local.scheduler import ScheduleRunner

            if not isinstance(backend, LocalBackend):
                raise InvalidArgument("`fanout schedule serve` runs local schedules; on "
                                      "AWS, EventBridge Scheduler fires them")
            print(f"serving schedules from {backend.store.home}; Ctrl-C to stop")
            ScheduleRunner(backend).serve()
    finally:
        backend.shutdown(wait=True)
    return 0


def _dashboard_token(args: argparse.Namespace) -> str | None:
    """The token from FANOUT_DASHBOARD_TOKEN or --token-file; never from argv (``ps``)."""
    from .web.server import TOKEN_ENV

    if args.token is not None:
        raise ConfigurationError(
            f"--token would show the token to every user of this machine (ps); put it in "
            f"{TOKEN_ENV} or in a file passed with --token-file")
    if args.token_file is not None:
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read the token file {args.token_file}: {exc}"
                                     ) from exc
        if not token:
            raise ConfigurationError(f"the token file {args.token_file} is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


def cmd_dashboard(args: argparse.Namespace) -> int:
    from .backends import backend_name
    from .web.server import make_server

    token = _dashboard_token(args)
    # On AWS the deployed API wants SigV4-signed requests, which a browser cannot make: this
    # serves the same API and page on this machine, reading the stack with your own
    # credentials (the profile or role boto3 finds).
    backend = args.dashboard_backend or args.backend
    server = make_server(args.host, args.port, token=token, backend=backend,
                         **_backend_options(args))
    host = f"[{args.host}]" if ":" in args.host else args.host
    hint = ("; open it with #token=YOUR-TOKEN after the address (the fragment is never sent)"
            if token else "")
    print(f"fanout dashboard ({backend_name(backend)} backend): http://{host}:{args.port}/  "
          f"(Ctrl-C to stop{hint})", flush=True)
    try:
        server.server.serve_forever()  # Chalice's serve_forever() would print the URL again
    except KeyboardInterrupt:
        print("fanout dashboard: stopped", file=sys.stderr)
    finally:
        server.server.server_close()
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    from .backends.local.store import LocalStore
    from .serialization import package_versions, python_version

    print(f"fanout {__version__} on Python {python_version()} ({sys.executable})")
    for name, version in package_versions().items():
        print(f"  {name} {version}")
    store = LocalStore(args.home)
    check = store.integrity_check()
    print(f"local store: {store.db_path} ({len(store.jobs(10_000))} jobs) integrity: {check}")
    return 0 if check == "ok" else 1


# -- parsing ---------------------------------------------------------------------------------


def _positive(text: str) -> int:
    """An argparse type: an integer of 1 or more (``--tasks 0`` is a usage error, not a crash)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is from 1 to 65535, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fanout", description="Fan Python calls out to workers; inspect and retry jobs.")
    parser.add_argument("--version", action="version", version=f"fanout {__version__}")
    parser.add_argument("--backend", help="backend name (default: $FANOUT_BACKEND or local)")
    parser.add_argument("--home", help="local store directory (default: $FANOUT_HOME or "
                                       "~/.fanout)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[[argparse.Namespace], int], help: str,
            job: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        if job:
            p.add_argument("job", help="job id (see `fanout jobs`)")
        return p

    demo = add("demo", cmd_demo, "estimate pi with a Monte Carlo job on local workers")
    demo.add_argument("--tasks", type=_positive, default=2000,
                      help="number of tasks (default 2000)")
    demo.add_argument("--draws", type=_positive, default=100_000, help="points per task")
    demo.add_argument("--workers", type=_positive, default=None, help="worker processes")
    demo.add_argument("--seed", type=int, default=2026, help="job seed (default 2026)")
    demo.add_argument("--chunksize", type=_positive, default=10, help="tasks per chunk")
    demo.add_argument("--quiet", action="store_true", help="no progress bar")
    jobs = add("jobs", cmd_jobs, "list recent jobs")
    jobs.add_argument("--limit", type=int, default=20)
    status = add("status", cmd_status, "task counts and state of a job", job=True)
    status.add_argument("--json", action="store_true")
    results = add("results", cmd_results, "print a job's results, one line per task", job=True)
    results.add_argument("--json", action="store_true",
                         help="JSON Lines: one object per task with its state and value")
    logs = add("logs", cmd_logs, "captured stdout/stderr of one task", job=True)
    logs.add_argument("task", type=int, help="task index")
    logs.add_argument("--stream", choices=("both", "stdout", "stderr"), default="both")
    add("retry", cmd_retry, "re-run the tasks that did not succeed; exit 0 when all have",
        job=True)
    add("cancel", cmd_cancel, "cancel a job; finished results are kept", job=True)
    plot = add("plot", cmd_plot, "draw a job's timeline (one lane per worker)", job=True)
    plot.add_argument("-o", "--output", required=True, help="image file, e.g. timeline.png")
    configure = add("configure", cmd_configure,
                    "read a deployed stack's outputs so backend='aws' can use it")
    configure.add_argument("--stack", required=True, help="CloudFormation stack name")
    configure.add_argument("--region", help="AWS region (default: your AWS configuration)")
    schedule = add("schedule", cmd_schedule, "scheduled runs: add, list, show, pause, resume, "
                                             "remove, runs, serve")
    schedule.add_argument("action", choices=("add", "list", "show", "pause", "resume",
                                             "remove", "runs", "serve"))
    schedule.add_argument("name", nargs="?", help="schedule name")
    schedule.add_argument("--function", help="MODULE:FUNCTION to run on each item (add)")
    schedule.add_argument("--items-json", help="a JSON file holding the list of items (add)")
    schedule.add_argument("--items-s3", help="s3://bucket/prefix/: one task per object (add)")
    schedule.add_argument("--items-function", help="MODULE:FUNCTION returning the items at "
                                                    "run time (add)")
    schedule.add_argument("--cron", help="e.g. 'cron(0 2 * * ? *)' (add)")
    schedule.add_argument("--rate", help="e.g. 'rate(1 hour)' (add)")
    schedule.add_argument("--timezone", default="UTC", help="IANA name, e.g. Europe/Zurich")
    schedule.add_argument("--reducer", help="MODULE:FUNCTION reducing each run's results")
    schedule.add_argument("--disabled", action="store_true", help="add it paused")
    dashboard = add("dashboard", cmd_dashboard, "serve the jobs API and dashboard locally")
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=_port, default=8765)
    dashboard.add_argument("--token-file", help="file holding the API token (or set "
                                                "FANOUT_DASHBOARD_TOKEN); required beyond "
                                                "loopback")
    dashboard.add_argument("--token", help=argparse.SUPPRESS)  # refused with a reason
    dashboard.add_argument("--backend", dest="dashboard_backend",
                           help="local or aws (the stack `fanout configure` saved)")
    add("doctor", cmd_doctor, "check this installation and the local store")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.fn(args))
    except FanoutError as exc:  # what was wrong and what to do; anything else is a bug
        print(f"fanout: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `fanout results JOB | head`: the reader has all it wants
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        print("fanout: interrupted; finished results are kept in the store", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
