"""Releases published with Sigstore bundles (cosign v3), and mirrors that chain without Rekor.

End to end through the CLI against the fake dl.k8s.io and Sigstore stack, with the real
verifier: what Rekor saw, what the tree holds byte for byte, what ``verify`` says offline.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from mirror.serve import make_app
from tests.conftest import Env

V = "v1.34.2"
KUBECTL = f"release/{V}/bin/linux/amd64/kubectl"
KUBEADM = f"release/{V}/bin/linux/amd64/kubeadm"


def publish(env: Env, *, detached: bool, only: Callable[[str], bool] = lambda r: True) -> list[str]:
    return env.tree.publish_bundles(V, env.sigstore.published_bundle, detached=detached, only=only)


async def sync_cli(env: Env) -> Any:
    return await env.cli("sync", "--config", str(env.config_path), "--no-progress")


def rekor_lookups(env: Env) -> list[tuple[str, str]]:
    return [r for r in env.sigstore.requests if "/api/v1/log/entries" in r[1]]


def signed_paths_in_tree(env: Env) -> list[str]:
    return sorted(
        str(p.relative_to(env.root)).removesuffix(".sigstore.json")
        for p in env.root.rglob("*.sigstore.json")
    )


@pytest.mark.parametrize("detached", [False, True], ids=["bundles-only", "bundles-and-sig"])
async def test_bundle_release_syncs_with_no_rekor_request(env: Env, detached: bool) -> None:
    published = publish(env, detached=detached)
    env.sigstore.rekor.requests.clear()
    result = await sync_cli(env)
    assert result.exit_code == 0, result.stderr
    assert rekor_lookups(env) == []
    mirrored = signed_paths_in_tree(env)
    assert mirrored and set(mirrored) <= set(published)
    for path in mirrored:
        # Stored byte-identical at its upstream path: the tree mirrors upstream's URL space.
        assert (env.root / f"{path}.sigstore.json").read_bytes() == env.tree.files[
            f"{path}.sigstore.json"
        ]
        assert (env.root / f"{path}.sig").exists() == detached
    manifest = json.loads((env.root / f".k8s-mirror/manifests/{V}.json").read_text())
    assert manifest["files"]["bin/linux/amd64/kubectl"]["bundle"] == "upstream"
    verify = await env.cli("verify", "--root", str(env.root))
    assert verify.exit_code == 0, verify.stdout


async def test_mixed_release_asks_rekor_only_for_files_without_a_bundle(env: Env) -> None:
    publish(env, detached=False, only=lambda relpath: not relpath.endswith("kubeadm"))
    env.sigstore.rekor.requests.clear()
    result = await sync_cli(env)
    assert result.exit_code == 0, result.stderr
    lookups = rekor_lookups(env)
    assert len(lookups) == 1  # kubeadm's entry, nothing else
    manifest = json.loads((env.root / f".k8s-mirror/manifests/{V}.json").read_text())
    assert manifest["files"]["bin/linux/amd64/kubeadm"]["bundle"] == "assembled"
    assert manifest["files"]["bin/linux/amd64/kubectl"]["bundle"] == "upstream"
    verify = await env.cli("verify", "--root", str(env.root))
    assert verify.exit_code == 0, verify.stdout


def _bundle(env: Env, path: str) -> dict[str, Any]:
    return json.loads(env.tree.files[f"{path}.sigstore.json"])  # type: ignore[no-any-return]


def _put_bundle(env: Env, path: str, bundle: dict[str, Any] | bytes) -> None:
    data = bundle if isinstance(bundle, bytes) else json.dumps(bundle).encode()
    env.tree.put(f"{path}.sigstore.json", data)


def _flip_set(env: Env) -> None:
    bundle = _bundle(env, KUBECTL)
    entry = bundle["verificationMaterial"]["tlogEntries"][0]
    promise = entry["inclusionPromise"]["signedEntryTimestamp"]
    entry["inclusionPromise"]["signedEntryTimestamp"] = (
        "A" if promise[0] != "A" else "B"
    ) + promise[1:]
    _put_bundle(env, KUBECTL, bundle)


def _flip_proof(env: Env) -> None:
    bundle = _bundle(env, KUBECTL)
    proof = bundle["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]
    proof["rootHash"] = ("A" if proof["rootHash"][0] != "A" else "B") + proof["rootHash"][1:]
    _put_bundle(env, KUBECTL, bundle)


def _resigned(env: Env, **sign_opts: Any) -> None:
    signer = functools.partial(env.sigstore.sign_blob, **sign_opts)
    env.tree.replace_file(KUBECTL, env.tree.files[KUBECTL], resign=True, signer=signer)
    publish(env, detached=True, only=lambda relpath: relpath.endswith("amd64/kubectl"))


HOSTILE: dict[str, tuple[Callable[[Env], None], str]] = {
    "bundle of another file": (
        lambda e: _put_bundle(e, KUBECTL, e.tree.files[f"{KUBEADM}.sigstore.json"]),
        "kubectl",
    ),
    "another identity": (
        lambda e: _resigned(e, identity="krel-trust@k8s-releng-prod.iam.gserviceaccount.com"),
        "wrong identity",
    ),
    "untrusted CA": (lambda e: _resigned(e, untrusted_ca=True), "kubectl"),
    "broken SET": (_flip_set, "kubectl"),
    "broken inclusion proof": (_flip_proof, "kubectl"),
    ".sig beside it disagrees": (
        lambda e: e.tree.put(f"{KUBECTL}.sig", e.tree.files[f"{KUBEADM}.sig"]),
        "not the signature in the verified bundle",
    ),
    "not JSON": (lambda e: _put_bundle(e, KUBECTL, b"\x00not json"), "kubectl"),
    "10 MB": (
        lambda e: _put_bundle(e, KUBECTL, b"{" + b" " * (10 << 20) + b"}"),
        "kubectl",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_bundle_is_refused_and_nothing_promoted(env: Env, case: str) -> None:
    publish(env, detached=True)
    tamper, reason = HOSTILE[case]
    tamper(env)
    result = await sync_cli(env)
    assert result.exit_code == 5, result.stderr
    assert "bin/linux/amd64/kubectl" in result.stderr and reason in result.stderr
    assert "Traceback" not in result.stderr
    assert not (env.root / f"release/{V}").exists()
    assert not (env.root / "release/stable.txt").exists()
    outside = [p for p in env.tmp.iterdir() if p.name not in {"tree", "mirror.toml"}]
    assert all(not p.name.endswith(".sigstore.json") for p in outside)


async def test_mirror_chain_needs_no_rekor_downstream(
    env: Env, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    """upstream (.sig/.cert only) -> mirror A (assembles bundles from Rekor) -> serve ->
    mirror B with no Rekor at all: B is complete and verified."""
    assert (await env.sync()).exit_code == 0
    served = await aiohttp_server(make_app(env.root), host="127.0.0.1")
    downstream: Path = env.tmp / "downstream"
    env.sigstore.rekor.requests.clear()
    env.write_config(
        upstream={"url": str(served.make_url("")).rstrip("/")},
        tree={"root": str(downstream)},
        verify={"rekor_url": ""},
    )
    result = await sync_cli(env)
    assert result.exit_code == 0, result.stderr
    assert env.sigstore.requests == []
    for name in ("kubectl", "kubeadm", "kubelet", "kubectl.sigstore.json"):
        rel = f"release/{V}/bin/linux/amd64/{name}"
        assert (downstream / rel).read_bytes() == (env.root / rel).read_bytes()
    assert (downstream / "release/stable.txt").read_text() == V
    verify = await env.cli("verify", "--root", str(downstream))
    assert verify.exit_code == 0, verify.stdout


async def test_no_bundle_and_no_rekor_is_one_clear_error(env: Env) -> None:
    env.write_config(verify={"rekor_url": ""})
    result = await sync_cli(env)
    assert result.exit_code == 4, result.stderr
    assert "verify.rekor_url is unset" in result.stderr
    assert not (env.root / f"release/{V}").exists()
