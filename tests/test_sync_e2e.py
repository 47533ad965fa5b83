"""End-to-end sync against the fake dl.k8s.io and the fake Sigstore stack."""

from __future__ import annotations

import json

from tests.conftest import Env, expected_listing

KUBE3 = ("kubectl", "kubeadm", "kubelet")


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
    assert report.files_present == 4 and report.files_fetched == 0


async def test_verify_command_passes_on_a_synced_tree_offline(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    result = await env.cli("verify", "--root", str(env.root))
    assert result.exit_code == 0, result.stderr
    assert "4 signatures checked" in result.stdout


async def test_dry_run_shows_the_plan_and_changes_nothing(env: Env) -> None:
    fresh = await env.cli("sync", "--config", str(env.config_path), "--dry-run")
    assert fresh.exit_code == 0, fresh.stderr
    assert "marker stable -> v1.34.2" in fresh.stdout
    assert "release/v1.34.2 (new): 4 selected, 0 present" in fresh.stdout
    assert not env.root.exists()

    assert (await env.sync()).exit_code == 0
    before = env.listing()
    env.write_config(select={"platforms": ["linux/amd64", "linux/arm64"]})
    env.dl.log.clear()
    plan = await env.cli("sync", "--config", str(env.config_path), "--dry-run")
    assert plan.exit_code == 0, plan.stderr
    arm_bytes = sum(len(env.tree.files[f"release/v1.34.2/bin/linux/arm64/{n}"]) for n in KUBE3)
    assert "7 selected, 4 present" in plan.stdout
    assert f"3 to fetch ({arm_bytes} bytes)" in plan.stdout
    assert "  fetch bin/linux/arm64/kubectl" in plan.stdout
    assert env.listing() == before
    assert env.release_gets() == []  # sizes come from HEAD requests


async def test_selection_matching_nothing_is_a_config_error(env: Env) -> None:
    for flag, value in (("--platform", "linux/sparc"), ("--component", "kubeclt")):
        result = await env.cli(
            "sync", "--config", str(env.config_path), "--no-progress", flag, value
        )
        assert result.exit_code == 2, result.stderr
        assert f"{value!r} matches no file" in result.stderr
        assert not (env.root / "release/v1.34.2").exists()


async def test_config_error_changes_nothing_on_disk(env: Env) -> None:
    """A selection typo is found before the run creates its tree, state or report."""
    result = await env.cli("sync", "--config", str(env.config_path), "--component", "kubctl")
    assert result.exit_code == 2, result.stderr
    assert not env.root.exists()

    assert (await env.sync()).exit_code == 0
    before = sorted(str(p.relative_to(env.root)) for p in env.root.rglob("*"))
    result = await env.cli("sync", "--config", str(env.config_path), "--component", "kubctl")
    assert result.exit_code == 2, result.stderr
    assert sorted(str(p.relative_to(env.root)) for p in env.root.rglob("*")) == before
