"""Which file a request may reach: the request target split, percent-decoded once per
segment and checked, then opened inside the root without following anything out of it or
into a hidden place (see the package docstring for the rules).
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Final, TypeVar
from urllib.parse import unquote_to_bytes

from aiohttp import web

from mirror.layout import STATE_DIR_NAME

_T = TypeVar("_T")


class Reject(Exception):
    """A request that gets a short error page instead of content."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


@dataclass(frozen=True)
class FileTarget:
    file: IO[bytes]
    st: os.stat_result


@dataclass(frozen=True)
class DirTarget:
    path: Path


Target = FileTarget | DirTarget


def valid_component(name: str) -> bool:
    """Whether one decoded path segment may name something we serve."""
    if not name or name.startswith(".") or name == STATE_DIR_NAME:
        # Covers "", ".", "..", dotfiles, dot-directories and the state dir.
        return False
    if "/" in name or "\\" in name:
        # An encoded slash or a backslash would smuggle a separator into one segment.
        return False
    # NUL cannot reach the filesystem; other control characters have no business in a URL path.
    return all(" " <= ch != "\x7f" for ch in name)


def request_components(request: web.BaseRequest) -> tuple[tuple[str, ...], bool]:
    """Validated path components of the request, and whether the path ended in ``/``.

    Works on the raw request target rather than ``request.path``: aiohttp's decoded path
    turns ``%2F`` into a separator and ``%2e%2e`` into ``..``, which blurs segment boundaries.
    Splitting first and decoding each segment once keeps them exact.
    """
    raw = request.raw_path
    if not raw.startswith("/"):
        # absolute-form target (RFC 9112 section 3.2.2): use the path yarl parsed out of it.
        raw = request.rel_url.raw_path
        if not raw.startswith("/"):
            raise Reject(404, "request target has no absolute path")
    raw = raw.split("?", 1)[0].split("#", 1)[0]
    segments = raw[1:].split("/")
    trailing_slash = len(segments) > 1 and segments[-1] == ""
    if trailing_slash or segments == [""]:
        segments.pop()
    components: list[str] = []
    for segment in segments:
        try:
            name = unquote_to_bytes(segment).decode("utf-8")
        except UnicodeDecodeError:
            raise Reject(404, "path is not UTF-8") from None
        if not valid_component(name):
            raise Reject(404, "hidden or invalid path component")
        components.append(name)
    return tuple(components), trailing_slash


def is_hidden_rel(rel: Path) -> bool:
    return any(not valid_component(part) for part in rel.parts)


def resolve_in_root(root: Path, candidate: Path) -> Path:
    """The real path of ``candidate``, relative to ``root``; refuses escapes and hidden targets.

    ``root`` must already be resolved. Symlinks are followed (they may point anywhere inside
    the root), then the result must still lie inside the root and be visible.
    """
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        # Missing, dangling symlink, or a symlink loop (RuntimeError on Python 3.11/3.12).
        raise Reject(404, "no such file") from None
    try:
        rel = real.relative_to(root)
    except ValueError:
        raise Reject(403, f"symlink resolves outside the root: {real}") from None
    if is_hidden_rel(rel):
        raise Reject(404, "symlink resolves into a hidden place")
    return rel


def open_in_root(root: Path, components: tuple[str, ...]) -> Target:
    """Open what ``components`` names under ``root``; runs in a worker thread.

    After resolving, every component of the *resolved* path is opened relative to its parent
    with ``O_NOFOLLOW``. The resolved path contains no symlinks, so this is free for honest
    trees, and a component swapped for a symlink between the check and the open fails (ELOOP)
    instead of escaping.
    """
    rel = resolve_in_root(root, root.joinpath(*components))
    parts = rel.parts
    follow_no: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    fd = -1
    dir_fd = os.open(root, os.O_RDONLY | os.O_CLOEXEC | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, follow_no | os.O_DIRECTORY, dir_fd=dir_fd)
            os.close(dir_fd)
            dir_fd = next_fd
        if parts:
            # O_NONBLOCK: opening a FIFO for reading would otherwise block this thread until a
            # writer appears. It changes nothing for regular files, and is cleared below.
            fd = os.open(parts[-1], follow_no | os.O_NONBLOCK, dir_fd=dir_fd)
        else:
            fd, dir_fd = dir_fd, -1
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            return DirTarget(root.joinpath(*parts))
        if not stat.S_ISREG(st.st_mode):
            raise Reject(404, "not a regular file")
        os.set_blocking(fd, True)
        file = os.fdopen(fd, "rb")
        fd = -1  # owned by `file` now
        return FileTarget(file, st)
    except PermissionError:
        raise Reject(403, "permission denied") from None
    except OSError as exc:
        # ELOOP (a component became a symlink), ENOENT (removed meanwhile), ENOTDIR, ...
        raise Reject(404, f"cannot open: {errno.errorcode.get(exc.errno or 0, exc)}") from None
    finally:
        if fd >= 0:
            os.close(fd)
        if dir_fd >= 0:
            os.close(dir_fd)


def close_target(target: Target) -> None:
    if isinstance(target, FileTarget):
        target.file.close()
