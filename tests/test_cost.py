"""A cost on every job: consumed resources and a USD estimate, locally and on (emulated) AWS."""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
from chalice.test import Client

import fanout
from fanout import cost
from fanout.backends import create_backend
from fanout.testing import EmulatedAws
from fanout.web.app import create_app

import tasks


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, "-m", "fanout.cli", *args], capture_output=True,
                          text=True, timeout=300, env=os.environ.copy())
    assert done.returncode == 0, done.stderr
    return done


def test_a_local_job_costs_cpu_seconds_and_no_dollars(home: Path) -> None:
    with fanout.Executor(max_workers=2, progress=False) as ex:
        results = ex.map(tasks.spin, [0.05] * 6)
        list(results)
    job = fanout.Job.attach(results.job_id)
    summary = job.summary()
    spent = summary["cost"]
    assert spent["backend"] == "local" and spent["usd"] == 0.0
    # CPU-seconds are the tasks' own time, as recorded: at least what each task spun.
    assert spent["resources"]["cpu_seconds"] == pytest.approx(summary["task_seconds"], abs=1e-5)
    assert spent["resources"]["cpu_seconds"] >= 6 * 0.05
    status = _cli("status", results.job_id).stdout
    assert "cost: " in status and "CPU-seconds on local workers, $0.00" in status
    as_json = json.loads(_cli("status", results.job_id, "--json").stdout)
    assert as_json["cost"]["resources"] == spent["resources"]
    with Client(create_app()) as client:
        api = json.loads(client.http.get(f"/api/jobs/{results.job_id}").body)
    assert api["cost"]["resources"] == spent["resources"] and api["cost"]["usd"] == 0.0


def test_estimate_from_a_sample_scales_to_the_whole(home: Path) -> None:
    guess = fanout.estimate(tasks.spin, [0.02] * 50, sample=5, max_workers=2)
    assert guess["estimate"] and guess["sample"] == 5 and guess["tasks"] == 50
    sample_job = fanout.Job.attach(guess["sample_job"])
    assert sample_job.n_tasks == 5
    sampled = sample_job.summary()["cost"]["resources"]["cpu_seconds"]
    assert guess["resources"]["cpu_seconds"] == pytest.approx(10 * sampled, rel=1e-6)
    # Executor-only options (not backend options) pass through, as to Executor itself.
    guess = fanout.estimate(tasks.spin, [0.0] * 6, sample=3, max_workers=1,
                            initializer=tasks.square, initargs=(2,), max_tasks_per_child=2)
    assert guess["sample"] == 3 and guess["tasks"] == 6
    with pytest.raises(ValueError, match="sample must be"):
        fanout.estimate(tasks.spin, [0.0], sample=0)
    with pytest.raises(ValueError, match="at least one item"):
        fanout.estimate(tasks.spin, [])


def test_prices_are_dated_cited_and_replaceable() -> None:
    table = cost.prices_for("us-east-1")
    assert table.as_of and all(src.startswith("https://aws.amazon.com/") for src in table.sources)
    assert cost.prices_for("eu-central-2") == table  # no table: us-east-1's, and said so
    usage = cost.Usage(lambda_gb_seconds=1000.0, lambda_requests=1000, sfn_transitions=1000)
    usd = cost.price(usage, table)
    assert usd["lambda"] == pytest.approx(1000 * 0.0000166667 + 1000 * 0.2e-6)
    assert usd["step_functions"] == pytest.approx(0.025)
    assert "no price table for eu-central-2" in cost.report("aws", usage, region="eu-central-2"
                                                            )["note"]
    doubled = cost.prices_for("us-east-1", lambda_gb_second=2 * table.lambda_gb_second)
    assert cost.price(usage, doubled)["lambda"] > usd["lambda"]
    with pytest.raises(TypeError, match="unknown price"):
        cost.prices_for("us-east-1", lambda_gb_hour=1.0)
    with pytest.raises(ValueError, match="finite number >= 0"):
        cost.register_prices(replace(table, region="test-1", s3_put=-1.0))
    cost.register_prices(replace(table, region="test-1", s3_put=1.0))
    try:
        assert cost.prices_for("test-1").s3_put == 1.0
    finally:
        cost._TABLES.pop("test-1")  # leave the process's tables as they were


@pytest.fixture(scope="module")
def aws(offline_aws: EmulatedAws) -> EmulatedAws:
    return offline_aws


def _requests(aws: EmulatedAws) -> collections.Counter[tuple[str, str]]:
    by_operation: collections.Counter[tuple[str, str]] = collections.Counter()
    for (_, service, operation), n in aws.requests.items():
        by_operation[(service, operation)] += n
    return by_operation


def _requests_before_a_job(aws: EmulatedAws) -> collections.Counter[tuple[str, str]]:
    """The requests so far, once the client has asked the worker function what it was built
    with: it does that once per process, and that invoke belongs to no job. (Without it the
    first job a process runs counts one Invoke more: seen when a test ran alone.)"""
    create_backend("aws", **aws.backend_options).check_worker_build()  # type: ignore[attr-defined]
    return _requests(aws)


