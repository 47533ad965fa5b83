"""A generated dl.k8s.io file tree in exact upstream formats , held in memory.

This module owns *what* upstream publishes: the primary files of a release for the platform
matrix, their ``.sha256``/``.sha512`` sidecars, ``.sig``/``.cert`` pairs from a pluggable signer,
the ``SHA256SUMS``/``SHA512SUMS`` lists and their sidecars, the SPDX SBOMs, the version markers
and ``release-notes-index.json``, plus mutations that tamper with all of that for negative tests.
It does no I/O; ``dlserver`` serves an :class:`UpstreamTree` over HTTP.

Keys of :attr:`UpstreamTree.files` are URL paths without the leading slash, e.g.
``release/v1.34.2/bin/linux/amd64/kubectl``; a release's own paths (``relpath``) are relative to
``release/<version>/``, as in the SUMS files.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from mirror.demo.contents import (
    Generator,
    image_tar,
    optional_file,
    release_sbom,
    source_sbom,
    tarballs,
)
from mirror.demo.matrix import (
    CLIENT_BINARIES as CLIENT_BINARIES,
)
from mirror.demo.matrix import (
    COMMON_TARBALLS as COMMON_TARBALLS,
)
from mirror.demo.matrix import (
    EPOCH as EPOCH,
)
from mirror.demo.matrix import (
    FIRST_SIGNED_VERSION as FIRST_SIGNED_VERSION,
)
from mirror.demo.matrix import (
    IMAGE_COMPONENTS as IMAGE_COMPONENTS,
)
from mirror.demo.matrix import (
    KNOWN_OPTIONAL_FILES as KNOWN_OPTIONAL_FILES,
)
from mirror.demo.matrix import (
    NODE_TARBALL_PLATFORMS as NODE_TARBALL_PLATFORMS,
)
from mirror.demo.matrix import (
    OPTIONAL_FILES as OPTIONAL_FILES,
)
from mirror.demo.matrix import (
    PLATFORM_MATRIX as PLATFORM_MATRIX,
)
from mirror.demo.matrix import (
    RELEASE_NOTES_URL as RELEASE_NOTES_URL,
)
from mirror.demo.matrix import (
    RELEASE_SBOM as RELEASE_SBOM,
)
from mirror.demo.matrix import (
    SBOM_FILES as SBOM_FILES,
)
from mirror.demo.matrix import (
    SERVER_ARCHES as SERVER_ARCHES,
)
from mirror.demo.matrix import (
    SERVER_NODE_BINARIES as SERVER_NODE_BINARIES,
)
from mirror.demo.matrix import (
    SUMS_FILES as SUMS_FILES,
)
from mirror.demo.matrix import (
    WINDOWS_NODE_BINARIES as WINDOWS_NODE_BINARIES,
)
from mirror.demo.matrix import (
    image_repo_tag as image_repo_tag,
)
from mirror.demo.matrix import (
    is_prerelease as is_prerelease,
)
from mirror.demo.matrix import (
    is_signed_by_default as is_signed_by_default,
)
from mirror.demo.matrix import (
    is_signed_kind as is_signed_kind,
)
from mirror.demo.matrix import (
    sbom_covers as sbom_covers,
)
from mirror.demo.matrix import (
    sha256_hex as sha256_hex,
)
from mirror.demo.matrix import (
    sha512_hex as sha512_hex,
)
from mirror.demo.matrix import (
    version_key as version_key,
)


class SignedFiles(Protocol):
    """A signer result carrying the two sidecars, like the fake Sigstore stack's ``SignedBlob``."""

    @property
    def sig(self) -> bytes: ...

    @property
    def cert(self) -> bytes: ...


