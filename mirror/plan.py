"""The first phases of a sync: learn what upstream offers, then decide what to fetch.

``determine`` needs the network but writes nothing: it resolves markers to versions and reads
each release's SHA256SUMS/SHA512SUMS (from the tree when the release is already mirrored,
else from upstream, each checked against its own sidecars), and checks the selection and the
signing policy, so a config mistake stops the run before anything is created on disk.

``plan_release`` needs no network: under the run's lock it sorts every selected file of a
release into present (in the manifest and on disk), staged (verified by an earlier run and
waiting in staging) or to fetch.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from mirror import catalog
from mirror.binding import ReleaseSbom
from mirror.catalog import PlannedFile, RelPath, Selection, Version
from mirror.check import BindingPolicy, check_signing_policy
from mirror.companion import SignatureForm
from mirror.digest import digest_bytes, digest_file
from mirror.errors import (
    ConfigError,
    DigestMismatchError,
    HTTPStatusError,
    IntegrityError,
    MirrorError,
    ReleaseNotFoundError,
)
from mirror.fetch import WHOLE_BODY_MAX_BYTES, Fetcher
from mirror.manifest import FileRecord, Manifest, companions, required_companions, sums_files
from mirror.report import Failure
from mirror.sbom import RELEASE_SBOM, SBOM_KINDS, SBOM_MAX_BYTES
from mirror.store import Store

log = logging.getLogger(__name__)
T = TypeVar("T")
InThread = Callable[..., Awaitable[Any]]

SUMS_MAX_BYTES = 2 << 20
DOCKER_TAG_MAX_BYTES = 4 << 10
KNOWN_SIZE_FACTOR = 4
KNOWN_SIZE_RELEASES = 4
KNOWN_SIZE_SLACK_BYTES = 16 << 20
UNSIGNED_HINT = (
    "to mirror them with checksum verification only, "
    'set [verify] unsigned_releases = "checksums-only"'
)


@dataclass
class ReleaseIndex:
    """What upstream (or the tree) says a release contains."""

    version: Version
    sums256: dict[RelPath, str]
    sums512: dict[RelPath, str]
    sums_files: dict[RelPath, bytes]
    """SUMS files and their sidecars as fetched, to stage with a release new to the tree
    (empty when they were read from the tree)."""


@dataclass
class Offer:
    """Everything ``determine`` learnt."""

    markers: dict[str, str]
    indexes: list[ReleaseIndex]
    failures: list[Failure]


@dataclass
class ReleasePlan:
    """One release of this run: its selected files and their state."""

    version: Version
    in_tree: bool
    manifest: Manifest
    files: list[PlannedFile]
    sums_files: dict[RelPath, bytes]
    present: list[PlannedFile] = field(default_factory=list)
    staged: dict[str, FileRecord] = field(default_factory=dict)
    evidence: ReleaseSbom | None = None
    """The release's verified SBOM, once the run has it (release binding)."""
    form: SignatureForm | None = None
    """How upstream publishes this release's signatures, once the first file told."""
    to_fetch: list[PlannedFile] = field(default_factory=list)
    failed: int = 0
    known_sizes: dict[str, int] = field(default_factory=dict)
    """Sizes the same paths have in the tree's other releases (for ``size_cap``)."""

    @property
    def name(self) -> str:
        return self.version.text

    def files_to_add(self) -> int:
        """How many files the tree gains when this release is done."""
        present = {f.relpath for f in self.present}
        added = sum(
            1 + len(companions(f.relpath, signed=f.signed))
            for f in self.files
            if f.relpath not in present
        )
        return added + (0 if self.in_tree else len(sums_files()))

    def size_cap(self, planned: PlannedFile) -> int | None:
        """The most bytes a body of ``planned`` may plausibly have, or None for no bound
        beyond ``upstream.max_file_size_bytes``: SUMS bind content, not size, so an endless
        body would otherwise be read to that cap. A kind with a fixed bound has it; a path the
        tree holds in another release may grow to a small multiple of its size there."""
        if planned.relpath.endswith(".docker_tag"):
            return DOCKER_TAG_MAX_BYTES
        if planned.relpath in SBOM_KINDS:
            return SBOM_MAX_BYTES
        known = self.known_sizes.get(planned.relpath)
        return None if known is None else KNOWN_SIZE_FACTOR * known + KNOWN_SIZE_SLACK_BYTES

    def expects_large(self, planned: PlannedFile) -> bool:
        """Whether ``planned`` was a large body in an earlier release (so its download takes
        a large slot before it asks: ``fetch.py``)."""
        return self.known_sizes.get(planned.relpath, 0) > WHOLE_BODY_MAX_BYTES

    def keep_paths(self) -> list[str]:
        """Every path of the release this selection keeps (for prune)."""
        paths = [str(p) for p in sums_files()]
        for planned in self.files:
            paths += [planned.relpath, *companions(planned.relpath, signed=planned.signed)]
        return paths


