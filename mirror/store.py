"""The local tree on disk: lock, staging, atomic promotion, manifests, markers, trust root.

The only module that renames anything into the served tree. Sync and import are two sources
of verified files; both hand them to ``Store.add_files`` (a release already in the tree) or
``Store.promote_release`` (a release new to the tree), then ``Store.move_markers``.

Invariants kept here:

- A file reaches a served path only by ``rename`` from ``<root>/.k8s-mirror/staging`` (same
  filesystem), with its data fsynced before (``fsync_files``, all of a promotion's files at
  once, in parallel) and the directory fsynced after. Staging itself fsyncs nothing: until a
  staged file is renamed in, nothing trusts it without hashing it again (``plan.plan_release``
  re-hashes what an earlier run staged).
- A release new to the tree is assembled in ``staging/<version>`` and appears with one directory
  rename. Files added to a release already in the tree are renamed in one by one, sidecars and
  bundle before the primary file, so a client that sees a file also sees what verifies it.
- The per-release manifest (``manifests/<version>.json``) is written *before* the files it
  describes become visible, so it is always a superset of what is verified in the tree; "already
  present" means "in the manifest and on disk with the recorded size".
- Staged, verified files are journaled (``staging/<version>.journal``) so an interrupted run's
  work is reused by the next one (once re-hashed).
- Markers are plain files written by atomic rename.
- Every directory written through is first proven a real directory inside the root, one
  component at a time (``ensure_dir``): a planted symlink never leads a write outside.
- One writer: ``lock`` is an exclusive ``flock`` on ``.k8s-mirror/lock``; the kernel drops it when
  the process dies, so a killed run never leaves a stale lock.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mirror.atomic import fsync_dir, fsync_files, write_atomic
from mirror.catalog import (
    MARKER_MAX_BYTES,
    RelPath,
    Version,
    is_marker,
    is_version,
    marker_path,
    marker_series_problem,
)
from mirror.errors import LocalStoreError
from mirror.journal import append_journal, read_journal
from mirror.layout import RELEASE_DIR_NAME, TRUST_ROOT_RELPATH, state_dir
from mirror.lock import exclusive_lock
from mirror.manifest import FileRecord, Manifest, promotion_order

__all__ = ["FileRecord", "Manifest", "MarkerMoves", "Store", "fsync_dir", "write_atomic"]

TRUST_ROOT_MAX_BYTES = 16 << 20


@dataclass
class MarkerMoves:
    """What ``Store.move_markers`` did with each marker it was asked to move."""

    moved: dict[str, str] = field(default_factory=dict)
    unchanged: dict[str, str] = field(default_factory=dict)
    incomplete: dict[str, str] = field(default_factory=dict)
    """Not moved: the release it would name is not complete in the tree."""
    refused: dict[str, str] = field(default_factory=dict)
    """Not moved, with why: outside its series or backwards."""


class Store:
    """One mirror tree and its hidden state directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.state = state_dir(root)
        self.staging = self.state / "staging"
        self.partial = self.state / "partial"
        self.manifests = self.state / "manifests"
        self.reports = self.state / "reports"
        self.tmp = self.state / "tmp"
        self._sizes: dict[str, tuple[tuple[int, int, int], Mapping[str, int]]] = {}

    # -- setup and lock ----------------------------------------------------------------------

    def prepare(self) -> None:
        """Create the tree root and state directories (idempotent), refusing symlinks.

        Someone who can plant a symlink at ``release``, ``sigstore`` or anywhere in the state
        directory could make us write outside the root, or swap files between verification
        and promotion: every directory is proven real before anything is written, and the
        release, staging and partial areas are checked one level down too (a planted
        ``staging/<version>`` symlink would otherwise become ``release/<version>``).
        """
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LocalStoreError(f"{exc.filename}: cannot create: {exc.strerror}") from exc
        areas = (self.root / RELEASE_DIR_NAME, self.staging, self.partial)
        for path in (*areas, self.manifests, self.reports, self.tmp):
            self.ensure_dir(path)
        if os.path.lexists(self.trust_root_path.parent):
            self.ensure_dir(self.trust_root_path.parent)
        for area in areas:
            with os.scandir(area) as entries:
                for entry in entries:
                    if entry.is_symlink():
                        raise _symlink_error(Path(entry.path))

    def ensure_dir(self, path: Path) -> Path:
        """Prove ``path`` a real directory inside the root, creating what is missing.

        Every component below the root is checked with ``lstat`` before anything is created
        under it, so a planted symlink (or a file where a directory belongs) is refused before
        a single byte is written through it; raises ``LocalStoreError`` (exit 7).
        """
        try:
            parts = path.relative_to(self.root).parts
        except ValueError:
            raise LocalStoreError(f"{path}: outside the tree {self.root}; refusing") from None
        current = self.root
        for part in parts:
            if part in ("..", "."):
                raise LocalStoreError(f"{path}: not a plain path inside the tree; refusing")
            current = current / part
            try:
                mode = os.lstat(current).st_mode
            except FileNotFoundError:
                try:
                    os.mkdir(current)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise LocalStoreError(f"{current}: cannot create: {exc.strerror}") from exc
                mode = os.lstat(current).st_mode
            except OSError as exc:
                raise LocalStoreError(f"{current}: {exc.strerror}") from exc
            if stat.S_ISLNK(mode):
                raise _symlink_error(current)
            if not stat.S_ISDIR(mode):
                raise LocalStoreError(f"{current}: not a directory; refusing to write through it")
        return path

    def sweep(self) -> None:
        """Remove leftovers of killed runs that no later step would reuse (under the lock)."""
        for leftover in self.tmp.glob(".tmp-*"):
            leftover.unlink(missing_ok=True)
        trash = self.state / "trash"
        if trash.is_dir():
            shutil.rmtree(trash, ignore_errors=True)

    @contextmanager
    def lock(self, *, wait_s: float = 0.0) -> Iterator[None]:
        """Hold the tree's exclusive lock; raise ``LockHeldError`` after ``wait_s``."""
        self.ensure_dir(self.state)
        with exclusive_lock(self.state / "lock", owner=str(self.root), wait_s=wait_s):
            yield

    # -- paths -------------------------------------------------------------------------------

    def release_dir(self, version: str) -> Path:
        return self.root / RELEASE_DIR_NAME / version

    def staged_release_dir(self, version: str) -> Path:
        return self.staging / version

    def staged_path(self, version: str, relpath: RelPath) -> Path:
        return self.staged_release_dir(version) / relpath

    def partial_path(self, version: str, relpath: RelPath) -> Path:
        return self.partial / version / relpath

    def tree_path(self, version: str, relpath: RelPath) -> Path:
        return self.release_dir(version) / relpath

    def release_in_tree(self, version: str) -> bool:
        path = self.release_dir(version)
        refuse_symlink(path)
        return path.is_dir()

    def versions_in_tree(self) -> list[str]:
        base = self.root / RELEASE_DIR_NAME
        if not base.is_dir():
            return []
        return sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))

    # -- manifests ---------------------------------------------------------------------------

    def manifest_path(self, version: str) -> Path:
        return self.manifests / f"{version}.json"

    def load_manifest(self, version: str) -> Manifest:
        path = self.manifest_path(version)
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return Manifest(version)
        except OSError as exc:
            raise LocalStoreError(f"{path}: {exc.strerror}") from exc
        return Manifest.from_json(text, str(path))

    def recorded_sizes(self, version: str) -> Mapping[str, int]:
        """Each path's size as ``version``'s manifest records it, parsed once per state of the
        manifest file (every release's plan asks for the sizes of its newest neighbours: a
        no-change run of ten releases read forty manifests for it)."""
        path = self.manifest_path(version)
        try:
            st = path.stat()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise LocalStoreError(f"{path}: {exc.strerror}") from exc
        key = (st.st_ino, st.st_size, st.st_mtime_ns)
        cached = self._sizes.get(version)
        if cached is not None and cached[0] == key:
            return cached[1]
        sizes = {rel: record.size for rel, record in self.load_manifest(version).files.items()}
        self._sizes[version] = (key, sizes)
        return sizes

    def save_manifest(self, manifest: Manifest) -> None:
        manifest.updated_at = time.time()
        self.ensure_dir(self.manifests)
        self.ensure_dir(self.tmp)
        write_atomic(
            self.manifest_path(manifest.version), manifest.to_json().encode(), tmp_dir=self.tmp
        )

    def present(self, manifest: Manifest, relpath: str) -> bool:
        """In the manifest and on disk at the recorded size (cheap: one stat)."""
        record = manifest.files.get(relpath)
        if record is None:
            return False
        try:
            return self.tree_path(manifest.version, RelPath(relpath)).stat().st_size == record.size
        except OSError:
            return False

    # -- staging journal ---------------------------------------------------------------------

    def journal_path(self, version: str) -> Path:
        return self.staging / f"{version}.journal"

    def load_journal(self, version: str) -> dict[str, FileRecord]:
        """Staged and verified files of ``version`` that are still on disk at their size
        (see ``journal.py``: damaged lines are skipped, never fatal)."""
        return {
            p: r
            for p, r in read_journal(self.journal_path(version)).items()
            if _size_or_none(self.staged_path(version, RelPath(p))) == r.size
        }

    def journal(self, version: str, records: dict[str, FileRecord]) -> None:
        """Append staged records (a hint for the next run: see ``journal.py``)."""
        self.ensure_dir(self.staging)
        append_journal(self.journal_path(version), records)

    def discard_staged(self, version: str, paths: Iterable[str]) -> None:
        """Forget staged files that failed their re-check (the journal keeps stale lines;
        ``load_journal`` drops them once the file is gone or replaced)."""
        for rel in paths:
            self.staged_path(version, RelPath(rel)).unlink(missing_ok=True)

    # -- staging and promotion ---------------------------------------------------------------

    def stage_bytes(self, version: str, relpath: RelPath, data: bytes) -> None:
        self.ensure_dir(self.staged_path(version, relpath).parent)
        self.ensure_dir(self.tmp)
        write_atomic(self.staged_path(version, relpath), data, tmp_dir=self.tmp)

    def stage_verified(
        self,
        version: str,
        companions: Mapping[RelPath, bytes],
        records: dict[str, FileRecord],
        relpath: RelPath,
        part: Path,
    ) -> None:
        """Stage one verified download with its companions and journal them. Nothing here is
        fsynced (five fsyncs per signed file were most of the cost of small files): the tree
        layer makes staged files durable before it renames them into the tree.

        The journal is appended before the download's rename: a run killed before that rename
        leaves a whole partial file, which the next run finishes from disk (416 on resume)
        instead of fetching again. A journal entry whose file did not survive is ignored by
        ``load_journal``, which checks every staged file's size.
        """
        # Written in place, not through a temporary file and a rename: a companion cut off by
        # a crash is caught like any staged file (no journal line, or a re-hash that fails),
        # and renames across directories serialise on one lock per filesystem. O_NOFOLLOW: a
        # symlink planted at a staged name is refused, never written through.
        for name, data in companions.items():
            target = self.staged_path(version, name)
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                with open(os.open(target, flags, 0o644), "wb") as handle:
                    handle.write(data)
            except OSError as exc:
                raise LocalStoreError(f"{target}: cannot stage: {exc.strerror}") from exc
        self.journal(version, records)
        target = self.staged_path(version, relpath)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(part, target)
            part.with_name(part.name + ".meta").unlink(missing_ok=True)
        except OSError as exc:
            raise LocalStoreError(f"{target}: cannot stage: {exc.strerror}") from exc

    def add_files(
        self, manifest: Manifest, records: Mapping[str, FileRecord], staged_dir: Path
    ) -> Manifest:
        """Add verified files waiting in ``staged_dir`` to a release already in the tree.

        Each staged file is fsynced first (staging does not), then the manifest grows (it is
        always a superset of what is visible), then the files are renamed in, companions
        before the primaries they vouch for. Returns the new manifest.
        """
        touched: set[Path] = set()
        ordered = promotion_order(records)
        # Every directory is proven real (no planted symlink leading outside the release)
        # before the manifest grows or anything is renamed.
        for relpath in ordered:
            self.ensure_dir(self.tree_path(manifest.version, relpath).parent)
            self.ensure_dir((staged_dir / relpath).parent)
        fsync_files([staged_dir / relpath for relpath in ordered])
        grown = manifest.merged(records)
        self.save_manifest(grown)
        for relpath in ordered:
            target = self.tree_path(manifest.version, relpath)
            try:
                os.replace(staged_dir / relpath, target)
            except OSError as exc:
                raise LocalStoreError(f"{target}: cannot promote: {exc.strerror}") from exc
            touched.add(target.parent)
        for directory in touched:
            fsync_dir(directory)
        return grown

    def promote_release(self, manifest: Manifest, staged_dir: Path) -> None:
        """Make a fully staged release visible with one directory rename, its manifest
        first: the manifest written, every staged file and directory fsynced (staging fsyncs
        nothing itself), then the rename."""
        version = manifest.version
        source = self.ensure_dir(staged_dir)
        self.ensure_dir(self.root / RELEASE_DIR_NAME)
        target = self.release_dir(version)
        if os.path.lexists(target):
            raise LocalStoreError(f"{target}: already exists; refusing to replace a release")
        files: list[Path] = []
        directories: list[Path] = []
        for dirpath, dirnames, filenames in os.walk(source):
            for name in dirnames:
                if os.path.islink(os.path.join(dirpath, name)):
                    raise _symlink_error(Path(dirpath, name))
            directories.append(Path(dirpath))
            files += [Path(dirpath, name) for name in filenames]
        self.save_manifest(manifest)
        fsync_files(files)
        try:
            for directory in reversed(directories):
                fsync_dir(directory)
            os.rename(source, target)
            fsync_dir(target.parent)
        except OSError as exc:
            raise LocalStoreError(f"{target}: cannot promote release: {exc.strerror}") from exc
        self.journal_path(version).unlink(missing_ok=True)

    def clear_staging_except(self, keep: set[str]) -> None:
        """Drop staging and partial files of every release not in ``keep``."""
        for area in (self.staging, self.partial):
            if not area.is_dir():
                continue
            for entry in area.iterdir():
                name = entry.name.removesuffix(".journal")
                if (entry.is_dir() or entry.name.endswith(".journal")) and name not in keep:
                    self.clear_staging(name)

    def clear_staging(self, version: str) -> None:
        """Drop the (now empty or promoted) staging area of a release."""
        shutil.rmtree(self.staged_release_dir(version), ignore_errors=True)
        self.journal_path(version).unlink(missing_ok=True)
        shutil.rmtree(self.partial / version, ignore_errors=True)

    # -- removal (prune) ---------------------------------------------------------------------

    def remove_release(self, version: str) -> None:
        """Take a release out of the served tree with one rename, then delete it."""
        trash = self.state / "trash"
        trash.mkdir(parents=True, exist_ok=True)
        graveyard = trash / f"{version}-{time.time_ns()}"
        os.rename(self.release_dir(version), graveyard)
        fsync_dir(self.root / RELEASE_DIR_NAME)
        self.manifest_path(version).unlink(missing_ok=True)
        shutil.rmtree(graveyard)

    # -- markers and other tree files --------------------------------------------------------

    def read_marker(self, name: str) -> str | None:
        try:
            with open(self.root / marker_path(name), "rb") as handle:
                return handle.read(MARKER_MAX_BYTES + 1).decode("ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None

    def markers(self) -> dict[str, str]:
        """Every marker file in the tree and the version it names (as written, unchecked)."""
        base = self.root / RELEASE_DIR_NAME
        if not base.is_dir():
            return {}
        found = {}
        for entry in sorted(base.glob("*.txt")):
            name = entry.name.removesuffix(".txt")
            if is_marker(name) and entry.is_file() and not entry.is_symlink():
                found[name] = self.read_marker(name) or ""
        return found

    def marker_move_problem(self, name: str, version: str) -> str | None:
        """Why marker ``name`` must not be moved to ``version``: outside its series, or
        backwards from what the tree has (a downgrade upstream never does); None if fine."""
        target = Version.parse(version)
        problem = marker_series_problem(name, target)
        if problem is not None:
            return problem
        current = self.read_marker(name)
        if current and is_version(current) and target < Version.parse(current):
            return f"{name} would move back from {current} to {version}"
        return None

    def move_markers(
        self, wanted: Mapping[str, str], complete: Callable[[str], bool]
    ) -> MarkerMoves:
        """The last step of a run: point each marker at its version, but only at a release
        ``complete`` says is whole in the tree, and never outside its series or backwards."""
        moves = MarkerMoves()
        for name, version in sorted(wanted.items()):
            if not complete(version):
                moves.incomplete[name] = version
            elif self.read_marker(name) == version:
                moves.unchanged[name] = version
            elif (problem := self.marker_move_problem(name, version)) is not None:
                moves.refused[name] = problem
            else:
                self.ensure_dir((self.root / marker_path(name)).parent)
                write_atomic(self.root / marker_path(name), version.encode(), tmp_dir=self.tmp)
                moves.moved[name] = version
        return moves

    def release_complete(self, version: str) -> bool:
        """In the tree, with a manifest whose every file is on disk at its recorded size."""
        if not self.release_in_tree(version):
            return False
        manifest = self.load_manifest(version)
        return bool(manifest.files) and all(self.present(manifest, p) for p in manifest.files)

    # -- the trust root ----------------------------------------------------------------------

    @property
    def trust_root_path(self) -> Path:
        return self.root / TRUST_ROOT_RELPATH

    def trust_root(self) -> bytes | None:
        """The trust root the tree's bundles were verified against, if it has one (None also
        for an implausibly large file: never a silently truncated one)."""
        try:
            with open(self.trust_root_path, "rb") as handle:
                data = handle.read(TRUST_ROOT_MAX_BYTES + 1)
        except OSError:
            return None
        return data if len(data) <= TRUST_ROOT_MAX_BYTES else None

    def write_trust_root(self, data: bytes) -> bool:
        """Store the trust root (before any bundle that needs it); False if unchanged."""
        if self.trust_root() == data:
            return False
        self.ensure_dir(self.trust_root_path.parent)
        self.ensure_dir(self.tmp)
        write_atomic(self.trust_root_path, data, tmp_dir=self.tmp)
        return True


def refuse_symlink(path: Path) -> None:
    if path.is_symlink():
        raise _symlink_error(path)


def _symlink_error(path: Path) -> LocalStoreError:
    return LocalStoreError(
        f"{path}: is a symlink; refusing to write through it (it may lead outside the tree)",
        hint="k8s-mirror writes only into real directories inside the tree; remove the link",
    )


def _size_or_none(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None