Signer = Callable[[bytes], tuple[bytes, bytes] | SignedFiles]
"""``signer(data)`` -> ``(sig, cert)`` or an object with ``.sig``/``.cert``: the file contents.

Upstream formats: ``.sig`` is base64 of a DER ECDSA P-256 signature over the file, ``.cert`` is
base64 of a PEM certificate. The fake Sigstore stack's ``sign_blob`` is such a callable (wrap it
in ``functools.partial`` to sign as another identity).
"""


@dataclass
class Release:
    """What the tree knows about one generated release (tests compute expectations from it)."""

    version: str
    signed: bool
    platforms: tuple[str, ...]
    primary: tuple[str, ...]
    """Primary relpaths as listed in the SUMS at generation time, sorted."""
    optional: tuple[str, ...]
    signer: Signer | None = field(default=None, repr=False)

    def path(self, relpath: str) -> str:
        """Tree key (URL path without leading slash) of ``relpath`` in this release."""
        return f"release/{self.version}/{relpath}"

    @property
    def signed_files(self) -> tuple[str, ...]:
        """Primary relpaths that carry ``.sig``/``.cert`` (none if the release is unsigned)."""
        return tuple(p for p in self.primary if is_signed_kind(p)) if self.signed else ()


class UpstreamTree:
    """An in-memory dl.k8s.io: ``files`` maps URL paths (no leading slash) to bodies.

    ``seed`` makes file contents deterministic; ``signer`` is the default for signed releases.
    ``files`` is public on purpose: tests may poke it directly, the helpers below keep the
    sidecars, SUMS and signatures consistent (or break them on request).
    """

    def __init__(self, *, seed: int | str = 0, signer: Signer | None = None) -> None:
        self.seed = str(seed)
        self.signer = signer
        self.files: dict[str, bytes] = {}
        self.releases: dict[str, Release] = {}
        self.signatures: dict[str, object] = {}
        """Tree path of each signed file -> what the signer returned for its current content
        (a ``SignedBlob`` with the fake Sigstore stack: UUID, log index, ...)."""
        # A tree-wide write counter per path gives each write a later Last-Modified, so a
        # replaced file also changes its date validator, as a re-upload would upstream.
        self._generation: dict[str, int] = {}
        self._writes = 0

    # -- basic access ------------------------------------------------------------------------

    def put(self, path: str, data: bytes) -> None:
        """Set one file as is; no sidecar, SUMS or signature is touched."""
        path = _key(path)
        self._writes += 1
        self.files[path] = bytes(data)
        self._generation[path] = self._writes

    def remove(self, path: str) -> None:
        """Delete one file (it then 404s); SUMS and sidecars still name it. KeyError if absent."""
        path = _key(path)
        del self.files[path]
        self._generation.pop(path, None)
        self.signatures.pop(path, None)

    def last_modified(self, path: str) -> dt.datetime:
        """The file's Last-Modified: later for every later write."""
        return EPOCH + dt.timedelta(minutes=self._generation.get(_key(path), 0))

    # -- releases ----------------------------------------------------------------------------

    def add_release(
        self,
        version: str,
        *,
        platforms: Iterable[str] | None = None,
        signed: bool | None = None,
        signer: Signer | None = None,
        size_bytes: int | None = None,
        optional_files: Collection[str] = OPTIONAL_FILES,
    ) -> Release:
        """Generate release ``version`` exactly as upstream lays it out .

        ``platforms``: ``"<os>/<arch>"`` keys of :data:`PLATFORM_MATRIX` (default: all).
        Platform-independent tarballs and both SBOMs are always present.
        ``signed``: default is upstream's rule (from v1.26.0-rc.1 on); a signed release needs a
        ``signer`` (here or on the tree) because placeholder signatures would only hide bugs.
        ``size_bytes``: size of every generated binary and image archive; default varies per
        file between 2000 and 6000 bytes. Tarballs hold such payloads, so are a little larger.
        ``optional_files``: which of :data:`KNOWN_OPTIONAL_FILES` to publish.
        """
        version_key(version)  # validates
        if version in self.releases:
            raise ValueError(f"release {version} already exists")
        chosen = tuple(PLATFORM_MATRIX) if platforms is None else tuple(platforms)
        unknown = sorted(set(chosen) - set(PLATFORM_MATRIX))
        if unknown:
            raise ValueError(f"unknown platforms {unknown}; known: {sorted(PLATFORM_MATRIX)}")
        unknown = sorted(set(optional_files) - set(KNOWN_OPTIONAL_FILES))
        if unknown:
            raise ValueError(f"unknown optional files {unknown}; known: {KNOWN_OPTIONAL_FILES}")
        is_signed = is_signed_by_default(version) if signed is None else signed
        the_signer = signer or self.signer
        if is_signed and the_signer is None:
            raise ValueError(
                f"release {version} is signed but no signer was given: pass signer= (the fake "
                "Sigstore stack's sign_blob, or make_not_sigstore_signer()) or signed=False"
            )

        gen = Generator(self.seed, version, size_bytes)
        contents: dict[str, bytes] = {}
        for platform in chosen:
            os_, arch = platform.split("/")
            exe = ".exe" if os_ == "windows" else ""
            for name in PLATFORM_MATRIX[platform]:
                relpath = f"bin/{os_}/{arch}/{name}{exe}"
                contents[relpath] = gen.binary(relpath, os_)
            if os_ == "linux" and arch in SERVER_ARCHES:
                for component in IMAGE_COMPONENTS:
                    relpath = f"bin/linux/{arch}/{component}.tar"
                    contents[relpath] = image_tar(
                        image_repo_tag(version, arch, component), gen.payload(relpath)
                    )
                    # Upstream: the image tag, which is the version string, no newline.
                    contents[f"bin/linux/{arch}/{component}.docker_tag"] = version.encode()
        contents.update(tarballs(gen, chosen, contents))
        contents["kubernetes-source.spdx"] = source_sbom(version, gen)
        contents[RELEASE_SBOM] = release_sbom(version, contents, contents["kubernetes-source.spdx"])

        primary = tuple(sorted(contents))
        release = Release(
            version=version,
            signed=is_signed,
            platforms=chosen,
            primary=primary,
            optional=tuple(f for f in KNOWN_OPTIONAL_FILES if f in optional_files),
            signer=the_signer if is_signed else None,
        )
        self.releases[version] = release
        for relpath in primary:
            self._write_primary(release, relpath, contents[relpath])
            if release.signed and is_signed_kind(relpath):
                self._sign(release, relpath)
        for which, digest in (("SHA256SUMS", sha256_hex), ("SHA512SUMS", sha512_hex)):
            text = "\n".join(f"{digest(contents[p])}  {p}" for p in primary)
            self._write_sums(version, which, text.encode())
        for name in release.optional:
            self.put(release.path(name), optional_file(name, version, contents))
        self._write_release_notes_index()
        return release

    def release_of(self, path: str) -> tuple[Release, str] | None:
        """``(release, relpath)`` if ``path`` lies inside a generated release, else None."""
        m = re.match(r"^release/([^/]+)/(.+)$", _key(path))
        if m is None or m.group(1) not in self.releases:
            return None
        return self.releases[m.group(1)], m.group(2)

    # -- markers -----------------------------------------------------------------------------

    def set_marker(self, name: str, version: str) -> None:
        """Write ``release/<name>.txt`` (``stable``, ``stable-1.34``, ``latest-1``, ...)."""
        name = name.removesuffix(".txt")
        if "/" in name or not name:
            raise ValueError(f"bad marker name {name!r}")
        # Upstream: the bare version string, no trailing newline.
        self.put(f"release/{name}.txt", version.encode())

    def publish_markers(self, *, stable: str | None = None, latest: str | None = None) -> None:
        """Write the usual markers for the generated releases, as upstream would.

        ``stable-1.<m>`` names the newest final release of minor ``m``, ``latest-1.<m>`` the newest
        including pre-releases; ``stable``/``stable-1`` default to the newest final release and
        ``latest``/``latest-1`` to the newest release of all.
        """
        versions = sorted(self.releases, key=version_key)
        finals = [v for v in versions if not is_prerelease(v)]
        for v in versions:
            minor = f"1.{version_key(v)[1]}"
            self.set_marker(f"latest-{minor}", v)
            if not is_prerelease(v):
                self.set_marker(f"stable-{minor}", v)
        stable = stable or (finals[-1] if finals else None)
        latest = latest or (versions[-1] if versions else None)
        if stable is not None:
            self.set_marker("stable", stable)
            self.set_marker("stable-1", stable)
        if latest is not None:
            self.set_marker("latest", latest)
            self.set_marker("latest-1", latest)

    # -- mutations for negative tests --------------------------------------------------------

    def replace_file(
        self,
        path: str,
        data: bytes,
        *,
        update_sums: bool = True,
        update_sidecars: bool = True,
        resign: bool = False,
        signer: Signer | None = None,
        update_sbom: bool | None = None,
    ) -> None:
        """Replace a file's content and, as asked, what vouches for it.

        For a primary file: ``update_sidecars`` rewrites ``.sha256``/``.sha512``; ``update_sums``
        rewrites its line in both SUMS files (and their sidecars); ``resign`` signs the new
        content with ``signer`` (default: the release's), e.g. a signer of the wrong identity.
        ``update_sbom`` (default: when re-signed by the release's own signer, i.e. upstream
        republished the file) regenerates the release SBOM, re-signed, with its SUMS lines.
        Otherwise the signed SBOM is not updated: an attacker who can rewrite the unsigned
        SUMS and sidecars cannot rewrite it, so a covered file then disagrees with the SBOM.
        For a SUMS file, ``update_sidecars`` refreshes its own sidecars. Any other path is set
        as is (a sidecar, a ``.sig``, a marker, or a new file).
        """
        path = _key(path)
        self.put(path, data)
        found = self.release_of(path)
        if found is None:
            return
        release, relpath = found
        if relpath in SUMS_FILES:
            if update_sidecars:
                self._write_sidecars(path, data)
            return
        if relpath not in release.primary:
            return
        if update_sidecars:
            self._write_sidecars(path, data)
        if update_sums:
            for which, digest in (("SHA256SUMS", sha256_hex), ("SHA512SUMS", sha512_hex)):
                self._set_sums_line(release.version, which, relpath, digest(data))
        if resign:
            if not is_signed_kind(relpath):
                raise ValueError(f"{relpath} is a kind upstream never signs")
            self._sign(release, relpath, signer=signer)
        if update_sbom if update_sbom is not None else (resign and signer is None):
            self.republish_sbom(release.version)

    def publish_bundles(
        self,
        version: str,
        bundle_of: Callable[[Any], bytes],
        *,
        detached: bool = True,
        only: Callable[[str], bool] = lambda relpath: True,
    ) -> list[str]:
        """Publish ``<file>.sigstore.json`` for the signed files of a release, as cosign v3
        does: ``bundle_of(signed)`` builds it from what signed the file (the fake Sigstore
        stack's ``published_bundle``). ``detached=False`` removes the ``.sig``/``.cert``.
        ``only`` picks the files (a release published half one way). Returns their paths."""
        release = self.releases[version]
        done = []
        for relpath in release.primary:
            path = release.path(relpath)
            if path not in self.signatures or not only(relpath):
                continue
            self.put(f"{path}.sigstore.json", bundle_of(self.signatures[path]))
            if not detached:
                self.remove(f"{path}.sig")
                self.remove(f"{path}.cert")
            done.append(path)
        return done

    def republish_sbom(self, version: str) -> None:
        """Regenerate the release SBOM from the release's current files, as upstream would
        when it republishes a file, and sign it and list it like any primary file."""
        release = self.releases[version]
        contents = {p: self.files[release.path(p)] for p in release.primary}
        sbom = release_sbom(version, contents, contents["kubernetes-source.spdx"])
        self._write_primary(release, RELEASE_SBOM, sbom)
        for which, digest in (("SHA256SUMS", sha256_hex), ("SHA512SUMS", sha512_hex)):
            self._set_sums_line(version, which, RELEASE_SBOM, digest(sbom))
        if release.signed:
            self._sign(release, RELEASE_SBOM)

    def set_sums_text(self, version: str, text: str | bytes, *, which: str = "SHA256SUMS") -> None:
        """Replace a SUMS file with arbitrary (e.g. hostile) text; its own sidecars follow."""
        if which not in SUMS_FILES:
            raise ValueError(f"which must be one of {SUMS_FILES}")
        if version not in self.releases:
            raise KeyError(version)
        self._write_sums(version, which, text.encode() if isinstance(text, str) else text)

    # -- internals ---------------------------------------------------------------------------

    def _write_primary(self, release: Release, relpath: str, data: bytes) -> None:
        path = release.path(relpath)
        self.put(path, data)
        self._write_sidecars(path, data)

    def _write_sidecars(self, path: str, data: bytes) -> None:
        # Upstream: bare lowercase hex, no file name, no newline.
        self.put(f"{path}.sha256", sha256_hex(data).encode())
        self.put(f"{path}.sha512", sha512_hex(data).encode())

    def _write_sums(self, version: str, which: str, text: bytes) -> None:
        path = f"release/{version}/{which}"
        self.put(path, text)
        self._write_sidecars(path, text)

    def _set_sums_line(self, version: str, which: str, relpath: str, hex_digest: str) -> None:
        path = f"release/{version}/{which}"
        lines = self.files.get(path, b"").decode(errors="surrogateescape").split("\n")
        suffix = f"  {relpath}"
        hits = [i for i, line in enumerate(lines) if line.endswith(suffix)]
        for i in hits:
            lines[i] = f"{hex_digest}{suffix}"
        if not hits:
            lines = [*(line for line in lines if line), f"{hex_digest}{suffix}"]
        self._write_sums(version, which, "\n".join(lines).encode(errors="surrogateescape"))

    def _sign(self, release: Release, relpath: str, *, signer: Signer | None = None) -> None:
        the_signer = signer or release.signer or self.signer
        if the_signer is None:
            raise ValueError(f"no signer to sign {relpath} of {release.version}")
        path = release.path(relpath)
        result = the_signer(self.files[path])
        sig, cert = result if isinstance(result, tuple) else (result.sig, result.cert)
        self.put(f"{path}.sig", sig)
        self.put(f"{path}.cert", cert)
        self.signatures[path] = result

    def _write_release_notes_index(self) -> None:
        index = {
            v: RELEASE_NOTES_URL.format(version=v) for v in sorted(self.releases, key=version_key)
        }
        self.put("release/release-notes-index.json", json.dumps(index, indent=2).encode())


def _key(path: str) -> str:
    return path.removeprefix("/")


# -- a throwaway signer for trials that do not verify signatures --------------------------------


def make_not_sigstore_signer(common_name: str = "NOT SIGSTORE throwaway test signer") -> Signer:
    """A :data:`Signer` with the right file formats that Sigstore verification must REJECT.

    It signs with a fresh P-256 key under a self-signed certificate: no Fulcio chain, no SCT,
    no Rekor entry. Good for format tests and offline trials of the download path only.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(minutes=10))
        .sign(key, hashes.SHA256())
    )
    cert_file = base64.b64encode(cert.public_bytes(serialization.Encoding.PEM))

    def sign(data: bytes) -> tuple[bytes, bytes]:
        return base64.b64encode(key.sign(data, ec.ECDSA(hashes.SHA256()))), cert_file

    return sign
