"""An event's trace in the console (the trace id, a link out through ``HOOKPOST_TRACE_URL``, the headers sent) and
in the API (``GET /api/v1/events/{id}``)."""

from datetime import UTC, datetime

import pytest

from hookpost.common.models import EventStatus
from hookpost.common.records import WebhookCreate
from hookpost.common.traceparent import parse_traceparent
from tests.console.test_browser import seeded_event
from tests.console.test_http import client, sign_in

TRACE = "0af7651916cd43dd8448eb211c80319c"
CTX = parse_traceparent(f"00-{TRACE}-b7ad6b7169203331-01", "rojo=00f067aa0ba902b7")


@pytest.fixture
async def settings(settings_factory):  # type: ignore[no-untyped-def]
    """The console's settings plus a trace link."""
    return settings_factory(max_attempts=3, retry_delays="50ms,50ms", session_secret="s" * 40,
                            trace_url="https://grafana.example/explore?traceId={trace_id}&x=1")


async def test_the_event_page_shows_its_trace_and_links_out(console, store):
    hook = await console.admin.webhooks.create(WebhookCreate(url="http://127.0.0.1:9/a", event_types=["*"]),
                                               actor="test")
    traced = seeded_event(hook.id, EventStatus.FINISHED, datetime.now(UTC)).model_copy(update={"trace": CTX})
    untraced = seeded_event(hook.id, EventStatus.FINISHED, datetime.now(UTC))
    await store.events.insert_new([traced, untraced])
    async with client() as http:
        await sign_in(http, console.url, console.tokens["viewer"])
        async with http.get(console.url + f"/events/{traced.id}") as resp:
            body = await resp.text()
        async with http.get(console.url + f"/events/{untraced.id}") as resp:
            plain = await resp.text()
        async with http.get(console.url + f"/api/v1/events/{traced.id}",
                            headers={"Authorization": f"Bearer {console.tokens['viewer']}"}) as resp:
            api = await resp.json()
    assert f'href="https://grafana.example/explore?traceId={TRACE}&amp;x=1"' in body
    assert "b7ad6b7169203331" in body.split("data-trace")[1].split("</dd>")[0]
    assert f"00-{TRACE}-&lt;the attempt's span id&gt;-01" in body and "rojo=00f067aa0ba902b7" in body
    assert "data-trace" not in plain and "traceparent" not in plain
    assert api["trace"] == {"trace_id": TRACE, "parent_span_id": "b7ad6b7169203331", "sampled": True,
                            "tracestate": "rojo=00f067aa0ba902b7"}
