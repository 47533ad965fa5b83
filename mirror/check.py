"""The per-file rules: what must hold before a file of a release is accepted, or kept.

One implementation for every source of files: ``sync`` applies them to what it just
downloaded, ``verify`` to what a tree holds, ``import`` to what a transfer set unpacked into
staging. Each caller hands in the digests it already computed (never re-read for them) and a
way to read the small companion files; the rules are:

1. Signing policy: a release published before signing is refused unless the user allowed
   checksums-only mirroring (``check_signing_policy``).
2. A primary file's digests equal both SUMS entries, and its ``.sha256``/``.sha512`` sidecars.
3. A ``.docker_tag`` (unsigned upstream) names the release it is served under.
4. Whether a primary must be signature-checked follows from its path and the version, never
   from a manifest; a signed one needs a bundle that verifies under the configured identities,
   and any ``.sig``/``.cert`` beside it must carry the bundle's signature and certificate.
5. What a manifest records for a file agrees with its content and with rule 4
   (``check_record``; for trees and transfer sets, whose manifests are no authority).
6. Nothing else rides along: every file is a primary of the SUMS or a companion of one that
   is itself in the release, and the SUMS files match their own sidecars (``check_release``).
7. Release binding (``binding.py``): in a signed release, each primary is bound to the
   release and path it is served under by the release's signed SBOM, whose own signature is
   checked first.

Problems are collected, not raised, so ``verify`` can list them all; ``sync`` raises the first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from mirror import catalog
from mirror.binding import ReleaseSbom, TagsOf, bind
from mirror.catalog import PlannedFile, RelPath, Version
from mirror.digest import Digests, digest_bytes
from mirror.errors import BindingError, IntegrityError, SignatureError
from mirror.layout import BUNDLE_SUFFIX
from mirror.manifest import FileRecord, Manifest, companion_of
from mirror.sbom import RELEASE_SBOM, SBOM_KINDS

if TYPE_CHECKING:
    from mirror.verify import Verified

Reader = Callable[[str], bytes | None]
"""Reads a small file of the release by its path inside the release (None if absent)."""
TagsReader = Callable[[str], TagsOf]
"""For a path inside the release, how to read that image archive's RepoTags."""


@dataclass(frozen=True)
class BindingPolicy:
    """``verify.release_binding`` and ``verify.unbound_allowed``."""

    mode: str = "sbom"
    allowed_unbound: tuple[str, ...] = ()

    def applies(self, version: str) -> bool:
        return self.mode == "sbom" and catalog.is_signed_release(Version.parse(version))


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str
    """``missing``, ``modified``, ``unexpected``, ``bad-sidecar``, ``bad-bundle``,
    ``bad-manifest``, ``no-manifest``, ``bad-marker``, ``orphan`` (a companion without
    its primary)."""
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}: {self.detail}"


class BundleChecker(Protocol):
    """Offline verification of a Sigstore bundle (``mirror.verify.BundleChecker``)."""

    def check_bundle(
        self,
        name: str,
        sha256_hex: str,
        bundle: bytes | str,
        *,
        sig_text: bytes | None = None,
        cert_text: bytes | None = None,
    ) -> Verified: ...


@dataclass
class CheckResult:
    problems: list[Problem] = field(default_factory=list)
    files_checked: int = 0
    signatures_checked: int = 0
    verified: dict[str, Verified] = field(default_factory=dict)
    """Primary path -> what its bundle's verification established (identity, log index)."""
    bindings: dict[str, str] = field(default_factory=dict)
    """Primary path -> the rule that bound it to its release (``off`` if binding is off)."""
    warnings: list[str] = field(default_factory=list)

    def add(self, path: str, kind: str, detail: str) -> None:
        self.problems.append(Problem(path, kind, detail))


# -- 1. signing policy ------------------------------------------------------------------------


def check_signing_policy(versions: Iterable[str], *, allow_unsigned: bool, hint: str) -> None:
    """Refuse releases published before Kubernetes began signing, unless allowed."""
    if allow_unsigned:
        return
    unsigned = [v for v in versions if not catalog.is_signed_release(Version.parse(v))]
    if unsigned:
        raise SignatureError(
            f"{', '.join(unsigned)}: published before Kubernetes began signing releases "
            f"({catalog.FIRST_SIGNED_VERSION.text}); no signature can be verified",
            hint=hint,
        )


def must_sign(version: str, relpath: str) -> bool:
    """Rule 4: upstream signs this path in this release."""
    return catalog.is_signed_release(Version.parse(version)) and (
        catalog.classify(RelPath(relpath)).signed_kind
    )


# -- 2-4. one primary file --------------------------------------------------------------------


@dataclass(frozen=True)
class Binder:
    """What rule 7 needs for one release: the policy, the verified SBOM (None if there is
    none), and how to read an image archive's tags."""

    policy: BindingPolicy
    evidence: ReleaseSbom | None
    tags_of: TagsReader


