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

What it never serves (by construction, see :func:`request_components` and
:func:`open_in_root`)
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
import signal
import stat
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO, Final, TypeVar
from urllib.parse import quote

from aiohttp import web

from mirror.errors import PortInUseError
from mirror.serve.guard import GUARD, ConnectionGuard, OneLineBadRequests, guarded
from mirror.serve.headers import (
    ALLOWED_METHODS,
    CACHE_MOVING,
    content_type,
    file_headers,
    if_range_holds,
    parse_range,
    plain,
    preconditions,
)
from mirror.serve.paths import (
    DirTarget,
    FileTarget,
    Reject,
    close_target,
    open_in_root,
    request_components,
    resolve_in_root,
    valid_component,
)

__all__ = ["make_app", "serve"]


log = logging.getLogger("mirror.serve")


_T = TypeVar("_T")


DEFAULT_SHUTDOWN_TIMEOUT: Final = 5.0
DEFAULT_MAX_CONNECTIONS: Final = 512
"""Open connections at once; the serve unit's LimitNOFILE leaves room for files and more."""
DEFAULT_IDLE_TIMEOUT_S: Final = 15.0
"""How long a connection may sit without starting a request (new, or after a response)."""
"""Seconds in-flight requests get to finish after SIGTERM/SIGINT before being cut off."""


_CHUNK: Final = 256 * 1024


class _FileStream(web.StreamResponse):
    """A streamed file body; remembers how many body bytes went out, for the access log."""

    body_bytes_sent: int | None = 0
    """None when the client went away mid-body (sendfile does not say how far it got)."""


def _index_page(root: Path, directory: Path, components: tuple[str, ...]) -> bytes:
    """HTML listing of what in ``directory`` would itself be served; runs in a worker thread."""
    entries: list[tuple[str, bool, int]] = []
    with os.scandir(directory) as it:
        for entry in it:
            if not valid_component(entry.name):
                continue
            try:
                if entry.is_symlink():
                    rel = resolve_in_root(root, Path(entry.path))
                    st = (root / rel).stat()
                else:
                    st = entry.stat(follow_symlinks=False)
            except (Reject, OSError):
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


class _Handler:
    def __init__(self, root: Path, *, index_pages: bool, prefix: tuple[str, ...] = ()) -> None:
        self.root = root
        self.index_pages = index_pages
        self.prefix = prefix

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method not in ALLOWED_METHODS:
            return plain(405, {"Allow": ", ".join(ALLOWED_METHODS)})
        try:
            components, trailing_slash = request_components(request)
            if components[: len(self.prefix)] != self.prefix:
                raise Reject(404, "outside the served prefix")
            components = components[len(self.prefix) :]
            target = await _in_thread(
                lambda: open_in_root(self.root, components), on_orphan=close_target
            )
            if trailing_slash and isinstance(target, FileTarget):
                target.file.close()  # "file/" names no directory, as open(2) would say
                raise Reject(404, "trailing slash on a file")
        except Reject as rej:
            log.log(
                logging.WARNING if rej.status == 403 else logging.DEBUG,
                "refused %s: %s",
                _printable(request.raw_path),
                rej,
            )
            return plain(rej.status)
        if isinstance(target, DirTarget):
            if not self.index_pages:
                return plain(404)
            directory = target.path
            shown = self.prefix + components
            body = await _in_thread(lambda: _index_page(self.root, directory, shown))
            return web.Response(
                body=body,
                content_type="text/html",
                charset="utf-8",
                headers={
                    "Cache-Control": CACHE_MOVING,
                    "X-Content-Type-Options": "nosniff",
                    "Content-Security-Policy": "default-src 'none'",
                },
            )
        try:
            return await self._send_file(request, components, target)
        finally:
            target.file.close()

    async def _send_file(
        self, request: web.Request, components: tuple[str, ...], target: FileTarget
    ) -> web.StreamResponse:
        st = target.st
        headers = file_headers(components, st)
        decided = preconditions(request, st)
        if decided == 304:
            return web.Response(status=304, headers=headers)
        if decided is not None:
            return plain(decided)

        size = st.st_size
        first, count, status = 0, size, 200
        range_header = request.headers.get("Range")
        if range_header is not None and if_range_holds(request, st):
            parsed = parse_range(range_header, size)
            if parsed == "unsatisfiable":
                return plain(416, {"Content-Range": f"bytes */{size}"})
            if parsed != "full":
                first, last = parsed
                count, status = last - first + 1, 206
                headers["Content-Range"] = f"bytes {first}-{last}/{size}"

        resp = _FileStream(status=status, headers=headers)
        resp.content_type = content_type(components[-1])
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
        if not valid_component(component) or component != quote(component, safe="~@!$&'()*+,;=:"):
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
    app = web.Application(middlewares=[_access_log, guarded])
    handler = _Handler(real_root, index_pages=index_pages, prefix=components)
    # One catch-all route: every path goes through the same validation in _Handler.
    app.router.add_route("*", "/{tail:.*}", handler.handle)
    return app


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


async def _run(
    app: web.Application,
    root: Path,
    host: str,
    port: int,
    shutdown_timeout: float,
    guard: ConnectionGuard,
) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    # Installed first, so a signal that arrives while binding still means "shut down cleanly".
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    app[GUARD] = guard
    loop.set_exception_handler(guard.loop_exception)
    logging.getLogger("aiohttp.server").addFilter(OneLineBadRequests())
    # access_log=None: the middleware logs every request itself (with body bytes and time).
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=shutdown_timeout,
        keepalive_timeout=guard.idle_timeout_s,
    )
    listener: asyncio.Server | None = None
    try:
        await runner.setup()
        try:
            # The guard wraps aiohttp's own protocol factory (a TCPSite, but guarded).
            assert runner.server is not None  # set by setup()
            listener = await loop.create_server(
                guard.factory(runner.server), host, port, reuse_address=True, backlog=1024
            )
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError(host, port) from None
            raise
        for sock in listener.sockets:
            address = sock.getsockname()
            log.info("serving %s read-only at %s", root, _url(address[0], address[1]))
        await stop.wait()
        log.info("shutting down: finishing in-flight requests (up to %gs)", shutdown_timeout)
    finally:
        # Stops listening, closes idle keep-alive connections, waits up to shutdown_timeout for
        # running handlers, then cancels what is left. A second signal meanwhile is ignored.
        if listener is not None:
            listener.close()
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
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S,
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
    guard = ConnectionGuard(max_connections=max_connections, idle_timeout_s=idle_timeout_s)
    asyncio.run(_run(app, root, host, port, shutdown_timeout, guard))
