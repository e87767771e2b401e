"""The jobs API and dashboard as one Chalice app.

The same routes serve two ways: deployed on AWS (``functions/api/app.py``, API Gateway with
IAM authorization: an unsigned request gets 403) and locally by ``fanout dashboard`` over
the embedded store (loopback only, or with a token). Routes only translate HTTP; the
answers come from :class:`~fanout.web.service.JobsService`.

A local server must also be safe from other web pages open in the same browser: it answers
only requests whose ``Host`` names the address it serves (so a DNS-rebinding name pointing
at 127.0.0.1 gets nothing), and a state-changing request needs the ``X-Fanout-Request``
header, which a cross-origin page cannot send without a CORS preflight this server never
approves, plus an ``Origin`` (when sent) that is its own. The token travels only in the
``Authorization`` header: never in a URL, where access logs and history would keep it.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from importlib import resources
from typing import Any

from chalice.app import Chalice, Response

from ..backends import Backend, create_backend
from ..errors import (
    FanoutError,
    InvalidArgument,
    InvalidArgumentType,
    JobNotFound,
    JobStillRunning,
    ScheduleExists,
    ScheduleNotFound,
    StoreError,
)
from .service import ApiError, JobsService

#: The header a state-changing request must carry (any value): not CORS-safelisted.
CSRF_HEADER = "X-Fanout-Request"

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


#: The HTTP status of each error a request may meet: a missing name is 404, a conflict with
#: what exists 409, a bad value 400, an unreachable store 503. Any other ``FanoutError`` is
#: the server's set-up (500 with its message); an exception that is not a ``FanoutError``
#: is a bug and reaches Chalice as one.
STATUSES: tuple[tuple[type[FanoutError], int], ...] = (
    (JobNotFound, 404), (ScheduleNotFound, 404), (ScheduleExists, 409), (JobStillRunning, 409),
    (InvalidArgument, 400), (InvalidArgumentType, 400), (StoreError, 503),
)


def status_for(error: FanoutError) -> int:
    return next((status for kind, status in STATUSES if isinstance(error, kind)), 500)


def _json(body: Any, status: int = 200) -> Response:
    return Response(body=json.dumps(body, default=str), status_code=status,
                    headers={"Content-Type": "application/json",
                             "Cache-Control": "no-store"})


def _matches(supplied: str, token: str) -> bool:
    """Constant-time comparison that also takes non-ASCII input (as bytes): never a 500."""
    return hmac.compare_digest(supplied.encode("utf-8", "surrogateescape"),
                               token.encode("utf-8", "surrogateescape"))


def create_app(backend_factory: Callable[[], Backend[Any]] | None = None, *,
               authorizer: Any = None, token: str | None = None,
               hosts: frozenset[str] | None = None) -> Chalice:
    """The app over ``backend_factory()`` (default: the configured backend).

    ``authorizer`` protects every route on AWS (IAM); ``token`` protects a local server's API
    (``Authorization: Bearer TOKEN``); ``hosts`` are the ``Host`` values a local server
    answers to (``host:port`` forms of the address it listens on).
    """
    app = Chalice(app_name="fanout-api")
    state: dict[str, JobsService] = {}

    def service() -> JobsService:
        if "service" not in state:
            state["service"] = JobsService((backend_factory or create_backend)())
        return state["service"]

    def refusal(changes_state: bool, needs_token: bool) -> Response | None:
        request = app.current_request
        assert request is not None
        headers = {k.lower(): v for k, v in dict(request.headers or {}).items()}
        if hosts is not None and headers.get("host", "").lower() not in hosts:
            return _json({"error": f"this server answers only to {', '.join(sorted(hosts))}; "
                                   "the request named another host"}, 421)
        if token is not None and needs_token:
            given = headers.get("authorization", "")
            if not given.startswith("Bearer ") or not _matches(given[7:].strip(), token):
                return _json({"error": "missing or wrong token"}, 401)
        if changes_state:
            if CSRF_HEADER.lower() not in headers:
                return _json({"error": f"a request that changes state needs the header "
                                       f"{CSRF_HEADER}: 1"}, 403)
            origin = headers.get("origin")
            if hosts is not None and origin is not None and origin.lower() not in {
                    f"http://{h}" for h in hosts}:
                return _json({"error": f"requests from {origin} may not change state here"},
                             403)
        return None

    def guard(handler: Callable[..., Any], changes_state: bool = False,
              needs_token: bool = True) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            refused = refusal(changes_state, needs_token)
            if refused is not None:
                return refused
            try:
                return handler(*args, **kwargs)
            except ApiError as exc:
                return _json({"error": exc.message}, exc.status)
            except FanoutError as exc:  # anything else is a bug: Chalice answers 500
                return _json({"error": str(exc)}, status_for(exc))
        wrapped.__name__ = handler.__name__
        return wrapped

    def query(name: str) -> str | None:
        request = app.current_request
        assert request is not None
        params: dict[str, str] = dict(request.query_params or {})
        value = params.get(name)
        return None if value is None else str(value)

    auth = {"authorizer": authorizer} if authorizer is not None else {}

    def page_guard(handler: Callable[..., Any]) -> Callable[..., Any]:
        # The page holds no data (the API does): it loads without the token, which the
        # person opening it gives in the URL's fragment, never sent to any server.
        return guard(handler, needs_token=False)

    def state_guard(handler: Callable[..., Any]) -> Callable[..., Any]:
        return guard(handler, changes_state=True)

    @app.route("/", methods=["GET"], **auth)
    @page_guard
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
    @state_guard
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
