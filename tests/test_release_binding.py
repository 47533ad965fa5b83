"""Release binding: a validly signed file of another release, platform or path is refused.

Each attack is tried as someone who controls the network path would: genuine signatures and
Rekor entries, recomputed (unsigned) SUMS lines and sidecars, and no way to re-sign the SBOM.
End to end through the CLI with the real verifier.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import Env

NEW, OLD = "v1.34.2", "v1.33.6"
BIN = "bin/linux/amd64"


def path(version: str, rel: str) -> str:
    return f"release/{version}/{rel}"


def substitute(env: Env, target: str, source: str) -> None:
    """Serve ``source``'s bytes, .sig and .cert as ``target``, with SUMS and sidecars fixed."""
    env.tree.replace_file(target, env.tree.files[source], resign=False, update_sbom=False)
    for suffix in (".sig", ".cert"):
        if source + suffix in env.tree.files:
            env.tree.put(target + suffix, env.tree.files[source + suffix])


def add_unsigned_file(env: Env, rel: str, data: bytes) -> None:
    """A file nobody published, added to the (unsigned) SUMS with matching sidecars."""
    env.tree.put(path(NEW, rel), data)
    for algo in ("sha256", "sha512"):
        digest = hashlib.new(algo, data).hexdigest()
        env.tree.put(path(NEW, f"{rel}.{algo}"), digest.encode())
        which = f"{algo.upper()}SUMS"
        text = env.tree.files[path(NEW, which)].decode()
        env.tree.set_sums_text(NEW, f"{text}\n{digest}  {rel}", which=which)


async def sync_cli(env: Env) -> Any:
    return await env.cli("sync", "--config", str(env.config_path), "--no-progress")


async def assert_refused(env: Env, rel: str, reason: str) -> None:
    result = await sync_cli(env)
    assert result.exit_code == 5, result.stderr
    assert path(NEW, rel) in result.stderr and reason in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not (env.root / path(NEW, rel)).exists()
    assert not (env.root / "release/stable.txt").exists()


def tamper_sbom_entry(env: Env) -> None:
    """Upstream's own (validly signed) SBOM lists another sha256 for kubectl."""
    sbom_path = path(NEW, "kubernetes-release.spdx")
    kubectl = env.tree.files[path(NEW, f"{BIN}/kubectl")]
    real = hashlib.sha256(kubectl).hexdigest()
    text = env.tree.files[sbom_path].decode().replace(real, "0" * 64)
    env.tree.replace_file(sbom_path, text.encode(), resign=True, update_sbom=False)


ATTACKS: dict[str, tuple[Callable[[Env], None], str, list[str], str]] = {
    "binary from another release": (
        lambda e: substitute(e, path(NEW, f"{BIN}/kubectl"), path(OLD, f"{BIN}/kubectl")),
        f"{BIN}/kubectl",
        ["kubectl"],
        f"is not the {NEW} SBOM's",
    ),
    "binary from another platform": (
        lambda e: substitute(e, path(NEW, f"{BIN}/kubectl"), path(NEW, "bin/linux/arm64/kubectl")),
        f"{BIN}/kubectl",
        ["kubectl"],
        f"is not the {NEW} SBOM's",
    ),
    "tarball from another release": (
        lambda e: substitute(
            e,
            path(NEW, "kubernetes-client-linux-amd64.tar.gz"),
            path(OLD, "kubernetes-client-linux-amd64.tar.gz"),
        ),
        "kubernetes-client-linux-amd64.tar.gz",
        ["kubernetes-client"],
        f"is not the {NEW} SBOM's",
    ),
    "image archive from another release": (
        lambda e: substitute(
            e, path(NEW, f"{BIN}/kube-proxy.tar"), path(OLD, f"{BIN}/kube-proxy.tar")
        ),
        f"{BIN}/kube-proxy.tar",
        ["kube-proxy"],
        "its manifest.json names",
    ),
    "SBOM of another release": (
        lambda e: substitute(
            e, path(NEW, "kubernetes-release.spdx"), path(OLD, "kubernetes-release.spdx")
        ),
        "kubernetes-release.spdx",
        ["kubectl"],
        f"not 'Kubernetes Release {NEW}'",
    ),
    "SBOM entry differs": (tamper_sbom_entry, f"{BIN}/kubectl", ["kubectl"], "SBOM's 00000000"),
    ".docker_tag naming another release": (
        lambda e: e.tree.replace_file(path(NEW, f"{BIN}/kube-proxy.docker_tag"), OLD.encode()),
        f"{BIN}/kube-proxy.docker_tag",
        ["kube-proxy"],
        f"does not name {NEW}",
    ),
    "invented unsigned file": (
        lambda e: add_unsigned_file(e, f"{BIN}/install.docker_tag", NEW.encode()),
        f"{BIN}/install.docker_tag",
        ["install.docker_tag"],
        "nothing binds it",
    ),
}


