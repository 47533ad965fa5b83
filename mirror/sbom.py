"""The release's SPDX 2.3 tag-value SBOM, parsed: the one signed statement that binds a file's
bytes to a release and a path.

Only what binding needs is read: the document's name and namespace, every ``FileName`` with its
``FileChecksum`` lines, and every ``PackageName``. Multi-line ``<text>...</text>`` values are
skipped whole, so nothing inside a comment can pose as a file entry. Pure: bytes in, ``Sbom``
out, ``IntegrityError`` on anything malformed or ambiguous.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mirror.errors import IntegrityError

SBOM_MAX_BYTES = 64 << 20
RELEASE_SBOM = "kubernetes-release.spdx"
SOURCE_SBOM = "kubernetes-source.spdx"
SBOM_KINDS = {RELEASE_SBOM: ("Release", "release"), SOURCE_SBOM: ("Source", "source")}
"""File name -> (word in ``DocumentName``, last segment of ``DocumentNamespace``)."""

_TAG_RE = re.compile(r"^([A-Za-z][A-Za-z0-9]*):\s?(.*)$")
_CHECKSUM_RE = re.compile(r"^(SHA1|SHA256|SHA512):\s*([0-9a-f]+)$")
_HEX_LENGTH = {"sha1": 40, "sha256": 64, "sha512": 128}


@dataclass(frozen=True)
class Sbom:
    document_name: str
    namespace: str
    files: dict[str, dict[str, str]]
    """``FileName`` (a leading ``./`` removed) -> algorithm (``sha256``...) -> hex digest."""
    packages: frozenset[str]


def parse_sbom(data: bytes, source: str) -> Sbom:
    """Parse an SPDX tag-value document; ``source`` names it in errors."""
    if len(data) > SBOM_MAX_BYTES:
        raise IntegrityError(f"{source}: {len(data)} bytes is implausibly large for an SBOM")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError(f"{source}: not UTF-8 text") from None
    header: dict[str, str] = {}
    files: dict[str, dict[str, str]] = {}
    packages: set[str] = set()
    current: dict[str, str] | None = None
    in_text = False
    for number, line in enumerate(text.splitlines(), 1):
        if in_text:
            in_text = "</text>" not in line
            continue
        match = _TAG_RE.match(line)
        if match is None:
            continue
        tag, value = match[1], match[2].strip()
        if value.startswith("<text>") and "</text>" not in value:
            in_text = True
            continue
        if tag == "FileName":
            name = value.removeprefix("./")
            if name in files:
                raise IntegrityError(f"{source}:{number}: {name} is listed twice")
            current = files[name] = {}
        elif tag == "PackageName":
            packages.add(value)
            current = None
        elif tag == "FileChecksum" and current is not None:
            current.update(_checksum(value, f"{source}:{number}"))
        elif tag in ("DocumentName", "DocumentNamespace") and tag not in header:
            header[tag] = value
    if "DocumentName" not in header or "DocumentNamespace" not in header:
        raise IntegrityError(f"{source}: not an SPDX document (no DocumentName/Namespace)")
    return Sbom(header["DocumentName"], header["DocumentNamespace"], files, frozenset(packages))


def _checksum(value: str, where: str) -> dict[str, str]:
    match = _CHECKSUM_RE.match(value)
    if match is None:
        # Other algorithms (MD5, SHA3...) are allowed by SPDX and not needed here.
        if value.startswith(("SHA1", "SHA256", "SHA512")):
            raise IntegrityError(f"{where}: malformed FileChecksum {value[:40]!r}")
        return {}
    algo = match[1].lower()
    if len(match[2]) != _HEX_LENGTH[algo]:
        raise IntegrityError(f"{where}: {match[1]} checksum of the wrong length")
    return {algo: match[2]}


def naming_problem(sbom: Sbom, filename: str, version: str) -> str | None:
    """Why an SBOM served as ``filename`` of ``version`` does not name that release."""
    word, kind = SBOM_KINDS[filename]
    want_name = f"Kubernetes {word} {version}"
    want_namespace = f"https://sbom.k8s.io/{version}/{kind}"
    if sbom.document_name != want_name:
        return f"names {sbom.document_name!r}, not {want_name!r}"
    if sbom.namespace != want_namespace:
        return f"has namespace {sbom.namespace!r}, not {want_namespace!r}"
    return None
