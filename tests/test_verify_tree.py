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


async def synced_offline(env: Env, aiohttp_server_stop: Callable[[], object] | None = None) -> None:
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
    env: Env, damage: Callable[[Path], str], aiohttp_server: object
) -> None:
    await synced_offline(env)
    # Nothing listens at the configured upstream/Rekor any more: the check is offline.
    env.write_config(
        upstream={"url": "http://127.0.0.1:9"}, verify={"rekor_url": "http://127.0.0.1:9"}
    )
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
    assert result.stdout.count("bad-bundle") == 6
