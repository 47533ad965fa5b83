"""``k8s-mirror import``: a set or archive -> staging -> offline verify -> promote, under the lock.

The phases, each a function to open: ``open_source`` (which kind of media), the source's
``read`` (stream -> ``Staging``, planned by ``plan_import``), ``choose_trust_root`` and
``verify_staged`` (the same checks as ``verify``), ``promote``. Staging is removed on every
way out, so a refused import changes nothing in the tree.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from mirror.check import BindingPolicy
from mirror.config import IdentityConfig
from mirror.errors import ConfigError, IntegrityError
from mirror.store import Store
from mirror.transfer.archive import archive_compression
from mirror.transfer.check import choose_trust_root, verify_staged
from mirror.transfer.plan import plan_import
from mirror.transfer.promote import ImportResult, promote
from mirror.transfer.sources import ArchiveSource, SetSource, Source
from mirror.transfer.staging import Staging
from mirror.transfer.toc import TOC_NAME, Toc


def open_source(source: Path) -> Source:
    """A set directory, its toc.json, or a ``fetch --archive`` file (by suffix)."""
    if source.is_dir():
        if not (source / TOC_NAME).is_file():
            raise ConfigError(f"{source}: no {TOC_NAME}; not a transfer set", source="import")
        return SetSource(source, Toc.load(source / TOC_NAME))
    if source.is_file() and source.name == TOC_NAME:
        return SetSource(source, Toc.load(source))
    if not source.is_file():
        raise ConfigError(f"{source}: no such file or directory", source="import")
    try:
        archive_compression(source)
    except ConfigError:
        raise ConfigError(
            f"{source}: neither a transfer set (a directory with {TOC_NAME}) nor a "
            ".tar, .tar.gz or .tar.xz archive from fetch --archive",
            source="import",
        ) from None
    return ArchiveSource(source)


def import_set(
    root: Path,
    source: Path,
    *,
    identities: Sequence[IdentityConfig],
    trusted_root: Path | None = None,
    allow_unsigned: bool = False,
    lock_wait_s: float = 0.0,
    binding: BindingPolicy | None = None,
) -> ImportResult:
    """Import a transfer set (directory or its toc.json) or a ``fetch --archive`` file."""
    media = open_source(source)
    store = Store(root)
    staging = Staging(store)
    store.prepare()
    with store.lock(wait_s=lock_wait_s):
        # Left by an import (or run) that was killed: none can be running while we hold the lock.
        store.sweep()
        try:
            staging.create()
            carried = media.read(staging, functools.partial(plan_import, store, source))
            trust = choose_trust_root(
                store,
                staging,
                carried.plan,
                trusted_root=trusted_root,
                carried=carried.trust_root,
                source=source,
            )
            verify_staged(
                store,
                staging,
                carried.plan,
                trust,
                identities=identities,
                allow_unsigned=allow_unsigned,
                binding=binding or BindingPolicy(),
                carried_root=carried.trust_root,
                source=source,
            )
            result = ImportResult(source, files_present=carried.plan.files_present)
            promote(store, staging, carried.plan, carried.markers, trust, result)
        finally:
            staging.close()
    if result.markers_refused:
        # The releases are in (they verified); the markers keep their values, and a set that
        # tried to move one outside its series or backwards fails the import, as a sync would.
        name, problem = next(iter(result.markers_refused.items()))
        raise IntegrityError(
            f"{source}: marker {name} not moved: {problem}",
            hint="the set's releases were imported; its markers were not",
        )
    return result
