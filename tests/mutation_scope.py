"""What ``make mutation`` mutates, and the copy it mutates (see docs/testing.md).

mutmut 3 names a mutant after its file's path (``src/fanout/protocol.py`` is
``fanout.protocol``) and must find that name again when the tests import it, but this
repository keeps the ``fanout`` package in ``client/``. So mutation runs on a copy laid out
as ``src/fanout`` under ``build/mutation``, and in that copy every function outside the
modules' guarantee-holding parts is marked ``# pragma: no mutate block``: mutants are made
only where fanout's promises live, and the score is about those.

    python tests/mutation_scope.py stage build/mutation    # before `mutmut run` there
    python tests/mutation_scope.py score build/mutation    # after: the score, survivors
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import libcst as cst

ROOT = Path(__file__).resolve().parents[1]

#: module (under client/) -> the functions mutated in it; ``None`` means all of them.
SCOPE: dict[str, set[str] | None] = {
    # the conditional put and what it reads and writes
    "backends/local/store.py": {"LocalStore._params", "LocalStore._record",
                                "LocalStore.put_result", "LocalStore.put_results",
                                "LocalStore.result", "LocalStore.results"},
    "backends/aws/store.py": {"task_key", "AwsStore._item", "AwsStore._record",
                              "AwsStore.put_result", "AwsStore.put_results",
                              "AwsStore.result", "AwsStore.results", "AwsStore.finished_tasks"},
    # the task protocol, including the retry plan
    "protocol.py": None,
    "collector.py": None,
    "seeding.py": None,
    # the runtime's record path: a task's outcome becomes one stored record
    "runtime.py": {"_user_frames", "exception_fields", "WorkerRuntime.run_chunk",
                   "WorkerRuntime._call", "WorkerRuntime._record", "WorkerRuntime._run_one",
                   "WorkerRuntime._finish", "WorkerRuntime.settle"},
}

#: Surviving mutants that change nothing anyone can observe, with the reason (docs/testing.md).
EQUIVALENT: dict[str, str] = {}

#: What the focused tests need besides the package: the stack the AWS emulation deploys.
PROJECT_FILES = ("pyproject.toml", "template.yaml", "statemachine", "functions", "tests")


class _FreezeOutOfScope(cst.CSTTransformer):
    """Adds ``# pragma: no mutate block`` to the header of every function not in scope."""

    def __init__(self, keep: set[str]) -> None:
        self.keep = keep
        self.classes: list[str] = []

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        self.classes.append(node.name.value)
        return True

    def leave_ClassDef(self, original: cst.ClassDef, updated: cst.ClassDef) -> cst.ClassDef:
        self.classes.pop()
        return updated

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef
                          ) -> cst.FunctionDef:
        name = ".".join([*self.classes, updated.name.value])
        body = updated.body
        if name in self.keep or not isinstance(body, cst.IndentedBlock):
            return updated
        header = body.header.with_changes(whitespace=cst.SimpleWhitespace("  "),
                                          comment=cst.Comment("# pragma: no mutate block"))
        return updated.with_changes(body=body.with_changes(header=header))


def stage(target: Path) -> None:
    """A fresh copy of the project with the package at ``src/fanout``, scoped for mutation."""
    if target.exists():
        shutil.rmtree(target)
    package = target / "src" / "fanout"
    shutil.copytree(ROOT / "client", package,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in PROJECT_FILES:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, target / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(source, target / name)
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package).as_posix()
        if relative not in SCOPE:
            continue  # mutmut's only_mutate (pyproject.toml) leaves these files alone
        keep = SCOPE[relative]
        if keep is None:
            continue
        module = cst.parse_module(path.read_text())
        path.write_text(module.visit(_FreezeOutOfScope(keep)).code)


def score(target: Path) -> int:
    """Print the score over the mutants in scope; the survivors, to kill or to explain."""
    from mutmut.stats import status_by_exit_code

    status: dict[str, str] = {}
    for meta in sorted((target / "mutants").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            status[name] = status_by_exit_code[code]
    equivalent = {name for name in status if name in EQUIVALENT}
    counted = {name: s for name, s in status.items() if name not in equivalent}
    caught = [name for name, s in counted.items() if s in ("killed", "timeout")]
    by_status: dict[str, list[str]] = {}
    for name, s in sorted(counted.items()):
        by_status.setdefault(s, []).append(name)
    print(f"mutants in scope: {len(status)}; listed as equivalent: {len(equivalent)}; "
          + "; ".join(f"{s}: {len(names)}" for s, names in sorted(by_status.items())))
    if counted:
        print(f"score: {len(caught)} of {len(counted)} non-equivalent mutants caught "
              f"({100 * len(caught) / len(counted):.1f}%; timeouts count as caught)")
    for s, names in sorted(by_status.items()):
        if s not in ("killed", "timeout"):
            for name in names:
                print(f"{s}: {name}")
    for name in sorted(equivalent):
        print(f"equivalent: {name}: {EQUIVALENT[name]}")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("stage", "score"):
        print(__doc__, file=sys.stderr)
        return 2
    target = Path(argv[2]).resolve()
    if argv[1] == "stage":
        stage(target)
        return 0
    return score(target)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
