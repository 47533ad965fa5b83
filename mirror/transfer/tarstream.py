"""Writing the transfer stream: a minimal pax tar writer and the worker thread behind it.

Export and ``fetch --archive`` move every byte of a tree through a hash and a write (and maybe a
compressor); done in one thread that leaves a core idle. So the caller reads and hashes each
file, and ``Background`` runs the sink (part cutting, compression, the disk) on one worker
thread in order; hashlib, zlib/lzma and file writes release the GIL on large buffers, so both
cores work. ``write_stream`` is the one place that drives this for both kinds of output.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from mirror.digest import MultiHash, digest_bytes
from mirror.errors import IntegrityError
from mirror.store import FileRecord
from mirror.transfer.members import READ_BLOCK_BYTES
from mirror.transfer.toc import Entry

QUEUE_DEPTH = 4
"""Blocks in flight to the worker: enough to keep it busy, few enough to bound memory."""


class Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


class Background:
    """Runs calls on one worker thread, in order, with at most ``depth`` pending.

    A call's exception surfaces in the caller at the next ``submit`` or ``wait``.
    """

    def __init__(self, depth: int = QUEUE_DEPTH) -> None:
        self.depth = depth
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="k8s-mirror-io")
        self._pending: deque[Future[object]] = deque()

    def submit(self, func: Callable[..., object], *args: Any) -> None:
        while len(self._pending) >= self.depth:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(func, *args))

    def wait(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        """Stop: cancel what has not started, wait for what has (then files can go)."""
        self._pending.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


class Deferred:
    """A sink whose writes run on a ``Background`` worker."""

    def __init__(self, sink: Sink, background: Background) -> None:
        self.sink = sink
        self.background = background

    def write(self, data: bytes, /) -> None:
        self.background.submit(self.sink.write, data)


class TarWriter:
    """A minimal tar writer: headers from ``tarfile`` (pax format), data copied in large
    chunks and hashed on the way (``tarfile.addfile`` copies 16 KiB at a time and its stream
    mode re-slices its buffer on every block, both slow for GB-sized releases). ``files``
    lists every member written, with size and sha256, in stream order."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.offset = 0
        self.files: list[Entry] = []

    def _write(self, data: bytes) -> None:
        self.sink.write(data)
        self.offset += len(data)

    def _header(self, name: str, size: int, mtime: float) -> None:
        info = tarfile.TarInfo(name)
        info.size = size
        info.mtime = int(mtime)
        info.mode = 0o644
        info.type = tarfile.REGTYPE
        info.uname = info.gname = ""
        self._write(info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"))

    def _pad(self, size: int) -> None:
        remainder = size % tarfile.BLOCKSIZE
        if remainder:
            self._write(tarfile.NUL * (tarfile.BLOCKSIZE - remainder))

    def add_bytes(self, name: str, data: bytes, mtime: float) -> None:
        self._header(name, len(data), mtime)
        self._write(data)
        self._pad(len(data))
        self.files.append(Entry(name, len(data), digest_bytes(data, sha512=False).sha256))

    def add_file(self, name: str, path: Path, record: FileRecord) -> None:
        """Copy a verified tree file, refusing it unless it still is what its manifest says."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise IntegrityError(
                f"{name}: in the manifest but unreadable in the tree ({exc.strerror}); "
                "run k8s-mirror verify"
            ) from None
        hasher = MultiHash(sha512=False)
        with open(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size != record.size:
                raise IntegrityError(
                    f"{name}: not the {record.size}-byte file its manifest records; "
                    "run k8s-mirror verify"
                )
            self._header(name, record.size, info.st_mtime)
            while hasher.size_bytes < record.size:
                block = handle.read(min(READ_BLOCK_BYTES, record.size - hasher.size_bytes))
                if not block:
                    break
                hasher.update(block)
                self._write(block)
        digests = hasher.result()
        if digests.size_bytes != record.size or digests.sha256 != record.sha256:
            raise IntegrityError(
                f"{name}: content differs from its manifest; run k8s-mirror verify"
            )
        self._pad(record.size)
        self.files.append(Entry(name, record.size, record.sha256))

    def close(self) -> None:
        """End-of-archive marker, padded to a whole tar record as ``tar`` itself does."""
        self._write(tarfile.NUL * (2 * tarfile.BLOCKSIZE))
        remainder = self.offset % tarfile.RECORDSIZE
        if remainder:
            self._write(tarfile.NUL * (tarfile.RECORDSIZE - remainder))


def write_stream(sink: Sink, members: Callable[[TarWriter], None]) -> list[Entry]:
    """Write one whole tar stream into ``sink`` through a worker thread: ``members`` adds the
    members, then the end-of-archive marker follows. Returns the members written. On any
    error the worker has stopped before this returns, so the caller may remove the output."""
    background = Background()
    try:
        writer = TarWriter(Deferred(sink, background))
        members(writer)
        writer.close()
        background.wait()
    finally:
        background.close()
    return writer.files