@dataclass
class Plan:
    markers: dict[str, str]
    releases: list[ReleasePlan]

    @property
    def needs_signatures(self) -> bool:
        return any(f.signed for r in self.releases for f in r.to_fetch)


# -- determine (network, read-only) -----------------------------------------------------------


async def determine(
    versions: Sequence[str],
    selection: Selection,
    *,
    allow_unsigned: bool,
    store: Store,
    fetcher: Fetcher,
    in_thread: InThread,
    on_new_release: Callable[[], object] = lambda: None,
) -> Offer:
    """Resolve markers and read every wanted release's SUMS; raise ``ConfigError`` (or the
    signing policy's ``SignatureError``) before anything is written. ``on_new_release`` is
    called before the SUMS of a release not yet in the tree are fetched."""
    markers: dict[str, str] = {}
    wanted: dict[str, Version] = {}
    failures: list[Failure] = []
    for entry in versions:
        if catalog.is_version(entry):
            wanted[entry] = Version.parse(entry)
            continue
        path = str(catalog.marker_path(entry))
        try:
            body = await fetcher.text(
                fetcher.upstream.release_url(path), max_bytes=catalog.MARKER_MAX_BYTES
            )
            version = catalog.parse_marker_body(entry, body)
        except MirrorError as exc:
            # One marker that will not resolve must not hold back the other releases.
            failures.append(Failure.of(exc, path))
            continue
        markers[entry] = version.text
        wanted[version.text] = version
    check_signing_policy(wanted, allow_unsigned=allow_unsigned, hint=UNSIGNED_HINT)
    indexes = []
    for version in sorted(wanted.values()):
        try:
            indexes.append(await _release_index(store, fetcher, version, in_thread, on_new_release))
        except ReleaseNotFoundError:
            raise  # a version that does not exist is a selection error: stop the run
        except MirrorError as exc:
            failures.append(Failure.of(exc, f"release/{version}", version.text))
    if not failures and indexes:
        _check_selection(selection, indexes)
    return Offer(markers, indexes, failures)


def _check_selection(selection: Selection, indexes: Sequence[ReleaseIndex]) -> None:
    """A typo would otherwise select nothing and "succeed" with an empty release."""
    listed = [list(i.sums256) for i in indexes]
    problems = [
        f"select.components: {c!r} matches no file of the selected releases"
        for c in catalog.unmatched_components(selection, listed)
    ] + [
        f"select.platforms: {p!r} matches no file of the selected releases"
        for p in catalog.unmatched_platforms(selection, listed)
    ]
    if problems:
        raise ConfigError(problems)


async def _release_index(
    store: Store,
    fetcher: Fetcher,
    version: Version,
    in_thread: InThread,
    on_new_release: Callable[[], object],
) -> ReleaseIndex:
    name = version.text
    manifest = await in_thread(store.load_manifest, name)
    fetched: dict[RelPath, bytes] = {}
    if store.release_in_tree(name) and all(store.present(manifest, s) for s in catalog.SUMS_FILES):
        texts = {}
        for sums_name in catalog.SUMS_FILES:
            path = store.tree_path(name, RelPath(sums_name))
            texts[sums_name] = _ascii(
                await in_thread(path.read_bytes), f"release/{name}/{sums_name}"
            )
    else:
        on_new_release()
        texts, fetched = await _fetch_sums(fetcher, name)
    sums256 = catalog.parse_sums(texts["SHA256SUMS"], "sha256", f"release/{name}/SHA256SUMS")
    sums512 = catalog.parse_sums(texts["SHA512SUMS"], "sha512", f"release/{name}/SHA512SUMS")
    return ReleaseIndex(version, sums256, sums512, fetched)


