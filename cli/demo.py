"""``hookpost demo`` (the quick start) and ``hookpost demo-receiver`` (a receiver that prints what it gets).

``hookpost demo`` runs the whole system on one machine on the embedded defaults: the local MongoDB-compatible
store (``nx-27017``, data in ``.hookpost/``) unless ``HOOKPOST_MONGODB_URL`` is set, the machine's RabbitMQ, a
dispatcher, a demo receiver, a demo webhook, and one published change event you can watch arrive.
"""

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click
from aiohttp import web

from hookpost.cli.base import settings
from hookpost.common.ids import new_id
from hookpost.common.logs import setup_logging
from hookpost.common.models import ChangeEvent, Entity
from hookpost.common.settings import Settings
from hookpost.dispatcher.worker import Worker
from hookpost.producer import Publisher
from hookpost.store.localserver import LocalMongo, free_port
from hookpost.web.api import ADMIN_KEY
from hookpost.web.server import ApiServer


class DemoReceiver:
    """An aiohttp app that accepts webhooks, prints one line per request and remembers what it got."""

    def __init__(self, *, status: int = 200, quiet: bool = False) -> None:
        self.status = status
        self.quiet = quiet
        self.received: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            payload = json.loads(body)
        except ValueError:
            payload = {"raw": body[:200].decode(errors="replace")}
        self.received.append({"headers": dict(request.headers), "payload": payload})
        self.arrived.set()
        if not self.quiet:
            entity = payload.get("data", {}).get("entity", {})
            click.echo(f"receiver: got {payload.get('type')} for {entity.get('kind')}/{entity.get('id')} "
                       f"(webhook-id {request.headers.get('webhook-id')}) → answering {self.status}")
        return web.json_response({"ok": self.status < 300}, status=self.status)

    async def start(self, host: str, port: int) -> str:
        """Start listening; return the URL webhooks should use."""
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        return f"http://{host}:{port}/webhooks"

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()


