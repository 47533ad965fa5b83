"""Binding a file to the release and path it is served under.

A Kubernetes signature covers a file's bytes only: a validly signed kubectl of v1.33.2 is
still validly signed when served as v1.34.1's. What binds bytes to a release and a path is
the release's signed SBOM (``kubernetes-release.spdx``), so, for a signed release, a file is
accepted only if one of these rules binds it (the rule's name is recorded in the manifest):

- ``sbom``: a binary ``bin/<os>/<arch>/<name>`` or a tarball (by base name) is listed as a
  ``FileName`` of the release SBOM with the file's sha256 (and sha512 where listed);
- ``sbom-self``: an SBOM names this release in its own content (``DocumentName: Kubernetes
  Release <v>`` / ``Kubernetes Source <v>`` and the matching ``DocumentNamespace``);
- ``image-tag``: an image archive ``bin/linux/<arch>/<image>.tar`` names exactly
  ``registry.k8s.io/<image>-<arch>:<tag>`` (the version, ``+`` written ``_``) in its own
  ``manifest.json`` ``RepoTags``, and the SBOM lists that image as a package;
- ``docker-tag``: a ``.docker_tag`` names the release (checked by ``check``) and sits beside
  an image archive of the same name that the SBOM lists;
- ``unbound``: nothing binds the file but it matches a ``verify.unbound_allowed`` pattern
  (accepted with a warning); anything else unbound is refused.

The SBOM itself must be signed (its bundle verified by ``check``) before any of this counts.
``release_binding = "off"`` skips binding (recorded as ``off``).
"""

from __future__ import annotations

import fnmatch
import json
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from mirror.digest import Digests
from mirror.errors import IntegrityError
from mirror.sbom import RELEASE_SBOM, SBOM_KINDS, Sbom, naming_problem, parse_sbom
from mirror.tarinfo import BoundedTarInfo

IMAGE_MANIFEST_MAX_BYTES = 1 << 20
IMAGE_MAX_MEMBERS = 100_000

TagsOf = Callable[[], Sequence[str]]
"""Reads an image archive's RepoTags (only called for image archives)."""


@dataclass(frozen=True)
class ReleaseSbom:
    """A release's SBOM whose signature verified and which names the release."""

    version: str
    sbom: Sbom

    @classmethod
    def load(cls, version: str, data: bytes) -> ReleaseSbom:
        source = f"release/{version}/{RELEASE_SBOM}"
        sbom = parse_sbom(data, source)
        problem = naming_problem(sbom, RELEASE_SBOM, version)
        if problem is not None:
            raise IntegrityError(f"{source}: {problem}: not this release's SBOM")
        return cls(version, sbom)


@dataclass(frozen=True)
class Binding:
    rule: str
    """``sbom``, ``sbom-self``, ``image-tag``, ``docker-tag`` or ``unbound``."""
    problem: str | None = None
    """Why the file is not bound (then it is refused), or None."""
    warning: str | None = None


def image_tag(version: str, arch: str, image: str) -> str:
    return f"registry.k8s.io/{image}-{arch}:{version.replace('+', '_')}"


def bind(
    version: str,
    relpath: str,
    digests: Digests,
    evidence: ReleaseSbom | None,
    *,
    content: Callable[[], bytes | None],
    tags_of: TagsOf,
    allowed_unbound: Sequence[str] = (),
) -> Binding:
    """Which rule binds ``relpath`` (with these digests) to ``version``, or why none does.

    ``content`` reads the file itself (only asked for the SBOMs); ``tags_of`` reads an image
    archive's RepoTags (only asked for image archives).
    """
    parts = relpath.split("/")
    name = parts[-1]
    if relpath in SBOM_KINDS:
        return _bind_sbom_file(version, relpath, content)
    if evidence is None:
        return Binding("sbom", f"no verified {RELEASE_SBOM} binds it to {version}")
    if len(parts) == 4 and parts[0] == "bin" and name.endswith(".tar") and parts[1] == "linux":
        return _bind_image(version, parts[2], name.removesuffix(".tar"), evidence, tags_of)
    if len(parts) == 4 and parts[0] == "bin" and name.endswith(".docker_tag"):
        image = name.removesuffix(".docker_tag")
        if parts[1] == "linux" and image_tag(version, parts[2], image) in evidence.sbom.packages:
            return Binding("docker-tag")
        return _unbound(version, relpath, "beside no image archive the SBOM lists", allowed_unbound)
    listed_as = relpath if len(parts) == 4 and parts[0] == "bin" else None
    if len(parts) == 1 and name.endswith((".tar.gz", ".tgz")):
        listed_as = name
    if listed_as is None or listed_as not in evidence.sbom.files:
        return _unbound(version, relpath, f"not in the {version} SBOM", allowed_unbound)
    listed = evidence.sbom.files[listed_as]
    for algo in ("sha256", "sha512"):
        want = listed.get(algo)
        have = getattr(digests, algo)
        if algo == "sha256" and want is None:
            return Binding("sbom", f"the {version} SBOM lists it without a SHA256 checksum")
        if want is not None and have is not None and want != have:
            return Binding(
                "sbom", f"{algo} {have[:16]}... is not the {version} SBOM's {want[:16]}..."
            )
    return Binding("sbom")


