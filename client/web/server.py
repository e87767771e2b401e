"""``fanout dashboard``: the API and dashboard over the local store, on this machine."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

from ..errors import ConfigurationError


def is_loopback(host: str) -> bool:
    try:
        return all(ipaddress.ip_address(info[4][0]).is_loopback
                   for info in socket.getaddrinfo(host, None))
    except (socket.gaierror, ValueError):
        return False


#: Where ``fanout dashboard`` reads its token (or from the file ``--token-file`` names):
#: never from the command line, which every user of the machine can read with ``ps``.
TOKEN_ENV = "FANOUT_DASHBOARD_TOKEN"


def served_hosts(host: str, port: int) -> frozenset[str] | None:
    """The ``Host`` header values a server on ``host:port`` answers (DNS-rebinding guard).

    ``None`` (any) for a wildcard address, which is served only with a token anyway.
    """
    try:
        if ipaddress.ip_address(host).is_unspecified:
            return None
    except ValueError:
        pass
    names = {host.lower()}
    if is_loopback(host):
        names |= {"127.0.0.1", "localhost", "[::1]"}
    return frozenset(f"{name}:{port}" for name in names) | (
        frozenset(names) if port == 80 else frozenset())


def make_server(host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                backend: str | None = None, **backend_options: Any) -> Any:
    """A Chalice local server for the app; refuses a non-loopback host without a token."""
    from chalice.config import Config
    from chalice.local import create_local_server

    from ..backends import create_backend
    from .app import create_app

    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise ConfigurationError(f"port must be a number from 1 to 65535, not {port!r}")
    if not is_loopback(host) and not token:
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host}, which is reachable from other "
            f"machines, without a token: put one in {TOKEN_ENV} or a file given with "
            "--token-file (clients then send 'Authorization: Bearer TOKEN'), or serve on "
            "127.0.0.1")
    app = create_app(lambda: create_backend(backend, **backend_options), token=token,
                     hosts=served_hosts(host, port))
    config = Config.create(app_name="fanout-api", chalice_app=app)
    return create_local_server(app, config, host, port)
