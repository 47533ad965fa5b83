"""Reading tar archives we did not write, safely: the one place that knows tarfile's traps.

tarfile reads a pax or GNU long-name header's payload into memory before the caller sees the
member, so a tiny archive could declare gigabytes there: ``BoundedTarInfo`` refuses large ones
first. Used by import (transfer sets, archives) and by release binding (an image archive's
``manifest.json``).
"""

from __future__ import annotations

import tarfile

MAX_TAR_HEADER_BYTES = 1 << 20


class BoundedTarInfo(tarfile.TarInfo):
    """A ``TarInfo`` that refuses extended headers over ``MAX_TAR_HEADER_BYTES``."""

    def _proc_pax(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        self._refuse_large_header()
        return super()._proc_pax(tarfile)  # type: ignore[misc, no-any-return]

    def _proc_gnulong(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:
        self._refuse_large_header()
        return super()._proc_gnulong(tarfile)  # type: ignore[misc, no-any-return]

    def _refuse_large_header(self) -> None:
        if self.size > MAX_TAR_HEADER_BYTES:
            raise tarfile.HeaderError(f"extended header of {self.size} bytes; refusing")


def member_type(info: tarfile.TarInfo) -> str:
    """What a non-regular member is, for an error message."""
    if info.issym():
        return "symbolic link"
    if info.islnk():
        return "hard link"
    if info.isdir():
        return "directory"
    if info.isdev():
        return "device or fifo"
    if info.issparse():
        return "sparse file"
    return f"member of type {info.type!r}"
