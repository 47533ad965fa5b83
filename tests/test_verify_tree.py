"""``k8s-mirror verify``: offline re-verification of a synced tree (upstream and Rekor stopped)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from mirror.errors import TreeVerifyError
from tests.conftest import Env

BIN = "release/v1.34.2/bin/linux/amd64"


async def synced_offline(env: Env) -> None:
    env.write_config(select={"versions": ["stable", "stable-1.33"]})
    assert (await env.sync()).exit_code == 0


def flip_byte(root: Path) -> str:
    path = root / BIN / "kubectl"
    data = bytearray(path.read_bytes())
    data[100] ^= 0x01
    path.write_bytes(bytes(data))
    return f"modified: {BIN}/kubectl"


def delete_file(root: Path) -> str:
    (root / BIN / "kubelet").unlink()
    return f"missing: {BIN}/kubelet"


def replace_bundle(root: Path) -> str:
    shutil.copy(root / BIN / "kubeadm.sigstore.json", root / BIN / "kubectl.sigstore.json")
    return f"{BIN}/kubectl.sigstore.json"


def add_stray(root: Path) -> str:
    (root / BIN / "kubectl-evil").write_bytes(b"#!/bin/sh\n")
    return f"unexpected: {BIN}/kubectl-evil"


def point_marker_nowhere(root: Path) -> str:
    (root / "release/stable.txt").write_text("v9.9.9")
    return "bad-marker: release/stable.txt"


@pytest.mark.parametrize(
    "damage", [flip_byte, delete_file, replace_bundle, add_stray, point_marker_nowhere]
)
async def test_verify_detects_damage_with_no_network(
    env: Env, damage: Callable[[Path], str]
) -> None:
    await synced_offline(env)
    # The upstream and Rekor servers are gone: the check is offline.
    await env.stop_servers()
    clean = await env.cli("verify", "--config", str(env.config_path))
    assert clean.exit_code == 0, clean.stdout + clean.stderr
    expected = damage(env.root)
    result = await env.cli("verify", "--config", str(env.config_path))
    assert result.exit_code == TreeVerifyError.exit_code
    assert expected in result.stdout, result.stdout
    assert "problems found" in result.stderr


async def test_replaced_bundle_is_reported_as_bad_bundle(env: Env) -> None:
    await synced_offline(env)
    replace_bundle(env.root)
    result = await env.cli("verify", "--root", str(env.root))
    # The bundle's own digest no longer matches the manifest, and its signature is for kubeadm.
    assert f"modified: {BIN}/kubectl.sigstore.json" in result.stdout
    assert f"bad-bundle: {BIN}/kubectl.sigstore.json" in result.stdout


async def test_verify_can_be_limited_to_one_release_and_resumed(env: Env) -> None:
    await synced_offline(env)
    flip_byte(env.root)
    only_old = await env.cli("verify", "--root", str(env.root), "--release", "v1.33.6")
    assert only_old.exit_code == 0, only_old.stdout
    assert "1 releases" in only_old.stdout
    # An audit that passed v1.33.6 and was interrupted before finishing resumes after it.
    progress = env.root / ".k8s-mirror/audit-progress.json"
    progress.write_text(json.dumps({"passed": ["v1.33.6"]}))
    resumed = await env.cli("verify", "--root", str(env.root), "--resume")
    assert resumed.exit_code == TreeVerifyError.exit_code
    assert "1 skipped (resume)" in resumed.stderr
    assert not progress.exists()


async def test_verify_with_an_untrusted_root_rejects_every_bundle(env: Env, tmp_path: Path) -> None:
    await synced_offline(env)
    from tests.fakes.sigstore_stack import FakeSigstore

    other = tmp_path / "other_root.json"
    other.write_text(FakeSigstore().trusted_root_json("http://127.0.0.1:9"))
    result = await env.cli("verify", "--root", str(env.root), "--trusted-root", str(other))
    assert result.exit_code == TreeVerifyError.exit_code
    assert result.stdout.count("bad-bundle") == 8


async def test_verify_does_not_let_the_manifest_waive_a_signature(env: Env) -> None:
    """A writer of the tree swaps kubectl, rewrites its sidecars, SUMS and manifest record
    to 'checksums-only' and deletes its bundle: verify still demands the signature."""
    import hashlib

    from mirror.store import FileRecord, Store

    await synced_offline(env)
    evil = b"#!/bin/sh\necho pwned\n"
    rel = "bin/linux/amd64/kubectl"
    base = env.root / "release/v1.34.2"
    (base / rel).write_bytes(evil)
    d256, d512 = hashlib.sha256(evil).hexdigest(), hashlib.sha512(evil).hexdigest()
    (base / f"{rel}.sha256").write_text(d256)
    (base / f"{rel}.sha512").write_text(d512)
    (base / f"{rel}.sigstore.json").unlink()
    store = Store(env.root)
    manifest = store.load_manifest("v1.34.2")
    for name, digest in (("SHA256SUMS", d256), ("SHA512SUMS", d512)):
        lines = (base / name).read_text().split("\n")
        text = "\n".join(
            f"{digest}  {rel}" if line.endswith(f"  {rel}") else line for line in lines
        )
        (base / name).write_text(text)
        manifest.files[name] = FileRecord(len(text), hashlib.sha256(text.encode()).hexdigest())
        for algo in ("sha256", "sha512"):
            side = hashlib.new(algo, text.encode()).hexdigest()
            (base / f"{name}.{algo}").write_text(side)
            manifest.files[f"{name}.{algo}"] = FileRecord(
                len(side), hashlib.sha256(side.encode()).hexdigest()
            )
    manifest.files[rel] = FileRecord(len(evil), d256, d512, check="checksums")
    for suffix, digest in ((".sha256", d256), (".sha512", d512)):
        manifest.files[rel + suffix] = FileRecord(
            len(digest), hashlib.sha256(digest.encode()).hexdigest()
        )
    del manifest.files[rel + ".sigstore.json"]
    store.save_manifest(manifest)
    result = await env.cli("verify", "--root", str(env.root))
    assert result.exit_code == TreeVerifyError.exit_code
    assert f"bad-manifest: {BIN}/kubectl: recorded as 'checksums', not 'sigstore'" in result.stdout
    assert f"bad-bundle: {BIN}/kubectl.sigstore.json: missing" in result.stdout


async def test_verify_reports_files_smuggled_into_the_manifest(env: Env) -> None:
    import hashlib

    from mirror.store import FileRecord, Store

    await synced_offline(env)
    (env.root / BIN / "helper.sh").write_bytes(b"#!/bin/sh\n")
    store = Store(env.root)
    manifest = store.load_manifest("v1.34.2")
    manifest.files["bin/linux/amd64/helper.sh"] = FileRecord(
        10, hashlib.sha256(b"#!/bin/sh\n").hexdigest()
    )
    store.save_manifest(manifest)
    result = await env.cli("verify", "--root", str(env.root))
    assert result.exit_code == TreeVerifyError.exit_code
    assert f"unexpected: {BIN}/helper.sh" in result.stdout


@pytest.mark.parametrize(
    ("name", "body", "expected"),
    [
        ("kubectl.sig", None, "kubectl.sig: not the signature in the verified bundle"),
        ("kubectl.cert", None, "kubectl.cert: not the certificate in the verified bundle"),
        ("kube-proxy.docker_tag", b"v6.66.6", "kube-proxy.docker_tag: does not name v1.34.2"),
    ],
)
async def test_verify_checks_what_nothing_else_signs(
    env: Env, name: str, body: bytes | None, expected: str
) -> None:
    """Sidecars rewritten together with the manifest (so no digest disagrees) still fail."""
    import hashlib

    from mirror.store import FileRecord, Store

    env.write_config(select={"components": ["kubectl", "kubeadm", "kube-proxy"]})
    assert (await env.sync()).exit_code == 0
    path = env.root / BIN / name
    if body is None:  # take kubeadm's sidecar of the same kind: valid, but not kubectl's
        body = (env.root / BIN / name.replace("kubectl", "kubeadm")).read_bytes()
    path.write_bytes(body)
    store = Store(env.root)
    manifest = store.load_manifest("v1.34.2")
    rel = f"bin/linux/amd64/{name}"
    old = manifest.files[rel]
    manifest.files[rel] = FileRecord(
        len(body), hashlib.sha256(body).hexdigest(), old.sha512, old.check
    )
    if name.endswith(".docker_tag"):  # keep sidecars and SUMS consistent with the forgery
        d256, d512 = hashlib.sha256(body).hexdigest(), hashlib.sha512(body).hexdigest()
        manifest.files[rel] = FileRecord(len(body), d256, d512, old.check)
        (path.parent / (name + ".sha256")).write_text(d256)
        (path.parent / (name + ".sha512")).write_text(d512)
    store.save_manifest(manifest)
    result = await env.cli("verify", "--root", str(env.root))
    assert result.exit_code == TreeVerifyError.exit_code
    assert expected in result.stdout, result.stdout
