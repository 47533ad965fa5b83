"""A real Rekor v2 bundle (sigstore-python's staging test asset) through the one offline check.

Its time comes from an RFC 3161 timestamp, not a SET, so this is what a release published with
cosign v3 against Rekor v2 looks like. It must verify against the staging trust root that
sigstore-python embeds, with the identity in its certificate, and fail for a flipped byte, under
the production root, or for another identity. Offline only: the embedded root, never TUF.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest
from cryptography import x509
from sigstore.models import Bundle, ClientTrustConfig

from mirror.config import IdentityConfig
from mirror.errors import SignatureError
from mirror.verify import BundleChecker, TrustRoot, compat, load_trust_root
from tests.fakes.sigstore_stack import FakeSigstore

VECTOR = Path(__file__).resolve().parent / "vectors/staging-rekor-v2"
ARTIFACT = (VECTOR / "staging-rekor-v2.txt").read_bytes()
BUNDLE = (VECTOR / "staging-rekor-v2.txt.sigstore.json").read_bytes()
# Dressed as a release file: the name only labels messages.
NAME = "release/v1.36.0/bin/linux/amd64/kubectl"
ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")


@pytest.fixture(autouse=True)
def _embedded_roots_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An empty TUF cache: offline loads can only come from the roots sigstore embeds.
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def embedded(kind: str) -> TrustRoot:
    config = ClientTrustConfig.staging(offline=True)
    if kind == "production":
        config = ClientTrustConfig.production(offline=True)
    root = config.trusted_root
    return TrustRoot(root, compat.trusted_root_json(root), f"embedded {kind}")


def signer() -> IdentityConfig:
    """The identity and issuer the bundle's own certificate names."""
    cert = Bundle.from_json(BUNDLE).signing_certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    (email,) = san.get_values_for_type(x509.RFC822Name)
    issuer = cert.extensions.get_extension_for_oid(ISSUER_V1).value
    assert isinstance(issuer, x509.UnrecognizedExtension)
    return IdentityConfig(email, issuer.value.decode())


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_real_rekor_v2_bundle_verifies_against_the_staging_root() -> None:
    identity = signer()
    assert identity == IdentityConfig("jku@goto.fi", "https://github.com/login/oauth")
    checker = BundleChecker(embedded("staging"), [identity])
    verified = checker.check_bundle(NAME, sha256_hex(ARTIFACT), BUNDLE)
    assert verified.bundle_bytes == BUNDLE  # stored as published, byte for byte
    assert verified.identity == "jku@goto.fi"
    assert (verified.form, verified.log_index) == ("rekor-v2", 645)
    assert verified.media_type == "application/vnd.dev.sigstore.bundle.v0.3+json"


def test_staging_root_written_to_a_file_works_as_a_pinned_trust_root(tmp_path: Path) -> None:
    # How a config pins it: verify.trusted_root = "<path>"; no special "staging" setting needed.
    path = tmp_path / "trusted_root.json"
    path.write_text(embedded("staging").json_text)
    checker = BundleChecker(load_trust_root(str(path)), [signer()])
    assert checker.check_bundle(NAME, sha256_hex(ARTIFACT), BUNDLE).form == "rekor-v2"


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def _flip_in_bundle(*path: str | int) -> bytes:
    """The bundle with one bit flipped in the base64-decoded field at ``path``."""
    document = json.loads(BUNDLE)
    holder = document
    for step in path[:-1]:
        holder = holder[step]
    raw = base64.b64decode(holder[path[-1]])
    holder[path[-1]] = base64.b64encode(_flip(raw, len(raw) - 5)).decode()
    return json.dumps(document, indent=2).encode()


SIGNATURE = ("messageSignature", "signature")
TIMESTAMP = ("verificationMaterial", "timestampVerificationData", "rfc3161Timestamps", 0,
             "signedTimestamp")  # fmt: skip
ROOT_HASH = ("verificationMaterial", "tlogEntries", 0, "inclusionProof", "rootHash")


@pytest.mark.parametrize(
    ("case", "root", "identity", "artifact", "bundle", "reason"),
    [
        ("a flipped byte in the file", "staging", None, _flip(ARTIFACT, 40), BUNDLE,
         "the bundle is for another file"),
        # The timestamp is over the signature: a changed signature has no verified time.
        ("a flipped bit in the signature", "staging", None, ARTIFACT,
         _flip_in_bundle(*SIGNATURE), "signing time cannot be verified"),
        ("a flipped bit in the timestamp", "staging", None, ARTIFACT,
         _flip_in_bundle(*TIMESTAMP), "signing time cannot be verified"),
        ("a flipped bit in the inclusion proof", "staging", None, ARTIFACT,
         _flip_in_bundle(*ROOT_HASH), "invalid log entry"),
        ("the production root", "production", None, ARTIFACT, BUNDLE,
         "signing time cannot be verified"),
        ("another identity", "staging",
         IdentityConfig("krel-staging@k8s-releng-prod.iam.gserviceaccount.com",
                        "https://github.com/login/oauth"),
         ARTIFACT, BUNDLE, "wrong identity"),
        ("another issuer", "staging",
         IdentityConfig("jku@goto.fi", "https://accounts.google.com"),
         ARTIFACT, BUNDLE, "wrong issuer"),
    ],
)  # fmt: skip
def test_real_rekor_v2_bundle_fails_when_anything_differs(
    case: str,
    root: str,
    identity: IdentityConfig | None,
    artifact: bytes,
    bundle: bytes,
    reason: str,
) -> None:
    checker = BundleChecker(embedded(root), [identity or signer()])
    with pytest.raises(SignatureError, match=reason) as info:
        checker.check_bundle(NAME, sha256_hex(artifact), bundle)
    assert str(info.value).startswith(NAME)


def test_timestamped_bundle_under_a_root_without_timestamp_authority_says_so(
    tmp_path: Path,
) -> None:
    root_path, _ = FakeSigstore().write_trust_files(tmp_path, "http://127.0.0.1:9")
    checker = BundleChecker(load_trust_root(str(root_path)), [signer()])
    with pytest.raises(SignatureError) as info:
        checker.check_bundle(NAME, sha256_hex(ARTIFACT), BUNDLE)
    assert "signing time cannot be verified" in str(info.value)
    assert "lists no timestamp authority" in str(info.value)
    assert info.value.hint is not None and "production" in info.value.hint
