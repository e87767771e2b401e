"""Benchmark fanout's local backend against ProcessPoolExecutor and joblib, same worker count.

    python bench/run.py [--quick] [--workers N] [--output docs/benchmarks.md]

Why these scenarios: each isolates one cost a user of the local backend pays.

1. 10,000 no-op tasks, one future each: per-``submit`` overhead. fanout stores every call
   and result in SQLite, so this is where it is most likely to lose to a pure in-memory
   pool; the target is to be at least as fast as ``ProcessPoolExecutor``.
2. The same tasks through ``map`` with chunksize=100: overhead when calls are batched,
   the way a user should run many tiny tasks (informational, no target).
3. 200 CPU-bound tasks of ~10 ms: whether the machinery gets out of the way for real
   work; the target is a speed-up of at least 1.85x over a serial loop on 2 workers.
4. Peak client RSS with 100,000 pending futures: what fanning out many calls costs the
   client's memory while workers are busy; the target is at most 300 MB.

Every executor gets the same number of workers and is warmed up first, so process
start-up is excluded; each measurement is repeated 3 times (executors interleaved) and
the best is reported. The result is printed as markdown and written between the
``<!-- bench:local:start -->`` / ``<!-- bench:local:end -->`` markers of the output file.
``--quick`` divides every count by 10 for a smoke run and writes nothing unless
``--output`` is given.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime
import gc
import importlib
import importlib.metadata
import json
import math
import os
import pickle
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    # Run as a script, only bench/ is on sys.path; workers must import ``bench.tasks``.
    sys.path.insert(0, str(REPO_ROOT))

import fanout  # noqa: E402
from bench import tasks  # noqa: E402

START_MARKER = "<!-- bench:local:start -->"
END_MARKER = "<!-- bench:local:end -->"
DEFAULT_OUTPUT = REPO_ROOT / "docs" / "benchmarks.md"

REPEATS = 3
WARMUP_TASKS_PER_WORKER = 4
QUICK_DIVISOR = 10
CPU_TASK_SECONDS = 0.010
BLOCK_DEADLINE_SECONDS = 60.0
#: Wait this long after the last submit before reading the RSS high-water mark, so memory
#: used by background bookkeeping of the submitted calls (fanout's store writes) counts.
RSS_SETTLE_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 600.0

TARGET_SUBMIT_RATIO = 1.0
#: 1.85x on 2 workers, scaled linearly for other worker counts.
TARGET_SPEEDUP_PER_WORKER = 0.925
TARGET_RSS_MB = 300.0
MB = 1_000_000


@dataclass(frozen=True)
class Counts:
    no_op: int = 10_000
    chunksize: int = 100
    cpu_tasks: int = 200
    pending: int = 100_000

    def scaled(self, divisor: int) -> Counts:
        return Counts(self.no_op // divisor, self.chunksize, self.cpu_tasks // divisor,
                      self.pending // divisor)


# -- the executors under test ----------------------------------------------------------------


class Runner(Protocol):
    name: str

    def one_each(self, fn: Callable[[Any], Any], args: Sequence[Any]) -> list[Any]: ...

    def mapped(self, fn: Callable[[Any], Any], args: Sequence[Any],
               chunksize: int | None) -> list[Any]: ...


class FuturesRunner:
    """fanout and ProcessPoolExecutor: exactly the same ``concurrent.futures`` calls."""

    def __init__(self, name: str, executor: concurrent.futures.Executor) -> None:
        self.name = name
        self.executor = executor

    def one_each(self, fn: Callable[[Any], Any], args: Sequence[Any]) -> list[Any]:
        futures = [self.executor.submit(fn, arg) for arg in args]
        return [future.result() for future in futures]

    def mapped(self, fn: Callable[[Any], Any], args: Sequence[Any],
               chunksize: int | None) -> list[Any]:
        return list(self.executor.map(fn, args, chunksize=chunksize or 1))


class JoblibRunner:
    """joblib.Parallel on its default (loky) backend; it has no futures, only calls."""

    name = "joblib"

    def __init__(self, n_jobs: int) -> None:
        self.n_jobs = n_jobs

    def one_each(self, fn: Callable[[Any], Any], args: Sequence[Any]) -> list[Any]:
        return self.mapped(fn, args, None)

    def mapped(self, fn: Callable[[Any], Any], args: Sequence[Any],
               chunksize: int | None) -> list[Any]:
        from joblib import Parallel, delayed

        parallel = Parallel(n_jobs=self.n_jobs, batch_size=chunksize or "auto")
        return list(parallel(delayed(fn)(arg) for arg in args))


def warm_up(runner: Runner, workers: int) -> None:
    args = list(range(WARMUP_TASKS_PER_WORKER * workers))
    if runner.one_each(tasks.noop, args) != args:
        raise RuntimeError(f"{runner.name}: warm-up returned wrong results")


def shutdown_loky() -> None:
    loky = importlib.import_module("joblib.externals.loky")
    loky.get_reusable_executor().shutdown(wait=True)


def open_runners(stack: contextlib.ExitStack, workers: int) -> list[Runner]:
    """Start and warm up every executor; the process pool first, before fanout's threads."""
    ppe = stack.enter_context(concurrent.futures.ProcessPoolExecutor(max_workers=workers))
    pool = FuturesRunner("ProcessPoolExecutor", ppe)
    warm_up(pool, workers)
    joblib_runner = JoblibRunner(workers)
    warm_up(joblib_runner, workers)
    stack.callback(shutdown_loky)
    home = tempfile.mkdtemp(prefix="fanout-bench-")
    stack.callback(shutil.rmtree, home, ignore_errors=True)
    executor = stack.enter_context(fanout.Executor(max_workers=workers, progress=False,
                                                   home=home))
    ours = FuturesRunner("fanout", executor)
    warm_up(ours, workers)
    return [ours, pool, joblib_runner]


