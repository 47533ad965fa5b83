"""Sigstore verification of release files: the only module that imports sigstore.

A dl.k8s.io file ships as ``p`` + ``p.sig`` (base64 DER ECDSA signature) + ``p.cert`` (base64 of
a PEM Fulcio certificate), with no transparency-log proof. We compute the Rekor entry's UUID
offline (RFC 6962 leaf hash of the RFC 8785 hashedrekord body), fetch that entry, insist its body
is exactly the one we computed, assemble a standard Sigstore bundle (v0.3) and let
sigstore-python's ``Verifier`` check it: chain to the trusted Fulcio CA at the log's integrated
time, the embedded SCT, inclusion proof + signed checkpoint + SET, the signature over the
sha256 computed while streaming, and our identity policy. The bundle is what the tree stores
beside the file, so the check can be repeated offline.

Failures are ``SignatureError`` (exit 5) naming the file and the reason; anything unexpected
from sigstore or its dependencies fails closed as a ``SignatureError`` too.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import json
import logging
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.x509 import ExtensionNotFound
from cryptography.x509.oid import ObjectIdentifier
from sigstore.errors import Error as SigstoreError
from sigstore.errors import VerificationError
from sigstore.hashes import Hashed
from sigstore.models import Bundle, ClientTrustConfig, TransparencyLogEntry, TrustedRoot
from sigstore.verify import Verifier
from sigstore.verify.policy import AnyOf, OIDCIssuer, OIDCIssuerV2, VerificationPolicy
from sigstore_models.common.v1 import HashAlgorithm, HashOutput, MessageSignature
from sigstore_models.trustroot import v1 as trustroot_v1

from mirror.config import IdentityConfig
from mirror.errors import ConfigError, HTTPStatusError, SignatureError
from mirror.fetch import Fetcher

log = logging.getLogger(__name__)

_ISSUER_V1_OID = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_ISSUER_V2_OID = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
SIG_MAX_BYTES = 1024
CERT_MAX_BYTES = 16 * 1024


# --- Rekor entry identity -------------------------------------------------------------------


def hashedrekord_body(sha256_hex: str, sig_b64: str, cert_b64: str) -> bytes:
    """The RFC 8785 canonical hashedrekord 0.0.1 body Rekor stores for a cosign blob signature."""
    return rfc8785.dumps(
        {
            "apiVersion": "0.0.1",
            "kind": "hashedrekord",
            "spec": {
                "data": {"hash": {"algorithm": "sha256", "value": sha256_hex}},
                "signature": {"content": sig_b64, "publicKey": {"content": cert_b64}},
            },
        }
    )


def rekor_uuid(body: bytes) -> str:
    """RFC 6962 leaf hash of an entry body: Rekor's entry UUID (without tree-ID prefix)."""
    return hashlib.sha256(b"\x00" + body).hexdigest()


# --- trust root -----------------------------------------------------------------------------


@dataclass(frozen=True)
class TrustRoot:
    """A loaded Sigstore trusted root, with its JSON (stored in the tree) and where it came from."""

    trusted_root: TrustedRoot
    json_text: str
    source: str


def load_trust_root(setting: str) -> TrustRoot:
    """``production`` (TUF refresh, falling back to the cached/embedded root) or a file path."""
    if setting == "production":
        try:
            config = ClientTrustConfig.production(offline=False)
            source = "production (TUF, refreshed)"
        except Exception as exc:
            log.warning(
                "could not refresh the Sigstore trust root via TUF (%s); using the cached or "
                "embedded production root, which may be stale",
                exc.__class__.__name__,
            )
            try:
                config = ClientTrustConfig.production(offline=True)
            except Exception as exc2:
                raise ConfigError(
                    f"cannot load the production trust root offline: {exc2}",
                    source="verify.trusted_root",
                ) from None
            source = "production (cached/embedded, offline)"
        root = config.trusted_root
        return TrustRoot(root, root._inner.to_json(), source)
    path = Path(setting)
    try:
        text = path.read_text(encoding="utf-8")
        root = TrustedRoot.from_file(str(path))
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}", source="verify.trusted_root") from None
    except Exception as exc:
        raise ConfigError(
            f"{path}: not a Sigstore trusted_root.json: {str(exc).splitlines()[0]}",
            source="verify.trusted_root",
        ) from None
    return TrustRoot(root, text, str(path))


def is_embedded_production_root(json_bytes: bytes) -> bool:
    """Whether ``json_bytes`` is the Sigstore public-good root this sigstore-python carries
    (or has cached), compared offline; any doubt is a no."""
    try:
        embedded = ClientTrustConfig.production(offline=True).trusted_root._inner.to_json()
        candidate = TrustedRoot(trustroot_v1.TrustedRoot.from_json(json_bytes))._inner.to_json()
    except Exception:  # any parse or cache problem means "not provably the same"
        return False
    return bool(json.loads(embedded) == json.loads(candidate))


