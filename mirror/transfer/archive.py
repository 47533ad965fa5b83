"""``fetch --archive``: the whole stream in one (optionally compressed) file, and its end record.

The fetch syncs into a private temporary tree beside the archive; ``write_archive`` writes the
stream of that tree (the same stream an export cuts into parts) to a ``.partial`` file and
renames it onto the archive only once complete. The stream's last member, the end record
(``.k8s-mirror/archive-end.json``), lists every member before it with size and sha256: a tar
stream cut between members still reads as a valid, smaller archive, so import refuses an
archive whose members disagree with its end record, or that has none.
"""

from __future__ import annotations

import gzip
import json
import logging
import lzma
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from mirror.errors import ConfigError, IntegrityError, LocalStoreError
from mirror.statefile import StateFormatError, parse_json
from mirror.store import fsync_dir
from mirror.transfer.export import Exporter, ExportResult, check_root
from mirror.transfer.members import ARCHIVE_END
from mirror.transfer.tarstream import TarWriter, write_stream
from mirror.transfer.toc import Entry

log = logging.getLogger(__name__)

ARCHIVE_SUFFIXES = {".tar": "", ".tar.gz": "gz", ".tgz": "gz", ".tar.xz": "xz", ".txz": "xz"}
END_RECORD_FORMAT = 1
END_RECORD_MAX_BYTES = 64 << 20
_FETCH_TMP_TAG = ".k8s-mirror-fetch-"


def archive_compression(path: Path) -> str:
    """Compression of a ``fetch --archive`` file by its suffix: ``""``, ``gz`` or ``xz``."""
    name = path.name.lower()
    for suffix, compression in sorted(ARCHIVE_SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix) and len(name) > len(suffix):
            return compression
    raise ConfigError(
        f"{path.name}: unknown archive type; use .tar, .tar.gz (.tgz) or .tar.xz (.txz)",
        source="--archive",
    )


@contextmanager
def temporary_tree(archive: Path) -> Iterator[Path]:
    """A private directory beside ``archive`` (same filesystem, so the finished archive is
    renamed into place), removed on the way out whatever happens. Leftovers of killed runs
    for the same archive name are removed first."""
    parent = archive.parent
    if not parent.is_dir():
        raise ConfigError(f"{parent}: no such directory", source="--archive")
    prefix = f".{archive.name}{_FETCH_TMP_TAG}"
    for stale in parent.glob(prefix + "*"):
        pid_text = stale.name[len(prefix) :].split("-", 1)[0]
        if pid_text.isdigit() and not _pid_alive(int(pid_text)):
            shutil.rmtree(stale, ignore_errors=True)
    try:
        work = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=parent))
    except OSError as exc:
        raise LocalStoreError(f"{parent}: cannot create a work directory: {exc.strerror}") from exc
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def end_record(members: Sequence[Entry]) -> bytes:
    return json.dumps(
        {"format": END_RECORD_FORMAT, "members": [e.to_json() for e in members]}
    ).encode()


def check_end_record(
    source: Path, record: bytes | None, read: Mapping[str, tuple[int, str]]
) -> None:
    """The end record must list exactly the members read (``{name: (size, sha256)}``), with
    their sizes and digests."""
    if record is None:
        raise IntegrityError(
            f"{source}: no end record: the archive is truncated or not from "
            "k8s-mirror fetch --archive"
        )
    try:
        listed = {
            item["path"]: (int(item["size"]), str(item["sha256"]))
            for item in parse_json(record, "end record", max_bytes=END_RECORD_MAX_BYTES)["members"]
        }
    except (StateFormatError, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{source}: unreadable end record: {exc}") from None
    if set(listed) != set(read):
        missing = sorted(set(listed) - set(read))
        raise IntegrityError(
            f"{source}: archive incomplete: {len(missing)} listed member(s) missing, "
            f"e.g. {missing[0] if missing else sorted(set(read) - set(listed))[0]}"
        )
    for name, digests in read.items():
        if listed[name] != digests:
            raise IntegrityError(f"{name}: differs from the archive's end record")


def _compressor(raw: IO[bytes], compression: str) -> gzip.GzipFile | lzma.LZMAFile | None:
    if compression == "gz":
        # Level 6 as gzip(1) uses: GzipFile's default 9 is far slower for ~1 % less.
        return gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6)
    if compression == "xz":
        return lzma.LZMAFile(raw, "wb")
    return None


def write_archive(root: Path, archive: Path, work: Path) -> ExportResult:
    """The whole tree at ``root`` as one stream in ``archive`` (compressed by its suffix),
    written under ``work`` and renamed into place only once complete."""
    compression = archive_compression(archive)
    store = check_root(root)
    partial = work / f"{archive.name}.partial"
    log.info("writing %s", archive)
    with store.lock():
        exporter = Exporter(store, (), None)
        exporter.make_plan()

        def members(writer: TarWriter) -> None:
            exporter.write(writer)
            writer.add_bytes(ARCHIVE_END, end_record(writer.files), time.time())

        try:
            with open(partial, "xb") as raw:
                compressor = _compressor(raw, compression)
                try:
                    # Compression and writing run on the worker, reading and hashing here.
                    files = write_stream(compressor or raw, members)
                finally:
                    # Also on errors: an unclosed compressor would write to a closed file later.
                    if compressor is not None:
                        compressor.close()
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(partial, archive)
            fsync_dir(archive.parent)
        except OSError as exc:
            raise LocalStoreError(f"{archive}: cannot write: {exc.strerror or exc}") from exc
        finally:
            partial.unlink(missing_ok=True)
    return ExportResult(
        output=archive,
        files=len(files),
        stream_bytes=archive.stat().st_size,
        releases={r.version: (len(r.carry), 0) for r in exporter.plan},
        markers=exporter.markers,
    )
