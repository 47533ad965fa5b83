"""Uploading one verified file: re-hash while reading, PUT with a checksum, confirm by read-back.

A file of at most one part goes up in one PUT; a larger one as a multipart upload of
``part_size_bytes`` parts. The whole-file sha256 is computed from the very bytes that are
sent (read once, in a worker thread) and must equal the manifest's: a local file that no
longer matches stops the publish with exit 5 before its object exists (a multipart upload is
aborted, never completed). Each request carries a checksum the server checks, either
``x-amz-checksum-sha256`` or ``Content-MD5`` (``Checksums`` says which the target checks).
At most ``concurrency`` bodies are in memory or in flight at once, across all files.

An upload counts only once HEAD reads back the object's size and sha256 from the store
(``confirm``): that, not the PUT's answer, is what lets a marker name the release later.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, TypeVar

from mirror.errors import IntegrityError, PublishError
from mirror.publish.client import RemoteObject, S3Store, b64_digest
from mirror.publish.objects import headers_for
from mirror.publish.tree import LocalFile

T = TypeVar("T")


@dataclass(frozen=True)
class Checksums:
    """Which checksum header the target checks: ``sha256`` or ``md5``."""

    algorithm: str

    def header(self, data: bytes, sha256_hex: str | None = None) -> dict[str, str]:
        if self.algorithm == "sha256":
            digest = sha256_hex or hashlib.sha256(data).hexdigest()
            return {"ChecksumSHA256": b64_digest(digest)}
        return {"ContentMD5": base64.b64encode(hashlib.md5(data).digest()).decode()}


class Uploader:
    """Uploads files of one publish under one concurrency bound."""

    def __init__(
        self,
        s3: S3Store,
        executor: Executor,
        checksums: Checksums,
        *,
        part_size_bytes: int,
        concurrency: int,
        on_uploaded: Callable[[LocalFile], None] = lambda f: None,
    ) -> None:
        self.s3 = s3
        self.executor = executor
        self.checksums = checksums
        self.part_size_bytes = part_size_bytes
        self.slots = asyncio.Semaphore(concurrency)
        self.on_uploaded = on_uploaded

    async def _blocking(self, func: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.executor, func, *args)

    async def upload(self, local: LocalFile) -> RemoteObject:
        """Upload ``local`` and return the object as confirmed by the store."""
        if local.size <= self.part_size_bytes:
            await self._single(local)
        else:
            await self._multipart(local)
        confirmed = await confirm(self.s3, local.relpath, local.size, local.sha256)
        self.on_uploaded(local)
        return confirmed

    async def upload_bytes(self, relpath: str, data: bytes) -> RemoteObject:
        """A small document of our own (manifest, index, marker, trust root)."""
        sha256 = hashlib.sha256(data).hexdigest()
        async with self.slots:
            await self.s3.put(
                relpath, data, headers_for(relpath), sha256, self.checksums.header(data, sha256)
            )
        return await confirm(self.s3, relpath, len(data), sha256)

    async def _single(self, local: LocalFile) -> None:
        async with self.slots:
            data, checksum = await self._blocking(_read_whole, local, self.checksums)
            await self.s3.put(
                local.relpath, data, headers_for(local.relpath), local.sha256, checksum
            )

    async def _multipart(self, local: LocalFile) -> None:
        upload_id = await self.s3.create_multipart(
            local.relpath,
            headers_for(local.relpath),
            local.sha256,
            "SHA256" if self.checksums.algorithm == "sha256" else None,
        )
        try:
            parts = await self._parts(local, upload_id)
            await self.s3.complete_multipart(local.relpath, upload_id, parts)
        except BaseException:
            await asyncio.shield(self.s3.abort_multipart(local.relpath, upload_id))
            raise

    async def _parts(self, local: LocalFile, upload_id: str) -> list[dict[str, Any]]:
        """Read parts in order (so one running sha256 covers the file), send them concurrently."""
        whole = hashlib.sha256()
        tasks: list[asyncio.Task[dict[str, Any]]] = []
        fd = await self._blocking(_open_checked, local)
        try:
            for number, offset in enumerate(range(0, local.size, self.part_size_bytes), 1):
                await self.slots.acquire()
                try:
                    length = min(self.part_size_bytes, local.size - offset)
                    data, checksum = await self._blocking(
                        _read_part, fd, offset, length, whole, self.checksums, local
                    )
                except BaseException:
                    self.slots.release()
                    raise
                tasks.append(
                    asyncio.create_task(self._send_part(local, upload_id, number, data, checksum))
                )
                if any(t.done() and t.exception() for t in tasks):
                    break
            parts = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        finally:
            os.close(fd)
        if whole.hexdigest() != local.sha256:
            raise _changed(local)
        return list(parts)

    async def _send_part(
        self, local: LocalFile, upload_id: str, number: int, data: bytes, checksum: dict[str, str]
    ) -> dict[str, Any]:
        try:
            return await self.s3.upload_part(local.relpath, upload_id, number, data, checksum)
        finally:
            self.slots.release()


async def gather_or_cancel(coros: Iterable[Awaitable[T]]) -> list[T]:
    """Run concurrently; on the first failure cancel the rest and wait for them (nothing
    keeps talking to the store after its client closed), then re-raise that failure."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def confirm(s3: S3Store, relpath: str, size: int, sha256: str) -> RemoteObject:
    """HEAD the object: the store must hold ``size`` bytes with sha256 ``sha256``."""
    found = await s3.head(relpath)
    if found is None:
        raise PublishError(f"{s3.target.url(relpath)}: uploaded, but the store does not have it")
    if found.size != size or found.sha256 != sha256:
        raise PublishError(
            f"{s3.target.url(relpath)}: the store reports size {found.size} sha256 "
            f"{found.sha256 or 'none'} after upload, expected size {size} sha256 {sha256}"
        )
    return found


def _changed(local: LocalFile) -> IntegrityError:
    return IntegrityError(
        f"{local.relpath}: content differs from its manifest; nothing of it was published; "
        "run k8s-mirror verify"
    )


def _open_checked(local: LocalFile) -> int:
    try:
        fd = os.open(local.path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise IntegrityError(
            f"{local.relpath}: in the manifest but unreadable ({exc.strerror}); "
            "run k8s-mirror verify"
        ) from None
    if os.fstat(fd).st_size != local.size:
        os.close(fd)
        raise _changed(local)
    return fd


def _read_whole(local: LocalFile, checksums: Checksums) -> tuple[bytes, dict[str, str]]:
    """(worker thread) The file's bytes, checked against the manifest, and their checksum."""
    fd = _open_checked(local)
    try:
        data = os.pread(fd, local.size + 1, 0)
    finally:
        os.close(fd)
    sha256 = hashlib.sha256(data).hexdigest()
    if len(data) != local.size or sha256 != local.sha256:
        raise _changed(local)
    return data, checksums.header(data, sha256)


def _read_part(
    fd: int,
    offset: int,
    length: int,
    whole: Any,
    checksums: Checksums,
    local: LocalFile,
) -> tuple[bytes, dict[str, str]]:
    """(worker thread) One part, folded into the running whole-file sha256."""
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise _changed(local)
    whole.update(data)
    return data, checksums.header(data)
