"""Unit tests of the transfer stream's blocking machinery: the tar writer (read back by Python's
``tarfile`` and by GNU ``tar``), cutting into parts and reading them back, and the import's
staging area. No server: real files in a temporary directory."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from mirror.digest import digest_bytes
from mirror.errors import ConfigError, IntegrityError, LocalStoreError
from mirror.store import FileRecord, Manifest, Store
from mirror.transfer.members import classify_member, open_stream
from mirror.transfer.parts import PartSink, PartsReader
from mirror.transfer.plan import plan_import
from mirror.transfer.staging import Staging
from mirror.transfer.tarstream import QUEUE_DEPTH, TarWriter, write_stream
from mirror.transfer.toc import Entry

BLOCK = tarfile.BLOCKSIZE


class Collect:
    """A sink that keeps what it is given."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()

    def write(self, data: bytes, /) -> None:
        self.buffer.write(data)


def record_of(data: bytes) -> FileRecord:
    return FileRecord(len(data), hashlib.sha256(data).hexdigest())


def sample_files(tmp_path: Path) -> dict[str, bytes]:
    """Sizes around the block size and one of several MiB (more than one read block)."""
    files = {
        "release/v1.34.2/empty": b"",
        "release/v1.34.2/one": b"x",
        "release/v1.34.2/block": bytes(range(256)) * 2,
        "release/v1.34.2/bin/linux/amd64/kubectl": os.urandom((3 << 20) + 7),
    }
    for name, data in files.items():
        path = tmp_path / "src" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def write_sample_stream(tmp_path: Path) -> tuple[bytes, list[Entry], dict[str, bytes]]:
    files = sample_files(tmp_path)
    sink = Collect()

    def members(writer: TarWriter) -> None:
        writer.add_bytes("sigstore/trusted_root.json", b'{"root": 1}', 1_700_000_000)
        for name, data in files.items():
            writer.add_file(name, tmp_path / "src" / name, record_of(data))

    entries = write_stream(sink, members)
    files = {"sigstore/trusted_root.json": b'{"root": 1}', **files}
    return sink.buffer.getvalue(), entries, files


def test_stream_reads_back_with_tarfile(tmp_path: Path) -> None:
    stream, entries, files = write_sample_stream(tmp_path)
    assert len(stream) % tarfile.RECORDSIZE == 0
    assert entries == [
        Entry(name, len(data), hashlib.sha256(data).hexdigest()) for name, data in files.items()
    ]
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == list(files)
        for info in members:
            assert info.isreg() and info.mode == 0o644 and info.uname == ""
            handle = tar.extractfile(info)
            assert handle is not None and handle.read() == files[info.name]
    assert members[0].mtime == 1_700_000_000


def test_stream_reads_back_with_gnu_tar(tmp_path: Path) -> None:
    stream, _, files = write_sample_stream(tmp_path)
    (tmp_path / "stream.tar").write_bytes(stream)
    listing = subprocess.run(
        ["tar", "-tf", str(tmp_path / "stream.tar")], capture_output=True, text=True, check=True
    )
    assert listing.stdout.splitlines() == list(files)
    assert listing.stderr == ""
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xf", str(tmp_path / "stream.tar"), "-C", str(out)], check=True)
    for name, data in files.items():
        assert (out / name).read_bytes() == data


def test_long_names_survive_as_pax_headers(tmp_path: Path) -> None:
    name = "release/v1.34.2/" + "/".join(["d" * 60] * 5) + "/kubectl"
    sink = Collect()
    write_stream(sink, lambda writer: writer.add_bytes(name, b"data", 0))
    with tarfile.open(fileobj=io.BytesIO(sink.buffer.getvalue())) as tar:
        assert tar.getnames() == [name]


def test_writer_refuses_a_file_that_is_not_what_its_manifest_says(tmp_path: Path) -> None:
    path = tmp_path / "kubectl"
    path.write_bytes(b"good data")
    writer = TarWriter(Collect())
    with pytest.raises(IntegrityError, match=r"^k: not the 4-byte file its manifest records"):
        writer.add_file("k", path, FileRecord(4, hashlib.sha256(b"good").hexdigest()))
    with pytest.raises(IntegrityError, match=r"^k: content differs from its manifest"):
        writer.add_file("k", path, record_of(b"evil data"))
    (tmp_path / "link").symlink_to(path)
    with pytest.raises(IntegrityError, match=r"^k: in the manifest but unreadable"):
        writer.add_file("k", tmp_path / "link", record_of(b"good data"))
    assert writer.files == []


