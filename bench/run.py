"""Benchmark fanout's local backend against ProcessPoolExecutor and joblib, same worker count.

    python bench/run.py [--quick] [--workers N] [--output docs/benchmarks.md]

Why these scenarios (issue 10): each isolates one cost a user of the local backend pays.

1. 10,000 no-op tasks, one future each: per-``submit`` overhead. fanout stores every call
   and result in SQLite; the target is to be at least as fast as ``ProcessPoolExecutor``.
2. 100,000 no-op tasks through ``map(chunksize=1000)``: what a user who said her tasks are
   tiny pays for fanout's per-task durability; the target is >= 0.5x of the pool.
3. 200 CPU-bound tasks of ~10 ms, ``map(chunksize=1)``: whether the machinery gets out of
   the way for real work; targets: level with the pool and >= 1.85x over serial on 2.
4. Peak client RSS with 100,000 pending futures (target <= 300 MB).
5. Start-up: ``Executor()`` to the first result, cold (first executor of a fresh
   interpreter) and warm (the next one); target within 1.5x of the pool.
6. Throughput against task duration (10 us .. 100 ms, ``map(chunksize=1)``), drawn as a
   log-log PNG next to the markdown file (``benchmarks.png``).
7. Peak client RSS of ``for r in ex.map(noop, range(10**6), chunksize=1000)`` (the
   streaming map of issue 9; ``bench/map_rss.py`` in fresh interpreters; target <= 200 MB).

Every executor gets the same number of workers and is warmed up first (except in 5); each
timing is repeated 3 times, executors alternated, and the **median** is reported. The
result is printed as markdown and written between the ``<!-- bench:local:start -->`` /
``<!-- bench:local:end -->`` markers of the output file. ``--quick`` divides every count by
10 for a smoke run and writes nothing unless ``--output`` is given.
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
import os
import pickle
import platform
import resource
import shlex
import shutil
import statistics
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
TARGET_CHUNKED_RATIO = 0.5
TARGET_CPU_RATIO = 1.0
TARGET_STARTUP_FACTOR = 1.5
TARGET_STREAM_RSS_MB = 200.0
#: Task durations of the throughput sweep (scenario 6), seconds.
SWEEP_SECONDS = (0.00001, 0.0001, 0.001, 0.01, 0.1)
#: Serial work per sweep point: its task count is this over the task's duration (bounded).
SWEEP_WORK_SECONDS = 2.0
STARTUP_PROBES = 3
#: 1.85x on 2 workers, scaled linearly for other worker counts.
TARGET_SPEEDUP_PER_WORKER = 0.925
TARGET_RSS_MB = 300.0
MB = 1_000_000


@dataclass(frozen=True)
class Counts:
    no_op: int = 10_000
    chunked: int = 100_000
    chunksize: int = 1000
    cpu_tasks: int = 200
    pending: int = 100_000
    stream: int = 1_000_000
    sweep_max: int = 20_000

    def scaled(self, divisor: int) -> Counts:
        return Counts(self.no_op // divisor, self.chunked // divisor, self.chunksize,
                      self.cpu_tasks // divisor, self.pending // divisor,
                      self.stream // divisor, self.sweep_max // divisor)


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


def median_times(runners: Sequence[Runner], job: Callable[[Runner], list[Any]],
                 expected: list[Any]) -> dict[str, float]:
    """Median wall time per runner over ``REPEATS`` alternated rounds; results are checked."""
    times: dict[str, list[float]] = {runner.name: [] for runner in runners}
    for _ in range(REPEATS):
        for runner in runners:
            gc.collect()
            start = time.perf_counter()
            result = job(runner)
            elapsed = time.perf_counter() - start
            if result != expected:
                raise RuntimeError(f"{runner.name} returned wrong results")
            times[runner.name].append(elapsed)
    return {name: statistics.median(values) for name, values in times.items()}


def bench_submit(runners: Sequence[Runner], n: int) -> dict[str, float]:
    args = list(range(n))
    return median_times(runners, lambda r: r.one_each(tasks.noop, args), args)


def bench_map(runners: Sequence[Runner], n: int, chunksize: int) -> dict[str, float]:
    args = list(range(n))
    return median_times(runners, lambda r: r.mapped(tasks.noop, args, chunksize), args)


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
    times = median_times([SerialRunner(), CeilingRunner(workers), *runners],
                       lambda r: r.mapped(tasks.busy, args, chunk.get(r.name)), expected)
    serial = times.pop("serial")
    return serial, times


# -- scenario 4: client RSS, in a fresh process ----------------------------------------------


def peak_rss_mb() -> float:
    """This process's RSS high-water mark (``VmHWM``: unlike ``ru_maxrss``, it starts
    afresh at ``exec``, so the big parent this probe was started from does not count)."""
    with contextlib.suppress(OSError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / MB
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


# -- scenario 5: start-up and first result, in fresh processes -----------------------------


def startup_probe(kind: str, workers: int) -> dict[str, float]:
    """``Executor()`` to the first result: the first executor of this process, then another."""
    home = tempfile.mkdtemp(prefix="fanout-bench-start-")
    out: dict[str, float] = {}
    try:
        for phase in ("cold", "warm"):
            start = time.perf_counter()
            executor = make_executor(kind, workers, home)
            if executor.submit(tasks.noop, 7).result() != 7:
                raise RuntimeError(f"{kind}: wrong first result")
            out[phase] = time.perf_counter() - start
            executor.shutdown(wait=True)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return out


def bench_startup(workers: int) -> dict[str, dict[str, float]]:
    """Median cold and warm start-up per executor over alternated fresh interpreters."""
    samples: dict[str, dict[str, list[float]]] = {
        kind: {"cold": [], "warm": []} for kind in ("fanout", "ProcessPoolExecutor")}
    for _ in range(STARTUP_PROBES):
        for kind in samples:
            command = [sys.executable, str(Path(__file__).resolve()), "--startup-probe", kind,
                       "--workers", str(workers)]
            done = subprocess.run(command, capture_output=True, text=True, check=False,
                                  timeout=PROBE_TIMEOUT_SECONDS)
            if done.returncode != 0:
                raise RuntimeError(f"start-up probe for {kind} failed:\n{done.stderr}")
            probe = json.loads(done.stdout.strip().splitlines()[-1])
            for phase in ("cold", "warm"):
                samples[kind][phase].append(probe[phase])
    return {kind: {phase: statistics.median(v) for phase, v in phases.items()}
            for kind, phases in samples.items()}


# -- scenario 6: throughput against task duration -------------------------------------------


def sweep_points(counts: Counts, loops_per_second: float) -> list[tuple[float, int, int]]:
    """(task seconds, task count, busy loops) per sweep point."""
    points = []
    for seconds in SWEEP_SECONDS:
        n = int(min(counts.sweep_max, max(20, SWEEP_WORK_SECONDS / seconds)))
        points.append((seconds, n, max(1, round(loops_per_second * seconds))))
    return points


def bench_sweep(runners: Sequence[Runner], points: list[tuple[float, int, int]]
                ) -> dict[float, dict[str, float]]:
    """Tasks per second of each executor at each task duration (map, chunksize=1)."""
    rates: dict[float, dict[str, float]] = {}
    for seconds, n, loops in points:
        print(f"  sweep: {n:,} tasks of {seconds * 1000:g} ms", file=sys.stderr)
        args = [loops] * n
        expected = [tasks.busy(loops)] * n
        def job(runner: Runner, work: list[int] = args) -> list[Any]:
            return runner.mapped(tasks.busy, work, 1)

        times = median_times(runners, job, expected)
        rates[seconds] = {name: n / t for name, t in times.items()}
    return rates


def plot_sweep(path: Path, rates: dict[float, dict[str, float]], workers: int) -> None:
    """Log-log throughput against task duration, with the machine's ideal for reference."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = sorted(rates)
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    styles = {"fanout": ("tab:blue", "o"), "ProcessPoolExecutor": ("tab:orange", "s"),
              "joblib": ("tab:green", "^")}
    for name, (color, marker) in styles.items():
        ax.plot([x * 1000 for x in xs], [rates[x][name] for x in xs], marker=marker,
                color=color, label=name)
    ax.plot([x * 1000 for x in xs], [workers / x for x in xs], color="black", linestyle="--",
            linewidth=1, label=f"ideal: {workers} workers, no overhead")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("task duration (ms, pure-Python CPU work)")
    ax.set_ylabel("tasks per second")
    ax.set_title(f"Throughput against task duration, {workers} workers, map(chunksize=1)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- scenario 7: a 10^6-task streaming map's peak client RSS --------------------------------


def bench_stream_rss(n: int, workers: int) -> dict[str, dict[str, float]]:
    """``bench/map_rss.py`` for both executors, each in a fresh interpreter."""
    out: dict[str, dict[str, float]] = {}
    for kind, name in (("stdlib", "ProcessPoolExecutor"), ("fanout", "fanout")):
        command = [sys.executable, str(REPO_ROOT / "bench" / "map_rss.py"), "--executor", kind,
                   "--tasks", str(n), "--workers", str(workers)]
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=3600)
        if done.returncode != 0:
            raise RuntimeError(f"streaming RSS run for {kind} failed:\n{done.stderr}")
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


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
               f"{vs_pool:.3f}x of PPE (target >= {TARGET_CHUNKED_RATIO}), "
               f"{vs_joblib:.3f}x of joblib", verdict(vs_pool >= TARGET_CHUNKED_RATIO))


