"""The jobs API and dashboard as one Chalice app.

The same routes serve two ways: deployed on AWS (``functions/api/app.py``, API Gateway with
IAM authorization: an unsigned request gets 403) and locally by ``fanout dashboard`` over
the embedded store (loopback only, or with a token). Routes only translate HTTP; the
answers come from :class:`~fanout.web.service.JobsService`.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from chalice.app import Chalice, Response

from ..backends import Backend, create_backend
from .service import ApiError, JobsService

#: (method, path) of every route; the template's API events are checked against this.
ROUTES = (
    ("GET", "/"),
    ("GET", "/api/jobs"),
    ("GET", "/api/jobs/{job_id}"),
    ("GET", "/api/jobs/{job_id}/tasks"),
    ("POST", "/api/jobs/{job_id}/cancel"),
    ("GET", "/api/schedules"),
    ("GET", "/api/schedules/{name}/runs"),
)


def _json(body: Any, status: int = 200) -> Response:
    return Response(body=json.dumps(body, default=str), status_code=status,
                    headers={"Content-Type": "application/json",
                             "Cache-Control": "no-store"})


def create_app(backend_factory: Callable[[], Backend] | None = None, *,
               authorizer: Any = None, token: str | None = None) -> Chalice:
    """The app over ``backend_factory()`` (default: the configured backend).

    ``authorizer`` protects every route on AWS (IAM); ``token`` protects a local server that
    listens beyond loopback (``Authorization: Bearer TOKEN`` or ``?token=TOKEN``).
    """
    app = Chalice(app_name="fanout-api")
    state: dict[str, JobsService] = {}

    def service() -> JobsService:
        if "service" not in state:
            state["service"] = JobsService((backend_factory or create_backend)())
        return state["service"]

    def guard(handler: Callable[..., Any]) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            request = app.current_request
            assert request is not None
            if token is not None:
                headers: dict[str, str] = dict(request.headers or {})
                params: dict[str, str] = dict(request.query_params or {})
                given = headers.get("authorization", "")
                supplied = given.removeprefix("Bearer ").strip() or params.get("token", "")
                if not hmac.compare_digest(supplied, token):
                    return _json({"error": "missing or wrong token"}, 401)
            try:
                return handler(*args, **kwargs)
            except ApiError as exc:
                return _json({"error": exc.message}, exc.status)
        wrapped.__name__ = handler.__name__
        return wrapped

    def query(name: str) -> str | None:
        request = app.current_request
        assert request is not None
        params: dict[str, str] = dict(request.query_params or {})
        value = params.get(name)
        return None if value is None else str(value)

    auth = {"authorizer": authorizer} if authorizer is not None else {}

    @app.route("/", methods=["GET"], **auth)
    @guard
    def dashboard() -> Response:
        page = resources.files("fanout.web").joinpath("dashboard.html").read_text()
        return Response(body=page, status_code=200,
                        headers={"Content-Type": "text/html; charset=utf-8"})

    @app.route("/api/jobs", methods=["GET"], **auth)
    @guard
    def list_jobs() -> Response:
        return _json(service().list_jobs(query("limit"), query("next_token")))

    @app.route("/api/jobs/{job_id}", methods=["GET"], **auth)
    @guard
    def job(job_id: str) -> Response:
        return _json(service().job(job_id))

    @app.route("/api/jobs/{job_id}/tasks", methods=["GET"], **auth)
    @guard
    def tasks(job_id: str) -> Response:
        return _json(service().tasks(job_id, query("status"), query("limit"),
                                     query("next_token")))

    @app.route("/api/jobs/{job_id}/cancel", methods=["POST"], **auth)
    @guard
    def cancel(job_id: str) -> Response:
        return _json(service().cancel(job_id))

    @app.route("/api/schedules", methods=["GET"], **auth)
    @guard
    def schedules() -> Response:
        return _json(service().schedules())

    @app.route("/api/schedules/{name}/runs", methods=["GET"], **auth)
    @guard
    def schedule_runs(name: str) -> Response:
        return _json(service().schedule_runs(name))

    return app
