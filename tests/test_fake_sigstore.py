"""The fake Sigstore stack is only useful if the real verifier accepts it.

These tests run sigstore-python 4.5.1 itself (library and CLI), unmocked, against
`tests.fakes.sigstore_stack`: good signatures must verify, and each way of breaking one must be
rejected with a `sigstore.errors.Error` (or never produce a log entry at all).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import rfc8785
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from sigstore._internal.rekor import _hashedrekord_from_parts
from sigstore.errors import Error
from sigstore.hashes import Hashed
from sigstore.models import Bundle, ClientTrustConfig, TransparencyLogEntry, TrustedRoot
from sigstore.verify import Verifier, policy
from sigstore_models.common.v1 import HashAlgorithm

from tests.fakes.sigstore_stack import (
    CERT_LIFETIME,
    DEFAULT_IDENTITY,
    DEFAULT_ISSUER,
    DEFAULT_NOW,
    FakeSigstore,
    SignedBlob,
)

ARTIFACT = b"#!/bin/sh\necho kubectl\n" * 100
IMAGE_IDENTITY = "krel-trust@k8s-releng-prod.iam.gserviceaccount.com"


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@pytest.fixture
def stack() -> FakeSigstore:
    # Key generation is ~5 ms, so every test gets its own log and request record.
    return FakeSigstore()


@pytest.fixture
async def rekor(stack: FakeSigstore, aiohttp_server: Any) -> TestServer:
    server: TestServer = await aiohttp_server(stack.rekor_app())
    return server


@pytest.fixture
def rekor_url(rekor: TestServer) -> str:
    return str(rekor.make_url("")).rstrip("/")


@pytest.fixture
def verifier(stack: FakeSigstore, rekor_url: str, tmp_path: Path) -> Verifier:
    root_path, _ = stack.write_trust_files(tmp_path / "trust", rekor_url)
    return Verifier(trusted_root=TrustedRoot.from_file(str(root_path)))


def hashed(data: bytes) -> Hashed:
    return Hashed(algorithm=HashAlgorithm.SHA2_256, digest=hashlib.sha256(data).digest())


def identity_policy(
    identity: str = DEFAULT_IDENTITY, issuer: str = DEFAULT_ISSUER
) -> policy.VerificationPolicy:
    return policy.AnyOf([policy.AllOf([policy.Identity(identity=identity, issuer=issuer)])])


def either_issuer_policy(identity: str, issuer: str) -> policy.VerificationPolicy:
    """SAN plus whichever issuer extension the certificate carries."""
    return policy.AnyOf(
        [
            policy.AllOf([policy.Identity(identity=identity, issuer=issuer)]),
            policy.AllOf([policy.Identity(identity=identity), policy.OIDCIssuerV2(issuer)]),
        ]
    )


async def get_entry(rekor_url: str, uuid: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{rekor_url}/api/v1/log/entries/{uuid}") as response,
    ):
        return response.status, await response.json()


async def retrieve(rekor_url: str, query: dict[str, Any]) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{rekor_url}/api/v1/log/entries/retrieve", json=query) as response,
    ):
        return response.status, await response.json()


def bundle_from(blob: SignedBlob, response: dict[str, Any]) -> Bundle:
    """What the mirror does: sidecars + Rekor answer -> Sigstore bundle."""
    entry = TransparencyLogEntry._from_v1_response(response)
    cert = x509.load_pem_x509_certificate(base64.b64decode(blob.cert))
    return Bundle.from_parts(cert, base64.b64decode(blob.sig), entry)


async def fetch_bundle(rekor_url: str, blob: SignedBlob) -> Bundle:
    status, response = await get_entry(rekor_url, blob.uuid)
    assert status == 200, response
    return bundle_from(blob, response)


# --------------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------------


def test_sidecars_have_the_upstream_format(stack: FakeSigstore) -> None:
    blob = stack.sign_blob(ARTIFACT)

    # .sig: base64 of a DER ECDSA signature over sha256(data), no newline.
    assert blob.sig.isascii() and b"\n" not in blob.sig
    signature = base64.b64decode(blob.sig, validate=True)
    cert = x509.load_pem_x509_certificate(base64.b64decode(blob.cert, validate=True))
    # .cert: base64 of a PEM certificate, no newline.
    assert blob.cert.isascii() and b"\n" not in blob.cert
    assert base64.b64decode(blob.cert).startswith(b"-----BEGIN CERTIFICATE-----\n")
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    public_key.verify(
        signature, hashlib.sha256(ARTIFACT).digest(), ec.ECDSA(Prehashed(hashes.SHA256()))
    )


def test_leaf_certificate_is_fulcio_shaped(stack: FakeSigstore) -> None:
    cert = stack.sign_blob(ARTIFACT).certificate
    ext = cert.extensions

    assert cert.not_valid_after_utc - cert.not_valid_before_utc == CERT_LIFETIME
    assert cert.not_valid_before_utc == DEFAULT_NOW
    # Long expired "now", like every real krel certificate.
    assert cert.not_valid_after_utc < datetime.now(UTC)
    assert list(cert.subject) == []
    san = ext.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.critical
    assert san.value.get_values_for_type(x509.RFC822Name) == [DEFAULT_IDENTITY]
    key_usage = ext.get_extension_for_class(x509.KeyUsage)
    assert key_usage.critical and key_usage.value.digital_signature
    eku = ext.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert x509.oid.ExtendedKeyUsageOID.CODE_SIGNING in eku
    ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    ext.get_extension_for_class(x509.AuthorityKeyIdentifier)
    v1 = ext.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")).value
    assert isinstance(v1, x509.UnrecognizedExtension)
    assert v1.value == DEFAULT_ISSUER.encode()
    v2 = ext.get_extension_for_oid(x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")).value
    assert isinstance(v2, x509.UnrecognizedExtension)
    assert v2.value == b"\x0c" + bytes([len(DEFAULT_ISSUER)]) + DEFAULT_ISSUER.encode()
    scts = ext.get_extension_for_class(x509.PrecertificateSignedCertificateTimestamps).value
    assert len(scts) == 1
    assert scts[0].log_id == stack.ct_log.log_id
    assert scts[0].entry_type == x509.certificate_transparency.LogEntryType.PRE_CERTIFICATE


@pytest.mark.parametrize(("choice", "v1", "v2"), [("v1", True, False), ("v2", False, True)])
def test_issuer_extensions_can_be_chosen(
    stack: FakeSigstore, choice: Any, v1: bool, v2: bool
) -> None:
    oids = {
        e.oid.dotted_string
        for e in stack.sign_blob(b"x", issuer_extensions=choice).certificate.extensions
    }
    assert ("1.3.6.1.4.1.57264.1.1" in oids) is v1
    assert ("1.3.6.1.4.1.57264.1.8" in oids) is v2


def test_uuid_is_the_leaf_hash_of_sigstores_own_hashedrekord(stack: FakeSigstore) -> None:
    blob = stack.sign_blob(ARTIFACT)
    # Independently of the fake: the body sigstore-python itself would expect, canonicalized.
    expected = _hashedrekord_from_parts(blob.certificate, blob.signature, hashed(ARTIFACT))
    body = rfc8785.dumps(expected.model_dump(mode="json", by_alias=True))
    assert blob.uuid == hashlib.sha256(b"\x00" + body).hexdigest()
    assert blob.logged_uuid == blob.uuid
    response = stack.rekor_response(blob.uuid)
    assert response is not None
    (entry,) = response.values()
    assert base64.b64decode(entry["body"]) == body


def test_trusted_root_and_trust_config_load(stack: FakeSigstore) -> None:
    config = ClientTrustConfig.from_json(stack.client_trust_config_json("http://127.0.0.1:1"))
    root = config.trusted_root
    assert len(root.get_fulcio_certs()) == 2
    assert root._inner.tlogs[0].base_url == "http://127.0.0.1:1"
    assert root.get_timestamp_authorities() == []


# --------------------------------------------------------------------------------------------
# The real verifier accepts what the fake serves over HTTP
# --------------------------------------------------------------------------------------------


async def test_verifier_accepts_entry_fetched_by_uuid(
    stack: FakeSigstore, rekor_url: str, verifier: Verifier
) -> None:
    blob = stack.sign_blob(ARTIFACT)
    status, response = await get_entry(rekor_url, blob.uuid)
    assert status == 200
    # Rekor keys its answer by the 80-hex entry UUID (tree ID + UUID).
    (key,) = response
    assert len(key) == 80 and key.endswith(blob.uuid)
    entry = response[key]
    assert (
        entry["logID"]
        == hashlib.sha256(
            base64.b64decode(stack.trusted_root(rekor_url)["tlogs"][0]["publicKey"]["rawBytes"])
        ).hexdigest()
    )
    assert entry["integratedTime"] == int(DEFAULT_NOW.timestamp()) + 1

    bundle = bundle_from(blob, response)
    verifier.verify_artifact(hashed(ARTIFACT), bundle, identity_policy())

    # The 80-hex form answers the same entry.
    status, again = await get_entry(rekor_url, key)
    assert status == 200 and list(again) == [key]


async def test_signing_clock_is_respected(
    stack: FakeSigstore, rekor_url: str, verifier: Verifier
) -> None:
    # Sub-second signing times exercise the SCT's millisecond timestamp.
    when = datetime(2025, 6, 30, 23, 59, 59, 987654, tzinfo=UTC)
    blob = stack.sign_blob(ARTIFACT, signed_at=when)
    assert blob.certificate.not_valid_before_utc == when.replace(microsecond=0)
    assert blob.integrated_time == int(when.timestamp()) + 1
    verifier.verify_artifact(
        hashed(ARTIFACT), await fetch_bundle(rekor_url, blob), identity_policy()
    )

    stack.advance(3600)
    later = stack.sign_blob(ARTIFACT + b"later")
    assert later.certificate.not_valid_before_utc == DEFAULT_NOW.replace(hour=1)
    bundle = await fetch_bundle(rekor_url, later)
    verifier.verify_artifact(hashed(ARTIFACT + b"later"), bundle, identity_policy())


async def test_bundle_json_round_trips(
    stack: FakeSigstore, rekor_url: str, verifier: Verifier
) -> None:
    blob = stack.sign_blob(ARTIFACT)
    bundle = Bundle.from_json((await fetch_bundle(rekor_url, blob)).to_json())
    verifier.verify_artifact(hashed(ARTIFACT), bundle, identity_policy())


@pytest.mark.parametrize("choice", ["both", "v1", "v2"])
async def test_verifier_accepts_each_issuer_extension_layout(
    stack: FakeSigstore, rekor_url: str, verifier: Verifier, choice: Any
) -> None:
    blob = stack.sign_blob(ARTIFACT, issuer_extensions=choice)
    bundle = await fetch_bundle(rekor_url, blob)
    verifier.verify_artifact(
        hashed(ARTIFACT), bundle, either_issuer_policy(DEFAULT_IDENTITY, DEFAULT_ISSUER)
    )
    if choice == "v2":
        # `policy.Identity(issuer=...)` reads only the legacy .1.1 extension.
        with pytest.raises(Error):
            verifier.verify_artifact(hashed(ARTIFACT), bundle, identity_policy())


async def test_proofs_follow_the_growing_tree(
    stack: FakeSigstore, rekor_url: str, verifier: Verifier
) -> None:
    blobs = []
    for n in range(9):
        data = ARTIFACT + bytes([n])
        blobs.append((data, stack.sign_blob(data)))
        stack.advance(7)
    # Every index of a 9-leaf tree (uneven right edge), each proven against the current size.
    for data, blob in blobs:
        bundle = await fetch_bundle(rekor_url, blob)
        assert bundle.log_entry._inner.inclusion_proof.tree_size == 9
        verifier.verify_artifact(hashed(data), bundle, identity_policy())
    # An entry added after the server started extends the tree for everybody.
    stack.sign_blob(b"late")
    bundle = await fetch_bundle(rekor_url, blobs[0][1])
    assert bundle.log_entry._inner.inclusion_proof.tree_size == 10
    verifier.verify_artifact(hashed(blobs[0][0]), bundle, identity_policy())


async def test_retrieve_answers_a_list_and_omits_unknown(
    stack: FakeSigstore, rekor_url: str, verifier: Verifier
) -> None:
    first, second = stack.sign_blob(b"one"), stack.sign_blob(b"two")
    unknown = "ab" * 32
    status, answer = await retrieve(
        rekor_url, {"entryUUIDs": [second.uuid, unknown, stack.rekor.entry_uuid(first.uuid)]}
    )
    assert status == 200
    assert [next(iter(item))[16:] for item in answer] == [second.uuid, first.uuid]
    verifier.verify_artifact(hashed(b"two"), bundle_from(second, answer[0]), identity_policy())

    status, answer = await retrieve(rekor_url, {"entryUUIDs": [unknown]})
    assert (status, answer) == (200, [])


async def test_unknown_uuid_is_a_json_404(stack: FakeSigstore, rekor_url: str) -> None:
    status, body = await get_entry(rekor_url, "cd" * 32)
    assert status == 404
    assert body["code"] == 404 and isinstance(body["message"], str)
    status, body = await get_entry(rekor_url, "not-a-uuid")
    assert status == 400 and body["code"] == 400


async def test_request_log_counts_calls(stack: FakeSigstore, rekor_url: str) -> None:
    blob = stack.sign_blob(ARTIFACT)
    await get_entry(rekor_url, blob.uuid)
    await retrieve(rekor_url, {"entryUUIDs": [blob.uuid]})
    assert stack.requests == [
        ("GET", f"/api/v1/log/entries/{blob.uuid}"),
        ("POST", "/api/v1/log/entries/retrieve"),
    ]


async def test_injected_failures_then_recovery(stack: FakeSigstore, rekor_url: str) -> None:
    blob = stack.sign_blob(ARTIFACT)
    stack.rekor.fail_next(2, status=503)
    assert (await get_entry(rekor_url, blob.uuid))[0] == 503
    assert (await get_entry(rekor_url, blob.uuid))[0] == 503
    assert (await get_entry(rekor_url, blob.uuid))[0] == 200
    assert len(stack.requests) == 3


# --------------------------------------------------------------------------------------------
# Every negative knob is rejected by the real verifier
# --------------------------------------------------------------------------------------------

Break = Callable[[FakeSigstore], tuple[SignedBlob, policy.VerificationPolicy]]

# Each case: how to sign, the policy to verify with, and the reason the verifier must give
# (so a case cannot pass by failing for some incidental reason).
NEGATIVE_CASES: dict[str, tuple[Break, str]] = {
    "image identity, not the binaries'": (
        lambda s: (s.sign_blob(ARTIFACT, identity=IMAGE_IDENTITY), identity_policy()),
        "policies succeeded",
    ),
    "wrong issuer": (
        lambda s: (
            s.sign_blob(ARTIFACT, issuer="https://token.actions.githubusercontent.com"),
            either_issuer_policy(DEFAULT_IDENTITY, DEFAULT_ISSUER),
        ),
        "policies succeeded",
    ),
    "v2 issuer disagrees with v1": (
        lambda s: (
            s.sign_blob(ARTIFACT, issuer_v2="https://evil.example"),
            policy.AllOf(
                [
                    policy.Identity(identity=DEFAULT_IDENTITY, issuer=DEFAULT_ISSUER),
                    policy.OIDCIssuerV2(DEFAULT_ISSUER),
                ]
            ),
        ),
        "OIDCIssuerV2 does not match",
    ),
    "untrusted CA (same names, other keys)": (
        lambda s: (s.sign_blob(ARTIFACT, untrusted_ca=True), identity_policy()),
        "certificate chain",
    ),
    "integrated after the cert expired": (
        lambda s: (s.sign_blob(ARTIFACT, integrated_time_offset_s=3600), identity_policy()),
        "not valid at validation time",
    ),
    "integrated before the cert was issued": (
        lambda s: (s.sign_blob(ARTIFACT, integrated_time_offset_s=-3600), identity_policy()),
        "not valid at validation time",
    ),
    "signature over other bytes": (
        lambda s: (s.sign_blob(ARTIFACT, sign_other_bytes=b"something else"), identity_policy()),
        "Signature is invalid for input",
    ),
}


@pytest.mark.parametrize("case", list(NEGATIVE_CASES))
async def test_verifier_rejects(
    stack: FakeSigstore, rekor_url: str, verifier: Verifier, case: str
) -> None:
    make, reason = NEGATIVE_CASES[case]
    blob, policy_ = make(stack)
    bundle = await fetch_bundle(rekor_url, blob)  # the entry exists in every one of these
    with pytest.raises(Error, match=reason):
        verifier.verify_artifact(hashed(ARTIFACT), bundle, policy_)


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (FakeSigstore.corrupt_inclusion_proof, "inclusion proof contains invalid root hash"),
        (FakeSigstore.corrupt_set, "SET: invalid inclusion promise"),
        (FakeSigstore.corrupt_checkpoint, "invalid root hash signature"),
    ],
)
@pytest.mark.parametrize("log_size", [1, 5])
async def test_verifier_rejects_tampered_log_answers(
    stack: FakeSigstore,
    rekor_url: str,
    verifier: Verifier,
    corrupt: Callable[[FakeSigstore, str], None],
    reason: str,
    log_size: int,
) -> None:
    blob = stack.sign_blob(ARTIFACT)
    for n in range(log_size - 1):
        stack.sign_blob(bytes([n]))
    good = await fetch_bundle(rekor_url, blob)
    verifier.verify_artifact(hashed(ARTIFACT), good, identity_policy())
    corrupt(stack, blob.uuid)
    bundle = await fetch_bundle(rekor_url, blob)
    with pytest.raises(Error, match=reason):
        verifier.verify_artifact(hashed(ARTIFACT), bundle, identity_policy())


async def test_missing_entries_are_404(stack: FakeSigstore, rekor_url: str) -> None:
    unlogged = stack.sign_blob(ARTIFACT, log=False)
    assert unlogged.logged_uuid is None and unlogged.log_index is None
    assert (await get_entry(rekor_url, unlogged.uuid))[0] == 404

    forgotten = stack.sign_blob(ARTIFACT)
    assert (await get_entry(rekor_url, forgotten.uuid))[0] == 200
    stack.forget(forgotten.uuid)
    assert (await get_entry(rekor_url, forgotten.uuid))[0] == 404
    assert (await retrieve(rekor_url, {"entryUUIDs": [forgotten.uuid]})) == (200, [])


async def test_entry_logged_for_another_artifact(
    stack: FakeSigstore, rekor_url: str, verifier: Verifier
) -> None:
    blob = stack.sign_blob(ARTIFACT, logged_data=b"another artifact")
    assert blob.logged_uuid is not None and blob.logged_uuid != blob.uuid
    assert (await get_entry(rekor_url, blob.uuid))[0] == 404
    # Even if a client picked up the other entry, it does not match these materials.
    status, response = await get_entry(rekor_url, blob.logged_uuid)
    assert status == 200
    with pytest.raises(Error, match="inconsistent with other materials"):
        verifier.verify_artifact(hashed(ARTIFACT), bundle_from(blob, response), identity_policy())


# --------------------------------------------------------------------------------------------
# sigstore's own CLI, offline, on the bundle a mirror would store
# --------------------------------------------------------------------------------------------


def _cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    # Keep the CLI away from the user's TUF cache and any proxy; nothing here needs either.
    env.update(
        XDG_DATA_HOME=str(tmp_path / "xdg-data"),
        XDG_CACHE_HOME=str(tmp_path / "xdg-cache"),
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    return env


def _write_mirror_files(
    stack: FakeSigstore, tmp_path: Path, name: str, data: bytes, **opts: Any
) -> Path:
    """An artifact plus `<file>.sigstore.json`, as the mirror stores them."""
    blob = stack.sign_blob(data, **opts)
    response = stack.rekor_response(blob.uuid)
    assert response is not None
    path = tmp_path / name
    path.write_bytes(data)
    (tmp_path / f"{name}.sigstore.json").write_text(bundle_from(blob, response).to_json())
    return path


def test_sigstore_cli_verifies_bundle_offline(stack: FakeSigstore, tmp_path: Path) -> None:
    # The URL is never contacted offline; it only has to be a valid trust-config entry.
    _, trust_config = stack.write_trust_files(tmp_path / "trust", "http://127.0.0.1:9")
    kubectl = _write_mirror_files(stack, tmp_path, "kubectl", ARTIFACT)
    kubeadm = _write_mirror_files(stack, tmp_path, "kubeadm", ARTIFACT + b"adm")
    impostor = _write_mirror_files(stack, tmp_path, "impostor", b"x", identity=IMAGE_IDENTITY)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "sigstore", "--trust-config", str(trust_config),
                   "verify", "identity", "--offline",
                   "--cert-identity", DEFAULT_IDENTITY, "--cert-oidc-issuer", DEFAULT_ISSUER,
                   *args]  # fmt: skip
        return subprocess.run(
            command, capture_output=True, text=True, env=_cli_env(tmp_path), timeout=60
        )

    # Explicit --bundle for one file, and the default `<file>.sigstore.json` for several.
    done = cli("--bundle", f"{kubectl}.sigstore.json", str(kubectl))
    assert done.returncode == 0, done.stderr
    assert f"OK: {kubectl}" in done.stderr
    done = cli(str(kubectl), str(kubeadm))
    assert done.returncode == 0, done.stderr
    assert f"OK: {kubeadm}" in done.stderr
    done = cli(str(impostor))
    assert done.returncode != 0
    assert "FAIL:" in done.stderr


async def test_sigstore_cli_detached_materials_online(
    stack: FakeSigstore, rekor_url: str, tmp_path: Path
) -> None:
    """The CLI's .sig/.crt mode looks the entry up with `POST .../retrieve/ {"entries"}`."""
    _, trust_config = stack.write_trust_files(tmp_path / "trust", rekor_url)
    blob = stack.sign_blob(ARTIFACT)
    artifact = tmp_path / "kubectl"
    artifact.write_bytes(ARTIFACT)
    # The upstream .sig works as is; the CLI wants the certificate as PEM, not base64 of it.
    (tmp_path / "kubectl.sig").write_bytes(blob.sig)
    (tmp_path / "kubectl.crt").write_bytes(blob.cert_pem)

    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "sigstore", "--trust-config", str(trust_config),
        "verify", "identity",
        "--signature", str(tmp_path / "kubectl.sig"),
        "--certificate", str(tmp_path / "kubectl.crt"),
        "--cert-identity", DEFAULT_IDENTITY, "--cert-oidc-issuer", DEFAULT_ISSUER,
        str(artifact),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_cli_env(tmp_path),
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, stderr.decode()
    assert ("POST", "/api/v1/log/entries/retrieve/") in stack.requests