def check_primary(
    version: str,
    relpath: str,
    digests: Digests,
    sums: Mapping[str, Mapping[str, str]],
    read: Reader,
    bundles: BundleChecker | None,
    binder: Binder,
    result: CheckResult,
) -> None:
    """Rules 2-4 and 7 for one primary file whose content hashed to ``digests``."""
    before = len(result.problems)
    _check_vouchers(version, relpath, digests, sums, read, bundles, result)
    if len(result.problems) == before:
        check_binding(version, relpath, digests, read, binder, result)


def check_binding(
    version: str, relpath: str, digests: Digests, read: Reader, binder: Binder, result: CheckResult
) -> None:
    """Rule 7 for one primary file."""
    if not binder.policy.applies(version):
        result.bindings[relpath] = "off"
        return
    path = f"release/{version}/{relpath}"
    if binder.evidence is None and relpath not in SBOM_KINDS:
        result.add(path, "unbound", f"no verified {RELEASE_SBOM} binds it to {version}")
        return
    binding = bind(
        version,
        relpath,
        digests,
        binder.evidence,
        content=lambda: read(relpath),
        tags_of=binder.tags_of(relpath),
        allowed_unbound=binder.policy.allowed_unbound,
    )
    if binding.problem is not None:
        result.add(path, "unbound", binding.problem)
        return
    if binding.warning is not None:
        result.warnings.append(f"{path}: {binding.warning}")
    result.bindings[relpath] = binding.rule


def _check_vouchers(
    version: str,
    relpath: str,
    digests: Digests,
    sums: Mapping[str, Mapping[str, str]],
    read: Reader,
    bundles: BundleChecker | None,
    result: CheckResult,
) -> None:
    """Rules 2-4: SUMS, sidecars, the .docker_tag's content, the signature."""
    prefix = f"release/{version}/"
    for algo, digest in (("sha256", digests.sha256), ("sha512", digests.sha512)):
        side = _text(read(relpath + "." + algo))
        if side != digest:
            result.add(prefix + relpath + "." + algo, "bad-sidecar", "does not match the file")
        if sums.get(algo, {}).get(relpath) != digest:
            result.add(prefix + relpath, "bad-sidecar", f"{algo.upper()}SUMS disagrees")
    if relpath.endswith(".docker_tag") and _text(read(relpath)) != version:
        # Unsigned upstream: at least it must name this release, not another.
        result.add(prefix + relpath, "modified", f"does not name {version}")
    if not must_sign(version, relpath):
        return
    bundle = _text(read(relpath + BUNDLE_SUFFIX))
    if bundle is None:
        result.add(prefix + relpath + BUNDLE_SUFFIX, "bad-bundle", "missing")
        return
    if bundles is None:
        result.add(prefix + relpath + BUNDLE_SUFFIX, "bad-bundle", "no trust root to check it")
        return
    try:
        verified = bundles.check_bundle(
            prefix + relpath,
            digests.sha256,
            bundle,
            # Absent (a bundle-only release) is fine; present must agree with the bundle.
            sig_text=read(relpath + ".sig"),
            cert_text=read(relpath + ".cert"),
        )
    except IntegrityError as exc:
        result.add(prefix + relpath + BUNDLE_SUFFIX, "bad-bundle", str(exc))
        return
    result.signatures_checked += 1
    result.verified[relpath] = verified


def raise_first(result: CheckResult) -> None:
    """For a caller that accepts a file only if every rule held (``sync``)."""
    if result.problems:
        first = result.problems[0]
        error = SignatureError if first.kind == "bad-bundle" else IntegrityError
        if first.kind == "unbound":
            error = BindingError
        raise error(f"{first.path}: {first.detail}")


# -- 5. what a manifest says ------------------------------------------------------------------


def check_record(
    version: str, relpath: str, record: FileRecord, digests: Digests, result: CheckResult
) -> None:
    """Rule 5 for a file a manifest lists."""
    path = f"release/{version}/{relpath}"
    if (
        digests.size_bytes != record.size
        or digests.sha256 != record.sha256
        or (record.sha512 is not None and digests.sha512 != record.sha512)
    ):
        result.add(path, "modified", "content differs from what was verified")


def check_primary_record(version: str, relpath: str, record: FileRecord) -> Problem | None:
    want = "sigstore" if must_sign(version, relpath) else "checksums"
    if record.check != want or record.sha512 is None:
        return Problem(
            f"release/{version}/{relpath}",
            "bad-manifest",
            f"recorded as {record.check!r}, not {want!r}",
        )
    return None


# -- 6. a whole release -----------------------------------------------------------------------


def release_sums(version: str, read: Reader, result: CheckResult) -> dict[str, dict[str, str]]:
    """Both SUMS files of a release, parsed; a missing or malformed one is a problem."""
    out: dict[str, dict[str, str]] = {}
    for name, algo in (("SHA256SUMS", "sha256"), ("SHA512SUMS", "sha512")):
        path = f"release/{version}/{name}"
        text = _text(read(name))
        if text is None:
            result.add(path, "missing", "the release's SUMS file is gone")
            continue
        try:
            out[algo] = {str(k): v for k, v in catalog.parse_sums(text, algo, path).items()}
        except IntegrityError as exc:
            result.add(path, "modified", str(exc))
    return out


