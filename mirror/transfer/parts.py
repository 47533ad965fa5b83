"""Parts: one byte stream cut into ``part-0001.tar``, ``part-0002.tar``, ... and read back.

A part is a plain byte range of the stream (``cat part-*.tar`` is the stream), at most
``--max-part-size`` bytes, so sets fit on media with a file-size limit. Writing hashes each part
as it goes; reading checks each part's size and sha256 against ``toc.json`` as its end is
reached, so the media is read once and a damaged part is named in the error.
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

from mirror.digest import MultiHash
from mirror.errors import ConfigError, IntegrityError, LocalStoreError
from mirror.store import fsync_dir
from mirror.transfer.members import READ_BLOCK_BYTES
from mirror.transfer.toc import Entry, part_name

DEFAULT_MAX_PART_BYTES = 4 << 30
MIN_PART_BYTES = 1024
_SIZE_RE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``4G``, ``700M``, ``64K`` or plain bytes; K/M/G/T are powers of 1024."""
    match = _SIZE_RE.match(text.strip())
    if match is None:
        raise ConfigError(
            f"{text!r} is not a size like 4G, 700M or 1048576", source="--max-part-size"
        )
    value = int(match[1]) << (10 * " KMGT".index((match[2] or " ").upper()))
    if value < MIN_PART_BYTES:
        raise ConfigError(f"must be at least {MIN_PART_BYTES} bytes", source="--max-part-size")
    return value


class PartSink:
    """Cuts one byte stream into ``part-0001.tar``, ... of at most ``max_part_bytes`` bytes each,
    hashing every part as it goes. Parts are created exclusively and fsynced; ``abort``
    removes every part this sink created."""

    def __init__(self, directory: Path, max_part_bytes: int) -> None:
        self.directory = directory
        self.max_part_bytes = max_part_bytes
        self.parts: list[Entry] = []
        self.created: list[Path] = []
        self.stream_bytes = 0
        self._handle: IO[bytes] | None = None
        self._hash = MultiHash(sha512=False)

    def write(self, data: bytes, /) -> None:
        view = memoryview(data)
        self.stream_bytes += len(view)
        while view:
            if self._handle is None:
                self._open_next()
            assert self._handle is not None
            chunk = view[: self.max_part_bytes - self._hash.size_bytes]
            try:
                self._handle.write(chunk)
            except OSError as exc:
                raise LocalStoreError(f"{self._handle.name}: cannot write: {exc.strerror}") from exc
            self._hash.update(chunk)
            view = view[len(chunk) :]
            if self._hash.size_bytes == self.max_part_bytes:
                self._close_current()

    def _open_next(self) -> None:
        path = self.directory / part_name(len(self.parts) + 1)
        try:
            self._handle = open(path, "xb")  # noqa: SIM115 - closed in _close_current/abort
        except OSError as exc:
            raise LocalStoreError(f"{path}: cannot create: {exc.strerror}") from exc
        self.created.append(path)
        self._hash = MultiHash(sha512=False)

    def _close_current(self) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        try:
            handle.flush()
            os.fsync(handle.fileno())
        except OSError as exc:
            raise LocalStoreError(f"{handle.name}: cannot write: {exc.strerror}") from exc
        finally:
            handle.close()
        digests = self._hash.result()
        self.parts.append(Entry(Path(handle.name).name, digests.size_bytes, digests.sha256))

    def close(self) -> None:
        self._close_current()
        fsync_dir(self.directory)

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        for path in self.created:
            path.unlink(missing_ok=True)


class PartsReader(io.RawIOBase):
    """The parts of a set read back to back as one stream, each checked against the toc as
    its end is reached (so the media is read once). Every error names the part."""

    def __init__(self, directory: Path, parts: Sequence[Entry]) -> None:
        super().__init__()
        self.directory = directory
        self.parts = list(parts)
        self.index = 0
        self._handle: io.BufferedReader | None = None
        self._hash = MultiHash(sha512=False)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while self.index < len(self.parts):
            if self._handle is None:
                self._open()
            assert self._handle is not None
            n = self._handle.readinto(buffer)
            if n:
                self._hash.update(memoryview(buffer)[:n])
                if self._hash.size_bytes > self.parts[self.index].size:
                    self._fail(f"longer than the {self.parts[self.index].size} bytes toc.json says")
                return n
            self._finish_part()
        return 0

    def _open(self) -> None:
        part = self.parts[self.index]
        try:
            self._handle = open(self.directory / part.path, "rb")  # noqa: SIM115
        except FileNotFoundError:
            self._fail("missing (listed in toc.json)")
        except OSError as exc:
            self._fail(f"unreadable ({exc.strerror})")
        self._hash = MultiHash(sha512=False)

    def _finish_part(self) -> None:
        part = self.parts[self.index]
        digests = self._hash.result()
        if digests.size_bytes != part.size:
            self._fail(f"{digests.size_bytes} bytes, toc.json says {part.size}: truncated")
        if digests.sha256 != part.sha256:
            self._fail("sha256 differs from toc.json: the part is corrupt")
        self._close_handle()
        self.index += 1

    def _fail(self, what: str) -> NoReturn:
        self._close_handle()
        name = self.directory / self.parts[self.index].path
        raise IntegrityError(f"{name}: {what}")

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def check_sizes(self) -> None:
        """Missing and truncated parts are known from a stat, before anything is read."""
        for index, part in enumerate(self.parts):
            try:
                size = (self.directory / part.path).stat().st_size
            except FileNotFoundError:
                self.index = index
                self._fail("missing (listed in toc.json)")
            if size != part.size:
                self.index = index
                self._fail(f"{size} bytes, toc.json says {part.size}: truncated or damaged")

    def finish_current(self) -> None:
        """Read to the end of the part being read; raises if that part is corrupt."""
        if self._handle is None or self.index >= len(self.parts):
            return
        buffer = bytearray(READ_BLOCK_BYTES)
        current = self.index
        while self.index == current and self.readinto(buffer):
            pass

    def drain(self) -> None:
        """Read (and so check) everything after the tar end-of-archive marker."""
        buffer = bytearray(READ_BLOCK_BYTES)
        while self.readinto(buffer):
            pass

    def close(self) -> None:
        self._close_handle()
        super().close()
