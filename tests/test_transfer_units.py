"""Unit tests of the transfer formats: member names, toc.json, sizes, ``--since``, the end
record. No server, no tree sync: each format is written and read back, or fed hostile input."""

from __future__ import annotations

import copy
import hashlib
import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mirror.errors import ConfigError, IntegrityError, UnsafePathError
from mirror.store import FileRecord, Manifest
from mirror.tarinfo import MAX_TAR_HEADER_BYTES
from mirror.transfer import parse_since, parse_size
from mirror.transfer.archive import archive_compression, check_end_record, end_record
from mirror.transfer.members import (
    ARCHIVE_END,
    Member,
    MemberKind,
    accept_member,
    classify_member,
    manifest_member,
    open_stream,
    release_member,
)
from mirror.transfer.toc import TOC_NAME, Entry, Toc, TocRelease, is_sha256, write_toc

SHA_A = hashlib.sha256(b"a").hexdigest()
SHA_B = hashlib.sha256(b"b").hexdigest()

# --- member names -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "member"),
    [
        ("release/v1.34.2/bin/linux/amd64/kubectl",
         Member("release/v1.34.2/bin/linux/amd64/kubectl", MemberKind.RELEASE_FILE,
                "v1.34.2", "bin/linux/amd64/kubectl")),
        ("release/v1.35.0-rc.1/SHA256SUMS",
         Member("release/v1.35.0-rc.1/SHA256SUMS", MemberKind.RELEASE_FILE,
                "v1.35.0-rc.1", "SHA256SUMS")),
        (".k8s-mirror/manifests/v1.34.2.json",
         Member(".k8s-mirror/manifests/v1.34.2.json", MemberKind.MANIFEST, "v1.34.2")),
        ("release/stable.txt", Member("release/stable.txt", MemberKind.MARKER, relpath="stable")),
        ("release/latest-1.34.txt",
         Member("release/latest-1.34.txt", MemberKind.MARKER, relpath="latest-1.34")),
        ("sigstore/trusted_root.json",
         Member("sigstore/trusted_root.json", MemberKind.TRUST_ROOT)),
        (".k8s-mirror/archive-end.json", Member(ARCHIVE_END, MemberKind.ARCHIVE_END)),
    ],
)  # fmt: skip
def test_names_a_tree_holds_are_classified(name: str, member: Member) -> None:
    assert classify_member(name) == member


def test_member_names_round_trip_through_their_builders() -> None:
    assert classify_member(manifest_member("v1.34.2")).kind is MemberKind.MANIFEST
    name = release_member("v1.34.2", "bin/linux/amd64/kubectl")
    assert classify_member(name).relpath == "bin/linux/amd64/kubectl"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("/etc/passwd", "absolute"),
        ("release/v1.34.2/../../etc/passwd", "'..'"),
        ("release/v1.34.2/.hidden", "starts with '.'"),
        (".k8s-mirror/lock", "starts with '.'"),
        (".k8s-mirror/staging/v1.34.2/kubectl", "starts with '.'"),
        (".k8s-mirror/manifests/evil.json", "only state a set carries"),
        (".k8s-mirror/manifests/v1.34.2.txt", "only state a set carries"),
        ("release/v1.34.2", "not a file a mirror tree carries"),
        ("release/notaversion/kubectl", "not a file a mirror tree carries"),
        ("release/evil.txt", "not a file a mirror tree carries"),
        ("sigstore/other.json", "not a file a mirror tree carries"),
        ("evil.sh", "not a file a mirror tree carries"),
        ("release/v1.34.2/a\x00b", ""),
        ("release/v1.34.2/a\\b", ""),
        ("release/v1.34.2/a\nb", ""),
    ],
)
def test_names_a_tree_cannot_hold_are_refused(name: str, reason: str) -> None:
    with pytest.raises(UnsafePathError) as caught:
        classify_member(name)
    assert reason in str(caught.value)


