"""The API end to end over real HTTP: webhooks made through the API, changes published through
``POST /changes``, a real dispatcher delivering, events read back, failed events restarted by filter."""

from hookpost.common.signing import sign
from tests.helpers import wait_until


async def _events(api, **params):
    status, page, _ = await api.call("GET", "/events", params=params)
    assert status == 200, page
    return page["items"]


async def test_create_publish_deliver_fail_and_restart(api, dispatcher, new_receiver):
    good = await new_receiver([200])
    status, hook, _ = await api.call("POST", "/webhooks", json={"url": good.url, "event_types": ["article.*"],
                                                                 "description": "pim"})
    assert status == 201 and hook["secret"].startswith("whsec_")
    dispatcher.cache.invalidate()

    change = {"id": "chg-api-1", "type": "article.updated", "entity": {"kind": "article", "id": "A-1001"}}
    status, body, _ = await api.call("POST", "/changes", role="publisher", json=change)
    assert (status, body) == (202, {"id": "chg-api-1"})
    status, _, _ = await api.call("POST", "/changes", role="publisher", json=change)  # same id: harmless
    assert status == 202

    await wait_until(lambda: len(good.requests) >= 1, message="receiver got the POST")
    req = good.requests[0]
    assert req.headers["webhook-signature"] == sign(req.headers["webhook-id"], int(req.headers["webhook-timestamp"]),
                                                    req.body, [hook["secret"]])

    async def finished():
        return await _events(api, status="finished", webhook=hook["id"])

    done = await wait_until(finished, message="event Finished in GET /events")
    assert len(done) == 1 and done[0]["change_id"] == "chg-api-1" and done[0]["status"] == "Finished"
    status, detail, _ = await api.call("GET", f"/events/{done[0]['id']}", role="viewer")
    assert status == 200 and [a["status_code"] for a in detail["attempts"]] == [200]

    # a failing endpoint: ten attempts, then Failed
    bad = await new_receiver([500] * 10 + [200])
    status, bad_hook, _ = await api.call("POST", "/webhooks", json={"url": bad.url, "event_types": ["order.*"]})
    assert status == 201
    dispatcher.cache.invalidate()
    status, _, _ = await api.call("POST", "/changes", json={"id": "chg-api-2", "type": "order.created",
                                                            "entity": {"kind": "order", "id": "O-1"}})
    assert status == 202

    async def failed():
        return await _events(api, status="Failed", webhook=bad_hook["id"])

    failed_events = await wait_until(failed, 30, message="event Failed after ten attempts")
    assert failed_events[0]["attempt_count"] == 10 and len(bad.requests) == 10

    flt = {"status": ["failed"], "webhook": bad_hook["id"]}
    status, dry, _ = await api.call("POST", "/events/restart", role="operator", json={**flt, "dry_run": True})
    assert status == 200 and dry["matched"] == 1 and dry["restarted"] == 1 and dry["dry_run"] is True
    assert len(bad.requests) == 10  # a dry run sends nothing

    status, started, _ = await api.call("POST", "/events/restart", role="operator", json=flt)
    assert status == 202 and started["job"].startswith("job_") and started["matched"] == 1

    async def job_done():
        _, job, _ = await api.call("GET", f"/jobs/{started['job']}", role="operator")
        return job if job["status"] != "running" else None

    job = await wait_until(job_done, message="restart job finished")
    assert job["status"] == "done" and job["restarted"] == 1 and job["processed"] == 1

    async def redelivered():
        return await _events(api, status="finished", webhook=bad_hook["id"])

    again = await wait_until(redelivered, 30, message="restarted event Finished")
    assert again[0]["attempt_count"] == 11 and len(bad.requests) == 11

    # the audit log has who did what
    status, audit, _ = await api.call("GET", "/audit", role="viewer")
    actions = [(e["actor"], e["action"]) for e in audit]
    assert ("token:test-operator", "events.restarted") in actions
    assert ("token:test-admin", "webhook.created") in actions
    restart_entry = next(e for e in audit if e["action"] == "events.restarted")
    assert restart_entry["details"]["filter"] == {"status": ["Failed"], "webhook_id": bad_hook["id"]}
    assert restart_entry["details"]["restarted"] == 1


async def test_test_event_goes_to_one_webhook_only(api, dispatcher, new_receiver):
    one, other = await new_receiver([200]), await new_receiver([200])
    _, hook, _ = await api.call("POST", "/webhooks", json={"url": one.url, "event_types": ["*"]})
    await api.call("POST", "/webhooks", json={"url": other.url, "event_types": ["*"]})
    dispatcher.cache.invalidate()
    status, sent, _ = await api.call("POST", f"/webhooks/{hook['id']}/test", role="operator")
    assert status == 202
    await wait_until(lambda: len(one.requests) == 1, message="test event delivered")
    assert one.requests[0].json["type"] == "hookpost.test" and one.requests[0].json["id"] == sent["event_id"]

    async def finished():
        _, ev, _ = await api.call("GET", f"/events/{sent['event_id']}")
        return ev["status"] == "Finished"

    await wait_until(finished, message="test event Finished")
    assert other.requests == []