def cpu_row(n: int, serial: float, times: dict[str, float], workers: int) -> Row:
    target = TARGET_SPEEDUP_PER_WORKER * workers
    speedups = {name: serial / seconds for name, seconds in times.items()}
    ceiling = speedups["ceiling"]

    def cell(name: str) -> str:
        return f"{speedups[name]:.2f}x ({times[name]:.2f} s)"

    vs_pool = times["ProcessPoolExecutor"] / times["fanout"]
    met = speedups["fanout"] >= target and vs_pool >= TARGET_CPU_RATIO
    return Row(f"{n:,} CPU-bound tasks of ~10 ms, map(chunksize=1) (speed-up over serial "
               f"{serial:.2f} s; machine ceiling, {workers} forked processes without an "
               f"executor: {ceiling:.2f}x)",
               cell("fanout"), cell("ProcessPoolExecutor"), cell("joblib"),
               f"{vs_pool:.2f}x of PPE (target >= {TARGET_CPU_RATIO:.1f}); "
               f"{speedups['fanout']:.2f}x over serial (target >= {target:.2f}x; "
               f"{speedups['fanout'] / ceiling:.0%} of the ceiling)", verdict(met))


def startup_rows(startup: dict[str, dict[str, float]]) -> list[Row]:
    rows = []
    for phase, what in (("cold", "first executor of a fresh interpreter"),
                        ("warm", "the next executor in that process")):
        ours, pool = startup["fanout"][phase], startup["ProcessPoolExecutor"][phase]
        factor = ours / pool
        rows.append(Row(f"`Executor()` to first result, {phase} ({what})",
                        f"{ours * 1000:.0f} ms", f"{pool * 1000:.0f} ms", "n/a",
                        f"{factor:.2f}x the time of PPE (target <= "
                        f"{TARGET_STARTUP_FACTOR:.1f}x)",
                        verdict(factor <= TARGET_STARTUP_FACTOR)))
    return rows


