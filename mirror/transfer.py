"""Air-gap transfer: the on-media formats and the offline side's import (issue 5).

Owns three things:

- The *stream*: one POSIX (pax) tar in tree layout, regular files only. Members are the served
  files of each carried release (``release/<v>/...``), the tree's trust root
  (``sigstore/trusted_root.json``), each carried release's manifest
  (``.k8s-mirror/manifests/<v>.json``, the only state the far side needs) and the markers
  (``release/<name>.txt``). Extracting a full stream into an empty directory gives a tree that
  ``k8s-mirror verify`` passes. ``fetch --archive`` writes exactly this stream to one file
  (``.tar``, ``.tar.gz`` or ``.tar.xz``).
- A *transfer set* (``k8s-mirror export``): a directory holding that stream cut into byte
  ranges ``part-0001.tar``, ``part-0002.tar``, ... of at most ``--max-part-size`` bytes
  (``cat part-*.tar`` is the stream), and ``toc.json``, written last, listing every part and
  every member with size and sha256, the carried manifests, what each carried release still
  needs from the target tree (``requires``), the markers, and the state of the whole source tree
  (the baseline for the next ``--since``).
- *Import* (``k8s-mirror import``): parts are checked against the toc (one pass over the media,
  the part named on any mismatch), members are refused unless they are regular files at safe
  tree paths, unpacked into ``<root>/.k8s-mirror/staging/import-*`` (same filesystem),
  re-verified offline exactly like ``verify`` (``TreeAudit.check_files``: digests, sidecars,
  SUMS, Sigstore bundles against a trust root this side already trusts), and only then promoted
  under the tree's lock: a release new to the tree with one directory rename, files added to a
  release already there one by one after its manifest, markers last and only for releases
  complete in the tree. Staging is removed on every path out.

Everything here is plain blocking I/O driven by the CLI: no event loop is involved.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import gzip
import hashlib
import io
import json
import logging
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, NoReturn, Protocol

from mirror import __version__, catalog
from mirror.audit import TreeAudit, reader
from mirror.binding import tags_in
from mirror.catalog import RelPath, Version
from mirror.check import Binder, BindingPolicy, check_release, check_signing_policy
from mirror.config import IdentityConfig
from mirror.digest import Digests
from mirror.errors import (
    ConfigError,
    IntegrityError,
    LocalStoreError,
    MirrorError,
    TreeVerifyError,
    UnsafePathError,
)
from mirror.layout import (
    RELEASE_DIR_NAME,
    STATE_DIR_NAME,
    TRUST_ROOT_RELPATH,
)
from mirror.store import FileRecord, Manifest, Store, fsync_dir, write_atomic
from mirror.tarinfo import BoundedTarInfo, member_type
from mirror.verify import is_embedded_production_root

log = logging.getLogger(__name__)

TOC_NAME = "toc.json"
TOC_FORMAT = 1
TOC_KIND = "k8s-mirror-transfer-set"
PART_NAME = "part-{:04d}.tar"
PART_RE = re.compile(r"^part-\d{4,}\.tar$")
DEFAULT_MAX_PART_SIZE = 4 << 30
MIN_PART_SIZE = 1024
MANIFEST_PREFIX = f"{STATE_DIR_NAME}/manifests/"
ARCHIVE_END = f"{STATE_DIR_NAME}/archive-end.json"
"""Last member of a ``fetch --archive`` file: every member before it, with size and sha256.
A tar stream cut at a member boundary still reads as a whole archive; this record does not."""
IMPORT_STAGING_PREFIX = "import-"
ARCHIVE_SUFFIXES = {".tar": "", ".tar.gz": "gz", ".tgz": "gz", ".tar.xz": "xz", ".txz": "xz"}

CHUNK = 1 << 20
MAX_MANIFEST_BYTES = 64 << 20
MAX_TRUST_ROOT_BYTES = 16 << 20
MAX_MARKER_BYTES = 64
MAX_TOC_BYTES = 16 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SIZE_RE = re.compile(r"^(\d+)([KMGT]?)(i?B)?$", re.IGNORECASE)


# --- small helpers --------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """``4G``, ``700M``, ``64K`` or plain bytes; K/M/G/T are powers of 1024."""
    match = _SIZE_RE.match(text.strip())
    if match is None:
        raise ConfigError(
            f"{text!r} is not a size like 4G, 700M or 1048576", source="--max-part-size"
        )
    value = int(match[1]) << (10 * " KMGT".index((match[2] or " ").upper()))
    if value < MIN_PART_SIZE:
        raise ConfigError(f"must be at least {MIN_PART_SIZE} bytes", source="--max-part-size")
    return value


def archive_compression(path: Path) -> str:
    """Compression of a ``fetch --archive`` file by its suffix: ``""``, ``gz`` or ``xz``."""
    name = path.name.lower()
    for suffix, compression in sorted(ARCHIVE_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix) and len(name) > len(suffix):
            return compression
    raise ConfigError(
        f"{path.name}: unknown archive type; use .tar, .tar.gz (.tgz) or .tar.xz (.txz)",
        source="--archive",
    )


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and _HEX64.match(value) is not None


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


class _Background:
    """Runs calls on one worker thread, in order, with at most ``depth`` pending.

    Export and import move every byte through two or three hashes and a write; done in one
    thread that leaves a core idle. The caller reads and hashes, the worker hashes and writes
    (hashlib and file writes release the GIL on large buffers), so both cores work. A call's
    exception surfaces in the caller at the next ``submit`` or ``wait``.
    """

    def __init__(self, depth: int = 4) -> None:
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


class _Deferred:
    """A sink whose writes run on a ``_Background`` worker."""

    def __init__(self, sink: _Sink, background: _Background) -> None:
        self.sink = sink
        self.background = background

    def write(self, data: bytes, /) -> None:
        self.background.submit(self.sink.write, data)


# --- what a member of the stream is -----------------------------------------------------------


@dataclass(frozen=True)
class Member:
    """A tar member's name, checked and classified."""

    name: str
    kind: str
    """``release-file``, ``manifest``, ``marker``, ``trust-root`` or ``archive-end``."""
    version: str = ""
    relpath: str = ""
    """Path inside the release (``release-file``) or the marker's name (``marker``)."""


