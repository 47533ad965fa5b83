"""The transfer set's ``toc.json``: its format, writing it, and reading it back validated.

``toc.json`` is written last into a set directory (a directory without one is no set). It lists
every part (name, size, sha256) in stream order, every member with size and sha256, per carried
release its manifest and what the target tree must already hold (``requires``), the markers,
and the state of the whole source tree (``{version: {relpath: sha256}}``, the baseline of the
next ``export --since``). Everything in it comes from the media on import, so ``Toc.load``
checks every field before anything else reads it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mirror import __version__, catalog
from mirror.errors import ConfigError, IntegrityError, LocalStoreError, UnsafePathError
from mirror.statefile import StateFormatError, parse_json
from mirror.store import Manifest, write_atomic
from mirror.transfer.members import MemberKind, classify_member

TOC_NAME = "toc.json"
TOC_FORMAT = 1
TOC_KIND = "k8s-mirror-transfer-set"
PART_NAME = "part-{:04d}.tar"
PART_RE = re.compile(r"^part-\d{4,}\.tar$")
MAX_TOC_BYTES = 16 << 20


def part_name(index: int) -> str:
    """The file name of part ``index`` (counted from 1)."""
    return PART_NAME.format(index)


def iso_time(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def is_sha256(value: object) -> bool:
    """A bare lowercase sha256 hex digest, as SUMS sidecars hold them."""
    if not isinstance(value, str):
        return False
    try:
        catalog.parse_sidecar(value, "sha256", TOC_NAME)
    except IntegrityError:
        return False
    return True


@dataclass(frozen=True)
class Entry:
    """A file (or part) with its size and sha256, as toc.json lists it."""

    path: str
    size: int
    sha256: str

    def to_json(self, key: str = "path") -> dict[str, Any]:
        return {key: self.path, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class TocRelease:
    """What toc.json says about one carried release."""

    carried: int
    """How many of its files the set carries."""
    requires: Mapping[str, str]
    """Files the target must already have: ``{relpath: sha256}``."""
    manifest: bytes
    """The release's manifest as the source tree stores it."""


def write_toc(
    directory: Path,
    *,
    since: Mapping[str, Any] | None,
    stream_bytes: int,
    parts: Sequence[Entry],
    files: Sequence[Entry],
    releases: Mapping[str, TocRelease],
    markers: Mapping[str, str],
    state: Mapping[str, Mapping[str, str]],
) -> None:
    """Write ``directory/toc.json`` atomically (the last step of an export)."""
    document = {
        "format": TOC_FORMAT,
        "kind": TOC_KIND,
        "created_at": iso_time(time.time()),
        "created_by": f"k8s-mirror {__version__}",
        "incremental": since is not None,
        "since": dict(since) if since is not None else None,
        "stream": {
            "layout": "one POSIX tar stream; parts are consecutive byte ranges of it",
            "size": stream_bytes,
        },
        "parts": [p.to_json("name") for p in parts],
        "files": [f.to_json() for f in files],
        "releases": {
            version: {
                "carried": release.carried,
                "requires": dict(release.requires),
                "manifest": json.loads(release.manifest),
            }
            for version, release in releases.items()
        },
        "markers": dict(sorted(markers.items())),
        "state": state,
    }
    write_atomic(directory / TOC_NAME, json.dumps(document, indent=1).encode())


def parse_carried_manifest(source: str, version: str, data: object) -> Manifest:
    """A manifest that travelled with a set: parsed, named as expected, every path safe."""
    try:
        manifest = Manifest.from_json(json.dumps(data), source)
    except LocalStoreError as exc:
        raise IntegrityError(str(exc)) from None
    if manifest.version != version:
        raise IntegrityError(f"{source}: manifest of {manifest.version!r}, expected {version}")
    for rel in manifest.files:
        try:
            catalog.RelPath(rel)
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
        data = _load_document(path)
        parts_raw, files_raw = data.get("parts"), data.get("files")
        releases, markers = data.get("releases"), data.get("markers")
        if not isinstance(parts_raw, list) or not isinstance(files_raw, list):
            raise _bad_toc(path, "parts and files must be lists")
        if not isinstance(releases, dict) or not isinstance(markers, dict):
            raise _bad_toc(path, "releases and markers must be objects")
        parts = [_entry(path, p, "name") for p in parts_raw]
        for i, part in enumerate(parts, start=1):
            # Part names come from the media: only the names export writes, in order.
            if part.path != part_name(i) or not PART_RE.match(part.path):
                raise _bad_toc(path, f"part {i} is named {part.path!r}")
        files = [_entry(path, f, "path") for f in files_raw]
        if len({f.path for f in files}) != len(files):
            raise _bad_toc(path, "a file is listed twice")
        manifests = {}
        for version, info in releases.items():
            if not catalog.is_version(version) or not isinstance(info, dict):
                raise _bad_toc(path, f"bad release entry {version!r}")
            manifests[version] = parse_carried_manifest(
                f"{path} ({version})", version, info.get("manifest")
            )
        checked_markers = {}
        for name, version in markers.items():
            if not catalog.is_marker(name) or not isinstance(version, str):
                raise _bad_toc(path, f"bad marker {name!r}")
            checked_markers[name] = catalog.parse_marker_body(name, version).text
        return cls(path, parts, files, manifests, checked_markers)

    def release_files(self) -> dict[str, dict[str, Entry]]:
        """The listed release files, by release and path inside it."""
        out: dict[str, dict[str, Entry]] = {}
        for entry in self.files:
            try:
                member = classify_member(entry.path)
            except UnsafePathError as exc:
                raise UnsafePathError(f"{TOC_NAME}: {exc}") from None
            if member.kind is MemberKind.RELEASE_FILE:
                out.setdefault(member.version, {})[member.relpath] = entry
        return out


def load_state(path: Path, data: object) -> Mapping[str, Mapping[str, str]] | None:
    """The source-tree state of a parsed toc.json (for ``--since``); None if not a toc, and a
    ``ConfigError`` if it is one without a usable state."""
    if not isinstance(data, dict) or data.get("kind") != TOC_KIND:
        return None
    state = data.get("state")
    if not isinstance(state, dict) or not all(
        isinstance(files, dict) and all(is_sha256(h) for h in files.values())
        for files in state.values()
    ):
        raise ConfigError(f"{path}: toc.json without a usable state", source="--since")
    return state


def _load_document(path: Path) -> dict[str, Any]:
    try:
        if path.stat().st_size > MAX_TOC_BYTES:
            raise _bad_toc(path, "implausibly large")
        data = parse_json(path.read_bytes(), str(path), max_bytes=MAX_TOC_BYTES)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}", source="import") from None
    except StateFormatError as exc:
        raise _bad_toc(path, str(exc).removeprefix(f"{path}: ")) from None
    if not isinstance(data, dict) or data.get("kind") != TOC_KIND:
        raise _bad_toc(path, "not a k8s-mirror transfer set")
    if data.get("format") != TOC_FORMAT:
        raise _bad_toc(path, f"unknown format {data.get('format')!r}")
    return data


def _bad_toc(path: Path, what: str) -> IntegrityError:
    return IntegrityError(f"{path}: malformed toc: {what}")


def _entry(path: Path, item: object, key: str) -> Entry:
    if (
        not isinstance(item, dict)
        or not isinstance(item.get(key), str)
        or isinstance(item.get("size"), bool)
        or not isinstance(item.get("size"), int)
        or item["size"] < 0
        or not is_sha256(item.get("sha256"))
    ):
        raise _bad_toc(path, f"bad entry {str(item)[:80]}")
    return Entry(item[key], item["size"], item["sha256"])
