"""Pins the one private aiohttp detail ``upstream.salvage_buffered`` relies on: an upgrade that
changes it fails here, not as silently restarted downloads."""

from __future__ import annotations

import asyncio

import aiohttp
from aiohttp.base_protocol import BaseProtocol

from mirror.upstream import salvage_buffered


async def test_bytes_buffered_before_a_cut_are_salvaged() -> None:
    stream = aiohttp.StreamReader(BaseProtocol(asyncio.get_running_loop()), 2**16)
    stream.feed_data(b"first half ")
    stream.feed_data(b"of the body")
    cut = aiohttp.ClientPayloadError("connection lost")
    stream.set_exception(cut)
    assert salvage_buffered(stream) == b"first half of the body"
    assert stream.exception() is cut  # every later read still sees the cut


async def test_nothing_is_salvaged_from_a_stream_that_was_not_cut() -> None:
    stream = aiohttp.StreamReader(BaseProtocol(asyncio.get_running_loop()), 2**16)
    stream.feed_data(b"data")
    assert salvage_buffered(stream) == b""
    assert await stream.read(4) == b"data"
