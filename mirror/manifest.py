"""What the tree records about each release: file records, manifests, and which files are
companions of which primary file.

A release's manifest (``.k8s-mirror/manifests/<version>.json``) lists every file of the release
that k8s-mirror verified, with its size and digests and how it was verified. Pure data and
rules, no I/O: reading and writing manifests is ``store.py``'s job.

A *primary* file is one the release's SHA256SUMS lists. Its *companions* are what upstream
publishes to vouch for it (``.sha256``/``.sha512`` always, ``.sig``/``.cert`` for signed kinds)
and the bundle the tree stores for signed files (``.sigstore.json``). The SUMS files and their
own sidecars are companions of the release as a whole. Companions are made visible before the
primary they vouch for, so a client that sees a file can also see what verifies it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from mirror import catalog
from mirror.catalog import RelPath
from mirror.errors import LocalStoreError, UnsafePathError
from mirror.layout import BUNDLE_SUFFIX
from mirror.statefile import StateFormatError, parse_json, typed

COMPANION_SUFFIXES = (*catalog.SIDECAR_DIGESTS, *catalog.SIGNATURE_SIDECARS, BUNDLE_SUFFIX)


def companions(relpath: RelPath, *, signed: bool) -> tuple[RelPath, ...]:
    """Every companion a primary file has in the tree, in promotion order."""
    suffixes: tuple[str, ...] = catalog.SIDECAR_DIGESTS
    if signed:
        suffixes += (*catalog.SIGNATURE_SIDECARS, BUNDLE_SUFFIX)
    return tuple(relpath.child(s) for s in suffixes)


def required_companions(relpath: RelPath, *, signed: bool) -> tuple[RelPath, ...]:
    """The companions a primary cannot be accepted without: both digest sidecars and, if
    signed, the bundle (``.sig``/``.cert`` are kept when upstream publishes them)."""
    suffixes: tuple[str, ...] = catalog.SIDECAR_DIGESTS + ((BUNDLE_SUFFIX,) if signed else ())
    return tuple(relpath.child(s) for s in suffixes)


def sums_files() -> tuple[RelPath, ...]:
    """The SUMS files and their digest sidecars, kept with every release."""
    return tuple(
        RelPath(name + suffix)
        for name in catalog.SUMS_FILES
        for suffix in ("", *catalog.SIDECAR_DIGESTS)
    )


def companion_of(rel: str, primaries: Iterable[str]) -> str | None:
    """The primary (or SUMS file) ``rel`` vouches for, or None if it vouches for nothing listed.

    A SUMS file is a companion of the release itself (returned as itself).
    """
    listed = set(primaries)
    if rel in catalog.SUMS_FILES:
        return rel
    for suffix in COMPANION_SUFFIXES:
        if rel.endswith(suffix):
            base = rel[: -len(suffix)]
            if base in listed:
                return base
            if base in catalog.SUMS_FILES and suffix in catalog.SIDECAR_DIGESTS:
                return base
    return None


def is_companion_name(rel: str) -> bool:
    """Whether ``rel`` is named like a companion (no primary file of a release is)."""
    return rel in catalog.SUMS_FILES or rel.endswith(COMPANION_SUFFIXES)


def promotion_order(paths: Iterable[str]) -> list[RelPath]:
    """Companions before the primaries they vouch for; otherwise by path."""
    return [RelPath(p) for p in sorted(paths, key=lambda p: (not is_companion_name(p), p))]


MANIFEST_FORMAT = 1
MANIFEST_MAX_BYTES = 64 << 20
"""A whole release is ~600 files of ~300 bytes each; this is far beyond any real one."""
RECORD_CHECKS = ("sigstore", "checksums", "digest")
_HEX = {"sha256": re.compile(r"^[0-9a-f]{64}$"), "sha512": re.compile(r"^[0-9a-f]{128}$")}


@dataclass(frozen=True)
class FileRecord:
    """What was verified about one file of a release, and how."""

    size: int
    sha256: str
    sha512: str | None = None
    check: str = "digest"
    """``sigstore`` (signature verified), ``checksums`` (primary, unsigned), ``digest`` (sidecar,
    SUMS or bundle file, covered by the primary's record)."""
    identity: str | None = None
    log_index: int | None = None
    binding: str | None = None
    """For a primary: the rule that bound it to its release (see ``binding.py``), or ``off``."""
    bundle: str | None = None
    """For a signed primary: ``upstream`` (published as ``.sigstore.json``, stored as is) or
    ``assembled`` (built from the Rekor entry of its ``.sig``/``.cert``)."""

    @classmethod
    def of_companion(cls, data: bytes) -> FileRecord:
        """The record of a companion (a sidecar, signature, bundle or SUMS file)."""
        return cls(len(data), hashlib.sha256(data).hexdigest())

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Any, source: str = "record") -> FileRecord:
        """A record, every field checked by type (``StateFormatError`` otherwise)."""
        entry: dict[str, Any] = typed(data, dict, source)
        data = entry
        size = typed(data.get("size"), int, f"{source}: size")
        if size < 0:
            raise StateFormatError(f"{source}: size: negative")
        for algo, pattern in _HEX.items():
            value = data.get(algo)
            if value is None and algo == "sha512":
                continue
            if not isinstance(value, str) or not pattern.match(value):
                raise StateFormatError(f"{source}: {algo}: not a lowercase hex digest")
        check = data.get("check", "digest")
        if check not in RECORD_CHECKS:
            raise StateFormatError(f"{source}: check: {check!r} is not one of {RECORD_CHECKS}")
        for key in ("identity", "binding", "bundle"):
            if data.get(key) is not None:
                typed(data[key], str, f"{source}: {key}")
        if data.get("log_index") is not None:
            typed(data["log_index"], int, f"{source}: log_index")
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Manifest:
    """Every file of one release in the tree (paths relative to ``release/<version>/``)."""

    version: str
    files: dict[str, FileRecord] = field(default_factory=dict)
    updated_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": MANIFEST_FORMAT,
                "version": self.version,
                "updated_at": self.updated_at,
                "files": {p: r.to_json() for p, r in sorted(self.files.items())},
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str | bytes, source: str) -> Manifest:
        """Parse a manifest file; ``source`` names it in the error."""
        try:
            data = typed(parse_json(text, source, max_bytes=MANIFEST_MAX_BYTES), dict, source)
            if data.get("format") != MANIFEST_FORMAT:
                raise StateFormatError(f"{source}: unknown format {data.get('format')!r}")
            version = typed(data.get("version"), str, f"{source}: version")
            entries = typed(data.get("files"), dict, f"{source}: files")
            files = {}
            for rel, entry in entries.items():
                try:
                    RelPath(rel)
                except UnsafePathError as exc:
                    raise StateFormatError(f"{source}: files: {exc}") from None
                files[rel] = FileRecord.from_json(entry, f"{source}: files[{rel!r}]")
            updated_at = typed(data.get("updated_at", 0), (int, float), f"{source}: updated_at")
            return cls(version, files, float(updated_at))
        except StateFormatError as exc:
            raise LocalStoreError(
                f"unreadable manifest: {exc}",
                hint="run k8s-mirror verify; to rebuild it, move the file aside and sync again "
                "(every file of the release is then fetched and verified anew)",
            ) from None

    def binding_summary(self) -> str:
        """How the release's primary files are bound to it: ``sbom`` (every one, by the rules
        of ``binding.py``), ``unbound`` (release binding was off) or ``unknown`` (mirrored
        before k8s-mirror recorded bindings)."""
        rules = {r.binding for r in self.files.values() if r.check in ("sigstore", "checksums")}
        if "off" in rules:
            return "unbound"
        if None in rules or not rules:
            return "unknown"
        return "sbom"

    def merged(self, records: Mapping[str, FileRecord]) -> Manifest:
        """A copy with ``records`` added (a manifest only ever grows by promotion)."""
        return Manifest(self.version, {**self.files, **records}, self.updated_at)
