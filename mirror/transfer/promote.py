"""Promoting a verified import into the tree, and what it changed.

Everything an import renames or writes into the served tree goes through ``promote``: the
trust root first (the bundles need it), then each release (a release new to the tree with one
directory rename, files added to a release already there one by one after its manifest),
markers last and only for releases complete in the tree, never backwards or outside their
series.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mirror.catalog import RelPath
from mirror.layout import TRUST_ROOT_RELPATH
from mirror.store import Store
from mirror.transfer.check import TrustChoice
from mirror.transfer.plan import ImportPlan
from mirror.transfer.staging import Staging

log = logging.getLogger(__name__)


@dataclass
class ImportResult:
    source: Path
    new_releases: list[str] = field(default_factory=list)
    updated_releases: list[str] = field(default_factory=list)
    files_imported: int = 0
    bytes_imported: int = 0
    files_present: int = 0
    markers_moved: dict[str, str] = field(default_factory=dict)
    markers_skipped: dict[str, str] = field(default_factory=dict)
    trust_root_written: bool = False

    @property
    def changed(self) -> bool:
        return bool(self.files_imported or self.markers_moved or self.trust_root_written)


def promote(
    store: Store,
    staging: Staging,
    plan: ImportPlan,
    markers: Mapping[str, str],
    trust: TrustChoice,
    result: ImportResult,
) -> None:
    """Trust root first (bundles need it), then releases, then markers."""
    if trust.path is not None and trust.origin != "the tree's":
        data = trust.path.read_bytes()
        current = store.root / TRUST_ROOT_RELPATH
        if not current.is_file() or current.read_bytes() != data:
            store.write_tree_file(RelPath(TRUST_ROOT_RELPATH), data)
            result.trust_root_written = True
    for version, release in plan.releases.items():
        staged = staging.files(version)
        if not staged:
            continue
        store.save_manifest(release.merged)
        if release.in_root:
            # Sidecars and bundles before primary files (the files recorded with a sha512).
            order = sorted(
                staged, key=lambda rel: (release.merged.files[rel].sha512 is not None, rel)
            )
            store.promote_files(
                version, [RelPath(rel) for rel in order], staged_dir=staging.release_dir(version)
            )
            result.updated_releases.append(version)
        else:
            store.promote_release(version, staged_dir=staging.release_dir(version))
            result.new_releases.append(version)
        result.files_imported += len(staged)
        result.bytes_imported += sum(d.size_bytes for d in staged.values())
        log.info("release/%s: %d files imported", version, len(staged))
    for marker, version in sorted(markers.items()):
        if not _complete(store, version):
            log.warning("marker %s not moved: release/%s is not complete here", marker, version)
            result.markers_skipped[marker] = version
            continue
        if store.read_marker(marker) == version:
            continue
        problem = store.marker_move_problem(marker, version)
        if problem is not None:
            log.warning("marker %s not moved: %s", marker, problem)
            result.markers_skipped[marker] = version
            continue
        store.write_marker(marker, version)
        result.markers_moved[marker] = version
        log.info("marker %s -> %s", marker, version)


def _complete(store: Store, version: str) -> bool:
    if not store.release_in_tree(version):
        return False
    manifest = store.load_manifest(version)
    return bool(manifest.files) and all(store.present(manifest, p) for p in manifest.files)
