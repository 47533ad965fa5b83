"""One reconcile run, as its phases: determine -> plan -> fetch and check -> promote ->
markers -> finalize.

Imports neither click nor tqdm: the CLI hands in a ``Progress`` and gets a ``RunReport`` back.

- ``plan.determine`` learns what upstream offers (markers, SUMS) and stops a config mistake
  before anything is written; then the run takes the tree's lock and ``plan.plan_release``
  sorts every selected file into present, staged or to fetch.
- Each file to fetch: digest sidecars (must equal SUMS) and, for signed kinds, ``.sig``/
  ``.cert`` -> streamed download hashed in the same pass (must equal both SUMS) -> Sigstore
  bundle from the transparency log -> ``check.check_primary`` (the same rules ``verify`` and
  ``import`` apply) -> staged with its companions and journaled -> promoted by the tree layer
  (``Store.add_files`` into a release already in the tree; ``Store.promote_release``, one
  directory rename, for a release new to the tree once all its files are staged).
- Markers move last, only to releases complete in the tree; prune only after full success.
- ``outcome.conclude`` turns the recorded failures into the outcome and exit code.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from mirror import catalog
from mirror.audit import read_small
from mirror.binding import ReleaseSbom, image_repo_tags
from mirror.catalog import PlannedFile, RelPath, Selection
from mirror.check import Binder, BindingPolicy, CheckResult, check_primary, raise_first
from mirror.companion import SignatureForm, fetch_companions
from mirror.config import Config
from mirror.digest import Digests, digest_bytes
from mirror.errors import (
    EXIT_INTERRUPTED,
    BindingError,
    IntegrityError,
    LocalStoreError,
    LockHeldError,
    MirrorError,
    PruneGuardError,
    UpstreamError,
)
from mirror.fetch import Fetcher, discard_partial
from mirror.layout import BUNDLE_SUFFIX
from mirror.manifest import FileRecord, Manifest, required_companions
from mirror.outcome import conclude, incomplete_releases
from mirror.plan import (
    Offer,
    Plan,
    ReleasePlan,
    determine,
    dry_run_summary,
    plan_release,
    staged_records,
)
from mirror.prune import PrunePlan, check_guard, execute_prune, plan_prune
from mirror.report import Failure, RunReport, prune_reports, write_run_files
from mirror.sbom import RELEASE_SBOM, SBOM_MAX_BYTES
from mirror.store import Store
from mirror.upstream import Upstream
from mirror.verify import BundleChecker, RekorChecker, load_trust_root

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


class SyncRun:
    """State of one sync run. ``run()`` is the entry point; nothing here prints."""

    def __init__(
        self,
        config: Config,
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
        lock_wait_s: float = 0.0,
        command: str = "sync",
    ) -> None:
        self.config = config
        self.store = Store(config.tree.root)
        self.dry_run = dry_run
        self.progress = progress or NoProgress()
        self.lock_wait_s = lock_wait_s
        self.report = RunReport(command=command, dry_run=dry_run)
        self.selection = Selection(config.select.platforms, config.select.components)
        self._manifest_lock = asyncio.Lock()
        self.executor = ThreadPoolExecutor(
            max_workers=max(2, config.upstream.concurrency), thread_name_prefix="k8s-mirror"
        )
        self.bundles: BundleChecker | None = None
        self.rekor: RekorChecker | None = None
        self.plan: Plan | None = None
        self.binding = BindingPolicy(config.verify.release_binding, config.verify.unbound_allowed)

    # -- entry point -------------------------------------------------------------------------

    async def run(self) -> RunReport:
        """Reconcile the tree with the config. The report says how it went; once the lock is
        held, every outcome (also an error or an interruption) is written to the run report
        and status first. A config mistake found before that writes nothing at all."""
        try:
            async with Upstream(self.config.upstream) as upstream:
                fetcher = Fetcher(upstream, self.config.upstream, executor=self.executor)
                try:
                    offer = await determine(
                        self.config.select.versions,
                        self.selection,
                        allow_unsigned=self.config.verify.unsigned_releases == "checksums-only",
                        store=self.store,
                        fetcher=fetcher,
                        in_thread=self._in_thread,
                    )
                    if self.dry_run:
                        await self._dry_run(fetcher, offer)
                        return self.report
                    await self._in_thread(self.store.prepare)
                    async with self._locked():
                        await self._recorded(self._sync(fetcher, offer))
                finally:
                    self.report.retries = fetcher.retries_done
        except MirrorError as exc:
            if self.report.exit_code is None:
                self._record_error(exc.exit_code, str(exc))
            raise
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)
        return self.report

    async def _recorded(self, phases: Coroutine[Any, Any, None]) -> None:
        """Run the locked phases; whatever happens, write the report before the lock goes."""
        try:
            await phases
        except MirrorError as exc:
            self._record_error(exc.exit_code, str(exc))
            raise
        except asyncio.CancelledError:
            self.report.outcome = "interrupted"
            self.report.exit_code = EXIT_INTERRUPTED
            raise
        except Exception as exc:
            self._record_error(1, f"unexpected {exc.__class__.__name__}: {exc}")
            raise
        finally:
            # Let worker threads finish before the lock goes: nothing may write into the
            # tree after another run could have started.
            self.executor.shutdown(wait=True, cancel_futures=True)
            self.report.finished_at = time.time()
            write_run_files(self.store, self.report, self.config.report.metrics_file)
            prune_reports(self.store, self.config.report.keep_reports)

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        """Hold the tree's lock; with ``--wait``, poll for it without blocking the loop, so a
        signal still interrupts the wait."""
        deadline = time.monotonic() + self.lock_wait_s
        while True:
            try:
                with self.store.lock():
                    yield
                return
            except LockHeldError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.2)

    def _record_error(self, exit_code: int, message: str) -> None:
        self.report.error = message
        self.report.outcome = "failed"
        self.report.exit_code = exit_code

    # -- the phases --------------------------------------------------------------------------

    async def _sync(self, fetcher: Fetcher, offer: Offer) -> None:
        await self._in_thread(self.store.sweep)
        self.plan = await self._plan(offer)
        if self.plan.needs_signatures:
            await self._prepare_signatures(fetcher)
        await self._fetch_and_promote(fetcher)
        await self._move_markers()
        if not self.report.failures:
            await self._in_thread(self._housekeeping)
            if self.config.tree.prune:
                await self._in_thread(self._prune)
        self._conclude()

    async def _plan(self, offer: Offer) -> Plan:
        self.report.markers = dict(offer.markers)
        for failure in offer.failures:
            self._record_failure(failure)
        releases = []
        for index in offer.indexes:
            name = index.version.text
            try:
                staged = await self._in_thread(self.store.load_journal, name)
                releases.append(
                    await self._in_thread(
                        functools.partial(plan_release, binding=self.binding),
                        self.store,
                        index,
                        self.selection,
                        staged,
                    )
                )
            except MirrorError as exc:
                self._record_failure(Failure.of(exc, f"release/{name}", name))
        self.progress.planned(sum(len(r.files) for r in releases), None)
        return Plan(offer.markers, releases)

    async def _dry_run(self, fetcher: Fetcher, offer: Offer) -> None:
        """Plan without the lock and ask upstream how big the files still to fetch are."""
        self.plan = await self._plan(offer)
        self.report.versions.update(await dry_run_summary(self.plan, fetcher))
        self._conclude()
        if self.config.tree.prune and not self.report.failures:
            prune = await self._in_thread(self._plan_prune)
            self.report.pruned = prune.paths()
            try:
                check_guard(prune, self.config.tree)
            except PruneGuardError as exc:
                self._record_error(exc.exit_code, str(exc))

    async def _prepare_signatures(self, fetcher: Fetcher) -> None:
        """The bundle checker (built once per run) and, when a Rekor URL is configured, the
        lookup that assembles bundles for files published with ``.sig``/``.cert`` only."""
        verify = self.config.verify
        trust_root = await self._in_thread(load_trust_root, verify.trusted_root)
        self.bundles = BundleChecker(trust_root, verify.identities)
        if verify.rekor_url:
            self.rekor = RekorChecker(
                self.bundles, rekor_url=verify.rekor_url, fetcher=fetcher, executor=self.executor
            )
        # The tree carries the trust root its bundles were verified against, before any
        # bundle that needs it becomes visible.
        await self._in_thread(self.store.write_trust_root, trust_root.json_text.encode())

    async def _fetch_and_promote(self, fetcher: Fetcher) -> None:
        assert self.plan is not None
        for release in self.plan.releases:
            self.report.files_present += len(release.present)
            for planned in release.present:
                self.progress.file_done(str(planned.tree_path), "present", 0)
            if release.staged:
                await self._adopt_staged(release)
        for release in self.plan.releases:
            release.form = _known_form(release.manifest)
            if self.binding.applies(release.name):
                await self._obtain_sbom(fetcher, release)
            elif first := next((f for f in release.to_fetch if f.signed), None):
                # Learn how the release publishes its signatures from one file, first.
                release.to_fetch.remove(first)
                await self._file_job(fetcher, release, first)
        jobs = [
            self._file_job(fetcher, release, planned)
            for release in self.plan.releases
            for planned in release.to_fetch
        ]
        await asyncio.gather(*jobs)
        for release in self.plan.releases:
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
        downloaded = await fetcher.download(
            fetcher.upstream.release_url(name),
            part,
            sha256=planned.sha256,
            sha512=planned.sha512,
            on_bytes=self.progress.file_bytes(name),
            max_bytes=release.size_cap(planned),
        )
        digests = Digests(downloaded.size_bytes, downloaded.sha256, downloaded.sha512)
        bundle_path = planned.relpath.child(BUNDLE_SUFFIX)
        assembled = planned.signed and bundle_path not in companions
        try:
            if assembled:
                companions[bundle_path] = await self._assemble_bundle(planned, digests, companions)
            record = await self._in_thread(self._check, release, planned, digests, companions, part)
            if planned.signed:
                record = dataclasses.replace(
                    record, bundle="assembled" if assembled else "upstream"
                )
        except IntegrityError:
            # Never usable. (A Rekor outage or an interruption keeps the verified download
            # for the next run.)
            await self._in_thread(discard_partial, part)
            raise
        records = await self._in_thread(
            self._stage, release.name, planned, part, record, companions
        )
        if release.in_tree:
            await self._add_to_tree(release, records)
        return digests.size_bytes

    async def _assemble_bundle(
        self, planned: PlannedFile, digests: Digests, companions: dict[RelPath, bytes]
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
            digests.sha256,
            companions[planned.relpath.child(".sig")],
            companions[planned.relpath.child(".cert")],
        )
        return bundle.encode()

    def _check(
        self,
        release: ReleasePlan,
        planned: PlannedFile,
        digests: Digests,
        companions: dict[RelPath, bytes],
        part: Path,
    ) -> FileRecord:
        """(worker thread) The rules ``verify`` and ``import`` apply, on what was fetched
        (the bundle verified here, once); returns what the manifest records."""
        index: dict[str, dict[str, str]] = {
            "sha256": {planned.relpath: planned.sha256},
            "sha512": {planned.relpath: planned.sha512},
        }

        def read(rel: str) -> bytes | None:
            if rel == planned.relpath:
                # Only a .docker_tag's or an SBOM's own content is ever asked for.
                return read_small(part, SBOM_MAX_BYTES)
            return companions.get(RelPath(rel))

        binder = Binder(self.binding, release.evidence, lambda rel: lambda: image_repo_tags(part))
        result = CheckResult()
        check_primary(
            release.name, planned.relpath, digests, index, read, self.bundles, binder, result
        )
        raise_first(result)
        for warning in result.warnings:
            log.warning("%s", warning)
        verified = result.verified.get(planned.relpath)
        return FileRecord(
            digests.size_bytes,
            digests.sha256,
            digests.sha512,
            check="sigstore" if verified else "checksums",
            identity=verified.identity if verified else None,
            log_index=verified.log_index if verified else None,
            binding=result.bindings.get(planned.relpath),
        )

    def _stage(
        self,
        version: str,
        planned: PlannedFile,
        part: Path,
        record: FileRecord,
        companions: dict[RelPath, bytes],
    ) -> dict[str, FileRecord]:
        """(worker thread) Move the verified file to staging, write companions, journal all."""
        records: dict[str, FileRecord] = {}
        for relpath, data in companions.items():
            self.store.stage_bytes(version, relpath, data)
            records[relpath] = _companion_record(data)
        records[planned.relpath] = record
        # Journal first: a crash before the rename leaves a whole partial file, which the next
        # run finishes from disk (416 on resume) instead of fetching again.
        self.store.journal(version, records)
        self.store.stage_download(version, planned.relpath, part)
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
            staged[relpath] = _companion_record(data)
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

    async def _move_markers(self) -> None:
        """Last step: point markers only at releases complete in the tree."""
        assert self.plan is not None
        complete = {r.name for r in self.plan.releases if not r.failed and r.in_tree}
        moves = await self._in_thread(
            self.store.move_markers, self.plan.markers, complete.__contains__
        )
        for marker, version in moves.incomplete.items():
            log.warning("marker %s not moved: release/%s is not complete", marker, version)
        for marker, problem in moves.refused.items():
            path = str(catalog.marker_path(marker))
            self._record_failure(Failure(path, "integrity", f"not moved: {problem}"))
        for marker, version in moves.moved.items():
            log.info("marker %s -> %s", marker, version)

    # -- after a fully successful run -------------------------------------------------------

    def _plan_prune(self) -> PrunePlan:
        """(worker thread) What pruning would remove, given this run's selection."""
        assert self.plan is not None
        keep = {release.name: release.keep_paths() for release in self.plan.releases}
        plan = plan_prune(self.store, keep, self.plan.markers)
        if self.dry_run:
            # The guard's share is measured on the tree as the run leaves it.
            plan.tree_file_count += sum(r.files_to_add() for r in self.plan.releases)
        return plan

    def _prune(self) -> None:
        """(worker thread) Remove what is no longer selected, within the mass-delete guard."""
        plan = self._plan_prune()
        check_guard(plan, self.config.tree)
        execute_prune(self.store, plan)
        self.report.pruned = plan.paths()
        for path in self.report.pruned:
            log.info("pruned %s", path)

    def _housekeeping(self) -> None:
        """(worker thread) Drop staging and partial files of releases no longer selected."""
        assert self.plan is not None
        self.store.clear_staging_except({r.name for r in self.plan.releases})

    # -- helpers -----------------------------------------------------------------------------

    def _record_failure(self, failure: Failure) -> None:
        """Every failure is logged once, here, and counted."""
        self.report.failures.append(failure)
        self.report.files_failed += 1
        # Most reasons already start with the path they concern.
        line = failure.reason
        if not line.startswith(failure.path):
            line = f"{failure.path}: {line}"
        log.error("%s%s", line, f" (hint: {failure.hint})" if failure.hint else "")

    def _conclude(self) -> None:
        """Decide the run's outcome and exit code from what happened."""
        assert self.plan is not None
        broken = incomplete_releases(self.report.failures)
        for release in self.plan.releases:
            entry = self.report.versions.setdefault(release.name, {})
            entry.update(
                complete=(release.name not in broken and release.in_tree),
                files=len(release.files),
                failed=release.failed,
            )
        succeeded = self.report.files_fetched + self.report.files_present + self.report.files_reused
        conclusion = conclude(self.report.failures, succeeded)
        self.report.finished_at = time.time()
        self.report.outcome = conclusion.outcome
        self.report.exit_code = conclusion.exit_code
        self.report.error = conclusion.error

    async def _in_thread(self, func: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, func, *args)


def _known_form(manifest: Manifest) -> SignatureForm | None:
    """How a release in the tree was published, from what its manifest records (None: no
    signed file recorded with its origin yet)."""
    bundle = any(r.bundle == "upstream" for r in manifest.files.values())
    detached = any(p.endswith(".sig") for p in manifest.files)
    assembled = any(r.bundle == "assembled" for r in manifest.files.values())
    if not (bundle or assembled):
        return None
    return SignatureForm(bundle=bundle, detached=detached)


def _companion_record(data: bytes) -> FileRecord:
    digests = digest_bytes(data, sha512=False)
    return FileRecord(digests.size_bytes, digests.sha256)


async def run_sync(
    config: Config,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    lock_wait_s: float = 0.0,
) -> RunReport:
    """Run one sync; see ``SyncRun``."""
    return await SyncRun(config, dry_run=dry_run, progress=progress, lock_wait_s=lock_wait_s).run()
