"""A raw asyncio server for what aiohttp's server cannot be made to do (the body faults of
the fake dl.k8s.io live in ``mirror.demo.hostile``).

``RawServer`` listens on 127.0.0.1 and, per connection, does one of ``RAW_MODES``: accept and
never answer (``silent``), answer with bytes that are not HTTP (``garbage``), or send header
lines for ever (``endless-headers``).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

RAW_MODES = ("silent", "garbage", "endless-headers")


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
