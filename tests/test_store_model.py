"""Model-based tests of both stores: random puts, retries, cancels and reads from several
attempts, checked against a small reference model of the protocol's rules.

The model is written here, independently of the stores: a record is kept if there is none
yet, or if the stored one did not succeed and comes from an earlier attempt. On top of the
model, every step checks two properties from the history alone (no rule restated): a
success, once stored, never changes; a stored record changes only to a later attempt.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from fanout.backends.aws.config import AwsConfig
from fanout.backends.aws.store import AwsStore
from fanout.backends.local.store import LocalStore
from fanout.protocol import (
    CANCELLED,
    FAILED,
    SUCCEEDED,
    Chunk,
    ResultRecord,
    TaskRef,
    retry_plan,
)
from fanout.testing import EmulatedAws, emulated_aws

#: Tasks 0-1 in chunk 0, task 2 in chunk 1: a retry plans per chunk.
CHUNKS = ((0, 1), (2,))
TASKS = tuple(i for chunk in CHUNKS for i in chunk)
TIERS = ("lambda", "batch")

# Sized so both machines together take well under a minute here (2 shared cores). Under
# mutmut a mutant only needs to be caught, not explained: no shrinking, which on moto can
# take minutes.
MODEL_SETTINGS = settings(
    max_examples=50, stateful_step_count=20, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate] if os.environ.get(
        "MUTANT_UNDER_TEST") else list(Phase))


@dataclass(frozen=True)
class Kept:
    """What the model says is stored for a task: enough to tell every write apart."""

    status: str
    attempt: int
    value: str


def kept(rec: ResultRecord | None) -> Kept | None:
    if rec is None:
        return None
    payload = rec.value.decode() if rec.value is not None else rec.exc_message
    assert payload is not None
    return Kept(rec.status, rec.attempt, payload)


class StoreModel(RuleBasedStateMachine):
    """One job per example on a long-lived store; ``store`` is set by the test."""

    store: LocalStore | AwsStore

    def __init__(self) -> None:
        super().__init__()
        self.job_id = f"model-{uuid.uuid4().hex[:12]}"
        self.model: dict[int, Kept] = {}
        self.writes = 0
        self.seen: dict[int, Kept] = {}  # the store's record at the previous check
        self.manifest = [Chunk(self.job_id, n, TIERS[n], 1,
                               tuple(TaskRef(i, "payload-0.bin", i, 1, i) for i in tasks))
                         for n, tasks in enumerate(CHUNKS)]

    # -- the reference model ---------------------------------------------------------------

    def expect(self, task: int, new: Kept) -> Kept:
        old = self.model.get(task)
        if old is None or (old.status != SUCCEEDED and old.attempt < new.attempt):
            self.model[task] = new
        return self.model[task]

    def record(self, task: int, status: str, attempt: int) -> tuple[ResultRecord, Kept]:
        self.writes += 1
        value = f"{status}-a{attempt}-w{self.writes}"  # every write is distinguishable
        rec = ResultRecord(self.job_id, task, status, attempt, f"w{self.writes}", 1.0, 2.0)
        if status == SUCCEEDED:
            rec.value = value.encode()
        else:
            rec.exc_type, rec.exc_message = "builtins.RuntimeError", value
        return rec, Kept(status, attempt, value)

    # -- rules -----------------------------------------------------------------------------

    @rule(task=st.sampled_from(TASKS), status=st.sampled_from([SUCCEEDED, FAILED]),
          attempt=st.integers(1, 4))
    def put(self, task: int, status: str, attempt: int) -> None:
        rec, new = self.record(task, status, attempt)
        assert kept(self.store.put_result(rec)) == self.expect(task, new)

    @rule(items=st.lists(st.tuples(st.sampled_from(TASKS),
                                   st.sampled_from([SUCCEEDED, FAILED, CANCELLED]),
                                   st.integers(1, 4)), min_size=1, max_size=4))
    def put_batch(self, items: list[tuple[int, str, int]]) -> None:
        """A worker's group commit: several records, possibly for one task twice."""
        made = [self.record(*item) for item in items]
        stored = self.store.put_results([rec for rec, _ in made])
        expected = [self.expect(rec.task_index, new) for rec, new in made]
        assert [kept(r) for r in stored] == expected

    @rule(attempt=st.integers(1, 3))
    def cancel(self, attempt: int) -> None:
        """A cancel writes a cancelled record for every task; a result that landed stays."""
        made = [self.record(task, CANCELLED, attempt) for task in TASKS]
        stored = self.store.put_results([rec for rec, _ in made])
        assert [kept(r) for r in stored] == [self.expect(t, new)
                                              for t, (_, new) in zip(TASKS, made, strict=True)]

    @precondition(lambda self: bool(self.model))
    @rule(outcomes=st.lists(st.sampled_from([SUCCEEDED, FAILED]), min_size=3, max_size=3))
    def retry(self, outcomes: list[str]) -> None:
        """Plan a retry from the stored records, then run it: every re-run write lands."""
        plan = retry_plan(self.manifest, self.store.results(self.job_id))
        expected = []
        for n, chunk in enumerate(CHUNKS):
            todo = [t for t in chunk if t not in self.model or self.model[t].status != SUCCEEDED]
            if todo:
                attempt = 1 + max((self.model[t].attempt for t in todo if t in self.model),
                                  default=0)
                expected.append((self.job_id, n, TIERS[n], attempt, todo))
        assert [(c.job_id, c.index, c.tier, c.attempt, [t.index for t in c.tasks])
                for c in plan] == expected
        for chunk_plan in plan:
            for task in chunk_plan.tasks:
                rec, new = self.record(task.index, outcomes[task.index], chunk_plan.attempt)
                assert kept(self.store.put_result(rec)) == self.expect(task.index, new) == new

    @rule()
    def read(self) -> None:
        assert [kept(r) for r in self.store.results(self.job_id)] == [
            self.model[t] for t in sorted(self.model)]

    # -- properties from the history -------------------------------------------------------

    @invariant()
    def stored_records_only_move_forward(self) -> None:
        for task in TASKS:
            now = kept(self.store.result(self.job_id, task))
            assert now == self.model.get(task)
            before = self.seen.get(task)
            if before is not None:
                assert now is not None, f"task {task}'s record vanished"
                if before.status == SUCCEEDED:
                    assert now == before, f"task {task}: a success was replaced by {now}"
                elif now != before:
                    assert now.attempt > before.attempt, (
                        f"task {task}: attempt {before.attempt} was replaced by attempt "
                        f"{now.attempt}")
            if now is not None:
                self.seen[task] = now


@pytest.fixture(scope="module")
def aws() -> Iterator[EmulatedAws]:
    with emulated_aws() as emulation:
        yield emulation


def run_model(store: LocalStore | AwsStore) -> None:
    class Machine(StoreModel):
        pass

    Machine.store = store
    run_state_machine_as_test(Machine, settings=MODEL_SETTINGS)


def test_the_sqlite_store_follows_the_model(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "store")
    try:
        run_model(store)
    finally:
        store.close()


def test_the_dynamodb_store_follows_the_model(aws: EmulatedAws) -> None:
    options = aws.backend_options
    run_model(AwsStore(AwsConfig(bucket=options["bucket"], table=options["table"],
                                 state_machine_arn=options["state_machine_arn"],
                                 region=options["region"], endpoint_url=aws.endpoint_url)))