# -- measuring -------------------------------------------------------------------------------


def best_times(runners: Sequence[Runner], job: Callable[[Runner], list[Any]],
               expected: list[Any]) -> dict[str, float]:
    """Best wall time per runner over ``REPEATS`` interleaved rounds; results are checked."""
    best = {runner.name: math.inf for runner in runners}
    for _ in range(REPEATS):
        for runner in runners:
            gc.collect()
            start = time.perf_counter()
            result = job(runner)
            elapsed = time.perf_counter() - start
            if result != expected:
                raise RuntimeError(f"{runner.name} returned wrong results")
            best[runner.name] = min(best[runner.name], elapsed)
    return best


def bench_submit(runners: Sequence[Runner], n: int) -> dict[str, float]:
    args = list(range(n))
    return best_times(runners, lambda r: r.one_each(tasks.noop, args), args)


def bench_map(runners: Sequence[Runner], n: int, chunksize: int) -> dict[str, float]:
    args = list(range(n))
    return best_times(runners, lambda r: r.mapped(tasks.noop, args, chunksize), args)


def calibrate_loops(seconds: float) -> int:
    """Loop count for which ``tasks.busy`` takes about ``seconds`` in this process."""
    probe = 50_000
    took = min(_time_call(tasks.busy, probe) for _ in range(5))
    return max(1, round(probe * seconds / took))


def _time_call(fn: Callable[[int], Any], arg: int) -> float:
    start = time.perf_counter()
    fn(arg)
    return time.perf_counter() - start


class SerialRunner:
    """A plain loop in the parent: the baseline for speed-ups."""

    name = "serial"

    def one_each(self, fn: Callable[[Any], Any], args: Sequence[Any]) -> list[Any]:
        return [fn(arg) for arg in args]

    def mapped(self, fn: Callable[[Any], Any], args: Sequence[Any],
               chunksize: int | None) -> list[Any]:
        return self.one_each(fn, args)


class CeilingRunner:
    """The machine's own limit: ``workers`` forked processes, each running an equal share.

    No executor, no messages, no start-up (fork copies this warm process): the speed-up this
    reaches is the most any executor can reach here, which on a shared virtual machine can
    be well below the core count.
    """

    name = "ceiling"

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def one_each(self, fn: Callable[[Any], Any], args: Sequence[Any]) -> list[Any]:
        return self.mapped(fn, args, None)

    def mapped(self, fn: Callable[[Any], Any], args: Sequence[Any],
               chunksize: int | None) -> list[Any]:
        children = []
        for share in range(self.workers):
            read, write = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: compute its share, send the results, vanish
                os.close(read)
                try:
                    data = pickle.dumps([fn(arg) for arg in args[share::self.workers]])
                    with os.fdopen(write, "wb") as out:
                        out.write(data)
                finally:
                    os._exit(0)
            os.close(write)
            children.append((pid, read))
        shares = []
        for pid, read in children:
            with os.fdopen(read, "rb") as source:
                shares.append(pickle.loads(source.read()))
            os.waitpid(pid, 0)
        results: list[Any] = [None] * len(args)
        for share, values in enumerate(shares):
            results[share::self.workers] = values
        return results


