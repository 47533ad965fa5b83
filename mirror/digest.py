"""Digests of file content: the one hashing type of k8s-mirror.

Every file the tool accepts is known by its size, sha256 and (for primary release files)
sha512, computed in one pass over the bytes: while streaming a download, while unpacking a
transfer set, while re-reading a tree for ``verify``. ``MultiHash`` is that pass, ``Digests``
its result, and ``HashingWriter`` the blocking writer that hashes exactly what it writes
(callers run it in a worker thread: hashlib releases the GIL on large buffers, so hashing and
the event loop use both cores).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mirror.errors import LocalStoreError

READ_BYTES = 1 << 20

BytesLike = bytes | bytearray | memoryview
"""What hashlib takes without a copy."""


@dataclass(frozen=True)
class Digests:
    """What a file's content hashed to."""

    size_bytes: int
    sha256: str
    sha512: str | None = None


class MultiHash:
    """sha256 and (optionally) sha512 of a byte stream, fed once."""

    def __init__(self, *, sha512: bool = True) -> None:
        self._sha256 = hashlib.sha256()
        self._sha512 = hashlib.sha512() if sha512 else None
        self.size_bytes = 0

    def update(self, data: BytesLike, /) -> None:
        self._sha256.update(data)
        if self._sha512 is not None:
            self._sha512.update(data)
        self.size_bytes += len(data)

    def update_sha256(self, data: BytesLike, /) -> None:
        """The size and sha256 half of ``update``. Fed with ``update_sha512`` on another thread
        (the same bytes, in the same order), two cores hash one stream."""
        self._sha256.update(data)
        self.size_bytes += len(data)

    def update_sha512(self, data: BytesLike, /) -> None:
        """The sha512 half of ``update`` (nothing if this hash was made without sha512)."""
        if self._sha512 is not None:
            self._sha512.update(data)

    def result(self) -> Digests:
        sha512 = self._sha512.hexdigest() if self._sha512 is not None else None
        return Digests(self.size_bytes, self._sha256.hexdigest(), sha512)


def digest_bytes(data: bytes, *, sha512: bool = True) -> Digests:
    hasher = MultiHash(sha512=sha512)
    hasher.update(data)
    return hasher.result()


def digest_file(path: Path, *, sha512: bool = True) -> Digests:
    """Hash a file on disk, refusing to follow a symlink at ``path`` (raises ``OSError``)."""
    hasher = MultiHash(sha512=sha512)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    with open(fd, "rb") as handle:
        while block := handle.read(READ_BYTES):
            hasher.update(block)
    return hasher.result()


class HashingWriter:
    """Writes one file and hashes what it writes. Blocking: call it from a worker thread.

    ``offset`` resumes a partial file: the bytes already on disk enter the digests first, so
    the result always covers the whole file.
    """

    def __init__(self, path: Path, offset: int = 0, *, sha512: bool = True) -> None:
        self.path = path
        self.hash = MultiHash(sha512=sha512)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file: BinaryIO
        if offset:
            self.file = open(path, "r+b")  # noqa: SIM115 - closed in finish()/close()
            while self.hash.size_bytes < offset:
                block = self.file.read(min(READ_BYTES, offset - self.hash.size_bytes))
                if not block:
                    break
                self.hash.update(block)
            self.file.seek(self.hash.size_bytes)
            self.file.truncate()
        else:
            self.file = open(path, "wb")  # noqa: SIM115

    @property
    def size_bytes(self) -> int:
        return self.hash.size_bytes

    def write(self, chunk: bytes, /) -> None:
        try:
            self.file.write(chunk)
        except OSError as exc:
            raise LocalStoreError(f"{self.path}: cannot write: {exc.strerror}") from exc
        self.hash.update(chunk)

    def write_all(self, chunks: list[bytes], /) -> None:
        """``write`` each chunk in order: one thread hop for a batch of received chunks."""
        for chunk in chunks:
            self.write(chunk)

    def finish(self, *, fsync: bool = False) -> Digests:
        """Flush and close; the digests of the whole file. ``fsync`` also waits for the data
        to reach the disk; without it the file is made durable later, by whoever renames it
        somewhere that counts (the tree layer, ``store.py``)."""
        try:
            self.file.flush()
            if fsync:
                os.fsync(self.file.fileno())
            self.file.close()
        except OSError as exc:
            raise LocalStoreError(f"{self.path}: cannot write: {exc.strerror}") from exc
        return self.hash.result()

    def close(self) -> None:
        """Best effort: on an error path, a failing flush must not hide the first error."""
        with contextlib.suppress(OSError):
            self.file.close()
