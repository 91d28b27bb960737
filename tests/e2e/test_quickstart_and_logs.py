"""The README's quick start (`hookpost demo`, what `make run` runs) and the delivery logs."""

import asyncio
import json
import logging
import os
import sys
import uuid
from pathlib import Path

from hookpost.common.logs import JsonFormatter
from hookpost.common.models import ChangeEvent, Entity
from hookpost.producer import Publisher
from tests.helpers import wait_until


async def test_demo_brings_the_system_up_and_the_event_arrives(tmp_path, settings):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}
    env["HOOKPOST_PREFIX"] = settings.prefix  # cleaned up by the fixture, which knows this schedule's queues
    env["HOOKPOST_RABBITMQ_URL"] = settings.rabbitmq_url
    env["HOOKPOST_RETRY_DELAYS"] = ",".join(f"{round(d * 1000)}ms" for d in settings.retry_delays)
    proc = await asyncio.create_subprocess_exec(
        Path(sys.executable).parent / "hookpost", "demo", "--exit-after-delivery", "--data-dir", str(tmp_path / "hp"),
        "--receiver-port", "0", "--api-port", "0", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    text = out.decode()
    assert proc.returncode == 0, (text, err.decode())
    assert "receiver: got article.updated for article/A-1001" in text
    assert "Finished after 1 attempt(s)" in text
    assert "/api/v1 (OpenAPI: /api/v1/openapi.json) lists 1 event(s); demo admin token: hp_" in text
    assert (tmp_path / "hp" / "mongo" / "data").is_dir()
    assert not (tmp_path / "hp" / "mongo" / "nx.pid").exists()  # the local store was stopped


async def test_one_json_log_line_per_attempt_and_no_secrets(settings, store, dispatcher, new_receiver, caplog):
    rec = await new_receiver([500, 200])
    hook = await store.webhooks.create(rec.url, ["article.*"])
    caplog.set_level(logging.INFO, logger="hookpost")
    async with Publisher.from_settings(settings) as p:
        await p.publish(ChangeEvent(id=f"c-{uuid.uuid4().hex}", type="article.updated",
                                    entity=Entity(kind="article", id="A-1")))
    await wait_until(lambda: len(rec.requests) == 2)
    await wait_until(lambda: any(r.getMessage() == "delivered" for r in caplog.records))
    fmt = JsonFormatter()
    lines = [json.loads(fmt.format(r)) for r in caplog.records if r.name == "hookpost.delivery"]
    assert [ln["message"] for ln in lines] == ["attempt failed; retry scheduled", "delivered"]
    for ln, (attempt, status) in zip(lines, [(1, "Retrying"), (2, "Finished")], strict=True):
        assert ln["attempt"] == attempt and ln["status"] == status and ln["webhook_id"] == hook.id
        assert ln["event_id"].startswith("evt_") and ln["duration_ms"] >= 0 and ln["level"] in ("info", "warning")
    assert lines[0]["status_code"] == 500 and lines[1]["status_code"] == 200
    assert hook.secret not in caplog.text and hook.secret[6:] not in caplog.text
