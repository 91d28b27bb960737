"""Prometheus metrics of one dispatcher process (low-cardinality labels only; no event or webhook ids)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent


def status_class(status_code: int | None) -> str:
    """Return ``2xx`` … ``5xx`` for a status code, ``error`` when there was none."""
    return f"{status_code // 100}xx" if status_code else "error"


class Metrics:
    """The dispatcher's counters, gauges and histograms, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.changes_consumed = Counter("hookpost_changes_consumed", "Change events consumed", ["result"],
                                        registry=r)
        self.events_created = Counter("hookpost_events_created", "Webhook events created by fan-out", registry=r)
        self.first_attempts = Counter("hookpost_first_attempts", "New events' first attempts, by the way they went "
                                      "(inline: made by fan-out; queue: through PREFIX.deliver)", ["path"],
                                      registry=r)
        self.attempts = Counter("hookpost_delivery_attempts", "HTTP delivery attempts by outcome",
                                ["status_class"], registry=r)
        self.events_finished = Counter("hookpost_events_finished", "Events delivered (Finished)", registry=r)
        self.events_failed = Counter("hookpost_events_failed", "Events that failed for good", registry=r)
        self.retries = Counter("hookpost_retries_scheduled", "Deliveries parked in a retry queue", ["delay"],
                               registry=r)
        self.reconciled = Counter("hookpost_reconciled", "Lost deliveries re-published by the reconciler",
                                  registry=r)
        self.duration = Histogram("hookpost_delivery_duration_seconds", "Duration of HTTP attempts",
                                  buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
                                  registry=r)
        self.in_flight = Gauge("hookpost_deliveries_in_flight", "Deliveries being attempted now", registry=r)
        self.broker_up = Gauge("hookpost_broker_connected", "1 while connected to RabbitMQ", registry=r)
        self.store_up = Gauge("hookpost_store_up", "1 while MongoDB answers", registry=r)
        self.deferred = Counter("hookpost_deliveries_deferred", "Deliveries parked because their endpoint was busy",
                                registry=r)
        self.store_ops = Counter("hookpost_store_operations", "Commands sent to MongoDB (excluding heartbeats)",
                                 ["command"], registry=r)
        self.oldest_retrying = Gauge("hookpost_oldest_retrying_age_seconds",
                                     "Age of the oldest Retrying event (0 if none; sampled)", registry=r)
        self.webhooks_invalid = Gauge("hookpost_webhooks_invalid",
                                      "Stored webhook documents that do not validate (not served)", registry=r)
        self.endpoints = Gauge("hookpost_endpoints", "Endpoints by breaker state (closed, failing, open, disabled; "
                               "endpoints that never failed are not counted)", ["state"], registry=r)
        self.breaker_open_longest = Gauge("hookpost_breaker_open_longest_seconds",
                                          "How long the longest-open breaker has been open (0 if none)", registry=r)
        self.breaker_transitions = Counter("hookpost_breaker_transitions",
                                           "Breaker state changes made by this process", ["to"], registry=r)
        self.probes = Counter("hookpost_breaker_probes", "Probe requests sent to endpoints with an open breaker",
                              registry=r)
        self.held = Counter("hookpost_deliveries_held", "Deliveries held behind an open breaker (no attempt)",
                            registry=r)
        self.held_at_fanout = Counter("hookpost_deliveries_held_at_fanout",
                                      "Of the held deliveries, those of new events stored held by fan-out (their "
                                      "endpoint's breaker open), with no trip through the deliver queue", registry=r)
        self.released = Counter("hookpost_deliveries_released", "Held deliveries re-published", registry=r)
        self.webhooks_disabled = Counter("hookpost_webhooks_auto_disabled",
                                         "Webhooks disabled because their endpoint failed too long", registry=r)
        self.notices = Counter("hookpost_notices_published", "Notices published (hookpost.* events)", ["kind"],
                               registry=r)
        self.rate_limited = Counter("hookpost_deliveries_rate_limited",
                                    "Deliveries parked because their webhook's rate limit was reached", registry=r)
        self.changes_coalesced = Counter("hookpost_changes_coalesced", "Changes folded into a waiting event of "
                                         "their entity (coalesce=latest)", ["webhook"], registry=r)
        self.changes_superseded = Counter("hookpost_changes_superseded", "Changes that arrived late in their "
                                          "entity's lane and were ended unsent (ordering=entity)", ["webhook"],
                                          registry=r)
        self.queue_depth = Gauge("hookpost_queue_messages", "Ready messages per queue (sampled)", ["queue"],
                                 registry=r)

    def attempt_made(self, status_code: int | None, duration_ms: float) -> None:
        """Count one HTTP attempt by its status class (``2xx`` … ``5xx``, ``error``) and observe its duration."""
        self.attempts.labels(status_class(status_code)).inc()
        self.duration.observe(duration_ms / 1000)


class StoreOpCounter(CommandListener):
    """Counts every command the store client sends, by command name (``insert``, ``update``, ``find``, …)."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics

    def started(self, event: CommandStartedEvent) -> None:
        """Count one command."""
        self.metrics.store_ops.labels(event.command_name).inc()

    def succeeded(self, event: CommandSucceededEvent) -> None:
        """Nothing to do."""

    def failed(self, event: CommandFailedEvent) -> None:
        """Nothing to do."""
