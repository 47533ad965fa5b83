"""What a release contains and what a run should fetch: pure logic, no I/O.

Owns the safe relative path type, version and marker names, the exact SHA256SUMS/SHA512SUMS
format, the classification of upstream files (kind, platform, component, signed or not), and the
plan of files a selection asks for.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import total_ordering

from mirror.errors import SumsFormatError, UnsafePathError

SIDECAR_DIGESTS = (".sha256", ".sha512")
SIGNATURE_SIDECARS = (".sig", ".cert")
SUMS_FILES = ("SHA256SUMS", "SHA512SUMS")
OPTIONAL_RELEASE_FILES = ("provenance.json", "release-notes.json", "announcement.html")
HEX_LENGTH = {"sha256": 64, "sha512": 128}
MARKER_MAX_BYTES = 64
"""A marker holds a bare version string; anything longer is not one."""
SIDECAR_MAX_BYTES = 256
"""A digest sidecar holds bare hex; anything longer is not one."""
SIG_MAX_BYTES = 1024
"""A ``.sig``: a base64 ECDSA signature is under 100 bytes."""
CERT_MAX_BYTES = 16 * 1024
"""A ``.cert``: a base64 PEM Fulcio certificate is 1-3 KiB."""
BUNDLE_MAX_BYTES = 256 * 1024
"""A published ``<file>.sigstore.json``: real bundles are 4-12 KiB; this leaves room for many
timestamps and long proofs and refuses anything bigger before it is parsed. (Here, not in
``verify``: fetching companions must not import cryptography and sigstore.)"""
KNOWN_OSES = ("linux", "darwin", "windows")

_COMPONENT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._+-]*$")


class RelPath(str):
    """A relative POSIX path that is safe to join under a directory, by construction.

    It cannot be empty, absolute, contain ``..`` or ``.`` segments, empty segments, a backslash,
    a NUL or other control characters, or a segment starting with a dot (hidden files are the
    tool's own state and are never mirrored).
    """

    __slots__ = ()

    def __new__(cls, value: str) -> RelPath:
        problem = _relpath_problem(value)
        if problem is not None:
            shown = value if len(value) <= 120 else value[:120] + "..."
            raise UnsafePathError(f"unsafe path {shown!r}: {problem}")
        return super().__new__(cls, value)

    @property
    def parts(self) -> tuple[str, ...]:
        return tuple(self.split("/"))

    @property
    def name(self) -> str:
        return self.rsplit("/", 1)[-1]

    def child(self, suffix: str) -> RelPath:
        """This path with ``suffix`` appended to its last segment: kubectl -> kubectl.sig."""
        return RelPath(self + suffix)


RELPATH_MAX_CHARS = 1024
SEGMENT_MAX_CHARS = 255
"""No upstream path comes near these; a longer one is hostile (and no filesystem or HTTP
server would take it)."""


def _relpath_problem(value: str) -> str | None:
    if not value:
        return "empty"
    if len(value) > RELPATH_MAX_CHARS:
        return f"longer than {RELPATH_MAX_CHARS} characters"
    if value.startswith("/"):
        return "absolute path"
    if "\\" in value:
        return "backslash"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in value):
        return "control character"
    for segment in value.split("/"):
        if segment in ("", ".", ".."):
            return "empty, '.' or '..' segment"
        if len(segment) > SEGMENT_MAX_CHARS:
            return f"a segment longer than {SEGMENT_MAX_CHARS} characters"
        if not _SEGMENT_RE.match(segment):
            return f"segment {segment!r} has characters outside [A-Za-z0-9._+-] or starts with '.'"
    return None


# --- versions and markers -------------------------------------------------------------------

_VERSION_RE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(?:-(alpha|beta|rc)\.(\d+))?$")
_MARKER_RE = re.compile(r"^(stable|latest)(?:-(\d+)(?:\.(\d+))?)?$")
_PRE_ORDER = {"alpha": 0, "beta": 1, "rc": 2, None: 3}


@total_ordering
@dataclass(frozen=True)
class Version:
    """A Kubernetes release version such as ``v1.34.2`` or ``v1.26.0-rc.1``."""

    text: str
    major: int
    minor: int
    patch: int
    pre: str | None
    pre_number: int

    @classmethod
    def parse(cls, text: str) -> Version:
        match = _VERSION_RE.match(text)
        if match is None:
            raise ValueError(f"not a Kubernetes release version: {text!r}")
        major, minor, patch, pre, pre_number = match.groups()
        return cls(text, int(major), int(minor), int(patch), pre, int(pre_number or 0))

    @property
    def _key(self) -> tuple[int, int, int, int, int]:
        return (self.major, self.minor, self.patch, _PRE_ORDER[self.pre], self.pre_number)

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key < other._key

    def __str__(self) -> str:
        return self.text


FIRST_SIGNED_VERSION = Version.parse("v1.26.0-rc.1")


def is_version(text: str) -> bool:
    return _VERSION_RE.match(text) is not None


def is_marker(text: str) -> bool:
    """``stable``, ``latest``, ``stable-1``, ``stable-1.33``, ``latest-1.34`` ..."""
    return _MARKER_RE.match(text) is not None


def marker_path(name: str) -> RelPath:
    """Where marker ``name`` lives, relative to the tree root (``release/stable-1.33.txt``)."""
    return RelPath(f"release/{name}.txt")


def parse_marker_body(name: str, body: str) -> Version:
    """A marker holds one bare version string; anything else is refused."""
    text = body.strip()
    try:
        return Version.parse(text)
    except ValueError:
        raise UnsafePathError(
            f"marker {name}.txt: expected a bare version like v1.34.2, got {body[:60]!r}"
        ) from None


def marker_series_problem(name: str, version: Version) -> str | None:
    """Why marker ``name`` cannot name ``version`` (``stable-1.33`` -> ``v1.34.2``, ``stable``
    -> a pre-release), or None. A hostile upstream or set must not redirect a series."""
    match = _MARKER_RE.match(name)
    if match is None:
        return f"{name!r} is not a marker name"
    kind, major, minor = match.groups()
    if kind == "stable" and version.pre is not None:
        return f"{name} names the pre-release {version}"
    if major is not None and int(major) != version.major:
        return f"{name} names {version}, outside its series"
    if minor is not None and int(minor) != version.minor:
        return f"{name} names {version}, outside its series"
    return None


def is_signed_release(version: Version) -> bool:
    """Kubernetes started signing release files with v1.26.0-rc.1."""
    return version >= FIRST_SIGNED_VERSION


# --- SUMS files ------------------------------------------------------------------------------

_HEX_RE = {algo: re.compile(rf"^[0-9a-f]{{{n}}}$") for algo, n in HEX_LENGTH.items()}


def parse_sums(text: str, algo: str, source: str) -> dict[RelPath, str]:
    """Parse a SHA256SUMS/SHA512SUMS body: ``<hex>  <relpath>`` lines joined by ``\\n``.

    Every line must be exact; one bad line rejects the whole file (a SUMS file is a unit of
    trust, so a partly hostile one is not partly used).
    """
    entries: dict[RelPath, str] = {}
    # Upstream has no trailing newline; tolerate one so a re-served copy still parses.
    lines = text[:-1].split("\n") if text.endswith("\n") else text.split("\n")
    if text == "":
        raise SumsFormatError(f"{source}: empty")
    for number, line in enumerate(lines, start=1):
        digest, sep, path = line.partition("  ")
        if not sep:
            raise SumsFormatError(f"{source} line {number}: expected '<hex>  <path>'")
        if not _HEX_RE[algo].match(digest):
            raise SumsFormatError(
                f"{source} line {number}: digest is not {HEX_LENGTH[algo]} lowercase hex digits"
            )
        try:
            relpath = RelPath(path)
        except UnsafePathError as exc:
            raise UnsafePathError(f"{source} line {number}: {exc}") from None
        if relpath in entries:
            raise SumsFormatError(f"{source} line {number}: duplicate entry for {relpath}")
        entries[relpath] = digest
    return entries


def parse_sidecar(text: str, algo: str, source: str) -> str:
    """A digest sidecar is the bare lowercase hex digest: no file name, no newline."""
    if not _HEX_RE[algo].match(text):
        raise SumsFormatError(f"{source}: expected {HEX_LENGTH[algo]} bare lowercase hex digits")
    return text


def render_sums(entries: Mapping[str, str]) -> str:
    """The upstream SUMS format, for the tree's own records and tests of round trips."""
    return "\n".join(f"{digest}  {path}" for path, digest in entries.items())


# --- classifying release files ---------------------------------------------------------------

_PLATFORM_SUFFIX_RE = re.compile(
    rf"^(?P<stem>.+?)-(?P<os>{'|'.join(KNOWN_OSES)})-(?P<arch>[a-z0-9]+)$"
)


@dataclass(frozen=True)
class FileInfo:
    """What the tool knows about one primary file of a release from its path alone."""

    relpath: RelPath
    component: str
    platform: str | None
    signed_kind: bool


def classify(relpath: RelPath) -> FileInfo:
    """Derive component, platform and whether the kind is signed from a SUMS path.

    ``bin/<os>/<arch>/<name>[.exe|.tar|.docker_tag]`` -> component ``<name>``;
    top-level ``<stem>[-<os>-<arch>].<ext>`` -> component ``<stem>`` (``kubernetes-client``).
    """
    parts = relpath.parts
    name = parts[-1]
    signed_kind = not name.endswith(".docker_tag")
    if len(parts) == 4 and parts[0] == "bin":
        stem = name
        for suffix in (".exe", ".tar", ".docker_tag"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        return FileInfo(relpath, stem, f"{parts[1]}/{parts[2]}", signed_kind)
    stem = name
    for suffix in (".tar.gz", ".tgz", ".spdx", ".json", ".html", ".txt"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    match = _PLATFORM_SUFFIX_RE.match(stem)
    if match is not None:
        return FileInfo(relpath, match["stem"], f"{match['os']}/{match['arch']}", signed_kind)
    return FileInfo(relpath, stem, None, signed_kind)


@dataclass(frozen=True)
class Selection:
    """Which platforms and components to mirror; empty components means everything."""

    platforms: tuple[str, ...]
    components: tuple[str, ...]

    def wants(self, info: FileInfo) -> bool:
        if (
            info.platform is not None
            and "*" not in self.platforms
            and info.platform not in self.platforms
        ):
            return False
        if not self.components:
            return True
        return info.component in self.components or info.relpath.name in self.components


@dataclass(frozen=True)
class PlannedFile:
    """One primary file to have in the tree, with the digests both SUMS files promise."""

    version: str
    relpath: RelPath
    sha256: str
    sha512: str
    signed: bool

    @property
    def tree_path(self) -> RelPath:
        """Path relative to the tree root."""
        return RelPath(f"release/{self.version}/{self.relpath}")

    @property
    def sidecars(self) -> tuple[RelPath, ...]:
        """Sidecars to mirror with it (digest sidecars always, signature pair if signed)."""
        suffixes = SIDECAR_DIGESTS + (SIGNATURE_SIDECARS if self.signed else ())
        return tuple(self.relpath.child(s) for s in suffixes)


def plan_release(
    version: Version,
    sums256: Mapping[RelPath, str],
    sums512: Mapping[RelPath, str],
    selection: Selection,
    *,
    verify_signatures: bool,
) -> list[PlannedFile]:
    """The selected primary files of one release, cross-checked between the two SUMS files."""
    only256 = sorted(set(sums256) - set(sums512))
    only512 = sorted(set(sums512) - set(sums256))
    if only256 or only512:
        example = (only256 or only512)[0]
        raise SumsFormatError(
            f"release/{version}: SHA256SUMS and SHA512SUMS list different files "
            f"(e.g. {example}, {len(only256) + len(only512)} in all)"
        )
    planned = []
    for relpath in sorted(sums256):
        info = classify(relpath)
        if not selection.wants(info):
            continue
        planned.append(
            PlannedFile(
                version=version.text,
                relpath=relpath,
                sha256=sums256[relpath],
                sha512=sums512[relpath],
                signed=verify_signatures and info.signed_kind,
            )
        )
    return planned


def unmatched_components(selection: Selection, releases: Iterable[Iterable[RelPath]]) -> list[str]:
    """Components in the selection that match no file of any selected release (likely typos)."""
    seen: set[str] = set()
    for paths in releases:
        for relpath in paths:
            info = classify(relpath)
            seen.add(info.component)
            seen.add(relpath.name)
    return [c for c in selection.components if c not in seen]


def unmatched_platforms(selection: Selection, releases: Iterable[Iterable[RelPath]]) -> list[str]:
    """Platforms in the selection that no file of any selected release is built for."""
    seen = {classify(relpath).platform for paths in releases for relpath in paths}
    return [p for p in selection.platforms if p != "*" and p not in seen]


def valid_component_name(name: str) -> bool:
    return _COMPONENT_RE.match(name) is not None


def platform_problem(text: str) -> str | None:
    """Why ``text`` is not ``os/arch`` or ``*``, or None."""
    if text == "*":
        return None
    os_name, sep, arch = text.partition("/")
    if not sep or os_name not in KNOWN_OSES or not re.match(r"^[a-z0-9]+$", arch):
        return f"{text!r} is not 'os/arch' (os one of {', '.join(KNOWN_OSES)}) or '*'"
    return None
