"""The dashboard in a real browser (Debian's headless Chromium through Selenium).

A local store holds a finished job, a job whose tasks partly fail and a job still running;
``make_server`` serves the API and page over it, and the test reads the page as a person
would: job states and progress, failures first, a traceback one click away, the timeline.
With ``FANOUT_UPDATE_SCREENSHOT=1`` it also rewrites docs/dashboard.png (never otherwise: a
test run leaves tracked files alone). ``make browser`` installs Chromium and its driver.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import pytest

import fanout
from fanout.web.server import make_server

from conftest import eventually, wait_for_file

pytestmark = pytest.mark.skipif(os.environ.get("FANOUT_BROWSER") == "skip",
                                reason="make test BROWSER=skip: no browser tests asked for")

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SCREENSHOT = Path(__file__).resolve().parent.parent / "docs" / "dashboard.png"


# -- tasks (module level: pickled by value to the workers) ----------------------------------

def resize_image(x: int) -> int:
    print(f"resizing image {x}")
    time.sleep(0.02)
    return x * x


def validate_record(x: int) -> int:
    print(f"validating record {x}")
    time.sleep(0.05 + 0.01 * (x % 4))
    if x % 4 == 1:
        print(f"record {x}: checksum mismatch, giving up", file=sys.stderr)
        raise ValueError(f"record {x} has a bad checksum")
    return x


def wait_for_gate(x: int, gate: str) -> int:
    print(f"waiting for the gate (task {x})")
    if not wait_for_file(gate, timeout=60.0):
        raise TimeoutError(f"{gate} never appeared")
    return x


# -- fixtures ---------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Served:
    def __init__(self, url: str, gate: Path, jobs: dict[str, str]) -> None:
        self.url = url
        self.gate = gate
        self.jobs = jobs


def serve(store: Path, token: str | None = None) -> tuple[Any, str]:
    port = free_port()
    server = make_server("127.0.0.1", port, token=token, home=str(store))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{port}"


def get_json(url: str, headers: dict[str, str] | None = None) -> Any:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.load(response)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """Three jobs in a store of their own (finished, partly failed, running), served."""
    store = tmp_path / "store"
    gate = tmp_path / "gate"
    ex = fanout.Executor(max_workers=2, progress=False, home=str(store))
    running: list[Future[Any]] = []
    server = None
    try:
        finished = ex.map(resize_image, range(5))
        assert list(finished) == [x * x for x in range(5)]
        failing = ex.map(validate_record, range(8))
        wait(failing.futures, timeout=120)
        eventually(lambda: all(ex.backend.job_info(j).state == "finished"
                               for j in (finished.job_id, failing.job_id)),
                   what="the first two jobs to be recorded as finished")
        blocked = ex.map(wait_for_gate, range(3), [str(gate)] * 3)
        running = list(blocked.futures)
        server, url = serve(store)
        jobs = {"finished": finished.job_id, "failed": failing.job_id, "running": blocked.job_id}
        yield Served(url, gate, jobs)
    finally:
        gate.touch()
        if running:
            wait(running, timeout=120)
        if server is not None:
            server.shutdown()
        ex.shutdown(wait=True)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        pytest.skip(f"{' and '.join(missing)} missing: run `make browser` to install "
                    "Debian's chromium and chromium-driver")
    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never download
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        # The screenshot's viewport should be 1280x900: make up for the window's own frame.
        driver.set_window_size(1280, 900)
        inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
        driver.set_window_size(1280 + 1280 - inner[0], 900 + 900 - inner[1])
        yield driver
    finally:
        driver.quit()


def until(condition: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
    """Poll ``condition`` (a browser read) until it returns something truthy; return it."""
    from selenium.common.exceptions import (
        NoSuchElementException,
        StaleElementReferenceException,
    )

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = condition()
        # The page re-rendered under us, or has not rendered the element yet: read again.
        except (StaleElementReferenceException, NoSuchElementException):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(0.05)


# -- the browser test -------------------------------------------------------------------

def test_dashboard_shows_jobs_failures_and_timeline(served: Served, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    api = get_json(f"{served.url}/api/jobs")
    states = {job["job_id"]: job["state"] for job in api["jobs"]}
    assert states[served.jobs["finished"]] == "finished"
    assert states[served.jobs["failed"]] == "finished"
    assert states[served.jobs["running"]] == "running"

    browser.get(served.url + "/")

    def item(job_id: str) -> Any:
        return browser.find_element(By.CSS_SELECTOR, f'#jobs li[data-job-id="{job_id}"]')

    def shown(job_id: str) -> tuple[str, str]:
        li = item(job_id)
        return (li.find_element(By.CSS_SELECTOR, ".state-badge").text,
                li.find_element(By.CSS_SELECTOR, ".progress-text").text)

    until(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#jobs li[data-job-id]")) == 3,
          what="three jobs listed")
    order = [li.get_attribute("data-job-id")
             for li in browser.find_elements(By.CSS_SELECTOR, "#jobs li[data-job-id]")]
    assert order == [served.jobs["running"], served.jobs["failed"], served.jobs["finished"]]
    assert shown(served.jobs["finished"]) == ("finished", "5/5")
    assert shown(served.jobs["failed"]) == ("finished", "8/8")
    assert shown(served.jobs["running"]) == ("running", "0/3")
    failed_item = item(served.jobs["failed"])
    assert failed_item.find_element(By.CSS_SELECTOR, ".badge.failures").text == "2 failed"
    segments = {seg.get_attribute("data-state")
                for seg in failed_item.find_elements(By.CSS_SELECTOR, ".progress .seg")}
    assert segments == {"succeeded", "failed"}
    assert browser.find_element(By.ID, "no-schedules").text == "no schedules"
    assert not browser.find_element(By.ID, "error-banner").is_displayed()

    # The failed job's detail: failures first, the traceback one click away.
    failed = served.jobs["failed"]
    item(failed).click()
    rows = until(lambda: browser.find_elements(
        By.CSS_SELECTOR, f'#job-detail[data-job-id="{failed}"] tr.task-row'), what="task rows")
    statuses = [row.get_attribute("data-status") for row in rows]
    assert statuses == ["failed"] * 2 + ["succeeded"] * 6
    assert [row.get_attribute("data-task-index") for row in rows[:2]] == ["1", "5"]
    cost = until(lambda: re.search(r"\d+\.\d\d CPU-s, \$0\.00", browser.find_element(
        By.ID, "detail-summary").text), what="the job's cost in its summary line")
    assert cost
    assert not browser.find_elements(By.CSS_SELECTOR, "pre.traceback")
    first_failed = browser.find_element(By.CSS_SELECTOR, "tr.task-row[data-status=failed]")
    first_failed.click()
    traceback = until(lambda: [pre for pre in browser.find_elements(
        By.CSS_SELECTOR, "tr.task-detail-row pre.traceback") if pre.is_displayed()],
        what="the traceback")[0]
    assert "Traceback (most recent call last)" in traceback.text
    assert "ValueError: record 1 has a bad checksum" in traceback.text
    assert "in validate_record" in traceback.text
    detail = browser.find_element(By.CSS_SELECTOR, "tr.task-detail-row")
    assert detail.find_element(By.CSS_SELECTOR, ".exc").text == \
        "ValueError: record 1 has a bad checksum"
    log_tail = detail.find_element(By.CSS_SELECTOR, "pre.log-tail").text
    assert "validating record 1" in log_tail and "checksum mismatch" in log_tail

    # A succeeded row opens to its log tail.
    ok_row = browser.find_element(By.CSS_SELECTOR, "tr.task-row[data-status=succeeded]")
    index = ok_row.get_attribute("data-task-index")
    ok_row.click()
    ok_detail = until(lambda: browser.find_elements(
        By.CSS_SELECTOR, f'tr.task-detail-row[data-task-index="{index}"] pre.log-tail'),
        what="a succeeded task's log tail")[0]
    assert f"validating record {index}" in ok_detail.text
    ok_row.click()
    until(lambda: not browser.find_elements(
        By.CSS_SELECTOR, f'tr.task-detail-row[data-task-index="{index}"]'),
        what="the succeeded row to close")

    # The timeline: one lane per worker that ran a task, one bar per task, failures red.
    tasks = get_json(f"{served.url}/api/jobs/{failed}/tasks")["tasks"]
    workers = {task["worker_id"] for task in tasks}
    lanes = browser.find_elements(By.CSS_SELECTOR, "#timeline svg g.lane")
    assert {lane.get_attribute("data-worker") for lane in lanes} == workers
    assert len(lanes) == len(workers)
    bars = browser.find_elements(By.CSS_SELECTOR, "#timeline svg rect")
    assert len(bars) == 8
    red = {bar.get_attribute("data-task-index")
           for bar in browser.find_elements(By.CSS_SELECTOR, "#timeline svg rect.bar.failed")}
    assert red == {"1", "5"}
    for lane in lanes:
        worker = lane.get_attribute("data-worker")
        expected = sum(task["worker_id"] == worker for task in tasks)
        assert len(lane.find_elements(By.CSS_SELECTOR, "rect.bar")) == expected
    assert "seconds since the first task started" in browser.find_element(
        By.ID, "job-detail").text
    assert not browser.find_element(By.ID, "error-banner").is_displayed()

    browser.execute_script("window.scrollTo(0, 0)")
    png = browser.get_screenshot_as_png()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    if os.environ.get("FANOUT_UPDATE_SCREENSHOT") == "1":  # a tracked file: only on request
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(png)

    # The running job's bar is live: it moves when the gate opens, without a reload.
    served.gate.touch()
    until(lambda: shown(served.jobs["running"]) == ("finished", "3/3"), timeout=60,
          what="the running job's progress to update live")


def test_dashboard_shows_an_error_banner_when_the_api_fails(tmp_path: Path,
                                                          browser: Any) -> None:
    from selenium.webdriver.common.by import By

    store = tmp_path / "store"
    server, url = serve(store, token="s3cret")
    try:
        browser.get(url + "/#token=s3cret")
        until(lambda: browser.find_elements(By.ID, "no-schedules")
              and browser.find_element(By.ID, "jobs-empty").is_displayed(),
              what="the page to load its (empty) schedules and jobs")
        assert not browser.find_element(By.ID, "error-banner").is_displayed()
        # The token left the address bar (and was never in a request line).
        assert "s3cret" not in browser.current_url
        # A job the API does not know: the detail's request fails and the banner says why.
        browser.get(url + "/#job=no-such-job")
        banner = until(lambda: [b for b in browser.find_elements(By.ID, "error-banner")
                                if b.is_displayed()], what="the error banner")[0]
        assert "404" in banner.text and "no job 'no-such-job'" in banner.text
    finally:
        server.shutdown()


# -- serving rules ----------------------------------------------------------------------

def test_refuses_a_non_loopback_host_without_a_token(tmp_path: Path) -> None:
    with pytest.raises(fanout.ConfigurationError, match="token"):
        make_server("0.0.0.0", free_port(), home=str(tmp_path / "store"))


def test_token_is_required_when_configured(tmp_path: Path) -> None:
    server, url = serve(tmp_path / "store", token="s3cret")
    try:
        for path in ("/api/jobs", "/api/schedules"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(url + path, timeout=30)
            assert refused.value.code == 401
            assert json.load(refused.value) == {"error": "missing or wrong token"}
            with pytest.raises(urllib.error.HTTPError) as wrong:
                get_json(url + path, {"Authorization": "Bearer nope"})
            assert wrong.value.code == 401
        assert get_json(url + "/api/jobs", {"Authorization": "Bearer s3cret"}) == \
            {"jobs": [], "next_token": None}
        with urllib.request.urlopen(url + "/", timeout=30) as page:  # the page holds no data
            assert page.status == 200
            assert page.headers["Content-Type"].startswith("text/html")
            html = page.read().decode()
        # Self-contained: the only URL in the page is the SVG namespace (never fetched).
        assert "<script>" in html and " src=" not in html
        assert set(re.findall(r"https?://[^\s\"')]*", html)) == {"http://www.w3.org/2000/svg"}
    finally:
        server.shutdown()


HOSTILE_PAGE = """<!doctype html><html><body><script>
fetch("{target}/api/jobs/{job}/cancel", {{method: "POST", mode: "no-cors"}})
  .then(() => {{ document.title = "sent"; }}, () => {{ document.title = "sent"; }});
