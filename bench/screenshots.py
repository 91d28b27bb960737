"""Screenshots of the web console for docs/console.md: ``python -m bench.screenshots [--out docs/console]``.

Runs the real thing on this machine — the local store (nx-27017), the machine's RabbitMQ, a dispatcher, two
receivers (one answers 200, one 503), ``hookpost server`` — publishes changes, waits until every event settled,
then takes the Webhooks overview, the Webhook events overview, an event detail and the dashboard at laptop
(1280 px) and phone (375 px) widths in headless Chromium. Everything it declared or stored is removed afterwards.
"""

import argparse
import asyncio
import random
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web

from hookpost.admin import Admin
from hookpost.common.amqp import AmqpConnection
from hookpost.common.ids import new_id
from hookpost.common.models import ChangeEvent, Entity, EventStatus, WebhookEvent, build_payload
from hookpost.common.records import Role, WebhookCreate
from hookpost.common.settings import Settings, load_settings
from hookpost.common.topology import topology_from
from hookpost.dispatcher.worker import Worker
from hookpost.store.events import EventFilter
from hookpost.store.localserver import LocalMongo
from hookpost.web.api import ADMIN_KEY
from hookpost.web.server import ApiServer

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-background-networking", "--disable-component-update", "--no-first-run",
        "--disable-dev-shm-usage"]
SIZES = {"laptop": {"width": 1280, "height": 860}, "phone": {"width": 375, "height": 812}}


async def receiver(status: int) -> tuple[web.AppRunner, str]:
    """A receiver on a free port answering ``status``."""
    async def handle(_request: web.Request) -> web.Response:
        return web.json_response({"ok": status < 300}, status=status)

    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


async def history(admin: Admin, hooks: list[str], n: int = 240) -> None:
    """Events of the past hour (the chart and the totals have something to show)."""
    rng = random.Random(18)
    now = datetime.now(UTC)
    events = []
    for i in range(n):
        created = now - timedelta(seconds=rng.randrange(120, 3600))
        ms = int(created.timestamp() * 1000)
        status = rng.choices(list(EventStatus), weights=[1, 2, 2, 20])[0]
        eid = new_id("evt", ms)
        etype = rng.choice(["article.updated", "article.deleted", "order.created", "stock.level.changed"])
        change = ChangeEvent(id=f"chg-h{i}", type=etype, entity=Entity(kind=etype.split(".")[0],
                                                                        id=f"A-{1000 + rng.randrange(80)}"))
        failed = status in (EventStatus.FAILED, EventStatus.RETRYING)
        events.append(WebhookEvent(
            id=eid, webhook_id=rng.choice(hooks), change_id=change.id, type=etype, entity=change.entity,
            payload=build_payload(eid, change), status=status, attempt_count=3 if failed else 1,
            last_status_code=503 if failed else 200, last_error="HTTP 503" if failed else None,
            created_at=created, created_ms=ms, updated_at=created, updated_ms=ms,
            next_attempt_at=created + timedelta(minutes=5) if status == EventStatus.RETRYING else None,
            next_attempt_ms=ms + 300000 if status == EventStatus.RETRYING else None))
    await admin.store.events.insert_new(events)


async def shoot(base: str, token: str, out: Path, failed_id: str) -> list[Path]:
    """Sign in and take every screenshot."""
    from playwright.async_api import async_playwright

    written: list[Path] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for size, viewport in SIZES.items():
            ctx = await browser.new_context(viewport=viewport, timezone_id="UTC")
            page = await ctx.new_page()
            await page.goto(base + "/sign-in")
            await page.get_by_label("API token").fill(token)
            await page.get_by_role("button", name="Sign in").click()
            await page.wait_for_url(base + "/")
            for name, path in (("dashboard", "/"), ("webhooks", "/webhooks"), ("events", "/events"),
                               ("event", f"/events/{failed_id}")):
                await page.goto(base + path)
                await page.wait_for_load_state("networkidle")
                target = out / f"{name}-{size}.png"
                if size == "phone":  # the page's first 1700 px: the cards below the filters too
                    height = min(1700, await page.evaluate("document.documentElement.scrollHeight"))
                    await page.screenshot(path=str(target), full_page=True,
                                          clip={"x": 0, "y": 0, "width": viewport["width"], "height": height})
                else:
                    await page.screenshot(path=str(target), full_page=False)
                written.append(target)
            await ctx.close()
        await browser.close()
    return written


