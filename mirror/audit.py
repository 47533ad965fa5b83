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
import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mirror import catalog
from mirror.config import IdentityConfig
from mirror.errors import ConfigError, IntegrityError, LocalStoreError, MirrorError
from mirror.layout import BUNDLE_SUFFIX, RELEASE_DIR_NAME, STATE_DIR_NAME, TRUST_ROOT_RELPATH
from mirror.store import Manifest, Store, write_atomic
from mirror.verify import BundleChecker, TrustRoot, load_trust_root

READ_BYTES = 1 << 20

Digests = tuple[int, str, str | None]
"""Size, sha256 and (for files recorded with one) sha512 of a file's content."""


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str
    """``missing``, ``modified``, ``unexpected``, ``bad-sidecar``, ``bad-bundle``,
    ``no-manifest``, ``bad-marker``."""
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}"


@dataclass
class AuditResult:
    releases: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    files_checked: int = 0
    signatures_checked: int = 0
    problems: list[Problem] = field(default_factory=list)


def _digests(path: Path, want_sha512: bool) -> Digests:
    sha256 = hashlib.sha256()
    sha512 = hashlib.sha512() if want_sha512 else None
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(READ_BYTES):
            size += len(block)
            sha256.update(block)
            if sha512 is not None:
                sha512.update(block)
    return size, sha256.hexdigest(), sha512.hexdigest() if sha512 else None


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
    ) -> None:
        self.store = Store(root)
        self.root = root
        self.identities = identities
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
            trust: TrustRoot = load_trust_root(str(self.trusted_root_path))
            self._checker = BundleChecker(trust, self.identities)
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
        self.progress_path.unlink(missing_ok=True)
        return self.result

    def _load_progress(self) -> set[str]:
        try:
            return set(json.loads(self.progress_path.read_text())["passed"])
        except (OSError, ValueError, KeyError, TypeError):
            return set()

    def _save_progress(self, done: set[str]) -> None:
        if not self.store.state.is_dir():
            return
        # Resuming is a convenience; an unwritable state dir must not fail the audit.
        with contextlib.suppress(MirrorError):
            write_atomic(self.progress_path, json.dumps({"passed": sorted(done)}).encode())

    def problem(self, path: str, kind: str, detail: str) -> None:
        self.result.problems.append(Problem(path, kind, detail))

    def _audit_release(self, version: str, pool: ThreadPoolExecutor) -> None:
        base = self.store.release_dir(version)
        prefix = f"release/{version}/"
        if not self.store.manifest_path(version).is_file():
            self.problem(prefix, "no-manifest", "this release was not written by k8s-mirror")
            return
        try:
            manifest = self.store.load_manifest(version)
        except LocalStoreError as exc:
            self.problem(prefix, "no-manifest", str(exc))
            return
        on_disk = set()
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            for filename in filenames:
                on_disk.add(str(Path(dirpath, filename).relative_to(base)))
        for rel in sorted(on_disk - set(manifest.files)):
            self.problem(prefix + rel, "unexpected", "not in the release's manifest")
        for rel in sorted(set(manifest.files) - on_disk):
            self.problem(prefix + rel, "missing", "in the manifest but not on disk")
        present = sorted(set(manifest.files) & on_disk)
        digests = dict(
            zip(
                present,
                pool.map(
                    lambda rel: _digests(base / rel, manifest.files[rel].sha512 is not None),
                    present,
                ),
                strict=True,
            )
        )
        self.check_files(version, manifest, digests)

    def check_files(
        self,
        version: str,
        manifest: Manifest,
        digests: Mapping[str, Digests],
        locate: Callable[[str], Path] | None = None,
    ) -> None:
        """Check files of one release whose digests are known against ``manifest``, and what
        vouches for each primary among them (sidecars, SUMS, bundle).

        ``locate`` maps a path inside the release to the file to read (default: the tree's
        release directory); ``import`` points it at its staging area first, so a set is
        checked exactly like a tree before anything of it is promoted.
        """
        base = self.store.release_dir(version)
        where = locate or (lambda rel: base / rel)
        prefix = f"release/{version}/"
        self.result.files_checked += len(digests)
        for rel, (size, sha256, sha512) in digests.items():
            record = manifest.files[rel]
            if size != record.size or sha256 != record.sha256 or sha512 != record.sha512:
                self.problem(prefix + rel, "modified", "content differs from what was verified")
        self._audit_primaries(version, manifest, digests, where)

    def _audit_primaries(
        self,
        version: str,
        manifest: Manifest,
        digests: Mapping[str, Digests],
        locate: Callable[[str], Path],
    ) -> None:
        """Each checked file must be a SUMS-listed primary or a companion of one; a primary is
        checked against its sidecars and both SUMS, and against its bundle whenever its path
        and version say upstream signs it. What must be signature-checked follows from the
        path, never from the manifest: a manifest in a writable tree is no authority."""
        prefix = f"release/{version}/"
        sums = self._tree_sums(version, locate)
        primaries = sums.get("sha256", {})
        signed_release = catalog.is_signed_release(catalog.Version.parse(version))
        for rel in sorted(digests):
            record = manifest.files[rel]
            if rel not in primaries:
                if not is_companion(rel, primaries):
                    self.problem(prefix + rel, "unexpected", "neither in SUMS nor a sidecar of it")
                elif rel.partition(".")[0] in catalog.SUMS_FILES and "." in rel:
                    sums_name, _, algo = rel.partition(".")
                    body = _read_bytes(locate(sums_name))
                    side = _read_text(locate(rel))
                    if body is None or side != hashlib.new(algo, body).hexdigest():
                        self.problem(prefix + rel, "bad-sidecar", f"does not match {sums_name}")
                continue
            must_sign = signed_release and catalog.classify(catalog.RelPath(rel)).signed_kind
            want = "sigstore" if must_sign else "checksums"
            if record.check != want or record.sha512 is None:
                self.problem(
                    prefix + rel, "bad-manifest", f"recorded as {record.check!r}, not {want!r}"
                )
            _, sha256, sha512 = digests[rel]
            if sha512 is None:
                continue
            for suffix, digest in ((".sha256", sha256), (".sha512", sha512)):
                side = _read_text(locate(rel + suffix))
                if side != digest:
                    self.problem(prefix + rel + suffix, "bad-sidecar", "does not match the file")
            for algo, digest in (("sha256", sha256), ("sha512", sha512)):
                if sums.get(algo, {}).get(rel) != digest:
                    self.problem(prefix + rel, "bad-sidecar", f"{algo.upper()}SUMS disagrees")
            if rel.endswith(".docker_tag") and _read_text(locate(rel)) != version:
                # Unsigned upstream: at least it must name this release, not another.
                self.problem(prefix + rel, "modified", f"does not name {version}")
            if not must_sign:
                continue
            bundle = _read_text(locate(rel + BUNDLE_SUFFIX))
            if bundle is None:
                self.problem(prefix + rel + BUNDLE_SUFFIX, "bad-bundle", "missing")
                continue
            try:
                self.checker().check_bundle(
                    prefix + rel,
                    sha256,
                    bundle,
                    sig_text=_read_bytes(locate(rel + ".sig")) or b"",
                    cert_text=_read_bytes(locate(rel + ".cert")) or b"",
                )
                self.result.signatures_checked += 1
            except IntegrityError as exc:
                self.problem(prefix + rel + BUNDLE_SUFFIX, "bad-bundle", str(exc))

    def _tree_sums(self, version: str, locate: Callable[[str], Path]) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {}
        for name, algo in (("SHA256SUMS", "sha256"), ("SHA512SUMS", "sha512")):
            path = f"release/{version}/{name}"
            text = _read_text(locate(name))
            if text is None:
                self.problem(path, "missing", "the release's SUMS file is gone")
                continue
            try:
                out[algo] = {str(k): v for k, v in catalog.parse_sums(text, algo, path).items()}
            except IntegrityError as exc:
                self.problem(path, "modified", str(exc))
        return out

    def _audit_top_level(self, releases: set[str]) -> None:
        """Markers must name releases in the tree; nothing else may sit beside them."""
        allowed_top = {RELEASE_DIR_NAME, STATE_DIR_NAME, TRUST_ROOT_RELPATH.split("/")[0]}
        for entry in sorted(self.root.iterdir()):
            if entry.name not in allowed_top:
                self.problem(entry.name, "unexpected", "not part of a mirror tree")
        trust_dir = self.root / TRUST_ROOT_RELPATH.split("/")[0]
        if trust_dir.is_dir():
            for entry in sorted(trust_dir.iterdir()):
                if entry.name != Path(TRUST_ROOT_RELPATH).name:
                    self.problem(str(entry.relative_to(self.root)), "unexpected", "stray file")
        for entry in sorted((self.root / RELEASE_DIR_NAME).iterdir()):
            rel = f"release/{entry.name}"
            if entry.is_dir() and entry.name in releases:
                continue
            name = entry.name.removesuffix(".txt")
            if entry.is_file() and entry.name.endswith(".txt") and catalog.is_marker(name):
                target = _read_text(entry)
                if target not in releases:
                    self.problem(rel, "bad-marker", f"names {target!r}, not a release in the tree")
                continue
            if entry.name == "release-notes-index.json":
                continue
            self.problem(rel, "unexpected", "not a release directory or a marker")


COMPANION_SUFFIXES = (*catalog.SIDECAR_DIGESTS, *catalog.SIGNATURE_SIDECARS, BUNDLE_SUFFIX)


def is_companion(rel: str, primaries: Mapping[str, str]) -> bool:
    """A SUMS file, a SUMS sidecar, or a sidecar/signature/bundle of a primary file."""
    if rel in catalog.SUMS_FILES:
        return True
    for suffix in COMPANION_SUFFIXES:
        if rel.endswith(suffix):
            base = rel[: -len(suffix)]
            if base in primaries:
                return True
            if base in catalog.SUMS_FILES and suffix in catalog.SIDECAR_DIGESTS:
                return True
    return False


def _read_bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.stat().st_size < 1 << 22 else None
    except OSError:
        return None


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8").strip() if path.stat().st_size < 1 << 20 else None
    except (OSError, UnicodeDecodeError):
        return None
