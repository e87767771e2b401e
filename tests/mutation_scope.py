"""What ``make mutation`` mutates, and the copy it mutates (see docs/testing.md).

mutmut 3 names a mutant after its file's path (``src/fanout/protocol.py`` is
``fanout.protocol``) and must find that name again when the tests import it, but this
repository keeps the ``fanout`` package in ``client/``. So mutation runs on a copy laid out
as ``src/fanout`` under ``build/mutation``, and in that copy every function outside the
modules' guarantee-holding parts is marked ``# pragma: no mutate block``: mutants are made
only where fanout's promises live, and the score is about those.

    python tests/mutation_scope.py stage build/mutation    # before `mutmut run` there
    python tests/mutation_scope.py restage build/mutation  # the code changed: keep results
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
    # the local conditional put (one record, or a group commit's batch in one transaction)
    # and what it reads and writes
    "backends/local/store/results.py": {"ResultTable._params", "ResultTable._record",
                                        "ResultTable.put_result", "ResultTable.put_results",
                                        "ResultTable.result", "ResultTable.results"},
    # the AWS conditional writes: a result page per UpdateItem, the reduce item, and the reads
    "backends/aws/store.py": {"task_key", "AwsStore._reduce_item", "AwsStore._reduce_record",
                              "AwsStore._page_key", "AwsStore._records_of", "AwsStore._resolve",
                              "AwsStore._entry", "AwsStore.put_result", "AwsStore.put_results",
                              "AwsStore._put_page", "AwsStore._put_reduce", "AwsStore.result",
                              "AwsStore.results", "AwsStore.finished_tasks"},
    # a result page's entries and the per-entry rule (condition, may_replace, encode, decode)
    "backends/aws/pages.py": None,
    # which item and partition key hold a task's record (writers and readers must agree)
    "backends/aws/layout.py": {"Layout.page", "Layout.partition", "Layout.partitions"},
    # the task protocol, including the retry plan
    "protocol.py": None,
    # all of it but the stand-in for a streaming run's settled future, which is built at
    # import, before mutmut switches a mutant on: no test can see its mutants there
    "collector.py": {"RemoteTraceback.__init__", "RemoteTraceback.__str__",
                     "rebuild_exception", "resolve", "JobRun.__init__", "JobRun.take_futures",
                     "JobRun.add", "JobRun.seal", "JobRun.future", "JobRun.open_tasks",
                     "JobRun.job_id", "JobRun.map_finished", "JobRun.deliver",
                     "JobRun._settled", "JobRun._advance_progress", "JobRun.settle_error",
                     "JobRun.needs_reduce", "JobRun.fail_reduce", "JobRun._finish",
                     "JobRun.close"},
    "seeding.py": None,
    # the runtime's record path: a task's outcome becomes one stored record, directly or
    # through a sink: the local worker's group commit, the AWS worker's page flusher
    "runtime.py": {"_user_frames", "exception_fields", "WorkerRuntime.run_chunk",
                   "WorkerRuntime._call", "WorkerRuntime._call_pack", "WorkerRuntime._record",
                   "WorkerRuntime._run_one", "WorkerRuntime._finish", "WorkerRuntime.settle"},
    "backends/local/worker.py": {"GroupCommitter._commit"},
    # a packed chunk (map's chunksize): its calls' outcomes, seeds and first successes on the
    # worker, one record for them, and each call's result or exception on the client
    "packing.py": {"run_pack", "LazyGlobalSeeds.__init__", "LazyGlobalSeeds._seed",
                   "LazyGlobalSeeds._real", "LazyGlobalSeeds._wrap", "LazyGlobalSeeds.restore",
                   "_earlier", "encode", "finish_record", "PackOutcome.error",
                   "element_record", "is_outcome", "outcome", "element_futures",
                   "element_range"},
    "backends/aws/flusher.py": {"PageFlusher.__call__", "PageFlusher.flush"},
}

#: Surviving mutants that change nothing anyone can observe, with the reason (docs/testing.md).
EQUIVALENT: dict[str, str] = {
    **dict.fromkeys(
        [f"fanout.collector.xǁJobRunǁdeliver__mutmut_{n}" for n in (16, 18, 19)],
        "counts.get(status, <default>): every delivered record's status is one of the three "
        "keys JobRun.__init__ sets, so the default is never used"),
    "fanout.collector.xǁJobRunǁdeliver__mutmut_36":
        "< vs <= on task indexes: a task is delivered at most once, so they never tie",
    "fanout.collector.xǁJobRunǁfail_reduce__mutmut_5":
        "load_value=None: resolve() loads a value only for a success; first_failure failed",
    "fanout.runtime.x_exception_fields__mutmut_6":
        "format_exception(None, exc, tb): since Python 3.10 the first argument is ignored "
        "when value and tb are given",
    "fanout.runtime.x_exception_fields__mutmut_18":
        "protocol=None: cloudpickle's default protocol (pinned cloudpickle 3.1.2) is 5, the "
        "same as serialization.PROTOCOL",
    "fanout.runtime.xǁWorkerRuntimeǁ_record__mutmut_3":
        "initial status None: every path sets the status before the record leaves",
    **dict.fromkeys(
        [f"fanout.runtime.xǁWorkerRuntimeǁsettle__mutmut_{n}" for n in (3, 8)],
        "pop('checkpoint', None/True): only setup-error records lack the note; deleting the "
        "checkpoint of a task whose stored record already succeeded deletes nothing"),
    **dict.fromkeys(
        [f"fanout.protocol.xǁJobSpecǁto_json__mutmut_{n}" for n in (7, 9, 10)],
        "sort_keys off: every reader parses the JSON; key order is never observed"),
    "fanout.seeding.x_derive_seed__mutmut_19":
        "int.from_bytes(digest) without 'big': the default byte order is 'big' since "
        "Python 3.11, the oldest fanout supports",
    **dict.fromkeys(
        [f"fanout.backends.local.store.results.xǁResultTableǁresults__mutmut_{n}" for n in (7, 8)],
        "ORDER BY in lower or upper case: SQL keywords and column names are not case "
        "sensitive in SQLite"),
    "fanout.backends.local.store.results.xǁResultTableǁ_record__mutmut_2":
        "row[:17] for row[:16]: the rows it is given have 16 columns",
    **dict.fromkeys(
        [f"fanout.backends.local.worker.xǁGroupCommitterǁ_commit__mutmut_{n}" for n in (8, 10)],
        "a batch of one through put_results instead of put_result: the same conditional put "
        "in an explicit transaction, only slower (why the code avoids it)"),
    **dict.fromkeys(
        [f"fanout.backends.local.worker.xǁGroupCommitterǁ_commit__mutmut_{n}"
         for n in (49, 52, 53)],
        "zip without strict: put_results returns one record per record given, so the two "
        "lists never differ in length"),
    **dict.fromkeys(
        [f"fanout.backends.aws.pages.x_spilled__mutmut_{n}" for n in (3, 4)],
        "job_id or task_index None in the record spilled() encodes: encode() reads neither"),
    "fanout.backends.aws.pages.x_spilled__mutmut_7":
        "worker_id None in the record spilled() encodes: encode() writes '-' for it as for "
        "'', and _put_page replaces the entry's worker by its @W reference when there is one",
    **dict.fromkeys(
        [f"fanout.backends.aws.flusher.xǁPageFlusherǁ__call____mutmut_{n}" for n in (8, 10)],
        "_waiting.get(page, None/no default): the flusher is given only its chunk's records "
        "(the reduce runs without it), and each of their pages has an entry, never removed"),
    **dict.fromkeys(
        [f"fanout.backends.aws.flusher.xǁPageFlusherǁflush__mutmut_{n}" for n in (21, 24, 25)],
        "zip without strict: put_results returns one record per record given, so the two "
        "lists never differ in length"),
    "fanout.backends.aws.flusher.xǁPageFlusherǁflush__mutmut_11":
        "_oldest set although the buffer is empty: the timer's flush then finds nothing to "
        "write and returns",
    "fanout.backends.local.worker.xǁGroupCommitterǁ_commit__mutmut_16":
        ">= for > between a float clock sum and the deadline: they are never equal",
    "fanout.seeding.x_task_seeds__mutmut_20":
        "int.from_bytes(digest) without 'big': the default byte order is 'big' since "
        "Python 3.11, the oldest fanout supports",
    "fanout.seeding.x_task_seeds__mutmut_1":
        "default first=1: the one caller (manifest.plan_job) always passes first",
    "fanout.runtime.x_exception_fields__mutmut_20":
        "cloudpickle.dumps without protocol: cloudpickle's default protocol (pinned "
        "cloudpickle 3.1.2) is 5, the same as serialization.PROTOCOL",
    "fanout.runtime.xǁWorkerRuntimeǁrun_chunk__mutmut_1":
        "fn starts as '' instead of None: it stays so only with a setup error, which takes "
        "the error's path first",
    "fanout.runtime.xǁWorkerRuntimeǁrun_chunk__mutmut_11":
        "prefetched starts as None: it is read only when the function loaded, and then "
        "replaced by read_chunk's answer first",
    "fanout.runtime.xǁWorkerRuntimeǁrun_chunk__mutmut_12":
        "'or' for 'and' before read_chunk: the chunk's arguments are read although the "
        "function did not load; the tasks fail with the setup error either way (a read error "
        "would replace it only if both failed)",
    "fanout.runtime.xǁWorkerRuntimeǁrun_chunk__mutmut_100":
        "a packed chunk's prefetched payload not passed on: _call_pack reads the same bytes "
        "from the store again (slower only)",
    "fanout.packing.x_run_pack__mutmut_1":
        "default interruptible=True: the one caller (WorkerRuntime._call_pack) always passes it",
    **dict.fromkeys(
        [f"fanout.packing.x_run_pack__mutmut_{n}" for n in (9, 16)],
        "the earlier outcome read on attempt 1 too: a first attempt finds a stored record only "
        "when a duplicate run of that same attempt stored it, whose put then loses anyway, "
        "so the stored record is the same"),
    "fanout.packing.x_run_pack__mutmut_40":
        "offset <= len(earlier.values): a retry runs the same payload, so offsets never "
        "reach the earlier run's length",
    "fanout.packing.x_run_pack__mutmut_50":
        "swap(None) instead of the previous context after the chunk: context.running() "
        "restores the context it replaced as soon as the chunk's call returns, and nothing "
        "reads the current task in between",
    "fanout.packing.x__earlier__mutmut_6":
        "'and' for 'or' on a missing record: record.value then raises AttributeError, "
        "which _earlier catches and answers None, as for a missing record",
    **dict.fromkeys(
        [f"fanout.packing.xǁPackOutcomeǁerror__mutmut_{n}" for n in (6, 11)],
        "the element record's task_index: rebuild_exception reads the type, message, "
        "traceback and pickle, never the index"),
    **dict.fromkeys(
        [f"fanout.backends.aws.pages.x_decode__mutmut_{n}" for n in (17, 18)],
        "'or' for 'and' around the @W reference: every caller passes the page, and a worker "
        "id without '@' never equals a page attribute's name after its first character"),
    **dict.fromkeys(
        [f"fanout.backends.aws.store.xǁAwsStoreǁ_put_page__mutmut_{n}"
         for n in (115, 116, 117, 118, 119, 120)],
        "a lost page write's entries read again with GetItem instead of taken from the "
        "refusal: the same item, strongly consistent (one more read only)"),
    **dict.fromkeys(
        [f"fanout.backends.aws.store.xǁAwsStoreǁ_put_page__mutmut_{n}"
         for n in (121, 122, 123, 124, 125, 126, 127, 128, 129, 130, 131)],
        "the GetItem fallback after a refusal without the item: never runs, since the "
        "write asks for ALL_OLD and a refused condition implies the page exists, so "
        "DynamoDB (and the emulation, which validates the parameter) return it"),
    **dict.fromkeys(
        [f"fanout.backends.aws.pages.x_encode__mutmut_{n}" for n in (93, 95)],
        "json.dumps without compact separators for an entry's extra: the same value reads "
        "back (a few bytes more)"),
    "fanout.backends.aws.pages.x_condition__mutmut_34":
        "' and ' for ' AND ' between a page write's clauses: the expression's keywords are "
        "not case sensitive (moto accepts both; not checkable against DynamoDB offline)",
    "fanout.backends.aws.store.x_task_key__mutmut_2":
        "task_key always 'reduce': every caller passes REDUCE_INDEX (tasks live in pages)",
    **dict.fromkeys(
        [f"fanout.backends.aws.store.xǁAwsStoreǁ_entry__mutmut_{n}" for n in (16, 18)],
        "a spilled record pickled with the default protocol (4) instead of 5: the same "
        "record loads back"),
    "fanout.backends.aws.store.xǁAwsStoreǁ_put_page__mutmut_180":
        "pending = None after a landed write: the loop and the check after it read only "
        "its truth, and None is false as [] is",
    **dict.fromkeys(
        ["fanout.backends.aws.store.xǁAwsStoreǁ_put_page__mutmut_97",
         *[f"fanout.backends.aws.store.xǁAwsStoreǁ_put_reduce__mutmut_{n}"
           for n in (6, 15, 18)]],
        "lower-case SET/OR/AND in an expression: its keywords are not case sensitive "
        "(moto accepts both; not checkable against DynamoDB offline)"),
    **dict.fromkeys(
        [f"fanout.backends.aws.store.xǁAwsStoreǁ_reduce_record__mutmut_{n}"
         for n in (101, 103, 105, 107, 112, 114, 116, 118, 120, 125, 128, 130, 132, 134, 139)],
        "the defaults for a reduce item without stdout, stderr or extra: _reduce_item always "
        "writes all three, so no item of today's format lacks them"),
    "fanout.packing.x_element_futures__mutmut_19":
        "k <= len(values): k runs below count, the chunk's number of calls, which is "
        "len(values) for every chunk that has outcomes",
    "fanout.packing.x_encode__mutmut_6":
        "'' instead of None for a failed call's value: a failed call's outcome is its "
        "exception, its value is never read",
    **dict.fromkeys(
        ["fanout.packing.x_run_pack__mutmut_22",
         "fanout.packing.xǁLazyGlobalSeedsǁ__init____mutmut_2"],
        "the chunk's context starts without the first call's index (so LazyGlobalSeeds "
        "counts no call as seeded): each call sets its index before it runs, and the first "
        "call's first draw then seeds the RNGs with the seed the runner already used"),
    "fanout.packing.xǁLazyGlobalSeedsǁrestore__mutmut_8":
        "saved = None after restoring: restore runs once per chunk, in run_pack's finally",
    "fanout.backends.aws.store.xǁAwsStoreǁresults__mutmut_13":
        "'and' for 'AND' in a KeyConditionExpression: the expression's keywords are not case "
        "sensitive (moto accepts both; not checkable against DynamoDB offline)",
}

#: What the focused tests need besides the package: the stack the AWS emulation deploys.
PROJECT_FILES = ("pyproject.toml", "template.yaml", "statemachine", "functions", "tests")


class _FreezeOutOfScope(cst.CSTTransformer):
    """Adds ``# pragma: no mutate block`` to the header of every function not in scope."""

    def __init__(self, keep: set[str]) -> None:
        self.keep = keep
        self.classes: list[str] = []
        self.functions: list[str] = []  # the functions this one is nested in, qualified

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        self.classes.append(node.name.value)
        return True

    def leave_ClassDef(self, original: cst.ClassDef, updated: cst.ClassDef) -> cst.ClassDef:
        self.classes.pop()
        return updated

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        self.functions.append(".".join([*self.classes, node.name.value]))
        return True

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef
                          ) -> cst.FunctionDef:
        name = self.functions.pop()
        body = updated.body
        # a function nested in one in scope is part of it (element_futures' settle)
        if name in self.keep or any(outer in self.keep for outer in self.functions) or \
                not isinstance(body, cst.IndentedBlock):
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