</script></body></html>"""


def test_another_web_page_cannot_cancel_a_job(served: Served, browser: Any) -> None:
    """Finding 9: a page from another origin posts to the dashboard's cancel route."""
    import http.server

    job = served.jobs["running"]
    page = HOSTILE_PAGE.format(target=served.url, job=job).encode()

    class Hostile(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: Any) -> None:
            pass

    hostile = http.server.HTTPServer(("127.0.0.1", 0), Hostile)
    threading.Thread(target=hostile.serve_forever, daemon=True).start()
    try:
        browser.get(f"http://127.0.0.1:{hostile.server_address[1]}/")
        until(lambda: browser.title == "sent", what="the hostile page's request to be sent")
        # Its request reached the server (a simple request needs no preflight) and was
        # refused: the job runs on.
        assert get_json(f"{served.url}/api/jobs/{job}")["state"] == "running"
        assert get_json(f"{served.url}/api/jobs/{job}")["counts"]["cancelled"] == 0
    finally:
        hostile.shutdown()
        hostile.server_close()
    # The dashboard itself still cancels: its requests carry the header, from its origin.
    browser.get(f"{served.url}/#job={job}")
    from selenium.webdriver.common.by import By

    button = until(lambda: [b for b in browser.find_elements(By.ID, "cancel-job")
                            if b.is_displayed()], what="the cancel button")[0]
    browser.execute_script("window.confirm = () => true")
    button.click()
    until(lambda: get_json(f"{served.url}/api/jobs/{job}")["state"] == "cancelled",
          what="the dashboard's own cancel to work")

