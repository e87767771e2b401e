"""Peak client RSS of one ``map`` over many no-op tasks: fanout next to ProcessPoolExecutor.

    python bench/map_rss.py [--tasks 1000000] [--workers 2] [--executor fanout|stdlib]
                            [--backend local|inline]

Each executor runs in its own fresh interpreter (``--executor``), so one's peak does not
hide the other's; the parent prints both peaks (``VmHWM`` of the child, which counts
only the client process, not its workers) and their ratio. fanout's supervisor is a thread
of the client, so its memory is in the client's figure; the largest worker process's peak
(``RUSAGE_CHILDREN``, read after the executor shut its workers down) is printed beside it.
The loop consumes results as they come, as ``for r in ex.map(f, range(n))`` does, and
keeps none of them. ``--backend inline`` runs fanout's tasks in the client itself (there
are no workers then; its streaming map runs each segment inside ``next()``).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _run_one(kind: str, tasks: int, workers: int, backend: str = "local"
             ) -> dict[str, float]:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from bench.tasks import noop

    started = time.perf_counter()
    total = 0
    if kind == "fanout":
        import fanout

        with tempfile.TemporaryDirectory() as home, \
                fanout.Executor(workers, backend=backend, progress=False, home=home) as ex:
            for value in ex.map(noop, range(tasks), chunksize=1000):
                total += value
    else:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            for value in pool.map(noop, range(tasks), chunksize=1000):
                total += value
    assert total == tasks * (tasks - 1) // 2
    peak_kb = _peak_kb()
    worker_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"peak_mb": peak_kb / 1024, "worker_peak_mb": worker_kb / 1024,
            "seconds": time.perf_counter() - started}


def _peak_kb() -> int:
    """This process's peak RSS in KiB: ``VmHWM``, which starts afresh at ``exec``.

    ``ru_maxrss`` does not: on Linux it keeps the peak of the image this process was
    forked from, so a child of a big parent (``bench/run.py``) would report the parent's.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tasks", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--executor", choices=("fanout", "stdlib"))
    parser.add_argument("--backend", choices=("local", "inline"), default="local",
                        help="fanout's backend (default: local)")
    args = parser.parse_args()
    if args.executor:
        print(json.dumps(_run_one(args.executor, args.tasks, args.workers, args.backend)))
        return 0
    results = {}
    for kind in ("stdlib", "fanout"):
        out = subprocess.run([sys.executable, __file__, "--executor", kind, "--tasks",
                              str(args.tasks), "--workers", str(args.workers),
                              "--backend", args.backend],
                             capture_output=True, text=True, check=True, timeout=3600)
        results[kind] = json.loads(out.stdout.strip().splitlines()[-1])
    ratio = results["fanout"]["peak_mb"] / results["stdlib"]["peak_mb"]
    print("| executor | peak client RSS (MB) | largest worker's peak RSS (MB) | seconds |\n"
          "|---|---|---|---|")
    for kind, name in (("stdlib", "ProcessPoolExecutor"), ("fanout", f"fanout ({args.backend})")):
        print(f"| {name} | {results[kind]['peak_mb']:.0f} | "
              f"{results[kind]['worker_peak_mb']:.0f} | {results[kind]['seconds']:.1f} |")
    print(f"\n{args.tasks:,} no-op tasks, chunksize=1000, {args.workers} workers; "
          f"fanout/ProcessPoolExecutor peak RSS ratio {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
