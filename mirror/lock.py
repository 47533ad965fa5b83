"""The one-writer rule: an exclusive ``flock`` held for a whole run.

The kernel drops the lock when the process dies, so a killed run never leaves a stale lock;
the file records who holds it, for the "another run holds the lock" message.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mirror.errors import LocalStoreError, LockHeldError


@contextmanager
def exclusive_lock(path: Path, *, owner: str, wait_s: float = 0.0) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing, never through a symlink);
    ``LockHeldError`` naming ``owner`` (the tree) after ``wait_s``."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        handle = os.fdopen(fd, "r+")
    except OSError as exc:
        raise LocalStoreError(f"{path}: {exc.strerror}") from exc
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise LocalStoreError(f"{handle.name}: {exc.strerror}") from exc
                if time.monotonic() >= deadline:
                    handle.seek(0)
                    holder = handle.read().strip() or "another process"
                    raise LockHeldError(
                        f"{owner}: another k8s-mirror run holds the lock ({holder})",
                        hint="wait for it, or pass --wait SECONDS",
                    ) from None
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
        handle.seek(0)
        handle.truncate()
        handle.write(
            f"pid {os.getpid()} since {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\n"
        )
        handle.flush()
        yield
    finally:
        handle.close()
