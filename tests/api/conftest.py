"""Fixtures of the HTTP API tests: a server on a free port in this event loop, and a token per role."""

from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest

from hookpost.admin import Admin
from hookpost.common.records import Role
from hookpost.web.api import ADMIN_KEY
from hookpost.web.server import ApiServer


@dataclass
class Api:
    """A running server, a client session, and a token per role (plus a revoked one)."""

    server: ApiServer
    session: aiohttp.ClientSession
    admin: Admin
    tokens: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return self.server.url + "/api/v1"

    def auth(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    async def call(self, method: str, path: str, role: str | None = "admin", **kwargs):  # type: ignore[no-untyped-def]
        headers = {**(self.auth(role) if role else {}), **kwargs.pop("headers", {})}
        async with self.session.request(method, self.base + path, headers=headers, **kwargs) as resp:
            body = await resp.read()
            data = None
            if body and "json" in (resp.content_type or ""):
                import json
                data = json.loads(body)
            return resp.status, data, resp


async def make_api(settings) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    server = ApiServer(settings, host="127.0.0.1", port=0)
    await server.start()
    admin = server.app[ADMIN_KEY]
    api = Api(server, aiohttp.ClientSession(), admin)
    for role in Role:
        api.tokens[role.value] = (await admin.tokens.create(f"test-{role.value}", role, actor="test")).token
    revoked = await admin.tokens.create("test-revoked", Role.ADMIN, actor="test")
    await admin.tokens.revoke(revoked.record.id, actor="test")
    api.tokens["revoked"] = revoked.token
    try:
        yield api
    finally:
        await api.session.close()
        await server.stop()


@pytest.fixture
async def api(settings, store) -> AsyncIterator[Api]:  # type: ignore[no-untyped-def]
    """A running API server on the test's settings."""
    async for a in make_api(settings):
        yield a


async def declare_topology(settings) -> None:  # type: ignore[no-untyped-def]
    """Declare the test's exchanges and queues (so POST /changes is routed without a dispatcher)."""
    import asyncio
    import time

    from hookpost.common.amqp import AmqpConnection
    from hookpost.common.errors import BrokerUnavailableError
    from hookpost.common.topology import topology_from

    deadline = time.monotonic() + 60  # other suites on the machine restart the shared broker now and then
    while True:
        try:
            conn = await AmqpConnection.connect(settings.rabbitmq_urls)
            break
        except BrokerUnavailableError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    try:
        await (await conn.channel()).declare(topology_from(settings))
    finally:
        await conn.close()
