"""Durability: small files replaced through a fsynced temporary file and a rename (a crash
leaves the old content or the new, never a mix), and the flushes the tree layer makes before it
renames anything into the served tree (``fsync_files``: many files flushed at once, in
parallel).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mirror.errors import LocalStoreError

FLUSH_WORKERS = 8


def fsync_files(paths: Sequence[Path]) -> None:
    """fsync many files written earlier, in parallel: the filesystem commits concurrent fsyncs
    together (ext4's journal), so on this project's build machine 1,200 small files took
    0.17 s in 8 threads and 0.75 s one after the other. Only these files: ``syncfs(2)`` would
    be faster still, but on a shared host it waits for every other program's dirty data.
    Raises ``LocalStoreError`` naming the first file that could not be flushed."""
    if len(paths) <= 1:
        for path in paths:
            _fsync_named(path)
        return
    with ThreadPoolExecutor(min(FLUSH_WORKERS, len(paths))) as pool:
        for _ in pool.map(_fsync_named, paths):
            pass


def _fsync_named(path: Path) -> None:
    try:
        fsync_file(path)
    except OSError as exc:
        raise LocalStoreError(f"{path}: cannot flush to disk: {exc.strerror}") from exc


def fsync_file(path: Path) -> None:
    """Flush one file written earlier (by a thread or a run that did not fsync it)."""
    _fsync_opened(path, os.O_RDONLY | os.O_NOFOLLOW)


def fsync_dir(path: Path) -> None:
    _fsync_opened(path, os.O_RDONLY | os.O_DIRECTORY)


def _fsync_opened(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, tmp_dir: Path | None = None) -> None:
    """Write ``data`` to ``path`` via a fsynced temp file and a rename; fsync the directory."""
    tmp_parent = tmp_dir or path.parent
    tmp = tmp_parent / f".tmp-{os.getpid()}-{time.monotonic_ns()}-{path.name}"
    try:
        tmp_parent.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):  # read-only media refuse even this
            tmp.unlink(missing_ok=True)
        raise LocalStoreError(f"{path}: cannot write: {exc.strerror or exc}") from exc
