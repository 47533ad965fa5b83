"""Pins every private sigstore-python call ``mirror.verify.compat`` makes.

One test per function or message constant there. When a sigstore upgrade changes one of them,
the failure is here, naming it, rather than somewhere inside a sync. The calls are exercised on
real inputs: the fake stack's trust root and bundles, the embedded production root, and the real
Rekor v2 staging vector.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import sigstore
from sigstore.errors import Error, VerificationError
from sigstore.models import Bundle, ClientTrustConfig, TrustedRoot
from sigstore.verify import Verifier, policy

from mirror.verify import compat
from tests.fakes.sigstore_stack import BUNDLE_MEDIA_TYPES, FakeSigstore

VECTOR = Path(__file__).resolve().parent / "vectors/staging-rekor-v2"
STAGING_ARTIFACT = (VECTOR / "staging-rekor-v2.txt").read_bytes()
STAGING_BUNDLE = (VECTOR / "staging-rekor-v2.txt.sigstore.json").read_bytes()


@pytest.fixture(autouse=True)
def _embedded_roots_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def test_the_pinned_sigstore_series_is_installed() -> None:
    # The calls below were checked against this series; pyproject pins it.
    assert sigstore.__version__.startswith("4.5."), sigstore.__version__


def test_trusted_root_from_json_parses_bytes_in_memory() -> None:
    text = FakeSigstore().trusted_root_json("http://127.0.0.1:9")
    root = compat.trusted_root_from_json(text.encode())
    assert isinstance(root, TrustedRoot)
    assert len(root.get_fulcio_certs()) == 2
    # The schema knows a v0.2 root; this sigstore does not verify with one, and says so.
    newer = json.loads(text) | {"mediaType": "application/vnd.dev.sigstore.trustedroot.v0.2+json"}
    with pytest.raises(Error, match="unsupported trusted root format"):
        compat.trusted_root_from_json(json.dumps(newer).encode())
    for malformed in (b"{not json", b'{"mediaType": "nonsense"}'):
        with pytest.raises(ValueError):
            compat.trusted_root_from_json(malformed)


def test_trusted_root_json_serializes_what_was_loaded() -> None:
    text = FakeSigstore().trusted_root_json("http://127.0.0.1:9")
    out = compat.trusted_root_json(compat.trusted_root_from_json(text.encode()))
    assert json.loads(out) == json.loads(text)
    production = ClientTrustConfig.production(offline=True).trusted_root
    document = json.loads(compat.trusted_root_json(production))
    assert document["mediaType"] == "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
    assert document["timestampAuthorities"], "production lists its timestamp authorities"


@pytest.mark.parametrize("media_type", sorted(BUNDLE_MEDIA_TYPES))
def test_media_type_and_log_entry_facts_of_a_rekor_v1_bundle(media_type: str) -> None:
    stack = FakeSigstore()
    stack.sign_blob(b"first")
    blob = stack.sign_blob(b"second")
    bundle = Bundle.from_json(stack.published_bundle(blob, media_type=media_type))
    assert compat.media_type(bundle) == BUNDLE_MEDIA_TYPES[media_type]
    assert compat.log_entry_facts(bundle) == (blob.log_index, "hashedrekord", "0.0.1")


def test_log_entry_facts_of_a_rekor_v2_bundle() -> None:
    bundle = Bundle.from_json(STAGING_BUNDLE)
    assert compat.log_entry_facts(bundle) == (645, "hashedrekord", "0.0.2")


def test_no_verified_time_message() -> None:
    # The staging timestamp cannot verify under production's timestamp authorities.
    verifier = Verifier(trusted_root=ClientTrustConfig.production(offline=True).trusted_root)
    with pytest.raises(VerificationError) as info:
        verifier.verify_artifact(
            STAGING_ARTIFACT, Bundle.from_json(STAGING_BUNDLE), policy.UnsafeNoOp()
        )
    assert compat.NO_VERIFIED_TIME_MESSAGE in str(info.value)


def test_no_timestamp_authority_message() -> None:
    root = compat.trusted_root_from_json(FakeSigstore().trusted_root_json("http://x").encode())
    assert not root.get_timestamp_authorities()
    with pytest.raises(VerificationError) as info:
        Verifier(trusted_root=root).verify_artifact(
            STAGING_ARTIFACT, Bundle.from_json(STAGING_BUNDLE), policy.UnsafeNoOp()
        )
    assert compat.NO_TIMESTAMP_AUTHORITY_MESSAGE in str(info.value)
