"""HTTP semantics of serving a file: validators (ETag, Last-Modified), conditional requests
and ``If-Range`` in RFC 9110 order, single byte ranges, and the headers each file gets.
"""

from __future__ import annotations

import os
import re
import time
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from typing import Final, Literal, TypeVar

from aiohttp import ETag, web

from mirror.layout import RELEASE_DIR_NAME

_T = TypeVar("_T")


ALLOWED_METHODS: Final = ("GET", "HEAD")


MAX_RANGE_SPECS: Final = 64


RANGE_SPEC_RE: Final = re.compile(r"(\d{0,19})-(\d{0,19})")


TEXT_SUFFIXES: Final = (".txt", ".sha256", ".sha512", ".sig", ".cert", ".docker_tag", ".spdx")


TEXT_NAMES: Final = frozenset({"SHA256SUMS", "SHA512SUMS"})


CACHE_MOVING: Final = "no-cache"


CACHE_IMMUTABLE: Final = "public, max-age=86400"


def entity_tag(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def mtime_seconds(st: os.stat_result) -> int:
    # HTTP dates have one-second resolution; compare everything at that resolution.
    return st.st_mtime_ns // 1_000_000_000


def etag_listed(etag: str, tags: tuple[ETag, ...] | None, *, weak: bool) -> bool:
    """Whether ``etag`` (quoted) is in an ``If-Match``/``If-None-Match`` list; ``*`` matches."""
    if tags is None:
        return False
    if len(tags) == 1 and tags[0].value == "*":
        return True
    # Strong comparison (If-Match) never matches a weak tag; weak comparison ignores W/.
    return any(f'"{tag.value}"' == etag for tag in tags if weak or not tag.is_weak)


def http_date(value: str | None) -> int | None:
    """An HTTP date as POSIX seconds, or None if absent or invalid (then it is ignored)."""
    if value is None:
        return None
    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)  # "-0000" means UTC (RFC 5322)
    return int(parsed.timestamp())


def preconditions(request: web.BaseRequest, st: os.stat_result) -> int | None:
    """412/304 if a precondition decides the answer (RFC 9110 section 13.2.2), else None."""
    etag = entity_tag(st)
    mtime = mtime_seconds(st)
    # aiohttp parses the entity-tag lists (request.if_match, ...): None when the header is
    # absent, () when it is garbage, which then matches nothing.
    if request.if_match is not None:
        if not etag_listed(etag, request.if_match, weak=False):
            return 412
    else:
        unmodified_since = http_date(request.headers.get("If-Unmodified-Since"))
        if unmodified_since is not None and mtime > unmodified_since:
            return 412
    if request.if_none_match is not None:
        if etag_listed(etag, request.if_none_match, weak=True):
            return 304
    else:
        modified_since = http_date(request.headers.get("If-Modified-Since"))
        # A date in the future is invalid (RFC 9110 section 13.1.3) and ignored.
        if modified_since is not None and mtime <= modified_since <= time.time():
            return 304
    return None


def if_range_holds(request: web.BaseRequest, st: os.stat_result) -> bool:
    """Whether a ``Range`` may be honoured: no ``If-Range``, or it still matches the file.

    aiohttp's FileResponse only understands the date form and silently honours the range for
    an entity tag, which hands a resuming client bytes of a different file. Here an entity tag
    must match strongly and a date exactly (RFC 9110 section 13.1.5); otherwise the client gets
    the whole current file.
    """
    value = request.headers.get("If-Range")
    if value is None:
        return True
    value = value.strip()
    if value.startswith('"'):
        return value == entity_tag(st)
    if value.startswith("W/"):
        return False
    date = http_date(value)
    return date is not None and date == mtime_seconds(st)


def parse_range(header: str, size: int) -> tuple[int, int] | Literal["full", "unsatisfiable"]:
    """One inclusive ``(first, last)`` byte range, ``"full"`` to ignore, or ``"unsatisfiable"``.

    Invalid syntax, other units and several satisfiable ranges are ignored (whole file, 200),
    as RFC 9110 section 14.2 allows. An empty file has no byte to point at: whole (empty) file.
    """
    unit, sep, ranges = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or size == 0:
        return "full"
    specs = [spec.strip() for spec in ranges.split(",")]
    specs = [spec for spec in specs if spec]  # empty list elements are allowed (RFC 9110 5.6.1)
    if not specs or len(specs) > MAX_RANGE_SPECS:
        return "full"
    satisfiable: list[tuple[int, int]] = []
    for spec in specs:
        match = RANGE_SPEC_RE.fullmatch(spec)
        if match is None or not (match[1] or match[2]):
            return "full"
        if match[1]:
            first = int(match[1])
            if match[2] and int(match[2]) < first:
                return "full"  # an invalid spec makes the whole header invalid
            last = min(int(match[2]), size - 1) if match[2] else size - 1
            if first < size:
                satisfiable.append((first, last))
        else:
            suffix = int(match[2])
            if suffix > 0:
                satisfiable.append((max(size - suffix, 0), size - 1))
    if not satisfiable:
        return "unsatisfiable"
    if len(satisfiable) > 1:
        return "full"
    return satisfiable[0]


def content_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json"
    if name in TEXT_NAMES or name.endswith(TEXT_SUFFIXES):
        return "text/plain; charset=utf-8"
    if name.endswith(".html"):
        return "text/html; charset=utf-8"
    return "application/octet-stream"


def cache_control(components: tuple[str, ...]) -> str:
    if len(components) >= 3 and components[0] == RELEASE_DIR_NAME:
        # release/<version>/...: never rewritten once promoted.
        return CACHE_IMMUTABLE
    # Markers (release/stable.txt, ...) move; anything else is not promised to stay.
    return CACHE_MOVING


def file_headers(components: tuple[str, ...], st: os.stat_result) -> dict[str, str]:
    headers = {
        "ETag": entity_tag(st),
        "Last-Modified": formatdate(mtime_seconds(st), usegmt=True),
        "Cache-Control": cache_control(components),
        "X-Content-Type-Options": "nosniff",
    }
    name = components[-1] if components else ""
    if name.endswith(".html"):
        # Upstream's announcement.html is unsigned: render it, but never run its scripts.
        headers["Content-Security-Policy"] = "sandbox"
    return headers


def plain(status: int, headers: dict[str, str] | None = None) -> web.Response:
    text = f"{status}: {HTTPStatus(status).phrase}\n"
    return web.Response(status=status, text=text, headers=headers)
