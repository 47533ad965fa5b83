"""Reconcile and prune: the tree follows the config as it is now, and never deletes en masse."""

from __future__ import annotations

import json

from mirror.errors import PruneGuardError
from mirror.store import Store
from tests.conftest import Env

KUBE3 = ("kubectl", "kubeadm", "kubelet")


async def test_adding_a_platform_fetches_only_that_platform(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    env.dl.log.clear()
    report = await env.sync(select={"platforms": ["linux/amd64", "linux/arm64"]})
    assert report.exit_code == 0, report.failures
    fetched = sorted(env.release_gets())
    assert fetched == sorted(
        f"release/v1.34.2/bin/linux/arm64/{n}{s}"
        for n in KUBE3
        for s in ("", ".sha256", ".sha512", ".sig", ".cert")
    )
    assert report.files_fetched == 3 and report.files_present == 4  # + the release SBOM
    for name in KUBE3:
        assert (env.root / f"release/v1.34.2/bin/linux/arm64/{name}.sigstore.json").is_file()
    verify = await env.cli("verify", "--root", str(env.root))
    assert verify.exit_code == 0, verify.stdout


async def test_adding_a_component_and_a_version_fetches_just_those(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    env.dl.log.clear()
    report = await env.sync(
        select={"versions": ["stable", "v1.33.6"], "components": [*KUBE3, "kube-proxy"]}
    )
    assert report.exit_code == 0, report.failures
    primaries = sorted(
        k
        for k in env.release_gets()
        if "." not in k.rsplit("/", 1)[-1] or k.endswith((".tar", ".docker_tag"))
    )
    assert "release/v1.34.2/bin/linux/amd64/kube-proxy" in primaries
    assert "release/v1.34.2/bin/linux/amd64/kube-proxy.tar" in primaries
    assert "release/v1.34.2/bin/linux/amd64/kube-proxy.docker_tag" in primaries
    assert not any(
        k.startswith("release/v1.34.2/bin/linux/amd64/kubectl") for k in env.release_gets()
    )
    assert (env.root / "release/v1.33.6/bin/linux/amd64/kube-proxy").is_file()
    # docker_tag is not a signed kind: no bundle, no .sig/.cert
    assert not (env.root / "release/v1.34.2/bin/linux/amd64/kube-proxy.docker_tag.sig").exists()


async def new_stable_patch(env: Env) -> None:
    env.tree.add_release("v1.34.3", platforms=["linux/amd64"])
    env.tree.set_marker("stable", "v1.34.3")


async def test_new_stable_patch_moves_marker_and_keeps_old_release(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    await new_stable_patch(env)
    report = await env.sync()
    assert report.exit_code == 0
    assert (env.root / "release/stable.txt").read_text() == "v1.34.3"
    assert (env.root / "release/v1.34.2/bin/linux/amd64/kubectl").is_file()
    assert (env.root / "release/v1.34.3/bin/linux/amd64/kubectl").is_file()


async def test_new_stable_patch_with_prune_removes_the_old_release(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    await new_stable_patch(env)
    dry = await env.cli(
        "sync",
        "--config",
        str(env.write_config(tree={"prune": True, "prune_max_share": 0.6})),
        "--dry-run",
    )
    assert dry.exit_code == 0, dry.stderr
    # the dry run shows the removal as it will happen: after stable has moved to v1.34.3
    assert "prune release/v1.34.2/" in dry.stdout
    assert (env.root / "release/v1.34.2").is_dir()
    report = await env.sync()
    assert report.exit_code == 0, report.failures
    assert report.pruned == ["release/v1.34.2/"]
    assert not (env.root / "release/v1.34.2").exists()
    assert not Store(env.root).manifest_path("v1.34.2").exists()
    assert (env.root / "release/stable.txt").read_text() == "v1.34.3"


async def test_prune_never_removes_a_release_a_marker_names(env: Env) -> None:
    assert (await env.sync(select={"versions": ["stable", "stable-1.33"]})).exit_code == 0
    report = await env.sync(
        select={"versions": ["stable"]}, tree={"prune": True, "prune_max_share": 0.9}
    )
    assert report.exit_code == 0
    assert report.pruned == []
    assert (env.root / "release/v1.33.6/bin/linux/amd64/kubectl").is_file()


async def test_prune_removes_files_no_longer_selected(env: Env) -> None:
    assert (await env.sync(select={"platforms": ["linux/amd64", "linux/arm64"]})).exit_code == 0
    report = await env.sync(
        select={"platforms": ["linux/amd64"]}, tree={"prune": True, "prune_max_share": 0.6}
    )
    assert report.exit_code == 0
    assert len(report.pruned) == 18
    assert not (env.root / "release/v1.34.2/bin/linux/arm64").exists()
    verify = await env.cli("verify", "--root", str(env.root))
    assert verify.exit_code == 0, verify.stdout


async def test_prune_guard_trips_when_upstream_suddenly_lists_nothing(env: Env) -> None:
    env.write_config(select={"components": []}, tree={"prune": True, "prune_max_share": 0.9})
    assert (await env.sync()).exit_code == 0
    before = env.listing()
    # A new "stable" whose SUMS lists almost nothing: pruning the old one would empty the tree.
    env.tree.add_release("v1.34.3", platforms=["linux/amd64"])
    sums = env.tree.files["release/v1.34.3/SHA256SUMS"].decode().split("\n")
    sums512 = env.tree.files["release/v1.34.3/SHA512SUMS"].decode().split("\n")
    keep = ("  bin/linux/amd64/kubectl", "  kubernetes-release.spdx")
    env.tree.set_sums_text("v1.34.3", "\n".join(s for s in sums if s.endswith(keep)))
    env.tree.set_sums_text(
        "v1.34.3", "\n".join(s for s in sums512 if s.endswith(keep)), which="SHA512SUMS"
    )
    env.tree.set_marker("stable", "v1.34.3")
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == PruneGuardError.exit_code, result.stderr
    assert "tree.prune_max_share" in result.stderr and "nothing was removed" in result.stderr
    assert all(p in env.listing() for p in before if p.startswith("release/v1.34.2/"))
    status = json.loads((env.root / ".k8s-mirror/status.json").read_text())
    assert status["last_run"]["exit_code"] == PruneGuardError.exit_code