def bench_cpu(runners: Sequence[Runner], n: int, loops: int, workers: int
              ) -> tuple[float, dict[str, float]]:
    """Serial loop time in this process and each executor's time (fanout: chunksize=1).

    The serial loop and the forked-process ceiling take part in every round, so they see
    the same machine load as the executors.
    """
    args = [loops] * n
    expected = [tasks.busy(loops)] * n
    chunk = {"fanout": 1, "ProcessPoolExecutor": 1}
    times = best_times([SerialRunner(), CeilingRunner(workers), *runners],
                       lambda r: r.mapped(tasks.busy, args, chunk.get(r.name)), expected)
    serial = times.pop("serial")
    return serial, times


# -- scenario 4: client RSS, in a fresh process ----------------------------------------------


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # KiB on Linux


def current_rss_mb() -> float:
    return psutil.Process().memory_info().rss / MB


def occupy_workers(executor: concurrent.futures.Executor, workers: int,
                   markers: Path) -> Path:
    """Keep every worker busy with a blocking task; return the marker that releases them."""
    go = markers / "go"
    for i in range(workers):
        executor.submit(tasks.block_until, str(go), str(markers / f"started-{i}"),
                        BLOCK_DEADLINE_SECONDS)
    deadline = time.monotonic() + 30
    while len(list(markers.glob("started-*"))) < workers and time.monotonic() < deadline:
        time.sleep(0.01)
    return go


def make_executor(kind: str, workers: int, home: str) -> concurrent.futures.Executor:
    if kind == "fanout":
        return fanout.Executor(max_workers=workers, progress=False, home=home)
    return concurrent.futures.ProcessPoolExecutor(max_workers=workers)


def rss_probe(kind: str, n: int, workers: int) -> dict[str, float]:
    """Submit ``n`` no-ops while every worker is blocked; report the client's memory."""
    home = tempfile.mkdtemp(prefix="fanout-bench-rss-")
    markers = Path(home) / "markers"
    markers.mkdir()
    try:
        with make_executor(kind, workers, home) as executor:
            warm_up(FuturesRunner(kind, executor), workers)
            go = occupy_workers(executor, workers, markers)
            started = len(list(markers.glob("started-*")))
            baseline = current_rss_mb()
            futures = [executor.submit(tasks.noop, i) for i in range(n)]
            at_return = peak_rss_mb()
            time.sleep(RSS_SETTLE_SECONDS)
            peak = peak_rss_mb()
            pending = sum(not future.done() for future in futures)
            executor.shutdown(wait=False, cancel_futures=True)
            go.touch()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {"baseline_mb": baseline, "at_return_mb": at_return, "peak_mb": peak,
            "pending": pending, "blocked_workers": started}


def run_probe(kind: str, n: int, workers: int) -> dict[str, float]:
    command = [sys.executable, str(Path(__file__).resolve()), "--rss-probe", kind,
               "--pending", str(n), "--workers", str(workers)]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=PROBE_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise RuntimeError(f"RSS probe for {kind} failed:\n{done.stderr}")
    probe: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    if probe["blocked_workers"] < workers or probe["pending"] < n:
        print(f"warning: {kind} RSS probe: {probe['blocked_workers']:.0f}/{workers} workers "
              f"blocked, {probe['pending']:.0f}/{n} futures pending", file=sys.stderr)
    return probe


# -- reporting -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    scenario: str
    fanout: str
    pool: str
    joblib: str
    ratio: str
    met: str

    def markdown(self) -> str:
        cells = (self.scenario, self.fanout, self.pool, self.joblib, self.ratio, self.met)
        return "| " + " | ".join(cells) + " |"


def rate(n: int, seconds: float) -> str:
    return f"{n / seconds:,.0f} tasks/s"


def verdict(ok: bool) -> str:
    return "yes" if ok else "**no**"


def submit_row(n: int, times: dict[str, float]) -> Row:
    ratio = times["ProcessPoolExecutor"] / times["fanout"]
    return Row(f"{n:,} no-op tasks, one future each", rate(n, times["fanout"]),
               rate(n, times["ProcessPoolExecutor"]),
               f"{rate(n, times['joblib'])} (no futures: one `Parallel` call)",
               f"{ratio:.2f}x of PPE (target >= {TARGET_SUBMIT_RATIO:.1f})",
               verdict(ratio >= TARGET_SUBMIT_RATIO))