def stream_row(n: int, runs: dict[str, dict[str, float]]) -> Row:
    ours, pool = runs["fanout"], runs["ProcessPoolExecutor"]
    return Row(f"peak client RSS of `for r in map(noop, range({n:,}), chunksize=1000)` "
               "(fresh interpreters; largest worker's peak in brackets)",
               f"{ours['peak_mb']:.0f} MB ({ours['worker_peak_mb']:.0f} MB); "
               f"{ours['seconds']:.1f} s",
               f"{pool['peak_mb']:.0f} MB ({pool['worker_peak_mb']:.0f} MB); "
               f"{pool['seconds']:.1f} s", "n/a",
               f"{ours['peak_mb']:.0f} MB (target <= {TARGET_STREAM_RSS_MB:.0f} MB)",
               verdict(ours["peak_mb"] <= TARGET_STREAM_RSS_MB))


def sweep_table(points: list[tuple[float, int, int]],
                rates: dict[float, dict[str, float]]) -> list[str]:
    lines = ["| task duration | tasks | fanout | ProcessPoolExecutor | joblib | "
             "fanout / PPE |", "|---|---|---|---|---|---|"]
    for seconds, n, _ in points:
        r = rates[seconds]
        lines.append(f"| {seconds * 1000:g} ms | {n:,} | {r['fanout']:,.0f}/s | "
                     f"{r['ProcessPoolExecutor']:,.0f}/s | {r['joblib']:,.0f}/s | "
                     f"{r['fanout'] / r['ProcessPoolExecutor']:.2f}x |")
    return lines


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
        f"fanout {importlib.metadata.version('fanout-futures')} (git {git_revision()}); "
        f"joblib {importlib.metadata.version('joblib')}",
        f"- Workers: {workers} for every executor",
        f"- Command: `{shown_command()}` (run from {where_run()})",
    ]


