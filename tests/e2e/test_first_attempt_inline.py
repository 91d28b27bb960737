"""The first attempt without the queue hop (``HOOKPOST_FIRST_ATTEMPT=inline``), end to end: the real broker, the
real store, an aiohttp receiver and a plain threaded one with a slow handler.

Fan-out makes each new event's first attempt itself; only retries cross ``PREFIX.deliver``. A change fanned out to
1,000 webhooks makes ten of them inline and publishes the rest, and holds up nobody else meanwhile.
"""

import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiohttp import web

from hookpost.common.models import ChangeEvent, Entity, EventStatus
from hookpost.producer import Publisher
from tests.helpers import queue_depth, running_worker, wait_until


class PlainReceiver:
    """The standard library's threaded HTTP server, answering 200 after ``delay`` seconds; it counts the requests
    of each ``webhook-id``."""

    def __init__(self, delay: float) -> None:
        self.ids: Counter[str] = Counter()
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                time.sleep(delay)
                with outer.lock:
                    outer.ids[self.headers["webhook-id"]] += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # the default 5 refuses connections beyond it: failed attempts we did not script

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "PlainReceiver":
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def count_deliver_messages(worker) -> Counter[str]:  # type: ignore[no-untyped-def]
    """Count the messages the worker's ``PREFIX.deliver`` consumer handles, by event id."""
    seen: Counter[str] = Counter()
    handle = worker.delivery.handle

    async def counting(msg):  # type: ignore[no-untyped-def]
        dm = worker.delivery.receive(msg)
        if dm is not None:
            seen[dm.event_id] += 1
        return await handle(msg)
    worker.delivery.handle = counting
    return seen


def path_counts(worker) -> dict[str, float]:  # type: ignore[no-untyped-def]
    return {s.labels["path"]: s.value for m in worker.metrics.first_attempts.collect() for s in m.samples
            if s.name.endswith("_total")}


async def test_first_attempts_are_made_by_fan_out_and_only_retries_cross_the_deliver_queue(stores, new_receiver):
    settings, st = await stores(first_attempt="inline", retry_delays="100ms,200ms,400ms", max_attempts=4)
    failed_once: set[str] = set()

    async def fail_first(n: int, request: web.Request) -> web.Response:
        hook_id = request.headers["webhook-id"]
        if hook_id.endswith(("0", "1", "2")) and hook_id not in failed_once:  # about 3 in 16 fail once
            failed_once.add(hook_id)
            return web.Response(status=503)
        return web.Response(status=200)
    fast = await new_receiver(respond=fail_first)
    n = 60
    with PlainReceiver(delay=0.02) as plain:
        await st.webhooks.create(fast.url, ["article.*"])
        await st.webhooks.create(plain.url, ["article.*"])
        async with running_worker(settings) as worker, Publisher.from_settings(settings) as pub:
            via_queue = count_deliver_messages(worker)
            await pub.publish_many([ChangeEvent(id=f"c{i}", type="article.updated",
                                                entity=Entity(kind="article", id=f"A-{i}")) for i in range(n)])
            await wait_until(lambda: _finished(st, 2 * n), 60, message="every event Finished")
            assert await queue_depth(settings, worker.topology.changes_queue) == 0
            paths = path_counts(worker)
        assert sorted(plain.ids.values()) == [1] * n  # each once, no trip through the deliver queue
    assert paths.get("inline") == 2 * n and not paths.get("queue")
    retried = set(await st.events.find_ids({"attempt_count": 2}, limit=1000))
    assert retried == failed_once and failed_once
    assert dict(via_queue) == {e: 1 for e in retried}  # only the second attempts crossed PREFIX.deliver
    assert len({r.headers["webhook-id"] for r in fast.requests}) == n


async def test_a_change_to_1000_webhooks_makes_ten_inline_publishes_the_rest_and_holds_up_no_one(stores,
                                                                                               new_receiver):
    settings, st = await stores(first_attempt="inline", endpoint_concurrency=10)
    other = await new_receiver([200])
    with PlainReceiver(delay=0.02) as plain:
        for _ in range(1000):
            await st.webhooks.create(plain.url, ["order.*"])
        await st.webhooks.create(other.url, ["article.*"])
        async with running_worker(settings) as worker, Publisher.from_settings(settings) as pub:
            via_queue = count_deliver_messages(worker)
            await pub.publish(ChangeEvent(id="big", type="order.created", entity=Entity(kind="order", id="O-1")))
            await wait_until(lambda: sum(plain.ids.values()) >= 10, 30, message="the first requests")
            await pub.publish(ChangeEvent(id="small", type="article.updated",
                                          entity=Entity(kind="article", id="A-1")))
            await wait_until(lambda: len(other.requests) == 1, 30, message="the other change delivered")
            big_so_far = sum(plain.ids.values())
            await wait_until(lambda: len(plain.ids) == 1000, 120, message="all 1,000 delivered")
            await wait_until(lambda: _finished(st, 1001), 60, message="every event Finished")
            paths = path_counts(worker)
        assert big_so_far < 1000  # the small change did not wait for the big one
        assert set(plain.ids.values()) == {1}
    assert paths == {"inline": 11.0, "queue": 990.0}  # ten of the big change's, and the small one's
    # each of the rest crossed PREFIX.deliver (some more than once, and maybe one of the ten too: parked in the
    # defer ladder while the endpoint held its share), and got one request
    assert len(via_queue) >= 990


async def _finished(st, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await st.events.count({"status": EventStatus.FINISHED.value}) == n
