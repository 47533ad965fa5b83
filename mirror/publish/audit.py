"""``k8s-mirror verify --remote``: does the bucket hold exactly the verified tree?

Compares one LIST of the whole prefix and a HEAD per expected object with the local tree:

- ``missing``: a file of a local manifest, a manifest, a published index, a marker or the
  trust root has no object;
- ``differs``: the object's size or stored sha256 (full-object checksum, else our metadata)
  is not the local file's, or its ETag is not the one its published index recorded (it was
  replaced since); with ``--deep`` every object is read back and re-hashed instead of
  trusting what the store reports;
- ``unindexed``: a release's published index is missing or does not describe the local
  manifest (the release is not committed, so no marker should name it);
- ``extra``: an object under the prefix that the tree does not account for.

Each problem is one line naming the object (``s3://bucket/prefix/path``). Read-only.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from mirror.config import PublishConfig
from mirror.errors import LocalStoreError, MirrorError, PublishError
from mirror.publish.client import RemoteObject, S3Store
from mirror.publish.objects import PublishedIndex, index_relpath
from mirror.publish.run import internal_error
from mirror.publish.target import Target, parse_target
from mirror.publish.tree import LocalTree, read_tree
from mirror.publish.upload import gather_or_cancel

MAX_INDEX_BYTES = 64 * 1024**2


@dataclass(frozen=True)
class Expected:
    size: int
    sha256: str
    etag: str | None = None
    """The ETag the published index recorded, when it has one."""


@dataclass
class RemoteAudit:
    target: str
    problems: list[str] = field(default_factory=list)
    objects_checked: int = 0
    deep: bool = False


async def verify_remote(root: Path, settings: PublishConfig, *, deep: bool = False) -> RemoteAudit:
    target = parse_target(settings.to)
    try:
        return await _verify(root, settings, target, deep)
    except MirrorError:
        raise
    except Exception as exc:
        raise internal_error(target, exc) from exc


async def _verify(root: Path, settings: PublishConfig, target: Target, deep: bool) -> RemoteAudit:
    if not (root / "release").is_dir():
        raise LocalStoreError(f"{root}: not a mirror tree (no release/ directory)")
    tree = read_tree(root)
    audit = RemoteAudit(str(target), deep=deep)
    async with S3Store(settings, target) as s3:
        listing, _ = await s3.list_objects("")
        expected = await _expected(s3, tree, listing, audit)
        gate = asyncio.Semaphore(max(4, settings.concurrency))

        async def check(relpath: str, want: Expected) -> str | None:
            async with gate:
                return await _check(s3, relpath, want, listing.get(relpath), deep)

        lines = await gather_or_cancel(check(r, w) for r, w in sorted(expected.items()))
        audit.objects_checked = len(expected)
        audit.problems += [line for line in lines if line]
        for relpath in sorted(set(listing) - set(expected)):
            audit.problems.append(f"extra {target.url(relpath)} (size {listing[relpath].size})")
    return audit


async def _expected(
    s3: S3Store, tree: LocalTree, listing: dict[str, RemoteObject], audit: RemoteAudit
) -> dict[str, Expected]:
    """Every object the bucket should hold, with what it should be."""
    expected: dict[str, Expected] = {}
    for version, release in sorted(tree.releases.items()):
        index = None
        relpath = index_relpath(version)
        if relpath in listing:
            data = await s3.get(relpath, max_bytes=MAX_INDEX_BYTES)
            if data is not None:
                try:
                    index = PublishedIndex.from_bytes(data, s3.target.url(relpath))
                except PublishError as exc:
                    audit.problems.append(f"differs {exc}")
        if relpath in listing:
            # Its bytes are ours to predict only through its content, checked here.
            expected[relpath] = Expected(listing[relpath].size, "")
        wanted = {rel: (f.size, f.sha256) for rel, f in release.files.items()}
        if index is None or {r: (o.size, o.sha256) for r, o in index.objects.items()} != wanted:
            audit.problems.append(
                f"unindexed {s3.target.url(relpath)}: the release is not committed as the "
                "local tree has it (publish has not finished it)"
            )
        for rel, local in release.files.items():
            record = index.objects.get(rel) if index else None
            expected[local.relpath] = Expected(
                local.size, local.sha256, record.etag if record else None
            )
        expected[release.manifest_relpath] = Expected(
            len(release.manifest_bytes), release.manifest_sha256
        )
    for name, data in tree.markers.items():
        expected[tree.marker_relpath(name)] = Expected(len(data), hashlib.sha256(data).hexdigest())
    if tree.trust_root is not None:
        expected[tree.trust_root_relpath] = Expected(
            len(tree.trust_root), hashlib.sha256(tree.trust_root).hexdigest()
        )
    return expected


async def _check(
    s3: S3Store, relpath: str, want: Expected, listed: RemoteObject | None, deep: bool
) -> str | None:
    url = s3.target.url(relpath)
    if listed is None:
        return f"missing {url}"
    if not want.sha256:
        return None  # a published index: present, and its content was checked above
    if deep:
        size, sha256 = await s3.read_digest(relpath)
        source = "content"
    else:
        found = await s3.head(relpath)
        if found is None:
            return f"missing {url}"
        size, sha256, source = found.size, found.sha256 or "none", "stored digest"
        if want.etag is not None and found.etag != want.etag:
            return (
                f"differs {url}: ETag {found.etag} is not the {want.etag} published "
                f"(replaced since); size {size} {source} {sha256}"
            )
    if (size, sha256) != (want.size, want.sha256):
        return (
            f"differs {url}: size {size} {source} {sha256}, "
            f"expected size {want.size} sha256 {want.sha256}"
        )
    return None
