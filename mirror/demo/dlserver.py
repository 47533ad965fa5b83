"""A fake dl.k8s.io: an aiohttp app serving an :class:`~tests.fakes.release.UpstreamTree`.

This module owns *how* upstream serves: GET/HEAD with strong ETag, Last-Modified,
``Accept-Ranges``, single byte ranges with ``If-Range`` (206/416), ``If-None-Match`` (304), a GCS
style 404 for anything not in the tree (the bucket cannot be listed), an optional redirect hop to
a CDN-like prefix, a request log, and per-path fault injection that produces real network-level
failures (truncated bodies, resets, stalls), not just status codes.

In tests, host ``FakeDl(tree, faults=...).app`` with pytest-aiohttp's ``aiohttp_server``. For
humans: ``python -m mirror.demo.dlserver --port 8080 --version v1.34.2 --stable v1.34.2``.

Note on "reset"/"disconnect": aiohttp's ``ClientSession`` silently retries an idempotent request
once when the connection dies before any response header arrives. A single such fault is
therefore invisible to a plain session (the log shows two GETs); queue two to make it surface.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import email.utils
import re
import socket
import struct
import time
from collections import deque
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from aiohttp import web

from mirror.demo.hostile import HOSTILE_FAULTS, misbehave
from mirror.demo.release import (
    PLATFORM_MATRIX,
    UpstreamTree,
    make_not_sigstore_signer,
    sha256_hex,
)

# -- faults ------------------------------------------------------------------------------------

BODY_FAULTS = frozenset({"truncate", "corrupt", "oversize", "slow"})
CONNECTION_FAULTS = frozenset({"reset", "disconnect"})
_STATUS_RE = re.compile(r"^[45]\d\d$")


@dataclass(frozen=True)
class Fault:
    """One injected misbehaviour, used for exactly one request.

    ``kind``:
      - ``"truncate"``: correct headers, then half the body, then the connection is closed
        (the client sees ``ClientPayloadError``);
      - ``"corrupt"``: one byte flipped, same length and headers;
      - ``"oversize"``: ``extra_bytes`` more than the file, always a 200 (Range ignored);
      - ``"slow"``: headers and the first ``after_bytes`` bytes, then a stall of ``stall_s``
        (ended early when the client goes away), then the rest;
      - ``"reset"``: TCP RST, no response (``ClientOSError``); ``"disconnect"``: FIN, no
        response (``ServerDisconnectedError``);
      - one of ``hostile.HOSTILE_FAULTS`` (trickle, endless body, lying Content-Length,
        redirect loop, gzip bomb): see ``mirror/demo/hostile.py``;
      - an HTTP status ``"400"``-``"599"``: that status with a short body; ``"429"`` carries
        ``Retry-After: retry_after_s`` by default, other statuses only if it is set.
    """

    kind: str
    retry_after_s: int | None = None
    stall_s: float | None = None
    after_bytes: int = 0
    extra_bytes: int | None = None

    def __post_init__(self) -> None:
        known = BODY_FAULTS | CONNECTION_FAULTS | HOSTILE_FAULTS
        if self.kind not in known and not _STATUS_RE.match(self.kind):
            raise ValueError(f"unknown fault {self.kind!r}: one of {sorted(known)} or 4xx/5xx")

    @property
    def status(self) -> int | None:
        return int(self.kind) if _STATUS_RE.match(self.kind) else None


class FaultPlan:
    """Per-path queues of faults; each matching request consumes one, then service is normal.

    Defaults for parameterised faults are set here (tests want small values) and can be
    overridden per fault with a :class:`Fault`.
    """

    def __init__(
        self, *, retry_after_s: int = 1, stall_s: float = 10.0, extra_bytes: int = 64
    ) -> None:
        self.retry_after_s = retry_after_s
        self.stall_s = stall_s
        self.extra_bytes = extra_bytes
        self._queues: dict[str, deque[tuple[Fault, frozenset[str]]]] = {}

    def add(self, path: str, *actions: str | Fault, methods: Collection[str] = ("GET",)) -> None:
        """Queue ``actions`` for tree path ``path``, consumed in order by ``methods`` requests.

        HEAD requests do not consume GET faults unless ``methods`` includes ``"HEAD"``: a client
        probing with HEAD before its GET should still meet the fault on the GET.
        """
        queue = self._queues.setdefault(path.removeprefix("/"), deque())
        wanted = frozenset(m.upper() for m in methods)
        for action in actions:
            queue.append((action if isinstance(action, Fault) else Fault(action), wanted))

    def take(self, path: str, method: str) -> Fault | None:
        """The next fault for this request, removed from the queue; None to serve normally."""
        queue = self._queues.get(path)
        if not queue or method not in queue[0][1]:
            return None
        return queue.popleft()[0]

    def pending(self) -> dict[str, list[str]]:
        """Faults not yet consumed, by path (empty when every fault was hit)."""
        return {p: [f.kind for f, _ in q] for p, q in self._queues.items() if q}


# -- request log -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RequestRecord:
    """One request as the fake saw it."""

    method: str
    path: str
    """URL path as requested (with the redirect prefix if any)."""
    key: str
    """Tree path it maps to (no leading slash, no redirect prefix)."""
    range: str | None
    if_range: str | None
    status: int | None
    """Status sent (or started); 302 for the redirect hop; None if dropped without response."""
    fault: str | None = None
    at_s: float = field(default_factory=time.monotonic)


# -- the app -----------------------------------------------------------------------------------

_NOT_FOUND = (
    b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>NoSuchKey</Code>"
    b"<Message>The specified key does not exist.</Message></Error>"
)
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


@dataclass
class _Planned:
    status: int
    headers: dict[str, str]
    body: bytes


class FakeDl:
    """The fake dl.k8s.io: owns the tree it serves, the fault plan and the request log.

    ``redirect_prefix="/cdn"`` makes every ``/release/...`` request answer 302 to
    ``/cdn/release/...`` on the same server, which serves the tree; faults apply to the request
    that serves the body, not to the redirect hop.
    """

    def __init__(
        self,
        tree: UpstreamTree,
        *,
        faults: FaultPlan | None = None,
        log: list[RequestRecord] | None = None,
        redirect_prefix: str | None = None,
    ) -> None:
        self.tree = tree
        self.faults = faults if faults is not None else FaultPlan()
        self.log: list[RequestRecord] = log if log is not None else []
        if redirect_prefix is not None and (
            not redirect_prefix.startswith("/") or redirect_prefix.endswith("/")
        ):
            raise ValueError("redirect_prefix must look like '/cdn'")
        self.redirect_prefix = redirect_prefix
        self.app = web.Application()
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    # -- log helpers -------------------------------------------------------------------------

    def requests(self, key: str | None = None, method: str | None = "GET") -> list[RequestRecord]:
        """Logged requests that reached the tree (redirect hops excluded), filtered."""
        return [
            r
            for r in self.log
            if r.status != 302
            and (key is None or r.key == key.removeprefix("/"))
            and (method is None or r.method == method)
        ]

    def count(self, key: str, method: str = "GET") -> int:
        return len(self.requests(key, method))

    # -- handling ----------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        method = request.method
        path = request.path
        prefix = self.redirect_prefix
        key = path.removeprefix("/")
        if prefix is not None:
            if path.startswith("/release/"):
                self._record(request, key, 302)
                location = request.url.with_path(prefix + path, encoded=False)
                return web.Response(status=302, headers={"Location": str(location)})
            if path.startswith(prefix + "/"):
                key = path[len(prefix) + 1 :]
        if method not in ("GET", "HEAD"):
            self._record(request, key, 405)
            return web.Response(status=405, headers={"Allow": "GET, HEAD"})

        fault = self.faults.take(key, method)
        data = self.tree.files.get(key)
        if fault is not None and fault.kind in CONNECTION_FAULTS:
            self._record(request, key, None, fault)
            return _drop_connection(request, reset=fault.kind == "reset")
        if fault is not None and fault.status is not None:
            self._record(request, key, fault.status, fault)
            return self._status_response(fault)
        if data is None:
            self._record(request, key, 404, fault)
            return web.Response(status=404, body=_NOT_FOUND, content_type="application/xml")

        planned = self._plan(request, key, data)
        if fault is not None and fault.kind in HOSTILE_FAULTS and method == "GET":
            self._record(request, key, 200, fault)
            interval_s = self.faults.stall_s if fault.stall_s is None else fault.stall_s
            headers = self._validators(key, data)
            return await misbehave(fault.kind, request, headers, data, interval_s)
        if fault is not None and fault.kind == "oversize":
            extra = self.faults.extra_bytes if fault.extra_bytes is None else fault.extra_bytes
            planned = _Planned(200, self._validators(key, data), data + b"\0" * extra)
        self._record(request, key, planned.status, fault)
        if fault is None or fault.kind == "oversize" or method == "HEAD" or not planned.body:
            return web.Response(status=planned.status, headers=planned.headers, body=planned.body)
        if fault.kind == "corrupt":
            body = bytearray(planned.body)
            body[len(body) // 2] ^= 0xFF
            return web.Response(status=planned.status, headers=planned.headers, body=bytes(body))
        if fault.kind == "truncate":
            return await _truncated(request, planned)
        stall_s = self.faults.stall_s if fault.stall_s is None else fault.stall_s
        return await _stalled(request, planned, stall_s, fault.after_bytes)

    def _record(
        self, request: web.Request, key: str, status: int | None, fault: Fault | None = None
    ) -> None:
        self.log.append(
            RequestRecord(
                method=request.method,
                path=request.path,
                key=key,
                range=request.headers.get("Range"),
                if_range=request.headers.get("If-Range"),
                status=status,
                fault=fault.kind if fault is not None else None,
            )
        )

    def _status_response(self, fault: Fault) -> web.Response:
        assert fault.status is not None
        headers: dict[str, str] = {}
        retry_after_s = fault.retry_after_s
        if retry_after_s is None and fault.status == 429:
            retry_after_s = self.faults.retry_after_s
        if retry_after_s is not None:
            headers["Retry-After"] = str(retry_after_s)
        return web.Response(status=fault.status, text=f"injected {fault.status}\n", headers=headers)

    def _validators(self, key: str, data: bytes) -> dict[str, str]:
        return {
            # Strong ETag per content: a replaced file gets a new one, so If-Range fails.
            "ETag": f'"{sha256_hex(data)[:32]}"',
            "Last-Modified": email.utils.format_datetime(self.tree.last_modified(key), usegmt=True),
            "Accept-Ranges": "bytes",
            "Content-Type": _content_type(key),
        }

    def _plan(self, request: web.Request, key: str, data: bytes) -> _Planned:
        headers = self._validators(key, data)
        if_none_match = request.headers.get("If-None-Match")
        if if_none_match is not None and headers["ETag"] in _etags(if_none_match):
            return _Planned(304, headers, b"")
        range_header = request.headers.get("Range")
        if range_header is None or not _if_range_holds(request.headers.get("If-Range"), headers):
            return _Planned(200, headers, data)
        span = _parse_range(range_header, len(data))
        if span is None:  # unparsable or multi-range: ignoring Range is allowed (RFC 9110 14.2)
            return _Planned(200, headers, data)
        if isinstance(span, str):  # "unsatisfiable"
            headers["Content-Range"] = f"bytes */{len(data)}"
            return _Planned(416, headers, b"")
        first, last = span
        headers["Content-Range"] = f"bytes {first}-{last}/{len(data)}"
        return _Planned(206, headers, data[first : last + 1])


def make_app(
    tree: UpstreamTree,
    faults: FaultPlan | None = None,
    log: list[RequestRecord] | None = None,
    *,
    redirect_prefix: str | None = None,
) -> web.Application:
    """The aiohttp app of a :class:`FakeDl` (keep ``faults``/``log`` to steer and inspect it)."""
    return FakeDl(tree, faults=faults, log=log, redirect_prefix=redirect_prefix).app


# -- HTTP details ------------------------------------------------------------------------------


def _content_type(key: str) -> str:
    if key.endswith(".json"):
        return "application/json"
    if key.endswith((".txt", ".sha256", ".sha512", "SUMS", ".spdx", ".docker_tag")):
        return "text/plain"
    return "application/octet-stream"


def _etags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/") for t in header.split(",")]


def _if_range_holds(if_range: str | None, headers: dict[str, str]) -> bool:
    """Whether a Range may be honoured: no If-Range, or it names the current ETag or date."""
    if if_range is None:
        return True
    if_range = if_range.strip()
    if if_range.startswith('"'):
        return if_range == headers["ETag"]  # strong comparison only
    return if_range == headers["Last-Modified"]


def _parse_range(header: str, size: int) -> tuple[int, int] | str | None:
    """``(first, last)`` inclusive, ``"unsatisfiable"``, or None to ignore the header."""
    m = _RANGE_RE.match(header.strip())
    if m is None:
        return None
    first_s, last_s = m.groups()
    if not first_s:  # suffix range: the last N bytes
        if not last_s:
            return None
        n = int(last_s)
        return (max(size - n, 0), size - 1) if n > 0 and size > 0 else "unsatisfiable"
    first = int(first_s)
    if last_s and int(last_s) < first:  # syntactically invalid: ignore the header
        return None
    if first >= size:
        return "unsatisfiable"
    last = int(last_s) if last_s else size - 1
    return first, min(last, size - 1)


def _drop_connection(request: web.Request, *, reset: bool) -> web.Response:
    transport = request.transport
    if transport is not None:
        if reset:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                # Linger 0 turns close into an RST, as a crashed middlebox would send.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        else:
            transport.close()
    # aiohttp fails to send this on the closed transport and ignores that ("premature client
    # disconnection"); returning normally keeps its error log quiet.
    return web.Response(status=500)


async def _started(request: web.Request, planned: _Planned) -> web.StreamResponse:
    response = web.StreamResponse(status=planned.status, headers=planned.headers)
    response.content_length = len(planned.body)
    await response.prepare(request)
    return response


async def _truncated(request: web.Request, planned: _Planned) -> web.StreamResponse:
    response = await _started(request, planned)
    await response.write(planned.body[: len(planned.body) // 2])
    # close() flushes what was written, then FINs: a short body under a full Content-Length.
    if request.transport is not None:
        request.transport.close()
    return response


async def _stalled(
    request: web.Request, planned: _Planned, stall_s: float, after_bytes: int
) -> web.StreamResponse:
    response = await _started(request, planned)
    if after_bytes:
        await response.write(planned.body[:after_bytes])
    deadline = time.monotonic() + stall_s
    # Poll instead of one long sleep so a client that timed out and left frees the handler
    # at once (aiohttp does not cancel handlers on disconnect) and test teardown is quick.
    while time.monotonic() < deadline:
        transport = request.transport
        if transport is None or transport.is_closing():
            return response
        await asyncio.sleep(min(0.02, max(deadline - time.monotonic(), 0)))
    with contextlib.suppress(ConnectionError):
        await response.write(planned.body[after_bytes:])
    return response


# -- for humans --------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mirror.demo.dlserver",
        description=(
            "Serve a generated dl.k8s.io look-alike on 127.0.0.1. Signed releases are signed "
            "with a throwaway self-signed key (make_not_sigstore_signer): the .sig/.cert files "
            "have the upstream formats but real Sigstore verification REJECTS them, so use "
            "this for download-path trials only (or skip signature checks)."
        ),
    )
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--version", dest="versions", action="append", required=True)
    parser.add_argument("--stable", help="version for stable.txt/stable-1.txt (default: newest)")
    parser.add_argument(
        "--platform",
        dest="platforms",
        action="append",
        choices=sorted(PLATFORM_MATRIX),
        help="repeatable; default: the full matrix",
    )
    parser.add_argument("--size-bytes", type=int, help="size of every binary (default: 2-6 kB)")
    parser.add_argument("--redirect-prefix", help="answer /release/... with 302 to PREFIX/...")
    args = parser.parse_args(argv)

    tree = UpstreamTree(signer=make_not_sigstore_signer())
    for version in args.versions:
        tree.add_release(version, platforms=args.platforms, size_bytes=args.size_bytes)
    tree.publish_markers(stable=args.stable)
    fake = FakeDl(tree, redirect_prefix=args.redirect_prefix)
    print(f"{len(tree.files)} files; try http://127.0.0.1:{args.port}/release/stable.txt")
    web.run_app(fake.app, host="127.0.0.1", port=args.port)


if __name__ == "__main__":
    main()
