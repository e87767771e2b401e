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


def make_server(host: str = "127.0.0.1", port: int = 8765, token: str | None = None,
                backend: str | None = None, **backend_options: Any) -> Any:
    """A Chalice local server for the app; refuses a non-loopback host without a token."""
    from chalice.config import Config
    from chalice.local import create_local_server

    from ..backends import create_backend
    from .app import create_app

    if not is_loopback(host) and not token:
        raise ConfigurationError(
            f"refusing to serve the dashboard on {host}, which is reachable from other "
            "machines, without a token: pass --token SECRET (clients then send "
            "'Authorization: Bearer SECRET'), or serve on 127.0.0.1")
    app = create_app(lambda: create_backend(backend, **backend_options), token=token)
    config = Config.create(app_name="fanout-api", chalice_app=app)
    return create_local_server(app, config, host, port)
