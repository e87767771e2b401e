"""Invariants of the AWS scale model (bench/scale_model.py): fast, no AWS, no moto."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import scale_model as model


def load(prediction: model.Prediction, resource: str) -> model.Load:
    return next(item for item in prediction.loads if item.resource == resource)


TABLE = "DynamoDB table: hottest partition key, writes"
INDEX = "DynamoDB GSI by_finished: hottest key, writes"


def test_item_sizes_follow_dynamodb_rules() -> None:
    # Names count; strings are UTF-8 bytes; numbers ~1 byte per two significant digits + 1.
    assert model.item_bytes({"ab": {"S": "héllo"}}) == 2 + 6
    assert model.item_bytes({"n": {"N": "12345"}}) == 1 + 1 + 3
    assert model.item_bytes({"n": {"N": "-0.0012300"}}) == 1 + 1 + 2
    assert model.item_bytes({"b": {"B": b"\x00" * 10}}) == 1 + 10
    assert model.item_bytes({"m": {"M": {"k": {"S": "v"}}}}) == 1 + 3 + (1 + 1 + 1)
    assert model.write_units(1024) == 1 and model.write_units(1025) == 2


def test_todays_key_design_throttles_at_10k_and_the_proposed_one_does_not() -> None:
    workload = model.Workload(10_000)
    today = model.predict(workload, model.TODAY_KEYS)
    proposed = model.predict(workload, model.PROPOSED)
    assert load(today, TABLE).throttles and load(today, INDEX).throttles
    assert today.concurrency == proposed.concurrency == 10_000
    assert proposed.throttled == []
    assert [item.resource for item in proposed.loads if item.at_risk] == []
    # The one thing the proposed design cannot change: the account's Lambda quota.
    assert [item.resource for item in proposed.quotas] == [
        "Lambda: concurrent executions vs account quota"]


def test_todays_plan_is_capped_by_max_concurrency_and_the_child_start_rate() -> None:
    prediction = model.predict(model.Workload(10_000), model.TODAY)
    assert prediction.concurrency == model.TODAY_MAX_CONCURRENCY
    starts = load(prediction, "Step Functions: child starts per Map Run")
    assert starts.rate == pytest.approx(model.CHILD_START_RATE_STANDARD)


@pytest.mark.parametrize("design", [model.TODAY_KEYS, model.PROPOSED])
def test_rates_scale_linearly_with_concurrency(design: model.Design) -> None:
    small = model.predict(model.Workload(2_000), design)
    large = model.predict(model.Workload(8_000), design)
    for resource in (TABLE, INDEX):
        total_small = load(small, resource).rate * small.shards
        total_large = load(large, resource).rate * large.shards
        assert total_large == pytest.approx(4 * total_small, rel=0.01)


@pytest.mark.parametrize("concurrency", [500, 1_000, 3_000, 10_000, 30_000, 100_000])
def test_shard_rule_keeps_every_key_at_half_its_limit(concurrency: int) -> None:
    prediction = model.predict(model.Workload(concurrency), model.PROPOSED)
    for resource in (TABLE, INDEX):
        assert load(prediction, resource).share <= model.PLAN_UTILISATION
    assert prediction.shards & (prediction.shards - 1) == 0  # a power of two


def test_the_ramp_follows_lambdas_scaling_rate() -> None:
    prediction = model.predict(model.Workload(10_000), model.PROPOSED)
    # 1,000 environments at once, then +1,000 per 10 s: 10,000 takes at least 90 s.
    assert prediction.ramp_seconds >= 90
    running = dict(prediction.series)
    assert max(v for t, v in running.items() if t < 10) <= model.LAMBDA_SCALE_STEP


def test_proposed_design_writes_well_below_one_item_per_task() -> None:
    writes, units = model.page_writes(model.PROPOSED, 1.0, 8)
    assert writes <= 0.25 and units <= 0.25
    assert model.page_writes(model.TODAY, 1.0, 8) == (1.0, 1.0)