def map_row(n: int, chunksize: int, times: dict[str, float]) -> Row:
    vs_pool = times["ProcessPoolExecutor"] / times["fanout"]
    vs_joblib = times["joblib"] / times["fanout"]
    return Row(f"{n:,} no-op tasks, map with chunksize={chunksize}", rate(n, times["fanout"]),
               rate(n, times["ProcessPoolExecutor"]),
               f"{rate(n, times['joblib'])} (batch_size={chunksize})",
               f"{vs_pool:.2f}x of PPE, {vs_joblib:.2f}x of joblib (informational)", "—")


def cpu_row(n: int, serial: float, times: dict[str, float], workers: int) -> Row:
    target = TARGET_SPEEDUP_PER_WORKER * workers
    speedups = {name: serial / seconds for name, seconds in times.items()}
    ceiling = speedups["ceiling"]

    def cell(name: str) -> str:
        return f"{speedups[name]:.2f}x ({times[name]:.2f} s)"

    return Row(f"{n:,} CPU-bound tasks of ~10 ms (speed-up over serial {serial:.2f} s; "
               f"machine ceiling, {workers} forked processes without an executor: "
               f"{ceiling:.2f}x)",
               cell("fanout"), cell("ProcessPoolExecutor"), cell("joblib"),
               f"{speedups['fanout']:.2f}x (target >= {target:.2f}x; "
               f"{speedups['fanout'] / ceiling:.0%} of the ceiling)",
               verdict(speedups["fanout"] >= target))


def rss_row(n: int, probes: dict[str, dict[str, float]]) -> Row:
    ours = probes["fanout"]["peak_mb"]
    return Row(f"peak client RSS with {n:,} pending futures",
               f"{ours:.0f} MB", f"{probes['ProcessPoolExecutor']['peak_mb']:.0f} MB",
               "n/a (no futures)", f"{ours:.0f} MB (target <= {TARGET_RSS_MB:.0f} MB)",
               verdict(ours <= TARGET_RSS_MB))


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def git_revision() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    return commit + (" + uncommitted changes" if git("status", "--porcelain") else "")


def shown_command() -> str:
    python = Path(sys.executable)
    with contextlib.suppress(ValueError):
        python = python.relative_to(Path.cwd())
    return shlex.join([str(python), *sys.argv])


def where_run() -> str:
    cwd = Path.cwd().resolve()
    return "the repository root" if cwd == REPO_ROOT else f"`{cwd}`"


def machine_lines(workers: int) -> list[str]:
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    cores = f"{os.cpu_count()} logical cores" + (f" ({usable} usable)" if usable else "")
    ram = psutil.virtual_memory().total / 2**30
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- Date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}",
        f"- Machine: {cpu_model()}, {cores}, {ram:.1f} GiB RAM, {platform.system()} "
        f"{platform.release()}; load average at start: {load}",
        f"- Python {platform.python_version()} ({platform.python_implementation()}); "
        f"fanout {importlib.metadata.version('fanout')} (git {git_revision()}); "
        f"joblib {importlib.metadata.version('joblib')}",
        f"- Workers: {workers} for every executor",
        f"- Command: `{shown_command()}` (run from {where_run()})",
    ]


def method_lines(counts: Counts, loops: int, task_ms: float) -> list[str]:
    return [
        "Wall time (`time.perf_counter`). Every executor runs the same number of worker "
        f"processes and is warmed up with {WARMUP_TASKS_PER_WORKER} tasks per worker first, "
        f"so process start-up is excluded; each measurement is repeated {REPEATS} times, "
        "executors interleaved, and **the best of the 3** is reported. Timings include "
        "collecting every result in the client (fanout and ProcessPoolExecutor: "
        "`future.result()` for every future or the whole `map`). joblib is "
        "`joblib.Parallel(n_jobs=workers)` on its default loky backend; it has no futures, "
        "so scenario 1 is one `Parallel` call with `batch_size='auto'`.",
        "",
        f"The CPU-bound task is a pure-Python loop of {loops:,} iterations, calibrated to "
        f"~10 ms in the parent ({task_ms:.1f} ms measured); speed-up = serial loop in the "
        "parent / executor wall time. fanout and ProcessPoolExecutor use `map(chunksize=1)`, "
        "joblib its default `batch_size='auto'`. The target is "
        f"{TARGET_SPEEDUP_PER_WORKER * 2:.2f}x on 2 workers (scaled linearly for others).",
        "",
        "Client RSS is measured in a fresh child process (`--rss-probe`): after warm-up, "
        "every worker is occupied by a task that blocks until a marker file exists, then "
        f"{counts.pending:,} no-op calls are submitted; the figure is the process's RSS "
        f"high-water mark (`ru_maxrss`) {RSS_SETTLE_SECONDS:.0f} s after the last `submit` "
        "returns (so background bookkeeping of the submitted calls counts), after which the "
        "executor is shut down with `cancel_futures=True`. MB = 10^6 bytes.",
    ]


