"""Durable small writes: a file replaced through a fsynced temporary file and a rename, and the
directory fsynced after, so a crash leaves either the old content or the new, never a mix.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from mirror.errors import LocalStoreError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
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
