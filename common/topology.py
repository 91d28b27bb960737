"""The AMQP topology: every exchange, queue and binding name derived from one prefix, as plain data.

``Topology(prefix="hookpost", ...)`` lists what to declare; :meth:`common.amqp.AmqpChannel.declare` declares
it all, idempotently (declaring an existing queue with the same arguments is a no-op in RabbitMQ).

Retry queues carry their delay in their name (``hookpost.retry.10s``): a queue's ``x-message-ttl`` cannot be
changed by redeclaring it, so a new schedule simply declares new queues beside the old ones, which drain.
"""

from dataclasses import dataclass, field
from typing import Any

from hookpost.common.durations import format_duration

ATTEMPT_HEADER = "hookpost-attempt"
ERROR_HEADERS = ("x-hookpost-error", "hookpost-error")
ROUTING_KEY_HEADER = "hookpost-routing-key"  # the routing key a change event set aside was published with
SET_ASIDE_AT_HEADER = "hookpost-set-aside-at"  # epoch milliseconds when it was set aside
REPLAYS_HEADER = "hookpost-replays"  # how many times an operator replayed it


@dataclass(frozen=True)
class QueueSpec:
    """A queue to declare: its name and its ``x-`` arguments."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Topology:
    """Names and declarations of Hookpost's exchanges and queues under ``prefix``.

    >>> t = Topology("hookpost", retry_delays=(10.0, 60.0))
    >>> t.retry_queue(1), t.deliver_queue
    ('hookpost.retry.1m', 'hookpost.deliver')
    """

    prefix: str
    retry_delays: tuple[float, ...] = ()
    queue_type: str = "quorum"
    delivery_limit: int = 20
    defer_delay: float = 1.0
    change_log_retention: float = 0.0  # seconds the change log keeps changes; 0: no change log

    @property
    def changes_exchange(self) -> str:
        """Topic exchange upstream systems publish change events to (routing key = event type)."""
        return f"{self.prefix}.changes"

    @property
    def changes_queue(self) -> str:
        """Queue the fan-out stage consumes, bound to the changes exchange with ``#``."""
        return f"{self.prefix}.changes"

    @property
    def change_log(self) -> str | None:
        """Stream bound to the changes exchange with ``#`` that keeps every change for replays (None: off)."""
        return f"{self.prefix}.changelog" if self.change_log_retention > 0 else None

    @property
    def deliveries_exchange(self) -> str:
        """Direct exchange that routes delivery messages (``deliver``) to the deliver queue."""
        return f"{self.prefix}.deliveries"

    @property
    def deliver_queue(self) -> str:
        """Queue of attempts to make now."""
        return f"{self.prefix}.deliver"

    @property
    def dead_exchange(self) -> str:
        """Direct exchange in front of the failed (``failed``) and invalid (``invalid``) queues."""
        return f"{self.prefix}.dead"

    @property
    def failed_queue(self) -> str:
        """Queue of notices for events that ran out of attempts."""
        return f"{self.prefix}.failed"

    @property
    def invalid_queue(self) -> str:
        """Queue of change events that failed validation, with the reason in a header."""
        return f"{self.prefix}.invalid"

    def retry_queue(self, level: int) -> str:
        """Name of the delay queue for retry ``level`` (0 = the delay before the second attempt)."""
        return f"{self.prefix}.retry.{self.retry_label(level)}"

    def retry_label(self, level: int) -> str:
        """The delay of retry ``level`` as people read it (``10s``): the queue's suffix and a metric label."""
        return format_duration(self.retry_delays[level])

    DEFER_LEVELS = 6

    @property
    def defer_delays(self) -> list[float]:
        """Waits of the defer ladder: ``defer_delay`` doubled per level (1s, 2s, 4s … 32s by default)."""
        return [self.defer_delay * 2**k for k in range(self.DEFER_LEVELS)]

    @property
    def defer_queues(self) -> list[str]:
        """Every queue of the defer ladder, shortest wait first."""
        return [self.defer_queue(n) for n in range(1, self.DEFER_LEVELS + 1)]

    def defer_level(self, deferrals: int = 1, wait: float = 0.0) -> int:
        """Level of the defer ladder for a delivery deferred for the ``deferrals``-th time in a row (its endpoint
        is busy; no attempt made) that is expected to wait ``wait`` seconds for a slot: each deferral waits twice
        as long as the one before, and at least ``wait`` (up to the last level).

        >>> t = Topology("hookpost")
        >>> t.defer_level(1), t.defer_level(2), t.defer_level(1, wait=5.0), t.defer_level(9)
        (0, 1, 3, 5)
        """
        level = min(max(deferrals, 1), self.DEFER_LEVELS) - 1
        delays = self.defer_delays
        while level < self.DEFER_LEVELS - 1 and delays[level] < wait:
            level += 1
        return level

    def defer_level_within(self, wait: float) -> int:
        """Level of the defer ladder with the longest wait not longer than ``wait`` (the shortest level if none
        is): for a delivery that must not come back later than its turn.

        >>> Topology("hookpost").defer_level_within(0.2), Topology("hookpost").defer_level_within(5.0)
        (0, 2)
        """
        delays = self.defer_delays
        level = 0
        while level < self.DEFER_LEVELS - 1 and delays[level + 1] <= wait:
            level += 1
        return level

    def defer_queue(self, deferrals: int = 1, wait: float = 0.0) -> str:
        """Delay queue of :meth:`defer_level`."""
        return self.defer_queue_at(self.defer_level(deferrals, wait))

    def defer_queue_at(self, level: int) -> str:
        """Delay queue of level ``level`` of the defer ladder (0 = the shortest wait)."""
        return f"{self.prefix}.defer.{format_duration(self.defer_delays[level])}"

    @property
    def retry_queues(self) -> list[str]:
        """Distinct retry queue names, shortest delay first."""
        return list(dict.fromkeys(self.retry_queue(i) for i in range(len(self.retry_delays))))

    def _typed(self, args: dict[str, Any], *, dead_letters: bool = False, limit: bool = False) -> dict[str, Any]:
        if self.queue_type != "quorum":
            return args
        out = {"x-queue-type": "quorum", **args}
        if dead_letters:
            out["x-dead-letter-strategy"] = "at-least-once"
            out["x-overflow"] = "reject-publish"
        if limit:
            out["x-delivery-limit"] = self.delivery_limit
        return out

    @property
    def exchanges(self) -> list[tuple[str, str]]:
        """``(name, type)`` of every exchange."""
        return [(self.changes_exchange, "topic"), (self.deliveries_exchange, "direct"), (self.dead_exchange, "direct")]

    @property
    def queues(self) -> list[QueueSpec]:
        """Every queue with its arguments."""
        dead = {"x-dead-letter-exchange": self.dead_exchange}
        specs = [
            QueueSpec(self.changes_queue, self._typed({**dead, "x-dead-letter-routing-key": "invalid"},
                                                      dead_letters=True, limit=True)),
            QueueSpec(self.deliver_queue, self._typed({**dead, "x-dead-letter-routing-key": "failed"},
                                                      dead_letters=True, limit=True)),
            QueueSpec(self.failed_queue, self._typed({})),
            QueueSpec(self.invalid_queue, self._typed({})),
        ]
        seen = set()
        delays = [(self.retry_queue(level), delay) for level, delay in enumerate(self.retry_delays)]
        defers = [(f"{self.prefix}.defer.{format_duration(d)}", d) for d in self.defer_delays]
        for name, delay in [*delays, *defers]:
            if name in seen:
                continue
            seen.add(name)
            specs.append(QueueSpec(name, self._typed({
                "x-message-ttl": max(1, round(delay * 1000)),
                "x-dead-letter-exchange": self.deliveries_exchange,
                "x-dead-letter-routing-key": "deliver",
            }, dead_letters=True)))
        if self.change_log is not None:  # a stream whatever the queue type: it is read from a point in time
            specs.append(QueueSpec(self.change_log, {"x-queue-type": "stream",
                                                     "x-max-age": f"{max(1, round(self.change_log_retention))}s"}))
        return specs

    @property
    def bindings(self) -> list[tuple[str, str, str]]:
        """``(queue, exchange, routing key)`` of every binding."""
        return [
            (self.changes_queue, self.changes_exchange, "#"),
            (self.deliver_queue, self.deliveries_exchange, "deliver"),
            (self.failed_queue, self.dead_exchange, "failed"),
            (self.invalid_queue, self.dead_exchange, "invalid"),
            *([(self.change_log, self.changes_exchange, "#")] if self.change_log is not None else []),
        ]


def topology_from(settings: Any) -> Topology:
    """Build the :class:`Topology` that ``settings`` (a :class:`common.settings.Settings`) describes."""
    return Topology(prefix=settings.prefix, retry_delays=settings.retry_delays,
                    queue_type=settings.queue_type, delivery_limit=settings.delivery_limit,
                    defer_delay=settings.defer_delay, change_log_retention=settings.change_log_retention)
