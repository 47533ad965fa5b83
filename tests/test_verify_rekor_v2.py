"""Rekor v2 bundles (hashedrekord 0.0.2, time from an RFC 3161 timestamp, no SET) through the
one offline check: what a release published with cosign v3 against Rekor v2 looks like.

First a real one, sigstore-python's staging test asset: it must verify against the staging trust
root sigstore-python embeds, with the identity in its certificate, and fail for a flipped byte,
under the production root, or for another identity. Offline only: the embedded roots, never TUF.
Then the fake stack's own (its log plus ``tests.fakes.tsa.FakeTSA``), for the cases a real vector
cannot show: an untrusted timestamp authority, a timestamp outside the certificate's validity.
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
from tests.fakes.sigstore_stack import DEFAULT_IDENTITY, DEFAULT_ISSUER, FakeSigstore
from tests.fakes.tsa import FakeTSA

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


# --------------------------------------------------------------------------------------------
# The fake stack's Rekor v2 bundles
# --------------------------------------------------------------------------------------------

FAKE_ARTIFACT = b"\x7fELF kubectl v2 " * 64


@pytest.fixture
def stack() -> FakeSigstore:
    stack = FakeSigstore(timestamp_authority=True)
    for i in range(3):  # siblings for the inclusion proof
        stack.sign_blob(b"padding %d" % i)
    return stack


@pytest.fixture
def fake_checker(stack: FakeSigstore, tmp_path: Path) -> BundleChecker:
    root_path, _ = stack.write_trust_files(tmp_path, "http://127.0.0.1:9")
    return BundleChecker(
        load_trust_root(str(root_path)), [IdentityConfig(DEFAULT_IDENTITY, DEFAULT_ISSUER)]
    )


def test_fake_rekor_v2_bundle_verifies_with_its_detached_pair(
    stack: FakeSigstore, fake_checker: BundleChecker
) -> None:
    bundle, blob = stack.published_bundle_v2(FAKE_ARTIFACT)
    verified = fake_checker.check_bundle(
        NAME, sha256_hex(FAKE_ARTIFACT), bundle, sig_text=blob.sig, cert_text=blob.cert
    )
    assert verified.bundle_bytes == bundle
    assert (verified.form, verified.log_index) == ("rekor-v2", 3)
    assert verified.identity == DEFAULT_IDENTITY


def _edit(bundle: bytes, *path: str | int) -> bytes:
    document = json.loads(bundle)
    holder = document
    for step in path[:-1]:
        holder = holder[step]
    raw = base64.b64decode(holder[path[-1]])
    holder[path[-1]] = base64.b64encode(_flip(raw, 0)).decode()
    return json.dumps(document).encode()


FAKE_HOSTILE: dict[str, tuple[dict[str, object], str]] = {
    "trusted root lists no timestamp authority": (
        {"stack_without_tsa": True},
        "lists no timestamp authority",
    ),
    "timestamp from an untrusted authority": (
        {"tsa": "untrusted"},
        "none of its RFC 3161 timestamps verifies",
    ),
    "no timestamp at all": ({"timestamp": False}, "neither a signed entry timestamp"),
    "timestamp after the certificate expired": (
        {"timestamp_offset_s": 3600},
        "not valid at validation time",
    ),
    "another identity": (
        {"identity": "krel-trust@k8s-releng-prod.iam.gserviceaccount.com"},
        "wrong identity",
    ),
    "untrusted CA": ({"untrusted_ca": True}, "failed to build timestamp certificate chain"),
    "signature over other bytes": (
        {"sign_other_bytes": b"something else"},
        "Signature is invalid for input",
    ),
    "bundle for another file": ({"checked": b"another file"}, "the bundle is for another file"),
    "broken inclusion proof": ({"flip": ROOT_HASH}, "invalid log entry"),
}


@pytest.mark.parametrize("case", sorted(FAKE_HOSTILE))
def test_fake_rekor_v2_bundle_refused(
    stack: FakeSigstore, fake_checker: BundleChecker, tmp_path: Path, case: str
) -> None:
    options, reason = FAKE_HOSTILE[case]
    options = dict(options)
    checked = options.pop("checked", FAKE_ARTIFACT)
    flip = options.pop("flip", None)
    if options.pop("tsa", None) == "untrusted":
        options["tsa"] = FakeTSA(stack.now)
    if options.pop("stack_without_tsa", False):
        stack.timestamp_authority = False
        root_path, _ = stack.write_trust_files(tmp_path, "http://127.0.0.1:9")
        identities = [IdentityConfig(DEFAULT_IDENTITY, DEFAULT_ISSUER)]
        fake_checker = BundleChecker(load_trust_root(str(root_path)), identities)
    bundle, _ = stack.published_bundle_v2(FAKE_ARTIFACT, **options)
    if flip is not None:
        bundle = _edit(bundle, *flip)  # type: ignore[misc]
    with pytest.raises(SignatureError, match=reason) as info:
        fake_checker.check_bundle(NAME, sha256_hex(checked), bundle)  # type: ignore[arg-type]
    assert str(info.value).startswith(NAME)