def method_lines(counts: Counts, loops: int, task_ms: float) -> list[str]:
    return [
        "Wall time (`time.perf_counter`). Every executor runs the same number of worker "
        f"processes and is warmed up with {WARMUP_TASKS_PER_WORKER} tasks per worker first, "
        f"so process start-up is excluded; each measurement is repeated {REPEATS} times, "
        f"executors alternated, and **the median of the {REPEATS}** is reported. Timings "
        "include "
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
        f"high-water mark (`VmHWM`) {RSS_SETTLE_SECONDS:.0f} s after the last `submit` "
        "returns (so background bookkeeping of the submitted calls counts), after which the "
        "executor is shut down with `cancel_futures=True`. MB = 10^6 bytes.",
        "",
        "Start-up is measured in fresh interpreters (`--startup-probe`, "
        f"{STARTUP_PROBES} per executor, alternated, median): the time from the executor's "
        "constructor to the first `submit(noop).result()`, for the first executor of the "
        "process (cold: worker processes start, fanout's store is created) and for a second "
        "one after the first shut down (warm: modules imported, the store exists). "
        "ProcessPoolExecutor forks (Linux's default in Python 3.11); fanout starts each "
        "worker as a fresh interpreter (`python -m fanout.backends.local.worker`).",
        "",
        "The streaming map's row runs `bench/map_rss.py --executor ...` per executor, each in "
        "a fresh interpreter: the client's peak RSS (`VmHWM`; fanout's supervisor is a thread "
        "of it), and the largest worker's (`ru_maxrss` of `RUSAGE_CHILDREN`, which on Linux "
        "may count the image a worker was started from), in MiB.",
    ]


def rss_note(probes: dict[str, dict[str, float]]) -> str:
    parts = [
        f"{name} {p['baseline_mb']:.0f} MB before the submits, {p['at_return_mb']:.0f} MB "
        f"when they returned, {p['pending']:,.0f} futures still pending"
        for name, p in probes.items()
    ]
    return "RSS detail: " + "; ".join(parts) + "."