def tar_member(name: str, kind: bytes, **fields: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in fields.items():
        setattr(info, key, value)
    return info


@pytest.mark.parametrize(
    ("info", "what"),
    [
        (tar_member("release/v1.34.2/k", tarfile.SYMTYPE, linkname="/etc"), "symbolic link"),
        (tar_member("release/v1.34.2/k", tarfile.LNKTYPE, linkname="x"), "hard link"),
        (tar_member("release/v1.34.2/k", tarfile.DIRTYPE), "directory"),
        (tar_member("release/v1.34.2/k", tarfile.CHRTYPE), "device or fifo"),
        (tar_member("release/v1.34.2/k", tarfile.BLKTYPE), "device or fifo"),
        (tar_member("release/v1.34.2/k", tarfile.FIFOTYPE), "device or fifo"),
        (tar_member("release/v1.34.2/k", tarfile.GNUTYPE_SPARSE, sparse=[(0, 1)]), "sparse file"),
        (tar_member("release/v1.34.2/k", b"Z"), "member of type b'Z'"),
    ],
)
def test_only_regular_files_are_accepted(info: tarfile.TarInfo, what: str) -> None:
    with pytest.raises(UnsafePathError) as caught:
        accept_member(info, Path("set"))
    assert str(caught.value) == f"set: member {info.name!r} is a {what}, not a regular file"


def test_accepted_member_errors_name_the_source() -> None:
    assert accept_member(tar_member("release/stable.txt", tarfile.REGTYPE), Path("s")).kind == (
        MemberKind.MARKER
    )
    with pytest.raises(UnsafePathError, match=r"^s: member 'evil.sh': not a file"):
        accept_member(tar_member("evil.sh", tarfile.REGTYPE), Path("s"))


def pax_tar(path: Path, header_bytes: int) -> None:
    """A tar whose first member carries a pax header of about ``header_bytes``."""
    info = tarfile.TarInfo("release/v1.34.2/kubectl")
    info.size = 4
    info.pax_headers = {"comment": "x" * header_bytes}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b"data"))


def test_small_extended_headers_are_read(tmp_path: Path) -> None:
    pax_tar(tmp_path / "ok.tar", 1000)
    with open_stream(tmp_path / "ok.tar") as tar:
        assert [m.name for m in tar] == ["release/v1.34.2/kubectl"]


def test_large_extended_headers_are_refused_before_they_are_buffered(tmp_path: Path) -> None:
    pax_tar(tmp_path / "big.tar", MAX_TAR_HEADER_BYTES + 1)
    with (
        pytest.raises(tarfile.HeaderError, match="extended header of"),
        open_stream(tmp_path / "big.tar") as tar,
    ):
        list(tar)


# --- toc.json -----------------------------------------------------------------------------------


def manifest_json(version: str, files: dict[str, bytes]) -> bytes:
    records = {
        rel: FileRecord(len(data), hashlib.sha256(data).hexdigest()) for rel, data in files.items()
    }
    return Manifest(version, records, 1.0).to_json().encode()


def write_sample_toc(directory: Path) -> dict[str, Any]:
    write_toc(
        directory,
        since={"mode": "toc", "from": "earlier", "time": None},
        stream_bytes=20480,
        parts=[Entry("part-0001.tar", 10240, SHA_A), Entry("part-0002.tar", 10240, SHA_B)],
        files=[
            Entry(".k8s-mirror/manifests/v1.34.2.json", 300, SHA_A),
            Entry("release/v1.34.2/a", 1, SHA_A),
            Entry("release/v1.34.2/sub/b", 1, SHA_B),
            Entry("release/stable.txt", 7, SHA_B),
        ],
        releases={
            "v1.34.2": TocRelease(
                carried=2,
                requires={"c": SHA_B},
                manifest=manifest_json("v1.34.2", {"a": b"a", "sub/b": b"b", "c": b"b"}),
            )
        },
        markers={"stable": "v1.34.2"},
        state={"v1.34.2": {"a": SHA_A, "c": SHA_B, "sub/b": SHA_B}},
    )
    document: dict[str, Any] = json.loads((directory / TOC_NAME).read_text())
    return document


def test_toc_round_trip(tmp_path: Path) -> None:
    document = write_sample_toc(tmp_path)
    assert document["incremental"] is True
    assert document["stream"]["size"] == 20480
    assert document["releases"]["v1.34.2"]["requires"] == {"c": SHA_B}
    toc = Toc.load(tmp_path / TOC_NAME)
    assert toc.parts == [Entry("part-0001.tar", 10240, SHA_A), Entry("part-0002.tar", 10240, SHA_B)]
    assert [f.path for f in toc.files] == [
        ".k8s-mirror/manifests/v1.34.2.json", "release/v1.34.2/a", "release/v1.34.2/sub/b",
        "release/stable.txt",
    ]  # fmt: skip
    assert set(toc.manifests["v1.34.2"].files) == {"a", "c", "sub/b"}
    assert toc.markers == {"stable": "v1.34.2"}
    assert toc.release_files() == {
        "v1.34.2": {
            "a": Entry("release/v1.34.2/a", 1, SHA_A),
            "sub/b": Entry("release/v1.34.2/sub/b", 1, SHA_B),
        }
    }
    # The recorded state is what the next --since compares against.
    since = parse_since(str(tmp_path))
    assert since.state == document["state"] and since.timestamp is None


