"""The bytes of a generated release: deterministic binaries, image archives and tarballs, the
SPDX SBOMs that list them, and the optional unsigned extras.

Pure functions of (seed, version, path); ``release.UpstreamTree`` decides which files exist.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
import tarfile
from collections.abc import Iterable, Mapping

from mirror.demo.matrix import (
    CLIENT_BINARIES,
    COMMON_TARBALLS,
    EPOCH,
    NODE_TARBALL_PLATFORMS,
    SERVER_ARCHES,
    image_repo_tag,
    sbom_covers,
    sha256_hex,
    sha512_hex,
)


def image_tar(repo_tag: str, layer: bytes) -> bytes:
    """A ``docker save`` archive: one layer, its config, ``manifest.json`` last, as docker
    writes it (so a reader has to look for the manifest, not assume it comes first)."""
    config = json.dumps({"architecture": "amd64", "os": "linux"}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    layer_dir = hashlib.sha256(layer).hexdigest()
    manifest = [
        {"Config": config_name, "RepoTags": [repo_tag], "Layers": [f"{layer_dir}/layer.tar"]}
    ]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in (
            (f"{layer_dir}/layer.tar", layer),
            (config_name, config),
            ("manifest.json", json.dumps(manifest).encode()),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(EPOCH.timestamp())
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


# -- content generation ------------------------------------------------------------------------

_MAGIC = {"linux": b"\x7fELF\x02\x01\x01", "darwin": b"\xcf\xfa\xed\xfe", "windows": b"MZ\x90\x00"}


class Generator:
    """Deterministic pseudo-random bodies: same (seed, version, relpath), same bytes."""

    def __init__(self, seed: str, version: str, size_bytes: int | None) -> None:
        self._prefix = f"{seed}\0{version}\0"
        self._size_bytes = size_bytes

    def size(self, relpath: str) -> int:
        if self._size_bytes is not None:
            return self._size_bytes
        h = hashlib.sha256(f"size\0{self._prefix}{relpath}".encode()).digest()
        return 2000 + int.from_bytes(h[:4], "big") % 4001

    def payload(self, relpath: str, size_bytes: int | None = None) -> bytes:
        n = self.size(relpath) if size_bytes is None else size_bytes
        # random.Random seeded by a str is stable across runs and platforms (seed version 2).
        return random.Random(f"{self._prefix}{relpath}").randbytes(n)

    def binary(self, relpath: str, os_: str) -> bytes:
        body = self.payload(relpath)
        magic = _MAGIC[os_]
        return magic + body[len(magic) :] if len(body) >= len(magic) else body


def _targz(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A real, reproducible .tar.gz (fixed mtimes and owners)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755
            info.mtime = int(EPOCH.timestamp())
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    # Level 1: payloads are random (incompressible), so a higher level only costs time.
    return gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)


def tarballs(
    gen: Generator, platforms: tuple[str, ...], binaries: Mapping[str, bytes]
) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    for name in COMMON_TARBALLS:
        out[name] = _targz([(f"kubernetes/{name.removesuffix('.tar.gz')}", gen.payload(name))])
    for platform in platforms:
        os_, arch = platform.split("/")
        exe = ".exe" if os_ == "windows" else ""
        # The client tarball carries the very kubectl binaries of the release, as upstream.
        out[f"kubernetes-client-{os_}-{arch}.tar.gz"] = _targz(
            (f"kubernetes/client/bin/{b}{exe}", binaries[f"bin/{os_}/{arch}/{b}{exe}"])
            for b in CLIENT_BINARIES
        )
        if platform in NODE_TARBALL_PLATFORMS:
            name = f"kubernetes-node-{os_}-{arch}.tar.gz"
            out[name] = _targz([("kubernetes/node/bin/payload", gen.payload(name))])
        if os_ == "linux" and arch in SERVER_ARCHES:
            for kind in ("server", "test"):
                name = f"kubernetes-{kind}-linux-{arch}.tar.gz"
                out[name] = _targz([(f"kubernetes/{kind}/bin/payload", gen.payload(name))])
    return out


def _spdx_id(relpath: str) -> str:
    # SPDX identifiers allow letters, digits, "." and "-" only.
    return "SPDXRef-File-" + re.sub(r"[^A-Za-z0-9.-]", "-", relpath)


def _spdx_header(document: str, version: str, extra: Iterable[str] = ()) -> list[str]:
    """As upstream's ``bom`` writes it: ``DocumentName: Kubernetes Release v1.34.2``,
    ``DocumentNamespace: https://sbom.k8s.io/v1.34.2/release``."""
    return [
        "SPDXVersion: SPDX-2.3",
        "DataLicense: CC0-1.0",
        "SPDXID: SPDXRef-DOCUMENT",
        f"DocumentName: Kubernetes {document.title()} {version}",
        f"DocumentNamespace: https://sbom.k8s.io/{version}/{document}",
        *extra,
        "Creator: Tool: k8s-mirror-fake-upstream",
        f"Created: {EPOCH.strftime('%Y-%m-%dT%H:%M:%SZ')}",
        "",
    ]


