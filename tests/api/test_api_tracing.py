"""``POST /api/v1/changes`` takes the trace context from the request's headers: the change's events keep it, the
receiver gets it (with its attempt's own span id) and ``GET /events/{id}`` shows it."""

from tests.helpers import wait_until

TRACE = "5bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "10f067aa0ba902b7"


async def test_a_change_posted_with_a_traceparent_stays_in_the_callers_trace(api, dispatcher, new_receiver):
    rec = await new_receiver([200])
    status, hook, _ = await api.call("POST", "/webhooks", json={"url": rec.url, "event_types": ["article.*"]})
    assert status == 201
    dispatcher.cache.invalidate()
    change = {"id": "chg-api-traced", "type": "article.updated", "entity": {"kind": "article", "id": "A-1"}}
    headers = {"traceparent": f"00-{TRACE}-{CALLER_SPAN}-01", "tracestate": "acme=t61rcWkgMzE"}
    status, _, _ = await api.call("POST", "/changes", role="publisher", json=change, headers=headers)
    assert status == 202

    await wait_until(lambda: rec.requests, message="the receiver got the POST")
    _, trace_id, span_id, flags = rec.requests[0].headers["traceparent"].split("-")
    assert (trace_id, flags) == (TRACE, "01") and span_id != CALLER_SPAN
    assert rec.requests[0].headers["tracestate"] == "acme=t61rcWkgMzE"
    status, page, _ = await api.call("GET", "/events", role="viewer", params={"webhook": hook["id"]})
    status, detail, _ = await api.call("GET", f"/events/{page['items'][0]['id']}", role="viewer")
    assert status == 200
    assert detail["trace"] == {"trace_id": TRACE, "parent_span_id": CALLER_SPAN, "sampled": True,
                               "tracestate": "acme=t61rcWkgMzE"}