Edit = Callable[[dict[str, Any]], object]


def set_key(path: tuple[Any, ...], value: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        target = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return edit


def drop_key(key: str) -> Edit:
    return lambda doc: doc.pop(key)


MANIFEST = ("releases", "v1.34.2", "manifest")


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (set_key(("kind",), "something-else"), "not a k8s-mirror transfer set"),
        (drop_key("kind"), "not a k8s-mirror transfer set"),
        (set_key(("format",), 2), "unknown format 2"),
        (set_key(("parts",), {}), "parts and files must be lists"),
        (drop_key("files"), "parts and files must be lists"),
        (set_key(("releases",), []), "releases and markers must be objects"),
        (drop_key("markers"), "releases and markers must be objects"),
        (set_key(("parts", 0, "size"), -1), "bad entry"),
        (set_key(("parts", 0, "size"), True), "bad entry"),
        (set_key(("parts", 0, "size"), "10"), "bad entry"),
        (set_key(("parts", 0, "sha256"), SHA_A.upper()), "bad entry"),
        (set_key(("parts", 0, "sha256"), SHA_A[:-1]), "bad entry"),
        (set_key(("parts", 0), ["part-0001.tar"]), "bad entry"),
        (set_key(("parts", 0), {"size": 1, "sha256": SHA_A}), "bad entry"),
        (set_key(("files", 1, "path"), 7), "bad entry"),
        (set_key(("parts", 0, "name"), "part-0002.tar"), "part 1 is named 'part-0002.tar'"),
        (set_key(("parts", 1, "name"), "../etc/passwd"), "part 2 is named '../etc/passwd'"),
        (set_key(("files", 2, "path"), "release/v1.34.2/a"), "a file is listed twice"),
        (set_key(("releases", "1.34"), {}), "bad release entry '1.34'"),
        (set_key(("releases", "v1.34.2"), "x"), "bad release entry 'v1.34.2'"),
        (set_key((*MANIFEST, "version"), "v1.33.0"), "manifest of 'v1.33.0', expected v1.34.2"),
        (set_key((*MANIFEST, "format"), 9), "unreadable manifest"),
        (set_key(MANIFEST, None), "unreadable manifest"),
        (set_key((*MANIFEST, "files", "../x"), {"size": 1, "sha256": SHA_A}), "'..'"),
        (set_key(("markers", "evil"), "v1.34.2"), "bad marker 'evil'"),
        (set_key(("markers", "stable"), 5), "bad marker 'stable'"),
    ],
)
def test_every_malformed_toc_is_refused(tmp_path: Path, edit: Edit, problem: str) -> None:
    document = write_sample_toc(tmp_path)
    broken = copy.deepcopy(document)
    edit(broken)
    (tmp_path / TOC_NAME).write_text(json.dumps(broken))
    with pytest.raises(IntegrityError) as caught:
        Toc.load(tmp_path / TOC_NAME)
    assert problem in str(caught.value)
    assert str(tmp_path / TOC_NAME) in str(caught.value)


def test_toc_marker_that_names_no_version_is_refused(tmp_path: Path) -> None:
    document = write_sample_toc(tmp_path)
    document["markers"]["stable"] = "../../etc"
    (tmp_path / TOC_NAME).write_text(json.dumps(document))
    with pytest.raises(UnsafePathError, match=r"marker stable\.txt: expected a bare version"):
        Toc.load(tmp_path / TOC_NAME)


def test_toc_that_is_not_json_or_too_large_is_refused(tmp_path: Path) -> None:
    path = tmp_path / TOC_NAME
    path.write_text("{not json")
    with pytest.raises(IntegrityError, match="malformed toc: not JSON"):
        Toc.load(path)
    path.write_bytes(b" " * ((16 << 20) + 1))
    with pytest.raises(IntegrityError, match="malformed toc: implausibly large"):
        Toc.load(path)


def test_missing_toc_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="import"):
        Toc.load(tmp_path / TOC_NAME)


def test_toc_listing_an_unsafe_file_is_refused_when_its_files_are_used(tmp_path: Path) -> None:
    document = write_sample_toc(tmp_path)
    document["files"][1]["path"] = "release/v1.34.2/../../x"
    (tmp_path / TOC_NAME).write_text(json.dumps(document))
    with pytest.raises(UnsafePathError, match=r"^toc.json: "):
        Toc.load(tmp_path / TOC_NAME).release_files()


