"""The per-file pipeline of a sync, for the releases of one plan.

Each file to fetch: digest sidecars (must equal SUMS) and its signature in the form upstream
publishes (``companion.py``) -> streamed download hashed in the same pass (must equal both
SUMS) -> a Sigstore bundle (upstream's, or assembled from the Rekor entry of ``.sig``/
``.cert``) -> ``check.accept_fetched`` (the rules ``verify`` and ``import`` apply) -> staged
with its companions and journaled -> promoted by the tree layer (``Store.add_files`` into a
release already in the tree; ``Store.promote_release``, one directory rename, for a release
new to the tree once all its files are staged). A file's failure is recorded and fails that
file only; a release with any failure is not promoted and no marker may name it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

from mirror.audit import read_small
from mirror.binding import ReleaseSbom, image_repo_tags
from mirror.catalog import PlannedFile, RelPath
from mirror.check import Binder, BindingPolicy, accept_fetched
from mirror.companion import SignatureForm, fetch_companions
from mirror.digest import Digests
from mirror.errors import (
    BindingError,
    IntegrityError,
    LocalStoreError,
    MirrorError,
    UpstreamError,
)
from mirror.fetch import Fetcher
from mirror.layout import BUNDLE_SUFFIX
from mirror.manifest import FileRecord, Manifest, required_companions
from mirror.partial import discard_partial
from mirror.plan import (
    ReleasePlan,
    staged_records,
)
from mirror.report import Failure, RunReport
from mirror.sbom import RELEASE_SBOM, SBOM_MAX_BYTES
from mirror.store import Store

if TYPE_CHECKING:
    from mirror.verify import BundleChecker, RekorChecker

log = logging.getLogger(__name__)
T = TypeVar("T")


class Progress(Protocol):
    """What the CLI shows while a run goes on."""

    def planned(self, files: int, total_bytes: int | None) -> None: ...
    def file_bytes(self, path: str) -> Callable[[int], None]: ...
    def file_done(self, path: str, outcome: str, size_bytes: int) -> None: ...


class NoProgress:
    def planned(self, files: int, total_bytes: int | None) -> None:
        pass

    def file_bytes(self, path: str) -> Callable[[int], None]:
        return lambda n: None

    def file_done(self, path: str, outcome: str, size_bytes: int) -> None:
        pass


class ReleasePipeline:
    """Fetches, checks, stages and promotes the files of a plan's releases."""

    def __init__(
        self,
        store: Store,
        *,
        report: RunReport,
        progress: Progress,
        executor: ThreadPoolExecutor,
        binding: BindingPolicy,
        bundles: BundleChecker | None,
        rekor: RekorChecker | None,
        record_failure: Callable[[Failure], None],
    ) -> None:
        self.store = store
        self.report = report
        self.progress = progress
        self.executor = executor
        self.binding = binding
        self.bundles = bundles
        self.rekor = rekor
        self._record_failure = record_failure
        self._manifest_lock = asyncio.Lock()

    async def run(self, fetcher: Fetcher, releases: list[ReleasePlan]) -> None:
        """Every release: present files counted, staged ones adopted, the SBOM (or one
        signed file) first, the rest concurrently, then new releases promoted whole."""
        for release in releases:
            self.report.files_present += len(release.present)
            for planned in release.present:
                self.progress.file_done(str(planned.tree_path), "present", 0)
            if release.staged:
                await self._adopt_staged(release)
        for release in releases:
            release.form = SignatureForm.recorded_in(release.manifest)
            if self.binding.applies(release.name):
                await self._obtain_sbom(fetcher, release)
            elif first := next((f for f in release.to_fetch if f.signed), None):
                # Learn how the release publishes its signatures from one file, first.
                release.to_fetch.remove(first)
                await self._file_job(fetcher, release, first)
        jobs = [
            self._file_job(fetcher, release, planned)
            for release in releases
            for planned in release.to_fetch
        ]
        await asyncio.gather(*jobs)
        for release in releases:
            if release.failed:
                continue
            if not release.in_tree:
                await self._promote_new_release(release)
            else:
                await self._in_thread(self.store.clear_staging, release.name)

    async def _obtain_sbom(self, fetcher: Fetcher, release: ReleasePlan) -> None:
        """Release binding needs the release's verified SBOM before any other file of it is
        accepted: fetch and check it first (or read it from the tree or staging, where it was
        checked when it arrived). Without it, no other file of the release is fetched."""
        planned = next(f for f in release.files if f.relpath == RELEASE_SBOM)
        failed_before = release.failed
        if planned in release.to_fetch:
            release.to_fetch.remove(planned)
            await self._file_job(fetcher, release, planned)
        if release.failed == failed_before:  # else its failure is already recorded
            where = (
                self.store.tree_path(release.name, planned.relpath)
                if self.store.present(release.manifest, planned.relpath)
                else self.store.staged_path(release.name, planned.relpath)
            )
            data = await self._in_thread(read_small, where, SBOM_MAX_BYTES)
            try:
                if data is None:
                    raise BindingError(f"{planned.tree_path}: verified earlier, now unreadable")
                release.evidence = ReleaseSbom.load(release.name, data)
            except IntegrityError as exc:
                release.failed += 1
                self._record_failure(Failure.of(exc, str(planned.tree_path), release.name))
        if release.evidence is None and release.to_fetch:
            log.error(
                "release/%s: %d files not fetched: without its verified SBOM nothing binds "
                "them to the release",
                release.name,
                len(release.to_fetch),
            )
            release.failed += len(release.to_fetch)
            release.to_fetch.clear()

    async def _adopt_staged(self, release: ReleasePlan) -> None:
        """Files a previous run verified and staged: count them, and promote into a release
        already in the tree (a new release promotes them with everything else)."""
        for planned in release.files:
            record = release.staged.get(planned.relpath)
            if record is None:
                continue
            self.report.files_reused += 1
            self.report.bytes_reused += record.size
            self.progress.file_done(str(planned.tree_path), "reused", record.size)
            if release.in_tree:
                # plan_release already found its companions staged or in the tree.
                records = staged_records(planned, release.staged, lambda p: True)
                await self._add_to_tree(release, records)

    async def _file_job(self, fetcher: Fetcher, release: ReleasePlan, planned: PlannedFile) -> None:
        name = str(planned.tree_path)
        try:
            size = await self._fetch_file(fetcher, release, planned)
        except Exception as exc:
            # Fail closed, per file: anything unexpected fails this file, not the whole run.
            release.failed += 1
            self._record_failure(Failure.of(exc, name, release.name))
            self.progress.file_done(name, "failed", 0)
            if not isinstance(exc, MirrorError):
                log.debug("%s: traceback", name, exc_info=True)
            return
        self.report.files_fetched += 1
        self.report.bytes_fetched += size
        self.progress.file_done(name, "fetched", size)

    async def _fetch_file(
        self, fetcher: Fetcher, release: ReleasePlan, planned: PlannedFile
    ) -> int:
        """Download one file with what vouches for it, check it, stage it, and (into a release
        already in the tree) promote it. Returns its size."""
        name = str(planned.tree_path)
        part = self.store.partial_path(release.name, planned.relpath)
        await self._in_thread(self.store.ensure_dir, part.parent)
        companions, form = await fetch_companions(fetcher, planned, release.form)
        release.form = release.form or form
        bundle_path = planned.relpath.child(BUNDLE_SUFFIX)
        assembled = planned.signed and bundle_path not in companions
        lookup: asyncio.Task[bytes] | None = None
        if assembled:
            # The Rekor entry depends only on SUMS's sha256 and the signature pair, so its
            # round trip overlaps the download; the bundle is checked after both, in _check.
            lookup = asyncio.create_task(self._assemble_bundle(planned, companions))
        try:
            downloaded = await fetcher.download(
                fetcher.upstream.release_url(name),
                part,
                sha256=planned.sha256,
                sha512=planned.sha512,
                on_bytes=self.progress.file_bytes(name),
                max_bytes=release.size_cap(planned),
                expect_large=release.expects_large(planned),
            )
        except BaseException:
            await _abandon(lookup)
            raise
        digests = Digests(downloaded.size_bytes, downloaded.sha256, downloaded.sha512)
        try:
            if lookup is not None:
                companions[bundle_path] = await lookup
            records = await self._in_thread(
                self._check_and_stage, release, planned, digests, companions, part, assembled
            )
        except IntegrityError:
            # Never usable. (A Rekor outage or an interruption keeps the verified download
            # for the next run.)
            await self._in_thread(discard_partial, part)
            raise
        if release.in_tree:
            await self._add_to_tree(release, records)
        return digests.size_bytes

    async def _assemble_bundle(
        self, planned: PlannedFile, companions: dict[RelPath, bytes]
    ) -> bytes:
        """Upstream published no bundle: build one from the Rekor entry of ``.sig``/``.cert``."""
        name = str(planned.tree_path)
        if self.rekor is None:
            raise UpstreamError(
                f"{name}: upstream publishes no Sigstore bundle for it and verify.rekor_url is "
                "unset, so its .sig/.cert cannot be checked against the transparency log",
                hint="set [verify] rekor_url, or sync from a mirror that serves bundles",
            )
        bundle = await self.rekor.lookup(
            name,
            planned.sha256,
            companions[planned.relpath.child(".sig")],
            companions[planned.relpath.child(".cert")],
        )
        return bundle.encode()

    def _check_and_stage(
        self,
        release: ReleasePlan,
        planned: PlannedFile,
        digests: Digests,
        companions: dict[RelPath, bytes],
        part: Path,
        assembled: bool,
    ) -> dict[str, FileRecord]:
        """(worker thread, one hop for both) The rules ``verify`` and ``import`` apply, on what
        was fetched (the bundle verified here, once), then ``_stage``."""
        binder = Binder(self.binding, release.evidence, lambda rel: lambda: image_repo_tags(part))
        record, warnings = accept_fetched(
            planned,
            digests,
            companions,
            lambda: read_small(part, SBOM_MAX_BYTES),
            self.bundles,
            binder,
        )
        for warning in warnings:
            log.warning("%s", warning)
        if planned.signed:
            record = dataclasses.replace(record, bundle="assembled" if assembled else "upstream")
        return self._stage(release.name, planned, part, record, companions)

    def _stage(
        self,
        version: str,
        planned: PlannedFile,
        part: Path,
        record: FileRecord,
        companions: dict[RelPath, bytes],
    ) -> dict[str, FileRecord]:
        """(worker thread) Move the verified file to staging, write companions, journal all."""
        records: dict[str, FileRecord] = {
            relpath: FileRecord.of_companion(data) for relpath, data in companions.items()
        }
        records[planned.relpath] = record
        self.store.stage_verified(version, companions, records, planned.relpath, part)
        return records

    async def _add_to_tree(self, release: ReleasePlan, records: dict[str, FileRecord]) -> None:
        """Hand one verified file and its companions to the tree layer."""
        async with self._manifest_lock:
            release.manifest = await self._in_thread(
                self.store.add_files,
                release.manifest,
                records,
                self.store.staged_release_dir(release.name),
            )

    async def _promote_new_release(self, release: ReleasePlan) -> None:
        """Everything of a new release is staged and verified: make it visible at once."""
        name = release.name
        staged = await self._in_thread(self.store.load_journal, name)
        for relpath, data in release.sums_files.items():
            await self._in_thread(self.store.stage_bytes, name, relpath, data)
            staged[relpath] = FileRecord.of_companion(data)
        missing = [
            str(p)
            for f in release.files
            for p in (f.relpath, *required_companions(f.relpath, signed=f.signed))
            if p not in staged
        ]
        if missing:
            # Should not happen: every selected file either failed (counted) or was staged.
            raise LocalStoreError(f"release/{name}: staging lost {missing[0]} and others")
        release.manifest = Manifest(name, staged)
        await self._in_thread(
            self.store.promote_release, release.manifest, self.store.staged_release_dir(name)
        )
        await self._in_thread(self.store.clear_staging, name)
        release.in_tree = True
        log.info("release/%s: promoted (%d files)", name, len(release.files))

    async def _in_thread(self, func: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, func, *args)


async def _abandon(task: asyncio.Task[bytes] | None) -> None:
    """Cancel a lookup whose download failed; the download's failure is the one to report."""
    if task is not None:
        task.cancel()
        await asyncio.wait([task])
        if not task.cancelled():
            task.exception()  # retrieved, so asyncio does not log it as forgotten