def _bind_sbom_file(version: str, relpath: str, content: Callable[[], bytes | None]) -> Binding:
    data = content()
    if data is None:
        return Binding("sbom-self", "unreadable")
    try:
        problem = naming_problem(parse_sbom(data, relpath), relpath, version)
    except IntegrityError as exc:
        return Binding("sbom-self", str(exc))
    return Binding("sbom-self", f"{problem}: another release's SBOM" if problem else None)


def _bind_image(
    version: str, arch: str, image: str, evidence: ReleaseSbom, tags_of: TagsOf
) -> Binding:
    want = image_tag(version, arch, image)
    try:
        tags = list(tags_of())
    except IntegrityError as exc:
        return Binding("image-tag", str(exc))
    if tags != [want]:
        return Binding("image-tag", f"its manifest.json names {tags!r}, not [{want!r}]")
    if want not in evidence.sbom.packages:
        return Binding("image-tag", f"the {version} SBOM does not list the image {want}")
    return Binding("image-tag")


def _unbound(version: str, relpath: str, why: str, allowed: Sequence[str]) -> Binding:
    if any(fnmatch.fnmatchcase(relpath, pattern) for pattern in allowed):
        return Binding("unbound", warning=f"{why}; accepted by verify.unbound_allowed")
    return Binding(
        "unbound",
        f"{why}; nothing binds it to release {version} (verify.unbound_allowed can accept it)",
    )


def tags_in(locate: Callable[[str], Path]) -> Callable[[str], TagsOf]:
    """For files found by ``locate`` (a path inside the release -> the file on disk)."""
    return lambda rel: lambda: image_repo_tags(locate(rel))


def image_repo_tags(path: Path) -> list[str]:
    """The ``RepoTags`` an image archive names in its ``manifest.json`` (docker save format).

    Reads only tar headers and that one member, bounded in size: the layers are never read.
    """
    try:
        with tarfile.open(path, mode="r:", tarinfo=BoundedTarInfo) as tar:
            for count, info in enumerate(tar):
                if count > IMAGE_MAX_MEMBERS:
                    break
                if info.name.removeprefix("./") != "manifest.json":
                    continue
                if not info.isreg() or info.size > IMAGE_MANIFEST_MAX_BYTES:
                    raise IntegrityError("its manifest.json is not a small regular file")
                handle = tar.extractfile(info)
                assert handle is not None
                return _repo_tags(handle.read())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise IntegrityError(f"not a readable image archive ({exc})") from None
    raise IntegrityError("not an image archive: no manifest.json")


def _repo_tags(data: bytes) -> list[str]:
    try:
        entries = json.loads(data)
    except (ValueError, RecursionError):
        raise IntegrityError("its manifest.json is not JSON") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise IntegrityError("its manifest.json is not a docker save manifest")
    tags: list[str] = []
    for entry in entries:
        repo_tags = entry.get("RepoTags") or []
        if not isinstance(repo_tags, list) or not all(isinstance(t, str) for t in repo_tags):
            raise IntegrityError("its manifest.json has malformed RepoTags")
        tags += repo_tags
    return tags
