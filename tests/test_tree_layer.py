"""Unit tests of the tree layer (manifest rules, Store promotion and markers) and of the run's
pure conclusion: no servers, real files in a temporary directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mirror.catalog import RelPath
from mirror.errors import LocalStoreError
from mirror.manifest import FileRecord, Manifest, companion_of, companions, promotion_order
from mirror.outcome import conclude, incomplete_releases
from mirror.report import Failure
from mirror.store import Store

KUBECTL = RelPath("bin/linux/amd64/kubectl")


def test_companions_of_signed_and_unsigned_primaries() -> None:
    assert companions(KUBECTL, signed=True) == tuple(
        RelPath(KUBECTL + s) for s in (".sha256", ".sha512", ".sig", ".cert", ".sigstore.json")
    )
    tag = RelPath("bin/linux/amd64/kube-proxy.docker_tag")
    assert companions(tag, signed=False) == (RelPath(tag + ".sha256"), RelPath(tag + ".sha512"))


@pytest.mark.parametrize(
    ("rel", "expected"),
    [
        ("bin/linux/amd64/kubectl.sig", "bin/linux/amd64/kubectl"),
        ("bin/linux/amd64/kubectl.sigstore.json", "bin/linux/amd64/kubectl"),
        ("SHA256SUMS", "SHA256SUMS"),
        ("SHA512SUMS.sha256", "SHA512SUMS"),
        ("SHA256SUMS.sig", None),  # the SUMS files are not signed upstream
        ("bin/linux/arm64/kubectl.sha256", None),  # a companion of a primary not listed
        ("bin/linux/amd64/kubectl", None),
    ],
)
def test_companion_of(rel: str, expected: str | None) -> None:
    assert companion_of(rel, ["bin/linux/amd64/kubectl"]) == expected


def test_promotion_order_puts_companions_before_primaries() -> None:
    paths = [
        KUBECTL,
        KUBECTL + ".sigstore.json",
        "bin/linux/amd64/kube-proxy.tar",
        KUBECTL + ".sig",
    ]
    order = promotion_order(paths)
    assert order.index(KUBECTL) > order.index(RelPath(KUBECTL + ".sig"))
    assert order.index(KUBECTL) > order.index(RelPath(KUBECTL + ".sigstore.json"))
    assert set(order) == set(paths)


def _staged(store: Store, version: str, files: dict[str, bytes]) -> dict[str, FileRecord]:
    records = {}
    for rel, data in files.items():
        store.stage_bytes(version, RelPath(rel), data)
        records[rel] = FileRecord(len(data), "0" * 64)
    return records


def test_promote_release_then_add_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "tree")
    store.prepare()
    records = _staged(store, "v1.34.2", {"SHA256SUMS": b"sums", KUBECTL: b"kubectl"})
    store.promote_release(Manifest("v1.34.2", records), store.staged_release_dir("v1.34.2"))
    assert store.tree_path("v1.34.2", KUBECTL).read_bytes() == b"kubectl"
    assert set(store.load_manifest("v1.34.2").files) == {"SHA256SUMS", KUBECTL}
    assert not store.staged_release_dir("v1.34.2").exists()

    arm = "bin/linux/arm64/kubectl"
    more = _staged(store, "v1.34.2", {arm: b"arm", arm + ".sha256": b"d"})
    grown = store.add_files(
        store.load_manifest("v1.34.2"), more, store.staged_release_dir("v1.34.2")
    )
    assert set(grown.files) == {"SHA256SUMS", KUBECTL, arm, arm + ".sha256"}
    assert store.load_manifest("v1.34.2").files == grown.files
    assert store.tree_path("v1.34.2", RelPath(arm)).read_bytes() == b"arm"
    assert store.release_complete("v1.34.2")


def test_add_files_refuses_a_symlinked_directory_leading_outside(tmp_path: Path) -> None:
    store = Store(tmp_path / "tree")
    store.prepare()
    records = _staged(store, "v1.34.2", {"SHA256SUMS": b"sums"})
    store.promote_release(Manifest("v1.34.2", records), store.staged_release_dir("v1.34.2"))
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, store.release_dir("v1.34.2") / "bin")
    staged = _staged(store, "v1.34.2", {KUBECTL: b"kubectl"})
    with pytest.raises(LocalStoreError, match="outside the tree"):
        store.add_files(store.load_manifest("v1.34.2"), staged, store.staged_release_dir("v1.34.2"))
    assert not any(p.is_file() for p in outside.rglob("*"))


def _release(store: Store, version: str) -> None:
    records = _staged(store, version, {"SHA256SUMS": b"sums"})
    store.promote_release(Manifest(version, records), store.staged_release_dir(version))


def test_move_markers_only_forward_within_series_to_complete_releases(tmp_path: Path) -> None:
    store = Store(tmp_path / "tree")
    store.prepare()
    for version in ("v1.33.5", "v1.34.1", "v1.34.2"):
        _release(store, version)
    moves = store.move_markers(
        {"stable": "v1.34.2", "stable-1.33": "v1.34.1", "latest": "v1.35.0"},
        store.release_complete,
    )
    assert moves.moved == {"stable": "v1.34.2"}
    assert "stable-1.33" in moves.refused
    assert moves.incomplete == {"latest": "v1.35.0"}
    assert store.markers() == {"stable": "v1.34.2"}

    backwards = store.move_markers({"stable": "v1.34.1"}, store.release_complete)
    assert "move back" in backwards.refused["stable"]
    again = store.move_markers({"stable": "v1.34.2"}, store.release_complete)
    assert again.unchanged == {"stable": "v1.34.2"} and not again.moved
    assert (store.root / "release/stable.txt").read_bytes() == b"v1.34.2"


def test_markers_lists_only_marker_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "tree")
    store.prepare()
    (store.root / "release/stable.txt").write_text("v1.34.2")
    (store.root / "release/notes.txt").write_text("v1.34.2")
    os.symlink(store.root / "release/stable.txt", store.root / "release/latest.txt")
    assert store.markers() == {"stable": "v1.34.2"}


def test_trust_root_written_only_when_it_changes(tmp_path: Path) -> None:
    store = Store(tmp_path / "tree")
    store.prepare()
    assert store.trust_root() is None
    assert store.write_trust_root(b"{}") is True
    assert store.write_trust_root(b"{}") is False
    assert store.trust_root() == b"{}"


def test_corrupt_manifest_is_one_clear_error(tmp_path: Path) -> None:
    store = Store(tmp_path / "tree")
    store.prepare()
    for body in (b"\xff\xfe not utf-8", b"[" * 100_000, b'{"format": 1}'):
        store.manifest_path("v1.34.2").write_bytes(body)
        with pytest.raises(LocalStoreError, match="unreadable manifest"):
            store.load_manifest("v1.34.2")


@pytest.mark.parametrize(
    ("kinds", "succeeded", "outcome", "exit_code"),
    [
        ([], 3, "success", 0),
        (["upstream"], 3, "partial", 6),
        (["upstream"], 0, "failed", 4),
        (["upstream", "integrity"], 3, "integrity", 5),
        (["local", "upstream"], 3, "partial", 7),
        (["integrity", "local"], 0, "integrity", 5),
        (["internal", "integrity"], 3, "partial", 1),
    ],
)
def test_conclusion_follows_from_failure_kinds(
    kinds: list[str], succeeded: int, outcome: str, exit_code: int
) -> None:
    failures = [Failure(f"release/v1.34.2/f{i}", k, "why", "v1.34.2") for i, k in enumerate(kinds)]
    conclusion = conclude(failures, succeeded)
    assert (conclusion.outcome, conclusion.exit_code) == (outcome, exit_code)
    if failures:
        assert conclusion.error is not None and "release/v1.34.2/f0: why" in conclusion.error
        assert incomplete_releases(failures) == {"v1.34.2"}


def _record_durability(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """Log, in order, every flush and every rename the tree layer makes."""
    import mirror.store as store_module

    events: list[tuple[str, str]] = []
    real_fsync = store_module.fsync_files
    real_rename, real_replace = os.rename, os.replace

    def fsync(paths: list[Path]) -> None:
        events.extend(("fsync", str(path)) for path in paths)
        real_fsync(paths)

    def rename(src: str | Path, dst: str | Path) -> None:
        events.append(("rename", str(dst)))
        real_rename(src, dst)

    def replace(src: str | Path, dst: str | Path) -> None:
        events.append(("rename", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(store_module, "fsync_files", fsync)
    monkeypatch.setattr(store_module.os, "rename", rename)
    monkeypatch.setattr(store_module.os, "replace", replace)
    return events


def test_a_new_release_is_flushed_to_disk_before_its_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Staging fsyncs nothing: every staged file must be fsynced before the directory rename
    that makes the release visible."""
    store = Store(tmp_path / "tree")
    store.prepare()
    records = _staged(store, "v1.34.2", {"SHA256SUMS": b"sums", KUBECTL: b"kubectl"})
    events = _record_durability(monkeypatch)
    store.promote_release(Manifest("v1.34.2", records), store.staged_release_dir("v1.34.2"))
    visible = events.index(("rename", str(store.release_dir("v1.34.2"))))
    staged = store.staged_release_dir("v1.34.2")
    fsynced = {path for kind, path in events[:visible] if kind == "fsync"}
    assert fsynced == {str(staged / "SHA256SUMS"), str(staged / KUBECTL)}