async def test_webhook_lifecycle_and_secrets(api):
    _, hook, _ = await api.call("POST", "/webhooks", json={"url": "http://127.0.0.1:9/x", "event_types": ["a.*"]})
    wid = hook["id"]
    status, upd, _ = await api.call("PATCH", f"/webhooks/{wid}", json={"description": "erp", "event_types": ["b.*"]})
    assert status == 200 and upd["description"] == "erp" and upd["event_types"] == ["b.*"]
    assert "secret" not in upd
    status, off, _ = await api.call("POST", f"/webhooks/{wid}/disable")
    assert status == 200 and off["active"] is False and off["disabled_reason"] == "disabled by operator"
    status, on, _ = await api.call("POST", f"/webhooks/{wid}/enable")
    assert status == 200 and on["active"] is True
    status, secret, _ = await api.call("GET", f"/webhooks/{wid}/secret")
    assert status == 200 and secret["secret"] == hook["secret"]
    status, rotated, _ = await api.call("POST", f"/webhooks/{wid}/rotate-secret", json={"grace": "1h"})
    assert status == 200 and rotated["secret"] != hook["secret"] and rotated["previous_secret"] == hook["secret"]
    status, bad, _ = await api.call("POST", f"/webhooks/{wid}/rotate-secret", json={"grace": "soon"})
    assert status == 400 and bad["field"] == "grace"
    status, _, _ = await api.call("DELETE", f"/webhooks/{wid}")
    assert status == 204
    status, gone, resp = await api.call("GET", f"/webhooks/{wid}")
    assert status == 404 and resp.content_type == "application/problem+json" and wid in gone["detail"]
    _, audit, _ = await api.call("GET", "/audit", params={"actor": "token:test-admin"})
    assert [e["action"] for e in reversed(audit)] == [
        "webhook.created", "webhook.updated", "webhook.disabled", "webhook.enabled", "webhook.secret_revealed",
        "webhook.secret_rotated", "webhook.deleted"]


async def test_bad_input_is_a_problem_naming_the_field(api):
    cases = [
        ("GET", "/events", {"status": "done"}, "status"),
        ("GET", "/events", {"since": "yesterday"}, "since"),
        ("GET", "/events", {"limit": "501"}, "limit"),
        ("GET", "/events", {"limit": "ten"}, "limit"),
        ("GET", "/events", {"type": "a..b"}, "type"),
        ("GET", "/events", {"before": "nope"}, "before"),
        ("GET", "/stats", {"since": "soon"}, "since"),
        ("GET", "/audit", {"since": "soon"}, "since"),
        ("GET", "/events", {"colour": "red"}, "colour"),
        ("GET", "/events", {"webhook": "w" * 101}, "webhook"),
        ("GET", "/audit", [("actor", "a"), ("actor", "b")], "actor"),
    ]
    for method, path, params, field in cases:
        status, problem, resp = await api.call(method, path, params=params)
        assert status == 400 and resp.content_type == "application/problem+json", (params, problem)
        assert problem["field"] == field and field in problem["detail"] and "\n" not in problem["detail"]
    status, problem, _ = await api.call("POST", "/webhooks", data=b"{nope",
                                        headers={"Content-Type": "application/json"})
    assert status == 400 and "not JSON" in problem["detail"]
    status, problem, _ = await api.call("POST", "/webhooks", json={"url": "ftp://x/y", "event_types": ["a.b"]})
    assert status == 400 and "only http:// and https://" in problem["detail"]
    status, problem, _ = await api.call("POST", "/webhooks", json={"url": "http://x/y", "event_types": []})
    assert status == 400 and problem["field"] == "event_types"
    status, problem, _ = await api.call("POST", "/changes", json={"id": "c", "type": "a.b"})
    assert status == 400 and "entity" in problem["detail"]


async def test_paging_with_next(api, store):
    from datetime import UTC, datetime

    from tests.seed import insert, make_events

    hook = await store.webhooks.create("http://127.0.0.1:9/h", ["*"])
    events = make_events(230, [hook.id], now=datetime.now(UTC))
    await insert(store, events)
    seen, params = [], {"limit": "100"}
    while True:
        _, page, _ = await api.call("GET", "/events", params=params, role="viewer")
        seen += [e["id"] for e in page["items"]]
        if not page["next"]:
            break
        params = {"limit": "100", "before": page["next"]}
    assert seen == [e.id for e in sorted(events, key=lambda e: e.id, reverse=True)]


async def test_bulk_restart_job_shows_progress_while_other_requests_are_served(api, settings, store):
    import time

    from hookpost.common.models import EventStatus
    from tests.api.conftest import declare_topology
    from tests.helpers import queue_depth
    from tests.seed import insert, make_events

    await declare_topology(settings)
    hook = await store.webhooks.create("http://127.0.0.1:9/h", ["*"])
    events = [e.model_copy(update={"status": EventStatus.FAILED, "attempt_count": 10})
              for e in make_events(1200, [hook.id])]
    await insert(store, events)
    status, started, _ = await api.call("POST", "/events/restart", role="operator", json={"status": ["failed"]})
    assert status == 202 and started["matched"] == 1200
    seen, slowest, deadline = [], 0.0, time.monotonic() + 60
    while True:
        t0 = time.monotonic()
        status, page, _ = await api.call("GET", "/events", params={"limit": "5"}, role="viewer")
        slowest = max(slowest, time.monotonic() - t0)
        assert status == 200 and len(page["items"]) == 5
        _, job, _ = await api.call("GET", f"/jobs/{started['job']}", role="operator")
        seen.append((job["status"], job["processed"]))
        if job["status"] != "running":
            break
        assert time.monotonic() < deadline, seen
    assert job["status"] == "done" and job["restarted"] == 1200 and job["total"] == 1200 and job["skipped"] == {}
    assert any(st == "running" and 0 < n < 1200 for st, n in seen), seen  # progress was visible meanwhile
    assert slowest < 5, slowest  # other requests were served while the job ran
    assert await queue_depth(settings, f"{settings.prefix}.deliver") == 1200
    assert await store.events.count({"status": "New"}) == 1200
