"""End to end from an operator's laptop: the installed ``hookpost`` in API mode, with no store or broker
credentials, against a real ``hookpost server`` process, a real dispatcher and a real receiver."""

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp

from hookpost.admin import Admin
from hookpost.store.localserver import free_port
from tests.api.cli_modes import UNREACHABLE
from tests.helpers import wait_until


async def test_laptop_to_server_to_receiver(settings, store, dispatcher, new_receiver):
    rec = await new_receiver([500, 200])
    async with Admin.open(settings) as admin:
        tokens = {role: (await admin.tokens.create(f"laptop-{role}", role, actor="test")).token
                  for role in ("viewer", "operator", "admin", "publisher")}
    port = free_port()
    server_env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}
    server_env.update(HOOKPOST_RABBITMQ_URL=settings.rabbitmq_url, HOOKPOST_MONGODB_URL=settings.mongodb_url,
                      HOOKPOST_MONGODB_DB=settings.mongodb_db, HOOKPOST_PREFIX=settings.prefix,
                      HOOKPOST_SERVER_PORT=str(port), HOOKPOST_ALLOW_PRIVATE_TARGETS="true")
    server = await asyncio.create_subprocess_exec(Path(sys.executable).parent / "hookpost", "server",
                                                  env=server_env, stdout=asyncio.subprocess.DEVNULL,
                                                  stderr=asyncio.subprocess.PIPE)
    laptop = {**{k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}, **UNREACHABLE,
              "HOOKPOST_API_URL": f"http://127.0.0.1:{port}"}

    async def hookpost(role: str, *args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(Path(sys.executable).parent / "hookpost", *args,
                                                    env={**laptop, "HOOKPOST_API_TOKEN": tokens[role]},
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert tokens[role] not in out.decode() + err.decode()
        return proc.returncode or 0, out.decode(), err.decode()

    try:
        async with aiohttp.ClientSession() as http:
            async def up() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    assert server.returncode is None, "the server exited"
                    return False

            await wait_until(up, 30, message="server answers")

        code, out, err = await hookpost("admin", "webhooks", "create", "--url", rec.url, "--event", "article.*")
        assert code == 0, err
        hook_id = out.strip()
        dispatcher.cache.invalidate()
        code, out, err = await hookpost("publisher", "publish", "article.updated", "--entity-kind", "article",
                                        "--entity-id", "A-1", "--id", "chg-laptop-1")
        assert (code, out.strip()) == (0, "chg-laptop-1"), err
        await wait_until(lambda: len(rec.requests) >= 2, 30, message="delivered after one retry")

        async def finished() -> list[dict]:
            code, out, _ = await hookpost("viewer", "events", "list", "--json", "--status", "finished")
            return json.loads(out) if code == 0 and out.strip() else []

        done = await wait_until(finished, 30, message="the event is Finished, seen through the API")
        assert [(e["change_id"], e["webhook_id"], e["attempt_count"]) for e in done] == [
            ("chg-laptop-1", hook_id, 2)]
        code, out, _ = await hookpost("viewer", "events", "show", done[0]["id"])
        assert code == 0 and "attempts:" in out and "500" in out

        code, out, err = await hookpost("operator", "events", "restart", "--force", "--status", "finished", "--yes")
        assert code == 0 and "restarted 1, skipped 0" in out and "restart job job_" in err, err
        await wait_until(lambda: len(rec.requests) >= 3, 30, message="the restarted event delivered again")

        code, _, err = await hookpost("viewer", "events", "restart", done[0]["id"])
        assert code == 1 and err.strip().endswith("forbidden: role viewer may not do this (needs operator)")
        code, out, _ = await hookpost("viewer", "audit", "list", "--json")
        actors = {(e["actor"], e["action"]) for e in json.loads(out)}
        assert {("token:laptop-admin", "webhook.created"), ("token:laptop-operator", "events.restarted")} <= actors
        code, out, _ = await hookpost("viewer", "config")
        assert code == 0 and f"http://127.0.0.1:{port}" in out and "server_version" in out
    finally:
        server.send_signal(signal.SIGTERM)
        _, server_err = await asyncio.wait_for(server.communicate(), 30)
    log = server_err.decode()
    assert all(t not in log for t in tokens.values())
