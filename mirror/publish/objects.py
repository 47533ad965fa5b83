"""What each published object is: its headers, and the per-release published index.

Headers are what a static host would send, so a CDN in front of the bucket behaves: markers,
the trust root and our own index documents ``no-cache`` (they move), release files long-lived
and immutable (a release's bytes never change once verified).

The *published index* (``.k8s-mirror/published/<v>.json`` under the prefix) is the commit
record of one release in the bucket: written only after every payload object and the
manifest of that release were uploaded and confirmed, it lists each object with the size,
sha256 and ETag the store reported at confirmation. A later publish compares one LIST of the
release's objects (size, ETag) with it, so a no-change publish makes no PUT and still notices
an object someone replaced or removed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from mirror.errors import PublishError
from mirror.layout import RELEASE_DIR_NAME, STATE_DIR_NAME
from mirror.publish.client import Headers

INDEX_FORMAT = 1
INDEX_KIND = "k8s-mirror-published-release"
INDEX_DIR = f"{STATE_DIR_NAME}/published"

IMMUTABLE = "public, max-age=31536000, immutable"
NO_CACHE = "no-cache"

_TYPES = (
    (".sigstore.json", "application/json"),
    (".json", "application/json"),
    (".tar.gz", "application/gzip"),
    (".tgz", "application/gzip"),
    (".tar", "application/x-tar"),
    (".html", "text/html; charset=utf-8"),
    (".txt", "text/plain; charset=utf-8"),
    (".spdx", "text/plain; charset=utf-8"),
    (".sha256", "text/plain; charset=utf-8"),
    (".sha512", "text/plain; charset=utf-8"),
    (".sig", "text/plain; charset=utf-8"),
    (".cert", "text/plain; charset=utf-8"),
    (".docker_tag", "text/plain; charset=utf-8"),
    ("SHA256SUMS", "text/plain; charset=utf-8"),
    ("SHA512SUMS", "text/plain; charset=utf-8"),
)


def content_type(relpath: str) -> str:
    for suffix, kind in _TYPES:
        if relpath.endswith(suffix):
            return kind
    return "application/octet-stream"


def headers_for(relpath: str) -> Headers:
    """Release files are immutable; markers, trust root and our documents move."""
    parts = relpath.split("/")
    in_release = len(parts) > 2 and parts[0] == RELEASE_DIR_NAME
    return Headers(content_type(relpath), IMMUTABLE if in_release else NO_CACHE)


def index_relpath(version: str) -> str:
    return f"{INDEX_DIR}/{version}.json"


@dataclass(frozen=True)
class PublishedObject:
    size: int
    sha256: str
    etag: str

    def to_json(self) -> dict[str, Any]:
        return {"size": self.size, "sha256": self.sha256, "etag": self.etag}


@dataclass
class PublishedIndex:
    """One release as last committed to the bucket (paths relative to ``release/<v>/``)."""

    version: str
    manifest_sha256: str = ""
    manifest_etag: str = ""
    objects: dict[str, PublishedObject] = field(default_factory=dict)
    published_at: float = 0.0

    def to_bytes(self) -> bytes:
        return json.dumps(
            {
                "format": INDEX_FORMAT,
                "kind": INDEX_KIND,
                "version": self.version,
                "published_at": self.published_at or time.time(),
                "manifest": {"sha256": self.manifest_sha256, "etag": self.manifest_etag},
                "objects": {p: o.to_json() for p, o in sorted(self.objects.items())},
            },
            indent=1,
        ).encode()

    @classmethod
    def from_bytes(cls, data: bytes, source: str) -> PublishedIndex:
        """Parse one; a damaged index is an error, not "nothing published" (that would
        silently re-check and re-commit a release someone tampered with)."""
        try:
            doc = json.loads(data)
            if doc.get("format") != INDEX_FORMAT or doc.get("kind") != INDEX_KIND:
                raise ValueError("not a k8s-mirror published index")
            objects = {
                str(p): PublishedObject(int(o["size"]), str(o["sha256"]), str(o["etag"]))
                for p, o in doc["objects"].items()
            }
            manifest = doc.get("manifest", {})
            return cls(
                str(doc["version"]),
                str(manifest.get("sha256", "")),
                str(manifest.get("etag", "")),
                objects,
                float(doc.get("published_at", 0)),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise PublishError(
                f"{source}: unreadable published index: {exc}",
                hint="delete that object; the next publish re-checks the release and "
                "writes a new one",
            ) from None
