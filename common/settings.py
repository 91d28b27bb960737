"""The one settings object, read from ``HOOKPOST_*`` environment variables (and an optional ``.env`` file).

>>> settings = load_settings(prefix="test")       # keyword arguments override the environment
>>> settings.retry_delays[:2]
(10.0, 60.0)
"""

import ipaddress
import os
import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from hookpost.common.durations import format_duration, parse_duration, parse_duration_list
from hookpost.common.errors import ConfigError

Duration = Annotated[float, BeforeValidator(parse_duration)]


def _optional_duration(value: Any) -> float | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "never", "off")):
        return None
    return parse_duration(value)


def _duration_list(value: Any) -> Any:
    return parse_duration_list(value) if isinstance(value, str) else value


def _str_list(value: Any) -> Any:
    if isinstance(value, str):
        return [p.strip() for p in value.split(",") if p.strip()]
    return value


DEFAULT_RETRY_DELAYS = "10s,1m,5m,15m,30m,1h,2h,4h,8h"


class Settings(BaseSettings):
    """Every knob of Hookpost. Each field ``name`` is read from ``HOOKPOST_NAME``.

    Durations accept units (``250ms``, ``10s``, ``5m``, ``2h``, ``7d``) and are held in seconds.
    """

    model_config = SettingsConfigDict(env_prefix="HOOKPOST_", env_file=os.environ.get("HOOKPOST_ENV_FILE"),
                                      extra="ignore", validate_default=True)

    rabbitmq_url: str = Field("amqp://guest:guest@127.0.0.1:5672/%2F",
                              description="AMQP URL, or several comma-separated (cluster nodes), tried in order")
    mongodb_url: str = Field("mongodb://127.0.0.1:27017", description="MongoDB URL; its own options pass through")
    mongodb_db: str = Field("hookpost", description="MongoDB database name")
    prefix: str = Field("hookpost", description="prefix of every exchange and queue name")
    queue_type: Literal["quorum", "classic"] = Field("quorum", description="RabbitMQ queue type")
    delivery_limit: int = Field(20, ge=1, description="quorum x-delivery-limit: redeliveries before a message "
                                                      "is dead-lettered (crash-loop guard)")

    max_attempts: int = Field(10, ge=1, le=100, description="attempts per event before it is Failed")
    retry_delays: Annotated[tuple[float, ...], NoDecode, BeforeValidator(_duration_list)] = Field(
        DEFAULT_RETRY_DELAYS, description="delays before attempts 2..N, comma-separated")

    http_timeout: Duration = Field("15s", description="total time for one HTTP attempt")
    http_connect_timeout: Duration = Field("5s", description="time to connect to a receiver")
    response_excerpt_bytes: int = Field(4096, ge=0, le=65536, description="response body bytes kept per attempt")
    user_agent: str = Field("Hookpost/0.1", description="User-Agent of webhook requests")
    allow_private_targets: bool = Field(False, description="allow loopback/private/link-local receivers")
    allowed_target_networks: Annotated[list[str], NoDecode, BeforeValidator(_str_list)] = Field(
        default_factory=list, description="CIDRs allowed even though private, comma-separated")
    require_https: bool = Field(False, description="refuse http:// webhook URLs")
    max_change_bytes: int = Field(65536, ge=256, description="largest change event body accepted")

    prefetch: int = Field(200, ge=1, description="unacked messages per consumer channel")
    first_attempt: Literal["inline", "queue"] = Field(
        "inline", description="inline: fan-out makes each new event's first attempt itself (no trip through "
                             "PREFIX.deliver); queue: every attempt goes through PREFIX.deliver")
    inline_per_change: int = Field(10, ge=1, description="inline: most first attempts fan-out makes itself per "
                                                         "change (the rest go through PREFIX.deliver)")
    inline_max: int = Field(100, ge=1, description="inline: most first attempts under way in fan-out at once per "
                                                   "process (beyond it, fan-out waits: the change stays unacked)")
    concurrency: int = Field(200, ge=1, description="deliveries in flight per process")
    endpoint_concurrency: int = Field(10, ge=1, description="most deliveries in flight per receiver endpoint (the "
                                                            "adaptive limit moves below it)")
    endpoint_hang_after: Duration = Field("3s", description="request time after which an endpoint counts as "
                                                            "hanging and its waiting deliveries are parked")
    defer_delay: Duration = Field("1s", description="first rung of the defer ladder, where deliveries of a hanging "
                                                    "endpoint are parked (no attempt is counted)")
    breaker: bool = Field(True, description="circuit breaker per endpoint: after a run of failed attempts, hold "
                                            "its deliveries (no attempt counted) and probe it")
    breaker_threshold: int = Field(20, ge=2, description="failed attempts in a row (errors, timeouts, 5xx, 429) "
                                                         "to one endpoint, counted across all dispatchers, that "
                                                         "open its breaker")
    breaker_probe: Duration = Field("30s", description="first interval between probe requests of an open breaker "
                                                       "(doubles up to HOOKPOST_BREAKER_PROBE_MAX)")
    breaker_probe_max: Duration = Field("10m", description="longest interval between probe requests")
    breaker_poll: Duration = Field("2s", description="how often a dispatcher reads the shared endpoint states and "
                                                     "re-publishes held deliveries of recovered endpoints")
    disable_after: Duration = Field("5d", description="disable every webhook of an endpoint whose breaker stayed "
                                                      "open this long (0 = never)")
    breaker_recovery: Duration = Field("1h", description="how long an endpoint must stay closed after its breaker "
                                                         "closed before its failures count afresh (a flapping "
                                                         "endpoint keeps its failing-since time; 0 = at every close)")
    notice_interval: Duration = Field("5m", description="at most one notice per webhook and kind per interval")
    store_batch: int = Field(500, ge=1, le=5000, description="most writes of one kind per store round trip")
    webhook_cache_ttl: Duration = Field("2s", description="how long the dispatcher trusts its webhook cache")
    catalog_flush_interval: Duration = Field("10s", description="how often a dispatcher writes the counts of "
                                             "event types it saw (a killed dispatcher loses the unwritten ones)")
    shutdown_grace: Duration = Field("30s", description="time in-flight deliveries get on SIGTERM")
    reconcile_interval: Duration = Field("1m", description="how often the dispatcher sweeps for lost deliveries")
    reconcile_grace: Duration = Field("5m", description="how overdue an attempt must be before it is re-published")
    order_settle: Duration = Field("1s", description="ordered webhooks: how long an event waits in its entity's "
                                   "lane before it may start (absorbs the skew between dispatchers)")
    change_log_retention: Duration = Field("7d", description="how long the change log (a stream of every change, "
                                           "for replays) keeps changes; 0 = no change log")

    ops_host: str = Field("0.0.0.0", description="address of the /healthz, /readyz, /metrics server")
    ops_port: int = Field(9000, ge=0, le=65535, description="port of the ops server (0 = pick a free one)")

    server_host: str = Field("127.0.0.1", description="address 'hookpost server' (the HTTP API) listens on")
    server_port: int = Field(8000, ge=0, le=65535, description="port of 'hookpost server' (0 = pick a free one)")
    trusted_proxies: Annotated[list[str], NoDecode, BeforeValidator(_str_list)] = Field(
        default_factory=list, description="CIDRs of proxies whose X-Forwarded-For the server trusts, comma-separated")
    max_request_bytes: int = Field(1_048_576, ge=1024, description="largest request body the server accepts")
    header_timeout: Duration = Field("10s", description="time a client has to send its request headers")
    session_secret: SecretStr | None = Field(
        None, description="key that signs web console session cookies; the same on every server instance "
                          "(at least 32 characters; unset: a random key per process)")
    session_ttl: Duration = Field("8h", description="how long a web console sign-in lasts")

    janitor_interval: Duration = Field("1h", description="time between janitor passes")
    janitor_batch: int = Field(500, ge=1, le=10000, description="most events deleted per janitor batch (batches are "
                               "sized from the measured store time, each request near 20 ms)")
    janitor_duty: float = Field(0.3, gt=0, le=1, description="share of the time the janitor keeps the store busy: "
                                "after each batch it pauses (1 - duty) / duty times the batch's store time")
    retention_finished: Duration = Field("7d", description="age after which Finished events are deleted")
    retention_failed: Duration = Field("30d", description="age after which Failed events are deleted")
    retention_stuck: Annotated[float | None, BeforeValidator(_optional_duration)] = Field(
        None, description="age after which New/Retrying events are deleted (unset = never)")

    log_format: Literal["auto", "text", "json"] = Field("auto", description="text, json, or auto (json unless a tty)")
    log_level: str = Field("INFO", description="logging level")
    trace_propagate: bool = Field(True, description="send each attempt's traceparent / tracestate to receivers")
    trace_url: str | None = Field(None, description="link from an event to its trace in the console, with "
                                  "{trace_id} (e.g. https://grafana.example/explore?traceId={trace_id})")

    @field_validator("prefix")
    @classmethod
    def _prefix_chars(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,100}", value):
            raise ValueError("use letters, digits, '.', '_' or '-'")
        return value

    @field_validator("trace_url")
    @classmethod
    def _trace_link(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        if value is not None and ("{trace_id}" not in value or not value.startswith(("http://", "https://"))):
            raise ValueError("an http(s) URL with {trace_id} where the trace id goes")
        return value

    @field_validator("mongodb_db")
    @classmethod
    def _db_chars(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,60}", value):
            raise ValueError("use letters, digits, '_' or '-'")
        return value

    @field_validator("retry_delays")
    @classmethod
    def _positive(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(d <= 0 for d in value):
            raise ValueError("every retry delay must be greater than zero")
        return value

    @field_validator("disable_after", "breaker_recovery", "order_settle", "change_log_retention")
    @classmethod
    def _not_negative(cls, value: float) -> float:
        if value < 0:
            raise ValueError("must not be negative (0 = never)")
        return value

    @field_validator("breaker_probe", "breaker_probe_max", "breaker_poll", "defer_delay", "endpoint_hang_after",
                     "http_timeout", "http_connect_timeout", "reconcile_interval", "reconcile_grace",
                     "janitor_interval", "header_timeout", "session_ttl")
    @classmethod
    def _more_than_zero(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than zero")
        return value

    @field_validator("session_secret")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value():
            return None
        if value is not None and len(value.get_secret_value()) < 32:
            raise ValueError("use at least 32 characters "
                             "(e.g. python -c 'import secrets; print(secrets.token_hex(32))')")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        for item in value:
            ipaddress.ip_network(item, strict=False)  # ValueError names the bad one
        return value

    @model_validator(mode="after")
    def _schedule_length(self) -> "Settings":
        if len(self.retry_delays) != self.max_attempts - 1:
            raise ValueError(
                f"HOOKPOST_RETRY_DELAYS has {len(self.retry_delays)} delays but HOOKPOST_MAX_ATTEMPTS="
                f"{self.max_attempts} needs {self.max_attempts - 1} (one before each attempt after the first)"
            )
        return self

    @property
    def rabbitmq_urls(self) -> list[str]:
        """The configured broker addresses, in the order they are tried."""
        return [u.strip() for u in self.rabbitmq_url.split(",") if u.strip()]

    def masked(self) -> dict[str, Any]:
        """Return the settings as JSON-ready data with passwords in URLs replaced by ``***``."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if name.endswith("_url") and value is not None:
                value = mask_url(value)
            elif isinstance(value, SecretStr):
                value = "***"
            elif name == "retry_delays":
                value = ",".join(format_duration(d) for d in value)
            elif isinstance(value, tuple):
                value = list(value)
            out[name] = value
        return out


def settings_env(values: Mapping[str, Any]) -> dict[str, str]:
    """Return settings as the ``HOOKPOST_*`` environment variables that set them (for a child process).

    Durations are given in seconds, lists comma-separated, booleans as ``true``/``false``; None is left out.

    >>> settings_env({"prefix": "hp", "retry_delays": (0.1, 2.0), "allow_private_targets": True, "ops_port": None})
    {'HOOKPOST_PREFIX': 'hp', 'HOOKPOST_RETRY_DELAYS': '0.1,2.0', 'HOOKPOST_ALLOW_PRIVATE_TARGETS': 'true'}
    """
    def text(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list | tuple):
            return ",".join(text(v) for v in value)
        if isinstance(value, float):
            return repr(value)  # a bare number of seconds is a duration
        return str(value)

    return {f"HOOKPOST_{name.upper()}": text(value) for name, value in values.items() if value is not None}


def mask_url(url: str) -> str:
    """Hide the password of every URL in a comma list: ``amqp://guest:guest@h`` → ``amqp://guest:***@h``."""
    return re.sub(r"(//[^:/@,]+):[^@/,]*@", r"\1:***@", url)


def load_settings(**overrides: Any) -> Settings:
    """Build :class:`Settings` from the environment plus ``overrides``; raise :class:`ConfigError` on bad input.

    The error names the environment variable and says what is wrong, in one line per problem.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            var = f"HOOKPOST_{loc.upper()}" if loc else "settings"
            msg = str(err["msg"]).removeprefix("Value error, ")
            lines.append(f"{var}: {msg}" if loc else msg)
        raise ConfigError("; ".join(lines)) from None
    except ConfigError as exc:  # raised from inside a validator by parse_duration
        raise ConfigError(f"bad setting: {exc}") from None
