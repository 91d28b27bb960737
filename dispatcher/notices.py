"""Hookpost's own notices, published as change events through its own pipeline, so anyone can subscribe a webhook
to them (``hookpost.*``):

- ``hookpost.webhook.failing`` — the breaker of the webhook's endpoint opened;
- ``hookpost.webhook.recovered`` — it closed again (a probe succeeded);
- ``hookpost.webhook.disabled`` — the webhook was disabled because its endpoint failed for too long;
- ``hookpost.event.failed`` — one of the webhook's events ended ``Failed``.

Each notice's entity is the webhook (``{"kind": "webhook", "id": "wh_…"}``), its ``data`` says why. A webhook
never receives notices about itself (the fan-out leaves it out); a notice that fails makes no further notice.
At most one notice per webhook and kind goes out per ``HOOKPOST_NOTICE_INTERVAL`` (5 minutes by default), across
every dispatcher process (a guarded write in the ``notices`` collection; a local memo spares the store the
repeats).
"""

import logging
import time
from typing import Any

from hookpost.common.ids import new_id
from hookpost.common.models import ChangeEvent, Entity
from hookpost.common.wire import NOTICE_PREFIX
from hookpost.dispatcher.metrics import Metrics
from hookpost.dispatcher.outbox import Outbox
from hookpost.dispatcher.storeguard import GuardedStore

log = logging.getLogger("hookpost.notices")

FAILING = "webhook.failing"
RECOVERED = "webhook.recovered"
DISABLED = "webhook.disabled"
EVENT_FAILED = "event.failed"


def is_notice(event_type: str) -> bool:
    """Tell whether ``event_type`` is one of Hookpost's own notices."""
    return event_type.startswith(NOTICE_PREFIX)


class Notices:
    """Publishes notices, at most one per webhook and kind per ``interval`` seconds."""

    def __init__(self, store: GuardedStore, outbox: Outbox, metrics: Metrics, *, interval: float) -> None:
        self.store = store
        self.outbox = outbox
        self.metrics = metrics
        self.interval = interval
        self._quiet_until: dict[tuple[str, str], float] = {}

    async def send(self, kind: str, webhook_id: str, data: dict[str, Any]) -> bool:
        """Publish notice ``hookpost.<kind>`` about ``webhook_id`` unless one went out within the interval;
        return whether it was published. A failure to publish is logged, never raised (a notice is not worth
        a delivery)."""
        key = (kind, webhook_id)
        if self._quiet_until.get(key, 0.0) > time.monotonic():
            return False
        try:
            if not await self.store.notices.take(kind, webhook_id, self.interval):
                self._quiet_until[key] = time.monotonic() + min(self.interval, 5.0)
                return False
            self._quiet_until[key] = time.monotonic() + self.interval
            change = ChangeEvent(id=new_id("ntc"), type=f"{NOTICE_PREFIX}{kind}",
                                 entity=Entity(kind="webhook", id=webhook_id),
                                 data={"webhook_id": webhook_id, **data}, source="hookpost")
            await self.outbox.notice(change)
        except Exception as exc:
            log.warning("notice not published", extra={"kind": kind, "webhook_id": webhook_id,
                                                       "error": str(exc)[:300]})
            return False
        self.metrics.notices.labels(kind).inc()
        log.info("notice published", extra={"kind": kind, "webhook_id": webhook_id})
        return True
