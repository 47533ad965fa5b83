"""Serve a mirror tree read-only over HTTP (``k8s-mirror serve``).

This module owns the HTTP face of a mirror tree: an aiohttp application (:func:`make_app`) and a
blocking runner with graceful shutdown (:func:`serve`). Clients swap the dl.k8s.io host for the
mirror's and nothing else, so ``<root>/release/<v>/...`` is served at ``/release/<v>/...``.

What it serves
    Regular files under the root, with ``GET`` and ``HEAD`` only (anything else: 405 with
    ``Allow: GET, HEAD``). Single byte ranges (206, ``Content-Range``; 416 with
    ``Content-Range: bytes */<size>`` when unsatisfiable), strong ``ETag``
    (``"<mtime_ns hex>-<size hex>"``) and ``Last-Modified``, ``If-Match`` /
    ``If-Unmodified-Since`` (412), ``If-None-Match`` / ``If-Modified-Since`` (304) and
    ``If-Range`` by entity tag or date, evaluated in RFC 9110 section 13.2.2 order. A request
    with several ranges, or an invalid ``Range``, gets the whole file (200), which RFC 9110
    allows; nobody fetches release files with multipart ranges. Every request opens the file
    itself and streams from that descriptor (``sendfile``), so concurrent clients share no state
    and a file replaced by an atomic rename mid-download keeps serving the old inode.

What it never serves (by construction, see :func:`_request_components` and
:func:`_open_in_root`)
    Anything outside the root; the state directory :data:`mirror.layout.STATE_DIR_NAME` and so
    anything staged, partial or locked; any dotfile or dot-directory at any level; symlinks that
    resolve outside the root, or into a hidden place inside it (symlinks that stay inside the
    root and visible are followed); sockets, FIFOs and devices. Paths are taken from the *raw*
    request target, split on ``/`` and then percent-decoded exactly once per segment, so
    ``%2e%2e``, ``%2f``, backslashes, NUL and double encoding cannot produce a traversal, and an
    empty segment (``//etc/passwd``), ``.`` or ``..`` is rejected rather than normalised.

Status codes for refusals
    404 for everything hidden or invalid (bad path syntax, dot components, the state
    directory, symlinks into hidden places, special files, directories while index pages are
    off), so a client cannot tell "exists but hidden" from "absent". 403 only for a symlink
    whose target lies outside the root (an operator's mistake worth surfacing; it reveals
    nothing an attacker controls) and for files the server process may not read.

Index pages
    Off by default. With ``index_pages=True`` a directory gets a small HTML page listing the
    entries that would themselves be served (never dotfiles, the state directory, escaping
    symlinks or special files).

Caching
    ``release/*.txt`` markers move (``no-cache``); files under ``release/<version>/`` are
    immutable once promoted (``public, max-age=86400``); everything else ``no-cache``.

Logging
    One access line per request on the ``mirror.serve`` logger (client, method, path, status,
    body bytes sent, duration), as ``key=value`` pairs for the journal; the same fields are
    attached to the record as ``http_*`` attributes for structured handlers.
"""

from __future__ import annotations

import asyncio
import errno
import html
import json
import logging
import os
import re
import signal
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC
from email.utils import formatdate, parsedate_to_datetime
from http import HTTPStatus
from pathlib import Path
from typing import IO, Final, Literal, TypeVar
from urllib.parse import quote, unquote_to_bytes

from aiohttp import ETag, web

from mirror.errors import PortInUseError
from mirror.layout import RELEASE_DIR_NAME, STATE_DIR_NAME

__all__ = ["make_app", "serve"]

log = logging.getLogger("mirror.serve")

_T = TypeVar("_T")

ALLOWED_METHODS: Final = ("GET", "HEAD")

DEFAULT_SHUTDOWN_TIMEOUT: Final = 5.0
"""Seconds in-flight requests get to finish after SIGTERM/SIGINT before being cut off."""

_CHUNK: Final = 256 * 1024
_MAX_RANGE_SPECS: Final = 64
# At most 19 digits: anything longer exceeds every file size, and int() of a few thousand
# digits raises (Python's int/str conversion limit), so bound it in the pattern.
_RANGE_SPEC_RE: Final = re.compile(r"(\d{0,19})-(\d{0,19})")

