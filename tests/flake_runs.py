"""Flake runs: every test of a file N times in a row, inside its file or alone.

pytest-repeat's ``--count=N`` (function scope) runs each test N times back to back. Inside
its file (the default), the file's other tests and its module fixtures run as in a normal
run: one pytest process per file. ``--alone`` runs each test in a pytest process of its
own (its fixtures made for it alone), N times in a row. Results accumulate in a JSON file
so a long campaign can be stopped and resumed; ``report`` prints the table
docs/testing.md records.

    python tests/flake_runs.py run --count 20 tests/test_cli.py tests/test_api.py
    python tests/flake_runs.py run --alone --count 20 tests/test_cli.py
    python tests/flake_runs.py report
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import json
import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "build" / "flake-runs" / "results.json"


def _load() -> list[dict[str, Any]]:
    if RESULTS.exists():
        loaded: list[dict[str, Any]] = json.loads(RESULTS.read_text())
        return loaded
    return []


def _counts(junit: Path) -> dict[str, Any]:
    """Passed, failed and skipped test runs, and the names of the ones that failed."""
    tree = ElementTree.parse(junit)
    failed: list[str] = []
    passed = skipped = 0
    for case in tree.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
        elif case.find("skipped") is not None:
            skipped += 1
        else:
            passed += 1
    return {"passed": passed, "failed": len(failed), "skipped": skipped, "failures": failed}


def _tests_of(name: str) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "--collect-only", name], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    # A parametrized test runs with all its parameters: pytest-repeat renames the ids
    # (``test[a]`` becomes ``test[a-1-20]``), so ``test[a]`` would select nothing.
    tests = [line.split("[")[0] for line in done.stdout.splitlines() if "::" in line]
    return list(dict.fromkeys(tests))


def run(files: list[str], count: int, timeout: float, alone: bool = False) -> int:
    """Each file (or test, ``alone``) in its own pytest, each test ``count`` times; returns
    how many runs failed."""
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    targets = [test for name in files for test in _tests_of(name)] if alone else files
    bad = 0
    for name in targets:
        junit = RESULTS.parent / (name.replace("/", "_").replace(":", "_") + ".xml")
        load = os.getloadavg()[0]
        started = time.monotonic()
        try:
            done = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                 f"--count={count}", "--repeat-scope=function", f"--junitxml={junit}", name],
                cwd=ROOT, capture_output=True, text=True, timeout=timeout)
            outcome = _counts(junit) if junit.exists() else {"passed": 0, "failed": 0,
                                                              "skipped": 0, "failures": []}
            tail = done.stdout[-2000:] if done.returncode not in (0, 5) else ""
            code: int | str = done.returncode
        except subprocess.TimeoutExpired:
            outcome = {"passed": 0, "failed": 0, "skipped": 0, "failures": []}
            tail, code = f"stopped after {timeout:.0f} s", "timeout"
        entry = {"file": name, "alone": alone, "count": count, "returncode": code,
                 "seconds": round(time.monotonic() - started, 1),
                 "load": [round(load, 1), round(os.getloadavg()[0], 1)],
                 "finished": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
                 **outcome, "tail": tail}
        with open(RESULTS.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # several campaigns may share the file
            results = _load()
            results.append(entry)
            RESULTS.write_text(json.dumps(results, indent=1))
        print(f"{name}: {outcome['passed']} passed, {outcome['failed']} failed, "
              f"{outcome['skipped']} skipped, {entry['seconds']} s", flush=True)
        bad += code not in (0, 5)
    return bad


def report() -> None:
    """Inside-the-file runs a row each; alone runs summed per file."""
    entries: list[dict[str, Any]] = []
    for entry in _load():
        if not entry.get("alone"):
            entries.append(entry)
            continue
        name = entry["file"].split("::")[0] + " (each test alone)"
        same = next((e for e in entries if e["file"] == name and e["count"] == entry["count"]),
                    None)
        if same is None:
            entries.append({**entry, "file": name, "failures": list(entry["failures"])})
            continue
        for key in ("passed", "failed", "skipped", "seconds"):
            same[key] += entry[key]
        same["failures"] += entry["failures"]
        if entry.get("note"):
            same["note"] = "; ".join(filter(None, [same.get("note"), entry["note"]]))
        same["load"] = [same["load"][0], entry["load"][1]]
        if entry["returncode"] == "timeout":
            same["returncode"] = "timeout"
    print("| file | runs | passed | failed | skipped | wall time | load (start, end) |")
    print("|---|---|---|---|---|---|---|")
    for entry in entries:
        minutes, seconds = divmod(int(entry["seconds"]), 60)
        failed = str(entry["failed"])
        if entry["failures"]:
            # one name per test: pytest-repeat's "-k-N" suffix and the module path dropped
            names = {re.sub(r"-\d+-\d+\]$", "]", re.sub(r"\[\d+-\d+\]$", "",
                                                         f.rsplit("::", 1)[-1]))
                     for f in entry["failures"]}
            failed += " (" + ", ".join(sorted(names)) + ")"
        if entry.get("note"):
            failed += f"; {entry['note']}"
        if entry["returncode"] == "timeout":
            failed += " (stopped: timeout)"
        print(f"| `{entry['file']}` | x{entry['count']} | {entry['passed']} | {failed} | "
              f"{entry['skipped']} | {minutes} min {seconds} s | "
              f"{entry['load'][0]}, {entry['load'][1]} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run")
    runner.add_argument("--count", type=int, default=20)
    runner.add_argument("--alone", action="store_true",
                        help="each test in a pytest process of its own")
    runner.add_argument("--timeout", type=float, default=3600.0,
                        help="seconds for one file's whole run")
    runner.add_argument("files", nargs="+")
    commands.add_parser("report")
    args = parser.parse_args()
    if args.command == "run":
        return 1 if run(args.files, args.count, args.timeout, args.alone) else 0
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
