"""Serving the app: a TCP listener whose connections must send their request headers within
``HOOKPOST_HEADER_TIMEOUT`` (10 s), and the run loop of ``hookpost server`` (until SIGTERM/SIGINT)."""

import asyncio
import logging
import signal
from collections.abc import Callable, Sequence
from typing import Any

from aiohttp import web

from hookpost.common.settings import Settings
from hookpost.common.tracing import configure as configure_tracing
from hookpost.web.app import create_app

log = logging.getLogger("hookpost.web")


class HeaderDeadline(asyncio.Protocol):
    """Wraps aiohttp's protocol: closes a connection that has not sent a complete request head in time
    (a slow client must not hold a connection open for free)."""

    def __init__(self, inner: Any, timeout: float) -> None:
        self.inner = inner
        self.timeout = timeout
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Start the clock, then hand the connection on."""
        self._transport = transport
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self._expire)
        self.inner.connection_made(transport)

    def _expire(self) -> None:
        # aiohttp counts a request once its head is parsed (RequestHandler._request_count)
        if getattr(self.inner, "_request_count", 1) == 0 and self._transport is not None:
            log.info("closing a connection that sent no request headers in time")
            self._transport.close()

    def data_received(self, data: bytes) -> None:
        """Pass data on."""
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        """Pass the end of input on."""
        return self.inner.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock and pass the loss on."""
        if self._timer is not None:
            self._timer.cancel()
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        """Pass flow control on."""
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        """Pass flow control on."""
        self.inner.resume_writing()


class ApiServer:
    """``hookpost server`` in this event loop: ``await start()`` returns the bound port; ``await stop()``."""

    def __init__(self, settings: Settings, *, host: str | None = None, port: int | None = None,
                 plugins: Sequence[Callable[[web.Application], None]] = (), **app_kwargs: Any) -> None:
        self.settings = settings
        self.host = host or settings.server_host
        self.port = settings.server_port if port is None else port
        self.app = create_app(settings, plugins=plugins, **app_kwargs)
        # a request line of every filter at its longest, percent-encoded, is ~12 KiB: allow 64 KiB
        self._runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=15, shutdown_timeout=5,
                                     max_line_size=65536, max_field_size=16384)
        self._server: asyncio.base_events.Server | None = None

    @property
    def url(self) -> str:
        """The base URL (``http://host:port``)."""
        return f"http://{self.host}:{self.port}"

    async def start(self) -> int:
        """Start listening; return the port (useful with port 0)."""
        await self._runner.setup()
        handler = self._runner.server
        assert handler is not None
        timeout = self.settings.header_timeout
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HeaderDeadline(handler(), timeout), self.host, self.port,
                                                reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening, finish requests in progress, close the store and broker clients."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        await self._runner.cleanup()


def run_server(settings: Settings) -> None:
    """Run ``hookpost server`` until SIGTERM or SIGINT, with tracing as the ``OTEL_*`` variables ask."""
    configure_tracing("hookpost-server")

    async def main() -> None:
        server = ApiServer(settings)
        port = await server.start()
        log.info("hookpost server listening", extra={"url": f"http://{server.host}:{port}/api/v1"})
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        await stopping.wait()
        log.info("hookpost server stopping")
        await server.stop()

    asyncio.run(main())