_TEXT_SUFFIXES: Final = (".txt", ".sha256", ".sha512", ".sig", ".cert", ".docker_tag", ".spdx")
_TEXT_NAMES: Final = frozenset({"SHA256SUMS", "SHA512SUMS"})

_CACHE_MOVING: Final = "no-cache"
_CACHE_IMMUTABLE: Final = "public, max-age=86400"


class _Reject(Exception):
    """A request that gets a short error page instead of content."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass(frozen=True)
class _FileTarget:
    file: IO[bytes]
    st: os.stat_result


@dataclass(frozen=True)
class _DirTarget:
    path: Path


_Target = _FileTarget | _DirTarget


class _FileStream(web.StreamResponse):
    """A streamed file body; remembers how many body bytes went out, for the access log."""

    body_bytes_sent: int | None = 0
    """None when the client went away mid-body (sendfile does not say how far it got)."""


# ---------------------------------------------------------------------------------------------
# Path resolution


def _valid_component(name: str) -> bool:
    """Whether one decoded path segment may name something we serve."""
    if not name or name.startswith(".") or name == STATE_DIR_NAME:
        # Covers "", ".", "..", dotfiles, dot-directories and the state dir.
        return False
    if "/" in name or "\\" in name:
        # An encoded slash or a backslash would smuggle a separator into one segment.
        return False
    # NUL cannot reach the filesystem; other control characters have no business in a URL path.
    return all(" " <= ch != "\x7f" for ch in name)


def _request_components(request: web.BaseRequest) -> tuple[tuple[str, ...], bool]:
    """Validated path components of the request, and whether the path ended in ``/``.

    Works on the raw request target rather than ``request.path``: aiohttp's decoded path
    turns ``%2F`` into a separator and ``%2e%2e`` into ``..``, which blurs segment boundaries.
    Splitting first and decoding each segment once keeps them exact.
    """
    raw = request.raw_path
    if not raw.startswith("/"):
        # absolute-form target (RFC 9112 section 3.2.2): use the path yarl parsed out of it.
        raw = request.rel_url.raw_path
        if not raw.startswith("/"):
            raise _Reject(404, "request target has no absolute path")
    raw = raw.split("?", 1)[0].split("#", 1)[0]
    segments = raw[1:].split("/")
    trailing_slash = len(segments) > 1 and segments[-1] == ""
    if trailing_slash or segments == [""]:
        segments.pop()
    components: list[str] = []
    for segment in segments:
        try:
            name = unquote_to_bytes(segment).decode("utf-8")
        except UnicodeDecodeError:
            raise _Reject(404, "path is not UTF-8") from None
        if not _valid_component(name):
            raise _Reject(404, "hidden or invalid path component")
        components.append(name)
    return tuple(components), trailing_slash


def _is_hidden_rel(rel: Path) -> bool:
    return any(not _valid_component(part) for part in rel.parts)


def _resolve_in_root(root: Path, candidate: Path) -> Path:
    """The real path of ``candidate``, relative to ``root``; refuses escapes and hidden targets.

    ``root`` must already be resolved. Symlinks are followed (they may point anywhere inside
    the root), then the result must still lie inside the root and be visible.
    """
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        # Missing, dangling symlink, or a symlink loop (RuntimeError on Python 3.11/3.12).
        raise _Reject(404, "no such file") from None
    try:
        rel = real.relative_to(root)
    except ValueError:
        raise _Reject(403, f"symlink resolves outside the root: {real}") from None
    if _is_hidden_rel(rel):
        raise _Reject(404, "symlink resolves into a hidden place")
    return rel


def _open_in_root(root: Path, components: tuple[str, ...]) -> _Target:
    """Open what ``components`` names under ``root``; runs in a worker thread.

    After resolving, every component of the *resolved* path is opened relative to its parent
    with ``O_NOFOLLOW``. The resolved path contains no symlinks, so this is free for honest
    trees, and a component swapped for a symlink between the check and the open fails (ELOOP)
    instead of escaping.
    """
    rel = _resolve_in_root(root, root.joinpath(*components))
    parts = rel.parts
    follow_no: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = -1
    dir_fd = os.open(root, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, follow_no | os.O_DIRECTORY, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        if parts:
            # O_NONBLOCK: opening a FIFO for reading would otherwise block this thread until a
            # writer appears. It changes nothing for regular files, and is cleared below.
            fd = os.open(parts[-1], follow_no | os.O_NONBLOCK, dir_fd=dir_fd)
        else:
            fd, dir_fd = dir_fd, -1
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return _DirTarget(root.joinpath(*parts))
        if not stat.S_ISREG(st.st_mode):
            raise _Reject(404, "not a regular file")
        os.set_blocking(fd, True)
        file = os.fdopen(fd, "rb")
        fd = -1  # owned by `file` now
        return _FileTarget(file, st)
    except PermissionError:
        raise _Reject(403, "permission denied") from None
    except OSError as exc:
        # ELOOP (a component became a symlink), ENOENT (removed meanwhile), ENOTDIR, ...
        raise _Reject(404, f"cannot open: {errno.errorcode.get(exc.errno or 0, exc)}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        if dir_fd >= 0:
            os.close(dir_fd)


# ---------------------------------------------------------------------------------------------
# Conditional requests and ranges


def _etag(st: os.stat_result) -> str:
    return f'"{st.st_mtime_ns:x}-{st.st_size:x}"'


def _mtime_seconds(st: os.stat_result) -> int:
    # HTTP dates have one-second resolution; compare everything at that resolution.
    return st.st_mtime_ns // 1_000_000_000


def _etag_listed(etag: str, tags: tuple[ETag, ...] | None, *, weak: bool) -> bool:
    """Whether ``etag`` (quoted) is in an ``If-Match``/``If-None-Match`` list; ``*`` matches."""
    if tags is None:
        return False
    if len(tags) == 1 and tags[0].value == "*":
        return True
    # Strong comparison (If-Match) never matches a weak tag; weak comparison ignores W/.
    return any(f'"{tag.value}"' == etag for tag in tags if weak or not tag.is_weak)


def _http_date(value: str | None) -> int | None:
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


def _preconditions(request: web.BaseRequest, st: os.stat_result) -> int | None:
    """412/304 if a precondition decides the answer (RFC 9110 section 13.2.2), else None."""
    etag = _etag(st)
    mtime = _mtime_seconds(st)
    # aiohttp parses the entity-tag lists (request.if_match, ...): None when the header is
    # absent, () when it is garbage, which then matches nothing.
    if request.if_match is not None:
        if not _etag_listed(etag, request.if_match, weak=False):
            return 412
    else:
        unmodified_since = _http_date(request.headers.get("If-Unmodified-Since"))
        if unmodified_since is not None and mtime > unmodified_since:
            return 412
    if request.if_none_match is not None:
        if _etag_listed(etag, request.if_none_match, weak=True):
            return 304
    else:
        modified_since = _http_date(request.headers.get("If-Modified-Since"))
        # A date in the future is invalid (RFC 9110 section 13.1.3) and ignored.
        if modified_since is not None and mtime <= modified_since <= time.time():
            return 304
    return None


def _if_range_holds(request: web.BaseRequest, st: os.stat_result) -> bool:
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
        return value == _etag(st)
    if value.startswith("W/"):
        return False
    date = _http_date(value)
    return date is not None and date == _mtime_seconds(st)


def _parse_range(header: str, size: int) -> tuple[int, int] | Literal["full", "unsatisfiable"]:
    """One inclusive ``(first, last)`` byte range, ``"full"`` to ignore, or ``"unsatisfiable"``.

    Invalid syntax, other units and several satisfiable ranges are ignored (whole file, 200),
    as RFC 9110 section 14.2 allows. An empty file has no byte to point at: whole (empty) file.
    """
    unit, sep, ranges = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or size == 0:
        return "full"
    specs = [spec.strip() for spec in ranges.split(",")]
    specs = [spec for spec in specs if spec]  # empty list elements are allowed (RFC 9110 5.6.1)
    if not specs or len(specs) > _MAX_RANGE_SPECS:
        return "full"
    satisfiable: list[tuple[int, int]] = []
    for spec in specs:
        match = _RANGE_SPEC_RE.fullmatch(spec)
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


# ---------------------------------------------------------------------------------------------
# Response metadata


def _content_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json"
    if name in _TEXT_NAMES or name.endswith(_TEXT_SUFFIXES):
        return "text/plain; charset=utf-8"
    if name.endswith(".html"):
        return "text/html; charset=utf-8"
    return "application/octet-stream"


def _cache_control(components: tuple[str, ...]) -> str:
    if len(components) >= 3 and components[0] == RELEASE_DIR_NAME:
        # release/<version>/...: never rewritten once promoted.
        return _CACHE_IMMUTABLE
    # Markers (release/stable.txt, ...) move; anything else is not promised to stay.
    return _CACHE_MOVING


def _file_headers(components: tuple[str, ...], st: os.stat_result) -> dict[str, str]:
    headers = {
        "ETag": _etag(st),
        "Last-Modified": formatdate(_mtime_seconds(st), usegmt=True),
        "Cache-Control": _cache_control(components),
        "X-Content-Type-Options": "nosniff",
    }
    name = components[-1] if components else ""
    if name.endswith(".html"):
        # Upstream's announcement.html is unsigned: render it, but never run its scripts.
        headers["Content-Security-Policy"] = "sandbox"
    return headers


def _plain(status: int, headers: dict[str, str] | None = None) -> web.Response:
    text = f"{status}: {HTTPStatus(status).phrase}\n"
    return web.Response(status=status, text=text, headers=headers)


# ---------------------------------------------------------------------------------------------
# Index pages


def _index_page(root: Path, directory: Path, components: tuple[str, ...]) -> bytes:
    """HTML listing of what in ``directory`` would itself be served; runs in a worker thread."""
    entries: list[tuple[str, bool, int]] = []
    with os.scandir(directory) as it:
        for entry in it:
            if not _valid_component(entry.name):
                continue
            try:
                if entry.is_symlink():
                    rel = _resolve_in_root(root, Path(entry.path))
                    st = (root / rel).stat()
                else:
                    st = entry.stat(follow_symlinks=False)
            except (_Reject, OSError):
                continue
            if stat.S_ISDIR(st.st_mode):
                entries.append((entry.name, True, 0))
            elif stat.S_ISREG(st.st_mode):
                entries.append((entry.name, False, st.st_size))
    entries.sort()
    base = "/" + "".join(quote(c, safe="") + "/" for c in components)
    title = html.escape("Index of /" + "".join(c + "/" for c in components))
    lines = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8">',
        f"<title>{title}</title></head>",
        f"<body><h1>{title}</h1><pre>",
    ]
    if components:
        parent = "/" + "".join(quote(c, safe="") + "/" for c in components[:-1])
        lines.append(f'<a href="{html.escape(parent)}">../</a>')
    for name, is_dir, size in entries:
        href = html.escape(base + quote(name, safe="") + ("/" if is_dir else ""))
        label = html.escape(name + ("/" if is_dir else ""))
        lines.append(f'<a href="{href}">{label}</a>' + ("" if is_dir else f"  {size}"))
    lines.append("</pre></body></html>\n")
    return "\n".join(lines).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Handler


async def _in_thread(func: Callable[[], _T], on_orphan: Callable[[_T], None] | None = None) -> _T:
    """Run ``func`` in the default executor; if we are cancelled meanwhile, clean its result."""
    future = asyncio.get_running_loop().run_in_executor(None, func)
    try:
        # shield: a cancelled request must not orphan an open file the thread still returns.
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        if on_orphan is not None:
            cleanup = on_orphan

            def _done(f: asyncio.Future[_T]) -> None:
                if not f.cancelled() and f.exception() is None:
                    cleanup(f.result())

            future.add_done_callback(_done)
        raise


def _close_target(target: _Target) -> None:
    if isinstance(target, _FileTarget):
        target.file.close()


class _Handler:
    def __init__(self, root: Path, *, index_pages: bool, prefix: tuple[str, ...] = ()) -> None:
        self.root = root
        self.index_pages = index_pages
        self.prefix = prefix

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ALLOWED_METHODS:
            return _plain(405, {"Allow": ", ".join(ALLOWED_METHODS)})
        try:
            components, trailing_slash = _request_components(request)
            if components[: len(self.prefix)] != self.prefix:
                raise _Reject(404, "outside the served prefix")
            components = components[len(self.prefix) :]
            target = await _in_thread(
                lambda: _open_in_root(self.root, components), on_orphan=_close_target
            )
            if trailing_slash and isinstance(target, _FileTarget):
                target.file.close()  # "file/" names no directory, as open(2) would say
                raise _Reject(404, "trailing slash on a file")
        except _Reject as rej:
            log.log(
                logging.WARNING if rej.status == 403 else logging.DEBUG,
                "refused %s: %s",
                _printable(request.raw_path),
                rej,
            )
            return _plain(rej.status)
        if isinstance(target, _DirTarget):
            if not self.index_pages:
                return _plain(404)
            directory = target.path
            shown = self.prefix + components
            body = await _in_thread(lambda: _index_page(self.root, directory, shown))
            return web.Response(
                body=body,
                content_type="text/html",
                charset="utf-8",
                headers={
                    "Cache-Control": _CACHE_MOVING,
                    "X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": "default-src 'none'",
                },
            )
        try:
            return await self._send_file(request, components, target)
        finally:
            target.file.close()

    async def _send_file(
        self, request: web.Request, components: tuple[str, ...], target: _FileTarget
    ) -> web.StreamResponse:
        st = target.st
        headers = _file_headers(components, st)
        decided = _preconditions(request, st)
        if decided == 304:
            return web.Response(status=304, headers=headers)
        if decided is not None:
            return _plain(decided)

        size = st.st_size
        first, count, status = 0, size, 200
        range_header = request.headers.get("Range")
        if range_header is not None and _if_range_holds(request, st):
            parsed = _parse_range(range_header, size)
            if parsed == "unsatisfiable":
                return _plain(416, {"Content-Range": f"bytes */{size}"})
            if parsed != "full":
                first, last = parsed
                count, status = last - first + 1, 206
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"

        resp = _FileStream(status=status, headers=headers)
        resp.content_type = _content_type(components[-1])
        resp.headers["Accept-Ranges"] = "bytes"
        resp.content_length = count
        await resp.prepare(request)  # HEAD: aiohttp sends the headers only, length included
        if request.method == "GET" and count:
            try:
                sent = await _send_body(request, resp, target.file, first, count)
            except ConnectionError:
                # The client went away mid-body (common: a cancelled download). Nothing to
                # answer any more; returning keeps aiohttp from logging it as a server error.
                resp.body_bytes_sent = None
                resp.force_close()
                return resp
            resp.body_bytes_sent = sent
            if sent < count:
                # The file shrank under us (someone truncated it in place). Close the
                # connection so the client sees a short body as an error, not as the end.
                log.warning("short read on %s: %d of %d bytes", request.path, sent, count)
                resp.force_close()
                if request.transport is not None:
                    request.transport.close()
                return resp
        await resp.write_eof()
        return resp


async def _send_body(
    request: web.Request, resp: web.StreamResponse, file: IO[bytes], first: int, count: int
) -> int:
    """Stream ``count`` bytes from ``first``; returns the bytes sent (less only on a short file).

    ``loop.sendfile`` goes straight to the socket (zero copy; aiohttp's FileResponse does the
    same); the headers are already out because ``StreamResponse.prepare`` flushes them.
    """
    loop = asyncio.get_running_loop()
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("client went away")
    try:
        return await loop.sendfile(transport, file, first, count)
    except NotImplementedError:
        pass  # an event loop without sendfile support (e.g. uvloop + some transports)
    fd = file.fileno()
    sent = 0
    while sent < count:
        chunk = await loop.run_in_executor(
            None, os.pread, fd, min(_CHUNK, count - sent), first + sent
        )
        if not chunk:
            break
        await resp.write(chunk)
        sent += len(chunk)
    return sent


# ---------------------------------------------------------------------------------------------
# Access log


def _printable(text: str) -> str:
    # JSON string escaping: quotes, backslashes and control characters can't forge log lines.
    return json.dumps(text)[1:-1]


def _body_bytes(request: web.BaseRequest, resp: web.StreamResponse) -> int | None:
    if isinstance(resp, _FileStream):
        return resp.body_bytes_sent
    if request.method == "HEAD" or not isinstance(resp, web.Response):
        return 0
    body = resp.body
    return len(body) if isinstance(body, bytes) else 0


@web.middleware
async def _access_log(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    start = time.monotonic()
    status: int | str = "-"
    sent: int | None = 0
    try:
        resp = await handler(request)
        sent = _body_bytes(request, resp)
        # 499, as nginx logs it: the client closed the connection before the body was out.
        status = resp.status if sent is not None else 499
        return resp
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = "cancelled"
        raise
    except ConnectionError:
        status = 499
        raise
    except Exception:
        status = 500
        raise
    finally:
        duration = time.monotonic() - start
        client = request.remote or "-"
        path = _printable(request.raw_path)
        log.info(
            'client=%s method=%s path="%s" status=%s bytes=%s duration=%.3fs',
            client,
            request.method,
            path,
            status,
            "-" if sent is None else sent,
            duration,
            extra={
                "http_client": client,
                "http_method": request.method,
                "http_path": request.raw_path,
                "http_status": status,
                "http_bytes": sent,
                "http_duration": duration,
            },
        )


# ---------------------------------------------------------------------------------------------
# Public API


def _validated_root(root: Path) -> Path:
    if not root.exists():
        raise ValueError(f"serve root does not exist: {root}")
    if not root.is_dir():
        raise ValueError(f"serve root is not a directory: {root}")
    # Resolved once: every containment check compares against this real path.
    return root.resolve(strict=True)


def parse_prefix(prefix: str) -> tuple[str, ...]:
    """``/dl.k8s.io`` -> its path components; raises ``ValueError`` for anything unservable."""
    if not prefix.startswith("/"):
        raise ValueError(f"{prefix!r} must start with '/', like /dl.k8s.io")
    components = tuple(c for c in prefix.strip("/").split("/") if c)
    for component in components:
        if not _valid_component(component) or component != quote(component, safe="~@!$&'()*+,;=:"):
            raise ValueError(f"{prefix!r}: {component!r} is not a plain path segment")
    return components


def make_app(root: Path, *, index_pages: bool = False, prefix: str = "") -> web.Application:
    """The read-only HTTP application for the mirror tree at ``root``.

    With ``prefix`` (``/dl.k8s.io``, kubespray's ``files_repo`` layout) the tree is served
    below that path only: ``/dl.k8s.io/release/...``; anything else is 404.

    Raises ``ValueError`` (one line, naming the path) if ``root`` is missing or not a directory,
    or if ``prefix`` is not a plain absolute URL path.
    """
    components = parse_prefix(prefix) if prefix else ()
    real_root = _validated_root(root)
    app = web.Application(middlewares=[_access_log])
    handler = _Handler(real_root, index_pages=index_pages, prefix=components)
    # One catch-all route: every path goes through the same validation in _Handler.
    app.router.add_route("*", "/{tail:.*}", handler.handle)
    return app


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def _run(
    app: web.Application, root: Path, host: str, port: int, shutdown_timeout: float
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Installed first, so a signal that arrives while binding still means "shut down cleanly".
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    # access_log=None: the middleware logs every request itself (with body bytes and time).
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    try:
        await runner.setup()
        try:
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(host, port) from None
            raise
        for address in runner.addresses:
            log.info("serving %s read-only at %s", root, _url(address[0], address[1]))
        await stop.wait()
        log.info("shutting down: finishing in-flight requests (up to %gs)", shutdown_timeout)
    finally:
        # Stops listening, closes idle keep-alive connections, waits up to shutdown_timeout for
        # running handlers, then cancels what is left. A second signal meanwhile is ignored.
        await runner.cleanup()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
    log.info("stopped")


def serve(
    root: Path,
    *,
    host: str,
    port: int,
    index_pages: bool = False,
    prefix: str = "",
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT,
) -> None:
    """Serve ``root`` read-only on ``host:port`` until SIGTERM or SIGINT, then return.

    Blocking. Logs the listening URL on ``mirror.serve`` (``port=0`` picks a free port and the
    log names it). On SIGTERM/SIGINT it stops accepting, gives in-flight requests up to
    ``shutdown_timeout`` seconds, and returns normally (the CLI then exits 0).

    Raises ``ValueError`` if ``root`` is missing or not a directory or ``prefix`` is invalid,
    ``PortInUseError`` if something already listens on the address, ``OSError`` if it cannot
    be bound otherwise.
    """
    app = make_app(root, index_pages=index_pages, prefix=prefix)
    asyncio.run(_run(app, root, host, port, shutdown_timeout))
