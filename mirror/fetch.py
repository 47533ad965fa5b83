"""Getting bytes from upstream into the staging area: concurrency, retries, resume, hashing.

A download streams into a partial file in the state directory while sha256 and sha512 are
computed in the same pass. Hashing and writing run in a worker thread with one job in flight
per file, so the event loop keeps receiving the next chunk while the previous one is hashed
and written (hashlib releases the GIL on large buffers, which puts the second core to work).
A body that announces at most ``WHOLE_BODY_MAX_BYTES`` (sidecar-sized files, most of a
release by count) is received whole and written and hashed in one worker call, with no resume
metadata (unless its connection breaks: then what arrived is kept for resume, as for a large
body): for such a file the hops between threads, not the bytes, were the cost.

Retry policy: connection errors, timeouts, truncated bodies and 408/429/5xx are retried with
capped exponential backoff and full jitter, honouring ``Retry-After``; other 4xx are final. A
partial file is resumed with ``Range`` + ``If-Range`` (a 200 answer restarts from zero; a
``Content-Range`` that does not start where we asked is treated as a restart). A digest
mismatch discards the partial and is retried once from zero, then fails. The concurrency slot
is held across retries, so a struggling server gets no more connections than configured.

Two bounds: ``upstream.concurrency`` requests in flight (each file of a release costs about
five round trips, mostly for small bodies, so on a link with latency the number in flight is
what sets the pace), and of those ``upstream.large_downloads`` streaming a large body. A
download expected to be large (its path is large in an earlier release) takes a large slot
before it asks; one that learns from the answer's Content-Length that it is large takes a free
large slot, or, with none free, drops the answer and asks again once it holds one (so no
answer sits unread on a connection while others stream: a CDN would cut it).
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import random
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from mirror.config import UpstreamConfig
from mirror.digest import Digests, HashingWriter
from mirror.errors import (
    DigestMismatchError,
    HTTPStatusError,
    IntegrityError,
    TransientError,
)
from mirror.partial import (
    discard_partial,
    keep_prefix,
    open_writer,
    parse_content_range,
    resume_offset,
    unsatisfied_length,
    write_whole,
)
from mirror.upstream import Upstream, raise_for_status, salvage_buffered, sleep_s

CHUNK_BYTES = 1 << 20
SMALL_BODY_MAX_BYTES = 4 << 20
"""Markers, SUMS files, sidecars, certificates, Rekor answers: never legitimately this big."""
WHOLE_BODY_MAX_BYTES = 1 << 20
"""A download announcing at most this much is received whole, then written in one go."""

log = logging.getLogger(__name__)
ProgressFn = Callable[[int], None]
T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before another attempt (pure, so it is tested without I/O)."""

    retries: int
    base_s: float
    max_s: float

    def delay_s(self, attempt: int, retry_after_s: float | None, rng: random.Random) -> float:
        """Delay before retry number ``attempt`` (1-based): full jitter, capped, or the server's."""
        if retry_after_s is not None:
            return retry_after_s
        ceiling = min(self.max_s, self.base_s * (2 ** (attempt - 1)))
        return rng.uniform(0, ceiling)

    @classmethod
    def from_config(cls, config: UpstreamConfig) -> RetryPolicy:
        return cls(config.retries, config.backoff_base_s, config.backoff_max_s)


@dataclass(frozen=True)
class Downloaded:
    """A complete body in its partial file, with what was measured while streaming it."""

    path: Path
    size_bytes: int
    sha256: str
    sha512: str
    resumed_from_bytes: int
    attempts: int


class _LargeBody(Exception):
    """An answer turned out large while every large slot was taken: ask again holding one."""


class RateGuard:
    """Cuts a body that trickles: a read timeout only catches silence, and a server sending a
    byte a second would hold a run for days. Over each window of ``window_s`` the body must
    average ``min_bytes_per_s`` (0 disables the guard). Pure, so it is tested without I/O."""

    def __init__(self, min_bytes_per_s: int, window_s: float, now_s: float) -> None:
        self.min_bytes_per_s = min_bytes_per_s
        self.window_s = window_s
        self.window_start_s = now_s
        self.window_bytes = 0

    def too_slow(self, received_bytes: int, now_s: float) -> float | None:
        """Count ``received_bytes`` more; the rate of a finished window below the minimum
        (bytes/s), or None."""
        self.window_bytes += received_bytes
        elapsed_s = now_s - self.window_start_s
        if self.min_bytes_per_s <= 0 or elapsed_s < self.window_s:
            return None
        rate = self.window_bytes / elapsed_s
        self.window_start_s, self.window_bytes = now_s, 0
        return rate if rate < self.min_bytes_per_s else None