def restage(target: Path) -> None:
    """Bring a staged copy up to date and keep mutmut's results: files whose content
    changed are replaced (a new mtime: mutmut then makes that file's mutants again and
    re-runs only those of functions whose code changed); tests changed or added are
    picked up by ``mutmut run``, which collects stats for new tests. Survivors of unchanged
    functions keep their verdict: re-run them by name (``mutmut run NAME...``)."""
    fresh = target.with_name(target.name + ".next")
    stage(fresh)
    for path in sorted(fresh.rglob("*")):
        if path.is_dir():
            continue
        relative = path.relative_to(fresh)
        old = target / relative
        if not old.exists() or old.read_bytes() != path.read_bytes():
            old.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, old)
            print(f"updated {relative}")
    for top in ("src", *PROJECT_FILES):
        for path in sorted((target / top).rglob("*") if (target / top).is_dir() else []):
            if path.is_file() and not (fresh / path.relative_to(target)).exists() \
                    and "__pycache__" not in path.parts:
                path.unlink()
                print(f"removed {path.relative_to(target)}")
    shutil.rmtree(fresh)


def in_scope(mutant: str) -> bool:
    """Whether SCOPE names the function of a mutant (``fanout.collector.xǁJobRunǁadd__mutmut_3``
    is ``JobRun.add`` in ``collector.py``; ``fanout.seeding.x_derive_seed__mutmut_1`` is
    ``derive_seed`` in ``seeding.py``)."""
    mangled = mutant.rsplit("__mutmut_", 1)[0]
    module, _, function = mangled.rpartition(".")
    path = module.removeprefix("fanout.").replace(".", "/") + ".py"
    if path not in SCOPE:
        return False
    keep = SCOPE[path]
    if keep is None:
        return True
    if function.startswith("xǁ"):
        name = ".".join(function[2:].split("ǁ"))
    else:
        name = function.removeprefix("x_")
    return name in keep


def score(target: Path) -> int:
    """Print the score over the mutants in scope; the survivors, to kill or to explain."""
    from mutmut.stats import status_by_exit_code

    status: dict[str, str] = {}
    for meta in sorted((target / "mutants").rglob("*.py.meta")):
        for name, code in json.loads(meta.read_text())["exit_code_by_key"].items():
            if in_scope(name):  # a copy staged with a wider scope: count today's scope
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
    if len(argv) != 3 or argv[1] not in ("stage", "restage", "score"):
        print(__doc__, file=sys.stderr)
        return 2
    target = Path(argv[2]).resolve()
    if argv[1] == "stage":
        stage(target)
        return 0
    if argv[1] == "restage":
        restage(target)
        return 0
    return score(target)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