def check_release(
    version: str,
    manifest: Manifest,
    digests: Mapping[str, Digests],
    read: Reader,
    bundles: BundleChecker | None,
    binder: Binder,
    result: CheckResult,
) -> None:
    """Every rule for the files of one release whose digests are known.

    ``digests`` holds the files to check (a whole release for ``verify``, what a set adds
    for ``import``), each listed in ``manifest``; ``read`` finds any file of the release as it
    is or would be after promotion. ``binder.evidence`` is ignored: the SBOM is loaded (and
    checked first, when it is among the files) from ``read``.
    """
    prefix = f"release/{version}/"
    sums = release_sums(version, read, result)
    primaries = sums.get("sha256", {})
    result.files_checked += len(digests)
    binder, done = _release_binder(version, manifest, digests, sums, read, bundles, binder, result)
    for rel in sorted(digests):
        record = manifest.files[rel]
        check_record(version, rel, record, digests[rel], result)
        if rel in primaries:
            problem = check_primary_record(version, rel, record)
            if problem is not None:
                result.problems.append(problem)
            if record.sha512 is not None and rel not in done:
                check_primary(version, rel, digests[rel], sums, read, bundles, binder, result)
            continue
        base = companion_of(rel, primaries)
        if base is None:
            result.add(prefix + rel, "unexpected", "neither in SUMS nor a sidecar of it")
        elif base not in digests and base not in manifest.files:
            # A companion vouches for nothing without its verified primary: accepting one
            # alone would let a set plant a sidecar or bundle beside no file (or later
            # beside any file).
            result.add(prefix + rel, "orphan", f"a companion of {base}, which is not here")
        elif base in catalog.SUMS_FILES and rel != base:
            algo = rel.rpartition(".")[2]
            body = read(base)
            side = _text(read(rel))
            if body is None or side != getattr(digest_bytes(body), algo):
                result.add(prefix + rel, "bad-sidecar", f"does not match {base}")


def _release_binder(
    version: str,
    manifest: Manifest,
    digests: Mapping[str, Digests],
    sums: Mapping[str, Mapping[str, str]],
    read: Reader,
    bundles: BundleChecker | None,
    binder: Binder,
    result: CheckResult,
) -> tuple[Binder, set[str]]:
    """The release SBOM as evidence for rule 7: checked like any signed file first when it is
    among the files checked (else it entered the tree verified), then parsed. Also returns
    the files already checked here."""
    unbound = Binder(binder.policy, None, binder.tags_of)
    if not binder.policy.applies(version):
        return unbound, set()
    path = f"release/{version}/{RELEASE_SBOM}"
    data = read(RELEASE_SBOM)
    if data is None or RELEASE_SBOM not in sums.get("sha256", {}):
        result.add(path, "missing", "a signed release must carry its signed SBOM")
        return unbound, set()
    done = set()
    if RELEASE_SBOM in digests and manifest.files[RELEASE_SBOM].sha512 is not None:
        done.add(RELEASE_SBOM)
        before = len(result.problems)
        check_primary(
            version, RELEASE_SBOM, digests[RELEASE_SBOM], sums, read, bundles, unbound, result
        )
        if len(result.problems) != before:
            return unbound, done
    try:
        evidence = ReleaseSbom.load(version, data)
    except IntegrityError as exc:
        result.add(path, "unbound", str(exc))
        return unbound, done
    return Binder(binder.policy, evidence, binder.tags_of), done


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        return None


def accept_fetched(
    planned: PlannedFile,
    digests: Digests,
    companions: Mapping[RelPath, bytes],
    content: Callable[[], bytes | None],
    bundles: BundleChecker | None,
    binder: Binder,
) -> tuple[FileRecord, list[str]]:
    """Rules 2-4 and 7 for a file ``sync`` just fetched (its digests computed while it
    streamed, its companions in memory, ``content`` reading it back only when a rule needs the
    bytes: a ``.docker_tag`` or an SBOM). Raises on the first problem; else the record the
    manifest keeps, and any warnings."""
    index: dict[str, dict[str, str]] = {
        "sha256": {planned.relpath: planned.sha256},
        "sha512": {planned.relpath: planned.sha512},
    }

    def read(rel: str) -> bytes | None:
        return content() if rel == planned.relpath else companions.get(RelPath(rel))

    result = CheckResult()
    check_primary(planned.version, planned.relpath, digests, index, read, bundles, binder, result)
    raise_first(result)
    verified = result.verified.get(planned.relpath)
    record = FileRecord(
        digests.size_bytes,
        digests.sha256,
        digests.sha512,
        check="sigstore" if verified else "checksums",
        identity=verified.identity if verified else None,
        log_index=verified.log_index if verified else None,
        binding=result.bindings.get(planned.relpath),
    )
    return record, result.warnings
