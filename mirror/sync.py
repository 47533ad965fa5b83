"""One reconcile run, as its phases: determine -> plan -> fetch and check -> markers ->
finalize -> conclude. ``SyncRun.run`` reads top to bottom as those phases.

Imports neither click nor tqdm: the CLI hands in a ``Progress`` and gets a ``RunReport`` back.

- ``plan.determine`` learns what upstream offers (markers, SUMS) and stops a config mistake
  before anything is written; then the run takes the tree's lock and ``plan.plan_release``
  sorts every selected file into present, staged or to fetch.
- ``pipeline.ReleasePipeline`` fetches, checks (``check.py``, the rules ``verify`` and
  ``import`` apply too), stages and promotes through the tree layer (``store.py``).
- Markers move last (``Store.move_markers``), only to releases complete in the tree; prune
  only after full success.
- ``outcome.conclude`` turns the recorded failures into the outcome and exit code.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from mirror import catalog, verify
from mirror.catalog import Selection
from mirror.check import BindingPolicy
from mirror.config import Config
from mirror.errors import (
    EXIT_INTERRUPTED,
    LockHeldError,
    MirrorError,
    PruneGuardError,
)
from mirror.fetch import Fetcher
from mirror.outcome import conclude, incomplete_releases
from mirror.pipeline import NoProgress, Progress, ReleasePipeline
from mirror.plan import (
    Offer,
    Plan,
    determine,
    dry_run_summary,
    plan_release,
)
from mirror.prune import PrunePlan, check_guard, execute_prune, plan_prune
from mirror.report import Failure, RunReport, prune_reports, write_run_files
from mirror.store import Store
from mirror.upstream import Upstream

if TYPE_CHECKING:
    from mirror.verify import BundleChecker, RekorChecker

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        self.executor = ThreadPoolExecutor(
            # Hashing large bodies, writing small ones, checking and staging: one per large
            # download and a few more (the small jobs hold the GIL: more threads would not help).
            max_workers=config.upstream.large_downloads + 2,
            thread_name_prefix="k8s-mirror",
        )
        self.bundles: BundleChecker | None = None
        self.rekor: RekorChecker | None = None
        self.rekor_fetcher: Fetcher | None = None
        self.plan: Plan | None = None
        self._preloading = False
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
                        on_new_release=self._preload_verification,
                    )
                    if self.dry_run:
                        await self._dry_run(fetcher, offer)
                        return self.report
                    await self._in_thread(self.store.prepare)
                    async with self._locked():
                        await self._recorded(self._sync(fetcher, offer))
                finally:
                    self.report.retries = fetcher.retries_done
                    if self.rekor_fetcher is not None:
                        self.report.retries += self.rekor_fetcher.retries_done
        except MirrorError as exc:
            if self.report.exit_code is None:
                self._record_error(exc.exit_code, str(exc))
            raise
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)
        return self.report

    def _preload_verification(self) -> None:
        """A release new to the tree will be verified: load sigstore in a worker thread now,
        while its SUMS download (once per run)."""
        if not (self._preloading or self.dry_run):
            self._preloading = True
            self.executor.submit(verify.preload)

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
        assert self.plan is not None
        pipeline = ReleasePipeline(
            self.store,
            report=self.report,
            progress=self.progress,
            executor=self.executor,
            binding=self.binding,
            bundles=self.bundles,
            rekor=self.rekor,
            record_failure=self._record_failure,
        )
        await pipeline.run(fetcher, self.plan.releases)
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
        settings = self.config.verify
        trust_root = await self._in_thread(verify.load_trust_root, settings.trusted_root)
        self.bundles = verify.BundleChecker(trust_root, settings.identities)
        if settings.rekor_url:
            # Rekor is another service than upstream: its lookups get a concurrency bound of
            # their own, so they overlap the downloads instead of queueing behind them.
            self.rekor_fetcher = Fetcher(
                fetcher.upstream, self.config.upstream, executor=self.executor
            )
            self.rekor = verify.RekorChecker(
                self.bundles,
                rekor_url=settings.rekor_url,
                fetcher=self.rekor_fetcher,
                executor=self.executor,
            )
        # The tree carries the trust root its bundles were verified against, before any
        # bundle that needs it becomes visible.
        await self._in_thread(self.store.write_trust_root, trust_root.json_text.encode())

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


async def run_sync(
    config: Config,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
    lock_wait_s: float = 0.0,
) -> RunReport:
    """Run one sync; see ``SyncRun``."""
    return await SyncRun(config, dry_run=dry_run, progress=progress, lock_wait_s=lock_wait_s).run()
