"""Upstreams that misbehave on purpose: extra body faults for the fake dl.k8s.io, and a raw
asyncio server for what aiohttp's server cannot be made to do.

``FakeDl`` hands a request whose fault is one of ``HOSTILE_FAULTS`` to ``misbehave``:

- ``trickle``: the body one byte every ``stall_s`` seconds (never silent for long);
- ``endless``: a chunked body of zeros that never ends (until the client leaves);
- ``lie-long``: a ``Content-Length`` 1000 bytes larger than the body, then a close;
- ``lie-short``: a ``Content-Length`` half the body's (the client reads a short body);
- ``redirect-loop``: 302 to the same URL, for ever;
- ``gzip-bomb``: ``Content-Encoding: gzip`` (never asked for) of 64 MiB of zeros.

``RawServer`` listens on 127.0.0.1 and, per connection, does one of ``RAW_MODES``: accept and
never answer (``silent``), answer with bytes that are not HTTP (``garbage``), or send header
lines for ever (``endless-headers``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from typing import Any

from aiohttp import web

HOSTILE_FAULTS = frozenset(
    {"trickle", "endless", "lie-long", "lie-short", "redirect-loop", "gzip-bomb"}
)
RAW_MODES = ("silent", "garbage", "endless-headers")
BOMB_BYTES = 64 << 20
_BOMB: bytes | None = None


def _bomb() -> bytes:
    global _BOMB
    if _BOMB is None:
        _BOMB = gzip.compress(b"\0" * BOMB_BYTES, compresslevel=9)
    return _BOMB


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def misbehave(
    kind: str, request: web.Request, headers: dict[str, str], body: bytes, interval_s: float
) -> web.StreamResponse:
    """Answer ``request`` (for a file whose real content is ``body``) the hostile way."""
    if kind == "redirect-loop":
        return web.Response(status=302, headers={"Location": str(request.url)})
    if kind == "gzip-bomb":
        return web.Response(
            status=200, body=_bomb(), headers={**headers, "Content-Encoding": "gzip"}
        )
    response = web.StreamResponse(status=200, headers=headers)
    if kind == "lie-long":
        response.content_length = len(body) + 1000
    elif kind == "lie-short":
        response.content_length = len(body) // 2
    elif kind == "trickle":
        response.content_length = len(body)
    else:
        response.enable_chunked_encoding()
    await response.prepare(request)
    with contextlib.suppress(ConnectionError):
        if kind == "lie-short":
            await response.write(body[: len(body) // 2])
        elif kind == "lie-long":
            await response.write(body)
            if request.transport is not None:
                request.transport.close()
        elif kind == "trickle":
            for index in range(len(body)):
                if _gone(request):
                    break
                await response.write(body[index : index + 1])
                await asyncio.sleep(interval_s)
        else:
            zeros = b"\0" * (64 << 10)
            while not _gone(request):
                await response.write(zeros)
    return response


class RawServer:
    """A TCP server on 127.0.0.1 that speaks broken HTTP (``mode``), counting connections."""

    def __init__(self, mode: str) -> None:
        if mode not in RAW_MODES:
            raise ValueError(f"unknown mode {mode!r}: one of {RAW_MODES}")
        self.mode = mode
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                await reader.readuntil(b"\r\n\r\n")
                if self.mode == "garbage":
                    writer.write(b"\x16\x03\x01 this is not HTTP at all \xff\xfe\r\n\r\n")
                    await writer.drain()
                elif self.mode == "endless-headers":
                    writer.write(b"HTTP/1.1 200 OK\r\n")
                    for index in range(10**9):
                        writer.write(f"X-Filler-{index}: {'a' * 64}\r\n".encode())
                        await writer.drain()
                        await asyncio.sleep(0.01)
                else:
                    await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            self._tasks.discard(task)
