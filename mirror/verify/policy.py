"""Who may have signed: the identity policy, as sigstore ``VerificationPolicy`` objects.

A file passes if its certificate matches any configured (identity, issuer) pair, and the
manifest records which pair matched. The issuer is checked in whichever of Fulcio's two issuer
extensions the certificate carries: sigstore's own ``Identity`` policy reads only the legacy
one, and newer certificates may carry only the current one.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography import x509
from cryptography.x509 import ExtensionNotFound
from cryptography.x509.oid import ObjectIdentifier
from sigstore.errors import VerificationError
from sigstore.verify.policy import AnyOf, OIDCIssuer, OIDCIssuerV2, VerificationPolicy

from mirror.config import IdentityConfig

_ISSUER_V1_OID = ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
_ISSUER_V2_OID = ObjectIdentifier("1.3.6.1.4.1.57264.1.8")


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

    At least one must be present, and every present one must match.
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
