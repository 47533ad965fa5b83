"""``k8s-mirror export``: what a transfer set carries, and writing it under the tree's lock.

Only files recorded in a release's manifest travel, each re-hashed while streamed (a file that
no longer matches its manifest aborts the export). The stream holds the trust root first, then
per release its manifest before its files, markers last. ``--since`` makes a delta: against an
earlier set's recorded state it is exact; against a run report or a date it is a heuristic on
manifest and file times that errs towards carrying more.
"""

from __future__ import annotations

import datetime as dt
import shutil
import stat
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirror import catalog
from mirror.catalog import RelPath
from mirror.errors import ConfigError, IntegrityError, LocalStoreError
from mirror.layout import RELEASE_DIR_NAME, TRUST_ROOT_RELPATH
from mirror.statefile import StateFormatError, read_json_file
from mirror.store import Manifest, Store
from mirror.transfer.members import manifest_member, release_member
from mirror.transfer.parts import DEFAULT_MAX_PART_BYTES, PartSink
from mirror.transfer.tarstream import TarWriter, write_stream
from mirror.transfer.toc import (
    MAX_TOC_BYTES,
    TOC_NAME,
    Entry,
    TocRelease,
    iso_time,
    load_state,
    write_toc,
)

MAX_TRUST_ROOT_BYTES = 16 << 20


@dataclass(frozen=True)
class Since:
    """The baseline of an incremental export."""

    label: str
    state: Mapping[str, Mapping[str, str]] | None = None
    """``toc``: every release's ``{relpath: sha256}`` at the time of an earlier export."""
    timestamp: float | None = None
    """``report``/date: files newer than this (see ``Exporter._changed``)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": "toc" if self.state is not None else "time",
            "from": self.label,
            "time": iso_time(self.timestamp) if self.timestamp is not None else None,
        }


def parse_since(text: str) -> Since:
    """``--since``: an earlier transfer set (its directory or toc.json), a run report, or an
    ISO date/datetime (UTC unless it carries an offset)."""
    path = Path(text)
    if path.is_dir() and (path / TOC_NAME).is_file():
        path = path / TOC_NAME
    if not path.is_file():
        return Since(text, timestamp=_parse_time(text, text))
    try:
        data = read_json_file(path, max_bytes=MAX_TOC_BYTES)
    except (OSError, StateFormatError) as exc:
        raise ConfigError(f"{path}: unreadable: {exc}", source="--since") from None
    state = load_state(path, data)
    if state is not None:
        return Since(str(path), state=state)
    if isinstance(data, dict) and isinstance(data.get("started_at"), str):
        return Since(str(path), timestamp=_parse_time(data["started_at"], str(path)))
    raise ConfigError(
        f"{path}: neither a transfer set's toc.json nor a run report", source="--since"
    )


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


def _regular_file(path: Path) -> bool:
    try:
        return stat.S_ISREG(path.lstat().st_mode)
    except OSError:
        return False


@dataclass
class ExportRelease:
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


class Exporter:
    """Reads a tree under its lock and writes its stream; only manifest-recorded files."""

    def __init__(self, store: Store, releases: Sequence[str], since: Since | None) -> None:
        self.store = store
        self.only = list(releases)
        self.since = since
        self.plan: list[ExportRelease] = []
        self.markers: dict[str, str] = {}
        self.state: dict[str, dict[str, str]] = {}

    def make_plan(self) -> None:
        in_tree = self.store.versions_in_tree()
        for name in self.only:
            if name not in in_tree:
                raise ConfigError(f"release {name} is not in the tree", source="--release")
        for version in self.only or in_tree:
            self._plan_release(version)
        wanted = set(self.state)
        for path in sorted((self.store.root / RELEASE_DIR_NAME).glob("*.txt")):
            name = path.name.removesuffix(".txt")
            target = self.store.read_marker(name) if catalog.is_marker(name) else None
            if target in wanted and _regular_file(path):
                self.markers[name] = target
        signed = any(
            r.check == "sigstore" for rel in self.plan for r in rel.manifest.files.values()
        )
        if signed and not _regular_file(self.store.root / TRUST_ROOT_RELPATH):
            raise IntegrityError(f"{TRUST_ROOT_RELPATH}: missing, but the tree has signed files")

    def _plan_release(self, version: str) -> None:
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
            rel: manifest.files[rel].sha256 for rel in sorted(manifest.files) if rel not in carried
        }
        if carry:
            self.plan.append(ExportRelease(version, manifest, raw, carry, requires))

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

    def write(self, writer: TarWriter) -> None:
        """Trust root first, each release's manifest before its files, markers last."""
        trust = self.store.root / TRUST_ROOT_RELPATH
        if _regular_file(trust):
            data = trust.read_bytes()
            if len(data) > MAX_TRUST_ROOT_BYTES:
                raise IntegrityError(f"{TRUST_ROOT_RELPATH}: implausibly large")
            writer.add_bytes(TRUST_ROOT_RELPATH, data, trust.stat().st_mtime)
        for release in self.plan:
            name = manifest_member(release.version)
            writer.add_bytes(name, release.manifest_bytes, release.manifest.updated_at)
            for rel in release.carry:
                writer.add_file(
                    release_member(release.version, rel),
                    self.store.tree_path(release.version, RelPath(rel)),
                    release.manifest.files[rel],
                )
        for marker, version in sorted(self.markers.items()):
            writer.add_bytes(str(catalog.marker_path(marker)), version.encode(), time.time())

    def toc_releases(self) -> dict[str, TocRelease]:
        return {
            r.version: TocRelease(len(r.carry), r.requires, r.manifest_bytes) for r in self.plan
        }


def check_root(root: Path) -> Store:
    """The tree to read from; it must look like one."""
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
    max_part_size: int = DEFAULT_MAX_PART_BYTES,
    releases: Sequence[str] = (),
    lock_wait_s: float = 0.0,
) -> ExportResult:
    """Write a transfer set of the tree at ``root`` into the empty directory ``output``."""
    store = check_root(root)
    baseline = parse_since(since) if since is not None else None
    created = _prepare_output(output, root)
    sink = PartSink(output, max_part_size)
    try:
        with store.lock(wait_s=lock_wait_s):
            exporter = Exporter(store, releases, baseline)
            exporter.make_plan()
            files = write_stream(sink, exporter.write)
            sink.close()
            # The toc is written last: a directory without toc.json is no transfer set.
            write_toc(
                output,
                since=baseline.to_json() if baseline is not None else None,
                stream_bytes=sink.stream_bytes,
                parts=sink.parts,
                files=files,
                releases=exporter.toc_releases(),
                markers=exporter.markers,
                state=exporter.state,
            )
    except BaseException:
        sink.abort()
        if created:
            shutil.rmtree(output, ignore_errors=True)
        raise
    return ExportResult(
        output=output,
        parts=sink.parts,
        files=len(files),
        stream_bytes=sink.stream_bytes,
        releases={r.version: (len(r.carry), len(r.requires)) for r in exporter.plan},
        markers=exporter.markers,
        incremental=baseline is not None,
    )
