"""Reading JSON the tool did not just compute: its own state files and what a set carries.

Journals, ``status.json``, run reports, resume metadata, manifests, ``toc.json`` and an
archive's end record are all untrusted input: a disk fills, a run dies half way through a
line, someone edits a file by hand, a transfer set is built by an adversary. Everything read
here is bounded in size and nesting depth and comes back as a plain value the caller then
checks by type; a problem is raised as the caller's error class with the file's name, never as
a ``RecursionError`` or ``UnicodeDecodeError`` traceback.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

JSON_MAX_DEPTH = 32
"""Deeper than anything the tool writes (manifests nest four levels)."""


class StateFormatError(ValueError):
    """A state file or carried document that is not the JSON we expect."""


def decode_text(data: bytes, source: str) -> str:
    """UTF-8 text, or ``StateFormatError`` naming ``source``."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise StateFormatError(f"{source}: not UTF-8 text") from None


def parse_json(
    data: bytes | str, source: str, *, max_bytes: int, max_depth: int = JSON_MAX_DEPTH
) -> Any:
    """Parse a JSON document no larger than ``max_bytes`` and nested at most ``max_depth``."""
    if len(data) > max_bytes:
        raise StateFormatError(f"{source}: larger than {max_bytes} bytes")
    text = decode_text(data, source) if isinstance(data, bytes) else data
    try:
        value = json.loads(text)
    except RecursionError:
        raise StateFormatError(f"{source}: JSON nested too deeply") from None
    except ValueError as exc:
        raise StateFormatError(f"{source}: not JSON ({exc})") from None
    if _depth(value) > max_depth:
        raise StateFormatError(f"{source}: JSON nested deeper than {max_depth} levels")
    return value


def read_json_file(path: Path, *, max_bytes: int, max_depth: int = JSON_MAX_DEPTH) -> Any:
    """A JSON file (never through a symlink); ``FileNotFoundError`` passes through, any other
    problem is a ``StateFormatError``."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise StateFormatError(f"{path}: cannot read: {exc.strerror}") from exc
    try:
        with open(fd, "rb") as handle:
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise StateFormatError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_json(data, str(path), max_bytes=max_bytes, max_depth=max_depth)


def typed(value: object, kind: type | tuple[type, ...], source: str) -> Any:
    """``value`` if it is of ``kind`` (a bool never passes for a number), else an error."""
    numeric = kind in (int, float, (int, float))
    if not isinstance(value, kind) or (numeric and isinstance(value, bool)):
        name = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise StateFormatError(f"{source}: expected {name}, got {type(value).__name__}")
    return value


def _depth(value: object) -> int:
    """Nesting depth, computed without recursion (the value may be hostile)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((v, level + 1) for v in item)
    return deepest
