"""Sigstore verification through the real sync pipeline and the real sigstore verifier.

Every case re-signs (or re-logs) upstream's kubectl in a hostile way and asserts that the run
exits with the integrity code, names the file and the reason, and promotes nothing of it.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from mirror.errors import IntegrityError
from tests.conftest import Env

KUBECTL = "release/v1.34.2/bin/linux/amd64/kubectl"


def resign(env: Env, path: str = KUBECTL, **sign_opts: Any) -> None:
    data = env.tree.files[path]
    signer = functools.partial(env.sigstore.sign_blob, **sign_opts)
    env.tree.replace_file(path, data, resign=True, signer=signer)


def uuid_of(env: Env, path: str = KUBECTL) -> str:
    return env.tree.signatures[path].uuid  # type: ignore[attr-defined, no-any-return]


async def assert_rejected(env: Env, reason: str) -> None:
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == IntegrityError.exit_code, result.stderr
    assert KUBECTL in result.stderr
    assert reason in result.stderr, result.stderr
    # The release was new: nothing of it is visible, and no marker names it.
    assert not (env.root / "release/v1.34.2").exists()
    assert not (env.root / "release/stable.txt").exists()


HOSTILE: dict[str, tuple[Callable[[Env], None], str]] = {
    "wrong identity": (
        lambda e: resign(e, identity="krel-trust@k8s-releng-prod.iam.gserviceaccount.com"),
        "wrong identity",
    ),
    "wrong issuer": (
        lambda e: resign(e, issuer="https://token.actions.githubusercontent.com"),
        "wrong issuer",
    ),
    "wrong issuer in the newer extension only": (
        lambda e: resign(e, issuer_v2="https://evil.example"),
        "wrong issuer",
    ),
    "signature over other bytes": (
        lambda e: resign(e, sign_other_bytes=b"something else"),
        "Signature is invalid for input",
    ),
    "content tampered after signing, SUMS and sidecars rewritten": (
        lambda e: e.tree.replace_file(KUBECTL, b"\x7fELF evil kubelet" * 100),
        "no transparency log entry",
    ),
    "no Rekor entry": (lambda e: resign(e, log=False), "no transparency log entry"),
    "Rekor entry logged for another artifact": (
        lambda e: resign(e, logged_data=b"another artifact"),
        "no transparency log entry",
    ),
    "certificate outside its validity at the integrated time": (
        lambda e: resign(e, integrated_time_offset_s=3600),
        "not valid at validation time",
    ),
    "certificate from an untrusted CA": (
        lambda e: resign(e, untrusted_ca=True),
        "failed to build timestamp certificate chain",
    ),
    "broken inclusion proof": (
        lambda e: e.sigstore.corrupt_inclusion_proof(uuid_of(e)),
        "inclusion proof",
    ),
    "broken signed entry timestamp": (
        lambda e: e.sigstore.corrupt_set(uuid_of(e)),
        "SET",
    ),
    "checkpoint disagrees with the proof": (
        lambda e: e.sigstore.corrupt_checkpoint(uuid_of(e)),
        "invalid log entry",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
async def test_hostile_signature_is_rejected_and_nothing_promoted(env: Env, case: str) -> None:
    mutate, reason = HOSTILE[case]
    mutate(env)
    await assert_rejected(env, reason)


async def test_rekor_answering_with_another_entry_is_rejected(
    env: Env, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    """A lying (or confused) Rekor returns a valid entry, but for a different artifact."""
    other = "release/v1.34.2/bin/linux/amd64/kubeadm"
    other_answer = env.sigstore.rekor_response(uuid_of(env, other))

    async def liar(request: web.Request) -> web.Response:
        return web.json_response(other_answer)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", liar)
    server = await aiohttp_server(app, host="127.0.0.1")
    # Per file: with release binding on, the SBOM (checked first) would be the one named.
    env.write_config(
        verify={"rekor_url": str(server.make_url("")).rstrip("/"), "release_binding": "off"}
    )
    await assert_rejected(env, "is for another artifact")


async def test_newer_certificates_with_only_the_v2_issuer_extension_verify(env: Env) -> None:
    resign(env, issuer_extensions="v2")
    report = await env.sync()
    assert report.exit_code == 0, report.failures


async def test_second_accepted_identity_allows_an_identity_change(env: Env) -> None:
    new_identity = "krel-next@k8s-releng-prod.iam.gserviceaccount.com"
    resign(env, identity=new_identity)
    identities = [
        {
            "identity": "krel-staging@k8s-releng-prod.iam.gserviceaccount.com",
            "issuer": "https://accounts.google.com",
        },
        {"identity": new_identity, "issuer": "https://accounts.google.com"},
    ]
    text = env.write_config().read_text() + "".join(
        f'\n[[verify.identities]]\nidentity = "{i["identity"]}"\nissuer = "{i["issuer"]}"\n'
        for i in identities
    )
    env.config_path.write_text(text)
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == 0, result.stderr
    from mirror.store import Store

    manifest = Store(env.root).load_manifest("v1.34.2")
    assert manifest.files["bin/linux/amd64/kubectl"].identity == new_identity
    assert manifest.files["bin/linux/amd64/kubeadm"].identity == identities[0]["identity"]


async def test_unsigned_release_is_refused_unless_checksums_only(env: Env) -> None:
    env.tree.add_release("v1.25.16", platforms=["linux/amd64"])
    result = await env.cli(
        "sync", "--config", str(env.config_path), "--no-progress", "--version", "v1.25.16"
    )
    assert result.exit_code == IntegrityError.exit_code
    assert "v1.25.16" in result.stderr and "checksums-only" in result.stderr
    assert not (env.root / "release/v1.25.16").exists()

    env.write_config(verify={"unsigned_releases": "checksums-only"})
    result = await env.cli(
        "sync", "--config", str(env.config_path), "--no-progress", "--version", "v1.25.16"
    )
    assert result.exit_code == 0, result.stderr
    assert (env.root / "release/v1.25.16/bin/linux/amd64/kubectl").is_file()
    assert not (env.root / "release/v1.25.16/bin/linux/amd64/kubectl.sigstore.json").exists()


async def test_stored_bundles_verify_with_sigstores_own_cli_offline(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    _, trust_config = env.sigstore.write_trust_files(env.tmp, env.rekor_url)
    base = env.root / "release/v1.34.2/bin/linux/amd64"
    files = [str(base / name) for name in ("kubectl", "kubeadm", "kubelet")]
    cmd = [
        sys.executable,
        "-m",
        "sigstore",
        "--trust-config",
        str(trust_config),
        "verify",
        "identity",
        "--offline",
        "--cert-identity",
        "krel-staging@k8s-releng-prod.iam.gserviceaccount.com",
        "--cert-oidc-issuer",
        "https://accounts.google.com",
        *files,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("OK:") + proc.stdout.count("OK:") == 3


@pytest.mark.parametrize(
    ("suffix", "body", "reason"),
    [
        (".sig", b"not base64 at all!", "kubectl.sig: not base64"),
        (".cert", b"bm90IGEgY2VydGlmaWNhdGU=", "kubectl.cert: not base64 of a PEM certificate"),
        (".sig", b"A" * 5000, "more than the 1024 allowed"),
    ],
)
async def test_malformed_signature_sidecars_are_rejected(
    env: Env, suffix: str, body: bytes, reason: str
) -> None:
    env.tree.put(KUBECTL + suffix, body)
    await assert_rejected(env, reason)


async def test_unreadable_trusted_root_is_a_config_error_that_changes_nothing(env: Env) -> None:
    env.trusted_root.write_text('{"mediaType": "nonsense"}')
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == 2, result.stderr
    assert str(env.trusted_root) in result.stderr
    assert env.listing() == []


async def test_rekor_hiccups_are_retried(env: Env) -> None:
    env.sigstore.rekor.fail_next(2, status=503)
    report = await env.sync()
    assert report.exit_code == 0, report.failures
    assert report.retries >= 2


async def test_rekor_down_is_an_upstream_failure_not_a_verified_file(env: Env) -> None:
    env.write_config(verify={"rekor_url": "http://127.0.0.1:9"}, upstream={"retries": 1})
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == 4, result.stderr
    assert "127.0.0.1:9" in result.stderr
    assert not (env.root / "release/v1.34.2").exists()
