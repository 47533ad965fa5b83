"""What a generated release contains and which rules it follows: the platform matrix of recent
Kubernetes releases, the tarball and SBOM names, version ordering and where signing began.

Pure data and functions; ``release`` builds trees from them, ``contents`` fills the files.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from collections.abc import Mapping

# -- The platform matrix of recent releases ----------------------------------------------------

SERVER_ARCHES: tuple[str, ...] = ("amd64", "arm64", "ppc64le", "s390x")
"""Linux architectures that carry the full server and node set, images and server tarballs."""

SERVER_NODE_BINARIES: tuple[str, ...] = (
    "apiextensions-apiserver",
    "kube-aggregator",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-log-runner",
    "kube-proxy",
    "kube-scheduler",
    "kubeadm",
    "kubectl",
    "kubectl-convert",
    "kubelet",
    "mounter",
)
IMAGE_COMPONENTS: tuple[str, ...] = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kube-proxy",
)
"""Each has ``bin/linux/<arch>/<component>.tar`` and ``<component>.docker_tag`` on server arches."""

CLIENT_BINARIES: tuple[str, ...] = ("kubectl", "kubectl-convert")
WINDOWS_NODE_BINARIES: tuple[str, ...] = (
    "kube-log-runner",
    "kube-proxy",
    "kubeadm",
    "kubectl",
    "kubectl-convert",
    "kubelet",
)

PLATFORM_MATRIX: Mapping[str, tuple[str, ...]] = {
    **{f"linux/{arch}": SERVER_NODE_BINARIES for arch in SERVER_ARCHES},
    "linux/386": CLIENT_BINARIES,
    "linux/arm": CLIENT_BINARIES,
    "darwin/amd64": CLIENT_BINARIES,
    "darwin/arm64": CLIENT_BINARIES,
    "windows/amd64": WINDOWS_NODE_BINARIES,
    "windows/386": CLIENT_BINARIES,
    "windows/arm64": CLIENT_BINARIES,
}
"""``"<os>/<arch>"`` -> plain binaries under ``bin/<os>/<arch>/`` (names without ``.exe``)."""

NODE_TARBALL_PLATFORMS: tuple[str, ...] = (*(f"linux/{a}" for a in SERVER_ARCHES), "windows/amd64")
"""Platforms with a ``kubernetes-node-<os>-<arch>.tar.gz``."""

COMMON_TARBALLS: tuple[str, ...] = (
    "kubernetes.tar.gz",
    "kubernetes-src.tar.gz",
    "kubernetes-test-portable.tar.gz",
    "kubernetes-manifests.tar.gz",
)
"""Platform-independent tarballs, present in every release."""

SBOM_FILES: tuple[str, ...] = ("kubernetes-release.spdx", "kubernetes-source.spdx")
RELEASE_SBOM = "kubernetes-release.spdx"
SUMS_FILES: tuple[str, ...] = ("SHA256SUMS", "SHA512SUMS")
OPTIONAL_FILES: tuple[str, ...] = ("provenance.json", "release-notes.json")
"""Unsigned extras without sidecars, not in the SUMS; upstream may 404 them."""
KNOWN_OPTIONAL_FILES: tuple[str, ...] = (*OPTIONAL_FILES, "announcement.html")

FIRST_SIGNED_VERSION = "v1.26.0-rc.1"
"""Signing of release files started here; older releases have no ``.sig``/``.cert``."""

# Fixed, so two generations with the same seed are byte-identical.
EPOCH = dt.datetime(2025, 1, 1, tzinfo=dt.UTC)
RELEASE_NOTES_URL = "https://dl.k8s.io/release/{version}/release-notes.json"

_VERSION_RE = re.compile(r"^v(\d+)\.(\d+)\.(\d+)(?:-(alpha|beta|rc)\.(\d+))?$")
_PRE_RANK = {"alpha": 0, "beta": 1, "rc": 2, None: 3}


def version_key(version: str) -> tuple[int, int, int, int, int]:
    """Sort key for ``vX.Y.Z[-alpha|beta|rc.N]``; a pre-release sorts before its final."""
    m = _VERSION_RE.match(version)
    if m is None:
        raise ValueError(f"not a Kubernetes release version: {version!r}")
    major, minor, patch, pre, n = m.groups()
    return (int(major), int(minor), int(patch), _PRE_RANK[pre], int(n or 0))


def is_prerelease(version: str) -> bool:
    return version_key(version)[3] != _PRE_RANK[None]


def is_signed_by_default(version: str) -> bool:
    """Upstream signed every release from v1.26.0-rc.1 on."""
    return version_key(version) >= version_key(FIRST_SIGNED_VERSION)


def is_signed_kind(relpath: str) -> bool:
    """Whether upstream signs this primary file: every primary file except ``*.docker_tag``."""
    return not relpath.endswith(".docker_tag")


def sbom_covers(relpath: str) -> bool:
    """Whether generated ``kubernetes-release.spdx`` lists this primary relpath as a file
    (binaries by path, tarballs by name; image archives appear as packages instead)."""
    return relpath.endswith(".tar.gz") or (
        relpath.startswith("bin/") and not relpath.endswith((".docker_tag", ".tar"))
    )


def image_repo_tag(version: str, arch: str, component: str) -> str:
    """The tag an image archive of the release names in its ``manifest.json``."""
    return f"registry.k8s.io/{component}-{arch}:{version.replace('+', '_')}"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha512_hex(data: bytes) -> str:
    return hashlib.sha512(data).hexdigest()
