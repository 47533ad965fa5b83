"""The real-world kubectl v1.26.0-rc.1 signature against Sigstore's production trust root.

The vector has no inclusion proof or SET, so a full bundle cannot be built; this checks the
parts it supports, with the same building blocks the product uses: the Rekor UUID we compute
offline, the signature over the digest, the chain to public-good Fulcio at the integrated time,
the embedded SCT, and our identity policy (krel-staging accepted, krel-trust refused).
"""

from __future__ import annotations

import base64
import json
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from sigstore._internal.sct import verify_sct
from sigstore._internal.timestamp import TimestampSource, TimestampVerificationResult
from sigstore._internal.trust import KeyringPurpose
from sigstore.errors import VerificationError
from sigstore.models import ClientTrustConfig
from sigstore.verify import Verifier

from mirror.config import IdentityConfig
from mirror.verify import AcceptedIdentities, hashedrekord_body, rekor_uuid

# A copy of shared/vectors/kubectl-v1.26.0-rc.1, so a fresh clone carries it.
VECTOR = Path(__file__).resolve().parent / "vectors/kubectl-v1.26.0-rc.1"


@pytest.fixture(scope="module")
def vector() -> dict[str, object]:
    facts = json.loads((VECTOR / "facts.json").read_text())
    sig_text = (VECTOR / "kubectl.sig").read_text().strip()
    cert_text = (VECTOR / "kubectl.cert").read_text().strip()
    cert = x509.load_pem_x509_certificate(base64.b64decode(cert_text))
    return {"facts": facts, "sig": sig_text, "cert_text": cert_text, "cert": cert}


@pytest.fixture(scope="module")
def production_verifier() -> Verifier:
    # offline=True: the embedded/cached production root, no network.
    return Verifier(trusted_root=ClientTrustConfig.production(offline=True).trusted_root)


def test_rekor_uuid_computed_offline_matches_published(vector: dict) -> None:
    facts = vector["facts"]
    body = hashedrekord_body(facts["sha256"], vector["sig"], vector["cert_text"])
    assert rekor_uuid(body) == facts["rekor_uuid"]
    assert facts["rekor_entry_uuid"].endswith(rekor_uuid(body))


def test_signature_verifies_over_the_digest(vector: dict) -> None:
    key = vector["cert"].public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    digest = bytes.fromhex(vector["facts"]["sha256"])
    key.verify(base64.b64decode(vector["sig"]), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    with pytest.raises(InvalidSignature):
        key.verify(base64.b64decode(vector["sig"]), bytes(32), ec.ECDSA(Prehashed(hashes.SHA256())))


def test_chain_and_sct_verify_at_integrated_time(
    vector: dict, production_verifier: Verifier
) -> None:
    when = datetime.fromisoformat(vector["facts"]["integrated_time"].replace("Z", "+00:00"))
    at = TimestampVerificationResult(source=TimestampSource.TRANSPARENCY_SERVICE, time=when)
    chain = production_verifier._verify_chain_at_time(vector["cert"], at)
    verify_sct(
        vector["cert"],
        chain,
        production_verifier._trusted_root.ct_keyring(KeyringPurpose.VERIFY),
    )
    # "now" it is a long-expired 10-minute certificate
    now = TimestampVerificationResult(
        source=TimestampSource.TRANSPARENCY_SERVICE, time=datetime.now().astimezone()
    )
    with pytest.raises(VerificationError):
        production_verifier._verify_chain_at_time(vector["cert"], now)


def test_identity_policy_accepts_krel_staging_and_refuses_krel_trust(vector: dict) -> None:
    facts = vector["facts"]
    good = AcceptedIdentities([IdentityConfig(facts["certificate_identity"], facts["oidc_issuer"])])
    assert good.matching(vector["cert"]).identity == facts["certificate_identity"]
    bad = AcceptedIdentities(
        [IdentityConfig("krel-trust@k8s-releng-prod.iam.gserviceaccount.com", facts["oidc_issuer"])]
    )
    with pytest.raises(VerificationError, match="wrong identity"):
        bad.matching(vector["cert"])


def test_embedded_production_root_is_recognised_offline() -> None:
    from mirror.verify import is_embedded_production_root
    from tests.fakes.sigstore_stack import FakeSigstore

    production = ClientTrustConfig.production(offline=True).trusted_root._inner.to_json()
    assert is_embedded_production_root(production.encode())
    assert not is_embedded_production_root(FakeSigstore().trusted_root_json("http://x").encode())
    assert not is_embedded_production_root(b"{not json")
