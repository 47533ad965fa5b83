"""What a publish must do for one release, from what the bucket says (pure, no I/O).

Inputs: the local release (manifest records), one LIST of its objects (size, ETag) and its
published index, if any. Each manifest file is then

- ``current``: the index vouches for it (same size and sha256) and the listing still shows
  the object the index recorded (same size and ETag): nothing to do;
- ``check``: an object exists but nothing vouches for it (a killed publish uploaded it, or it
  was replaced since): HEAD reads its size and stored sha256, then ``settle`` decides;
- ``upload``: no object.

``settle`` turns checked objects into current ones (they hold our bytes: a killed publish's
work is reused, not re-sent) or conflicts (they differ: refused unless ``--repair``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mirror.publish.client import RemoteObject
from mirror.publish.objects import PublishedIndex, PublishedObject
from mirror.publish.tree import LocalRelease


@dataclass
class ReleasePlan:
    version: str
    current: dict[str, PublishedObject] = field(default_factory=dict)
    check: list[str] = field(default_factory=list)
    upload: list[str] = field(default_factory=list)
    conflicts: dict[str, RemoteObject] = field(default_factory=dict)
    """Objects that differ from the verified local file, by path in the release."""
    index_stale: bool = False
    """The published index does not describe the local manifest exactly."""

    @property
    def needs_commit(self) -> bool:
        return self.index_stale or bool(self.check or self.upload or self.conflicts)


def plan_release(
    local: LocalRelease,
    listing: dict[str, RemoteObject],
    index: PublishedIndex | None,
    *,
    recheck: bool = False,
) -> ReleasePlan:
    """``listing`` maps tree paths (``release/<v>/...``) to listed objects; ``recheck``
    (``--repair``) HEADs every object instead of trusting the index."""
    plan = ReleasePlan(local.version)
    indexed = index.objects if index is not None else {}
    for rel, wanted in sorted(local.files.items()):
        listed = listing.get(wanted.relpath)
        record = indexed.get(rel)
        if listed is None:
            plan.upload.append(rel)
        elif (
            not recheck
            and record is not None
            and (record.size, record.sha256) == (wanted.size, wanted.sha256)
            and (listed.size, listed.etag) == (record.size, record.etag)
        ):
            plan.current[rel] = record
        else:
            plan.check.append(rel)
    plan.index_stale = (
        index is None
        or index.manifest_sha256 != local.manifest_sha256
        or set(indexed) != set(local.files)
    )
    return plan


def settle(
    plan: ReleasePlan, local: LocalRelease, heads: dict[str, RemoteObject | None], *, repair: bool
) -> None:
    """Sort the checked objects by what HEAD found (``heads`` by path in the release)."""
    for rel in plan.check:
        wanted = local.files[rel]
        found = heads.get(rel)
        if found is None:
            plan.upload.append(rel)  # gone between LIST and HEAD
        elif found.size == wanted.size and found.sha256 == wanted.sha256:
            plan.current[rel] = PublishedObject(found.size, wanted.sha256, found.etag)
        elif repair:
            plan.upload.append(rel)
        else:
            plan.conflicts[rel] = found
    plan.check = []
    plan.upload.sort()


def conflict_line(url: str, found: RemoteObject, size: int, sha256: str) -> str:
    return (
        f"{url}: the bucket holds size {found.size} sha256 {found.sha256 or 'unknown'}, "
        f"the verified local file is size {size} sha256 {sha256}"
    )
