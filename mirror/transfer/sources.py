"""Sources of an import: a transfer set (toc-driven) or a ``fetch --archive`` file.

Either one reads its stream once, refuses every member that is not a regular file at a tree
path, stages the release files the plan needs (``Staging``) and keeps the small members
(manifests, markers, trust root) in memory. What it hands on is the same for both: the plan,
the markers and the trust root that travelled. Verification and promotion never know which
source the files came from.

- ``SetSource``: ``toc.json`` says up front what the parts hold, so the plan is made before a
  byte is read, every member is checked against its toc entry, and files the target already
  has are only checked as part of their part, never written.
- ``ArchiveSource``: no toc; each release's manifest precedes its files in the stream (nothing
  unlisted or of another size is written to disk), the end record must list exactly the
  members read, and the plan is made once the stream is read.
"""

from __future__ import annotations

import lzma
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from mirror import catalog
from mirror.digest import digest_bytes
from mirror.errors import ConfigError, IntegrityError, MirrorError
from mirror.statefile import StateFormatError, parse_json
from mirror.store import Manifest
from mirror.transfer.archive import check_end_record
from mirror.transfer.members import (
    Member,
    MemberKind,
    accept_member,
    manifest_member,
    open_stream,
)
from mirror.transfer.parts import PartsReader
from mirror.transfer.plan import ImportPlan, Planner
from mirror.transfer.staging import Staging
from mirror.transfer.toc import MAX_TOC_BYTES, Entry, Toc, parse_carried_manifest

MAX_MEMBER_BYTES = {
    MemberKind.MANIFEST: 64 << 20,
    MemberKind.MARKER: 64,
    MemberKind.TRUST_ROOT: 16 << 20,
    MemberKind.ARCHIVE_END: MAX_TOC_BYTES,
}
"""Members read into memory, and how large each may plausibly be."""


@dataclass
class Carried:
    """What a source brought, besides the staged files."""

    plan: ImportPlan
    markers: dict[str, str]
    trust_root: bytes | None


class Source(Protocol):
    """Where an import's files come from. ``read`` stages the files the plan needs (the
    source calls ``planner`` once it knows the carried manifests and files) and returns the
    plan with what else travelled; it raises on anything it cannot vouch for."""

    path: Path

    def read(self, staging: Staging, planner: Planner) -> Carried: ...


class _Members:
    """The members of one stream read so far: their names, and the small ones' content (the
    release files go to ``staging``)."""

    def __init__(self, source: Path, staging: Staging) -> None:
        self.source = source
        self.staging = staging
        self.seen: set[str] = set()
        self.manifests: dict[str, Manifest] = {}
        self.markers: dict[str, str] = {}
        self.trust_root: bytes | None = None
        self.end_record: bytes | None = None

    def accept(self, info: tarfile.TarInfo) -> Member:
        member = accept_member(info, self.source)
        if info.name in self.seen:
            raise IntegrityError(f"{self.source}: member {info.name} appears twice")
        self.seen.add(info.name)
        return member

    def refuse_after_end(self, info: tarfile.TarInfo) -> None:
        if self.end_record is not None:
            raise IntegrityError(f"{self.source}: member {info.name} after the end record")

    def keep(self, tar: tarfile.TarFile, info: tarfile.TarInfo, member: Member) -> str:
        """Read a member that is not a release file into memory; its sha256."""
        if info.size > MAX_MEMBER_BYTES[member.kind]:
            raise IntegrityError(f"{info.name}: {info.size} bytes is implausibly large")
        handle = tar.extractfile(info)
        assert handle is not None
        data = handle.read()
        if len(data) != info.size:
            raise IntegrityError(f"{info.name}: truncated in the stream")
        if member.kind is MemberKind.MANIFEST:
            try:
                parsed = parse_json(data, info.name, max_bytes=MAX_MEMBER_BYTES[member.kind])
            except StateFormatError as exc:
                raise IntegrityError(str(exc)) from None
            self.manifests[member.version] = parse_carried_manifest(
                info.name, member.version, parsed
            )
        elif member.kind is MemberKind.ARCHIVE_END:
            self.end_record = data
        elif member.kind is MemberKind.MARKER:
            text = data.decode("ascii", "replace")
            self.markers[member.relpath] = catalog.parse_marker_body(member.relpath, text).text
        else:
            self.trust_root = data
        return digest_bytes(data, sha512=False).sha256


