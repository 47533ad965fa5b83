"""Keeping ``serve`` available under idle, slow or too many clients.

aiohttp keeps a connection that never sends a request (or sends half of one) open for as long
as the client likes, so a few thousand idle sockets exhaust the file descriptors and every new
client times out. ``ConnectionGuard`` wraps aiohttp's protocol factory (``AppRunner.server``,
public API) at the asyncio level:

- at most ``max_connections`` open at once; one more is closed at once (counted, and logged at
  most once per ``LOG_EVERY_S``);
- a connection must start a request within ``idle_timeout_s`` of opening, or of its previous
  request's end: else it is closed (this covers idle keep-alive connections and request heads
  that never complete);
- ``accept()`` failing with EMFILE/ENFILE is logged once per ``LOG_EVERY_S`` instead of once
  per attempt (asyncio's accept loop reports each one), and so are malformed requests (aiohttp
  answers them 400 and would log a traceback each).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

log = logging.getLogger("mirror.serve")

LOG_EVERY_S = 10.0


class _Throttled:
    """One log line per ``LOG_EVERY_S`` for a repeating condition, with the count since."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.count = 0
        self._last_s = -LOG_EVERY_S

    def hit(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._last_s >= LOG_EVERY_S:
            log.warning("%s (%d since the last report)", self.what, self.count)
            self._last_s, self.count = now, 0


class OneLineBadRequests(logging.Filter):
    """aiohttp logs a malformed request with a traceback; make it one line (a client's
    garbage is not our bug), throttled like the other floods."""

    def __init__(self) -> None:
        super().__init__()
        self._flood = _Throttled("malformed requests answered with 400")

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            self._flood.hit()
            return False
        return True


class ConnectionGuard:
    """Counts connections and enforces the cap and the idle deadline."""

    def __init__(self, *, max_connections: int, idle_timeout_s: float) -> None:
        self.max_connections = max_connections
        self.idle_timeout_s = idle_timeout_s
        self.active: dict[asyncio.BaseTransport, _GuardedProtocol] = {}
        self._refused = _Throttled(f"connection refused: {max_connections} already open")
        self._exhausted = _Throttled("cannot accept connections: out of file descriptors")

    def factory(self, make_inner: Callable[[], Any]) -> Callable[[], asyncio.Protocol]:
        """Wrap a protocol factory (aiohttp's ``web.Server``)."""
        return lambda: _GuardedProtocol(self, make_inner())

    def request_started(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None and (guarded := self.active.get(transport)) is not None:
            guarded.disarm()

    def request_ended(self, transport: asyncio.BaseTransport | None) -> None:
        if transport is not None and (guarded := self.active.get(transport)) is not None:
            guarded.arm()

    def loop_exception(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """Event loop exception handler: throttle descriptor exhaustion, pass on the rest."""
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in (23, 24):  # ENFILE, EMFILE
            self._exhausted.hit()
            return
        loop.default_exception_handler(context)


class _GuardedProtocol(asyncio.Protocol):
    """aiohttp's request handler, behind the guard (every callback passed through)."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self.guard = guard
        self.inner = inner
        self.transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if len(self.guard.active) >= self.guard.max_connections:
            self.guard._refused.hit()
            transport.close()
            return
        self.transport = transport
        self.guard.active[transport] = self
        self.inner.connection_made(transport)
        self.arm()

    def arm(self) -> None:
        self.disarm()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.guard.idle_timeout_s, self._expire)

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.transport is not None and not self.transport.is_closing():
            log.debug("closing a connection that started no request in %gs",
                      self.guard.idle_timeout_s)  # fmt: skip
            self.transport.close()

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.disarm()
        if self.transport is None:
            return  # refused at the cap: the inner handler never saw it
        self.guard.active.pop(self.transport, None)
        self.inner.connection_lost(exc)


GUARD = web.AppKey("guard", ConnectionGuard)


@web.middleware
async def guarded(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """While a request runs, its connection's idle deadline is off (``guard.py``)."""
    guard = request.app.get(GUARD)
    if guard is None:
        return await handler(request)
    guard.request_started(request.transport)
    try:
        return await handler(request)
    finally:
        guard.request_ended(request.transport)