async def _fetch_sums(
    fetcher: Fetcher, version: str
) -> tuple[dict[str, str], dict[RelPath, bytes]]:
    """Both SUMS files, each checked against its own .sha256/.sha512 sidecars."""
    texts: dict[str, str] = {}
    files: dict[RelPath, bytes] = {}
    for sums_name in catalog.SUMS_FILES:
        base = f"release/{version}/{sums_name}"
        try:
            body = await fetcher.bytes(fetcher.upstream.release_url(base), max_bytes=SUMS_MAX_BYTES)
        except HTTPStatusError as exc:
            if exc.status == 404 and sums_name == catalog.SUMS_FILES[0]:
                raise ReleaseNotFoundError(version, fetcher.upstream.config.url) from None
            raise
        files[RelPath(sums_name)] = body
        digests = digest_bytes(body)
        for algo in ("sha256", "sha512"):
            side = await fetcher.text(
                fetcher.upstream.release_url(f"{base}.{algo}"), max_bytes=catalog.SIDECAR_MAX_BYTES
            )
            expected = catalog.parse_sidecar(side, algo, f"{base}.{algo}")
            if getattr(digests, algo) != expected:
                raise DigestMismatchError(f"{base}: does not match {base}.{algo}")
            files[RelPath(f"{sums_name}.{algo}")] = side.encode()
        texts[sums_name] = _ascii(body, base)
    return texts, files


def _ascii(body: bytes, source: str) -> str:
    try:
        return body.decode("ascii")
    except UnicodeDecodeError:
        raise IntegrityError(f"{source}: not ASCII text") from None


# -- plan (local, under the lock) -------------------------------------------------------------


def plan_release(
    store: Store,
    index: ReleaseIndex,
    selection: Selection,
    staged: dict[str, FileRecord],
    *,
    binding: BindingPolicy,
) -> ReleasePlan:
    """(worker thread) Sort the selected files of one release by what is still to do.

    ``staged`` is the release's staging journal: files an earlier run verified. When release
    binding applies, the release SBOM is planned whether or not the selection names it: it is
    small, and it is the evidence every other file is bound by.
    """
    name = index.version.text
    signed = catalog.is_signed_release(index.version)
    files = catalog.plan_release(
        index.version, index.sums256, index.sums512, selection, verify_signatures=signed
    )
    if binding.applies(name) and not any(f.relpath == RELEASE_SBOM for f in files):
        sbom = RelPath(RELEASE_SBOM)
        if sbom not in index.sums256 or sbom not in index.sums512:
            raise IntegrityError(
                f"release/{name}: its SUMS list no {RELEASE_SBOM}, the signed SBOM that binds "
                "its files to the release",
                hint='for trees without a Kubernetes SBOM, set [verify] release_binding = "off"',
            )
        files.append(
            PlannedFile(name, sbom, index.sums256[sbom], index.sums512[sbom], signed=signed)
        )
    manifest = store.load_manifest(name)
    plan = ReleasePlan(
        index.version, store.release_in_tree(name), manifest, files, index.sums_files
    )
    plan.known_sizes = _known_sizes(store, name)
    for planned in files:
        if _present(store, manifest, planned):
            record = manifest.files[planned.relpath]
            if record.sha256 != planned.sha256:
                raise IntegrityError(
                    f"{planned.tree_path}: upstream SUMS changed since it was mirrored "
                    f"(tree has sha256 {record.sha256[:16]}..., SUMS says "
                    f"{planned.sha256[:16]}...); refusing to replace a release file"
                )
            plan.present.append(planned)
        elif records := staged_records(planned, staged, lambda p: store.present(manifest, p)):
            if (problem := _staged_problem(store, planned, records)) is None:
                plan.staged.update(records)
            else:
                log.warning("%s: staged copy discarded, fetched again: %s", name, problem)
                store.discard_staged(name, records)
                plan.to_fetch.append(planned)
        else:
            plan.to_fetch.append(planned)
    return plan


