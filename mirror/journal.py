"""The staging journal's file format: one JSON object a line, ``{"path", "record"}``, appended
as files are staged and verified, so an interrupted run's work is reused by the next. Neither
the journal nor the staged files are fsynced: a crash may lose or cut them, and the next run
re-hashes every staged file before it trusts a line (the tree layer flushes before it renames
anything into the tree).

The journal is untrusted input: a line cut off by a crash, bytes that are not UTF-8, a record
of the wrong shape are skipped (that file is then fetched again), never fatal. A record only
says what an earlier run verified; ``plan.plan_release`` re-hashes the staged file before it
is promoted. Where the journal lives and which staged files still match it is ``store.py``'s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

from mirror.catalog import RelPath
from mirror.errors import LocalStoreError, MirrorError
from mirror.manifest import FileRecord
from mirror.statefile import StateFormatError, parse_json

JOURNAL_MAX_BYTES = 64 << 20
JOURNAL_LINE_MAX_BYTES = 64 << 10


def read_journal(path: Path) -> dict[str, FileRecord]:
    """Every well-formed record of the journal at ``path`` (a later line wins)."""
    records: dict[str, FileRecord] = {}
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with open(fd, "rb") as handle:
            data = handle.read(JOURNAL_MAX_BYTES)
    except FileNotFoundError:
        return records
    except OSError as exc:
        raise LocalStoreError(f"{path}: {exc.strerror}") from exc
    for line in data.split(b"\n"):
        try:
            entry = parse_json(line, str(path), max_bytes=JOURNAL_LINE_MAX_BYTES, max_depth=3)
            if isinstance(entry, dict):
                records[RelPath(entry["path"])] = FileRecord.from_json(entry["record"])
        except (StateFormatError, MirrorError, KeyError, TypeError):
            continue
    return records


def append_journal(path: Path, records: Mapping[str, FileRecord]) -> None:
    """Append ``records`` (not fsynced: see the module's docstring)."""
    lines = "".join(
        json.dumps({"path": p, "record": r.to_json()}) + "\n" for p, r in records.items()
    )
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
        with open(fd, "r+b") as handle:
            size = os.fstat(fd).st_size
            if size:
                # A crash may have cut the last line: end it, or this record would be glued
                # to the garbage and lost.
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    lines = "\n" + lines
            handle.write(lines.encode())
    except OSError as exc:
        raise LocalStoreError(f"{path}: cannot write: {exc.strerror}") from exc