def test_a_failing_sink_fails_the_stream_and_stops_the_worker(tmp_path: Path) -> None:
    class Full:
        writes = 0

        def write(self, data: bytes, /) -> None:
            self.writes += 1
            if self.writes == 3:
                raise LocalStoreError("disk full")

    sink = Full()
    files = sample_files(tmp_path)

    def members(writer: TarWriter) -> None:
        for name, data in files.items():
            writer.add_file(name, tmp_path / "src" / name, record_of(data))

    with pytest.raises(LocalStoreError, match="disk full"):
        write_stream(sink, members)
    # The worker is gone, so nothing writes after this: the caller may remove the output. At
    # most the few writes already queued ran after the failing one.
    assert not [t for t in threading.enumerate() if t.name.startswith("k8s-mirror-io")]
    assert 3 <= sink.writes <= 3 + QUEUE_DEPTH


# --- parts ------------------------------------------------------------------------------------


def cut(directory: Path, stream: bytes, max_part_bytes: int, write_bytes: int) -> PartSink:
    directory.mkdir(exist_ok=True)
    sink = PartSink(directory, max_part_bytes)
    for offset in range(0, len(stream), write_bytes):
        sink.write(stream[offset : offset + write_bytes])
    sink.close()
    return sink


@pytest.mark.parametrize(
    ("stream_bytes", "max_part_bytes", "write_bytes"),
    [
        (4096, 1024, 1024),  # parts end exactly where writes end
        (4097, 1024, 1024),  # one byte spills into a last part
        (4095, 1024, 1000),  # writes straddle every boundary
        (10_000, 1024, 10_000),  # one write spans many parts
        (1000, 4096, 7),  # all in one part
    ],
)
def test_parts_cut_at_the_size_and_read_back(
    tmp_path: Path, stream_bytes: int, max_part_bytes: int, write_bytes: int
) -> None:
    stream = os.urandom(stream_bytes)
    sink = cut(tmp_path / "set", stream, max_part_bytes, write_bytes)
    expected_parts = -(-stream_bytes // max_part_bytes)
    assert [p.path for p in sink.parts] == [
        f"part-{i:04d}.tar" for i in range(1, expected_parts + 1)
    ]
    assert sink.stream_bytes == stream_bytes
    assert (
        all(p.size == max_part_bytes for p in sink.parts[:-1])
        and 0 < sink.parts[-1].size <= max_part_bytes
    )
    for part in sink.parts:
        data = (tmp_path / "set" / part.path).read_bytes()
        assert part == Entry(part.path, len(data), hashlib.sha256(data).hexdigest())
    reader = PartsReader(tmp_path / "set", sink.parts)
    reader.check_sizes()
    with io.BufferedReader(reader, 300) as buffered:
        assert buffered.read() == stream


def test_abort_removes_every_part(tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    sink = PartSink(tmp_path / "set", 1024)
    sink.write(bytes(2500))
    sink.abort()
    assert list((tmp_path / "set").iterdir()) == []


def test_parts_are_never_overwritten(tmp_path: Path) -> None:
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / "part-0001.tar").write_bytes(b"someone else's")
    with pytest.raises(LocalStoreError, match=r"part-0001.tar: cannot create"):
        PartSink(tmp_path / "set", 1024).write(b"x")
    assert (tmp_path / "set" / "part-0001.tar").read_bytes() == b"someone else's"


def damaged_set(tmp_path: Path) -> tuple[Path, list[Entry]]:
    sink = cut(tmp_path / "set", os.urandom(3000), 1024, 512)
    return tmp_path / "set", sink.parts


def read_all(directory: Path, parts: list[Entry]) -> bytes:
    reader = PartsReader(directory, parts)
    with io.BufferedReader(reader) as buffered:
        return buffered.read()


def remove(path: Path) -> None:
    path.unlink()


def cut_last_byte(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-1])


