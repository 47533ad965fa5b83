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
    markers_refused: dict[str, str] = field(default_factory=dict)
    """Not moved, with why: outside its series or backwards (the import then exits 5)."""
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
    """Trust root first (bundles need it), then releases, then markers (through the tree
    layer, which owns every rename into the tree)."""
    if trust.path is not None and trust.origin != "the tree's":
        result.trust_root_written = store.write_trust_root(trust.path.read_bytes())
    for version, release in plan.releases.items():
        staged = staging.files(version)
        if not staged:
            continue
        if release.in_root:
            records = {rel: release.merged.files[rel] for rel in staged}
            store.add_files(store.load_manifest(version), records, staging.release_dir(version))
            result.updated_releases.append(version)
        else:
            store.promote_release(release.merged, staging.release_dir(version))
            result.new_releases.append(version)
        result.files_imported += len(staged)
        result.bytes_imported += sum(d.size_bytes for d in staged.values())
        log.info("release/%s: %d files imported", version, len(staged))
    moves = store.move_markers(markers, store.release_complete)
    for marker, version in moves.incomplete.items():
        log.warning("marker %s not moved: release/%s is not complete here", marker, version)
        result.markers_skipped[marker] = version
    for marker, problem in moves.refused.items():
        log.error("marker %s not moved: %s", marker, problem)
        result.markers_refused[marker] = problem
    for marker, version in moves.moved.items():
        result.markers_moved[marker] = version
        log.info("marker %s -> %s", marker, version)
