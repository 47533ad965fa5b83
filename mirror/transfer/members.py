"""What a member of a transfer stream may be: its name classified, its tar type checked.

A stream holds regular files only, at the paths a mirror tree has: release files
(``release/<v>/...``), release manifests (``.k8s-mirror/manifests/<v>.json``, the only state that
travels), markers (``release/<name>.txt``), the trust root and, last in a ``fetch --archive``
file, the end record. Anything else is refused by name before a byte of it is read, and a tar
header that would make ``tarfile`` buffer megabytes before we see the member is refused too.
"""

from __future__ import annotations

import enum
import io
import tarfile
from dataclasses import dataclass
from pathlib import Path

from mirror import catalog
from mirror.catalog import RelPath
from mirror.errors import UnsafePathError
from mirror.layout import RELEASE_DIR_NAME, STATE_DIR_NAME, TRUST_ROOT_RELPATH
from mirror.tarinfo import BoundedTarInfo, member_type

MANIFEST_PREFIX = f"{STATE_DIR_NAME}/manifests/"
ARCHIVE_END = f"{STATE_DIR_NAME}/archive-end.json"
"""Last member of a ``fetch --archive`` file: every member before it, with size and sha256.
A tar stream cut at a member boundary still reads as a whole archive; this record does not."""

READ_BLOCK_BYTES = 1 << 20
"""How much a stream is read (and so hashed and written) at a time."""


class MemberKind(enum.StrEnum):
    RELEASE_FILE = "release-file"
    MANIFEST = "manifest"
    MARKER = "marker"
    TRUST_ROOT = "trust-root"
    ARCHIVE_END = "archive-end"


@dataclass(frozen=True)
class Member:
    """A tar member's name, checked and classified."""

    name: str
    kind: MemberKind
    version: str = ""
    relpath: str = ""
    """Path inside the release (``release-file``) or the marker's name (``marker``)."""


def manifest_member(version: str) -> str:
    """The member name a release's manifest travels under."""
    return f"{MANIFEST_PREFIX}{version}.json"


def release_member(version: str, relpath: str) -> str:
    return f"{RELEASE_DIR_NAME}/{version}/{relpath}"


def classify_member(name: str) -> Member:
    """Which file of a tree ``name`` is; ``UnsafePathError`` for anything a tree cannot hold."""
    if name == ARCHIVE_END:
        return Member(name, MemberKind.ARCHIVE_END)
    if name.startswith(MANIFEST_PREFIX):
        stem = name[len(MANIFEST_PREFIX) :].removesuffix(".json")
        if name.endswith(".json") and catalog.is_version(stem):
            return Member(name, MemberKind.MANIFEST, version=stem)
        raise UnsafePathError(f"{name!r}: the only state a set carries is release manifests")
    path = RelPath(name)  # raises UnsafePathError: absolute, '..', hidden, control chars ...
    if path == TRUST_ROOT_RELPATH:
        return Member(name, MemberKind.TRUST_ROOT)
    parts = path.parts
    if parts[0] == RELEASE_DIR_NAME and len(parts) == 2 and parts[1].endswith(".txt"):
        marker = parts[1].removesuffix(".txt")
        if catalog.is_marker(marker):
            return Member(name, MemberKind.MARKER, relpath=marker)
    if parts[0] == RELEASE_DIR_NAME and len(parts) >= 3 and catalog.is_version(parts[1]):
        return Member(name, MemberKind.RELEASE_FILE, version=parts[1], relpath="/".join(parts[2:]))
    raise UnsafePathError(f"{name!r}: not a file a mirror tree carries")


def accept_member(info: tarfile.TarInfo, source: Path) -> Member:
    """A member of the stream from ``source``, refused unless it is a regular file at a name
    a tree holds (the message names the source and the member)."""
    if not info.isreg() or info.issparse():
        raise UnsafePathError(
            f"{source}: member {info.name!r} is a {member_type(info)}, not a regular file"
        )
    try:
        return classify_member(info.name)
    except UnsafePathError as exc:
        raise UnsafePathError(f"{source}: member {exc}") from None


def open_stream(source: Path | io.RawIOBase) -> tarfile.TarFile:
    """A tar stream read front to back, with bounded extended headers: an archive file
    (compression detected) or a set's parts (never compressed)."""
    if isinstance(source, Path):
        return tarfile.open(source, mode="r|*", bufsize=READ_BLOCK_BYTES, tarinfo=BoundedTarInfo)
    return tarfile.open(fileobj=source, mode="r|", bufsize=READ_BLOCK_BYTES, tarinfo=BoundedTarInfo)
