"""The publish sequence for one target, under the tree's lock.

1. Read the tree (manifests, markers, trust root) and what the bucket has: one LIST of
   ``release/`` (markers, releases), one of the published indexes, one per local release.
2. Plan every release (``plan``); HEAD what nothing vouches for; refuse before any upload if
   an object differs from the verified local file (``RemoteConflictError``), unless
   ``--repair``. If nothing differs, stop here: a no-change publish makes no PUT at all.
3. Detect the checksum the target checks (a probe PUT with a wrong sha256, only when there is
   something to upload), then upload: the trust root first, then per release every missing
   payload object, each confirmed by read-back; the release's manifest; its published index
   (the commit record) last.
4. Markers last, each naming a release whose index was just confirmed or already current.
   A killed or failed publish never reaches them, so no marker in the bucket ever names a
   release with a missing or partial object; the next publish resumes (objects already up are
   confirmed by HEAD, not sent again).
5. Remote prune, if asked, behind the mass-delete guard.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from mirror import catalog
from mirror.catalog import Version
from mirror.config import PublishConfig, TreeConfig
from mirror.errors import IntegrityError, MirrorError, PublishError, RemoteConflictError
from mirror.publish.client import RemoteObject, S3Store
from mirror.publish.objects import INDEX_DIR, PublishedIndex, PublishedObject, index_relpath
from mirror.publish.plan import ReleasePlan, conflict_line, plan_release, settle
from mirror.publish.prune import RemotePruneResult, prune_remote
from mirror.publish.target import Target, parse_target
from mirror.publish.tree import LocalTree, read_tree, tree_lock
from mirror.publish.upload import Checksums, Uploader, gather_or_cancel

log = logging.getLogger("mirror.publish")
MAX_DOC_BYTES = 64 * 1024**2


@dataclass
class PublishResult:
    target: str
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    files_unchanged: int = 0
    files_reused: int = 0
    """Objects a killed publish had uploaded, confirmed by HEAD instead of sent again."""
    releases_committed: list[str] = field(default_factory=list)
    markers_written: dict[str, str] = field(default_factory=dict)
    trust_root_written: bool = False
    repaired: list[str] = field(default_factory=list)
    checksum: str | None = None
    pruned: RemotePruneResult | None = None
    duration_s: float = 0.0

    @property
    def changed(self) -> bool:
        return bool(
            self.files_uploaded
            or self.releases_committed
            or self.markers_written
            or self.trust_root_written
            or (self.pruned and self.pruned.deleted)
        )


async def publish(
    root: Path,
    settings: PublishConfig,
    *,
    repair: bool = False,
    prune: bool = False,
    guard: TreeConfig | None = None,
    lock_wait_s: float = 0.0,
) -> PublishResult:
    """Publish the tree at ``root`` to ``settings.to``."""
    target = parse_target(settings.to)
    started = time.monotonic()
    try:
        async with tree_lock(root, wait_s=lock_wait_s):
            tree = read_tree(root)
            async with S3Store(settings, target) as s3:
                run = _Publish(s3, tree, settings, repair=repair)
                result = await run.execute()
                if prune or settings.prune:
                    result.pruned = await prune_remote(s3, tree, guard or TreeConfig())
    except MirrorError:
        raise
    except Exception as exc:
        raise internal_error(target, exc) from exc
    result.duration_s = time.monotonic() - started
    return result


def internal_error(target: Target, exc: Exception) -> MirrorError:
    """A bug, not a condition we know: one line (the traceback goes to the debug log)."""
    log.debug("internal error", exc_info=exc)
    return MirrorError(
        f"{target}: internal error: {type(exc).__name__}: {exc}",
        hint="this is a bug in k8s-mirror: please report it (run with -v for details)",
    )


class _Publish:
    def __init__(
        self, s3: S3Store, tree: LocalTree, settings: PublishConfig, *, repair: bool
    ) -> None:
        self.s3 = s3
        self.tree = tree
        self.settings = settings
        self.repair = repair
        self.target: Target = s3.target
        self.result = PublishResult(str(s3.target))
        self.heads = asyncio.Semaphore(max(4, settings.concurrency))

    async def execute(self) -> PublishResult:
        top, _ = await self.s3.list_objects("release/", delimiter="/")
        published, _ = await self.s3.list_objects(f"{INDEX_DIR}/")
        plans = {v: await self._plan(v, published) for v in self.tree.releases}
        self._refuse_conflicts(plans)
        trust_changed = await self._trust_root_changed()
        markers = await self._markers_to_write(top)
        work = [p for p in plans.values() if p.needs_commit]
        self.result.files_unchanged = (
            sum(len(p.current) for p in plans.values()) - self.result.files_reused
        )
        if not (work or trust_changed or markers):
            return self.result  # nothing differs: no PUT at all
        checksums = await self._checksums()
        self.result.checksum = checksums.algorithm
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="publish") as executor:
            uploader = Uploader(
                self.s3,
                executor,
                checksums,
                part_size_bytes=self.settings.part_size_bytes,
                concurrency=self.settings.concurrency,
                on_uploaded=lambda f: log.info(
                    "uploaded %s size=%d", self.target.url(f.relpath), f.size
                ),
            )
            if trust_changed and self.tree.trust_root is not None:
                await uploader.upload_bytes(self.tree.trust_root_relpath, self.tree.trust_root)
                self.result.trust_root_written = True
            for plan in work:
                await self._commit(uploader, plan)
            for name, data in markers.items():
                await uploader.upload_bytes(self.tree.marker_relpath(name), data)
                self.result.markers_written[name] = data.decode().strip()
        return self.result

    async def _plan(self, version: str, published: dict[str, RemoteObject]) -> ReleasePlan:
        local = self.tree.releases[version]
        listing, _ = await self.s3.list_objects(f"release/{version}/")
        index = None
        if index_relpath(version) in published:
            data = await self.s3.get(index_relpath(version), max_bytes=MAX_DOC_BYTES)
            try:
                if data is not None:
                    index = PublishedIndex.from_bytes(data, self.target.url(index_relpath(version)))
            except PublishError:
                if not self.repair:
                    raise
                index = None  # --repair re-checks every object and writes a new index
        plan = plan_release(local, listing, index, recheck=self.repair)
        checked = list(plan.check)
        heads = await self._head_all([local.files[rel].relpath for rel in checked])
        settle(
            plan,
            local,
            {rel: heads[local.files[rel].relpath] for rel in checked},
            repair=self.repair,
        )
        self.result.files_reused += sum(1 for rel in checked if rel in plan.current)
        self.result.repaired += [
            local.files[rel].relpath
            for rel in checked
            if rel in plan.upload and heads[local.files[rel].relpath] is not None
        ]
        return plan

    async def _head_all(self, relpaths: list[str]) -> dict[str, RemoteObject | None]:
        async def one(relpath: str) -> tuple[str, RemoteObject | None]:
            async with self.heads:
                return relpath, await self.s3.head(relpath)

        return dict(await gather_or_cancel(one(r) for r in relpaths))

    def _refuse_conflicts(self, plans: dict[str, ReleasePlan]) -> None:
        lines = []
        for version, plan in plans.items():
            for rel, found in sorted(plan.conflicts.items()):
                local = self.tree.releases[version].files[rel]
                lines.append(
                    conflict_line(self.target.url(local.relpath), found, local.size, local.sha256)
                )
        if lines:
            more = f" (and {len(lines) - 1} more)" if len(lines) > 1 else ""
            raise RemoteConflictError(
                f"{lines[0]}{more}; refusing to overwrite, nothing was published",
                hint="check who wrote it (k8s-mirror verify --remote lists every difference); "
                "publish --repair replaces it with the verified file",
            )

    async def _commit(self, uploader: Uploader, plan: ReleasePlan) -> None:
        """Payload, then manifest, then the index: the release's commit record."""
        local = self.tree.releases[plan.version]
        files = [local.files[rel] for rel in plan.upload]
        confirmed = await gather_or_cancel(uploader.upload(f) for f in files)
        for f, found in zip(files, confirmed, strict=True):
            rel = f.relpath.removeprefix(f"release/{plan.version}/")
            plan.current[rel] = PublishedObject(found.size, f.sha256, found.etag)
            self.result.files_uploaded += 1
            self.result.bytes_uploaded += f.size
        manifest = await self.s3.head(local.manifest_relpath)
        if manifest is None or manifest.sha256 != local.manifest_sha256:
            manifest = await uploader.upload_bytes(local.manifest_relpath, local.manifest_bytes)
        index = PublishedIndex(
            plan.version,
            local.manifest_sha256,
            manifest.etag,
            {rel: plan.current[rel] for rel in sorted(local.files)},
        )
        await uploader.upload_bytes(index_relpath(plan.version), index.to_bytes())
        self.result.releases_committed.append(plan.version)
        log.info(
            "committed %s (%d objects)",
            self.target.url(f"release/{plan.version}/"),
            len(index.objects),
        )

    async def _trust_root_changed(self) -> bool:
        if self.tree.trust_root is None:
            return False
        found = await self.s3.head(self.tree.trust_root_relpath)
        wanted = hashlib.sha256(self.tree.trust_root).hexdigest()
        return found is None or found.sha256 != wanted or found.size != len(self.tree.trust_root)

    async def _markers_to_write(self, top: dict[str, RemoteObject]) -> dict[str, bytes]:
        """Local markers whose remote copy differs; refuse to move one backwards or out of
        its series (a rolled-back tree must not steer the bucket's clients to an old release)."""
        out: dict[str, bytes] = {}
        for name, data in sorted(self.tree.markers.items()):
            relpath = self.tree.marker_relpath(name)
            remote = None
            if relpath in top:
                remote = await self.s3.get(relpath, max_bytes=1024)
            if remote == data:
                continue
            version = data.decode().strip()
            problem = catalog.marker_series_problem(name, Version.parse(version))
            current = remote.decode("utf-8", "replace").strip() if remote else ""
            if (
                problem is None
                and catalog.is_version(current)
                and Version.parse(version) < Version.parse(current)
            ):
                problem = f"{name} would move back from {current} to {version}"
            if problem is not None:
                raise IntegrityError(
                    f"{self.target.url(relpath)}: {problem}; nothing was marked",
                    hint="publish from a tree that is at least as new as the bucket",
                )
            out[name] = data
        return out

    async def _checksums(self) -> Checksums:
        """The checksum every PUT carries: configured, or probed once per publish."""
        if self.settings.checksum != "auto":
            return Checksums(self.settings.checksum)
        probe = f".k8s-mirror/probe-{secrets.token_hex(8)}"
        checks_sha256 = await self.s3.probe_sha256(probe)
        if not checks_sha256:
            log.warning("%s: does not check x-amz-checksum-sha256; using Content-MD5", self.target)
        return Checksums("sha256" if checks_sha256 else "md5")