def test_an_aws_job_costs_lambda_step_functions_s3_and_dynamodb(aws: EmulatedAws) -> None:
    before = _requests_before_a_job(aws)
    with fanout.Executor(backend="aws", progress=False, chunksize=4,
                         **aws.backend_options) as ex:
        results = ex.map(tasks.square, range(12))
        assert list(results) == [i * i for i in range(12)]
    made = _requests(aws) - before  # every request the job made, counted by the emulation
    job = fanout.Job.attach(results.job_id, "aws", **aws.backend_options)
    spent = job.summary()["cost"]
    used = spent["resources"]
    # The billed meters match what was really requested (the model is not a guess).
    assert used["lambda_requests"] == made[("lambda", "Invoke")] == 3 + 1  # chunks + finalize
    assert used["s3_puts"] == made[("s3", "PutObject")]
    assert used["s3_gets"] == made[("s3", "GetObject")]
    assert used["dynamodb_writes"] == made[("dynamodb", "PutItem")] + made[
        ("dynamodb", "UpdateItem")]
    execution = job._backend._job(results.job_id)["execution_arn"]  # type: ignore[attr-defined]
    assert aws.state_transitions(execution) == cost.SFN_TRANSITIONS_PER_JOB  # the parent's
    assert used["sfn_transitions"] == cost.SFN_TRANSITIONS_PER_JOB + 3  # + one per chunk
    assert used["lambda_gb_seconds"] > 0 and "cpu_seconds" not in used
    assert spent["usd"] > 0 and spent["prices"]["as_of"] == cost.US_EAST_1.as_of
    # The USD figure is the table applied to the resources, line by line.
    table = cost.prices_for(spent["prices"]["region"])
    usage = cost.Usage(**{f.name: used.get(f.name, 0) for f in fields(cost.Usage)})
    assert spent["usd"] == pytest.approx(cost.price(usage, table)["total"], rel=1e-4)
    # Users' prices win: everything at $1 per unit prices each unit at $1.
    every_unit: dict[str, Any] = dict.fromkeys([f.name for f in fields(cost.Prices)[2:-1]], 1.0)
    ones = replace(cost.US_EAST_1, as_of="test", **every_unit)
    at_one = job.summary(prices=ones)["cost"]
    assert at_one["usd"] == pytest.approx(sum(v for k, v in used.items() if k != "tasks"))
    status = subprocess.run([sys.executable, "-m", "fanout.cli", "--backend", "aws", "status",
                             results.job_id], capture_output=True, text=True, timeout=300,
                            env={**os.environ, **aws.env, **_stack_environment(aws)})
    assert "cost: ~$" in status.stdout and "GB-s" in status.stdout, status.stderr


def _stack_environment(aws: EmulatedAws) -> dict[str, str]:
    """What `fanout configure` would record, as the environment variables the CLI reads."""
    from fanout.backends.aws.config import ENVIRONMENT

    options = aws.backend_options
    env = {ENVIRONMENT[k]: str(v) for k, v in options.items() if k in ENVIRONMENT}
    env["AWS_REGION"] = str(options["region"])
    return env


def test_an_estimate_on_aws_counts_requests_as_the_real_job_does(aws: EmulatedAws) -> None:
    guess = fanout.estimate(tasks.square, range(40), sample=8, backend="aws", chunksize=4,
                            **aws.backend_options)
    with fanout.Executor(backend="aws", progress=False, chunksize=4,
                         **aws.backend_options) as ex:
        results = ex.map(tasks.square, range(40))
        list(results)
    real = fanout.Job.attach(results.job_id, "aws", **aws.backend_options).summary()["cost"]
    for meter in ("lambda_requests", "sfn_transitions", "s3_puts", "s3_gets",
                  "dynamodb_writes", "dynamodb_reads"):
        assert guess["resources"][meter] == real["resources"][meter], meter
    assert guess["resources"]["lambda_requests"] == math.ceil(40 / 4) + 1
    assert guess["usd"] > 0


def test_a_batch_job_costs_fargate_spot_with_its_minimum(aws: EmulatedAws) -> None:
    before = _requests_before_a_job(aws)
    with fanout.Executor(backend="aws", progress=False, chunksize=3, tier="batch",
                         **aws.backend_options) as ex:
        results = ex.map(tasks.square, range(6))
        assert list(results) == [i * i for i in range(6)]
    made = _requests(aws) - before
    used = fanout.Job.attach(results.job_id, "aws", **aws.backend_options).summary()["cost"][
        "resources"]
    assert sum(n for (service, op), n in made.items()
               if service == "batch" and op.lower() == "submitjob") == 2, made
    # Two Batch jobs of one vCPU, each billed for at least Fargate's one-minute minimum.
    assert used["fargate_spot_vcpu_seconds"] >= 2 * cost.FARGATE_MINIMUM_SECONDS
    assert used["fargate_spot_gb_seconds"] == pytest.approx(
        used["fargate_spot_vcpu_seconds"] * cost.BATCH_MEMORY_MB / 1024)
    assert used["lambda_requests"] == made[("lambda", "Invoke")] == 1  # finalize only
    assert "lambda_gb_seconds" not in used
