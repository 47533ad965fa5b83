"""Body faults of the demo dl.k8s.io that a well-behaved fault list lacks: upstreams that
misbehave on purpose, for the torture suite (``FakeDl`` hands a request whose fault is one of
``HOSTILE_FAULTS`` to ``misbehave``):

- ``trickle``: the body one byte every ``stall_s`` seconds (never silent for long);
- ``endless``: a chunked body of zeros that never ends (until the client leaves);
- ``lie-long``: a ``Content-Length`` 1000 bytes larger than the body, then a close;
- ``lie-short``: a ``Content-Length`` half the body's (the client reads a short body);
- ``redirect-loop``: 302 to the same URL, for ever;
- ``gzip-bomb``: ``Content-Encoding: gzip`` (never asked for) of 64 MiB of zeros.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from functools import cache

from aiohttp import web

HOSTILE_FAULTS = frozenset(
    {"trickle", "endless", "lie-long", "lie-short", "redirect-loop", "gzip-bomb"}
)
BOMB_BYTES = 64 << 20


@cache
def _bomb() -> bytes:
    return gzip.compress(b"\0" * BOMB_BYTES, compresslevel=9)


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
