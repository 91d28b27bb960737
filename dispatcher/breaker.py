"""Circuit breakers per receiver endpoint (``scheme://host:port``), shared by every dispatcher process.

The limiter (:mod:`~hookpost.dispatcher.limits`) copes with an endpoint that is slow for seconds: it lowers the
endpoint's concurrency and parks deliveries in the defer ladder while a request hangs. The breaker is the next
step of the same path for an endpoint that is *down* for minutes or hours:

- **closed** — requests go through. The failed attempts in a row to each endpoint (connection errors, timeouts,
  5xx, 408 and 429; any other answer ends the run) are counted by every process together in the endpoint's
  document: an ``$inc`` per batch of failures, and a reset only from a process that knows of a run when it sees
  an answer (a healthy endpoint costs no write). At half ``HOOKPOST_BREAKER_THRESHOLD`` the endpoint is marked
  *failing*; at the threshold the breaker **opens**, whichever process sees it.
- **open** — a delivery to the endpoint is *held*: its event is marked ``held`` in the store (one batched write,
  guarded by ``_id`` and the attempt number) and its message is acked (a new event for an endpoint this process
  knows to be open is stored held by fan-out in the first place, with no delivery published at all). No attempt
  is counted; the event keeps ``New`` or ``Retrying``, its attempts so far, and ``next_attempt_at`` = the
  breaker's next probe. A held delivery is in no queue: while the breaker stays open it costs nothing — no
  message cycles through a delay queue, no store write per hour. Once per probe interval
  (``HOOKPOST_BREAKER_PROBE``, doubling up to ``HOOKPOST_BREAKER_PROBE_MAX``) one process wins the probe (a
  guarded update of the endpoint document) and re-publishes *one* held delivery as the probe: a real attempt,
  counted. The next probe is due one interval after
  this one *ended* (a probe that never reports back blocks the next for ``probe_lease`` at most), so requests
  stay an interval apart even when the probe waited in the deliver queue.
- A probe (or any request) that succeeds **closes** the breaker; the held deliveries are then re-published in
  pages, only while the deliver queue has room, by one process at a time (a lease), and the limiter spreads them
  at the endpoint's pace.
- An endpoint whose trouble lasts ``HOOKPOST_DISABLE_AFTER`` (5 days; 0 = never) is **disabled**: every webhook on
  it is disabled with the reason, and its held deliveries are re-published so that their events end ``Failed``
  with that reason. Its trouble began with the first failure of the run that marked it failing or opened the
  breaker, and goes on across a close until the endpoint has stayed closed for ``HOOKPOST_BREAKER_RECOVERY`` (1 h):
  a flapping endpoint (opens, one probe succeeds, fails again within minutes) is disabled like a dead one.

The state lives in the ``endpoints`` collection (one small document per endpoint that ever failed): it survives a
restart, and each process re-reads it every ``HOOKPOST_BREAKER_POLL``, so N processes run one outage, not N.

Example::

    breaker = Breaker(store, outbox, metrics, notices, cache, enabled=True, threshold=20, probe=30.0,
                      probe_max=600.0, disable_after=432000.0, recovery=3600.0)
    if breaker.admit(message, endpoint) is Admission.HOLD:
        await breaker.hold(message, endpoint)      # ack it: the store holds it now
    ...
    await breaker.observe(endpoint, result, probe=message.probe)
"""

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass
from enum import Enum

from hookpost.common.deliveries import first_delivery
from hookpost.common.durations import format_duration
from hookpost.common.endpoints import BreakerState, EndpointHealth, endpoint_key
from hookpost.common.ids import new_id
from hookpost.common.models import DeliveryMessage, from_ms, now_ms
from hookpost.dispatcher.batcher import Batcher
from hookpost.dispatcher.cache import WebhookCache
from hookpost.dispatcher.metrics import Metrics
from hookpost.dispatcher.notices import DISABLED, FAILING, RECOVERED, Notices
from hookpost.dispatcher.outbox import Outbox
from hookpost.dispatcher.policy import AttemptResult, counts_as_failure
from hookpost.dispatcher.storeguard import GuardedStore

log = logging.getLogger("hookpost.breaker")

class Admission(Enum):
    """What a delivery may do at the breaker."""

    SEND = "send"  # closed: go on
    PROBE = "probe"  # the open breaker's probe: go on, and the outcome decides
    HOLD = "hold"  # open: hold it in the store, no attempt