def rss_note(probes: dict[str, dict[str, float]]) -> str:
    parts = [
        f"{name} {p['baseline_mb']:.0f} MB before the submits, {p['at_return_mb']:.0f} MB "
        f"when they returned, {p['pending']:,.0f} futures still pending"
        for name, p in probes.items()
    ]
    return "RSS detail: " + "; ".join(parts) + "."


def render(rows: list[Row], header: list[str], method: list[str], rss_detail: str,
           quick: bool) -> str:
    table = [
        "| scenario | fanout | ProcessPoolExecutor | joblib | ratio/target | met? |",
        "|---|---|---|---|---|---|",
        *(row.markdown() for row in rows),
    ]
    quick_note = ([f"**QUICK RUN: every count divided by {QUICK_DIVISOR}; a smoke test, not "
                   "a result.**", ""] if quick else [])
    lines = [
        START_MARKER,
        "## Local backend vs ProcessPoolExecutor and joblib",
        "",
        *quick_note,
        *header,
        "",
        *method,
        "",
        *table,
        "",
        rss_detail,
        "",
        "What limits each number, and how it varies between runs: see the notes after this "
        "generated section.",
        END_MARKER,
    ]
    return "\n".join(lines) + "\n"


def write_section(path: Path, section: str, start_marker: str = START_MARKER,
                  end_marker: str = END_MARKER) -> None:
    """Replace the marked section of ``path`` (append it if unmarked; create the file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        path.write_text("# Benchmarks\n\nEach section below is generated by the script it "
                        "names; edit outside its markers.\n\n" + section)
        return
    text = path.read_text()
    start, end = text.find(start_marker), text.find(end_marker)
    if start != -1 and end > start:
        text = text[:start] + section.rstrip("\n") + text[end + len(end_marker):]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)


# -- main ------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true",
                        help=f"divide every count by {QUICK_DIVISOR} (smoke run)")
    parser.add_argument("--workers", type=int, default=2, help="workers for every executor")
    parser.add_argument("--output", type=Path, default=None,
                        help=f"markdown file to update (default: {DEFAULT_OUTPUT}, "
                             "not written in --quick mode unless given)")
    parser.add_argument("--rss-probe", choices=("fanout", "ProcessPoolExecutor"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--pending", type=int, default=Counts().pending, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def run_benchmarks(counts: Counts, workers: int, quick: bool) -> str:
    loops = calibrate_loops(CPU_TASK_SECONDS)
    task_ms = min(_time_call(tasks.busy, loops) for _ in range(5)) * 1000
    print(f"calibrated: {loops:,} loops ~ {task_ms:.1f} ms per CPU-bound task", file=sys.stderr)
    header = machine_lines(workers)
    with contextlib.ExitStack() as stack:
        runners = open_runners(stack, workers)
        print("scenario 1: one future each", file=sys.stderr)
        submit = bench_submit(runners, counts.no_op)
        print("scenario 2: map", file=sys.stderr)
        mapped = bench_map(runners, counts.no_op, counts.chunksize)
        print("scenario 3: CPU-bound", file=sys.stderr)
        serial, cpu = bench_cpu(runners, counts.cpu_tasks, loops, workers)
    print("scenario 4: client RSS (fresh processes)", file=sys.stderr)
    probes = {kind: run_probe(kind, counts.pending, workers)
              for kind in ("fanout", "ProcessPoolExecutor")}
    rows = [
        submit_row(counts.no_op, submit),
        map_row(counts.no_op, counts.chunksize, mapped),
        cpu_row(counts.cpu_tasks, serial, cpu, workers),
        rss_row(counts.pending, probes),
    ]
    return render(rows, header, method_lines(counts, loops, task_ms), rss_note(probes), quick)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rss_probe:
        print(json.dumps(rss_probe(args.rss_probe, args.pending, args.workers)))
        return 0
    counts = Counts().scaled(QUICK_DIVISOR) if args.quick else Counts()
    section = run_benchmarks(counts, args.workers, args.quick)
    print(section)
    output: Path | None = args.output
    if output is None and not args.quick:
        output = DEFAULT_OUTPUT
    if output is None:
        print("quick run: not writing docs/benchmarks.md (pass --output to write)",
              file=sys.stderr)
    else:
        write_section(output, section)
        print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
