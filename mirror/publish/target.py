"""Publish targets: ``s3://BUCKET/PREFIX`` parsed and checked, and object keys under it.

Pure: no network. A target names one bucket and an optional key prefix; the served tree's
paths (``release/v1.34.2/...``, ``sigstore/trusted_root.json``) become keys under the prefix,
so a client of the bucket (or of a CDN in front of it) swaps the host and keeps the path.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_BUCKET = re.compile(r"[a-z0-9][a-z0-9.\-_]{1,61}[a-z0-9]")
_SEGMENT = re.compile(r"[A-Za-z0-9._\-+=@,]+")


@dataclass(frozen=True)
class Target:
    """Where a tree is published: one bucket, a key prefix ("" or ending with "/")."""

    bucket: str
    prefix: str = ""

    def key(self, relpath: str) -> str:
        """The object key of a tree path."""
        return self.prefix + relpath

    def relpath(self, key: str) -> str:
        """The tree path of an object key under the prefix."""
        return key[len(self.prefix) :]

    def url(self, relpath: str = "") -> str:
        """``s3://bucket/prefix/relpath``: how messages name an object (never credentials)."""
        return f"s3://{self.bucket}/{self.prefix}{relpath}"

    def __str__(self) -> str:
        return self.url()


def target_problem(text: str) -> str | None:
    """Why ``text`` is not a valid ``s3://BUCKET[/PREFIX]`` target; None if it is."""
    if not text.startswith("s3://"):
        return f"{text!r} is not an s3://BUCKET/PREFIX URL"
    bucket, _, prefix = text[len("s3://") :].partition("/")
    if not _BUCKET.fullmatch(bucket) or ".." in bucket:
        return f"{bucket!r} is not a bucket name (3-63 of a-z, 0-9, '.', '-', '_')"
    segments = [s for s in prefix.split("/")]
    if segments and segments[-1] == "":
        segments.pop()
    for segment in segments:
        if segment in ("", ".", "..") or not _SEGMENT.fullmatch(segment):
            return f"prefix {prefix!r} has an empty, dot or unusual segment {segment!r}"
        if segment.startswith("."):
            return f"prefix {prefix!r} has a hidden segment {segment!r}"
    return None


def parse_target(text: str) -> Target:
    """``s3://BUCKET[/PREFIX]`` -> Target; raises ValueError with the reason."""
    problem = target_problem(text)
    if problem is not None:
        raise ValueError(problem)
    bucket, _, prefix = text[len("s3://") :].partition("/")
    prefix = prefix.strip("/")
    return Target(bucket, prefix + "/" if prefix else "")
