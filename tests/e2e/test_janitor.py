"""The janitor deletes exactly the events past retention, with their attempts, and nothing else."""

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hookpost.common.models import Attempt, EventStatus, attempt_id
from hookpost.store.cleanup import Pacer, cleanup, retention_rules
from tests.e2e.test_cli import env_for
from tests.seed import insert, make_events

DAY = 86400


async def seed(store):
    now = datetime.now(UTC)
    hook = await store.webhooks.create("http://127.0.0.1:9/x", ["*"])
    # 41 days of events, one every ~1.23 hours (none within minutes of the 7d or 30d boundary)
    events = make_events(800, [hook.id], now=now, spread=timedelta(days=41))
    await insert(store, events)
    # as the dispatcher records them: attempt n of an event has the id attempt_id(event, n), n <= attempt_count
    attempts = [Attempt(id=attempt_id(e.id, n), event_id=e.id, webhook_id=hook.id, attempt=n, started_at=now,
                        duration_ms=1.0, status_code=500) for e in events for n in range(1, e.attempt_count + 1)]
    for i in range(0, len(attempts), 1000):
        await store.attempts.insert(attempts[i:i + 1000])
    return events, now


def expired(events, now, finished=7 * DAY, failed=30 * DAY):
    limits = {EventStatus.FINISHED: finished, EventStatus.FAILED: failed}
    return {e.id for e in events if e.status in limits
            and e.updated_ms < int((now - timedelta(seconds=limits[e.status])).timestamp() * 1000)}


async def remaining(store):
    ev = {d["_id"] for d in await store.events.coll.find({}, {"_id": 1}).to_list()}
    att = {d["event_id"] for d in await store.attempts.coll.find({}, {"event_id": 1}).to_list()}
    return ev, att


async def run_janitor(s, *args):
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}, **env_for(s),
           "HOOKPOST_JANITOR_BATCH": "100"}
    proc = await asyncio.create_subprocess_exec(Path(sys.executable).parent / "hookpost", "janitor", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    assert proc.returncode == 0, err
    return json.loads(out.decode().strip().splitlines()[-1])


async def test_one_pass_deletes_exactly_the_expired_and_dry_run_nothing(settings, store):
    events, now = await seed(store)
    gone = expired(events, now)
    by_status = {s.value: sum(1 for e in events if e.id in gone and e.status == s)
                 for s in (EventStatus.FINISHED, EventStatus.FAILED)}
    assert by_status["Finished"] and by_status["Failed"]

    dry = await run_janitor(settings, "--once", "--dry-run", "--json")
    assert dry["dry_run"] and dry["events"] == by_status
    ev, att = await remaining(store)
    assert len(ev) == len(events) and len(att) == len(events)

    real = await run_janitor(settings, "--once", "--json")
    assert real["events"] == by_status and real["attempts"] == sum(e.attempt_count for e in events if e.id in gone)
    ev, att = await remaining(store)
    assert ev == {e.id for e in events} - gone
    assert att == ev
    # in-flight events are never deleted by age, however old
    oldest_retrying = min((e for e in events if e.status == EventStatus.RETRYING), key=lambda e: e.id)
    assert oldest_retrying.id in ev and oldest_retrying.created_at < now - timedelta(days=35)


async def test_cli_override_and_stuck_retention(settings, store):
    events, now = await seed(store)
    res = await run_janitor(settings, "--once", "--json", "--older-than", "20d", "--status", "retrying")
    expected = {e.id for e in events if e.status == EventStatus.RETRYING
                and e.updated_ms < (now - timedelta(days=20)).timestamp() * 1000}
    assert res["events"] == {"Retrying": len(expected)} and expected
    ev, _ = await remaining(store)
    assert ev == {e.id for e in events} - expected


async def test_two_janitors_at_once_end_like_one(settings, store):
    events, now = await seed(store)
    rules = retention_rules(7 * DAY, 30 * DAY, None)
    a, b = await asyncio.gather(cleanup(store, rules, batch=50, now=now), cleanup(store, rules, batch=50, now=now))
    gone = expired(events, now)
    assert a.total + b.total == len(gone)
    ev, att = await remaining(store)
    assert ev == {e.id for e in events} - gone and att == ev


async def test_sigterm_stops_the_long_running_janitor(settings, store):
    await seed(store)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("HOOKPOST_")}, **env_for(settings),
           "HOOKPOST_JANITOR_INTERVAL": "1h", "HOOKPOST_LOG_FORMAT": "json"}
    proc = await asyncio.create_subprocess_exec(Path(sys.executable).parent / "hookpost", "janitor", env=env,
                                                stderr=asyncio.subprocess.PIPE)
    line = await asyncio.wait_for(proc.stderr.readline(), 30)  # the first pass's log line
    assert json.loads(line)["message"].startswith("janitor pass")
    proc.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def test_the_janitor_paces_itself_from_its_own_store_time(settings, store):
    events, now = await seed(store)
    gone = expired(events, now)
    pauses: list[float] = []
    sizes: list[int] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    def progress(rep) -> None:
        sizes.append(rep.total)

    rep = await cleanup(store, retention_rules(7 * DAY, 30 * DAY, None), batch=40, now=now, duty=0.25,
                        sleep=sleep, progress=progress)
    assert rep.total == len(gone) and rep.batches == len(sizes) and 0 < rep.largest_batch <= 40
    ev, att = await remaining(store)
    assert ev == {e.id for e in events} - gone and att == ev
    # a pause after every full batch, three times its store time at a duty of 25%
    assert len(pauses) >= rep.batches - 2 and all(p > 0 for p in pauses)
    assert sum(pauses) <= 3 * rep.busy_seconds + 1e-9 and sum(pauses) == rep.paused_seconds
    assert rep.as_dict()["events_per_s"] > 0 and rep.as_dict()["batches"] == rep.batches


def test_the_pacer_sizes_batches_to_the_target_request_time():
    pacer = Pacer(max_batch=500, duty=0.3, target_request_s=0.02)
    assert pacer.batch == 100
    assert abs(pacer.after(100, busy=0.03, slowest=0.01) - 0.07) < 1e-9  # pause = busy * 0.7 / 0.3
    assert pacer.batch == 200  # fast requests: grow, at most doubling
    pacer.after(200, busy=0.5, slowest=0.2)
    assert pacer.batch == 50  # slow requests: shrink, at most to a quarter
    for _ in range(10):
        pacer.after(pacer.batch, busy=1.0, slowest=1.0)
    assert pacer.batch == 10  # never below min_batch
    for _ in range(20):
        pacer.after(pacer.batch, busy=0.001, slowest=0.001)
    assert pacer.batch == 500  # never above max_batch
    assert Pacer(max_batch=5).batch == 5
