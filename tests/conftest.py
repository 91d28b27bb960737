"""Shared fixtures: the store (nx-27017 on a free port, or HOOKPOST_TEST_MONGODB_URL), the real broker with a
unique topology prefix per test, settings, receivers and a running dispatcher."""

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from hookpost.common.amqp import AmqpConnection
from hookpost.common.settings import Settings, load_settings
from hookpost.common.topology import topology_from
from hookpost.store import Store
from hookpost.store.localserver import LocalMongo
from tests.helpers import Receiver, running_worker

RABBIT_URL = os.environ.get("HOOKPOST_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
FAST_DELAYS = "50ms,100ms,150ms,200ms,250ms,300ms,350ms,400ms,450ms"


@pytest.fixture(scope="session")
def mongo_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A MongoDB URL: HOOKPOST_TEST_MONGODB_URL if set, else a fresh nx-27017 for this test session."""
    external = os.environ.get("HOOKPOST_TEST_MONGODB_URL")
    if external:
        yield external
        return
    server = LocalMongo(Path(tmp_path_factory.mktemp("mongo")))
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


def make_settings(mongo_url: str, **overrides: object) -> Settings:
    """Settings for a test: unique prefix and database, private targets allowed, a millisecond schedule."""
    tag = uuid.uuid4().hex[:10]
    base: dict[str, object] = dict(
        rabbitmq_url=RABBIT_URL, mongodb_url=mongo_url, mongodb_db=f"hptest_{tag}", prefix=f"hptest-{tag}",
        allow_private_targets=True, retry_delays=FAST_DELAYS, max_attempts=10, http_timeout="2s",
        http_connect_timeout="1s", webhook_cache_ttl="200ms", ops_port=0, ops_host="127.0.0.1",
        reconcile_interval="1h", shutdown_grace="5s", log_format="text", queue_type="quorum")
    base.update(overrides)
    return load_settings(**base)


async def cleanup(settings: Settings) -> None:
    """Delete a test's topology and database."""
    try:
        conn = await AmqpConnection.connect(settings.rabbitmq_urls)
        try:
            await (await conn.channel()).delete(topology_from(settings))
        finally:
            await conn.close()
    except Exception as exc:  # a test that broke the broker must not hide its own failure
        print(f"topology cleanup failed: {exc}")
    client: MongoClient[dict[str, object]] = MongoClient(settings.mongodb_url, serverSelectionTimeoutMS=3000)
    try:
        client.drop_database(settings.mongodb_db)
    finally:
        client.close()


@pytest.fixture
async def settings_factory(mongo_url: str):  # type: ignore[no-untyped-def]
    """Make settings with overrides (``settings_factory(http_timeout="300ms")``); all are cleaned up."""
    made: list[Settings] = []

    def make(**overrides: object) -> Settings:
        s = make_settings(mongo_url, **overrides)
        made.append(s)
        return s

    yield make
    for s in made:
        await cleanup(s)


@pytest.fixture
async def settings(settings_factory) -> Settings:  # type: ignore[no-untyped-def]
    """Settings with a unique prefix and database, cleaned up after the test."""
    return settings_factory()


@pytest.fixture
async def store(settings: Settings) -> AsyncIterator[Store]:
    """A connected store with its indexes."""
    st = Store.connect(settings.mongodb_url, settings.mongodb_db)
    await st.ensure_indexes()
    yield st
    await st.close()


@pytest.fixture
async def receivers() -> AsyncIterator[list[Receiver]]:
    """A list to which tests add started receivers; all are stopped afterwards."""
    started: list[Receiver] = []
    yield started
    for r in started:
        await r.stop()


@pytest.fixture
def new_receiver(receivers: list[Receiver]):  # type: ignore[no-untyped-def]
    """Start a scripted receiver: ``await new_receiver([500, 200])``."""
    async def make(script: list[int] | None = None, respond=None) -> Receiver:  # type: ignore[no-untyped-def]
        r = Receiver(script=script or [200], respond=respond)
        await r.start()
        receivers.append(r)
        return r
    return make


@pytest.fixture
async def dispatcher(settings: Settings, store: Store):  # type: ignore[no-untyped-def]
    """A dispatcher running in the test's event loop."""
    async with running_worker(settings) as worker:
        yield worker
