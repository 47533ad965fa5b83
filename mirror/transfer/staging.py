"""An import's private staging area: where a source's release files land before any check.

``<root>/.k8s-mirror/staging/import-<pid>-<ns>/release/<v>/...`` is on the tree's filesystem, so
promotion is a rename. Each file is created exclusively (never through a symlink, never over
another member), hashed while written, fsynced, and its digests kept: verification uses those,
never a re-read. The caller's thread reads the stream and hashes sha256; a worker hashes sha512
and writes, so both cores work on one file.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import IO

from mirror.catalog import RelPath
from mirror.digest import Digests, MultiHash
from mirror.errors import IntegrityError, LocalStoreError
from mirror.layout import RELEASE_DIR_NAME, TRUST_ROOT_RELPATH
from mirror.store import Store, write_atomic
from mirror.transfer.members import READ_BLOCK_BYTES, Member
from mirror.transfer.tarstream import Background

IMPORT_STAGING_PREFIX = "import-"


class Staging:
    """The staged files of one import, by release, with what they hashed to."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.work = store.staging / f"{IMPORT_STAGING_PREFIX}{os.getpid()}-{time.time_ns()}"
        self._digests: dict[str, dict[str, Digests]] = {}
        self._background = Background()

    def create(self) -> None:
        """Make the area, after removing what imports killed earlier left (call under the
        tree's lock: then no other import can be running)."""
        for stale in self.store.staging.glob(IMPORT_STAGING_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        self.work.mkdir(parents=True)

    def close(self) -> None:
        """Stop the worker and remove the area (on every way out)."""
        self._background.close()
        shutil.rmtree(self.work, ignore_errors=True)

    def release_dir(self, version: str) -> Path:
        return self.work / RELEASE_DIR_NAME / version

    def files(self, version: str) -> Mapping[str, Digests]:
        """The staged files of ``version`` that the import promotes."""
        return self._digests.get(version, {})

    def releases(self) -> list[str]:
        return list(self._digests)

    def keep_only(self, version: str, wanted: Collection[str]) -> None:
        """Forget staged files of ``version`` that are not ``wanted`` (left to the tree's)."""
        staged = self._digests.get(version, {})
        for rel in [r for r in staged if r not in wanted]:
            del staged[rel]

    def locate(self, version: str) -> Callable[[str], Path]:
        """A release's files as they would be after the import: staged, else the tree's."""
        staged = self._digests.get(version, {})

        def where(rel: str) -> Path:
            if rel in staged:
                return self.release_dir(version) / rel
            return self.store.tree_path(version, RelPath(rel))

        return where

    def stage_trust_root(self, data: bytes) -> Path:
        path = self.work / TRUST_ROOT_RELPATH
        write_atomic(path, data)
        return path

    def stage(
        self, tar: tarfile.TarFile, info: tarfile.TarInfo, member: Member, *, want_sha512: bool
    ) -> Digests:
        """Unpack one release file of the stream; its digests (sha512 only if wanted)."""
        target = self.release_dir(member.version) / member.relpath
        source = tar.extractfile(info)
        assert source is not None
        hasher = MultiHash(sha512=want_sha512)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with open(fd, "wb") as handle:
                self._copy(source, handle, hasher)
                handle.flush()
                os.fsync(handle.fileno())
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise IntegrityError(f"{info.name}: clashes with another member's path") from None
        except OSError as exc:
            raise LocalStoreError(f"{target}: cannot write: {exc.strerror}") from exc
        digests = hasher.result()
        if digests.size_bytes != info.size:
            raise IntegrityError(f"{info.name}: truncated in the stream")
        self._digests.setdefault(member.version, {})[member.relpath] = digests
        return digests

    def _copy(self, source: IO[bytes], handle: IO[bytes], hasher: MultiHash) -> None:
        try:
            while block := source.read(READ_BLOCK_BYTES):
                hasher.update_sha256(block)
                self._background.submit(_absorb, handle, hasher, block)
            self._background.wait()
        except BaseException:
            self._background.close()  # before the file is closed under the worker
            raise


def _absorb(handle: IO[bytes], hasher: MultiHash, block: bytes) -> None:
    """(worker) The rest of what a staged block goes through."""
    hasher.update_sha512(block)
    handle.write(block)
