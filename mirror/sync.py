"""One reconcile run: plan -> fetch -> verify -> stage -> promote -> markers -> report.

Imports neither click nor tqdm: the CLI hands in a ``Progress`` and gets a ``RunReport`` back.

Per selected file the pipeline is: digest sidecars (must equal the SUMS entries) and, for
signed kinds, ``.sig``/``.cert`` -> streamed download hashed in the same pass (must equal both
SUMS) -> Sigstore verification by the streamed sha256 -> stage file, sidecars and bundle ->
journal -> promote (one by one into a release already in the tree; as one directory rename for
a release new to the tree, once all its files are staged). Markers are written last and only
for releases with no failed file.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from mirror import catalog
from mirror.catalog import PlannedFile, RelPath, Selection, Version
from mirror.config import Config
from mirror.errors import (
    EXIT_INTERRUPTED,
    ConfigError,
    DigestMismatchError,
    HTTPStatusError,
    IntegrityError,
    LocalStoreError,
    LockHeldError,
    MirrorError,
    PartialSyncError,
    PruneGuardError,
    ReleaseNotFoundError,
    SignatureError,
    UpstreamError,
)
from mirror.fetch import Fetcher, discard_partial
from mirror.layout import BUNDLE_SUFFIX, TRUST_ROOT_RELPATH
from mirror.prune import PrunePlan, check_guard, execute_prune, plan_prune
from mirror.report import Failure, RunReport, prune_reports, write_run_files
from mirror.store import FileRecord, Manifest, Store
from mirror.upstream import Upstream
from mirror.verify import CERT_MAX_BYTES, SIG_MAX_BYTES, SignatureChecker, load_trust_root

log = logging.getLogger(__name__)
T = TypeVar("T")

SUMS_MAX_BYTES = 2 << 20
SIDECAR_MAX_BYTES = 256


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


@dataclass
class ReleasePlan:
    """One release of this run: its SUMS, its selected files and their state."""

    version: Version
    in_tree: bool
    manifest: Manifest
    files: list[PlannedFile]
    all_paths: list[RelPath] = field(default_factory=list)
    """Every primary file the release's SUMS list, selected or not."""
    present: list[PlannedFile] = field(default_factory=list)
    staged: dict[str, FileRecord] = field(default_factory=dict)
    to_fetch: list[PlannedFile] = field(default_factory=list)
    sums_files: dict[RelPath, bytes] = field(default_factory=dict)
    """SUMS files and their sidecars, to stage with a release new to the tree."""
    failed: int = 0

    @property
    def name(self) -> str:
        return self.version.text

    @property
    def sums_paths(self) -> list[RelPath]:
        """The SUMS files and their digest sidecars, kept with every release."""
        return [
            RelPath(name + suffix)
            for name in catalog.SUMS_FILES
            for suffix in ("", *catalog.SIDECAR_DIGESTS)
        ]


@dataclass
class Plan:
    markers: dict[str, str]
    releases: list[ReleasePlan]
    failures: list[Failure]

    @property
    def needs_signatures(self) -> bool:
        return any(f.signed for r in self.releases for f in r.to_fetch)


