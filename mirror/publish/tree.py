"""The one place publishing reads the local tree: manifests, markers, trust root, the lock.

Only what the per-release manifests record is published (each file with the size and sha256
it was verified with), plus the markers that name a release in the tree and the trust root.
Never the state directory, staging, partial downloads or dotfiles. Everything else in
``mirror.publish`` sees the tree only through ``LocalTree``.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mirror.catalog import RelPath, marker_path
from mirror.errors import IntegrityError, LocalStoreError, LockHeldError
from mirror.layout import RELEASE_DIR_NAME, STATE_DIR_NAME, TRUST_ROOT_RELPATH
from mirror.store import Manifest, Store

MANIFEST_KEY_DIR = f"{STATE_DIR_NAME}/manifests"
"""Where a release's manifest goes in the bucket, as in the tree: a copy of the bucket is a
tree that ``k8s-mirror verify`` can audit."""

MAX_SMALL_FILE_BYTES = 16 * 1024**2
"""Markers and the trust root are read whole; anything larger is not what it claims."""


@dataclass(frozen=True)
class LocalFile:
    """One verified file of a release: tree path, where it is, what the manifest says."""

    relpath: str
    """Path in the tree (and, under the prefix, the object key): ``release/<v>/...``."""
    path: Path
    size: int
    sha256: str


@dataclass
class LocalRelease:
    version: str
    files: dict[str, LocalFile] = field(default_factory=dict)
    """By path relative to the release directory, as in the manifest."""
    manifest_bytes: bytes = b""

    @property
    def manifest_relpath(self) -> str:
        return f"{MANIFEST_KEY_DIR}/{self.version}.json"

    @property
    def manifest_sha256(self) -> str:
        return hashlib.sha256(self.manifest_bytes).hexdigest()


@dataclass
class LocalTree:
    root: Path
    releases: dict[str, LocalRelease] = field(default_factory=dict)
    markers: dict[str, bytes] = field(default_factory=dict)
    """Marker name -> exact file content, only for markers naming a release in the tree."""
    trust_root: bytes | None = None

    @property
    def trust_root_relpath(self) -> str:
        return TRUST_ROOT_RELPATH

    def marker_relpath(self, name: str) -> str:
        return str(marker_path(name))

    def marker_version(self, name: str) -> str:
        return self.markers[name].decode().strip()


@asynccontextmanager
async def tree_lock(root: Path, *, wait_s: float = 0.0) -> AsyncIterator[None]:
    """Hold the tree's lock, so no sync promotes or prunes while it is published; with
    ``wait_s``, poll for it without blocking the event loop (a signal still interrupts)."""
    if not (root / RELEASE_DIR_NAME).is_dir():
        raise LocalStoreError(f"{root}: not a mirror tree (no release/ directory)")
    deadline = time.monotonic() + wait_s
    while True:
        try:
            lock = Store(root).lock()
            lock.__enter__()
        except LockHeldError:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.2)
            continue
        try:
            yield
        finally:
            lock.__exit__(None, None, None)
        return


def read_tree(root: Path) -> LocalTree:
    """(blocking) What the tree holds, checked cheaply (a stat per file): a manifest entry
    whose file is missing or of another size stops the publish (exit 5) before any upload."""
    store = Store(root)
    tree = LocalTree(root)
    for version in store.versions_in_tree():
        path = store.manifest_path(version)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise IntegrityError(
                f"release/{version}: has no manifest (not written by k8s-mirror)",
                hint="remove the directory, or run k8s-mirror sync to re-verify it",
            ) from None
        except OSError as exc:
            raise LocalStoreError(f"{path}: {exc.strerror}") from exc
        manifest = Manifest.from_json(raw.decode("utf-8", "replace"), str(path))
        release = LocalRelease(version, manifest_bytes=raw)
        for rel, record in sorted(manifest.files.items()):
            if not store.present(manifest, rel):
                raise IntegrityError(
                    f"release/{version}/{rel}: in the manifest but missing or of another "
                    "size in the tree; run k8s-mirror verify"
                )
            release.files[rel] = LocalFile(
                f"{RELEASE_DIR_NAME}/{version}/{rel}",
                store.tree_path(version, RelPath(rel)),
                record.size,
                record.sha256,
            )
        tree.releases[version] = release
    for name, target in store.markers().items():
        if target in tree.releases:
            # Published as the bytes on disk, so the bucket mirrors the tree exactly.
            tree.markers[name] = _read_small(root / marker_path(name))
    trust = root / TRUST_ROOT_RELPATH
    if trust.is_file() and not trust.is_symlink():
        tree.trust_root = _read_small(trust)
    return tree


def _read_small(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_SMALL_FILE_BYTES + 1)
    except OSError as exc:
        raise LocalStoreError(f"{path}: {exc.strerror}") from exc
    if len(data) > MAX_SMALL_FILE_BYTES:
        raise IntegrityError(f"{path}: implausibly large for a marker or trust root")
    return data
