"""`fanout dashboard --backend aws` against the emulated stack, in the real browser.

The deployed API is IAM-authorised, so a browser cannot open it; the CLI serves the same
API and page on loopback and reads the stack with the user's credentials. Here the real
CLI runs as a subprocess over the emulation, and headless Chromium reads the page.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_dashboard_browser import browser, free_port, get_json, until

import fanout
from fanout.backends.aws.config import ENVIRONMENT
from fanout.testing import EmulatedAws, emulated_aws

import tasks

__all__ = ["browser"]  # the fixture, used by name below


@pytest.fixture
def aws(tmp_path: Path) -> Iterator[EmulatedAws]:
    with pytest.MonkeyPatch.context() as patch, emulated_aws() as emulation:
        patch.setenv("FANOUT_HOME", str(tmp_path / "home"))
        yield emulation


def start_dashboard(aws: EmulatedAws, home: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    env = {**os.environ, **aws.env, "FANOUT_HOME": str(home)}
    env.pop("FANOUT_BACKEND", None)  # the flag must choose the backend
    for field, variable in ENVIRONMENT.items():
        if aws.backend_options.get(field):
            env[variable] = str(aws.backend_options[field])
    proc = subprocess.Popen([sys.executable, "-m", "fanout.cli", "dashboard", "--backend",
                             "aws", "--port", str(port)], env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            get_json(f"{url}/api/jobs")
            return proc, url
        except (urllib.error.URLError, ConnectionError):
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError("`fanout dashboard --backend aws` did not come up") from None
            time.sleep(0.1)


def test_dashboard_backend_aws_shows_the_stacks_jobs(aws: EmulatedAws, tmp_path: Path,
                                                     browser: Any) -> None:
    from selenium.webdriver.common.by import By

    with fanout.Executor(backend="aws", progress=False, chunksize=2,
                         **aws.backend_options) as ex:
        results = ex.map(tasks.square, range(6))
        assert list(results) == [x * x for x in range(6)]
        ex.schedule("hourly-report", tasks.square, [1, 2], rate="rate(1 hour)")
    proc, url = start_dashboard(aws, tmp_path / "home")
    try:
        api = get_json(f"{url}/api/jobs")
        assert results.job_id in [job["job_id"] for job in api["jobs"]]
        assert [s["name"] for s in get_json(f"{url}/api/schedules")["schedules"]] == [
            "hourly-report"]
        browser.get(f"{url}/")
        until(lambda: results.job_id in browser.find_element(By.TAG_NAME, "body").text,
              timeout=60, what="the AWS job in the page")
        assert "hourly-report" in until(
            lambda: browser.find_element(By.TAG_NAME, "body").text
            if "hourly-report" in browser.find_element(By.TAG_NAME, "body").text else None,
            timeout=60, what="the schedule in the page")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
