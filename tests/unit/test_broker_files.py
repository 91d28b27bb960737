"""common.broker_files against a stand-in management API (a real HTTP server on 127.0.0.1 answering /api/nodes)."""

import base64

from aiohttp import web

from hookpost.common.broker_files import CachedFileReport, broker_file_descriptors, management_url


async def serve(handler) -> tuple[web.AppRunner, int]:  # type: ignore[no-untyped-def]
    app = web.Application()
    app.router.add_get("/api/nodes", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


def test_management_url_follows_the_amqp_url():
    def credentials(headers: dict[str, str]) -> str:
        return base64.b64decode(headers["Authorization"].removeprefix("Basic ")).decode()
    base, headers = management_url("amqp://hp%40x:p%2Fw@mq.example:5672/%2F")
    assert base == "http://mq.example:15672" and credentials(headers) == "hp@x:p/w"
    assert management_url("amqps://u:p@mq:5671/")[0] == "https://mq:15671"
    assert credentials(management_url("amqp://127.0.0.1")[1]) == "guest:guest"


async def test_nodes_used_against_limit_and_a_node_near_it():
    seen = []

    async def nodes(request: web.Request) -> web.Response:
        seen.append((request.headers.get("Authorization"), request.query.get("columns")))
        return web.json_response([{"name": "rabbit@a", "fd_used": 119, "fd_total": 927},
                                  {"name": "rabbit@b", "fd_used": 900, "fd_total": 927}])
    runner, port = await serve(nodes)
    try:
        report = await broker_file_descriptors(["amqp://hp:secret@127.0.0.1:5672/"], port=port)
    finally:
        await runner.cleanup()
    assert report.as_dict() == {"available": True, "nodes": [
        {"node": "rabbit@a", "used": 119, "limit": 927, "ratio": 0.128, "near_limit": False},
        {"node": "rabbit@b", "used": 900, "limit": 927, "ratio": 0.971, "near_limit": True}]}
    assert seen[0][0].startswith("Basic ") and "fd_used" in seen[0][1]


async def test_refused_credentials_and_no_api_say_why_and_the_next_address_is_tried():
    async def refuse(_request: web.Request) -> web.Response:
        return web.Response(status=401)
    runner, port = await serve(refuse)
    try:
        report = await broker_file_descriptors(["amqp://u:p@127.0.0.1/", "amqp://u:p@localhost/"], port=port)
    finally:
        await runner.cleanup()
    assert not report.available
    assert "refused the credentials (HTTP 401" in report.as_dict()["reason"]
    assert "localhost" in report.reason  # both addresses were asked

    report = await broker_file_descriptors(["amqp://u:p@127.0.0.1/"], port=port)  # nothing listens there now
    assert report.as_dict() == {"available": False, "reason": f"no management API at http://127.0.0.1:{port} "
                                "(cannot connect; is the rabbitmq_management plugin enabled?)"}


async def test_the_cached_report_asks_once_per_ttl():
    calls = []

    async def nodes(_request: web.Request) -> web.Response:
        calls.append(1)
        return web.json_response([{"name": "rabbit@a", "fd_used": len(calls), "fd_total": 100}])
    runner, port = await serve(nodes)
    try:
        cached = CachedFileReport(["amqp://127.0.0.1/"], ttl=60, port=port)
        first, second = await cached.get(), await cached.get()
        assert first is second and len(calls) == 1
        cached.ttl = 0
        assert (await cached.get()).nodes[0].used == 2
    finally:
        await runner.cleanup()