@click.command("demo-receiver")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8099, show_default=True)
@click.option("--status", type=int, default=200, show_default=True, help="Status code to answer with.")
def demo_receiver(host: str, port: int, status: int) -> None:
    """Run a webhook receiver that prints every request it gets (for demos and docker compose).

    \b
    Example:
      hookpost demo-receiver --port 8099 --status 200
    """
    async def go() -> None:
        receiver = DemoReceiver(status=status)
        url = await receiver.start(host, port)
        click.echo(f"demo receiver listening on {url}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await receiver.stop()

    asyncio.run(go())


@click.command("demo")
@click.option("--data-dir", type=click.Path(path_type=Path), default=Path(".hookpost"), show_default=True,
              help="Folder for the local store's data, pid file and log.")
@click.option("--receiver-port", type=int, default=8099, show_default=True,
              help="Port of the demo receiver (taken if free, else a free one; 0 = any free one).")
@click.option("--api-port", type=int, default=8000, show_default=True,
              help="Port of the HTTP API (taken if free, else a free one; 0 = any free one).")
@click.option("--exit-after-delivery", is_flag=True, help="Stop once the demo event has arrived (for scripts).")
@click.option("--timeout", type=float, default=60, show_default=True, help="Seconds to wait for the demo event.")
def demo(data_dir: Path, receiver_port: int, api_port: int, exit_after_delivery: bool, timeout: float) -> None:
    """Run Hookpost locally: store, dispatcher, API server, demo receiver, demo webhook, one event you watch arrive.

    \b
    Example:
      hookpost demo                  # Ctrl-C to stop
    """
    base = settings()
    local: LocalMongo | None = None
    if "HOOKPOST_MONGODB_URL" not in os.environ:
        local = LocalMongo(data_dir / "mongo")
        click.echo(f"starting the local store (nx-27017) in {data_dir / 'mongo'} …")
        local.start()
    overrides: dict[str, Any] = {"allow_private_targets": True, "log_format": "text", "log_level": "WARNING"}
    if local is not None:
        overrides["mongodb_url"] = local.url
    if "HOOKPOST_OPS_PORT" not in os.environ:
        overrides["ops_port"] = free_port()
    overrides["server_host"] = "127.0.0.1"
    overrides["server_port"] = _port_or_free(api_port) if api_port else free_port()
    s = Settings(**{**base.model_dump(), **overrides})
    setup_logging("text", "WARNING")
    try:
        code = asyncio.run(_demo(s, _port_or_free(receiver_port) if receiver_port else free_port(),
                                 exit_after_delivery, timeout))
    finally:
        if local is not None:
            local.stop()
    raise click.exceptions.Exit(code)


def _port_or_free(port: int) -> int:
    """Return ``port`` if it is free on 127.0.0.1 (so the demo webhook's URL stays the same), else a free one."""
    import socket
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return port
        except OSError:
            return free_port()


async def _demo(s: Settings, port: int, exit_after: bool, timeout: float) -> int:
    receiver = DemoReceiver()
    url = await receiver.start("127.0.0.1", port)
    worker = Worker(s, name="hookpost-demo")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    task = asyncio.create_task(worker.run())
    api = ApiServer(s)
    try:
        await asyncio.wait_for(worker.connected.wait(), 30)
        token = await _start_api(api)
        hook = next((h for h in await worker.store.webhooks.list() if h.url == url), None)
        if hook is None:
            hook = await worker.store.webhooks.create(url, ["article.*"], description="demo webhook")
        click.echo(f"dispatcher running; ops on http://127.0.0.1:{s.ops_port}/metrics")
        click.echo(f"demo webhook {hook.id} → {url} (subscribed to article.*)")
        change = ChangeEvent(id=new_id("chg"), type="article.updated", entity=Entity(kind="article", id="A-1001"),
                             data={"fields": ["price"]}, source="demo")
        async with Publisher.from_settings(s) as publisher:
            await publisher.publish(change)
        click.echo(f"published change {change.id}: article.updated for article/A-1001")
        await asyncio.wait_for(receiver.arrived.wait(), timeout)
        events = await worker.store.events.find_for_change(change.id)
        for _ in range(50):
            if all(e.status.value == "Finished" for e in events):
                break
            await asyncio.sleep(0.1)
            events = await worker.store.events.find_for_change(change.id)
        for e in events:
            click.echo(f"event {e.id}: {e.status.value} after {e.attempt_count} attempt(s)")
        listed = await _api_events(api.url, token)
        click.echo(f"API on {api.url}/api/v1 (OpenAPI: /api/v1/openapi.json) lists {listed} event(s); demo admin "
                   f"token: {token}")
        if exit_after:
            return 0 if events and all(e.status.value == "Finished" for e in events) else 1
        exe = Path(sys.argv[0]).resolve() if Path(sys.argv[0]).name == "hookpost" else "hookpost"
        click.echo("\nTry it from another terminal:")
        click.echo(f"  export HOOKPOST_MONGODB_URL={s.mongodb_url} HOOKPOST_PREFIX={s.prefix}")
        click.echo(f"  {exe} publish article.updated --entity-kind article --entity-id A-1002")
        click.echo(f"  {exe} events list")
        click.echo(f"  curl -H 'Authorization: Bearer {token}' {api.url}/api/v1/events?status=finished")
        click.echo(f"  or open the web console at {api.url}/ and sign in with the demo admin token")
        click.echo("Ctrl-C stops everything.")
        await task
        return 0
    except TimeoutError:
        click.echo("hookpost: error: the demo event did not arrive in time (is RabbitMQ running?)", err=True)
        return 1
    finally:
        worker.stop()
        await asyncio.gather(task, return_exceptions=True)
        await api.stop()
        await receiver.stop()


async def _start_api(api: ApiServer) -> str:
    """Start the API server and return a fresh admin token for the demo (the token is new on every run)."""
    await api.start()
    made = await api.app[ADMIN_KEY].tokens.create("demo", "admin", actor="demo")
    return made.token


async def _api_events(base: str, token: str) -> int:
    """Ask the API for the events, as a user would; return how many it listed."""
    import aiohttp

    async with aiohttp.ClientSession() as http, http.get(
            f"{base}/api/v1/events", headers={"Authorization": f"Bearer {token}"}) as resp:
        resp.raise_for_status()
        return len((await resp.json())["items"])
