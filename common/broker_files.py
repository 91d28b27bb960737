"""The broker's file descriptors: how many each RabbitMQ node uses against its limit, from the management API.

A node that runs out of file handles stops accepting connections (they time out in the handshake) and can hang on
``stop_app``; every connection and every quorum queue holds some. The management API (plugin
``rabbitmq_management``) reports ``fd_used`` and ``fd_total`` per node. Hookpost asks it on port 15672 (15671 for
``amqps://``) of each ``HOOKPOST_RABBITMQ_URL`` host in turn, with that URL's credentials. Without the plugin, or
without the rights, the report says why (``available: false``) and nothing else changes.

Example::

    report = await broker_file_descriptors(settings.rabbitmq_urls)
    report.as_dict()  # {"available": True, "nodes": [{"node": "rabbit@mq", "used": 119, "limit": 927, ...}]}
"""

import asyncio
import base64
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

import aiohttp

MANAGEMENT_PORTS = {"amqp": 15672, "amqps": 15671}
WARN_RATIO = 0.8  # a node above this share of its limit is flagged


@dataclass
class NodeFiles:
    """One node's file descriptors in use, and its limit."""

    node: str
    used: int
    limit: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready, with the share of the limit in use and whether it is above :data:`WARN_RATIO`."""
        ratio = self.used / self.limit if self.limit else 0.0
        return {"node": self.node, "used": self.used, "limit": self.limit, "ratio": round(ratio, 3),
                "near_limit": ratio >= WARN_RATIO}


@dataclass
class FileReport:
    """The nodes' file descriptors, or why they are not known (``reason``)."""

    nodes: list[NodeFiles] = field(default_factory=list)
    reason: str | None = None

    @property
    def available(self) -> bool:
        """Whether the management API answered with file descriptor counts."""
        return self.reason is None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"available": true, "nodes": [...]}`` or ``{"available": false, "reason": "..."}``."""
        if self.reason is not None:
            return {"available": False, "reason": self.reason}
        return {"available": True, "nodes": [n.as_dict() for n in self.nodes]}


def management_url(amqp_url: str, port: int | None = None) -> tuple[str, dict[str, str]]:
    """The management API's base URL on the host of ``amqp_url``, and the headers carrying that URL's
    credentials (HTTP basic authentication)."""
    parts = urlsplit(amqp_url)
    scheme = "https" if parts.scheme == "amqps" else "http"
    port = port or MANAGEMENT_PORTS.get(parts.scheme, 15672)
    host = parts.hostname or "localhost"
    host = f"[{host}]" if ":" in host else host
    user, password = unquote(parts.username or "guest"), unquote(parts.password or "guest")
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return f"{scheme}://{host}:{port}", {"Authorization": f"Basic {token}"}


async def broker_file_descriptors(amqp_urls: list[str], *, timeout: float = 2.0,
                                  port: int | None = None) -> FileReport:
    """Ask the management API next to each broker address in turn for ``/api/nodes``; the first answer wins."""
    reasons = []
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    for amqp_url in amqp_urls:
        base, headers = management_url(amqp_url, port)
        try:
            async with aiohttp.ClientSession(timeout=client_timeout) as http:
                async with http.get(f"{base}/api/nodes?columns=name,fd_used,fd_total", headers=headers) as resp:
                    if resp.status in (401, 403):
                        reasons.append(f"the management API at {base} refused the credentials (HTTP "
                                       f"{resp.status}; the user needs the monitoring tag)")
                        continue
                    if resp.status != 200:
                        reasons.append(f"the management API at {base} answered HTTP {resp.status}")
                        continue
                    nodes = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            what = ("cannot connect" if isinstance(exc, aiohttp.ClientConnectorError) else
                    "no answer in time" if isinstance(exc, TimeoutError) else
                    "not JSON" if isinstance(exc, ValueError) else type(exc).__name__)
            reasons.append(f"no management API at {base} ({what}; is the rabbitmq_management plugin enabled?)")
            continue
        found = [NodeFiles(str(n.get("name")), int(n["fd_used"]), int(n["fd_total"]))
                 for n in nodes if isinstance(n, dict) and n.get("fd_total")]
        if found:
            return FileReport(found)
        reasons.append(f"the management API at {base} reports no file descriptor counts (yet)")
    return FileReport(reason="; ".join(reasons) or "no broker address")


class CachedFileReport:
    """:func:`broker_file_descriptors`, asked at most once per ``ttl`` seconds (for ``/readyz``, which probes
    call every few seconds)."""

    def __init__(self, amqp_urls: list[str], *, ttl: float = 15.0, timeout: float = 1.0,
                 port: int | None = None) -> None:
        self.amqp_urls = amqp_urls
        self.ttl = ttl
        self.timeout = timeout
        self.port = port
        self._report: FileReport | None = None
        self._at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> FileReport:
        """The latest report, asking the management API again when it is older than ``ttl``."""
        async with self._lock:
            if self._report is None or time.monotonic() - self._at >= self.ttl:
                self._report = await broker_file_descriptors(self.amqp_urls, timeout=self.timeout, port=self.port)
                self._at = time.monotonic()
            return self._report