def _spdx_files(package_id: str, files: Mapping[str, bytes]) -> list[str]:
    lines: list[str] = []
    for relpath in sorted(files):
        data = files[relpath]
        spdx_id = _spdx_id(relpath)
        lines += [
            f"FileName: {relpath}",
            f"SPDXID: {spdx_id}",
            f"FileChecksum: SHA1: {hashlib.sha1(data).hexdigest()}",
            f"FileChecksum: SHA256: {sha256_hex(data)}",
            f"FileChecksum: SHA512: {sha512_hex(data)}",
            "LicenseConcluded: NOASSERTION",
            "LicenseInfoInFile: NOASSERTION",
            "FileCopyrightText: NOASSERTION",
            f"Relationship: {package_id} CONTAINS {spdx_id}",
            "",
        ]
    return lines


def _verification_code(files: Mapping[str, bytes]) -> str:
    # SPDX 2.3 §7.9: sha1 over the sorted, concatenated sha1 hex digests of the package files.
    sha1s = sorted(hashlib.sha1(d).hexdigest() for d in files.values())
    return hashlib.sha1("".join(sha1s).encode()).hexdigest()


def _package(
    package_id: str, name: str, version: str, location: str, files: Mapping[str, bytes]
) -> list[str]:
    return [
        f"##### Package: {name}",
        "",
        f"PackageName: {name}",
        f"SPDXID: {package_id}",
        f"PackageVersion: {version}",
        f"PackageDownloadLocation: {location}",
        "FilesAnalyzed: true",
        f"PackageVerificationCode: {_verification_code(files)}",
        "PackageLicenseConcluded: Apache-2.0",
        "PackageLicenseDeclared: Apache-2.0",
        "PackageCopyrightText: NOASSERTION",
        f"Relationship: SPDXRef-DOCUMENT DESCRIBES {package_id}",
        "",
    ]


def release_sbom(version: str, contents: Mapping[str, bytes], source_sbom: bytes) -> bytes:
    """SPDX 2.3 tag-value listing the binaries and tarballs of the release as files and its
    images as packages (``registry.k8s.io/<image>-<arch>:<v>``, no file checksums).

    The ``.docker_tag`` files are left out (they are metadata of the images, not artifacts), so
    a test can tell "covered by the signed SBOM" from "only in the unsigned SUMS".
    """
    covered = {p: d for p, d in contents.items() if sbom_covers(p)}
    package_id = "SPDXRef-Package-kubernetes-release"
    location = f"https://dl.k8s.io/release/{version}/"
    source_ref = (
        f"ExternalDocumentRef: DocumentRef-kubernetes-{version} https://sbom.k8s.io/{version}/"
        f"source SHA256: {sha256_hex(source_sbom)}"
    )
    lines = _spdx_header("release", version, [source_ref])
    lines += _package(package_id, "kubernetes-release", version, location, covered)
    for relpath in sorted(p for p in contents if p.endswith(".tar") and p.startswith("bin/")):
        _, _, arch, name = relpath.split("/")
        tag = image_repo_tag(version, arch, name.removesuffix(".tar"))
        image_id = "SPDXRef-Package-" + re.sub(r"[^A-Za-z0-9.-]", "-", tag)
        lines += [
            f"##### Package: {tag}",
            "",
            f"PackageName: {tag}",
            f"SPDXID: {image_id}",
            f"PackageVersion: {version}",
            f"PackageDownloadLocation: https://{tag.replace(':', '/')}",
            "FilesAnalyzed: false",
            "PackageLicenseConcluded: Apache-2.0",
            f"Relationship: SPDXRef-DOCUMENT DESCRIBES {image_id}",
            "",
        ]
    lines += _spdx_files(package_id, covered)
    return "\n".join(lines).encode()


def source_sbom(version: str, gen: Generator) -> bytes:
    sources = {
        name: gen.payload(f"src/{name}", 200)
        for name in ("go.mod", "go.sum", "cmd/kubectl/kubectl.go")
    }
    package_id = "SPDXRef-Package-kubernetes"
    location = f"git+https://github.com/kubernetes/kubernetes@{version}"
    lines = _spdx_header("source", version)
    lines += _package(package_id, "kubernetes", version, location, sources)
    lines += _spdx_files(package_id, sources)
    return "\n".join(lines).encode()


def optional_file(name: str, version: str, contents: Mapping[str, bytes]) -> bytes:
    if name == "provenance.json":
        # An in-toto SLSA statement naming the release's artifacts, like upstream's.
        statement = {
            "_type": "https://in-toto.io/Statement/v0.1",
            "predicateType": "https://slsa.dev/provenance/v0.2",
            "subject": [
                {"name": p, "digest": {"sha256": sha256_hex(d)}}
                for p, d in sorted(contents.items())
            ],
            "predicate": {"builder": {"id": "https://prow.k8s.io"}, "buildType": "krel"},
        }
        return json.dumps(statement, indent=2).encode()
    if name == "release-notes.json":
        notes = {"1": {"commit": "0" * 40, "text": f"Release {version}.", "kinds": ["feature"]}}
        return json.dumps(notes, indent=2).encode()
    return f"<html><body><h1>Kubernetes {version}</h1></body></html>\n".encode()
