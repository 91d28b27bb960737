"""``hookpost server`` as the process operators run: it serves, answers probes, stops on SIGTERM."""

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from hookpost.admin import Admin
from hookpost.store.localserver import free_port
from tests.helpers import wait_until


async def test_hookpost_server_serves_and_stops_on_sigterm(settings, store):
    async with Admin.open(settings) as admin:
        token = (await admin.tokens.create("proc", "viewer", actor="test")).token
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}
    env.update(HOOKPOST_RABBITMQ_URL=settings.rabbitmq_url, HOOKPOST_MONGODB_URL=settings.mongodb_url,
               HOOKPOST_MONGODB_DB=settings.mongodb_db, HOOKPOST_PREFIX=settings.prefix,
               HOOKPOST_SERVER_PORT=str(port), HOOKPOST_LOG_FORMAT="json")
    proc = await asyncio.create_subprocess_exec(Path(sys.executable).parent / "hookpost", "server", env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            async def up() -> bool:
                try:
                    async with http.get(base + "/healthz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    assert proc.returncode is None, "the server exited"
                    return False

            await wait_until(up, 30, message="server answers /healthz")
            async with http.get(base + "/readyz") as resp:
                assert resp.status == 200 and (await resp.json()) == {"ready": True, "store": True, "broker": True}
            async with http.get(base + "/api/v1/events", headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200 and (await resp.json()) == {"items": [], "next": None}
            async with http.get(base + "/api/v1/events") as resp:
                assert resp.status == 401
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-2000:]
    text = err.decode() + out.decode()
    assert "hookpost server listening" in text and token not in text
    assert "authentication failed" in text  # logged, without the token
