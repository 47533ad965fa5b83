"""A fake Sigstore stack that the real sigstore-python verifier accepts.

This module ties the Sigstore side together and is its one import path (the pieces live in
``fulcio`` and ``rekor``):

* ``CertificateAuthority`` (``fulcio``) -- a Fulcio look-alike: a P-384 root and intermediate
  issuing 10-minute ECDSA P-256 leaf certificates shaped like real Fulcio ones (empty subject,
  critical SAN email, codeSigning EKU, OIDC issuer extensions, exactly one embedded SCT).
* ``CTLog`` (``fulcio``) -- a certificate-transparency log key that signs RFC 6962
  precertificate SCTs.
* ``RekorLog`` (``rekor``) -- a Rekor v1 look-alike holding hashedrekord 0.0.1 entries in an
  RFC 6962 Merkle tree, answering with inclusion proofs, signed checkpoints and SETs on the real
  v1 API shapes (served by an aiohttp ``web.Application``), with a request log and knobs to
  break it.
* ``FakeSigstore`` (here) -- ties them together: ``sign_blob`` produces the dl.k8s.io sidecars
  (``.sig``/``.cert``) and logs the entry; ``trusted_root_json`` / ``client_trust_config_json``
  produce the trust documents sigstore-python (library and CLI) needs to verify against it.

Nothing here mocks the verifier: every signature, proof and certificate is real cryptography, so
anything ``sigstore.verify.Verifier`` accepts here it would accept from the public-good instance
with the same shapes. No network traffic leaves the process except to the aiohttp app served on
127.0.0.1. Its keys are made per process: a LOCAL DEMONSTRATION and test fixture, never a trust
anchor for real data.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from mirror.demo import bundles
from mirror.demo.bundles import BUNDLE_MEDIA_TYPES
from mirror.demo.fulcio import (
    CERT_LIFETIME,
    CTFE_URI,
    DEFAULT_IDENTITY,
    DEFAULT_ISSUER,
    DEFAULT_NOW,
    FULCIO_URI,
    OPERATOR,
    CertificateAuthority,
    CTLog,
    IssuerExtensions,
    b64,
    rfc3339,
    spki_der,
)
from mirror.demo.rekor import LogEntry, RekorLog, hashedrekord_body, rekor_uuid
from mirror.demo.tsa import FakeTSA

__all__ = [
    "BUNDLE_MEDIA_TYPES",
    "CERT_LIFETIME",
    "DEFAULT_IDENTITY",
    "DEFAULT_ISSUER",
    "DEFAULT_NOW",
    "CTLog",
    "CertificateAuthority",
    "FakeSigstore",
    "IssuerExtensions",
    "LogEntry",
    "RekorLog",
    "SignedBlob",
    "hashedrekord_body",
    "rekor_uuid",
]


# --------------------------------------------------------------------------------------------
# The whole stack
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SignedBlob:
    """What signing one file produced: the upstream sidecars and what was logged."""

    data_sha256: bytes
    #: `<file>.sig` exactly as dl.k8s.io serves it: base64 of the DER signature, no newline.
    sig: bytes
    #: `<file>.cert` exactly as dl.k8s.io serves it: base64 of the PEM leaf, no newline.
    cert: bytes
    signature: bytes
    certificate: x509.Certificate
    #: The UUID a verifier computes from (sha256(data), sig, cert).
    uuid: str
    #: The UUID of the entry actually logged (None with `log=False`); differs from `uuid`
    #: when the entry was logged for another artifact.
    logged_uuid: str | None
    log_index: int | None
    integrated_time: int | None
    signed_at: datetime = field(repr=False)

    @property
    def cert_pem(self) -> bytes:
        return base64.b64decode(self.cert)


class FakeSigstore:
    """A CA chain, CT log and Rekor log whose keys `trusted_root_json` names.

    Keys are generated once per instance: seven EC keys, about 5 ms, so a function-scoped
    fixture is affordable (and keeps each test's log and request record to itself). Pass a
    timezone-aware `now`; the default lies in the past, so certificates are expired "now".
    """

    def __init__(
        self,
        *,
        now: datetime = DEFAULT_NOW,
        rekor_name: str | None = None,
        timestamp_authority: bool = False,
    ) -> None:
        #: The signing clock: `sign_blob` signs "at" this instant unless told otherwise.
        self.now = now
        self.ca = CertificateAuthority("fake-sigstore", now)
        # A look-alike chain that is NOT in the trusted root (for "untrusted CA" tests).
        self.untrusted_ca = CertificateAuthority("fake-sigstore", now)
        self.ct_log = CTLog()
        self.tsa = FakeTSA(now)
        #: Whether the trusted root lists `tsa` (needed for Rekor v2 style bundles).
        self.timestamp_authority = timestamp_authority
        self.rekor = RekorLog(rekor_name) if rekor_name else RekorLog()

    def published_bundle(self, blob: SignedBlob, **options: Any) -> bytes:
        """`<file>.sigstore.json` for `blob` as a cosign v3 signer publishes it (see
        `bundles.published_bundle` for the options)."""
        return bundles.published_bundle(self, blob, **options)

    def published_bundle_v2(self, data: bytes, **options: Any) -> tuple[bytes, SignedBlob]:
        """A Rekor v2 style bundle for `data` and its signing materials (see
        `bundles.published_bundle_v2`)."""
        return bundles.published_bundle_v2(self, data, **options)

    # -- clock ---------------------------------------------------------------------------------

    def advance(self, seconds: float) -> datetime:
        """Move the signing clock forward (returns the new "now")."""
        self.now += timedelta(seconds=seconds)
        return self.now

    # -- signing -------------------------------------------------------------------------------

    def sign_blob(
        self,
        data: bytes,
        *,
        identity: str = DEFAULT_IDENTITY,
        issuer: str = DEFAULT_ISSUER,
        issuer_v2: str | None = None,
        issuer_extensions: IssuerExtensions = "both",
        log: bool = True,
        untrusted_ca: bool = False,
        integrated_time_offset_s: int = 0,
        sign_other_bytes: bytes | None = None,
        logged_data: bytes | None = None,
        signed_at: datetime | None = None,
    ) -> SignedBlob:
        """Sign `data` like krel does, returning the dl.k8s.io sidecars.

        Options (all default to the well-behaved case):
        - `identity`, `issuer`: SAN email and OIDC issuer in the leaf; `issuer_v2` overrides the
          value of the .1.8 extension only (for "v1 and v2 disagree" tests);
        - `issuer_extensions`: which issuer extensions the leaf carries;
        - `log=False`: no Rekor entry at all;
        - `untrusted_ca=True`: the leaf comes from a chain that is not in the trusted root;
        - `integrated_time_offset_s`: shifts the logged integrated time (the SET still covers
          it), e.g. +3600 puts it outside the 10-minute certificate validity;
        - `sign_other_bytes`: the signature is made over these bytes, yet the entry is logged
          for `data` (a real Rekor would refuse it): the entry is found, the signature is bad;
        - `logged_data`: the entry is logged for these bytes' digest instead, as for another
          artifact: no entry matches `data`;
        - `signed_at`: sign at this instant instead of the stack's clock.
        """
        when = (signed_at or self.now).astimezone(UTC)
        not_before = when.replace(microsecond=0)
        key = ec.generate_private_key(ec.SECP256R1())
        ca = self.untrusted_ca if untrusted_ca else self.ca
        cert = ca.issue_leaf(
            public_key=key.public_key(),
            identity=identity,
            issuer=issuer,
            issuer_v2=issuer if issuer_v2 is None else issuer_v2,
            issuer_extensions=issuer_extensions,
            not_before=not_before,
            sct_timestamp_ms=int(when.timestamp() * 1000),
            ct_log=self.ct_log,
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)

        digest = hashlib.sha256(data).digest()
        signed_digest = digest
        if sign_other_bytes is not None:
            signed_digest = hashlib.sha256(sign_other_bytes).digest()
        # cosign signs the sha256 of the blob (prehashed ECDSA P-256, DER signature).
        signature = key.sign(signed_digest, ec.ECDSA(Prehashed(hashes.SHA256())))

        body = hashedrekord_body(digest, signature, cert_pem)
        logged_uuid: str | None = None
        log_index: int | None = None
        integrated_time: int | None = None
        if log:
            logged_body = body
            if logged_data is not None:
                logged_body = hashedrekord_body(
                    hashlib.sha256(logged_data).digest(), signature, cert_pem
                )
            # Rekor integrates a second after Fulcio issued the certificate.
            integrated_time = int(not_before.timestamp()) + 1 + integrated_time_offset_s
            entry = self.rekor.append(logged_body, integrated_time)
            logged_uuid, log_index = entry.uuid, entry.log_index

        return SignedBlob(
            data_sha256=digest,
            sig=b64(signature).encode("ascii"),
            cert=b64(cert_pem).encode("ascii"),
            signature=signature,
            certificate=cert,
            uuid=rekor_uuid(body),
            logged_uuid=logged_uuid,
            log_index=log_index,
            integrated_time=integrated_time,
            signed_at=when,
        )

    # -- breaking the log ----------------------------------------------------------------------

    def corrupt_inclusion_proof(self, uuid: str) -> None:
        """Serve a wrong sibling hash in this entry's inclusion proof."""
        self.rekor.tamper(uuid, "inclusion_proof")

    def corrupt_set(self, uuid: str) -> None:
        """Serve an invalid signed entry timestamp (inclusion promise) for this entry."""
        self.rekor.tamper(uuid, "set")

    def corrupt_checkpoint(self, uuid: str) -> None:
        """Serve a validly signed checkpoint whose root disagrees with this entry's proof."""
        self.rekor.tamper(uuid, "checkpoint")

    def forget(self, uuid: str) -> None:
        """Make the server answer 404 for this entry."""
        self.rekor.forget(uuid)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path) of every request the Rekor app has seen."""
        return self.rekor.requests

    def rekor_app(self) -> web.Application:
        return self.rekor.app()

    def rekor_response(self, uuid: str) -> dict[str, Any] | None:
        """What `GET /api/v1/log/entries/{uuid}` would answer right now, without HTTP."""
        return self.rekor.response(uuid)

    # -- trust documents -----------------------------------------------------------------------

    def _valid_from(self) -> str:
        # Sigstore ignores keys whose validFor starts after the wall clock, and `now` may be
        # anywhere; start a year before whichever is earlier.
        return rfc3339(min(self.now, datetime.now(UTC)) - timedelta(days=365))

    def trusted_root(self, rekor_url: str) -> dict[str, Any]:
        """The trusted root naming this stack's Rekor key, CT log key and Fulcio chain."""
        start = self._valid_from()

        def ecdsa_key(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
            return {
                "rawBytes": b64(spki_der(key.public_key())),
                "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                "validFor": {"start": start},
            }

        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [
                {
                    "baseUrl": rekor_url.rstrip("/"),
                    "hashAlgorithm": "SHA2_256",
                    "publicKey": ecdsa_key(self.rekor.key),
                    "logId": {"keyId": b64(self.rekor.log_id)},
                }
            ],
            "certificateAuthorities": [
                {
                    "subject": {"organization": OPERATOR, "commonName": self.ca.name},
                    "uri": FULCIO_URI,
                    "certChain": {
                        "certificates": [
                            {"rawBytes": b64(c.public_bytes(serialization.Encoding.DER))}
                            for c in self.ca.chain
                        ]
                    },
                    "validFor": {"start": start},
                }
            ],
            "ctlogs": [
                {
                    "baseUrl": CTFE_URI,
                    "hashAlgorithm": "SHA2_256",
                    "publicKey": ecdsa_key(self.ct_log.key),
                    "logId": {"keyId": b64(self.ct_log.log_id)},
                }
            ],
            "timestampAuthorities": (
                [self.tsa.trusted_root_entry(start)] if self.timestamp_authority else []
            ),
        }

    def trusted_root_json(self, rekor_url: str) -> str:
        """`trusted_root.json` contents (for `TrustedRoot.from_file` or the tool's config)."""
        return json.dumps(self.trusted_root(rekor_url), indent=2)

    def client_trust_config_json(self, rekor_url: str) -> str:
        """A client trust config for `python -m sigstore --trust-config FILE verify ...`.

        The CLI only accepts a full ClientTrustConfig (trusted root + signing config); the
        signing config is required by the schema but unused when verifying.
        """
        start = self._valid_from()
        config = {
            "mediaType": "application/vnd.dev.sigstore.clienttrustconfig.v0.1+json",
            "trustedRoot": self.trusted_root(rekor_url),
            "signingConfig": {
                "mediaType": "application/vnd.dev.sigstore.signingconfig.v0.2+json",
                "caUrls": [
                    {
                        "url": FULCIO_URI,
                        "majorApiVersion": 1,
                        "validFor": {"start": start},
                        "operator": OPERATOR,
                    }
                ],
                "oidcUrls": [],
                "rekorTlogUrls": [
                    {
                        "url": rekor_url.rstrip("/"),
                        "majorApiVersion": 1,
                        "validFor": {"start": start},
                        "operator": OPERATOR,
                    }
                ],
                "tsaUrls": [],
                "rekorTlogConfig": {"selector": "ANY"},
                "tsaConfig": {"selector": "ANY"},
            },
        }
        return json.dumps(config, indent=2)

    def write_trust_files(self, directory: Path, rekor_url: str) -> tuple[Path, Path]:
        """Write `trusted_root.json` and `trust_config.json` into `directory`; return both."""
        directory.mkdir(parents=True, exist_ok=True)
        root_path = directory / "trusted_root.json"
        config_path = directory / "trust_config.json"
        root_path.write_text(self.trusted_root_json(rekor_url))
        config_path.write_text(self.client_trust_config_json(rekor_url))
        return root_path, config_path