def _known_sizes(store: Store, version: str) -> dict[str, int]:
    """The largest size each path has in the tree's other releases (unreadable manifests are
    skipped: this only bounds a body, it never admits one). The newest few are enough, and
    keep a no-change run of a large tree from reading every manifest once per release."""
    sizes: dict[str, int] = {}
    others = [v for v in store.versions_in_tree() if v != version and catalog.is_version(v)]
    for other in sorted(others, key=Version.parse)[-KNOWN_SIZE_RELEASES:]:
        try:
            recorded = store.recorded_sizes(other)
        except MirrorError:
            continue
        for rel, size in recorded.items():
            sizes[rel] = max(sizes.get(rel, 0), size)
    return sizes


def _present(store: Store, manifest: Manifest, planned: PlannedFile) -> bool:
    """The primary and every companion are in the manifest and on disk: a manifest that lost
    a companion's record makes the file fetched (and its record written) again."""
    paths = (planned.relpath, *required_companions(planned.relpath, signed=planned.signed))
    return all(store.present(manifest, p) for p in paths)


def _staged_problem(
    store: Store, planned: PlannedFile, records: dict[str, FileRecord]
) -> str | None:
    """(worker thread) Re-hash what an earlier run staged: the journal says what was verified
    then, not what is on disk now. The primary must match both SUMS digests, its digest
    sidecars must hold those digests, and every other companion its journaled sha256."""
    version = planned.version
    for rel, record in records.items():
        path = store.staged_path(version, RelPath(rel))
        try:
            digests = digest_file(path, sha512=rel == planned.relpath)
        except OSError as exc:
            return f"{rel}: unreadable: {exc.strerror}"
        if rel == planned.relpath:
            if (digests.sha256, digests.sha512) != (planned.sha256, planned.sha512):
                return f"{rel}: does not match SHA256SUMS/SHA512SUMS any more"
        elif rel in (planned.relpath + ".sha256", planned.relpath + ".sha512"):
            expected = planned.sha256 if rel.endswith(".sha256") else planned.sha512
            if digest_bytes(expected.encode(), sha512=False).sha256 != digests.sha256:
                return f"{rel}: does not hold the SUMS digest"
        elif digests.sha256 != record.sha256 or digests.size_bytes != record.size:
            return f"{rel}: changed since it was verified"
    return None


def staged_records(
    planned: PlannedFile, staged: dict[str, FileRecord], in_tree: Callable[[str], bool]
) -> dict[str, FileRecord]:
    """The journal records of a verified primary waiting in staging with every companion
    staged or already promoted (a run killed half way through promoting one file leaves some
    companions in the tree); empty if it is not usable."""
    record = staged.get(planned.relpath)
    needed = required_companions(planned.relpath, signed=planned.signed)
    if record is None or record.sha256 != planned.sha256:
        return {}
    if not all(p in staged or in_tree(p) for p in needed):
        return {}
    every = companions(planned.relpath, signed=planned.signed)
    return {p: staged[p] for p in (*every, planned.relpath) if p in staged}


async def dry_run_summary(plan: Plan, fetcher: Fetcher) -> dict[str, dict[str, Any]]:
    """For ``--dry-run``: per release what is present and what is still to fetch, sized by
    asking upstream (HEAD) for every file to fetch."""
    sizes = await asyncio.gather(
        *(
            fetcher.content_length(fetcher.upstream.release_url(f.tree_path))
            for r in plan.releases
            for f in r.to_fetch
        )
    )
    todo = iter(sizes)
    summary = {}
    for release in plan.releases:
        fetch_bytes = [next(todo) or 0 for _ in release.to_fetch]
        summary[release.name] = {
            "in_tree": release.in_tree,
            "files": len(release.files),
            "present": len(release.present),
            "staged": sum(1 for f in release.files if f.relpath in release.staged),
            "to_fetch": [str(f.relpath) for f in release.to_fetch],
            "fetch_bytes": sum(fetch_bytes),
            "present_bytes": sum(release.manifest.files[f.relpath].size for f in release.present),
        }
    return summary
