"""The fetcher's two bounds against a real local server: ``upstream.concurrency`` requests in
flight, of which at most ``upstream.large_downloads`` stream a large body, with small files
never queued behind large ones."""

from __future__ import annotations

import asyncio
import hashlib
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestServer

from mirror.config import UpstreamConfig
from mirror.fetch import WHOLE_BODY_MAX_BYTES, Fetcher
from mirror.upstream import Upstream

BIG = bytes(range(256)) * ((WHOLE_BODY_MAX_BYTES + (1 << 20)) // 256)  # 2 MiB
SMALL = b"s" * 1000
PIECE = 64 << 10


class SlowBigServer:
    """Small bodies at once; big ones in pieces with a pause, so they overlap for a while.
    Records when each big body started and finished (None: the client dropped it)."""

    def __init__(self) -> None:
        self.big_sends: list[tuple[float, float | None]] = []
        self.small_done_s: list[float] = []

    def app(self) -> web.Application:
        async def big(request: web.Request) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Length": str(len(BIG))})
            await response.prepare(request)
            started = time.monotonic()
            index = len(self.big_sends)
            self.big_sends.append((started, None))
            try:
                for at in range(0, len(BIG), PIECE):
                    await response.write(BIG[at : at + PIECE])
                    await asyncio.sleep(0.004)
                await response.write_eof()
            except (ConnectionError, asyncio.CancelledError):
                return response
            self.big_sends[index] = (started, time.monotonic())
            return response

        async def small(request: web.Request) -> web.Response:
            self.small_done_s.append(time.monotonic())
            return web.Response(body=SMALL)

        app = web.Application()
        app.router.add_get("/big/{n}", big)
        app.router.add_get("/small/{n}", small)
        return app


def _most_overlapping(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    most = current = 0
    for _, step in events:
        current += step
        most = max(most, current)
    return most


async def _fetch_all(
    tmp_path: Path, server: SlowBigServer, *, expect_large: bool
) -> list[tuple[str, int]]:
    site = TestServer(server.app())
    await site.start_server()
    config = UpstreamConfig(url=str(site.make_url("")), concurrency=6, large_downloads=2)
    executor = ThreadPoolExecutor(4)
    try:
        async with Upstream(config) as upstream:
            fetcher = Fetcher(upstream, config, executor=executor)

            async def one(kind: str, n: int) -> tuple[str, int]:
                body = BIG if kind == "big" else SMALL
                got = await fetcher.download(
                    str(site.make_url(f"/{kind}/{n}")),
                    tmp_path / f"{kind}-{n}",
                    sha256=hashlib.sha256(body).hexdigest(),
                    sha512=hashlib.sha512(body).hexdigest(),
                    expect_large=expect_large and kind == "big",
                )
                return kind, got.size_bytes

            jobs = [one("big", n) for n in range(6)] + [one("small", n) for n in range(30)]
            return await asyncio.gather(*jobs)
    finally:
        executor.shutdown()
        await site.close()


async def test_large_bodies_stream_two_at_a_time_while_small_files_go_on(tmp_path: Path) -> None:
    server = SlowBigServer()
    results = await _fetch_all(tmp_path, server, expect_large=False)
    assert sorted(results) == sorted([("big", len(BIG))] * 6 + [("small", len(SMALL))] * 30)
    completed = [(s, e) for s, e in server.big_sends if e is not None]
    assert len(completed) == 6
    assert _most_overlapping(completed) <= 2
    # An answer that turned out large with both large slots taken was dropped and asked for
    # again: at most one such drop per request slot and large file.
    assert len(server.big_sends) <= 6 + 6
    # Small files were not queued behind the large bodies.
    assert max(server.small_done_s) < max(e for _, e in completed)


async def test_a_download_expected_large_waits_for_its_slot_before_it_asks(
    tmp_path: Path,
) -> None:
    server = SlowBigServer()
    await _fetch_all(tmp_path, server, expect_large=True)
    assert len(server.big_sends) == 6  # nothing dropped: each asked once, holding its slot
    assert _most_overlapping([(s, e) for s, e in server.big_sends if e is not None]) <= 2
