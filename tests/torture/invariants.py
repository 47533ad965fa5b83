"""What must hold of a tree after any run, however it ended (kill -9 included).

``tree_problems`` lists every violation it finds, so a failing torture case shows all of them:

1. Every served file of a release is in its manifest, with the recorded size and sha256; a
   primary's content matches upstream's SHA256SUMS, and a signed primary has its bundle and
   sidecars beside it (nothing unverified, nothing without what verifies it).
2. Every marker names a release that is complete in the tree: its manifest lists, and the
   disk holds, every file the selection asks for.
3. Nothing partial is served: no temp file, no staging leftover, nothing outside a release
   directory but markers and the trust root.
4. Nothing outside the root: the directory around the tree holds only what the test put there.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path

from tests.fakes.release import UpstreamTree

COMPANIONS = (".sha256", ".sha512", ".sig", ".cert", ".sigstore.json")


def sums_of(tree: UpstreamTree, version: str) -> dict[str, str]:
    text = tree.files[f"release/{version}/SHA256SUMS"].decode()
    return {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in text.split("\n") if line}


def tree_problems(
    root: Path,
    upstream: UpstreamTree,
    wanted: dict[str, list[str]],
    *,
    outside: Path | None = None,
    outside_expected: Iterable[str] = (),
) -> list[str]:
    """Violations of the invariants above; ``wanted`` maps a version to the relpaths (inside
    ``release/<v>/``) a complete release must have."""
    problems: list[str] = []
    release_base = root / "release"
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        if entry.name not in ("release", "sigstore", ".k8s-mirror"):
            problems.append(f"stray top-level entry {entry.name}")
    versions = (
        [p.name for p in release_base.iterdir() if p.is_dir()] if release_base.is_dir() else []
    )
    for version in versions:
        problems += _release_problems(root, upstream, version)
    for marker in sorted(release_base.glob("*.txt")) if release_base.is_dir() else []:
        target = marker.read_text()
        if target not in versions:
            problems.append(f"marker {marker.name} names {target}, not in the tree")
            continue
        manifest = _manifest(root, target)
        for rel in wanted.get(target, []):
            if rel not in manifest or not (release_base / target / rel).is_file():
                problems.append(f"marker {marker.name} names {target}, which lacks {rel}")
    for path in root.rglob("*") if root.is_dir() else []:
        served = ".k8s-mirror" not in path.relative_to(root).parts
        if served and path.name.startswith(".tmp-"):
            problems.append(f"temp file served: {path.relative_to(root)}")
    if outside is not None:
        extra = sorted({p.name for p in outside.iterdir()} - set(outside_expected) - {root.name})
        if extra:
            problems.append(f"written outside the root: {extra}")
    return problems


def _manifest(root: Path, version: str) -> dict[str, dict[str, object]]:
    path = root / ".k8s-mirror/manifests" / f"{version}.json"
    try:
        files = json.loads(path.read_text())["files"]
    except (OSError, ValueError, KeyError):
        return {}
    return files if isinstance(files, dict) else {}


def _release_problems(root: Path, upstream: UpstreamTree, version: str) -> list[str]:
    problems = []
    base = root / "release" / version
    manifest = _manifest(root, version)
    if not manifest:
        return [f"release/{version}: served without a manifest"]
    sums = sums_of(upstream, version)
    for path in sorted(p for p in base.rglob("*") if p.is_file() or p.is_symlink()):
        rel = str(path.relative_to(base))
        if path.is_symlink():
            problems.append(f"release/{version}/{rel}: a symlink is served")
            continue
        record = manifest.get(rel)
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if not isinstance(record, dict):
            problems.append(f"release/{version}/{rel}: served, not in the manifest")
        elif record.get("size") != len(data) or record.get("sha256") != digest:
            problems.append(f"release/{version}/{rel}: differs from its manifest record")
        if rel in sums:
            if sums[rel] != digest:
                problems.append(f"release/{version}/{rel}: does not match SHA256SUMS")
            signed = not rel.endswith(".docker_tag")
            for suffix in COMPANIONS if signed else COMPANIONS[:2]:
                if not (base / (rel + suffix)).is_file():
                    problems.append(f"release/{version}/{rel}: served without {suffix}")
    return problems