# --- identity policy ------------------------------------------------------------------------


class _SubjectIs:
    """The certificate's SAN (email or URI) is exactly ``identity``."""

    def __init__(self, identity: str) -> None:
        self.identity = identity

    def verify(self, cert: x509.Certificate) -> None:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except ExtensionNotFound:
            raise VerificationError("certificate has no subject alternative name") from None
        names = san.get_values_for_type(x509.RFC822Name) + san.get_values_for_type(
            x509.UniformResourceIdentifier
        )
        if self.identity not in names:
            raise VerificationError(
                f"wrong identity: certificate is for {', '.join(names) or 'nobody'}, "
                f"expected {self.identity}"
            )


class _IssuerIs:
    """Whichever OIDC issuer extensions are present (1.1 legacy, 1.8 current) name ``issuer``.

    sigstore's ``Identity`` checks only the legacy extension; newer Fulcio certificates may
    carry only the new one. At least one must be present, and every present one must match.
    """

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer

    def verify(self, cert: x509.Certificate) -> None:
        found = False
        for oid, policy in (
            (_ISSUER_V1_OID, OIDCIssuer(self.issuer)),
            (_ISSUER_V2_OID, OIDCIssuerV2(self.issuer)),
        ):
            try:
                cert.extensions.get_extension_for_oid(oid)
            except ExtensionNotFound:
                continue
            found = True
            try:
                policy.verify(cert)
            except VerificationError as exc:
                raise VerificationError(f"wrong issuer: {exc}") from None
        if not found:
            raise VerificationError("certificate carries no OIDC issuer extension")


class IdentityPolicy:
    """One accepted (identity, issuer) pair."""

    def __init__(self, pair: IdentityConfig) -> None:
        self.pair = pair
        self._checks = (_SubjectIs(pair.identity), _IssuerIs(pair.issuer))

    def verify(self, cert: x509.Certificate) -> None:
        for check in self._checks:
            check.verify(cert)


class AcceptedIdentities:
    """Any of the configured pairs; remembers which one matched, for the manifest."""

    def __init__(self, pairs: Sequence[IdentityConfig]) -> None:
        self.policies = [IdentityPolicy(p) for p in pairs]

    def as_sigstore_policy(self) -> VerificationPolicy:
        if len(self.policies) == 1:
            return self.policies[0]
        return AnyOf(list(self.policies))

    def matching(self, cert: x509.Certificate) -> IdentityConfig:
        reasons = []
        for policy in self.policies:
            try:
                policy.verify(cert)
            except VerificationError as exc:
                reasons.append(str(exc))
                continue
            return policy.pair
        raise VerificationError("; ".join(reasons))


# --- verification ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Verified:
    """A signature that checked out, and the bundle proving it."""

    bundle_json: str
    identity: str
    log_index: int


def _decode_signature(name: str, sig_text: bytes) -> tuple[str, bytes]:
    text = sig_text.decode("ascii", errors="replace").strip()
    try:
        der = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{name}.sig: not base64") from None
    if not der:
        raise SignatureError(f"{name}.sig: empty")
    return text, der


def _decode_certificate(name: str, cert_text: bytes) -> tuple[str, x509.Certificate]:
    text = cert_text.decode("ascii", errors="replace").strip()
    try:
        pem = base64.b64decode(text, validate=True)
        cert = x509.load_pem_x509_certificate(pem)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{name}.cert: not base64 of a PEM certificate") from None
    return text, cert


