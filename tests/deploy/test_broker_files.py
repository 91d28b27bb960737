"""The broker's file descriptors in /readyz and `hookpost topology show`, against the real broker: the counts where
its management API answers, and otherwise the reason, with the dispatcher still ready and the CLI exiting 0."""

import json
import os
import socket
import subprocess
import sys

import aiohttp

from hookpost.common.settings import Settings
from tests.deploy.containers import report


def management_api_listens() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 15672), timeout=1).close()
        return True
    except OSError:
        return False


def check(report: dict) -> None:
    if management_api_listens():
        assert report["available"] is True, report
        for node in report["nodes"]:
            assert 0 < node["used"] <= node["limit"], node
    else:  # the plugin is not enabled on this broker: the report says so
        assert report == {"available": False, "reason": "no management API at http://127.0.0.1:15672 (cannot "
                          "connect; is the rabbitmq_management plugin enabled?)"}, report


async def test_readyz_reports_the_broker_file_descriptors(settings: Settings, dispatcher, pytestconfig):
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{dispatcher.ops.port}/readyz") as resp:
            assert resp.status == 200
            body = await resp.json()
    assert body["ready"] is True and body["broker"] is True
    check(body["broker_files"])
    report(pytestconfig, f"/readyz broker_files: {body['broker_files']}")


def test_topology_show_reports_the_broker_file_descriptors(settings: Settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}
    env.update(HOOKPOST_RABBITMQ_URL=settings.rabbitmq_url, HOOKPOST_PREFIX=settings.prefix,
               HOOKPOST_MONGODB_URL=settings.mongodb_url)
    hookpost = os.path.join(os.path.dirname(sys.executable), "hookpost")
    proc = subprocess.run([hookpost, "topology", "show", "--json"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)["broker_files"]
    check(report)
    proc = subprocess.run([hookpost, "topology", "show"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stdout.strip().splitlines()
    if report["available"]:
        assert any(line.split()[:3] == ["NODE", "FILE", "DESCRIPTORS"] for line in lines), lines[-3:]
        assert all(any(line.startswith(node["node"]) for line in lines) for node in report["nodes"])
    else:
        assert lines[-1] == f"Broker file descriptors: unknown: {report['reason']}"
