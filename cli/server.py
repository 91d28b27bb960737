"""``hookpost server``: the HTTP management API (and, later, the web console)."""

import click

from hookpost.cli.base import settings
from hookpost.common.logs import setup_logging


@click.command("server")
@click.option("--host", default=None, help="Listen address (default HOOKPOST_SERVER_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None,
              help="Listen port (default HOOKPOST_SERVER_PORT, 8000).")
def server(host: str | None, port: int | None) -> None:
    """Serve the HTTP API under /api/v1 (OpenAPI at /api/v1/openapi.json) and the web console under /, until
    SIGTERM/SIGINT.

    Every API call needs 'Authorization: Bearer <token>' (hookpost tokens create). /healthz, /readyz and
    /metrics need none. The console signs in with the same tokens; give every instance the same
    HOOKPOST_SESSION_SECRET. Stateless: run as many as you like behind a load balancer.

    \b
    Example:
      hookpost tokens create --name me --role admin
      HOOKPOST_SERVER_HOST=0.0.0.0 hookpost server
    """
    from hookpost.web.server import run_server

    s = settings()
    overrides = {k: v for k, v in (("server_host", host), ("server_port", port)) if v is not None}
    s = s.model_copy(update=overrides) if overrides else s
    setup_logging(s.log_format, s.log_level)
    run_server(s)