class SignatureChecker:
    """Verifies dl.k8s.io signatures for one run; builds the sigstore ``Verifier`` once."""

    def __init__(
        self,
        trust_root: TrustRoot,
        identities: Sequence[IdentityConfig],
        *,
        rekor_url: str,
        fetcher: Fetcher | None,
        executor: Executor | None,
    ) -> None:
        self.trust_root = trust_root
        self.identities = AcceptedIdentities(identities)
        self.policy = self.identities.as_sigstore_policy()
        self.rekor_url = rekor_url.rstrip("/")
        self.fetcher = fetcher
        self.executor = executor
        try:
            self.verifier = Verifier(trusted_root=trust_root.trusted_root)
        except SigstoreError as exc:
            raise ConfigError(f"unusable trust root: {exc}", source=trust_root.source) from None

    async def check(
        self, name: str, sha256_hex: str, sig_text: bytes, cert_text: bytes
    ) -> Verified:
        """Verify a downloaded file (by the digest computed while streaming it)."""
        sig_b64, sig_der = _decode_signature(name, sig_text)
        cert_b64, cert = _decode_certificate(name, cert_text)
        body = hashedrekord_body(sha256_hex, sig_b64, cert_b64)
        entry = await self._rekor_entry(name, rekor_uuid(body), body)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self.executor, self._verify_entry, name, sha256_hex, cert, sig_der, entry
        )

    async def _rekor_entry(self, name: str, uuid: str, body: bytes) -> dict[str, Any]:
        """The log entry for ``body``: GET by UUID, then the retrieve endpoint as a fallback."""
        if self.fetcher is None:
            raise SignatureError(f"{name}: no Rekor access in this mode")
        answer: Any = None
        try:
            raw = await self.fetcher.bytes(f"{self.rekor_url}/api/v1/log/entries/{uuid}")
            answer = _json(name, raw)
        except HTTPStatusError as exc:
            if exc.status != 404:
                raise
        if answer is None:
            try:
                raw = await self.fetcher.bytes(
                    f"{self.rekor_url}/api/v1/log/entries/retrieve",
                    method="POST",
                    json_body={"entryUUIDs": [uuid]},
                )
                listed = _json(name, raw)
            except HTTPStatusError as exc:
                if exc.status != 404:
                    raise
                listed = []
            answer = listed[0] if isinstance(listed, list) and listed else None
        if not isinstance(answer, dict) or not answer:
            raise SignatureError(
                f"{name}: no transparency log entry (Rekor UUID {uuid}) for this signature"
            )
        if len(answer) != 1:
            raise SignatureError(f"{name}: Rekor answered with {len(answer)} entries, expected 1")
        entry = next(iter(answer.values()))
        try:
            logged_body = base64.b64decode(entry["body"], validate=True)
        except (KeyError, TypeError, binascii.Error, ValueError):
            raise SignatureError(f"{name}: Rekor entry has no readable body") from None
        if logged_body != body:
            raise SignatureError(f"{name}: Rekor entry {uuid} is for another artifact or signature")
        return answer

    def _verify_entry(
        self,
        name: str,
        sha256_hex: str,
        cert: x509.Certificate,
        sig_der: bytes,
        answer: dict[str, Any],
    ) -> Verified:
        try:
            entry = TransparencyLogEntry._from_v1_response(answer)
            # Bundle.from_parts leaves out the message digest; cosign and sigstore-go read it.
            signature = MessageSignature(
                message_digest=HashOutput(
                    algorithm=HashAlgorithm.SHA2_256,
                    digest=base64.b64encode(bytes.fromhex(sha256_hex)),
                ),
                signature=base64.b64encode(sig_der),
            )
            bundle = Bundle._from_parts(cert, signature, entry)
            self._verify_bundle(bundle, sha256_hex)
            pair = self.identities.matching(cert)
            log_index = int(entry._inner.log_index)
            return Verified(bundle.to_json(), pair.identity, log_index)
        except SigstoreError as exc:
            raise SignatureError(f"{name}: signature rejected: {_first_line(exc)}") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise SignatureError(f"{name}: malformed Rekor entry: {_first_line(exc)}") from None
        except Exception as exc:
            raise SignatureError(
                f"{name}: verification failed unexpectedly ({exc.__class__.__name__}: "
                f"{_first_line(exc)})"
            ) from None

    def _verify_bundle(self, bundle: Bundle, sha256_hex: str) -> None:
        digest = bytes.fromhex(sha256_hex)
        hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=digest)
        self.verifier.verify_artifact(hashed, bundle, self.policy)

    def check_bundle(
        self,
        name: str,
        sha256_hex: str,
        bundle_json: str,
        *,
        sig_text: bytes | None = None,
        cert_text: bytes | None = None,
    ) -> str:
        """Offline re-verification of a stored bundle; returns the identity it matched.

        ``sig_text``/``cert_text``, the upstream ``.sig``/``.cert`` kept beside the file, must
        carry the same signature and certificate as the bundle: nothing else vouches for them.
        """
        try:
            bundle = Bundle.from_json(bundle_json)
            self._verify_bundle(bundle, sha256_hex)
            identity = self.identities.matching(bundle.signing_certificate).identity
        except SigstoreError as exc:
            raise SignatureError(f"{name}: bundle rejected: {_first_line(exc)}") from None
        except Exception as exc:
            raise SignatureError(
                f"{name}: bundle unreadable ({exc.__class__.__name__}: {_first_line(exc)})"
            ) from None
        if sig_text is not None and _decode_signature(name, sig_text)[1] != bundle.signature:
            raise SignatureError(f"{name}.sig: not the signature in the verified bundle")
        if cert_text is not None and _decode_certificate(name, cert_text)[1] != (
            bundle.signing_certificate
        ):
            raise SignatureError(f"{name}.cert: not the certificate in the verified bundle")
        return identity


def _json(name: str, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except Exception:  # ValueError, but also RecursionError on hostile nesting
        raise SignatureError(f"{name}: Rekor answered with something not JSON") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or exc.__class__.__name__
    return text.splitlines()[0]
