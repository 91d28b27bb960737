"""API mode's failures, each against a small server that answers it: one plain line naming the server (never the
token, never a traceback) and the documented exit code. Also ``hookpost login`` and its profiles, ``--ca-file``
against a TLS server with a private CA, and Ctrl-C while a restart job is watched."""

import asyncio
import json
import os
import signal
import ssl
import stat
import subprocess
import sys
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from hookpost.store.localserver import free_port
from tests.api.cli_modes import API_VARS, UNREACHABLE, invoke_env
from tests.helpers import wait_until

TOKEN = "hp_" + "s3cret" * 7


@dataclass
class FakeServer:
    """Answers every request with ``status``/``body``/``headers``; records what it was asked."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    version: str | None = "0.1.0"
    seen: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.path_qs, request.headers.get("Authorization")))
        headers = dict(self.headers)
        if self.version:
            headers["Hookpost-Version"] = self.version
        if self.raw is not None:
            return web.Response(status=self.status, body=self.raw, headers=headers, content_type="text/html")
        if self.body is None:
            return web.Response(status=self.status, headers=headers)
        ctype = "application/problem+json" if self.status >= 400 else "application/json"
        return web.Response(status=self.status, body=json.dumps(self.body).encode(), headers=headers,
                            content_type=ctype)


async def serve(fake: FakeServer, ssl_context: ssl.SSLContext | None = None) -> web.AppRunner:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()
    fake.url = f"{'https' if ssl_context else 'http'}://127.0.0.1:{port}"
    return runner


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    server = FakeServer()
    runner = await serve(server)
    yield server
    await runner.cleanup()


def problem(status: int, detail: str) -> dict[str, Any]:
    return {"type": "about:blank", "title": "x", "status": status, "detail": detail}


async def cli(url: str, *args: str, env: dict[str, str | None] | None = None, input: str | None = None):  # type: ignore[no-untyped-def]
    base: dict[str, str | None] = {**dict.fromkeys(API_VARS), **UNREACHABLE, "HOOKPOST_API_URL": url,
                                   "HOOKPOST_API_TOKEN": TOKEN}
    return await asyncio.to_thread(invoke_env, list(args), {**base, **(env or {})}, input)


def one_line(result, code: int, *parts: str) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == code, (result.exit_code, result.output)
    err = result.stderr
    assert err.count("\n") == 1 and err.startswith("hookpost: error: "), err
    assert TOKEN not in result.output and "Traceback" not in result.output
    for part in parts:
        assert part in err, (part, err)
    return err


@pytest.mark.parametrize(("status", "body", "headers", "code", "parts"), [
    (401, problem(401, "unknown token: send 'Authorization: Bearer <token>'"), {}, 1,
     ["refused the token (unknown token)"]),
    (401, problem(401, "revoked token: send 'Authorization: Bearer <token>'"), {}, 1,
     ["refused the token (revoked token)"]),
    (403, problem(403, "role viewer may not do this (needs operator)"), {}, 1,
     ["forbidden: role viewer may not do this (needs operator)"]),
    (404, problem(404, "no event 'evt_1'"), {}, 1, ["no event 'evt_1'"]),
    (429, problem(429, "too many failed authentications from this address; try again later"),
     {"Retry-After": "42"}, 1, ["too many requests", "retry in 42 s"]),
    (500, problem(500, "internal error (logged)"), {}, 1, ["server error 500: internal error (logged)"]),
    (502, None, {}, 1, ["server error 502"]),
    (503, problem(503, "the store is unreachable"), {}, 1, ["server error 503: the store is unreachable"]),
    (400, problem(400, "status: unknown status"), {}, 2, ["status: unknown status"]),
    (413, problem(413, "body too large"), {}, 2, ["body too large"]),
    (415, problem(415, "unsupported content type"), {}, 2, ["unsupported content type"]),
])
async def test_each_answer_is_one_line_and_its_exit_code(fake, status, body, headers, code, parts):
    fake.status, fake.body, fake.headers = status, body, headers
    res = await cli(fake.url, "events", "show", "evt_1")
    one_line(res, code, f"hookpost: error: {fake.url}", *parts)
    assert fake.seen == [("GET", "/api/v1/events/evt_1", f"Bearer {TOKEN}")]


async def test_a_redirect_and_an_answer_of_another_shape(fake):
    fake.status, fake.headers = 302, {"Location": "http://elsewhere.example/api/v1/events/evt_1"}
    res = await cli(fake.url, "events", "show", "evt_1")
    one_line(res, 1, f"{fake.url} redirects to http://elsewhere.example/api/v1/events/evt_1", "--api")
    assert len(fake.seen) == 1  # not followed
    fake.status, fake.headers, fake.body = 200, {}, {"id": "evt_1"}
    one_line(await cli(fake.url, "events", "show", "evt_1"), 1,
             f"{fake.url} answered in a form this CLI does not read", "server 0.1.0")


async def test_an_older_server_is_too_old_rather_than_not_found(fake):
    fake.status, fake.body, fake.version = 404, problem(404, "Not Found"), "0.0.9"
    res = await cli(fake.url, "invalid", "list")
    one_line(res, 1, fake.url, "runs hookpost 0.0.9: server too old for this command", "GET /api/v1/invalid")
    fake.status, fake.body = 405, problem(405, "Method Not Allowed")
    one_line(await cli(fake.url, "invalid", "replay", "--all"), 1, "server too old for this command")
    fake.version, fake.status, fake.body = "0.1.0", 404, problem(404, "Not Found")  # same version: a wrong URL
    one_line(await cli(fake.url, "failed", "list"), 1, "has no GET /api/v1/failed", "base URL")


async def test_unreachable_and_not_a_hookpost_server(fake):
    port = free_port()
    res = await cli(f"http://127.0.0.1:{port}", "webhooks", "list")
    one_line(res, 1, f"hookpost: error: cannot reach http://127.0.0.1:{port}")
    fake.status, fake.raw = 200, b"<html>hello</html>"
    one_line(await cli(fake.url, "webhooks", "list"), 1, fake.url, "not JSON")


async def test_the_real_command_prints_no_traceback(fake):
    """The installed ``hookpost`` (not click's runner): a 503 and an unreachable server."""
    fake.status, fake.body = 503, problem(503, "broker: not confirmed")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}, **UNREACHABLE,
           "HOOKPOST_API_TOKEN": TOKEN}
    for url, code, part in ((fake.url, 1, "server error 503: broker: not confirmed"),
                            (f"http://127.0.0.1:{free_port()}", 1, "cannot reach")):
        proc = await asyncio.create_subprocess_exec(
            Path(sys.executable).parent / "hookpost", "--api", url, "publish", "a.b", "--entity-kind", "a",
            "--entity-id", "1", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        text = err.decode()
        assert proc.returncode == code and text.count("\n") == 1 and part in text and url in text, text
        assert TOKEN not in text + out.decode()


async def test_no_token_and_plain_http_elsewhere(fake):
    one_line(await cli(fake.url, "events", "list", env={"HOOKPOST_API_TOKEN": None}), 2, "no API token for")
    one_line(await cli("http://hookpost.example.com", "events", "list"), 2,
             "refusing to send a token over plain http to hookpost.example.com")
    res = await asyncio.to_thread(invoke_env, ["--api", "http://hookpost.invalid", "--insecure", "events", "list"],
                                  {**dict.fromkeys(API_VARS), **UNREACHABLE, "HOOKPOST_API_TOKEN": TOKEN})
    one_line(res, 1, "cannot reach http://hookpost.invalid")
    res = await asyncio.to_thread(invoke_env, ["--token-file", "/dev/null", "events", "list"],
                                  {**dict.fromkeys(API_VARS), **UNREACHABLE})
    one_line(res, 2, "--token-file is for API mode")


async def test_login_saves_a_private_profile_and_profile_uses_it(fake, tmp_path):
    xdg = {"XDG_CONFIG_HOME": str(tmp_path), "HOOKPOST_API_URL": None, "HOOKPOST_API_TOKEN": None}
    fake.status, fake.body = 200, {"items": [], "next": None}
    res = await cli(fake.url, "login", "--api", fake.url, "--profile", "prod", env=xdg, input=TOKEN + "\n")
    assert res.exit_code == 0, res.output
    assert TOKEN not in res.output and "saved profile 'prod'" in res.stderr
    path = tmp_path / "hookpost" / "profiles.toml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tomllib.loads(path.read_text())["profiles"]["prod"] == {"api": fake.url, "token": TOKEN}
    assert fake.seen[-1][2] == f"Bearer {TOKEN}"  # checked against the server before saving

    fake.seen.clear()
    fake.body = problem(404, "no event 'evt_9'")
    fake.status = 404
    res = await cli(fake.url, "--profile", "prod", "events", "show", "evt_9", env=xdg)
    one_line(res, 1, f"{fake.url}: no event 'evt_9'")
    assert fake.seen == [("GET", "/api/v1/events/evt_9", f"Bearer {TOKEN}")]
    conf = await cli(fake.url, "--profile", "prod", "config", "--json", env=xdg)
    data = json.loads(conf.stdout)
    assert data["mode"] == "api" and data["server"] == fake.url and data["profile"] == "prod"
    assert data["token"] == "profile prod" and TOKEN not in conf.output

    unknown = await cli(fake.url, "--profile", "staging", "events", "list", env=xdg)
    one_line(unknown, 2, "no profile 'staging'", "known: prod", "hookpost login --api URL --profile staging")

    fake.status, fake.body = 401, problem(401, "unknown token: x")  # a bad token is not saved
    res = await cli(fake.url, "login", "--api", fake.url, "--profile", "other", env=xdg, input="hp_nope_nope\n")
    assert res.exit_code == 1 and "refused the token" in res.stderr
    assert set(tomllib.loads(path.read_text())["profiles"]) == {"prod"}


def _make_ca(tmp: Path) -> tuple[Path, Path, Path]:
    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=tmp, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=hookpost test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", "/CN=127.0.0.1")
    (tmp / "ext.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")
    return tmp / "ca.pem", tmp / "server.pem", tmp / "server.key"


async def test_ca_file_trusts_a_private_ca(tmp_path):
    ca, cert, key = _make_ca(tmp_path)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    fake = FakeServer(status=200, body={"items": [], "next": None})
    runner = await serve(fake, ctx)
    try:
        one_line(await cli(fake.url, "events", "list"), 1, f"cannot reach {fake.url}", "not trusted", "--ca-file")
        assert fake.seen == []
        res = await cli(fake.url, "--ca-file", str(ca), "events", "list")
        assert res.exit_code == 0 and "no events match" in res.stderr, res.output
        assert fake.seen == [("GET", "/api/v1/events?limit=50", f"Bearer {TOKEN}")]
    finally:
        await runner.cleanup()


async def test_ctrl_c_stops_watching_and_leaves_the_job():
    fake = FakeServer()

    async def restart(request: web.Request) -> web.Response:
        body = await request.json()
        fake.seen.append((request.method, request.path, body.get("dry_run")))
        if body.get("dry_run"):
            return web.json_response({"matched": 5, "restarted": 5, "skipped": {}, "dry_run": True})
        return web.json_response({"matched": 5, "restarted": 0, "job": "job_1"}, status=202)

    app = web.Application()
    app.router.add_post("/api/v1/events/restart", restart)
    async def job(_request: web.Request) -> web.Response:
        fake.seen.append(("GET", "/api/v1/jobs/job_1", None))
        return web.json_response({"id": "job_1", "kind": "restart", "status": "running", "total": 5,
                                  "processed": 2})

    app.router.add_get("/api/v1/jobs/job_1", job)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}, **UNREACHABLE,
           "HOOKPOST_API_URL": f"http://127.0.0.1:{port}", "HOOKPOST_API_TOKEN": TOKEN}
    proc = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / "hookpost", "events", "restart", "--status", "failed", "--yes", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        await wait_until(lambda: sum(1 for s in fake.seen if s[1] == "/api/v1/jobs/job_1") >= 2, 20,
                         message="the CLI watches the job")
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        await runner.cleanup()
    text = err.decode()
    assert proc.returncode == 130, text
    assert "restart job job_1 started on the server" in text
    assert "stopped watching; restart job job_1 keeps running on the server" in text
    assert "Traceback" not in text and TOKEN not in text + out.decode()
    assert [s[2] for s in fake.seen if s[1] == "/api/v1/events/restart"] == [True, False]