def test_files_added_to_a_release_are_each_fsynced_before_any_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "tree")
    store.prepare()
    records = _staged(store, "v1.34.2", {"SHA256SUMS": b"sums"})
    store.promote_release(Manifest("v1.34.2", records), store.staged_release_dir("v1.34.2"))
    arm = "bin/linux/arm64/kubectl"
    more = _staged(store, "v1.34.2", {arm: b"arm", arm + ".sha256": b"d"})
    events = _record_durability(monkeypatch)
    store.add_files(store.load_manifest("v1.34.2"), more, store.staged_release_dir("v1.34.2"))
    staged = store.staged_release_dir("v1.34.2")
    first_into_tree = min(
        i
        for i, (kind, path) in enumerate(events)
        if kind == "rename" and path.startswith(str(store.release_dir("v1.34.2")))
    )
    fsynced = {path for kind, path in events[:first_into_tree] if kind == "fsync"}
    assert fsynced == {str(staged / arm), str(staged / (arm + ".sha256"))}


def test_staging_a_companion_refuses_a_planted_symlink(tmp_path: Path) -> None:
    store = Store(tmp_path / "tree")
    store.prepare()
    outside = tmp_path / "outside"
    outside.write_bytes(b"untouched")
    sig = store.staged_path("v1.34.2", RelPath(KUBECTL + ".sig"))
    sig.parent.mkdir(parents=True)
    os.symlink(outside, sig)
    part = store.partial_path("v1.34.2", KUBECTL)
    part.parent.mkdir(parents=True)
    part.write_bytes(b"kubectl")
    with pytest.raises(LocalStoreError, match="cannot stage"):
        store.stage_verified("v1.34.2", {RelPath(KUBECTL + ".sig"): b"sig"}, {}, KUBECTL, part)
    assert outside.read_bytes() == b"untouched"