@pytest.mark.parametrize("case", sorted(ATTACKS))
async def test_substitution_is_refused(env: Env, case: str) -> None:
    tamper, rel, components, reason = ATTACKS[case]
    env.write_config(select={"components": components, "platforms": ["linux/amd64"]})
    tamper(env)
    await assert_refused(env, rel, reason)


async def test_missing_sbom_refuses_the_release(env: Env) -> None:
    for which in ("SHA256SUMS", "SHA512SUMS"):
        lines = env.tree.files[path(NEW, which)].decode().split("\n")
        kept = [line for line in lines if not line.endswith("  kubernetes-release.spdx")]
        env.tree.set_sums_text(NEW, "\n".join(kept), which=which)
    result = await sync_cli(env)
    assert result.exit_code == 5, result.stderr
    assert "list no kubernetes-release.spdx" in result.stderr
    assert 'release_binding = "off"' in result.stderr  # the hint
    assert not (env.root / path(NEW, "")).exists()
    assert not (env.root / "release/stable.txt").exists()


async def test_genuine_release_records_the_binding_of_every_file(env: Env) -> None:
    env.write_config(select={"components": [], "platforms": ["linux/amd64"]})
    assert (await sync_cli(env)).exit_code == 0
    manifest = json.loads((env.root / f".k8s-mirror/manifests/{NEW}.json").read_text())
    primaries = set(env.tree.files[path(NEW, "SHA256SUMS")].decode().split("\n"))
    bindings = {}
    for line in primaries:
        rel = line.split("  ", 1)[1]
        if rel in manifest["files"]:
            bindings[rel] = manifest["files"][rel]["binding"]
    assert bindings[f"{BIN}/kubectl"] == "sbom"
    assert bindings["kubernetes-client-linux-amd64.tar.gz"] == "sbom"
    assert bindings[f"{BIN}/kube-proxy.tar"] == "image-tag"
    assert bindings[f"{BIN}/kube-proxy.docker_tag"] == "docker-tag"
    assert bindings["kubernetes-release.spdx"] == "sbom-self"
    assert bindings["kubernetes-source.spdx"] == "sbom-self"
    assert None not in bindings.values()
    status = await env.cli("status", "--root", str(env.root), "--json")
    assert json.loads(status.stdout)["releases"][NEW]["binding"] == "sbom"