def classify_member(name: str) -> Member:
    """Which file of a tree ``name`` is; ``UnsafePathError`` for anything a tree cannot hold."""
    if name == ARCHIVE_END:
        return Member(name, "archive-end")
    if name.startswith(MANIFEST_PREFIX):
        stem = name[len(MANIFEST_PREFIX) :].removesuffix(".json")
        if name.endswith(".json") and catalog.is_version(stem):
            return Member(name, "manifest", version=stem)
        raise UnsafePathError(f"{name!r}: the only state a set carries is release manifests")
    path = RelPath(name)  # raises UnsafePathError: absolute, '..', hidden, control chars ...
    if path == TRUST_ROOT_RELPATH:
        return Member(name, "trust-root")
    parts = path.parts
    if parts[0] == RELEASE_DIR_NAME and len(parts) == 2 and parts[1].endswith(".txt"):
        marker = parts[1].removesuffix(".txt")
        if catalog.is_marker(marker):
            return Member(name, "marker", relpath=marker)
    if parts[0] == RELEASE_DIR_NAME and len(parts) >= 3 and catalog.is_version(parts[1]):
        return Member(name, "release-file", version=parts[1], relpath="/".join(parts[2:]))
    raise UnsafePathError(f"{name!r}: not a file a mirror tree carries")


# --- writing the stream -----------------------------------------------------------------------


class _Sink(Protocol):
    def write(self, data: bytes, /) -> object: ...


@dataclass(frozen=True)
class Entry:
    """A file (or part) with its size and sha256, as toc.json lists it."""

    path: str
    size: int
    sha256: str

    def to_json(self, key: str = "path") -> dict[str, Any]:
        return {key: self.path, "size": self.size, "sha256": self.sha256}


