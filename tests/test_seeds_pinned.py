"""Seeds are pinned across releases: the same (job seed, index) gives the same numbers forever.

Reproducibility across releases is a promise to users: a seeded script must give the same
results after an upgrade. So the derivation is written here a second time, from its
documentation (docs/design.md, "Seeds"), and a few of its values are written down as
literal numbers. Changing the derivation (the hash, its personalisation, the text it
hashes, the mask) or how a task's RNGs are seeded fails these tests; such a change is a
deliberate break that needs a new major version and a line in the changelog, and only then
new numbers here.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

import numpy
import pytest

import fanout
from fanout.context import TaskContext, running
from fanout.seeding import derive_seed, fresh_seed

import tasks


def documented_seed(parent: int, *path: int | str) -> int:
    """docs/design.md: BLAKE2b (8-byte digest, person "fanout-seed") of the parts joined
    by ":", read big-endian, top bit cleared: a 63-bit seed."""
    text = ":".join([str(parent), *(str(part) for part in path)])
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8,
                             person=b"fanout-seed").digest()
    return int.from_bytes(digest, "big") % 2**63


#: (job seed, task index) -> task seed, as fanout 0.1 derived them.
PINNED_TASK_SEEDS = {
    (42, 0): 6603283579920836216,
    (42, 1): 5041678584790188991,
    (42, 999_999): 545176838650535176,
    (0, 0): 8394116049963553082,
    (2**63 - 1, 7): 211201904413670245,
}


@pytest.mark.parametrize(("job_seed", "index"), sorted(PINNED_TASK_SEEDS))
def test_task_seeds_match_the_documented_derivation_and_the_pinned_values(
        job_seed: int, index: int) -> None:
    expected = PINNED_TASK_SEEDS[(job_seed, index)]
    assert documented_seed(job_seed, "task", index) == expected
    assert derive_seed(job_seed, "task", index) == expected


def test_job_submit_and_reduce_seeds_are_pinned() -> None:
    pinned = {
        ("job", 0): 4102605820444259581,
        ("job", 1): 1711319947768097155,
        ("submit", 0): 4105425099234069993,
    }
    for (kind, n), expected in pinned.items():
        assert documented_seed(42, kind, n) == expected
        assert derive_seed(42, kind, n) == expected
    assert derive_seed(42, "reduce") == documented_seed(42, "reduce") == 2338009801121236197


def test_seeds_span_63_bits_and_differ_between_neighbours() -> None:
    seeds = [derive_seed(42, "task", i) for i in range(1000)]
    assert len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**63 for s in seeds)
    assert max(seeds) >= 2**62  # the top bit that is kept is used


def test_a_fresh_job_seed_is_random_and_fits_63_bits() -> None:
    seeds = {fresh_seed() for _ in range(1000)}
    assert len(seeds) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert max(seeds) >= 2**62  # all 1000 below 2**62: a chance of 2**-1000


@pytest.fixture
def saved_global_rngs() -> Iterator[None]:
    """Running a task context seeds ``random`` and numpy's legacy RNG: put them back."""
    state, legacy = random.getstate(), numpy.random.get_state()
    try:
        yield
    finally:
        random.setstate(state)
        numpy.random.set_state(legacy)


@pytest.mark.usefixtures("saved_global_rngs")
def test_first_draws_of_a_task_are_pinned() -> None:
    """Job seed 42, task 0: what ``task_rng()`` and ``random`` give first."""
    seed = derive_seed(42, "task", 0)
    ctx = TaskContext("pinned", 0, 1, seed, store=None)  # type: ignore[arg-type]
    with running(ctx):
        assert fanout.task_seed() == 6603283579920836216
        assert fanout.task_rng().random(3).tolist() == [
            0.6170041412784015, 0.1427857538048961, 0.5862917328890559]
        assert fanout.task_rng().random() != 0.6170041412784015  # the stream continues
        assert random.random() == 0.6361974914457017


def test_a_seeded_executor_gives_the_pinned_numbers_end_to_end(home: Path) -> None:
    """Executor(seed=42): its first map is job seed derive(42, "job", 0); then per task."""
    job_seed = documented_seed(42, "job", 0)
    with fanout.Executor(max_workers=2, seed=42, progress=False, chunksize=2) as ex:
        mapped = list(ex.map(tasks.randomness, range(3)))
        submitted = ex.submit(tasks.randomness, 0).result(timeout=60)
    assert [m[0] for m in mapped] == [documented_seed(job_seed, "task", i) for i in range(3)]
    assert mapped == [
        (5249723685650559393, 0.32883621824690634, 0.3262895409316058),
        (7326763619490506707, 0.02074933531730483, 0.6841292165308),
        (8685364807499111345, 0.9847793502245354, 0.5399596957026281),
    ]
    # The n-th submit's task runs with derive(42, "submit", n) itself.
    assert submitted == (documented_seed(42, "submit", 0), 0.2598067925421732,
                         0.2553711123035566)
