"""A download's partial file in the state directory, and what resuming it needs: the resume
metadata beside it (URL and validator for ``If-Range``), how many bytes on disk are usable, the
``Content-Range`` of an answer, and the blocking writes (worker thread) that create it.

A partial is untrusted: the digests of the whole file decide whether it is used (``fetch.py``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from mirror.digest import Digests, HashingWriter
from mirror.errors import LocalStoreError, TransientError
from mirror.statefile import StateFormatError, read_json_file

_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


def meta_path(part: Path) -> Path:
    return part.with_name(part.name + ".meta")


META_MAX_BYTES = 64 << 10


def read_meta(part: Path) -> dict[str, Any] | None:
    try:
        meta = read_json_file(meta_path(part), max_bytes=META_MAX_BYTES, max_depth=2)
    except (OSError, StateFormatError):
        return None
    return meta if isinstance(meta, dict) else None


def discard_partial(part: Path) -> None:
    """Forget a partial download and its resume metadata."""
    for path in (part, meta_path(part)):
        path.unlink(missing_ok=True)


def resume_offset(part: Path, url: str) -> tuple[int, str | None]:
    """Bytes already on disk for ``url`` and the validator to send in If-Range."""
    meta = read_meta(part)
    try:
        size = part.stat().st_size
    except FileNotFoundError:
        return 0, None
    validator = None
    if meta:
        etag = meta.get("etag")
        # If-Range needs a strong validator: a weak ETag would never match, so use the date.
        strong = isinstance(etag, str) and not etag.startswith("W/")
        validator = etag if strong else meta.get("last_modified")
    if not meta or meta.get("url") != url or not isinstance(validator, str) or size == 0:
        discard_partial(part)
        return 0, None
    return size, validator


def keep_prefix(part: Path, chunks: list[bytes], meta: dict[str, Any], limit: int) -> None:
    """(worker thread) The start of a small body whose connection broke, kept for resume."""
    prefix = b"".join(chunks)[:limit]
    if not prefix:
        return
    writer = open_writer(part, 0, meta)
    try:
        writer.write(prefix)
    finally:
        writer.close()


def open_writer(part: Path, offset: int, meta: dict[str, Any]) -> HashingWriter:
    try:
        writer = HashingWriter(part, offset)
        meta_path(part).write_text(json.dumps(meta))
    except OSError as exc:
        raise LocalStoreError(f"{part}: cannot write: {exc.strerror}") from exc
    return writer


def write_whole(part: Path, body: bytes) -> Digests:
    """(worker thread) A small body received whole: written and hashed in one call."""
    try:
        discard_partial(part)  # a partial left by an earlier run, with its resume metadata
        writer = HashingWriter(part)
    except OSError as exc:
        raise LocalStoreError(f"{part}: cannot write: {exc.strerror}") from exc
    try:
        writer.write(body)
        return writer.finish()
    except BaseException:
        writer.close()
        raise


def unsatisfied_length(value: str | None) -> int | None:
    """The complete length from a 416's ``Content-Range: bytes */<length>``."""
    match = re.match(r"^bytes \*/(\d+)$", value or "")
    return int(match[1]) if match else None


def parse_content_range(value: str | None) -> tuple[int, int]:
    match = _CONTENT_RANGE_RE.match(value or "")
    if match is None:
        raise TransientError(f"206 answer with malformed Content-Range {value!r}")
    total = -1 if match[3] == "*" else int(match[3])
    return int(match[1]), total