class Fetcher:
    """Retrying, concurrency-bounded access to upstream for one run."""

    def __init__(
        self,
        upstream: Upstream,
        config: UpstreamConfig,
        *,
        executor: ThreadPoolExecutor,
        rng: random.Random | None = None,
    ) -> None:
        self.upstream = upstream
        self.config = config
        self.policy = RetryPolicy.from_config(config)
        self.slots = asyncio.Semaphore(config.concurrency)
        self.large_slots = asyncio.Semaphore(config.large_downloads)
        self.executor = executor
        self.rng = rng or random.Random()
        self.retries_done = 0

    async def _in_thread(self, func: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def _backoff(self, attempt: int, exc: TransientError) -> None:
        if attempt > self.policy.retries:
            raise exc
        self.retries_done += 1
        delay_s = self.policy.delay_s(attempt, exc.retry_after_s, self.rng)
        log.info("retry %d/%d in %.1fs: %s", attempt, self.policy.retries, delay_s, exc)
        await sleep_s(delay_s)

    async def _retrying(self, attempt_once: Callable[[], Awaitable[T]]) -> T:
        """Run one request until it succeeds or the retry budget is spent, holding a slot."""
        async with self.slots:
            attempt = 0
            while True:
                try:
                    return await attempt_once()
                except TransientError as exc:
                    attempt += 1
                    await self._backoff(attempt, exc)

    async def bytes(
        self,
        url: str,
        *,
        max_bytes: int = SMALL_BODY_MAX_BYTES,
        method: str = "GET",
        json_body: object = None,
    ) -> bytes:
        """A small body, retried per policy."""
        return await self._retrying(
            lambda: self.upstream.get_bytes(
                url, max_bytes=max_bytes, method=method, json_body=json_body
            )
        )

    async def content_length(self, url: str) -> int | None:
        """The size upstream announces for ``url`` (HEAD), retried per policy."""
        return await self._retrying(lambda: self.upstream.content_length(url))

    async def text(self, url: str, *, max_bytes: int = SMALL_BODY_MAX_BYTES) -> str:
        body = await self.bytes(url, max_bytes=max_bytes)
        try:
            return body.decode("ascii")
        except UnicodeDecodeError:
            raise IntegrityError(f"{url}: expected ASCII text") from None

    async def download(
        self,
        url: str,
        part: Path,
        *,
        sha256: str,
        sha512: str,
        on_bytes: ProgressFn | None = None,
        max_bytes: int | None = None,
        expect_large: bool = False,
    ) -> Downloaded:
        """Stream ``url`` into ``part`` until its digests match the expected ones.

        ``max_bytes`` bounds the body below ``upstream.max_file_size_bytes`` when the caller
        knows roughly how big the file can be (an endless body stops there). The partial file
        survives transient failures (for resume, in this run or the next) and is removed on a
        final failure other than a transient one.
        """
        limit = self.config.max_file_size_bytes
        if max_bytes is not None:
            limit = min(limit, max_bytes)
        try:
            return await self._download(url, part, sha256, sha512, on_bytes, limit, expect_large)
        except _LargeBody:
            return await self._download(url, part, sha256, sha512, on_bytes, limit, True)

    async def _download(
        self,
        url: str,
        part: Path,
        sha256: str,
        sha512: str,
        on_bytes: ProgressFn | None,
        limit: int,
        large: bool,
    ) -> Downloaded:
        async with contextlib.AsyncExitStack() as slots:
            # The large slot first: waiting for it must not hold a slot small requests need.
            if large:
                await slots.enter_async_context(self.large_slots)
            await slots.enter_async_context(self.slots)
            attempt = 0
            restarted_after_mismatch = False
            while True:
                try:
                    result = await self._attempt_in_time(url, part, on_bytes, limit, large)
                except TransientError as exc:
                    attempt += 1
                    await self._backoff(attempt, exc)
                    continue
                except (HTTPStatusError, IntegrityError):
                    # Final answers (4xx, oversize) leave nothing behind; an interruption keeps
                    # the partial so that this or the next run resumes it.
                    await self._in_thread(discard_partial, part)
                    raise
                if result.sha256 == sha256 and result.sha512 == sha512:
                    return Downloaded(
                        part,
                        result.size_bytes,
                        result.sha256,
                        result.sha512,
                        result.resumed_from_bytes,
                        attempt + 1,
                    )
                await self._in_thread(discard_partial, part)
                if restarted_after_mismatch:
                    which = "sha256" if result.sha256 != sha256 else "sha512"
                    raise DigestMismatchError(
                        f"{url}: {which} of the downloaded body does not match SHA256SUMS/"
                        f"SHA512SUMS (got {getattr(result, which)[:16]}..., twice)"
                    )
                restarted_after_mismatch = True
                attempt += 1

    async def _attempt_in_time(
        self, url: str, part: Path, on_bytes: ProgressFn | None, limit: int, large_held: bool
    ) -> Downloaded:
        """One attempt, within ``upstream.file_timeout_s`` if set (what arrived is kept)."""
        timeout_s = self.config.file_timeout_s
        if timeout_s <= 0:
            return await self._attempt(url, part, on_bytes, limit, large_held)
        try:
            async with asyncio.timeout(timeout_s):
                return await self._attempt(url, part, on_bytes, limit, large_held)
        except TimeoutError:
            raise TransientError(
                f"{url}: not complete after {timeout_s:g} s (upstream.file_timeout_s)"
            ) from None

    async def _attempt(
        self, url: str, part: Path, on_bytes: ProgressFn | None, limit: int, large_held: bool
    ) -> Downloaded:
        loop = asyncio.get_running_loop()
        offset, validator = await loop.run_in_executor(self.executor, resume_offset, part, url)
        headers = {"Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            headers["If-Range"] = validator or ""
        async with self.upstream.stream(url, headers) as response:
            if offset and response.status == 416:
                if unsatisfied_length(response.headers.get("Content-Range")) == offset:
                    # The partial is already whole (a run was killed after the last byte):
                    # hash what is on disk; the digest check decides whether it is usable.
                    writer = await loop.run_in_executor(self.executor, HashingWriter, part, offset)
                    digests = await loop.run_in_executor(self.executor, writer.finish)
                    return _downloaded(part, digests, offset)
                await loop.run_in_executor(self.executor, discard_partial, part)
                raise TransientError(f"{url}: server refused to resume at byte {offset}")
            raise_for_status(url, response)
            if response.status == 206:
                start, total = parse_content_range(response.headers.get("Content-Range"))
                if start != offset:
                    await loop.run_in_executor(self.executor, discard_partial, part)
                    raise TransientError(
                        f"{url}: asked to resume at byte {offset}, server sent from {start}"
                    )
            else:
                # 200: the server ignored or refused the range (If-Range mismatch): restart.
                offset = 0
                length = response.content_length
                total = length if length is not None else -1
            if total > limit:
                raise IntegrityError(f"{url}: {total} bytes, more than {_limit_name(self, limit)}")
            whole = offset == 0 and 0 <= total <= WHOLE_BODY_MAX_BYTES
            if not (whole or large_held) and self.large_slots.locked():
                raise _LargeBody
            # A progress display that wants the size (a bytes bar's total) learns it here.
            expect_bytes = getattr(on_bytes, "expect_bytes", None)
            if expect_bytes is not None and total >= 0:
                expect_bytes(total - offset)
            meta = {
                "url": url,
                "etag": response.headers.get("ETag"),
                "last_modified": response.headers.get("Last-Modified"),
            }
            if whole:
                chunks: list[bytes] = []
                try:
                    async with contextlib.aclosing(
                        self._chunks(url, response, 0, on_bytes, limit)
                    ) as body_chunks:
                        async for chunk in body_chunks:
                            chunks.append(chunk)
                except (TransientError, IntegrityError):
                    raise
                except Exception:
                    # Cut short: keep what arrived (and what the client still buffers) as a
                    # partial with its resume metadata, like a streamed body.
                    chunks.append(salvage_buffered(response.content))
                    await asyncio.shield(
                        loop.run_in_executor(self.executor, keep_prefix, part, chunks, meta, limit)
                    )
                    raise
                body = b"".join(chunks)
                digests = await loop.run_in_executor(self.executor, write_whole, part, body)
                if digests.size_bytes != total:
                    raise TransientError(f"{url}: got {digests.size_bytes} of {total} bytes")
                return _downloaded(part, digests, 0)
            async with contextlib.nullcontext() if large_held else self.large_slots:
                return await self._stream_to_disk(
                    url, response, part, offset, total, meta, on_bytes, limit
                )

    async def _stream_to_disk(
        self,
        url: str,
        response: Any,
        part: Path,
        offset: int,
        total: int,
        meta: dict[str, Any],
        on_bytes: ProgressFn | None,
        limit: int,
    ) -> Downloaded:
        """A large body (or one of unknown size), into ``part`` from ``offset``."""
        loop = asyncio.get_running_loop()
        writer = await loop.run_in_executor(self.executor, open_writer, part, offset, meta)
        try:
            await self._pump(url, response, writer, on_bytes, limit)
            # A big file is flushed now, in its worker, while other downloads go on: left to
            # the promotion's one flush, a release's gigabytes would reach the disk only after
            # the last byte arrived, with nothing else to overlap.
            digests = await loop.run_in_executor(
                self.executor, functools.partial(writer.finish, fsync=True)
            )
        except BaseException:
            writer.close()  # keeps what was written, for resume
            raise
        if total >= 0 and digests.size_bytes != total:
            raise TransientError(f"{url}: got {digests.size_bytes} of {total} bytes")
        return _downloaded(part, digests, offset)

    async def _pump(
        self,
        url: str,
        response: Any,
        writer: HashingWriter,
        on_bytes: ProgressFn | None,
        limit: int,
    ) -> None:
        """Hand the body to the writer thread in batches of about ``CHUNK_BYTES``, one batch
        in flight. The batch is a list of the chunks as received: joining them here would be
        one more copy of every byte on the event loop, the busiest thread of a download."""
        loop = asyncio.get_running_loop()
        pending: asyncio.Future[None] | None = None
        received = writer.size_bytes
        batch: list[bytes] = []
        batch_bytes = 0
        try:
            async with contextlib.aclosing(
                self._chunks(url, response, received, on_bytes, limit)
            ) as chunks:
                async for chunk in chunks:
                    received += len(chunk)
                    batch.append(chunk)
                    batch_bytes += len(chunk)
                    if batch_bytes < CHUNK_BYTES:
                        continue
                    if pending is not None:
                        await pending
                    pending = loop.run_in_executor(self.executor, writer.write_all, batch)
                    batch, batch_bytes = [], 0
        except TransientError:
            raise
        except Exception:
            # A cut body: keep what arrived before the cut (a small file's whole first
            # attempt may still sit in the client's buffer), so the next attempt resumes.
            rest = salvage_buffered(response.content)
            if rest and received + len(rest) <= limit:
                batch.append(rest)
            raise
        finally:
            if pending is not None:
                await asyncio.shield(pending)
            if batch:
                # The end of the body, or what arrived before a failure (a valid prefix,
                # kept for resume).
                await asyncio.shield(loop.run_in_executor(self.executor, writer.write_all, batch))

    async def _chunks(
        self,
        url: str,
        response: Any,
        received: int,
        on_bytes: ProgressFn | None,
        limit: int,
    ) -> AsyncGenerator[builtins.bytes, None]:  # (``bytes`` here is Fetcher.bytes)
        """The body's chunks as they arrive, under the size bound (counting the ``received``
        bytes already on disk) and the rate guard; the same rules for a body streamed to disk
        and one received whole."""
        guard = RateGuard(
            self.config.min_rate_bytes_per_s, self.config.min_rate_window_s, time.monotonic()
        )
        while True:
            chunk, end_of_http_chunk = await response.content.readchunk()
            if not chunk:
                if end_of_http_chunk:
                    continue  # a chunked body's chunk boundary, not the end of the body
                return
            received += len(chunk)
            if received > limit:
                raise IntegrityError(f"{url}: body exceeds {_limit_name(self, limit)}")
            if (rate := guard.too_slow(len(chunk), time.monotonic())) is not None:
                raise TransientError(
                    f"{url}: {rate:.0f} bytes/s, below upstream.min_rate_bytes_per_s"
                )
            if on_bytes is not None:
                on_bytes(len(chunk))
            yield chunk


def _limit_name(fetcher: Fetcher, limit: int) -> str:
    if limit >= fetcher.config.max_file_size_bytes:
        return "upstream.max_file_size_bytes"
    return f"{limit} bytes, the most a file of its kind and size can be"


def _downloaded(part: Path, digests: Digests, resumed_from_bytes: int) -> Downloaded:
    assert digests.sha512 is not None  # downloads always compute both
    return Downloaded(
        part, digests.size_bytes, digests.sha256, digests.sha512, resumed_from_bytes, 1
    )