def failure_kind(exc: BaseException) -> str:
    if isinstance(exc, IntegrityError):
        return "integrity"
    if isinstance(exc, UpstreamError):
        return "upstream"
    if isinstance(exc, ConfigError):
        return "config"
    return "local"


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
        self.checker: SignatureChecker | None = None
        self.plan: Plan | None = None

    # -- entry point -------------------------------------------------------------------------

    async def run(self) -> RunReport:
        """Reconcile the tree with the config. The report says how it went; every outcome,
        also an error or an interruption, is written to the run report and status first."""
        try:
            if self.dry_run:
                await self._run_unlocked()
                return self.report
            await self._in_thread(self.store.prepare)
            async with self._locked():
                await self._in_thread(self.store.sweep)
                try:
                    await self._run_unlocked()
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
                    # Let worker threads finish before the lock goes: nothing may write into
                    # the tree after another run could have started.
                    self.executor.shutdown(wait=True, cancel_futures=True)
                    self.report.finished_at = time.time()
                    write_run_files(self.store, self.report, self.config.report.metrics_file)
                    prune_reports(self.store, self.config.report.keep_reports)
        except MirrorError as exc:
            if self.report.exit_code is None:
                self._record_error(exc.exit_code, str(exc))
            raise
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)
        return self.report

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

    async def _run_unlocked(self) -> None:
        async with Upstream(self.config.upstream) as upstream:
            fetcher = Fetcher(upstream, self.config.upstream, executor=self.executor)
            try:
                self.plan = await self._make_plan(fetcher)
                if self.dry_run:
                    await self._size_plan(fetcher)
                    self._conclude()
                    if self.config.tree.prune and not self.report.failures:
                        prune = await self._in_thread(self._plan_prune)
                        self.report.pruned = prune.paths()
                        try:
                            check_guard(prune, self.config.tree)
                        except PruneGuardError as exc:
                            self._record_error(exc.exit_code, str(exc))
                    return
                if self.plan.needs_signatures:
                    await self._prepare_checker(fetcher)
                await self._execute(fetcher)
                await self._write_markers()
                if not self.report.failures:
                    await self._in_thread(self._housekeeping)
                    if self.config.tree.prune:
                        await self._in_thread(self._prune)
                self._conclude()
            finally:
                self.report.retries = fetcher.retries_done

    # -- planning ----------------------------------------------------------------------------

    async def _make_plan(self, fetcher: Fetcher) -> Plan:
        markers: dict[str, str] = {}
        wanted: dict[str, Version] = {}
        marker_failures: list[Failure] = []
        for entry in self.config.select.versions:
            if catalog.is_version(entry):
                wanted[entry] = Version.parse(entry)
                continue
            url = fetcher.upstream.release_url(catalog.marker_path(entry))
            try:
                body = await fetcher.text(url, max_bytes=64)
                version = catalog.parse_marker_body(entry, body)
            except MirrorError as exc:
                # One marker that will not resolve must not hold back the other releases.
                marker_failures.append(
                    Failure(str(catalog.marker_path(entry)), failure_kind(exc), str(exc))
                )
                continue
            markers[entry] = version.text
            wanted[version.text] = version
        self.report.markers = dict(markers)
        self._check_signing_policy(wanted.values())

        failures: list[Failure] = marker_failures
        releases = []
        for version in sorted(wanted.values()):
            try:
                releases.append(await self._plan_release(fetcher, version))
            except ReleaseNotFoundError:
                raise  # a version that does not exist is a selection error: stop the run
            except MirrorError as exc:
                failures.append(Failure(f"release/{version}", failure_kind(exc), str(exc)))
        if not failures and releases:
            # A typo would otherwise select nothing and "succeed" with an empty release.
            problems = [
                f"select.components: {c!r} matches no file of the selected releases"
                for c in catalog.unmatched_components(
                    self.selection, (r.all_paths for r in releases)
                )
            ] + [
                f"select.platforms: {p!r} matches no file of the selected releases"
                for p in catalog.unmatched_platforms(
                    self.selection, (r.all_paths for r in releases)
                )
            ]
            if problems:
                raise ConfigError(problems)
        plan = Plan(markers, releases, failures)
        for failure in failures:
            self._record_failure(failure)
        total = sum(len(r.files) for r in releases)
        self.progress.planned(total, None)
        return plan

    def _check_signing_policy(self, versions: Iterable[Version]) -> None:
        if self.config.verify.unsigned_releases == "checksums-only":
            return
        unsigned = [v.text for v in versions if not catalog.is_signed_release(v)]
        if unsigned:
            raise SignatureError(
                f"{', '.join(unsigned)}: published before Kubernetes began signing releases "
                f"(v1.26.0-rc.1); no signature can be verified",
                hint="to mirror them with checksum verification only, set "
                '[verify] unsigned_releases = "checksums-only"',
            )

    async def _plan_release(self, fetcher: Fetcher, version: Version) -> ReleasePlan:
        name = version.text
        in_tree = self.store.release_in_tree(name)
        manifest = await self._in_thread(self.store.load_manifest, name)
        sums_files: dict[RelPath, bytes] = {}
        if in_tree and all(self.store.present(manifest, s) for s in catalog.SUMS_FILES):
            texts = {}
            for sums_name in catalog.SUMS_FILES:
                path = self.store.tree_path(name, RelPath(sums_name))
                texts[sums_name] = (await self._in_thread(path.read_bytes)).decode("ascii")
        else:
            texts, sums_files = await self._fetch_sums(fetcher, name)
        sums256 = catalog.parse_sums(texts["SHA256SUMS"], "sha256", f"release/{name}/SHA256SUMS")
        sums512 = catalog.parse_sums(texts["SHA512SUMS"], "sha512", f"release/{name}/SHA512SUMS")
        signed = catalog.is_signed_release(version)
        files = catalog.plan_release(
            version, sums256, sums512, self.selection, verify_signatures=signed
        )
        plan = ReleasePlan(
            version, in_tree, manifest, files, all_paths=list(sums256), sums_files=sums_files
        )
        staged = await self._in_thread(self.store.load_journal, name)
        for planned in files:
            if self.store.present(manifest, planned.relpath):
                record = manifest.files[planned.relpath]
                if record.sha256 != planned.sha256:
                    raise IntegrityError(
                        f"{planned.tree_path}: upstream SUMS changed since it was mirrored "
                        f"(tree has sha256 {record.sha256[:16]}..., SUMS says "
                        f"{planned.sha256[:16]}...); refusing to replace a release file"
                    )
                plan.present.append(planned)
            elif _staged_complete(planned, staged, lambda p: self.store.present(manifest, p)):
                plan.staged.update(_staged_records(planned, staged))
            else:
                plan.to_fetch.append(planned)
        return plan

    async def _fetch_sums(
        self, fetcher: Fetcher, version: str
    ) -> tuple[dict[str, str], dict[RelPath, bytes]]:
        """Both SUMS files, each checked against its own .sha256/.sha512 sidecars."""
        texts: dict[str, str] = {}
        files: dict[RelPath, bytes] = {}
        for sums_name in catalog.SUMS_FILES:
            base = f"release/{version}/{sums_name}"
            try:
                body = await fetcher.bytes(
                    fetcher.upstream.release_url(base), max_bytes=SUMS_MAX_BYTES
                )
            except HTTPStatusError as exc:
                if exc.status == 404 and sums_name == catalog.SUMS_FILES[0]:
                    raise ReleaseNotFoundError(version, fetcher.upstream.config.url) from None
                raise
            files[RelPath(sums_name)] = body
            for suffix, algo in ((".sha256", "sha256"), (".sha512", "sha512")):
                side = await fetcher.text(
                    fetcher.upstream.release_url(base + suffix), max_bytes=SIDECAR_MAX_BYTES
                )
                expected = catalog.parse_sidecar(side, algo, base + suffix)
                if hashlib.new(algo, body).hexdigest() != expected:
                    raise DigestMismatchError(f"{base}: does not match {base}{suffix}")
                files[RelPath(sums_name + suffix)] = side.encode()
            try:
                texts[sums_name] = body.decode("ascii")
            except UnicodeDecodeError:
                raise IntegrityError(f"{base}: not ASCII text") from None
        return texts, files

    async def _size_plan(self, fetcher: Fetcher) -> None:
        """For --dry-run: ask upstream how big the files still to fetch are."""
        assert self.plan is not None
        sizes = await asyncio.gather(
            *(
                fetcher.content_length(fetcher.upstream.release_url(f.tree_path))
                for r in self.plan.releases
                for f in r.to_fetch
            )
        )
        todo = iter(sizes)
        for release in self.plan.releases:
            fetch_bytes = [next(todo) or 0 for _ in release.to_fetch]
            self.report.versions[release.name] = {
                "in_tree": release.in_tree,
                "files": len(release.files),
                "present": len(release.present),
                "staged": sum(1 for f in release.files if f.relpath in release.staged),
                "to_fetch": [str(f.relpath) for f in release.to_fetch],
                "fetch_bytes": sum(fetch_bytes),
                "present_bytes": sum(
                    release.manifest.files[f.relpath].size for f in release.present
                ),
            }

    async def _prepare_checker(self, fetcher: Fetcher) -> None:
        verify = self.config.verify
        trust_root = await self._in_thread(load_trust_root, verify.trusted_root)
        self.checker = SignatureChecker(
            trust_root,
            verify.identities,
            rekor_url=verify.rekor_url,
            fetcher=fetcher,
            executor=self.executor,
        )
        # The tree carries the trust root its bundles were verified against, before any
        # bundle that needs it becomes visible.
        target = self.store.root / TRUST_ROOT_RELPATH
        current = await self._in_thread(_read_or_none, target)
        if current != trust_root.json_text.encode():
            await self._in_thread(
                self.store.write_tree_file,
                RelPath(TRUST_ROOT_RELPATH),
                trust_root.json_text.encode(),
            )

    # -- execution ---------------------------------------------------------------------------

    async def _execute(self, fetcher: Fetcher) -> None:
        assert self.plan is not None
        for release in self.plan.releases:
            self.report.files_present += len(release.present)
            for planned in release.present:
                self.progress.file_done(str(planned.tree_path), "present", 0)
            if release.staged:
                await self._adopt_staged(release)
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

    async def _adopt_staged(self, release: ReleasePlan) -> None:
        """Files a previous run verified and staged: count them, and promote into a release
        already in the tree (a new release promotes them with everything else)."""
        primaries = [f for f in release.files if f.relpath in release.staged]
        for planned in primaries:
            size = release.staged[planned.relpath].size
            self.report.files_reused += 1
            self.report.bytes_reused += size
            self.progress.file_done(str(planned.tree_path), "reused", size)
            if release.in_tree:
                records = _staged_records(planned, release.staged)
                await self._promote_into_tree(release, planned, records)

    async def _file_job(self, fetcher: Fetcher, release: ReleasePlan, planned: PlannedFile) -> None:
        name = str(planned.tree_path)
        part = self.store.partial_path(release.name, planned.relpath)
        try:
            sidecars = await self._fetch_sidecars(fetcher, planned)
            downloaded = await fetcher.download(
                fetcher.upstream.release_url(name),
                part,
                sha256=planned.sha256,
                sha512=planned.sha512,
                on_bytes=self.progress.file_bytes(name),
            )
            record = FileRecord(
                downloaded.size_bytes, planned.sha256, planned.sha512, check="checksums"
            )
            if planned.signed:
                assert self.checker is not None
                try:
                    verified = await self.checker.check(
                        name,
                        downloaded.sha256,
                        sidecars[planned.relpath.child(".sig")],
                        sidecars[planned.relpath.child(".cert")],
                    )
                except IntegrityError:
                    # Never usable. (A Rekor outage or an interruption keeps the verified
                    # download for the next run.)
                    await self._in_thread(discard_partial, part)
                    raise
                bundle = verified.bundle_json.encode()
                sidecars[planned.relpath.child(BUNDLE_SUFFIX)] = bundle
                record = FileRecord(
                    downloaded.size_bytes,
                    planned.sha256,
                    planned.sha512,
                    check="sigstore",
                    identity=verified.identity,
                    log_index=verified.log_index,
                )
            records = await self._in_thread(
                self._stage, release.name, planned, part, record, sidecars
            )
            if release.in_tree:
                await self._promote_into_tree(release, planned, records)
        except Exception as exc:
            # Fail closed, per file: anything unexpected fails this file, not the whole run.
            kind = failure_kind(exc) if isinstance(exc, MirrorError) else "internal"
            reason = str(exc) if isinstance(exc, MirrorError) else f"unexpected {exc!r}"
            release.failed += 1
            self._record_failure(Failure(name, kind, reason))
            self.progress.file_done(name, "failed", 0)
            log.error("%s: %s", name, reason)
            if kind == "internal":
                log.debug("%s: traceback", name, exc_info=True)
            return
        self.report.files_fetched += 1
        self.report.bytes_fetched += downloaded.size_bytes
        self.progress.file_done(name, "fetched", downloaded.size_bytes)

    async def _fetch_sidecars(self, fetcher: Fetcher, planned: PlannedFile) -> dict[RelPath, bytes]:
        """Digest sidecars (checked against SUMS now, before the download) and signature pair."""
        out: dict[RelPath, bytes] = {}
        for sidecar in planned.sidecars:
            url = fetcher.upstream.release_url(f"release/{planned.version}/{sidecar}")
            suffix = sidecar[len(planned.relpath) :]
            limit = {".sig": SIG_MAX_BYTES, ".cert": CERT_MAX_BYTES}.get(suffix, SIDECAR_MAX_BYTES)
            body = await fetcher.bytes(url, max_bytes=limit)
            if suffix in (".sha256", ".sha512"):
                algo = suffix[1:]
                try:
                    text = body.decode("ascii")
                except UnicodeDecodeError:
                    text = ""
                digest = catalog.parse_sidecar(text, algo, f"release/{planned.version}/{sidecar}")
                expected = planned.sha256 if algo == "sha256" else planned.sha512
                if digest != expected:
                    raise DigestMismatchError(
                        f"release/{planned.version}/{sidecar}: disagrees with "
                        f"{algo.upper()}SUMS for {planned.relpath}"
                    )
            out[sidecar] = body
        return out

    def _stage(
        self,
        version: str,
        planned: PlannedFile,
        part: Path,
        record: FileRecord,
        sidecars: dict[RelPath, bytes],
    ) -> dict[str, FileRecord]:
        """(worker thread) Move the verified file to staging, write sidecars, journal all."""
        records: dict[str, FileRecord] = {}
        for relpath, data in sidecars.items():
            self.store.stage_bytes(version, relpath, data)
            records[relpath] = FileRecord(len(data), hashlib.sha256(data).hexdigest())
        records[planned.relpath] = record
        # Journal first: a crash before the rename leaves a whole partial file, which the next
        # run finishes from disk (416 on resume) instead of fetching again.
        self.store.journal(version, records)
        self.store.stage_download(version, planned.relpath, part)
        return records

    async def _promote_into_tree(
        self, release: ReleasePlan, planned: PlannedFile, records: dict[str, FileRecord]
    ) -> None:
        """Add one verified file (and what verifies it) to a release already in the tree:
        manifest first, sidecars next, the primary file last."""
        async with self._manifest_lock:
            release.manifest.files.update(records)
            await self._in_thread(self.store.save_manifest, release.manifest)
        order = [RelPath(p) for p in records if p != planned.relpath] + [planned.relpath]
        await self._in_thread(self.store.promote_files, release.name, order)

    async def _promote_new_release(self, release: ReleasePlan) -> None:
        """Everything of a new release is staged and verified: make it visible at once."""
        name = release.name
        staged = await self._in_thread(self.store.load_journal, name)
        for relpath, data in release.sums_files.items():
            await self._in_thread(self.store.stage_bytes, name, relpath, data)
            staged[relpath] = FileRecord(len(data), hashlib.sha256(data).hexdigest())
        missing = [
            str(p) for f in release.files for p in (f.relpath, *f.sidecars) if p not in staged
        ]
        if missing:
            # Should not happen: every selected file either failed (counted) or was staged.
            raise LocalStoreError(f"release/{name}: staging lost {missing[0]} and others")
        release.manifest = Manifest(name, staged)
        await self._in_thread(self.store.save_manifest, release.manifest)
        await self._in_thread(self.store.promote_release, name)
        await self._in_thread(self.store.clear_staging, name)
        release.in_tree = True
        log.info("release/%s: promoted (%d files)", name, len(release.files))

    async def _write_markers(self) -> None:
        """Last step: point markers only at releases complete in the tree."""
        assert self.plan is not None
        complete = {r.name for r in self.plan.releases if not r.failed and r.in_tree}
        for marker, version in self.plan.markers.items():
            if version not in complete:
                log.warning("marker %s not moved: release/%s is not complete", marker, version)
                continue
            if self.store.read_marker(marker) == version:
                continue
            problem = self.store.marker_move_problem(marker, version)
            if problem is not None:
                path = str(catalog.marker_path(marker))
                self._record_failure(Failure(path, "integrity", f"not moved: {problem}"))
                log.error("%s: not moved: %s", path, problem)
                continue
            await self._in_thread(self.store.write_marker, marker, version)
            log.info("marker %s -> %s", marker, version)

    # -- after a fully successful run -------------------------------------------------------

    def _plan_prune(self) -> PrunePlan:
        """(worker thread) What pruning would remove, given this run's selection."""
        assert self.plan is not None
        keep: dict[str, list[str]] = {}
        for release in self.plan.releases:
            paths = [str(p) for p in release.sums_paths]
            for planned in release.files:
                paths += [planned.relpath, *planned.sidecars]
                if planned.signed:
                    paths.append(planned.relpath.child(BUNDLE_SUFFIX))
            keep[release.name] = paths
        plan = plan_prune(self.store, keep, self.plan.markers)
        if self.dry_run:
            # The guard's share is measured on the tree as the run leaves it: count what the
            # run would still add.
            present = {(r.name, str(f.relpath)) for r in self.plan.releases for f in r.present}
            plan.tree_file_count += sum(
                1 + len(f.sidecars) + (1 if f.signed else 0)
                for r in self.plan.releases
                for f in r.files
                if (r.name, str(f.relpath)) not in present
            ) + sum(len(r.sums_paths) for r in self.plan.releases if not r.in_tree)
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
        selected = {r.name for r in self.plan.releases}
        for area in (self.store.staging, self.store.partial):
            if not area.is_dir():
                continue
            for entry in area.iterdir():
                name = entry.name.removesuffix(".journal")
                if (entry.is_dir() or entry.name.endswith(".journal")) and name not in selected:
                    self.store.clear_staging(name)

    # -- helpers -----------------------------------------------------------------------------

    def _record_failure(self, failure: Failure) -> None:
        self.report.failures.append(failure)
        self.report.files_failed += 1

    def _conclude(self) -> None:
        """Decide the run's outcome and exit code from what happened."""
        assert self.plan is not None
        for release in self.plan.releases:
            entry = self.report.versions.setdefault(release.name, {})
            entry.update(
                complete=(not release.failed and release.in_tree),
                files=len(release.files),
                failed=release.failed,
            )
        for failure in self.report.failures:
            name = failure.path.split("/")[1] if failure.path.count("/") >= 1 else ""
            if name in self.report.versions:
                self.report.versions[name]["complete"] = False
        kinds = {f.kind for f in self.report.failures}
        self.report.finished_at = time.time()
        if not kinds:
            self.report.outcome = "success"
            self.report.exit_code = 0
            return
        succeeded = self.report.files_fetched + self.report.files_present + self.report.files_reused
        if "internal" in kinds:
            error: MirrorError = MirrorError("internal error (a bug; please report it)")
        elif "integrity" in kinds:
            error = IntegrityError("some files failed verification")
        elif "local" in kinds:
            error = LocalStoreError("local tree could not be written")
        elif succeeded:
            error = PartialSyncError("some files could not be fetched")
        else:
            error = UpstreamError("upstream unreachable for every selected file")
        self.report.outcome = "partial" if succeeded else "failed"
        self.report.exit_code = error.exit_code
        self.report.error = (
            f"{error} ({len(self.report.failures)} failed; first: {self.report.failures[0].path}:"
            f" {self.report.failures[0].reason})"
        )

    async def _in_thread(self, func: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, func, *args)


def _staged_complete(
    planned: PlannedFile, staged: dict[str, FileRecord], in_tree: Callable[[str], bool]
) -> bool:
    """A verified primary waits in staging with every companion staged or already promoted
    (a run killed half way through promoting one file leaves some sidecars in the tree)."""
    needed = [*planned.sidecars]
    if planned.signed:
        needed.append(planned.relpath.child(BUNDLE_SUFFIX))
    record = staged.get(planned.relpath)
    return (
        record is not None
        and record.sha256 == planned.sha256
        and all(p in staged or in_tree(p) for p in needed)
    )


def _staged_records(planned: PlannedFile, staged: dict[str, FileRecord]) -> dict[str, FileRecord]:
    names = [*planned.sidecars, planned.relpath]
    if planned.signed:
        names.insert(-1, planned.relpath.child(BUNDLE_SUFFIX))
    return {p: staged[p] for p in names if p in staged}


def _read_or_none(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except OSError:
        return None


async def run_sync(
    config: Config,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    lock_wait_s: float = 0.0,
) -> RunReport:
    """Run one sync; see ``SyncRun``."""
    return await SyncRun(config, dry_run=dry_run, progress=progress, lock_wait_s=lock_wait_s).run()