@pytest.mark.parametrize(
    ("damage", "from_stat", "from_read"),
    [
        (remove, r"missing \(listed in toc.json\)$", "missing"),
        (cut_last_byte, "1023 bytes, toc.json says 1024", r"1023 bytes, .*: truncated$"),
    ],
)
def test_missing_or_truncated_part_is_named_before_anything_is_read(
    tmp_path: Path, damage: Callable[[Path], None], from_stat: str, from_read: str
) -> None:
    directory, parts = damaged_set(tmp_path)
    damage(directory / "part-0002.tar")
    with pytest.raises(IntegrityError, match=r"part-0002\.tar: " + from_stat):
        PartsReader(directory, parts).check_sizes()
    # Reading without the stat first finds the same, when it reaches that part.
    with pytest.raises(IntegrityError, match=r"part-0002\.tar: " + from_read):
        read_all(directory, parts)


def test_longer_part_is_named(tmp_path: Path) -> None:
    directory, parts = damaged_set(tmp_path)
    with open(directory / "part-0001.tar", "ab") as handle:
        handle.write(b"!")
    with pytest.raises(IntegrityError, match=r"part-0001\.tar: longer than the 1024 bytes"):
        read_all(directory, parts)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


def test_corrupt_part_is_named_when_its_end_is_reached(tmp_path: Path) -> None:
    directory, parts = damaged_set(tmp_path)
    flip_byte(directory / "part-0003.tar", 10)
    PartsReader(directory, parts).check_sizes()  # same size: only the digest can tell
    with pytest.raises(IntegrityError, match=r"part-0003\.tar: sha256 differs .* corrupt$"):
        read_all(directory, parts)


def test_finish_current_names_the_part_being_read(tmp_path: Path) -> None:
    """A tar error inside a part is reported as that part when the part is damaged."""
    directory, parts = damaged_set(tmp_path)
    flip_byte(directory / "part-0001.tar", -1)
    reader = PartsReader(directory, parts)
    reader.readinto(bytearray(100))
    with pytest.raises(IntegrityError, match=r"part-0001\.tar: sha256 differs"):
        reader.finish_current()


# --- staging ----------------------------------------------------------------------------------