class SetSource:
    """A transfer set: parts checked against ``toc.json`` as they are read."""

    def __init__(self, path: Path, toc: Toc) -> None:
        self.path = path
        self.toc = toc
        self._expected = {f.path: f for f in toc.files}

    def read(self, staging: Staging, planner: Planner) -> Carried:
        reader = PartsReader(self.toc.path.parent, self.toc.parts)
        reader.check_sizes()
        plan = planner(self.toc.manifests, self.toc.release_files())
        members = _Members(self.path, staging)
        try:
            with open_stream(reader) as tar:
                for info in tar:
                    self._take(tar, info, members, plan)
            reader.drain()
        except (MirrorError, tarfile.TarError, EOFError, zlib.error) as exc:
            # Whatever went wrong inside a corrupt part is best reported as that part.
            reader.finish_current()
            if isinstance(exc, MirrorError):
                raise
            raise IntegrityError(f"{self.toc.path.parent}: not a valid tar stream: {exc}") from None
        finally:
            reader.close()
        self._check_complete(members)
        return Carried(plan, dict(self.toc.markers), members.trust_root)

    def _take(
        self,
        tar: tarfile.TarFile,
        info: tarfile.TarInfo,
        members: _Members,
        plan: ImportPlan,
    ) -> None:
        member = members.accept(info)
        entry = self._expected.get(info.name)
        if entry is None:
            raise IntegrityError(f"{info.name}: in the parts but not in toc.json")
        if entry.size != info.size:
            raise IntegrityError(
                f"{info.name}: {info.size} bytes in the parts, toc.json says {entry.size}"
            )
        members.refuse_after_end(info)
        if member.kind is MemberKind.RELEASE_FILE:
            release = plan.releases[member.version]
            if member.relpath not in release.needed:
                return  # the tree has it: its bytes are only checked as part of their part
            want_sha512 = release.carried.files[member.relpath].sha512 is not None
            sha256 = members.staging.stage(tar, info, member, want_sha512=want_sha512).sha256
        else:
            sha256 = members.keep(tar, info, member)
        if sha256 != entry.sha256:
            raise IntegrityError(f"{info.name}: content differs from toc.json")

    def _check_complete(self, members: _Members) -> None:
        """Every listed member was read, and the members agree with the toc."""
        for name in self._expected:
            if name not in members.seen:
                raise IntegrityError(f"{name}: listed in {self.toc.path} but not in the parts")
        for version, manifest in self.toc.manifests.items():
            carried = members.manifests.get(version)
            if carried is None or carried.files != manifest.files:
                raise IntegrityError(f"{manifest_member(version)}: disagrees with {self.toc.path}")
        if members.markers != self.toc.markers:
            raise IntegrityError(f"{self.toc.path}: its markers disagree with the marker files")


class ArchiveSource:
    """A ``fetch --archive`` file (plain, gzip or xz), checked against its end record."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self, staging: Staging, planner: Planner) -> Carried:
        members = _Members(self.path, staging)
        read: dict[str, tuple[int, str]] = {}
        try:
            with open_stream(self.path) as tar:
                for info in tar:
                    self._take(tar, info, members, read)
        except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError) as exc:
            raise IntegrityError(f"{self.path}: not a valid tar archive: {exc}") from None
        except OSError as exc:
            raise ConfigError(f"{self.path}: {exc.strerror or exc}", source="import") from None
        check_end_record(self.path, members.end_record, read)
        files = {
            version: {
                rel: Entry(rel, d.size_bytes, d.sha256) for rel, d in staging.files(version).items()
            }
            for version in staging.releases()
        }
        plan = planner(members.manifests, files)
        # Files identical to what the tree already has are not promoted again.
        for version, release in plan.releases.items():
            staging.keep_only(version, release.needed)
        return Carried(plan, dict(members.markers), members.trust_root)

    def _take(
        self,
        tar: tarfile.TarFile,
        info: tarfile.TarInfo,
        members: _Members,
        read: dict[str, tuple[int, str]],
    ) -> None:
        member = members.accept(info)
        members.refuse_after_end(info)
        if member.kind is MemberKind.RELEASE_FILE:
            # The manifest precedes its files, so nothing unlisted or of another size is
            # written to disk before the checks can refuse it.
            manifest = members.manifests.get(member.version)
            record = manifest.files.get(member.relpath) if manifest else None
            if record is None or record.size != info.size:
                raise IntegrityError(
                    f"{info.name}: not in a manifest that precedes it, or of another size"
                )
            want_sha512 = record.sha512 is not None
            sha256 = members.staging.stage(tar, info, member, want_sha512=want_sha512).sha256
        else:
            sha256 = members.keep(tar, info, member)
        if member.kind is not MemberKind.ARCHIVE_END:
            read[info.name] = (info.size, sha256)