async def main(out: Path) -> None:
    """Run the system, make data, take the screenshots, clean up."""
    out.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="hookpost-shots-"))
    mongo = LocalMongo(folder / "mongo")
    mongo.start()
    tag = uuid.uuid4().hex[:8]
    settings: Settings = load_settings(
        mongodb_url=mongo.url, mongodb_db=f"shots_{tag}", prefix=f"shots-{tag}", allow_private_targets=True,
        max_attempts=3, retry_delays="100ms,100ms", ops_port=0, ops_host="127.0.0.1", webhook_cache_ttl="200ms",
        session_secret=uuid.uuid4().hex * 2, log_level="WARNING")
    runners: list[web.AppRunner] = []
    worker = Worker(settings, name="hookpost-screenshots")
    task = asyncio.create_task(worker.run())
    server = ApiServer(settings, host="127.0.0.1", port=0)
    try:
        await server.start()
        admin = server.app[ADMIN_KEY]
        ok_runner, ok_url = await receiver(200)
        bad_runner, bad_url = await receiver(503)
        runners += [ok_runner, bad_runner]
        pim = await admin.webhooks.create(WebhookCreate(url=ok_url + "/pim/hooks", event_types=["article.*"],
                                                        description="PIM sync"), actor="screenshots")
        erp = await admin.webhooks.create(WebhookCreate(url=bad_url + "/erp/webhooks",
                                                        event_types=["order.*", "article.deleted"],
                                                        description="ERP (answers 503)"), actor="screenshots")
        shop = await admin.webhooks.create(WebhookCreate(url=ok_url + "/shop", event_types=["stock.*"],
                                                         description="Shop stock levels"), actor="screenshots")
        await admin.webhooks.set_active(shop.id, False, actor="screenshots")
        await history(admin, [pim.id, erp.id, shop.id])
        while not worker.connected.is_set():
            await asyncio.sleep(0.05)
        changes = [("article.updated", "article", "A-1001"), ("order.created", "order", "O-77"),
                   ("article.deleted", "article", "A-0999"), ("article.updated", "article", "A-1002")]
        for i, (etype, kind, ident) in enumerate(changes):
            await admin.changes.publish(ChangeEvent(id=f"chg-shot-{i}", type=etype,
                                                    entity=Entity(kind=kind, id=ident)))
        deadline = time.monotonic() + 30
        failed: list[Any] = []
        while time.monotonic() < deadline:
            failed = await admin.store.events.find(EventFilter(statuses=[EventStatus.FAILED], webhook_id=erp.id,
                                                               search="chg-shot*"), limit=5)
            if len(failed) >= 2:
                break
            await asyncio.sleep(0.2)
        if not failed:
            raise RuntimeError("no event of the 503 receiver ended Failed within 30 s: nothing to show on the "
                               "event page")
        token = (await admin.tokens.create("screenshots", Role.ADMIN, actor="screenshots")).token
        for path in await shoot(server.url, token, out, failed[0].id):
            print(f"wrote {path} ({path.stat().st_size // 1024} KiB)")
    finally:
        await server.stop()
        worker.stop()
        await asyncio.wait_for(task, 30)
        for r in runners:
            await r.cleanup()
        conn = await AmqpConnection.connect(settings.rabbitmq_urls)
        try:
            await (await conn.channel()).delete(topology_from(settings))
        finally:
            await conn.close()
        mongo.stop()


def cli() -> None:
    """Parse the arguments and run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/console"), help="folder for the PNGs")
    asyncio.run(main(parser.parse_args().out))


if __name__ == "__main__":
    cli()
