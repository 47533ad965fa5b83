"""Removing what the config no longer selects, after a fully successful run only.

What goes: release directories whose version this run did not select, and files of kept
releases that the selection no longer covers (primary file with its sidecars and bundle).
What never goes: a release any marker file in the tree names, and marker files themselves
(clients may rely on a marker the config stopped selecting; delete it by hand to let its
release go). Before
anything is deleted, the whole removal is measured against the mass-delete guard
(``tree.prune_max_files`` and ``tree.prune_max_share`` of the tree's files); exceeding either
deletes nothing and fails the run with ``PruneGuardError`` naming the guard.

A release disappears from the served tree with one rename (into the state directory), then is
deleted; a file leaves before the manifest forgets it, so the manifest stays a superset.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from mirror.catalog import RelPath
from mirror.config import TreeConfig
from mirror.errors import LocalStoreError, PruneGuardError
from mirror.store import Store


@dataclass
class PrunePlan:
    releases: list[str] = field(default_factory=list)
    files: dict[str, list[str]] = field(default_factory=dict)
    """Per kept release, paths (relative to the release dir) to remove."""
    file_count: int = 0
    """Files the plan deletes, counting every file inside removed releases."""
    tree_file_count: int = 0

    def paths(self) -> list[str]:
        out = [f"release/{v}/" for v in self.releases]
        out += [f"release/{v}/{p}" for v, paths in self.files.items() for p in paths]
        return out


def plan_prune(
    store: Store, keep: Mapping[str, Iterable[str]], markers: Mapping[str, str]
) -> PrunePlan:
    """``keep`` maps each selected version to every path of it that should stay; ``markers``
    are the selected markers as this run leaves them (a dry run has not moved them yet)."""
    plan = PrunePlan()
    marker_targets = set(markers.values()) | {
        target for name, target in store.markers().items() if name not in markers
    }
    for version in store.versions_in_tree():
        manifest = store.load_manifest(version)
        count = _count_files(store, version)
        plan.tree_file_count += count
        if version not in keep:
            if version not in marker_targets:
                plan.releases.append(version)
                plan.file_count += count
            continue
        wanted = set(keep[version])
        extra = sorted(p for p in manifest.files if p not in wanted)
        if extra:
            plan.files[version] = extra
            plan.file_count += len(extra)
    return plan


def check_guard(plan: PrunePlan, config: TreeConfig) -> None:
    if plan.file_count > config.prune_max_files:
        raise PruneGuardError(
            f"prune would remove {plan.file_count} files, more than tree.prune_max_files "
            f"({config.prune_max_files}); nothing was removed",
            hint="check the selection and upstream; raise the guard if this is intended",
        )
    if plan.tree_file_count and plan.file_count > config.prune_max_share * plan.tree_file_count:
        raise PruneGuardError(
            f"prune would remove {plan.file_count} of {plan.tree_file_count} files, more than "
            f"tree.prune_max_share ({config.prune_max_share:.0%}); nothing was removed",
            hint="check the selection and upstream; raise the guard if this is intended",
        )


def execute_prune(store: Store, plan: PrunePlan) -> None:
    """(blocking) Carry out a plan that passed the guard."""
    try:
        for version in plan.releases:
            store.remove_release(version)
        for version, paths in plan.files.items():
            _remove_files(store, version, paths)
    except OSError as exc:
        raise LocalStoreError(f"prune: {exc.filename}: {exc.strerror}") from exc


def _count_files(store: Store, version: str) -> int:
    return sum(len(files) for _, _, files in os.walk(store.release_dir(version)))


def _remove_files(store: Store, version: str, paths: Iterable[str]) -> None:
    """Delete files of a release; the manifest forgets them only after they are gone."""
    manifest = store.load_manifest(version)
    touched = set()
    for rel in paths:
        target = store.tree_path(version, RelPath(rel))
        target.unlink(missing_ok=True)
        touched.add(target.parent)
    for directory in touched:
        _remove_empty_dirs(directory, store.release_dir(version))
    for rel in paths:
        manifest.files.pop(rel, None)
    store.save_manifest(manifest)


def _remove_empty_dirs(directory: Path, stop: Path) -> None:
    current = os.fspath(directory)
    while os.path.abspath(current) != os.path.abspath(stop):
        try:
            os.rmdir(current)
        except OSError:
            return
        current = os.path.dirname(current)