async def test_verify_finds_a_file_replaced_with_its_manifest_entry(env: Env) -> None:
    """The tree is writable by an attacker: file, .sig, .cert, bundle, sidecars, SUMS line and
    manifest entry all replaced by another release's genuine ones. Only the SBOM says no."""
    env.write_config(select={"versions": [NEW, OLD]})
    assert (await sync_cli(env)).exit_code == 0
    rel = f"{BIN}/kubectl"
    for suffix in ("", ".sig", ".cert", ".sigstore.json", ".sha256", ".sha512"):
        src = env.root / path(OLD, rel + suffix)
        (env.root / path(NEW, rel + suffix)).write_bytes(src.read_bytes())
    for name in ("SHA256SUMS", "SHA512SUMS"):
        algo = name[:6].lower()
        new_sums = env.root / path(NEW, name)
        old_digest = (env.root / path(OLD, f"{rel}.{algo}")).read_text()
        lines = [
            f"{old_digest}  {rel}" if line.endswith(f"  {rel}") else line
            for line in new_sums.read_text().split("\n")
        ]
        new_sums.write_text("\n".join(lines))
        for side in ("sha256", "sha512"):
            digest = hashlib.new(side, new_sums.read_bytes()).hexdigest()
            (env.root / path(NEW, f"{name}.{side}")).write_text(digest)
    manifests = env.root / ".k8s-mirror/manifests"
    new_manifest = json.loads((manifests / f"{NEW}.json").read_text())
    old_manifest = json.loads((manifests / f"{OLD}.json").read_text())
    for suffix in ("", ".sig", ".cert", ".sigstore.json", ".sha256", ".sha512"):
        new_manifest["files"][rel + suffix] = old_manifest["files"][rel + suffix]
    for name in ("SHA256SUMS", "SHA512SUMS", "SHA256SUMS.sha256", "SHA256SUMS.sha512",
                 "SHA512SUMS.sha256", "SHA512SUMS.sha512"):  # fmt: skip
        data = (env.root / path(NEW, name)).read_bytes()
        new_manifest["files"][name]["size"] = len(data)
        new_manifest["files"][name]["sha256"] = hashlib.sha256(data).hexdigest()
    (manifests / f"{NEW}.json").write_text(json.dumps(new_manifest))
    result = await env.cli("verify", "--root", str(env.root))
    assert result.exit_code == 5, result.stdout
    assert f"unbound: {path(NEW, rel)}: sha256" in result.stdout
    assert f"is not the {NEW} SBOM's" in result.stdout
    assert result.stdout.count("unbound:") == 1


async def test_import_refuses_a_set_carrying_another_releases_file(env: Env) -> None:
    """A fetch --archive for v1.34.2 whose kubectl is v1.33.6's (genuinely signed)."""
    substitute(env, path(NEW, f"{BIN}/kubectl"), path(OLD, f"{BIN}/kubectl"))
    env.write_config(verify={"release_binding": "off"})  # the compromised side
    archive = env.tmp / "set.tar"
    args = ["--upstream-url", env.dl_url, "--rekor-url", env.rekor_url]
    made = await env.cli(
        "fetch", NEW, "--archive", str(archive), "--config", str(env.config_path),
        "--component", "kubectl", "--component", "kubernetes-release", *args,
    )  # fmt: skip
    assert made.exit_code == 0, made.stderr
    env.write_config(verify={"release_binding": "sbom"})
    target = env.tmp / "airgap"
    result = await env.cli(
        "import", str(archive), "--root", str(target), "--trusted-root", str(env.trusted_root),
        "--config", str(env.config_path),
    )  # fmt: skip
    assert result.exit_code == 5, result.stderr
    assert f"is not the {NEW} SBOM's" in result.stderr
    assert not (target / path(NEW, "")).exists()


async def test_unbound_allowed_accepts_a_named_pattern_with_a_warning(env: Env) -> None:
    add_unsigned_file(env, f"{BIN}/install.docker_tag", NEW.encode())
    env.write_config(
        select={"components": ["kubectl", "install.docker_tag"]},
        verify={"unbound_allowed": ["bin/*/*/install.docker_tag"]},
    )
    result = await sync_cli(env)
    assert result.exit_code == 0, result.stderr
    assert "accepted by verify.unbound_allowed" in result.stderr
    manifest = json.loads((env.root / f".k8s-mirror/manifests/{NEW}.json").read_text())
    assert manifest["files"][f"{BIN}/install.docker_tag"]["binding"] == "unbound"


async def test_binding_off_records_the_release_as_unbound(env: Env) -> None:
    env.write_config(verify={"release_binding": "off"})
    assert (await sync_cli(env)).exit_code == 0
    assert not (env.root / path(NEW, "kubernetes-release.spdx")).exists()
    manifest = json.loads((env.root / f".k8s-mirror/manifests/{NEW}.json").read_text())
    assert manifest["files"][f"{BIN}/kubectl"]["binding"] == "off"
    status = await env.cli("status", "--root", str(env.root), "--json")
    assert json.loads(status.stdout)["releases"][NEW]["binding"] == "unbound"
