"""End-to-end sync against the fake dl.k8s.io and the fake Sigstore stack."""

from __future__ import annotations

import json

from tests.conftest import Env

KUBE3 = ("kubectl", "kubeadm", "kubelet")


def expected_listing(version: str, platform: str, names: tuple[str, ...]) -> list[str]:
    files = []
    for name in names:
        base = f"release/{version}/bin/{platform}/{name}"
        files += [base] + [
            base + s for s in (".sha256", ".sha512", ".sig", ".cert", ".sigstore.json")
        ]
    for sums in ("SHA256SUMS", "SHA512SUMS"):
        files += [f"release/{version}/{sums}{s}" for s in ("", ".sha256", ".sha512")]
    return files


async def test_fresh_sync_produces_exact_tree_and_markers(env: Env) -> None:
    report = await env.sync()
    assert report.exit_code == 0, report.failures
    expected = expected_listing("v1.34.2", "linux/amd64", KUBE3)
    expected += ["release/stable.txt", "sigstore/trusted_root.json"]
    assert env.listing() == sorted(expected)
    assert (env.root / "release/stable.txt").read_text() == "v1.34.2"
    kubectl = env.tree.files["release/v1.34.2/bin/linux/amd64/kubectl"]
    assert (env.root / "release/v1.34.2/bin/linux/amd64/kubectl").read_bytes() == kubectl
    bundle = json.loads(
        (env.root / "release/v1.34.2/bin/linux/amd64/kubectl.sigstore.json").read_text()
    )
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"


async def test_second_sync_fetches_no_release_file(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    env.dl.log.clear()
    report = await env.sync()
    assert report.exit_code == 0
    assert env.release_gets() == []
    assert report.files_present == 3 and report.files_fetched == 0


async def test_verify_command_passes_on_a_synced_tree_offline(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    result = await env.cli("verify", "--root", str(env.root))
    assert result.exit_code == 0, result.stderr
    assert "3 signatures checked" in result.stdout
