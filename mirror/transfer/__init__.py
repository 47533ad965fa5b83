"""Air-gap transfer: the on-media formats, writing them, and the offline side's import.

The *stream* is one POSIX (pax) tar in tree layout, regular files only: the tree's trust root,
per carried release its manifest (the only state the far side needs) and its served files,
markers last. Extracting a full stream into an empty directory gives a tree that
``k8s-mirror verify`` passes. ``fetch --archive`` writes it to one file; ``export`` cuts it into
parts and describes it in ``toc.json``. ``import`` reads either as a *source of files* into
staging, re-verifies everything offline and only then promotes it under the tree's lock.

Modules, one job each:

    members      what a member name may be; bounded tar headers
    toc          the toc.json format: entries, writing, validated loading
    tarstream    the tar writer and the worker thread behind it
    parts        cutting the stream into parts; reading parts back, each checked
    export       export planning, --since, export_set
    archive      fetch --archive: temporary tree, write_archive, the end record
    staging      an import's staging area (hashing while unpacking)
    sources      the two sources of an import: SetSource (toc) and ArchiveSource
    plan         an import planned against the target tree
    check        the trust root chosen and the offline re-verification of staged files
    promote      everything an import writes into the served tree
    importer     import_set: the phases in order

Everything here is plain blocking I/O driven by the CLI: no event loop is involved.
"""

from __future__ import annotations

from mirror.transfer.archive import archive_compression, temporary_tree, write_archive
from mirror.transfer.export import export_set, parse_since
from mirror.transfer.importer import import_set
from mirror.transfer.parts import parse_size

__all__ = [
    "archive_compression",
    "export_set",
    "import_set",
    "parse_since",
    "parse_size",
    "temporary_tree",
    "write_archive",
]