@pytest.mark.parametrize(
    ("value", "ok"),
    [(SHA_A, True), (SHA_A.upper(), False), (SHA_A + "0", False), ("", False), (None, False),
     (1111, False)],
)  # fmt: skip
def test_sha256_values(value: object, ok: bool) -> None:
    assert is_sha256(value) is ok


# --- sizes, --since, archive names --------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "size_bytes"),
    [("1024", 1024), ("1K", 1024), ("4GiB", 4 << 30), ("4gb", 4 << 30), (" 2T ", 2 << 40),
     ("16k", 16 << 10)],
)  # fmt: skip
def test_sizes(text: str, size_bytes: int) -> None:
    assert parse_size(text) == size_bytes


@pytest.mark.parametrize("text", ["1023", "0", "4 G", "G", "4P", "4Kb2", "0x400"])
def test_bad_sizes_name_the_flag(text: str) -> None:
    with pytest.raises(ConfigError, match=r"^--max-part-size: "):
        parse_size(text)


def test_since_a_run_report_takes_its_start_time(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"started_at": "2025-06-01T00:00:00Z", "exit_code": 0}))
    since = parse_since(str(report))
    assert since.timestamp == 1748736000.0 and since.state is None
    assert since.to_json() == {"mode": "time", "from": str(report), "time": "2025-06-01T00:00:00Z"}


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("{not json", "unreadable"),
        (json.dumps({"some": "thing"}), "neither a transfer set's toc.json nor a run report"),
        (json.dumps({"kind": "k8s-mirror-transfer-set"}), "toc.json without a usable state"),
        (json.dumps({"kind": "k8s-mirror-transfer-set", "state": {"v1.34.2": {"a": "x"}}}),
         "toc.json without a usable state"),
        (json.dumps({"started_at": "yesterday"}), "not a file, nor an ISO date"),
    ],
)  # fmt: skip
def test_since_files_that_are_no_baseline_are_refused(
    tmp_path: Path, body: str, problem: str
) -> None:
    path = tmp_path / "since.json"
    path.write_text(body)
    with pytest.raises(ConfigError, match="--since") as caught:
        parse_since(str(path))
    assert problem in str(caught.value)


def test_since_a_set_directory_or_its_toc(tmp_path: Path) -> None:
    write_sample_toc(tmp_path)
    by_dir, by_file = parse_since(str(tmp_path)), parse_since(str(tmp_path / TOC_NAME))
    assert by_dir == by_file and by_dir.label == str(tmp_path / TOC_NAME)
    assert by_dir.to_json()["mode"] == "toc"


@pytest.mark.parametrize(
    ("name", "compression"),
    [("k.tar", ""), ("K.TAR.GZ", "gz"), ("k.tgz", "gz"), ("k.tar.xz", "xz"), ("k.txz", "xz")],
)
def test_archive_compression_follows_the_suffix(name: str, compression: str) -> None:
    assert archive_compression(Path(name)) == compression


@pytest.mark.parametrize("name", ["k.zip", ".tar", "k.tar.bz2", "k"])
def test_unknown_archive_suffixes_are_refused(name: str) -> None:
    with pytest.raises(ConfigError, match="--archive"):
        archive_compression(Path(name))


# --- the archive's end record -------------------------------------------------------------------


def test_end_record_round_trip() -> None:
    members = [Entry("release/stable.txt", 7, SHA_A), Entry("sigstore/trusted_root.json", 9, SHA_B)]
    read = {"release/stable.txt": (7, SHA_A), "sigstore/trusted_root.json": (9, SHA_B)}
    check_end_record(Path("a.tar"), end_record(members), read)


@pytest.mark.parametrize(
    ("record", "read", "problem"),
    [
        (None, {}, "a.tar: no end record"),
        (b"[]", {}, "a.tar: unreadable end record"),
        (b"{}", {}, "a.tar: unreadable end record"),
        (end_record([Entry("x", 1, SHA_A)]), {}, "archive incomplete: 1 listed member(s) missing"),
        (end_record([]), {"x": (1, SHA_A)}, "0 listed member(s) missing, e.g. x"),
        (end_record([Entry("x", 1, SHA_A)]), {"x": (1, SHA_B)}, "x: differs from the archive's"),
        (end_record([Entry("x", 1, SHA_A)]), {"x": (2, SHA_A)}, "x: differs from the archive's"),
    ],
)  # fmt: skip
def test_end_record_mismatches_are_refused(
    record: bytes | None, read: dict[str, tuple[int, str]], problem: str
) -> None:
    with pytest.raises(IntegrityError) as caught:
        check_end_record(Path("a.tar"), record, read)
    assert problem in str(caught.value)
