"""``k8s-mirror fetch``: a one-off download with no config file, verified exactly like sync,
into a tree (``--output``) or one archive (``--archive``), then re-verified offline."""

from __future__ import annotations

import functools
import hashlib
import os
import tarfile
from pathlib import Path

import pytest

from mirror.errors import ConfigError, SignatureError
from tests.conftest import Env, expected_listing

KUBE3 = ("kubectl", "kubeadm", "kubelet")
WRONG_IDENTITY = "krel-trust@k8s-releng-prod.iam.gserviceaccount.com"


def tree_digests(root: Path) -> list[tuple[str, str]]:
    return sorted(
        (str(p.relative_to(root)), hashlib.sha256(p.read_bytes()).hexdigest())
        for p in root.rglob("*")
        if p.is_file() and ".k8s-mirror" not in p.parts
    )


def net_flags(env: Env) -> list[str]:
    """Where the fake dl.k8s.io and Rekor are: all a config-free fetch needs besides the trust
    root of the fake Sigstore stack."""
    return [
        "--upstream-url", env.dl_url,
        "--rekor-url", env.rekor_url,
        "--trusted-root", str(env.trusted_root),
        "--no-progress",
    ]  # fmt: skip


def leftovers(directory: Path, archive_name: str) -> list[str]:
    return [p.name for p in directory.iterdir() if p.name.startswith(f".{archive_name}")]


async def test_fetch_into_a_directory_needs_no_config_and_verifies_offline(env: Env) -> None:
    out = env.tmp / "kube-arm64"
    args = [
        "fetch", "v1.34.2", "--platform", "linux/arm64",
        "--component", "kubectl", "--component", "kubelet", "--component", "kubeadm",
        "--output", str(out), *net_flags(env),
    ]  # fmt: skip
    result = await env.cli(*args)
    assert result.exit_code == 0, result.stderr
    assert "success" in result.stdout
    files = [name for name, _ in tree_digests(out)]
    expected = expected_listing("v1.34.2", "linux/arm64", KUBE3)
    assert files == sorted([*expected, "sigstore/trusted_root.json"])
    # The mirror.toml in the working directory was not read: its tree is untouched.
    assert not env.root.exists()

    check = await env.cli("verify", "--root", str(out))
    assert check.exit_code == 0, check.stdout + check.stderr
    assert "4 signatures checked" in check.stdout

    # DIR is a mirror tree: fetching the same again reconciles and downloads nothing.
    env.dl.log.clear()
    again = await env.cli(*args)
    assert again.exit_code == 0, again.stderr
    assert env.release_gets() == []


@pytest.mark.parametrize("suffix", [".tar.gz", ".tar.xz"])
async def test_fetch_to_an_archive_then_unpack_or_import_and_verify(env: Env, suffix: str) -> None:
    archive = env.tmp / f"k8s{suffix}"
    # [upstream] and [verify] come from the config; its [select] and [tree] do not apply.
    result = await env.cli(
        "fetch", "stable", "stable-1.33", "--archive", str(archive),
        "--config", str(env.config_path), "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    assert f"wrote {archive}" in result.stdout
    assert leftovers(env.tmp, archive.name) == []
    assert not env.root.exists()

    with tarfile.open(archive) as tar:
        names = tar.getnames()
        assert all(m.isreg() for m in tar.getmembers())
    state = sorted(n for n in names if n.startswith(".k8s-mirror"))
    assert state == [
        ".k8s-mirror/archive-end.json",
        ".k8s-mirror/manifests/v1.33.6.json",
        ".k8s-mirror/manifests/v1.34.2.json",
    ]
    assert {"release/stable.txt", "release/stable-1.33.txt"} <= set(names)

    # Untarred into an empty directory, it is a tree `verify` passes, with no network.
    unpacked = env.tmp / "unpacked"
    with tarfile.open(archive) as tar:
        tar.extractall(unpacked, filter="data")
    check = await env.cli("verify", "--root", str(unpacked))
    assert check.exit_code == 0, check.stdout + check.stderr
    assert "8 signatures checked" in check.stdout

    # Or imported: re-verified and promoted atomically into a standing tree.
    imported = env.tmp / "imported"
    result = await env.cli(
        "import", str(archive), "--root", str(imported), "--trusted-root", str(env.trusted_root)
    )
    assert result.exit_code == 0, result.stderr
    assert "new: v1.33.6, v1.34.2" in result.stdout
    assert tree_digests(imported) == tree_digests(unpacked)
    check = await env.cli("verify", "--root", str(imported))
    assert check.exit_code == 0, check.stdout + check.stderr


async def test_a_wrong_signature_fails_the_fetch_and_leaves_no_archive(env: Env) -> None:
    kubectl = "release/v1.34.2/bin/linux/amd64/kubectl"
    env.tree.replace_file(
        kubectl,
        b"\x7fELF" + os.urandom(3000),
        resign=True,
        signer=functools.partial(env.sigstore.sign_blob, identity=WRONG_IDENTITY),
    )
    archive = env.tmp / "k8s.tar"
    result = await env.cli("fetch", "v1.34.2", "--archive", str(archive), *net_flags(env))
    assert result.exit_code == SignatureError.exit_code
    assert kubectl in result.stderr and "wrong identity" in result.stderr
    assert not archive.exists() and leftovers(env.tmp, archive.name) == []

    out = env.tmp / "kube"
    result = await env.cli("fetch", "v1.34.2", "--output", str(out), *net_flags(env))
    assert result.exit_code == SignatureError.exit_code
    assert tree_digests(out) == [("sigstore/trusted_root.json", tree_digests(out)[0][1])]


async def test_fetch_rejects_bad_invocations_before_downloading(env: Env) -> None:
    stray = env.tmp / "photos"
    stray.mkdir()
    (stray / "cat.jpg").write_bytes(b"meow")
    cases = [
        (["--output", str(env.tmp / "a"), "--archive", str(env.tmp / "a.tar")], "exactly one"),
        (["--archive", str(env.tmp / "a.zip")], "unknown archive type"),
        (["--archive", str(env.tmp / "missing-dir/a.tar")], "no such directory"),
        (["--output", str(stray)], "not empty and not a k8s-mirror tree"),
        (["--output", str(env.tmp / "a"), "--platform", "sparc"], "select.platforms[0]"),
    ]
    for extra, message in cases:
        result = await env.cli("fetch", "v1.34.2", *extra, *net_flags(env))
        assert result.exit_code == ConfigError.exit_code, (extra, result.stderr)
        assert message in result.stderr, result.stderr
    assert env.dl.requests() == []


async def test_archive_cut_at_a_member_boundary_is_refused(env: Env) -> None:
    """tar reads a stream cut between members as a whole, smaller archive; we must not."""
    archive = env.tmp / "k8s.tar"
    result = await env.cli(
        "fetch", "stable", "stable-1.33", "--archive", str(archive),
        "--config", str(env.config_path), "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    second_manifest = next(m for m in members if m.name.endswith("manifests/v1.34.2.json"))
    cut = env.tmp / "cut.tar"
    cut.write_bytes(archive.read_bytes()[: second_manifest.offset] + bytes(1024))
    dest = env.tmp / "offline"
    result = await env.cli(
        "import", str(cut), "--root", str(dest), "--trusted-root", str(env.trusted_root)
    )
    assert result.exit_code == 5, result.stderr
    assert "truncated" in result.stderr
    assert not (dest / "release/v1.33.6").exists()