@dataclass
class _Run:
    """A run of failed attempts in a row to one endpoint that this process took part in: ``count`` and
    ``since_ms`` are the shared run's (every process's failures), as of this process's last failed attempt."""

    count: int
    since_ms: int
    error: str | None = None


class Breaker:
    """The breakers of every endpoint, as this process sees them (see the module docstring)."""

    def __init__(self, store: GuardedStore, outbox: Outbox, metrics: Metrics, notices: Notices,
                 cache: WebhookCache, *, enabled: bool, threshold: int, probe: float, probe_max: float,
                 disable_after: float, recovery: float = 3600.0, page: int = 200, hold_batch: int = 500,
                 probe_lease: float = 60.0) -> None:
        self.store = store
        self.outbox = outbox
        self.metrics = metrics
        self.notices = notices
        self.cache = cache
        self.enabled = enabled
        self.threshold = threshold
        self.probe = probe
        self.probe_max = max(probe_max, probe)
        self.disable_after = disable_after
        self.recovery = recovery  # closed this long without opening again: the endpoint's trouble is over
        self.probe_lease = probe_lease  # a probe that never reports back blocks the next one this long at most
        self.page = page
        self.owner = new_id("d")
        self._health: dict[str, EndpointHealth] = {}
        self._runs: dict[str, _Run] = {}  # runs this process took part in (the count is the shared one)
        self._shared_runs: dict[str, int] = {}  # the shared runs this process knows of (its own counts, the polls)
        self._held_since_poll: set[str] = set()
        self._moved_ms: dict[str, int] = {}  # when this process last changed its view of an endpoint itself
        self._opening: Counter[str] = Counter()  # endpoints this process opened whose store write is on its way
        self.holds: Batcher[tuple[str, int, str, int], None] = Batcher(self._write_holds, max_batch=hold_batch)
        # one batch at a time, so that the run changes of this process reach the store in order
        self.runs: Batcher[tuple[str, _Run | None, int], tuple[int, int | None]] = Batcher(
            self._write_runs, max_batch=hold_batch, max_in_flight=1)

    # ---- the delivery path ------------------------------------------------------------------------------------

    def is_open(self, key: str) -> bool:
        """Tell whether the breaker of ``key`` is open (as of the last poll or this process's own move)."""
        h = self._health.get(key)
        return self.enabled and h is not None and h.state == BreakerState.OPEN

    def admit(self, msg: DeliveryMessage, key: str) -> Admission:
        """Decide whether a delivery to ``key`` goes on (closed, or it is the probe) or is held."""
        if msg.probe:
            return Admission.PROBE
        return Admission.HOLD if self.is_open(key) else Admission.SEND

    async def hold(self, msg: DeliveryMessage, key: str) -> None:
        """Hold ``msg`` behind the open breaker of ``key``: mark its event in the store (batched); then the
        message can be acked. No attempt is counted."""
        h = self._health.get(key)
        due = h.next_probe_ms if h is not None and h.next_probe_ms else now_ms() + round(self.probe * 1000)
        await self.holds.submit((msg.event_id, msg.attempt, key, due))
        self._held_since_poll.add(key)
        self.metrics.held.inc()

    def hold_new_at(self, key: str) -> int | None:
        """For fan-out: if this process knows the breaker of ``key`` to be open, return when a new event for it is
        due (the next probe), so that the event is stored held, with no delivery published; else None."""
        if not self.is_open(key):
            return None
        h = self._health[key]
        return h.next_probe_ms if h.next_probe_ms else now_ms() + round(self.probe * 1000)

    def held_new(self, key: str, n: int) -> None:
        """Note that fan-out stored ``n`` new events of ``key`` held: counted like other holds, and looked at by
        the next poll in case the breaker had closed meanwhile (as :meth:`hold` does)."""
        self._held_since_poll.add(key)
        self.metrics.held.inc(n)
        self.metrics.held_at_fanout.inc(n)

    async def _write_holds(self, items: list[tuple[str, int, str, int]]) -> list[None]:
        await self.store.events.hold(items)
        return [None] * len(items)

    async def observe(self, key: str, result: AttemptResult, *, probe: bool = False) -> None:
        """Learn from an attempt's outcome: end or extend the run of failures; open or close the breaker.

        The run is counted in the endpoint's document by every process together: a failed attempt adds to it (one
        batched ``$inc``), and an answer ends it — written only if this process knows of a run (it counted a
        failure since, or the last poll showed one), so a healthy endpoint costs no store write.
        """
        if not self.enabled:
            return
        h = self._health.get(key)
        if not counts_as_failure(result):
            knew_run = self._runs.pop(key, None) is not None
            knew_run = self._shared_runs.pop(key, 0) > 0 or knew_run
            if probe or (h is not None and h.state == BreakerState.OPEN):
                await self._close(key)  # which ends the shared run as well
            elif h is not None and h.state == BreakerState.FAILING and await self.store.endpoints.recover(key):
                self._set(key, state=BreakerState.CLOSED)
                self.metrics.breaker_transitions.labels("closed").inc()
            elif knew_run:
                await self.runs.submit((key, None, 0))
            return
        run = self._runs.get(key)
        if run is None:
            run = self._runs[key] = _Run(0, now_ms())
        run.error = result.summary()
        if probe:  # the next probe is due one interval after this one ended, not after it was taken
            await self.store.endpoints.probed(key, self.probe_max)
            return
        if h is not None and h.state == BreakerState.OPEN:
            return  # no count while open: the close ends the run anyway
        # what this process knows of the shared run (never more than there is), plus this failure: enough to open
        # at once, as a count of its own would be; else add it to the shared count and learn the others'
        known = self._shared_runs[key] = self._shared_runs.get(key, 0) + 1
        if known < self.threshold:
            count, since = await self.runs.submit((key, run, now_ms()))
            if self._runs.get(key) is not run:
                return  # an answer ended the run while the count was written
            known = self._shared_runs[key] = max(self._shared_runs.get(key, 0), count)
            run.since_ms = min(run.since_ms, since) if since is not None else run.since_ms
            h = self._health.get(key)  # it may have moved meanwhile
            if h is not None and h.state == BreakerState.OPEN:
                return
        run.count = known
        if run.count >= self.threshold:
            await self._open(key, run)
        elif run.count >= self.threshold // 2 and (h is None or h.state not in (BreakerState.FAILING,
                                                                                BreakerState.OPEN)):
            if await self.store.endpoints.mark_failing(key, run.since_ms, run.error, self.recovery):
                self.metrics.breaker_transitions.labels("failing").inc()
                self._set(key, state=BreakerState.FAILING, failing_since_ms=run.since_ms)
            elif (fresh := await self.store.endpoints.get(key)) is not None:
                self._health[key] = fresh  # another process moved it first

    async def _write_runs(self, items: list[tuple[str, _Run | None, int]]) -> list[tuple[int, int | None]]:
        """Write a batch of run changes — ``(endpoint, its run, when it failed)`` for a failed attempt, or
        ``(endpoint, None, 0)`` for an answer that ends the run — at most two writes per endpoint; return each
        endpoint's shared run afterwards and when it began.

        A failure whose run an answer ended before this write is left out: written after the end, it would count
        towards the next run.
        """
        out: dict[str, tuple[int, int | None]] = {}
        for key in dict.fromkeys(k for k, _, _ in items):
            current = self._runs.get(key)
            mine = [(run, ms) for k, run, ms in items if k == key]
            failed = [ms for run, ms in mine if run is not None and run is current]
            if any(run is None for run, _ in mine):
                await self.store.endpoints.end_run(key)
            out[key] = (await self.store.endpoints.count_failures(key, len(failed), min(failed)) if failed
                        else (0, None))
        return [out[k] for k, _, _ in items]

    async def _open(self, key: str, run: _Run) -> None:
        now = now_ms()  # stop sending at once; the store round trips below take a while under load
        self._set(key, state=BreakerState.OPEN, opened_ms=now, next_probe_ms=now + round(self.probe * 1000),
                  failing_since_ms=run.since_ms)
        self._opening[key] += 1  # until it is written, a poll may read the state from before: it must not win
        try:
            opened = await self.store.endpoints.open(key, run.since_ms, self.probe, run.error, self.recovery)
            fresh = await self.store.endpoints.get(key)
            if fresh is not None:
                self._health[key] = fresh
        finally:
            self._opening[key] -= 1
            if not self._opening[key]:
                del self._opening[key]
            self._moved_ms[key] = now_ms()  # a poll that read before this moment keeps this view
        if opened:
            self.metrics.breaker_transitions.labels("open").inc()
            log.warning("breaker opened: deliveries to this endpoint are held", extra={
                "endpoint": key, "failures": run.count, "error": run.error, "probe_in_s": self.probe})
            await self._notify(key, FAILING, {"endpoint": key, "reason": f"{run.count} failed attempts in a row: "
                                                                         f"{run.error}"})

    async def _close(self, key: str) -> None:
        closed = await self.store.endpoints.close(key, self.recovery)
        self._set(key, state=BreakerState.CLOSED, opened_ms=None, next_probe_ms=None, releasing=True,
                  closed_ms=now_ms() if self.recovery > 0 else None)
        if closed:
            self.metrics.breaker_transitions.labels("closed").inc()
            log.info("breaker closed: the endpoint answers again; held deliveries follow", extra={"endpoint": key})
            await self._notify(key, RECOVERED, {"endpoint": key, "reason": "the endpoint answers again"})

    def _set(self, key: str, **fields: object) -> None:
        h = self._health.get(key) or EndpointHealth(id=key)
        self._health[key] = h.model_copy(update=fields)
        self._moved_ms[key] = now_ms()

    async def _notify(self, key: str, kind: str, data: dict[str, object]) -> None:
        for hook in await self._hooks_of(key):
            await self.notices.send(kind, hook, data)

    async def _hooks_of(self, key: str, active_only: bool = True) -> list[str]:
        return [h.id for h in await self.cache.all() if endpoint_key(h.url) == key and (h.active or not active_only)]

    # ---- the poll loop ------------------------------------------------------------------------------------------

    async def run(self, interval: float, stopping: asyncio.Event) -> None:
        """Every ``interval`` seconds until ``stopping``: read the shared states, send due probes, disable
        endpoints failing too long, re-publish held deliveries. Errors are logged and the loop goes on."""
        while not stopping.is_set():
            try:
                await self.poll()
            except Exception as exc:
                log.warning("breaker poll failed; will try again", extra={"error": str(exc)[:300]}, exc_info=True)
            try:
                await asyncio.wait_for(stopping.wait(), interval)
            except TimeoutError:
                pass

    async def poll(self) -> None:
        """One round of :meth:`run`. With the breaker turned off, an open breaker left from before is closed (its
        held deliveries are released)."""
        if not self.enabled:
            for h in await self.store.endpoints.all():
                if h.state == BreakerState.OPEN:
                    await self.store.endpoints.close(h.id, 0.0)
                if h.state == BreakerState.OPEN or h.releasing:
                    await self._release(h.id)
            return
        held_before, self._held_since_poll = self._held_since_poll, set()
        read_at = now_ms()
        fresh = {h.id: h for h in await self.store.endpoints.all()}
        for key, at in list(self._moved_ms.items()):  # a move of ours newer than this read is not undone by it
            if (at >= read_at or key in self._opening) and key in self._health:
                fresh[key] = self._health[key]
            elif at < read_at - 60_000:
                del self._moved_ms[key]
        self._health = fresh
        self._shared_runs = {h.id: h.run for h in fresh.values() if h.run > 0}  # behind by the counts on the way
        self._export()
        now = now_ms()
        for key, h in list(self._health.items()):
            if h.state == BreakerState.OPEN:
                if self.disable_after and h.failing_since_ms and now - h.failing_since_ms >= self.disable_after * 1000:
                    await self._disable(key, h)
                elif h.next_probe_ms is not None and now >= h.next_probe_ms:
                    await self._send_probe(key, h)
            elif h.state == BreakerState.DISABLED:
                self._runs.pop(key, None)  # the run ended with the disabling: re-enabled webhooks count afresh
            elif (h.state == BreakerState.CLOSED and h.closed_ms is not None
                  and now - h.closed_ms >= self.recovery * 1000):
                await self.store.endpoints.settle(key, h.closed_ms)  # it stayed closed: its trouble is over
            if h.state != BreakerState.OPEN and key in held_before:
                # held by this process on a stale view after the breaker closed: make sure they are released
                if h.releasing:
                    self._held_since_poll.add(key)  # another release runs: look again once it is over
                else:
                    await self.store.endpoints.mark_releasing(key)
                    self._set(key, releasing=True)
            if self._health[key].releasing and self.outbox.ready:
                await self._release(key)

    def _export(self) -> None:
        counts = dict.fromkeys(BreakerState, 0)
        longest = 0.0
        now = now_ms()
        for h in self._health.values():
            counts[h.state] += 1
            if h.state == BreakerState.OPEN and h.opened_ms:
                longest = max(longest, (now - h.opened_ms) / 1000)
        for state, n in counts.items():
            self.metrics.endpoints.labels(state.value).set(n)
        self.metrics.breaker_open_longest.set(longest)

    async def _send_probe(self, key: str, h: EndpointHealth) -> None:
        """If deliveries are held, take the due probe (one process wins) and re-publish one of them as the probe."""
        held = await self.store.events.held_by(key, 1)
        if not held or h.next_probe_ms is None:
            return
        interval = h.probe_interval or self.probe
        if not await self.store.endpoints.claim_probe(key, h.next_probe_ms, interval + self.probe_lease):
            return  # another process took it; the next probe is due once that one ends (or its lease runs out)
        event = held[0]
        # publish first: a crash before the unhold leaves a held event whose delivery is queued (recorded when it is
        # sent, or held again), never an unheld event without one
        await self.outbox.deliveries([first_delivery(event).model_copy(update={"probe": True})])
        await self.store.events.unhold([(event.id, event.next_attempt_ms)], key, now_ms())
        self.metrics.probes.inc()
        log.info("probe sent to an endpoint with an open breaker", extra={"endpoint": key, "event_id": event.id,
                                                                          "next_probe_in_s": interval})

    async def _release(self, key: str) -> None:
        """Re-publish held deliveries of ``key`` in pages while the deliver queue has room (one process at a time)."""
        if not await self.store.endpoints.lease_release(key, self.owner, 30.0):
            return
        for _ in range(10):
            if self.is_open(key):
                return  # it opened again meanwhile: what is still held waits for the next close
            if await self.outbox.queue_depth(self.outbox.topology.deliver_queue) >= self.page:
                return  # the deliver queue has work: the next poll goes on
            events = await self.store.events.held_by(key, self.page)
            if not events:
                await self.store.endpoints.released(key)
                self._set(key, releasing=False)
                return
            now = now_ms()
            await self.outbox.deliveries([first_delivery(e.model_copy(update={"next_attempt_ms": now}))
                                          for e in events])  # first, as in _send_probe
            await self.store.events.unhold([(e.id, e.next_attempt_ms) for e in events], key, now)
            self.metrics.released.inc(len(events))
            log.info("held deliveries re-published", extra={"endpoint": key, "count": len(events)})

    async def _disable(self, key: str, h: EndpointHealth) -> None:
        """Disable every webhook of an endpoint whose trouble lasted too long (see the module docstring), with the
        reason."""
        since = from_ms(h.failing_since_ms or now_ms()).isoformat(timespec="seconds").replace("+00:00", "Z")
        reason = (f"endpoint {key} failing since {since} (longer than HOOKPOST_DISABLE_AFTER="
                  f"{format_duration(self.disable_after)}")
        if h.closed_ms is not None:
            reason += (f"; it recovered only briefly in between, closed for less than HOOKPOST_BREAKER_RECOVERY="
                       f"{format_duration(self.recovery)} each time")
        reason += f"): {h.last_error or 'no answer'}"
        hooks = await self._hooks_of(key)
        for webhook_id in hooks:  # first the webhooks (idempotent), then the state: a crash in between redoes it
            await self.store.webhooks.set_active(webhook_id, False, reason)
        self.cache.invalidate()
        if h.opened_ms is not None and await self.store.endpoints.disable(key, h.opened_ms):
            self.metrics.breaker_transitions.labels("disabled").inc()
            self.metrics.webhooks_disabled.inc(len(hooks))
            log.warning("webhooks disabled: their endpoint failed too long", extra={
                "endpoint": key, "webhooks": hooks, "reason": reason})
            for webhook_id in hooks:
                await self.notices.send(DISABLED, webhook_id, {"endpoint": key, "reason": reason})
        self._set(key, state=BreakerState.DISABLED, releasing=True)
        self._runs.pop(key, None)
        self._shared_runs.pop(key, None)
