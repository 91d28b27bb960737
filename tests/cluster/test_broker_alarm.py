"""A broker resource alarm (``connection.blocked``) makes publishing fail cleanly, and it resumes.

On a private one-node RabbitMQ (never the machine's shared broker): a memory alarm is raised with
``rabbitmqctl set_vm_memory_high_watermark 0.0000001``. ``Publisher.publish`` must raise
:class:`BrokerBlockedError` within its timeout instead of hanging, ``hookpost publish`` must exit 1 with one
line saying the broker is blocking publishes, the connection must expose ``blocked``; once the watermark is back,
the same publisher publishes again. A dispatcher on that node says so in ``/readyz``, holds its work unacked
and delivers everything once the alarm clears.
"""

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from hookpost.common.amqp import AmqpConnection
from hookpost.common.errors import BrokerBlockedError
from hookpost.common.models import ChangeEvent, Entity
from hookpost.common.settings import Settings
from hookpost.common.topology import Topology, topology_from
from hookpost.producer import Publisher
from hookpost.store import Store
from tests.cluster.rabbit_cluster import ClusterError, RabbitCluster, missing_binaries
from tests.helpers import Receiver, running_worker, wait_until

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

TIMEOUT = 3.0


@pytest.fixture(scope="module")
def rabbit_node() -> Iterator[RabbitCluster]:
    """One private RabbitMQ node, stopped and wiped afterwards."""
    missing = missing_binaries()
    if missing:
        pytest.skip(f"needs a local RabbitMQ installation; missing: {', '.join(missing)}")
    node = RabbitCluster(size=1)
    try:
        node.start()
        yield node
    finally:
        node.stop()


def alarms(node: RabbitCluster) -> str:
    try:
        return node.ctl(node.nodes[0], "alarms", tool="rabbitmq-diagnostics")
    except ClusterError as exc:
        return str(exc)


async def set_alarm(node: RabbitCluster, on: bool) -> None:
    await asyncio.to_thread(node.ctl, node.nodes[0], "set_vm_memory_high_watermark", "0.0000001" if on else "0.4")
    await wait_until(lambda: asyncio.to_thread(lambda: ("memory" in alarms(node).lower()) == on), 30,
                     interval=0.2, message=f"memory alarm {'raised' if on else 'cleared'}")


def change(i: int) -> ChangeEvent:
    return ChangeEvent(id=f"alarm-{i}", type="article.updated", entity=Entity(kind="article", id=f"A-{i}"))


async def test_blocked_publish_fails_within_timeout_and_resumes(rabbit_node: RabbitCluster):
    url = rabbit_node.nodes[0].url
    topo = Topology("hpalarm", retry_delays=(1.0,), queue_type="classic")
    publisher = Publisher([url], prefix=topo.prefix, timeout=TIMEOUT, topology=topo, declare=True)
    await publisher.connect()
    try:
        await publisher.publish(change(0))
        assert publisher.blocked is False
        await set_alarm(rabbit_node, True)
        try:
            started = time.monotonic()
            with pytest.raises(BrokerBlockedError, match="blocking publishes"):
                await publisher.publish(change(1))
            took = time.monotonic() - started
            assert took < TIMEOUT + 1.5, f"publish took {took:.1f}s with a {TIMEOUT}s timeout"
            assert publisher.blocked is True
            # a second publish while blocked fails within its timeout too (nothing more is written meanwhile)
            started = time.monotonic()
            with pytest.raises(BrokerBlockedError):
                await publisher.publish(change(2))
            assert time.monotonic() - started < TIMEOUT + 1.5

            env = {**{k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")},
                   "HOOKPOST_RABBITMQ_URL": url, "HOOKPOST_PREFIX": topo.prefix}
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(
                Path(sys.executable).parent / "hookpost", "publish", "article.updated", "--entity-kind", "article",
                "--entity-id", "A-9", "--timeout", "2s", env=env, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 30)
            lines = err.decode().strip().splitlines()
            assert proc.returncode == 1 and out == b"", (proc.returncode, out, lines)
            assert len(lines) == 1 and "the broker is blocking publishes" in lines[0], lines
            assert time.monotonic() - started < 15
        finally:
            await set_alarm(rabbit_node, False)
        await wait_until(lambda: not publisher.blocked, 15, message="connection unblocked")
        await publisher.publish(change(3))
        assert publisher.blocked is False
    finally:
        conn = await AmqpConnection.connect([url])
        try:
            await (await conn.channel()).delete(topo)
        finally:
            await conn.close()
        await publisher.close()


@asynccontextmanager
async def thirty_changes_waiting(s: Settings, receiver: Receiver, *, first: int) -> AsyncIterator[Store]:
    """A webhook of ``receiver`` and 30 changes for it waiting in the changes queue (ids from ``first``); yield the
    store; afterwards delete the topology and close the store."""
    store = Store.connect(s.mongodb_url, s.mongodb_db)
    await store.ensure_indexes()
    await store.webhooks.create(receiver.url, ["article.*"])
    try:
        async with Publisher.from_settings(s, declare=True) as p:
            await p.publish_many([change(i) for i in range(first, first + 30)])
        yield store
    finally:
        conn = await AmqpConnection.connect(s.rabbitmq_urls)
        try:
            await (await conn.channel()).delete(topology_from(s))
        finally:
            await conn.close()
        await store.close()


async def test_dispatcher_reports_the_alarm_and_delivers_everything_once_it_clears(rabbit_node: RabbitCluster,
                                                                                   settings_factory, new_receiver):
    s = settings_factory(rabbitmq_url=rabbit_node.nodes[0].url, queue_type="classic", first_attempt="queue")
    receiver = await new_receiver([200])
    async with thirty_changes_waiting(s, receiver, first=100) as store:
        await set_alarm(rabbit_node, True)  # the dispatcher starts into the alarm: it can consume, not publish
        try:
            async with running_worker(s) as worker:
                await wait_until(lambda: worker.readiness()["broker_accepts_publishes"] is False, 30,
                                 message="the dispatcher reports the blocked broker")
                assert receiver.requests == []  # no delivery could be handed on, so none was made
                await set_alarm(rabbit_node, False)
                await wait_until(lambda: worker.readiness()["broker_accepts_publishes"] is True, 30,
                                 message="the dispatcher reports the broker accepting publishes again")

                async def all_finished():
                    return await store.events.count({"status": "Finished"}) == 30

                await wait_until(all_finished, 60, message="all 30 events delivered after the alarm")
        finally:
            await set_alarm(rabbit_node, False)
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 30


async def test_with_inline_first_attempts_a_dispatcher_delivers_through_the_alarm(rabbit_node: RabbitCluster,
                                                                                settings_factory, new_receiver):
    """A first attempt made by fan-out publishes nothing when it succeeds: deliveries go on during the alarm."""
    s = settings_factory(rabbitmq_url=rabbit_node.nodes[0].url, queue_type="classic", first_attempt="inline")
    receiver = await new_receiver([200])
    async with thirty_changes_waiting(s, receiver, first=200) as store:
        await set_alarm(rabbit_node, True)
        try:
            async with running_worker(s):
                async def all_finished():
                    return await store.events.count({"status": "Finished"}) == 30

                await wait_until(all_finished, 60, message="all 30 events delivered during the alarm")
                assert "memory" in (await asyncio.to_thread(alarms, rabbit_node)).lower()  # still raised
        finally:
            await set_alarm(rabbit_node, False)
        assert len({r.headers["webhook-id"] for r in receiver.requests}) == 30
