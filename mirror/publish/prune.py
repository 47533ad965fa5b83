"""Remote prune: remove from the bucket what the local tree no longer has, like local prune.

What goes: releases in the bucket that are not in the local tree, and objects of kept
releases that their local manifest no longer lists. What never goes: a release that any
marker in the bucket or in the local tree names, markers themselves, the trust root, and
anything outside ``release/`` and our own index documents. The whole removal is measured
against the same mass-delete guard as local prune (``tree.prune_max_files`` objects and
``tree.prune_max_share`` of the bucket's release objects); beyond either nothing is deleted
(``PruneGuardError``, exit 8). Runs only after a publish that completed, so the bucket's
markers already are the tree's.

A release leaves with its published index first (it is no longer committed), then its
manifest and objects; a killed prune is finished by the next one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from mirror import catalog
from mirror.config import TreeConfig
from mirror.errors import PruneGuardError
from mirror.publish.client import RemoteObject, S3Store
from mirror.publish.objects import index_relpath
from mirror.publish.tree import MANIFEST_KEY_DIR, LocalTree

log = logging.getLogger("mirror.publish")


@dataclass
class RemotePruneResult:
    releases: list[str] = field(default_factory=list)
    objects: list[str] = field(default_factory=list)
    """Tree paths of payload objects deleted (inside removed and kept releases)."""
    total_objects: int = 0

    @property
    def deleted(self) -> int:
        return len(self.objects)


async def prune_remote(s3: S3Store, tree: LocalTree, guard: TreeConfig) -> RemotePruneResult:
    """Plan, check the guard, then delete."""
    listing, _ = await s3.list_objects("release/")
    protected = {tree.marker_version(name) for name in tree.markers}
    for relpath in sorted(listing):
        name = relpath.removeprefix("release/").removesuffix(".txt")
        if relpath.count("/") == 1 and relpath.endswith(".txt") and catalog.is_marker(name):
            data = await s3.get(relpath, max_bytes=1024)
            if data:
                protected.add(data.decode("utf-8", "replace").strip())
    result = _plan(listing, tree, protected)
    _check_guard(result, guard)
    for version in result.releases:
        # Uncommit first: a release without its index is never taken as published.
        await s3.delete([index_relpath(version)])
    if result.objects:
        await s3.delete(result.objects)
    if result.releases:
        await s3.delete([f"{MANIFEST_KEY_DIR}/{v}.json" for v in result.releases])
    for relpath in result.objects:
        log.info("pruned %s", s3.target.url(relpath))
    return result


def _plan(
    listing: dict[str, RemoteObject], tree: LocalTree, protected: set[str]
) -> RemotePruneResult:
    result = RemotePruneResult()
    gone: set[str] = set()
    for relpath in sorted(listing):
        parts = relpath.split("/", 2)
        if len(parts) < 3:
            continue  # markers and stray top-level objects are never pruned
        result.total_objects += 1
        version, rel = parts[1], parts[2]
        local = tree.releases.get(version)
        if local is None:
            if version in protected:
                continue
            gone.add(version)
            result.objects.append(relpath)
        elif rel not in local.files:
            result.objects.append(relpath)
    result.releases = sorted(gone)
    return result


def _check_guard(result: RemotePruneResult, guard: TreeConfig) -> None:
    count = result.deleted
    if count > guard.prune_max_files:
        raise PruneGuardError(
            f"remote prune would delete {count} objects, more than tree.prune_max_files "
            f"({guard.prune_max_files}); nothing was deleted",
            hint="check the tree and the target; raise the guard if this is intended",
        )
    if result.total_objects and count > guard.prune_max_share * result.total_objects:
        raise PruneGuardError(
            f"remote prune would delete {count} of {result.total_objects} objects, more than "
            f"tree.prune_max_share ({guard.prune_max_share:.0%}); nothing was deleted",
            hint="check the tree and the target; raise the guard if this is intended",
        )