def one_member_tar(path: Path, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    with tarfile.open(path, "w") as tar:
        tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("want_sha512", [True, False])
def test_staging_hashes_what_it_writes_on_two_threads(tmp_path: Path, want_sha512: bool) -> None:
    data = os.urandom((5 << 20) + 3)
    name = "release/v1.34.2/bin/linux/amd64/kubectl"
    one_member_tar(tmp_path / "a.tar", name, data)
    store = Store(tmp_path / "root")
    staging = Staging(store)
    staging.create()
    try:
        with open_stream(tmp_path / "a.tar") as tar:
            for info in tar:
                digests = staging.stage(tar, info, classify_member(name), want_sha512=want_sha512)
        assert digests == digest_bytes(data, sha512=want_sha512)
        staged = staging.locate("v1.34.2")("bin/linux/amd64/kubectl")
        assert staged.read_bytes() == data and staged.is_relative_to(staging.work)
        assert staging.files("v1.34.2") == {"bin/linux/amd64/kubectl": digests}
        # Files not staged are the tree's.
        assert (
            staging.locate("v1.34.2")("SHA256SUMS") == store.release_dir("v1.34.2") / "SHA256SUMS"
        )
        staging.keep_only("v1.34.2", set())
        assert staging.files("v1.34.2") == {}
    finally:
        staging.close()
    assert not staging.work.exists()


def test_staging_refuses_a_second_member_at_the_same_path(tmp_path: Path) -> None:
    name = "release/v1.34.2/kubectl"
    one_member_tar(tmp_path / "a.tar", name, b"data")
    staging = Staging(Store(tmp_path / "root"))
    staging.create()
    try:
        with open_stream(tmp_path / "a.tar") as tar:
            staging.stage(tar, next(iter(tar)), classify_member(name), want_sha512=True)
        with (
            open_stream(tmp_path / "a.tar") as tar,
            pytest.raises(IntegrityError, match="clashes with another member"),
        ):
            staging.stage(tar, next(iter(tar)), classify_member(name), want_sha512=True)
    finally:
        staging.close()


def test_staging_create_removes_what_killed_imports_left(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    stale = store.staging / "import-1-1" / "release"
    stale.mkdir(parents=True)
    other = store.staging / "v1.34.2"
    other.mkdir()
    staging = Staging(store)
    staging.create()
    try:
        assert not stale.exists() and other.exists() and staging.work.is_dir()
    finally:
        staging.close()


# --- planning an import -------------------------------------------------------------------------


def tree_with(root: Path, version: str, files: dict[str, bytes]) -> Store:
    """A tree holding ``files`` of ``version``, recorded in its manifest."""
    store = Store(root)
    store.prepare()
    for rel, data in files.items():
        path = store.release_dir(version) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    store.save_manifest(Manifest(version, {rel: record_of(d) for rel, d in files.items()}))
    return store


def carried(
    version: str, files: dict[str, bytes], sent: set[str]
) -> tuple[dict[str, Manifest], dict[str, dict[str, Entry]]]:
    manifest = Manifest(version, {rel: record_of(d) for rel, d in files.items()})
    entries = {
        rel: Entry(f"release/{version}/{rel}", len(d), hashlib.sha256(d).hexdigest())
        for rel, d in files.items()
        if rel in sent
    }
    return {version: manifest}, {version: entries}


def test_plan_stages_only_what_the_tree_lacks(tmp_path: Path) -> None:
    store = tree_with(tmp_path / "root", "v1.34.2", {"a": b"a"})
    plan = plan_import(
        store, tmp_path / "set", *carried("v1.34.2", {"a": b"a", "b": b"b"}, {"a", "b"})
    )
    release = plan.releases["v1.34.2"]
    assert release.in_root and release.needed == {"b"} and plan.files_present == 1
    assert set(release.merged.files) == {"a", "b"}


def test_plan_of_a_new_release_needs_every_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    files = {"a": b"a", "b": b"b"}
    plan = plan_import(store, tmp_path / "set", *carried("v1.35.0", files, set(files)))
    assert not plan.releases["v1.35.0"].in_root and plan.releases["v1.35.0"].needed == {"a", "b"}


def test_plan_refuses_to_replace_a_release_file(tmp_path: Path) -> None:
    store = tree_with(tmp_path / "root", "v1.34.2", {"a": b"a"})
    with pytest.raises(IntegrityError, match=r"release/v1\.34\.2/a: the set's copy differs"):
        plan_import(store, tmp_path / "set", *carried("v1.34.2", {"a": b"evil"}, {"a"}))


def test_plan_of_a_delta_onto_a_tree_without_its_base_is_a_config_error(tmp_path: Path) -> None:
    """The tree has the release but lacks a file the set expects it to have (b)."""
    store = tree_with(tmp_path / "root", "v1.34.2", {"c": b"c"})
    files = {"a": b"a", "b": b"b", "c": b"c"}
    with pytest.raises(ConfigError) as caught:
        plan_import(store, tmp_path / "set", *carried("v1.34.2", files, {"a", "c"}))
    assert "needs 1 file(s) of release/v1.34.2 that" in str(caught.value)
    assert "import the set it was made on top of first" in str(caught.value)


def test_plan_of_a_delta_of_a_release_the_tree_lacks_is_a_config_error(tmp_path: Path) -> None:
    files = {"a": b"a", "b": b"b"}
    with pytest.raises(ConfigError) as caught:
        plan_import(Store(tmp_path), tmp_path / "set", *carried("v1.34.2", files, {"a"}))
    assert "carries 1 of the 2 files of release/v1.34.2, which is not in" in str(caught.value)


def test_plan_refuses_files_outside_their_manifest(tmp_path: Path) -> None:
    manifests, entries = carried("v1.34.2", {"a": b"a"}, {"a"})
    entries["v1.34.2"]["x"] = Entry("release/v1.34.2/x", 1, hashlib.sha256(b"x").hexdigest())
    with pytest.raises(IntegrityError, match=r"release/v1\.34\.2/x: carried but not in"):
        plan_import(Store(tmp_path), tmp_path / "set", manifests, entries)
    with pytest.raises(IntegrityError, match=r"release/v1\.35\.0: carried without its manifest"):
        plan_import(Store(tmp_path), tmp_path / "set", {}, {"v1.35.0": {}})
