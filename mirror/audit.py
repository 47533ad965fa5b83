"""Offline re-verification of a whole tree (``k8s-mirror verify``): no network at all.

For every release directory: each file must be in the release's manifest (else *unexpected*),
each manifest entry must be on disk (else *missing*) with its recorded size and sha256 (else
*modified*); each primary file's sha512, its ``.sha256``/``.sha512`` sidecars and the tree's
SHA256SUMS/SHA512SUMS must agree; each signed file's ``.sigstore.json`` bundle must verify
against the trust root stored in the tree (or one given on the command line) under the
configured identities. Markers must name a release in the tree. Every problem is collected;
nothing stops at the first.

``resume``: releases that passed in an interrupted earlier audit are skipped (recorded in
``.k8s-mirror/audit-progress.json``, cleared when an audit completes).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mirror import verify
from mirror.binding import tags_in
from mirror.check import Binder, BindingPolicy, CheckResult, check_release
from mirror.config import IdentityConfig
from mirror.digest import Digests, digest_file
from mirror.errors import ConfigError, LocalStoreError, MirrorError
from mirror.layout import RELEASE_DIR_NAME, STATE_DIR_NAME, TRUST_ROOT_RELPATH
from mirror.sbom import SBOM_KINDS, SBOM_MAX_BYTES
from mirror.statefile import StateFormatError, read_json_file
from mirror.store import Store, write_atomic

if TYPE_CHECKING:
    from mirror.verify import BundleChecker, TrustRoot, Verified

RELEASE_NOTES_INDEX = "release-notes-index.json"
SMALL_FILE_MAX_BYTES = 4 << 20
PROGRESS_MAX_BYTES = 1 << 20
"""Companions, SUMS and .docker_tag files are read whole; nothing legitimate is this big."""


@dataclass
class AuditResult(CheckResult):
    releases: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


class TreeAudit:
    def __init__(
        self,
        root: Path,
        identities: Sequence[IdentityConfig],
        *,
        trusted_root: Path | None = None,
        releases: Sequence[str] = (),
        resume: bool = False,
        on_release: Callable[[str, int], None] | None = None,
        binding: BindingPolicy | None = None,
    ) -> None:
        self.store = Store(root)
        self.root = root
        self.identities = identities
        self.binding = binding or BindingPolicy()
        self.trusted_root_path = trusted_root or root / TRUST_ROOT_RELPATH
        self.only = list(releases)
        self.resume = resume
        self.on_release = on_release
        self.result = AuditResult()
        self._checker: BundleChecker | None = None

    @property
    def progress_path(self) -> Path:
        return self.store.state / "audit-progress.json"

    def checker(self) -> BundleChecker:
        if self._checker is None:
            if not self.trusted_root_path.is_file():
                raise ConfigError(
                    f"{self.trusted_root_path}: no trust root in the tree; pass --trusted-root",
                    source="verify",
                )
            trust: TrustRoot = verify.load_trust_root(str(self.trusted_root_path))
            self._checker = verify.BundleChecker(trust, self.identities)
        return self._checker

    def run(self) -> AuditResult:
        if not (self.root / RELEASE_DIR_NAME).is_dir():
            raise LocalStoreError(f"{self.root}: not a mirror tree (no release/ directory)")
        in_tree = self.store.versions_in_tree()
        for name in self.only:
            if name not in in_tree:
                raise ConfigError(f"release {name} is not in the tree", source="--release")
        targets = self.only or in_tree
        done = self._load_progress() if self.resume else set()
        with ThreadPoolExecutor(max_workers=2) as pool:
            for version in targets:
                if version in done:
                    self.result.skipped.append(version)
                    continue
                before = len(self.result.problems)
                self._audit_release(version, pool)
                self.result.releases.append(version)
                if len(self.result.problems) == before:
                    done.add(version)
                    self._save_progress(done)
                if self.on_release:
                    self.on_release(version, len(self.result.problems) - before)
        if not self.only:
            self._audit_top_level(set(in_tree))
        # On read-only media (the normal case on the offline side) there is nothing to clear.
        with contextlib.suppress(OSError):
            self.progress_path.unlink(missing_ok=True)
        return self.result

    def _load_progress(self) -> set[str]:
        try:
            data = read_json_file(self.progress_path, max_bytes=PROGRESS_MAX_BYTES)
        except (OSError, StateFormatError):
            return set()
        passed = data.get("passed") if isinstance(data, dict) else None
        if not isinstance(passed, list):
            return set()
        return {name for name in passed if isinstance(name, str)}

    def _save_progress(self, done: set[str]) -> None:
        if not self.store.state.is_dir() or not os.access(self.store.state, os.W_OK):
            return
        # Resuming is a convenience; an unwritable state dir must not fail the audit.
        with contextlib.suppress(MirrorError):
            write_atomic(self.progress_path, json.dumps({"passed": sorted(done)}).encode())

    def _audit_release(self, version: str, pool: ThreadPoolExecutor) -> None:
        base = self.store.release_dir(version)
        prefix = f"release/{version}/"
        if not self.store.manifest_path(version).is_file():
            self.result.add(prefix, "no-manifest", "this release was not written by k8s-mirror")
            return
        try:
            manifest = self.store.load_manifest(version)
        except LocalStoreError as exc:
            self.result.add(prefix, "no-manifest", str(exc))
            return
        on_disk = set()
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for filename in filenames:
                on_disk.add(str(Path(dirpath, filename).relative_to(base)))
        for rel in sorted(on_disk - set(manifest.files)):
            self.result.add(prefix + rel, "unexpected", "not in the release's manifest")
        for rel in sorted(set(manifest.files) - on_disk):
            self.result.add(prefix + rel, "missing", "in the manifest but not on disk")
        present = sorted(set(manifest.files) & on_disk)

        def digests_of(rel: str) -> Digests | None:
            try:
                return digest_file(base / rel, sha512=manifest.files[rel].sha512 is not None)
            except OSError as exc:
                self.result.add(prefix + rel, "modified", f"unreadable: {exc.strerror}")
                return None

        hashed = dict(zip(present, pool.map(digests_of, present), strict=True))
        digests = {rel: d for rel, d in hashed.items() if d is not None}
        binder = Binder(self.binding, None, tags_in(lambda rel: base / rel))
        check_release(
            version, manifest, digests, reader(lambda rel: base / rel), self, binder, self.result
        )

    def check_bundle(
        self,
        name: str,
        sha256_hex: str,
        bundle: bytes | str,
        *,
        sig_text: bytes | None = None,
        cert_text: bytes | None = None,
    ) -> Verified:
        """The bundle check ``check_release`` asks for; the trust root is loaded on first use,
        so a tree of unsigned releases needs none."""
        return self.checker().check_bundle(
            name, sha256_hex, bundle, sig_text=sig_text, cert_text=cert_text
        )

    def _audit_top_level(self, releases: set[str]) -> None:
        """Markers must name releases in the tree; nothing else may sit beside them."""
        allowed_top = {RELEASE_DIR_NAME, STATE_DIR_NAME, TRUST_ROOT_RELPATH.split("/")[0]}
        for entry in sorted(self.root.iterdir()):
            if entry.name not in allowed_top:
                self.result.add(entry.name, "unexpected", "not part of a mirror tree")
        trust_dir = self.root / TRUST_ROOT_RELPATH.split("/")[0]
        if trust_dir.is_dir():
            for entry in sorted(trust_dir.iterdir()):
                if entry.name != Path(TRUST_ROOT_RELPATH).name:
                    self.result.add(str(entry.relative_to(self.root)), "unexpected", "stray file")
        markers = self.store.markers()
        for name, target in markers.items():
            if target not in releases:
                self.result.add(
                    f"release/{name}.txt",
                    "bad-marker",
                    f"names {target!r}, not a release in the tree",
                )
        for entry in sorted((self.root / RELEASE_DIR_NAME).iterdir()):
            if entry.is_dir() and entry.name in releases:
                continue
            if (
                entry.name.removesuffix(".txt") in markers
                or entry.name == "release-notes-index.json"
            ):
                continue
            self.result.add(
                f"release/{entry.name}", "unexpected", "not a release directory or a marker"
            )


def read_small(path: Path, max_bytes: int = SMALL_FILE_MAX_BYTES) -> bytes | None:
    """A small file's bytes, or None if absent, unreadable, a symlink or over ``max_bytes``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with open(fd, "rb") as handle:
        data = handle.read(max_bytes + 1)
    return data if len(data) <= max_bytes else None


def reader(locate: Callable[[str], Path]) -> Callable[[str], bytes | None]:
    """Reads the small files of a release, found by ``locate`` (the SBOMs may be larger)."""
    return lambda rel: read_small(
        locate(rel), SBOM_MAX_BYTES if rel in SBOM_KINDS else SMALL_FILE_MAX_BYTES
    )