def render(rows: list[Row], header: list[str], method: list[str], rss_detail: str,
           quick: bool, sweep: list[str]) -> str:
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
        *sweep,
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
    parser.add_argument("--startup-probe", choices=("fanout", "ProcessPoolExecutor"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--pending", type=int, default=Counts().pending, help=argparse.SUPPRESS)
    parser.add_argument("--map-only", type=int, default=0, metavar="ROUNDS",
                        help="only scenario 2 (the chunked map), ROUNDS times, each the median "
                             f"of {REPEATS} alternated runs; print the ratios, write nothing")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def run_benchmarks(counts: Counts, workers: int, quick: bool,
                   plot_path: Path | None) -> str:
    loops = calibrate_loops(CPU_TASK_SECONDS)
    task_ms = min(_time_call(tasks.busy, loops) for _ in range(5)) * 1000
    print(f"calibrated: {loops:,} loops ~ {task_ms:.1f} ms per CPU-bound task", file=sys.stderr)
    header = machine_lines(workers)
    points = sweep_points(counts, loops / (task_ms / 1000))
    with contextlib.ExitStack() as stack:
        runners = open_runners(stack, workers)
        print("scenario 1: one future each", file=sys.stderr)
        submit = bench_submit(runners, counts.no_op)
        print("scenario 2: map with chunksize", file=sys.stderr)
        mapped = bench_map(runners, counts.chunked, counts.chunksize)
        print("scenario 3: CPU-bound", file=sys.stderr)
        serial, cpu = bench_cpu(runners, counts.cpu_tasks, loops, workers)
        print("scenario 6: throughput against task duration", file=sys.stderr)
        rates = bench_sweep(runners, points)
    print("scenario 4: client RSS (fresh processes)", file=sys.stderr)
    probes = {kind: run_probe(kind, counts.pending, workers)
              for kind in ("fanout", "ProcessPoolExecutor")}
    print("scenario 5: start-up (fresh processes)", file=sys.stderr)
    startup = bench_startup(workers)
    print(f"scenario 7: streaming map of {counts.stream:,} tasks (fresh processes)",
          file=sys.stderr)
    stream = bench_stream_rss(counts.stream, workers)
    rows = [
        submit_row(counts.no_op, submit),
        map_row(counts.chunked, counts.chunksize, mapped),
        cpu_row(counts.cpu_tasks, serial, cpu, workers),
        rss_row(counts.pending, probes),
        *startup_rows(startup),
        stream_row(counts.stream, stream),
    ]
    if plot_path is not None:
        plot_sweep(plot_path, rates, workers)
    sweep = [
        "Throughput against task duration (scenario 6; tasks per second, median of "
        f"{REPEATS}; fanout and ProcessPoolExecutor `map(chunksize=1)`, joblib "
        "`batch_size='auto'`):",
        "",
        *sweep_table(points, rates),
        "",
        *([f"![Throughput against task duration]({plot_path.name})"] if plot_path else []),
    ]
    return render(rows, header, method_lines(counts, loops, task_ms), rss_note(probes), quick,
                  sweep)


def map_only(counts: Counts, workers: int, rounds: int) -> int:
    """Scenario 2 alone, ``rounds`` times: the chunked map's ratio and how it varies."""
    with contextlib.ExitStack() as stack:
        runners = open_runners(stack, workers)
        for _ in range(rounds):
            times = bench_map(runners, counts.chunked, counts.chunksize)
            print(f"{counts.chunked:,} no-ops, chunksize={counts.chunksize}: "
                  + ", ".join(f"{name} {seconds * 1000:.0f} ms"
                              for name, seconds in times.items())
                  + f"; fanout {times['ProcessPoolExecutor'] / times['fanout']:.2f}x of PPE",
                  flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.rss_probe:
        print(json.dumps(rss_probe(args.rss_probe, args.pending, args.workers)))
        return 0
    if args.startup_probe:
        print(json.dumps(startup_probe(args.startup_probe, args.workers)))
        return 0
    counts = Counts().scaled(QUICK_DIVISOR) if args.quick else Counts()
    if args.map_only:
        return map_only(counts, args.workers, args.map_only)
    output: Path | None = args.output
    if output is None and not args.quick:
        output = DEFAULT_OUTPUT
    plot_path = None if output is None else output.with_suffix(".png")
    section = run_benchmarks(counts, args.workers, args.quick, plot_path)
    print(section)
    if output is None:
        print("quick run: not writing docs/benchmarks.md (pass --output to write)",
              file=sys.stderr)
    else:
        write_section(output, section)
        print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
