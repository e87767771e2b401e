"""The jobs API: every route and error, through Chalice's test client, over a real store."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cfnlint.decode import cfn_yaml
from chalice.test import Client

import fanout
from fanout.web.app import ROUTES, create_app

import tasks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def jobs(home: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A store with a finished job, a failed one and a running one."""
    gate = tmp_path / "gate"
    with fanout.Executor(max_workers=2, progress=False) as ex:
        finished = ex.map(tasks.chatty, range(3))
        list(finished)
        failed = ex.map(tasks.fail_if, range(6), [4] * 6)
        for future in failed.futures:
            future.exception(timeout=60)
        running = ex.map(tasks.block_until, [str(gate)] * 2)
        yield {"finished": finished.job_id, "failed": failed.job_id,
               "running": running.job_id, "executor": ex}
        gate.touch()


@pytest.fixture
def client(home: Path) -> Iterator[Any]:
    with Client(create_app()) as test_client:
        yield test_client


STATE = {"X-Fanout-Request": "1"}  # what the dashboard sends on a state-changing request


def body(response: Any) -> Any:
    return json.loads(response.body)


def test_dashboard_page(client: Any) -> None:
    response = client.http.get("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert b"<html" in response.body.lower() or b"<!doctype" in response.body.lower()


def test_list_jobs_with_paging(client: Any, jobs: dict[str, Any]) -> None:
    first = body(client.http.get("/api/jobs?limit=2"))
    assert len(first["jobs"]) == 2 and first["next_token"]
    second = body(client.http.get(f"/api/jobs?limit=2&next_token={first['next_token']}"))
    assert len(second["jobs"]) == 1 and second["next_token"] is None
    ids = [j["job_id"] for j in first["jobs"] + second["jobs"]]
    assert sorted(ids) == sorted([jobs["finished"], jobs["failed"], jobs["running"]])
    by_id = {j["job_id"]: j for j in first["jobs"] + second["jobs"]}
    assert by_id[jobs["finished"]]["state"] == "finished"
    assert by_id[jobs["finished"]]["counts"]["succeeded"] == 3
    assert by_id[jobs["failed"]]["counts"]["failed"] == 1
    assert by_id[jobs["running"]]["state"] == "running"


@pytest.mark.parametrize("query", ["next_token=garbage", "next_token=eyJvZmZzZXQiOiAteH0=",
                                   "limit=0", "limit=abc", "limit=100000"])
def test_bad_paging_is_400(client: Any, home: Path, query: str) -> None:
    response = client.http.get(f"/api/jobs?{query}")
    assert response.status_code == 400 and "error" in body(response)


def test_one_job(client: Any, jobs: dict[str, Any]) -> None:
    job = body(client.http.get(f"/api/jobs/{jobs['failed']}"))
    assert job["job_id"] == jobs["failed"] and job["n_tasks"] == 6
    assert job["counts"] == {"pending": 0, "running": 0, "succeeded": 5, "failed": 1,
                             "cancelled": 0}


@pytest.mark.parametrize(("path", "status"), [
    ("/api/jobs/20990101-000000-abcdef", 404),
    ("/api/jobs/..", 400),
    ("/api/jobs/.hidden", 400),
    ("/api/jobs/a%2F..%2F..%2Fetc", 400),
    ("/api/jobs/20990101-000000-abcdef/tasks", 404),
    ("/api/schedules/nope/runs", 404),
    ("/api/schedules/..%2Fx/runs", 400),
])
def test_unknown_or_malformed_ids(client: Any, home: Path, path: str, status: int) -> None:
    response = client.http.get(path)
    assert response.status_code == status
    assert body(response)["error"]


def test_tasks_failures_first_with_error_and_log_tail(client: Any, jobs: dict[str, Any]
                                                     ) -> None:
    listing = body(client.http.get(f"/api/jobs/{jobs['failed']}/tasks"))
    first = listing["tasks"][0]
    assert first["status"] == "failed" and first["task_index"] == 4
    assert first["error"]["type"] == "builtins.ValueError"
    assert "task 4 is bad" in first["error"]["traceback"]
    assert [t["status"] for t in listing["tasks"][1:]] == ["succeeded"] * 5
    chatty = body(client.http.get(f"/api/jobs/{jobs['finished']}/tasks?status=succeeded"))
    assert "stdout of task 0" in chatty["tasks"][0]["log_tail"]
    only_failed = body(client.http.get(f"/api/jobs/{jobs['failed']}/tasks?status=failed"))
    assert [t["task_index"] for t in only_failed["tasks"]] == [4]
    paged = body(client.http.get(f"/api/jobs/{jobs['failed']}/tasks?limit=4"))
    assert len(paged["tasks"]) == 4 and paged["next_token"]


def test_bad_task_filter_is_400(client: Any, jobs: dict[str, Any]) -> None:
    response = client.http.get(f"/api/jobs/{jobs['failed']}/tasks?status=exploded")
    assert response.status_code == 400
    assert "pending, running, succeeded, failed, cancelled" in body(response)["error"]


def test_cancel_a_running_job(client: Any, jobs: dict[str, Any]) -> None:
    pending = body(client.http.get(f"/api/jobs/{jobs['running']}/tasks?status=pending"))
    assert pending["tasks"]
    response = client.http.post(f"/api/jobs/{jobs['running']}/cancel", headers=STATE)
    assert response.status_code == 200
    assert body(response)["state"] == "cancelled"
    assert body(response)["counts"]["cancelled"] == 2
    assert client.http.post("/api/jobs/20990101-000000-abcdef/cancel",
                            headers=STATE).status_code == 404


def test_schedules_and_runs(client: Any, home: Path) -> None:
    assert body(client.http.get("/api/schedules")) == {"schedules": []}
    with fanout.Executor(max_workers=1, progress=False) as ex:
        ex.schedule("nightly", tasks.square, [1, 2], cron="cron(0 2 * * ? *)",
                    timezone="Europe/Zurich")
    listing = body(client.http.get("/api/schedules"))["schedules"]
    assert [s["name"] for s in listing] == ["nightly"]
    assert listing[0]["expression"] == "cron(0 2 * * ? *)" and listing[0]["next_fire"]
    assert body(client.http.get("/api/schedules/nightly/runs")) == {"schedule": "nightly",
                                                                    "runs": []}


def test_token_protects_a_local_server(home: Path) -> None:
    with Client(create_app(token="s3cret")) as protected:
        assert protected.http.get("/api/jobs").status_code == 401
        ok = protected.http.get("/api/jobs", headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200
        # Never in the URL, where access logs and browser history would keep it.
        assert protected.http.get("/api/jobs?token=s3cret").status_code == 401
        # A non-ASCII token is a wrong token, not a crash.
        wrong = protected.http.get("/api/jobs", headers={"Authorization": "Bearer s\u00e9cret"})
        assert wrong.status_code == 401 and body(wrong) == {"error": "missing or wrong token"}
        # The page itself holds no data; the token arrives in its URL fragment.
        assert protected.http.get("/").status_code == 200


def test_a_state_change_needs_a_header_no_cross_origin_page_can_send(
        jobs: dict[str, Any]) -> None:
    """What a hostile page's ``fetch(url, {method: "POST", mode: "no-cors"})`` sends."""
    with Client(create_app(hosts=frozenset({"127.0.0.1:8765"}))) as local:
        simple = local.http.post(f"/api/jobs/{jobs['running']}/cancel",
                                 headers={"Host": "127.0.0.1:8765",
                                          "Origin": "http://evil.example"})
        assert simple.status_code == 403 and "X-Fanout-Request" in body(simple)["error"]
        # Even with the header (only possible after a preflight we never approve), another
        # origin is refused.
        forged = local.http.post(f"/api/jobs/{jobs['running']}/cancel",
                                 headers={"Host": "127.0.0.1:8765", **STATE,
                                          "Origin": "http://evil.example"})
        assert forged.status_code == 403 and "evil.example" in body(forged)["error"]
        counts = body(local.http.get(f"/api/jobs/{jobs['running']}",
                                     headers={"Host": "127.0.0.1:8765"}))["counts"]
        assert counts["cancelled"] == 0, "nothing was cancelled"
        own = local.http.post(f"/api/jobs/{jobs['running']}/cancel",
                              headers={"Host": "127.0.0.1:8765", **STATE,
                                       "Origin": "http://127.0.0.1:8765"})
        assert own.status_code == 200 and body(own)["state"] == "cancelled"


def test_a_rebound_host_name_is_not_served(home: Path) -> None:
    """DNS rebinding: attacker.example resolves to 127.0.0.1, but Host still names it."""
    with Client(create_app(hosts=frozenset({"127.0.0.1:8765", "localhost:8765"}))) as local:
        for path in ("/", "/api/jobs"):
            refused = local.http.get(path, headers={"Host": "attacker.example:8765"})
            assert refused.status_code == 421 and "error" in body(refused)
        assert local.http.get("/api/jobs", headers={"Host": "localhost:8765"}).status_code == 200


def test_a_huge_paging_token_is_400_not_500(client: Any, home: Path) -> None:
    import base64

    for token in ["A" * 100_000,
                  base64.urlsafe_b64encode(json.dumps({"offset": 10**200}).encode()).decode()]:
        response = client.http.get(f"/api/jobs?next_token={token}")
        assert response.status_code == 400 and "paging token" in body(response)["error"]


def test_template_routes_match_the_app() -> None:
    template = cfn_yaml.load(str(ROOT / "template.yaml"))
    events = template["Resources"]["ApiFunction"]["Properties"]["Events"]
    declared = {(e["Properties"]["Method"].upper(), e["Properties"]["Path"])
                for e in events.values() if e["Type"] == "Api"}
    app = create_app()
    served = {(method, path) for path, entries in app.routes.items() for method in entries}
    assert declared == served == set(ROUTES)
    api = template["Resources"]["JobsApi"]["Properties"]
    assert api["Auth"]["DefaultAuthorizer"] == "AWS_IAM"


def test_deployed_handler_requires_iam_on_every_route() -> None:
    sys.path.insert(0, str(ROOT))
    try:
        from functions.api.app import app
    finally:
        sys.path.remove(str(ROOT))
    for path, entries in app.routes.items():
        for method, entry in entries.items():
            assert entry.authorizer is not None, f"{method} {path} is not IAM-protected"
            assert type(entry.authorizer).__name__ == "IAMAuthorizer"  # SigV4: unsigned -> 403