class _PartSink:
    """Cuts one byte stream into ``part-0001.tar``, ... of at most ``max_size`` bytes each,
    hashing every part as it goes. Parts are created exclusively and
    fsynced; ``abort`` removes every part this sink created."""

    def __init__(self, directory: Path, max_size: int) -> None:
        self.directory = directory
        self.max_size = max_size
        self.parts: list[Entry] = []
        self.created: list[Path] = []
        self.stream_size = 0
        self._handle: IO[bytes] | None = None
        self._hash = hashlib.sha256()
        self._size = 0

    def write(self, data: bytes, /) -> None:
        view = memoryview(data)
        self.stream_size += len(view)
        while view:
            if self._handle is None:
                self._open_next()
            assert self._handle is not None
            chunk = view[: self.max_size - self._size]
            try:
                self._handle.write(chunk)
            except OSError as exc:
                raise LocalStoreError(f"{self._handle.name}: cannot write: {exc.strerror}") from exc
            self._hash.update(chunk)
            self._size += len(chunk)
            view = view[len(chunk) :]
            if self._size == self.max_size:
                self._close_current()

    def _open_next(self) -> None:
        path = self.directory / PART_NAME.format(len(self.parts) + 1)
        try:
            self._handle = open(path, "xb")  # noqa: SIM115 - closed in _close_current/abort
        except OSError as exc:
            raise LocalStoreError(f"{path}: cannot create: {exc.strerror}") from exc
        self.created.append(path)
        self._hash = hashlib.sha256()
        self._size = 0

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
        self.parts.append(Entry(Path(handle.name).name, self._size, self._hash.hexdigest()))

    def close(self) -> None:
        self._close_current()
        fsync_dir(self.directory)

    def abort(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        for path in self.created:
            path.unlink(missing_ok=True)


class _TarWriter:
    """A minimal tar writer: headers from ``tarfile`` (pax format), data copied in large
    chunks and hashed on the way (``tarfile.addfile`` copies 16 KiB at a time and its stream
    mode re-slices its buffer on every block, both slow for GB-sized releases)."""

    def __init__(self, sink: _Sink) -> None:
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
        self.files.append(Entry(name, len(data), hashlib.sha256(data).hexdigest()))

    def add_file(self, name: str, path: Path, record: FileRecord) -> None:
        """Copy a verified tree file, refusing it unless it still is what its manifest says."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            raise IntegrityError(
                f"{name}: in the manifest but unreadable in the tree ({exc.strerror}); "
                "run k8s-mirror verify"
            ) from None
        with open(fd, "rb") as handle:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size != record.size:
                raise IntegrityError(
                    f"{name}: not the {record.size}-byte file its manifest records; "
                    "run k8s-mirror verify"
                )
            self._header(name, record.size, info.st_mtime)
            digest = hashlib.sha256()
            copied = 0
            while copied < record.size:
                block = handle.read(min(CHUNK, record.size - copied))
                if not block:
                    break
                digest.update(block)
                self._write(block)
                copied += len(block)
        if copied != record.size or digest.hexdigest() != record.sha256:
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


# --- what an export carries -------------------------------------------------------------------


@dataclass(frozen=True)
class Since:
    """The baseline of an incremental export."""

    label: str
    state: Mapping[str, Mapping[str, str]] | None = None
    """``toc``: every release's ``{relpath: sha256}`` at the time of an earlier export."""
    timestamp: float | None = None
    """``report``/date: files newer than this (see ``_changed_since``)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": "toc" if self.state is not None else "time",
            "from": self.label,
            "time": _iso(self.timestamp) if self.timestamp is not None else None,
        }


def parse_since(text: str) -> Since:
    """``--since``: an earlier transfer set (its directory or toc.json), a run report, or an
    ISO date/datetime (UTC unless it carries an offset)."""
    path = Path(text)
    if path.is_dir() and (path / TOC_NAME).is_file():
        path = path / TOC_NAME
    if path.is_file():
        try:
            data = json.loads(path.read_bytes())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{path}: unreadable: {exc}", source="--since") from None
        if isinstance(data, dict) and data.get("kind") == TOC_KIND:
            state = data.get("state")
            if not isinstance(state, dict) or not all(
                isinstance(files, dict) and all(_is_sha256(h) for h in files.values())
                for files in state.values()
            ):
                raise ConfigError(f"{path}: toc.json without a usable state", source="--since")
            return Since(str(path), state=state)
        if isinstance(data, dict) and isinstance(data.get("started_at"), str):
            return Since(str(path), timestamp=_parse_time(data["started_at"], str(path)))
        raise ConfigError(
            f"{path}: neither a transfer set's toc.json nor a run report", source="--since"
        )
    return Since(text, timestamp=_parse_time(text, text))


def _parse_time(text: str, source: str) -> float:
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"{source}: not a file, nor an ISO date like 2025-06-01 or 2025-06-01T12:00:00Z",
            source="--since",
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


@dataclass
class _ExportRelease:
    version: str
    manifest: Manifest
    manifest_bytes: bytes
    carry: list[str]
    requires: dict[str, str]


@dataclass
class ExportResult:
    output: Path
    parts: list[Entry] = field(default_factory=list)
    files: int = 0
    stream_bytes: int = 0
    releases: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Carried releases: (files carried, files required from the target)."""
    markers: dict[str, str] = field(default_factory=dict)
    incremental: bool = False


class _Exporter:
    """Reads a tree under its lock and writes its stream; only manifest-recorded files."""

    def __init__(self, store: Store, releases: Sequence[str], since: Since | None) -> None:
        self.store = store
        self.only = list(releases)
        self.since = since
        self.plan: list[_ExportRelease] = []
        self.markers: dict[str, str] = {}
        self.state: dict[str, dict[str, str]] = {}

    def make_plan(self) -> None:
        in_tree = self.store.versions_in_tree()
        for name in self.only:
            if name not in in_tree:
                raise ConfigError(f"release {name} is not in the tree", source="--release")
        for version in self.only or in_tree:
            path = self.store.manifest_path(version)
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                raise IntegrityError(
                    f"release/{version}: has no manifest (not written by k8s-mirror)",
                    hint="leave it out with --release for each release to export",
                ) from None
            except OSError as exc:
                raise LocalStoreError(f"{path}: {exc.strerror}") from exc
            manifest = Manifest.from_json(raw.decode("utf-8", "replace"), str(path))
            for rel in manifest.files:
                if not self.store.present(manifest, rel):
                    raise IntegrityError(
                        f"release/{version}/{rel}: in the manifest but missing or of another "
                        "size in the tree; run k8s-mirror verify"
                    )
            self.state[version] = {p: r.sha256 for p, r in sorted(manifest.files.items())}
            carry = [rel for rel in sorted(manifest.files) if self._changed(manifest, rel)]
            carried = set(carry)
            requires = {
                rel: manifest.files[rel].sha256
                for rel in sorted(manifest.files)
                if rel not in carried
            }
            if carry:
                self.plan.append(_ExportRelease(version, manifest, raw, carry, requires))
        wanted = set(self.state)
        base = self.store.root / RELEASE_DIR_NAME
        for path in sorted(base.glob("*.txt")):
            name = path.name.removesuffix(".txt")
            target = self.store.read_marker(name) if catalog.is_marker(name) else None
            if target in wanted and _regular_file(path):
                self.markers[name] = target
        signed = any(
            r.check == "sigstore" for rel in self.plan for r in rel.manifest.files.values()
        )
        if signed and not _regular_file(self.store.root / TRUST_ROOT_RELPATH):
            raise IntegrityError(f"{TRUST_ROOT_RELPATH}: missing, but the tree has signed files")

    def _changed(self, manifest: Manifest, rel: str) -> bool:
        """Whether ``rel`` goes into the set (always, without ``--since``)."""
        if self.since is None:
            return True
        record = manifest.files[rel]
        if self.since.state is not None:
            return self.since.state.get(manifest.version, {}).get(rel) != record.sha256
        assert self.since.timestamp is not None
        # The store rewrites a release's manifest before any file is added to it, so an older
        # manifest means nothing in the release changed. Within a changed release, a file
        # counts as new if written (mtime) or renamed into the tree (ctime) since then.
        if manifest.updated_at < self.since.timestamp:
            return False
        info = self.store.tree_path(manifest.version, RelPath(rel)).stat()
        return max(info.st_mtime, info.st_ctime) >= self.since.timestamp

    def write(self, writer: _TarWriter) -> None:
        """Trust root first, each release's manifest before its files, markers last."""
        trust = self.store.root / TRUST_ROOT_RELPATH
        if _regular_file(trust):
            data = trust.read_bytes()
            if len(data) > MAX_TRUST_ROOT_BYTES:
                raise IntegrityError(f"{TRUST_ROOT_RELPATH}: implausibly large")
            writer.add_bytes(TRUST_ROOT_RELPATH, data, trust.stat().st_mtime)
        for release in self.plan:
            name = f"{MANIFEST_PREFIX}{release.version}.json"
            writer.add_bytes(name, release.manifest_bytes, release.manifest.updated_at)
            for rel in release.carry:
                writer.add_file(
                    f"{RELEASE_DIR_NAME}/{release.version}/{rel}",
                    self.store.tree_path(release.version, RelPath(rel)),
                    release.manifest.files[rel],
                )
        for marker, version in sorted(self.markers.items()):
            writer.add_bytes(str(catalog.marker_path(marker)), version.encode(), time.time())

    def toc(self, writer: _TarWriter, sink: _PartSink) -> dict[str, Any]:
        return {
            "format": TOC_FORMAT,
            "kind": TOC_KIND,
            "created_at": _iso(time.time()),
            "created_by": f"k8s-mirror {__version__}",
            "incremental": self.since is not None,
            "since": self.since.to_json() if self.since is not None else None,
            "stream": {
                "layout": "one POSIX tar stream; parts are consecutive byte ranges of it",
                "size": sink.stream_size,
            },
            "parts": [p.to_json("name") for p in sink.parts],
            "files": [f.to_json() for f in writer.files],
            "releases": {
                r.version: {
                    "carried": len(r.carry),
                    "requires": r.requires,
                    "manifest": json.loads(r.manifest_bytes),
                }
                for r in self.plan
            },
            "markers": dict(sorted(self.markers.items())),
            "state": self.state,
        }


def _check_root(root: Path) -> Store:
    if not (root / RELEASE_DIR_NAME).is_dir():
        raise LocalStoreError(f"{root}: not a mirror tree (no release/ directory)")
    return Store(root)


def _prepare_output(output: Path, root: Path) -> bool:
    """An empty directory of its own for the set; True if we created it."""
    if output.resolve().is_relative_to(root.resolve()):
        raise ConfigError(f"{output}: inside the tree being exported", source="--output")
    if output.exists():
        if not output.is_dir() or any(output.iterdir()):
            raise ConfigError(
                f"{output}: exists and is not an empty directory; a transfer set needs its own",
                source="--output",
            )
        return False
    try:
        output.mkdir(parents=True)
    except OSError as exc:
        raise LocalStoreError(f"{output}: cannot create: {exc.strerror}") from exc
    return True


def export_set(
    root: Path,
    output: Path,
    *,
    since: str | None = None,
    max_part_size: int = DEFAULT_MAX_PART_SIZE,
    releases: Sequence[str] = (),
    lock_wait_s: float = 0.0,
) -> ExportResult:
    """Write a transfer set of the tree at ``root`` into the empty directory ``output``."""
    store = _check_root(root)
    baseline = parse_since(since) if since is not None else None
    created = _prepare_output(output, root)
    sink = _PartSink(output, max_part_size)
    background = _Background()
    try:
        with store.lock(wait_s=lock_wait_s):
            exporter = _Exporter(store, releases, baseline)
            exporter.make_plan()
            writer = _TarWriter(_Deferred(sink, background))
            exporter.write(writer)
            writer.close()
            background.wait()
            sink.close()
            # The toc is written last: a directory without toc.json is no transfer set.
            toc = exporter.toc(writer, sink)
            write_atomic(output / TOC_NAME, json.dumps(toc, indent=1).encode())
    except BaseException:
        background.close()
        sink.abort()
        if created:
            shutil.rmtree(output, ignore_errors=True)
        raise
    finally:
        background.close()
    return ExportResult(
        output=output,
        parts=sink.parts,
        files=len(writer.files),
        stream_bytes=sink.stream_size,
        releases={r.version: (len(r.carry), len(r.requires)) for r in exporter.plan},
        markers=exporter.markers,
        incremental=baseline is not None,
    )


# --- fetch --archive ----------------------------------------------------------------------------

_FETCH_TMP_TAG = ".k8s-mirror-fetch-"


@contextmanager
def temporary_tree(archive: Path) -> Iterator[Path]:
    """A private directory beside ``archive`` (same filesystem, so the finished archive is
    renamed into place), removed on the way out whatever happens. Leftovers of killed runs
    for the same archive name are removed first."""
    parent = archive.parent
    if not parent.is_dir():
        raise ConfigError(f"{parent}: no such directory", source="--archive")
    prefix = f".{archive.name}{_FETCH_TMP_TAG}"
    for stale in parent.glob(prefix + "*"):
        pid_text = stale.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(stale, ignore_errors=True)
    try:
        work = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise LocalStoreError(f"{parent}: cannot create a work directory: {exc.strerror}") from exc
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_archive(root: Path, archive: Path, work: Path) -> ExportResult:
    """The whole tree at ``root`` as one stream in ``archive`` (compressed by its suffix),
    written under ``work`` and renamed into place only once complete."""
    compression = archive_compression(archive)
    store = _check_root(root)
    partial = work / f"{archive.name}.partial"
    log.info("writing %s", archive)
    background = _Background()
    with store.lock():
        exporter = _Exporter(store, (), None)
        exporter.make_plan()
        try:
            with open(partial, "xb") as raw:
                compressor: gzip.GzipFile | lzma.LZMAFile | None = None
                if compression == "gz":
                    # Level 6 as gzip(1) uses: GzipFile's default 9 is far slower for ~1 % less.
                    compressor = gzip.GzipFile(
                        filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6
                    )
                elif compression == "xz":
                    compressor = lzma.LZMAFile(raw, "wb")  # noqa: SIM115 - closed below
                try:
                    # Compression and writing run on the worker, reading and hashing here.
                    writer = _TarWriter(_Deferred(compressor or raw, background))
                    exporter.write(writer)
                    end = {"format": 1, "members": [e.to_json() for e in writer.files]}
                    writer.add_bytes(ARCHIVE_END, json.dumps(end).encode(), time.time())
                    writer.close()
                    background.wait()
                finally:
                    background.close()
                    # Also on errors: an unclosed compressor would write to a closed file later.
                    if compressor is not None:
                        compressor.close()
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(partial, archive)
            fsync_dir(archive.parent)
        except OSError as exc:
            raise LocalStoreError(f"{archive}: cannot write: {exc.strerror or exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
    return ExportResult(
        output=archive,
        files=len(writer.files),
        stream_bytes=archive.stat().st_size,
        releases={r.version: (len(r.carry), 0) for r in exporter.plan},
        markers=exporter.markers,
    )


# --- reading a transfer set -------------------------------------------------------------------


def _bad_toc(path: Path, what: str) -> IntegrityError:
    return IntegrityError(f"{path}: malformed toc: {what}")


def _entry(path: Path, item: object, key: str) -> Entry:
    if (
        not isinstance(item, dict)
        or not isinstance(item.get(key), str)
        or isinstance(item.get("size"), bool)
        or not isinstance(item.get("size"), int)
        or item["size"] < 0
        or not _is_sha256(item.get("sha256"))
    ):
        raise _bad_toc(path, f"bad entry {str(item)[:80]}")
    return Entry(item[key], item["size"], item["sha256"])


def _manifest_from(source: str, version: str, data: object) -> Manifest:
    """A carried manifest: parsed, named as expected, every path safe."""
    try:
        manifest = Manifest.from_json(json.dumps(data), source)
    except LocalStoreError as exc:
        raise IntegrityError(str(exc)) from None
    if manifest.version != version:
        raise IntegrityError(f"{source}: manifest of {manifest.version!r}, expected {version}")
    for rel in manifest.files:
        try:
            RelPath(rel)
        except UnsafePathError as exc:
            raise UnsafePathError(f"{source}: {exc}") from None
    return manifest


@dataclass
class Toc:
    """A transfer set's table of contents, validated."""

    path: Path
    parts: list[Entry]
    files: list[Entry]
    manifests: dict[str, Manifest]
    markers: dict[str, str]

    @classmethod
    def load(cls, path: Path) -> Toc:
        try:
            if path.stat().st_size > MAX_TOC_BYTES:
                raise _bad_toc(path, "implausibly large")
            data = json.loads(path.read_bytes())
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}", source="import") from None
        except ValueError as exc:
            raise _bad_toc(path, f"not JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("kind") != TOC_KIND:
            raise _bad_toc(path, "not a k8s-mirror transfer set")
        if data.get("format") != TOC_FORMAT:
            raise _bad_toc(path, f"unknown format {data.get('format')!r}")
        parts_raw, files_raw = data.get("parts"), data.get("files")
        releases, markers = data.get("releases"), data.get("markers")
        if not isinstance(parts_raw, list) or not isinstance(files_raw, list):
            raise _bad_toc(path, "parts and files must be lists")
        if not isinstance(releases, dict) or not isinstance(markers, dict):
            raise _bad_toc(path, "releases and markers must be objects")
        parts = [_entry(path, p, "name") for p in parts_raw]
        for i, part in enumerate(parts, start=1):
            # Part names come from the media: only the names export writes, in order.
            if part.path != PART_NAME.format(i) or not PART_RE.match(part.path):
                raise _bad_toc(path, f"part {i} is named {part.path!r}")
        files = [_entry(path, f, "path") for f in files_raw]
        if len({f.path for f in files}) != len(files):
            raise _bad_toc(path, "a file is listed twice")
        manifests = {}
        for version, info in releases.items():
            if not catalog.is_version(version) or not isinstance(info, dict):
                raise _bad_toc(path, f"bad release entry {version!r}")
            manifests[version] = _manifest_from(
                f"{path} ({version})", version, info.get("manifest")
            )
        checked_markers = {}
        for name, version in markers.items():
            if not catalog.is_marker(name) or not isinstance(version, str):
                raise _bad_toc(path, f"bad marker {name!r}")
            checked_markers[name] = catalog.parse_marker_body(name, version).text
        return cls(path, parts, files, manifests, checked_markers)


class _PartsReader(io.RawIOBase):
    """The parts of a set read back to back as one stream, each checked against the toc as
    its end is reached (so the media is read once)."""

    def __init__(self, directory: Path, parts: Sequence[Entry]) -> None:
        super().__init__()
        self.directory = directory
        self.parts = list(parts)
        self.index = 0
        self._handle: io.BufferedReader | None = None
        self._hash = hashlib.sha256()
        self._read = 0

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
                self._read += n
                if self._read > self.parts[self.index].size:
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
        self._hash = hashlib.sha256()
        self._read = 0

    def _finish_part(self) -> None:
        part = self.parts[self.index]
        if self._read != part.size:
            self._fail(f"{self._read} bytes, toc.json says {part.size}: truncated")
        if self._hash.hexdigest() != part.sha256:
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
        buffer = bytearray(CHUNK)
        current = self.index
        while self.index == current and self.readinto(buffer):
            pass

    def drain(self) -> None:
        """Read (and so check) everything after the tar end-of-archive marker."""
        buffer = bytearray(CHUNK)
        while self.readinto(buffer):
            pass

    def close(self) -> None:
        self._close_handle()
        super().close()


# --- import -----------------------------------------------------------------------------------


@dataclass
class _Release:
    """One release of the set, planned against the target tree."""

    version: str
    carried: Manifest
    in_root: bool
    merged: Manifest
    needed: set[str] = field(default_factory=set)
    present: int = 0


@dataclass
class ImportResult:
    source: Path
    new_releases: list[str] = field(default_factory=list)
    updated_releases: list[str] = field(default_factory=list)
    files_imported: int = 0
    bytes_imported: int = 0
    files_present: int = 0
    markers_moved: dict[str, str] = field(default_factory=dict)
    markers_skipped: dict[str, str] = field(default_factory=dict)
    trust_root_written: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.files_imported or self.markers_moved or self.trust_root_written)


class _Importer:
    def __init__(
        self,
        root: Path,
        source: Path,
        *,
        identities: Sequence[IdentityConfig],
        trusted_root: Path | None,
        allow_unsigned: bool,
        binding: BindingPolicy | None = None,
    ) -> None:
        self.store = Store(root)
        self.root = root
        self.source = source
        self.identities = identities
        self.trusted_root = trusted_root
        self.allow_unsigned = allow_unsigned
        self.binding = binding or BindingPolicy()
        self.work = self.store.staging / f"{IMPORT_STAGING_PREFIX}{os.getpid()}-{time.time_ns()}"
        self.releases: dict[str, _Release] = {}
        self.digests: dict[str, dict[str, Digests]] = {}
        """Files unpacked into staging, by release: what they hashed to on the way in."""
        self.markers: dict[str, str] = {}
        self.member_manifests: dict[str, Manifest] = {}
        self.member_markers: dict[str, str] = {}
        self.archive_end: bytes | None = None
        self.member_digests: dict[str, tuple[int, str]] = {}
        self.skipped_members: set[str] = set()
        self.set_trust_root: bytes | None = None
        self.result = ImportResult(source)
        self.background = _Background()

    # -- staging paths -----------------------------------------------------------------------

    def staged_release(self, version: str) -> Path:
        return self.work / RELEASE_DIR_NAME / version

    def locate(self, version: str) -> Callable[[str], Path]:
        """A release's files as they would be after the import: staged, else the tree's."""
        staged = self.digests.get(version, {})

        def where(rel: str) -> Path:
            if rel in staged:
                return self.staged_release(version) / rel
            return self.store.tree_path(version, RelPath(rel))

        return where

    def reader(self, version: str) -> Callable[[str], bytes | None]:
        return reader(self.locate(version))

    # -- driver ------------------------------------------------------------------------------

    def run_toc(self, toc: Toc) -> None:
        reader = _PartsReader(toc.path.parent, toc.parts)
        reader.check_sizes()
        self.markers = dict(toc.markers)
        self._plan(toc.manifests, _by_release(toc.files))
        expected = {f.path: f for f in toc.files}
        seen: set[str] = set()
        try:
            with tarfile.open(
                fileobj=reader, mode="r|", bufsize=CHUNK, tarinfo=BoundedTarInfo
            ) as tar:
                self._read_members(tar, expected, seen)
            reader.drain()
        except (MirrorError, tarfile.TarError, EOFError, zlib.error) as exc:
            # Whatever went wrong inside a corrupt part is best reported as that part.
            reader.finish_current()
            if isinstance(exc, MirrorError):
                raise
            raise IntegrityError(f"{toc.path.parent}: not a valid tar stream: {exc}") from None
        finally:
            reader.close()
        for name in expected:
            if name not in seen:
                raise IntegrityError(f"{name}: listed in {toc.path} but not in the parts")
        for version, manifest in toc.manifests.items():
            carried = self.member_manifests.get(version)
            if carried is None or carried.files != manifest.files:
                raise IntegrityError(f"{MANIFEST_PREFIX}{version}.json: disagrees with {toc.path}")
        if self.member_markers != toc.markers:
            raise IntegrityError(f"{toc.path}: its markers disagree with the marker files")

    def run_archive(self) -> None:
        try:
            with tarfile.open(
                self.source, mode="r|*", bufsize=CHUNK, tarinfo=BoundedTarInfo
            ) as tar:
                self._read_members(tar, None, set())
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise IntegrityError(f"{self.source}: not a valid tar archive: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{self.source}: {exc.strerror or exc}", source="import") from None
        self._check_archive_end()
        files: dict[str, dict[str, Entry]] = {}
        for version, digests in self.digests.items():
            if version not in self.member_manifests:
                raise IntegrityError(
                    f"{self.source}: carries files of release/{version} but not its manifest"
                )
            files[version] = {rel: Entry(rel, d.size_bytes, d.sha256) for rel, d in digests.items()}
        self.markers = dict(self.member_markers)
        self._plan(self.member_manifests, files)
        # Files identical to what the tree already has are not promoted again.
        for version, digests in self.digests.items():
            needed = self.releases[version].needed
            for rel in [r for r in digests if r not in needed]:
                del digests[rel]

    def _check_archive_end(self) -> None:
        """The end record must list exactly the members read, with their sizes and digests
        (members not needed here were only sized; their digests are checked when staged)."""
        if self.archive_end is None:
            raise IntegrityError(
                f"{self.source}: no end record: the archive is truncated or not from "
                "k8s-mirror fetch --archive"
            )
        try:
            listed = {
                item["path"]: (int(item["size"]), str(item["sha256"]))
                for item in json.loads(self.archive_end)["members"]
            }
        except (ValueError, KeyError, TypeError) as exc:
            raise IntegrityError(f"{self.source}: unreadable end record: {exc}") from None
        read = set(self.member_digests) | self.skipped_members
        if set(listed) != read:
            missing = sorted(set(listed) - read)
            raise IntegrityError(
                f"{self.source}: archive incomplete: {len(missing)} listed member(s) missing, "
                f"e.g. {missing[0] if missing else sorted(read - set(listed))[0]}"
            )
        for name, (size, sha256) in self.member_digests.items():
            if listed[name] != (size, sha256):
                raise IntegrityError(f"{name}: differs from the archive's end record")

    # -- planning against the tree -----------------------------------------------------------

    def _plan(
        self, manifests: Mapping[str, Manifest], carried: Mapping[str, Mapping[str, Entry]]
    ) -> None:
        for version in carried:
            if version not in manifests:
                raise IntegrityError(f"release/{version}: carried without its manifest")
        for version, manifest in sorted(manifests.items(), key=lambda kv: Version.parse(kv[0])):
            files = carried.get(version, {})
            for rel in files:
                if rel not in manifest.files:
                    raise IntegrityError(
                        f"release/{version}/{rel}: carried but not in the release's manifest"
                    )
            in_root = self.store.release_in_tree(version)
            root_manifest = Manifest(version)
            if in_root:
                if not self.store.manifest_path(version).is_file():
                    raise IntegrityError(
                        f"release/{version}: already in {self.root} without a manifest (not "
                        "written by k8s-mirror); refusing to add to it"
                    )
                root_manifest = self.store.load_manifest(version)
            merged = Manifest(version, dict(root_manifest.files))
            release = _Release(version, manifest, in_root, merged)
            lacking = []
            for rel, record in manifest.files.items():
                have = root_manifest.files.get(rel)
                if have is not None and have.sha256 != record.sha256:
                    raise IntegrityError(
                        f"release/{version}/{rel}: the set's copy differs from the one in "
                        f"{self.root}; refusing to replace a release file"
                    )
                merged.files.setdefault(rel, record)
                here = have is not None and self.store.present(root_manifest, rel)
                if rel in files:
                    if here:
                        release.present += 1
                    else:
                        release.needed.add(rel)
                elif not here:
                    lacking.append(rel)
            if lacking:
                if in_root:
                    what = (
                        f"needs {len(lacking)} file(s) of release/{version} that {self.root} "
                        f"lacks (e.g. {sorted(lacking)[0]})"
                    )
                else:
                    what = (
                        f"carries {len(files)} of the {len(manifest.files)} files of "
                        f"release/{version}, which is not in {self.root}"
                    )
                raise ConfigError(
                    f"this incremental set {what}: import the set it was made on top of first",
                    source=str(self.source),
                )
            self.releases[version] = release
            self.result.files_present += release.present

    # -- the stream --------------------------------------------------------------------------

    def _read_members(
        self, tar: tarfile.TarFile, expected: Mapping[str, Entry] | None, seen: set[str]
    ) -> None:
        for info in tar:
            if not info.isreg() or info.issparse():
                raise UnsafePathError(
                    f"{self.source}: member {info.name!r} is a {member_type(info)}, "
                    "not a regular file"
                )
            try:
                member = classify_member(info.name)
            except UnsafePathError as exc:
                raise UnsafePathError(f"{self.source}: member {exc}") from None
            if info.name in seen:
                raise IntegrityError(f"{self.source}: member {info.name} appears twice")
            seen.add(info.name)
            entry = None
            if expected is not None:
                entry = expected.get(info.name)
                if entry is None:
                    raise IntegrityError(f"{info.name}: in the parts but not in toc.json")
                if entry.size != info.size:
                    raise IntegrityError(
                        f"{info.name}: {info.size} bytes in the parts, toc.json says {entry.size}"
                    )
            if self.archive_end is not None:
                raise IntegrityError(f"{self.source}: member {info.name} after the end record")
            sha256 = self._take(tar, info, member)
            if entry is not None and sha256 is not None and sha256 != entry.sha256:
                raise IntegrityError(f"{info.name}: content differs from toc.json")
            if member.kind == "archive-end":
                continue
            if sha256 is None:
                self.skipped_members.add(info.name)
            else:
                self.member_digests[info.name] = (info.size, sha256)

    def _take(self, tar: tarfile.TarFile, info: tarfile.TarInfo, member: Member) -> str | None:
        """Keep one member (in memory or staged); None if not needed (then its bytes are
        only checked as part of their part)."""
        if member.kind == "release-file":
            release = self.releases.get(member.version)
            if release is not None and member.relpath not in release.needed:
                return None
            record = release.carried.files.get(member.relpath) if release else None
            if release is None:
                # An archive (no toc): its manifest precedes its files, so nothing unlisted or
                # of another size is written to disk before the checks can refuse it.
                manifest = self.member_manifests.get(member.version)
                record = manifest.files.get(member.relpath) if manifest else None
                if record is None or record.size != info.size:
                    raise IntegrityError(
                        f"{info.name}: not in a manifest that precedes it, or of another size"
                    )
            want_sha512 = record is None or record.sha512 is not None
            return self._stage(tar, info, member, want_sha512)
        limit = {
            "manifest": MAX_MANIFEST_BYTES,
            "marker": MAX_MARKER_BYTES,
            "trust-root": MAX_TRUST_ROOT_BYTES,
            "archive-end": MAX_TOC_BYTES,
        }[member.kind]
        if info.size > limit:
            raise IntegrityError(f"{info.name}: {info.size} bytes is implausibly large")
        data = _read_member(tar, info)
        if member.kind == "manifest":
            try:
                parsed = json.loads(data)
            except ValueError:
                raise IntegrityError(f"{info.name}: not JSON") from None
            self.member_manifests[member.version] = _manifest_from(
                info.name, member.version, parsed
            )
        elif member.kind == "archive-end":
            self.archive_end = data
        elif member.kind == "marker":
            text = data.decode("ascii", "replace")
            self.member_markers[member.relpath] = catalog.parse_marker_body(
                member.relpath, text
            ).text
        else:
            self.set_trust_root = data
        return hashlib.sha256(data).hexdigest()

    def _stage(
        self, tar: tarfile.TarFile, info: tarfile.TarInfo, member: Member, want_sha512: bool
    ) -> str:
        target = self.staged_release(member.version) / member.relpath
        sha256 = hashlib.sha256()
        sha512 = hashlib.sha512() if want_sha512 else None
        size = 0
        source = tar.extractfile(info)
        assert source is not None
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with open(fd, "wb") as handle:
                try:
                    while block := source.read(CHUNK):
                        sha256.update(block)
                        self.background.submit(_absorb, handle, sha512, block)
                        size += len(block)
                    self.background.wait()
                except BaseException:
                    self.background.close()  # before the file is closed under the worker
                    raise
                handle.flush()
                os.fsync(handle.fileno())
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise IntegrityError(f"{info.name}: clashes with another member's path") from None
        except OSError as exc:
            raise LocalStoreError(f"{target}: cannot write: {exc.strerror}") from exc
        if size != info.size:
            raise IntegrityError(f"{info.name}: truncated in the stream")
        digest = sha256.hexdigest()
        self.digests.setdefault(member.version, {})[member.relpath] = Digests(
            size, digest, sha512.hexdigest() if sha512 is not None else None
        )
        return digest

    # -- verification ------------------------------------------------------------------------

    def verify(self) -> tuple[Path | None, str]:
        """Re-verify everything staged as ``verify`` would; returns the trust root used."""
        set_root = self.work / TRUST_ROOT_RELPATH
        if self.set_trust_root is not None:
            write_atomic(set_root, self.set_trust_root)
        tree_root = self.root / TRUST_ROOT_RELPATH
        if self.trusted_root is not None:
            trust, origin = self.trusted_root, "--trusted-root"
        elif tree_root.is_file():
            trust, origin = tree_root, "the tree's"
        elif self.set_trust_root is not None:
            # First import into an empty tree: nothing here is trusted yet. A trust root that
            # travelled with the data proves nothing (whoever forged the set could forge it),
            # unless it is the public-good root this sigstore-python already carries.
            if not is_embedded_production_root(self.set_trust_root):
                raise ConfigError(
                    f"{self.root} has no trust root yet and the set's is not Sigstore's "
                    "public-good root: pass the trusted_root.json you trust with --trusted-root",
                    source=str(self.source),
                )
            trust, origin = set_root, "the set's"
        else:
            signed = any(
                release.merged.files[rel].check == "sigstore"
                for release in self.releases.values()
                for rel in release.needed
            )
            if signed:
                raise ConfigError(
                    f"neither {self.root} nor the set has a Sigstore trust root to verify "
                    "signatures against: pass --trusted-root",
                    source=str(self.source),
                )
            trust, origin = set_root, "none"
        if (
            origin == "the tree's"
            and self.set_trust_root is not None
            and self.set_trust_root != tree_root.read_bytes()
        ):
            log.info("the set carries another trust root; verifying against the tree's own")
        audit = TreeAudit(self.work, self.identities, trusted_root=trust)
        for version, release in self.releases.items():
            digests = self.digests.get(version, {})
            if not digests:
                continue
            self._check_policy(audit, release)
            normalised = {
                rel: Digests(
                    d.size_bytes,
                    d.sha256,
                    d.sha512 if release.merged.files[rel].sha512 is not None else None,
                )
                for rel, d in digests.items()
            }
            check_release(
                version,
                release.merged,
                normalised,
                self.reader(version),
                audit,
                Binder(self.binding, None, tags_in(self.locate(version))),
                audit.result,
            )
            # What bound each file is derived here; the carried manifest's claim is no authority.
            for rel, rule in audit.result.bindings.items():
                release.merged.files[rel] = dataclasses.replace(
                    release.merged.files[rel], binding=rule
                )
            audit.result.bindings.clear()
        for warning in audit.result.warnings:
            log.warning("%s", warning)
        problems = audit.result.problems
        if problems:
            for problem in problems:
                log.error("%s", problem)
            hint = None
            if (
                origin == "the tree's"
                and any(p.kind == "bad-bundle" for p in problems)
                and self.set_trust_root is not None
                and self.set_trust_root != tree_root.read_bytes()
            ):
                hint = (
                    "the set carries another trust root than the tree; if you trust it, "
                    "pass it with --trusted-root"
                )
            raise TreeVerifyError(
                f"{self.source}: {len(problems)} problem(s) found, nothing imported; "
                f"first: {problems[0]}",
                hint=hint,
            )
        if audit.result.files_checked:
            log.info(
                "verified %d files, %d signatures against %s trust root",
                audit.result.files_checked,
                audit.result.signatures_checked,
                origin,
            )
        return (trust if origin != "none" else None), origin

    def _check_policy(self, audit: TreeAudit, release: _Release) -> None:
        """Refuse unsigned releases unless allowed. What the carried manifest claims is then
        checked against the paths by ``TreeAudit`` (a primary of a signed release must have
        its bundle checked; nothing outside the SUMS and their companions rides along), as
        ``verify`` does for a tree."""
        version = release.version
        check_signing_policy(
            [version],
            allow_unsigned=self.allow_unsigned,
            hint="to import it with checksum verification only, pass --allow-unsigned",
        )
        if _small_text(self.locate(version)("SHA256SUMS")) is None:
            audit.result.add(
                f"release/{version}/SHA256SUMS", "missing", "neither in the set nor the tree"
            )

    # -- promotion ---------------------------------------------------------------------------

    def promote(self, trust: Path | None, origin: str) -> None:
        """Trust root first (bundles need it), then releases, then markers."""
        if trust is not None and origin != "the tree's":
            data = trust.read_bytes()
            if self.store.write_trust_root(data):
                self.result.trust_root_written = True
        for version, release in self.releases.items():
            staged = self.digests.get(version, {})
            if not staged:
                continue
            if release.in_root:
                records = {rel: release.merged.files[rel] for rel in staged}
                base = self.store.load_manifest(version)
                self.store.add_files(base, records, self.staged_release(version))
                self.result.updated_releases.append(version)
            else:
                self.store.promote_release(release.merged, self.staged_release(version))
                self.result.new_releases.append(version)
            self.result.files_imported += len(staged)
            self.result.bytes_imported += sum(d.size_bytes for d in staged.values())
            log.info("release/%s: %d files imported", version, len(staged))
        moves = self.store.move_markers(self.markers, self.store.release_complete)
        for marker, version in moves.incomplete.items():
            log.warning("marker %s not moved: release/%s is not complete here", marker, version)
            self.result.markers_skipped[marker] = version
        for marker, problem in moves.refused.items():
            log.warning("marker %s not moved: %s", marker, problem)
            self.result.markers_skipped[marker] = self.markers[marker]
        for marker, version in moves.moved.items():
            self.result.markers_moved[marker] = version
            log.info("marker %s -> %s", marker, version)


def import_set(
    root: Path,
    source: Path,
    *,
    identities: Sequence[IdentityConfig],
    trusted_root: Path | None = None,
    allow_unsigned: bool = False,
    lock_wait_s: float = 0.0,
    binding: BindingPolicy | None = None,
) -> ImportResult:
    """Import a transfer set (directory or its toc.json) or a ``fetch --archive`` file."""
    toc: Toc | None = None
    if source.is_dir():
        if not (source / TOC_NAME).is_file():
            raise ConfigError(f"{source}: no {TOC_NAME}; not a transfer set", source="import")
        toc = Toc.load(source / TOC_NAME)
    elif source.is_file() and source.name == TOC_NAME:
        toc = Toc.load(source)
    elif source.is_file():
        try:
            archive_compression(source)
        except ConfigError:
            raise ConfigError(
                f"{source}: neither a transfer set (a directory with {TOC_NAME}) nor a "
                ".tar, .tar.gz or .tar.xz archive from fetch --archive",
                source="import",
            ) from None
    else:
        raise ConfigError(f"{source}: no such file or directory", source="import")
    importer = _Importer(
        root,
        source,
        identities=identities,
        trusted_root=trusted_root,
        allow_unsigned=allow_unsigned,
        binding=binding,
    )
    store = importer.store
    store.prepare()
    with store.lock(wait_s=lock_wait_s):
        # Left by an import (or run) that was killed: none can be running while we hold the lock.
        store.sweep()
        for stale in store.staging.glob(IMPORT_STAGING_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        try:
            importer.work.mkdir(parents=True)
            if toc is not None:
                importer.run_toc(toc)
            else:
                importer.run_archive()
            trust, origin = importer.verify()
            importer.promote(trust, origin)
        finally:
            importer.background.close()
            shutil.rmtree(importer.work, ignore_errors=True)
    return importer.result


# --- helpers ----------------------------------------------------------------------------------


class _Hasher(Protocol):
    def update(self, data: bytes, /) -> None: ...


def _absorb(handle: IO[bytes], sha512: _Hasher | None, block: bytes) -> None:
    """(worker) The rest of what a staged block goes through."""
    if sha512 is not None:
        sha512.update(block)
    handle.write(block)


def _by_release(entries: Sequence[Entry]) -> dict[str, dict[str, Entry]]:
    out: dict[str, dict[str, Entry]] = {}
    for entry in entries:
        try:
            member = classify_member(entry.path)
        except UnsafePathError as exc:
            raise UnsafePathError(f"{TOC_NAME}: {exc}") from None
        if member.kind == "release-file":
            out.setdefault(member.version, {})[member.relpath] = entry
    return out


def _read_member(tar: tarfile.TarFile, info: tarfile.TarInfo) -> bytes:
    handle = tar.extractfile(info)
    assert handle is not None
    data = handle.read()
    if len(data) != info.size:
        raise IntegrityError(f"{info.name}: truncated in the stream")
    return data


def _small_bytes(path: Path) -> bytes | None:
    try:
        if path.stat().st_size > 4 << 20:
            return None
        return path.read_bytes()
    except OSError:
        return None


def _small_text(path: Path) -> str | None:
    data = _small_bytes(path)
    if data is None:
        return None
    try:
        return data.decode("ascii")
    except UnicodeDecodeError:
        return None
