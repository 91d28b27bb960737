"""A dispatcher container and a server container, on the host's network, against the host's broker and store:
a change published from the host reaches a receiver on the host; both answer /readyz; the health checks that
docker-compose.yml and the Kubernetes probes define succeed against them."""

import json
import re

import aiohttp
import yaml

from hookpost.common.models import ChangeEvent, Entity, EventStatus
from hookpost.producer import Publisher
from tests.deploy.conftest import container_env
from tests.deploy.containers import ROOT, Containers, free_port
from tests.helpers import wait_until


async def get(url: str) -> tuple[int, dict]:
    """GET ``url``; return the status and the JSON body ({} when it is not JSON); (0, {}) when nothing answers."""
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3)) as http:
            async with http.get(url) as resp:
                try:
                    return resp.status, await resp.json(content_type=None)
                except ValueError:
                    return resp.status, {}
    except (aiohttp.ClientError, TimeoutError):
        return 0, {}


async def wait_ready(containers: Containers, name: str, url: str, timeout: float = 60) -> dict:
    """Wait until ``url`` (a /readyz) answers 200; fail with the container's logs otherwise."""
    async def ready() -> dict | None:
        status, body = await get(url)
        return body if status == 200 else None
    try:
        return await wait_until(ready, timeout, interval=0.3, message=f"{name} ready at {url}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- {name} logs:\n{(await containers.logs(name))[-3000:]}") from None


def compose_healthcheck(service: str, port: int, default_port: int) -> list[str]:
    """The ``CMD`` of a compose service's health check, aimed at ``port`` (the containers share the host's
    network here, so they cannot all listen on the compose file's fixed port)."""
    svc = yaml.safe_load((ROOT / "deploy/docker-compose.yml").read_text())["services"][service]
    test = svc["healthcheck"]["test"]
    assert test[0] == "CMD", f"{service}: exec-form health check expected, got {test}"
    return [arg.replace(f":{default_port}/", f":{port}/") for arg in test[1:]]


async def status_of(containers: Containers, name: str, argv: list[str]) -> bool:
    """Whether ``argv`` exits 0 in container ``name``."""
    return (await containers.runtime.call("exec", name, *argv, check=False)).returncode == 0


def k8s_probes(fname: str) -> list[tuple[str, str, str]]:
    """``(kind, path, port name)`` of every HTTP probe in ``deploy/k8s/<fname>``."""
    doc = yaml.safe_load((ROOT / "deploy/k8s" / fname).read_text())
    container = doc["spec"]["template"]["spec"]["containers"][0]
    return [(kind, probe["httpGet"]["path"], probe["httpGet"]["port"])
            for kind, probe in container.items() if kind.endswith("Probe")]


async def test_containers_deliver_a_change_from_the_host(settings, store, containers, new_receiver):
    receiver = await new_receiver([200])
    hook = await store.webhooks.create(receiver.url, ["article.*"])
    ops_port, server_port = free_port(), free_port()
    dispatcher = await containers.run(f"hp-{settings.prefix}-dispatcher", ["dispatcher"],
                                      container_env(settings, ops_port=ops_port))
    server = await containers.run(f"hp-{settings.prefix}-server", ["server"], container_env(
        settings, server_host="127.0.0.1", server_port=server_port, session_secret="s" * 64))

    body = await wait_ready(containers, dispatcher, f"http://127.0.0.1:{ops_port}/readyz")
    assert body["ready"] is True and body["broker"] is True and body["store"] is True, body
    await wait_ready(containers, server, f"http://127.0.0.1:{server_port}/readyz")

    async with Publisher.from_settings(settings) as publisher:
        await publisher.publish(ChangeEvent(id="chg-container", type="article.updated",
                                            entity=Entity(kind="article", id="A-1")))
    await wait_until(lambda: len(receiver.requests) == 1, 30, message="the receiver got the webhook")
    payload = receiver.requests[0].json
    assert payload["data"]["change_id"] == "chg-container"

    async def finished():
        ev = await store.events.coll.find_one({"change_id": "chg-container"})
        return ev if ev and ev["status"] == EventStatus.FINISHED.value else None
    event = await wait_until(finished, 15, message="the event Finished in the store")
    assert event["webhook_id"] == hook.id and event["attempt_count"] == 1

    # the dispatcher logs JSON lines (the image sets HOOKPOST_LOG_FORMAT=json)
    lines = [line for line in (await containers.logs(dispatcher)).splitlines() if line.startswith("{")]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)

    # the health checks of docker-compose.yml, run in the containers as compose runs them
    janitor = await containers.run(f"hp-{settings.prefix}-janitor", ["janitor"], container_env(settings))
    receiver_port = free_port()
    demo = await containers.run(f"hp-{settings.prefix}-demo", ["demo-receiver", "--host", "127.0.0.1", "--port",
                                                              str(receiver_port)], {})
    for name, service, port, default in ((dispatcher, "dispatcher", ops_port, 9000),
                                         (server, "server", server_port, 8000),
                                         (janitor, "janitor", 0, 0),
                                         (demo, "demo-receiver", receiver_port, 8099)):
        argv = compose_healthcheck(service, port, default)
        if service == "demo-receiver":  # its check connects to a port, not a URL
            argv = [a.replace(f", {default})", f", {port})") for a in argv]
        await wait_until(lambda n=name, a=argv: status_of(containers, n, a), 30, interval=0.5,
                         message=f"the compose health check of {service} to pass: {argv}")

    # the Kubernetes probes' paths on the ports they name, asked from outside as the kubelet does
    for fname, ports in (("dispatcher-deployment.yaml", {"ops": ops_port}),
                         ("server-deployment.yaml", {"http": server_port})):
        probes = k8s_probes(fname)
        assert {kind for kind, _, _ in probes} >= {"livenessProbe", "readinessProbe"}
        for kind, path, port in probes:
            status, _ = await get(f"http://127.0.0.1:{ports[port]}{path}")
            assert status == 200, f"{fname} {kind}: GET {path} answered {status}"

    # the health check fails when the process does not answer: it is not a check that cannot fail
    argv = [re.sub(r":\d+/", f":{free_port()}/", arg) for arg in compose_healthcheck("dispatcher", ops_port, 9000)]
    proc = await containers.runtime.call("exec", dispatcher, *argv, check=False)
    assert proc.returncode != 0
