"""Planning an import against the target tree: what each carried release adds, and refusals.

For each release a source carries (its manifest, and the files it holds): a file the tree
already has must be the same (a release file is never replaced); a file the tree lacks and the
source does not carry makes the import fail before anything is promoted (an incremental set
on a tree without its base); a carried file the tree has already is not promoted again.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mirror.catalog import Version
from mirror.errors import ConfigError, IntegrityError
from mirror.store import Manifest, Store
from mirror.transfer.toc import Entry


@dataclass
class ReleasePlan:
    """One carried release, planned against the target tree."""

    version: str
    carried: Manifest
    """The manifest that travelled with the release."""
    in_root: bool
    merged: Manifest
    """The tree's manifest after the import: its own records, then the carried ones."""
    needed: set[str] = field(default_factory=set)
    """Carried files the tree lacks: the ones to stage, verify and promote."""
    present: int = 0


@dataclass
class ImportPlan:
    releases: dict[str, ReleasePlan]
    """In version order."""

    @property
    def files_present(self) -> int:
        return sum(r.present for r in self.releases.values())


Planner = Callable[[Mapping[str, Manifest], Mapping[str, Mapping[str, Entry]]], ImportPlan]
"""What a source calls once it knows the carried manifests and files (by release)."""


def plan_import(
    store: Store,
    source: Path,
    manifests: Mapping[str, Manifest],
    carried: Mapping[str, Mapping[str, Entry]],
) -> ImportPlan:
    """Plan every release of ``manifests``; ``carried`` lists the files the source holds."""
    for version in carried:
        if version not in manifests:
            raise IntegrityError(f"release/{version}: carried without its manifest")
    releases = {}
    for version, manifest in sorted(manifests.items(), key=lambda kv: Version.parse(kv[0])):
        releases[version] = _plan_release(store, source, manifest, carried.get(version, {}))
    return ImportPlan(releases)


def _plan_release(
    store: Store, source: Path, manifest: Manifest, files: Mapping[str, Entry]
) -> ReleasePlan:
    version = manifest.version
    for rel in files:
        if rel not in manifest.files:
            raise IntegrityError(
                f"release/{version}/{rel}: carried but not in the release's manifest"
            )
    in_root = store.release_in_tree(version)
    root_manifest = Manifest(version)
    if in_root:
        if not store.manifest_path(version).is_file():
            raise IntegrityError(
                f"release/{version}: already in {store.root} without a manifest (not "
                "written by k8s-mirror); refusing to add to it"
            )
        root_manifest = store.load_manifest(version)
    release = ReleasePlan(version, manifest, in_root, Manifest(version, dict(root_manifest.files)))
    lacking = []
    for rel, record in manifest.files.items():
        have = root_manifest.files.get(rel)
        if have is not None and have.sha256 != record.sha256:
            raise IntegrityError(
                f"release/{version}/{rel}: the set's copy differs from the one in "
                f"{store.root}; refusing to replace a release file"
            )
        release.merged.files.setdefault(rel, record)
        here = have is not None and store.present(root_manifest, rel)
        if rel in files:
            if here:
                release.present += 1
            else:
                release.needed.add(rel)
        elif not here:
            lacking.append(rel)
    if lacking:
        raise _missing_base(store, source, release, len(files), sorted(lacking))
    return release


def _missing_base(
    store: Store, source: Path, release: ReleasePlan, carried: int, lacking: list[str]
) -> ConfigError:
    version = release.version
    if release.in_root:
        what = (
            f"needs {len(lacking)} file(s) of release/{version} that {store.root} "
            f"lacks (e.g. {lacking[0]})"
        )
    else:
        what = (
            f"carries {carried} of the {len(release.carried.files)} files of "
            f"release/{version}, which is not in {store.root}"
        )
    return ConfigError(
        f"this incremental set {what}: import the set it was made on top of first",
        source=str(source),
    )
