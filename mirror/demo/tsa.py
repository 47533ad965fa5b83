"""A fake RFC 3161 timestamp authority whose tokens sigstore-python's verifier accepts.

Rekor v2 entries carry no SET: a bundle's signing time comes from an RFC 3161 timestamp over
its signature, signed by a timestamp authority the trust root lists. ``FakeTSA`` is such an
authority: a P-384 root and a P-256 signing certificate with the critical id-kp-timeStamping
EKU, producing ``TimeStampResp`` DER (status granted, a CMS SignedData over a TSTInfo, signed
attributes content-type, message-digest and signing-certificate-v2), which is what Sigstore's
timestamp authority returns. cryptography cannot build CMS with a TSTInfo content type, so the
structures are encoded here, by hand, in DER.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["FakeTSA"]

_SHA256 = "2.16.840.1.101.3.4.2.1"
_ECDSA_SHA256 = "1.2.840.10045.4.3.2"
_SIGNED_DATA = "1.2.840.113549.1.7.2"
_TST_INFO = "1.2.840.113549.1.9.16.1.4"
_ATTR_CONTENT_TYPE = "1.2.840.113549.1.9.3"
_ATTR_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
_ATTR_SIGNING_CERTIFICATE_V2 = "1.2.840.113549.1.9.16.2.47"
# Sigstore's TSA policy arc; any OID would do, the verifier is not told to expect one.
_POLICY = "1.3.6.1.4.1.57264.2"


def _tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = (n.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + n.to_bytes(size, "big") + content


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _set(*items: bytes) -> bytes:
    # DER: the elements of a SET OF in ascending order of their encodings.
    return _tlv(0x31, b"".join(sorted(items)))


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True))


def _oid(dotted: str) -> bytes:
    return asn1.encode_der(x509.ObjectIdentifier(dotted))


def _octets(data: bytes) -> bytes:
    return _tlv(0x04, data)


def _algorithm(dotted: str) -> bytes:
    return _seq(_oid(dotted))


def _b64_der(cert: x509.Certificate) -> str:
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def _generalized_time(when: datetime) -> bytes:
    return _tlv(0x18, when.astimezone(UTC).strftime("%Y%m%d%H%M%SZ").encode("ascii"))


class FakeTSA:
    """A timestamp authority: a root CA and one timestamping certificate under it."""

    def __init__(self, now: datetime, name: str = "fake-sigstore-tsa") -> None:
        self.name = name
        not_before = now - timedelta(days=365)
        not_after = now + timedelta(days=3650)
        self.root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}-root")])
        self.root_cert = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(self.root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.root_key.public_key()), False
            )
            .sign(self.root_key, hashes.SHA384())
        )
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(root_name)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            # RFC 3161 2.3: the one purpose, and critical.
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), True)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.root_key.public_key()),
                False,
            )
            .sign(self.root_key, hashes.SHA384())
        )
        self._serial = 0

    def timestamp(self, message: bytes, at: datetime) -> bytes:
        """A ``TimeStampResp`` (DER) stating that sha256(``message``) existed at ``at``."""
        self._serial += 1
        tst_info = _seq(
            _int(1),
            _oid(_POLICY),
            _seq(_algorithm(_SHA256), _octets(hashlib.sha256(message).digest())),
            _int(self._serial),
            _generalized_time(at),
        )
        cert_der = self.cert.public_bytes(serialization.Encoding.DER)
        attributes = _set(
            _seq(_oid(_ATTR_CONTENT_TYPE), _set(_oid(_TST_INFO))),
            _seq(_oid(_ATTR_MESSAGE_DIGEST), _set(_octets(hashlib.sha256(tst_info).digest()))),
            _seq(
                _oid(_ATTR_SIGNING_CERTIFICATE_V2),
                _set(_seq(_seq(_seq(_octets(hashlib.sha256(cert_der).digest()))))),
            ),
        )
        # CMS signs the DER of the attributes as a SET; they travel as [0] IMPLICIT.
        signature = self.key.sign(attributes, ec.ECDSA(hashes.SHA256()))
        signer_info = _seq(
            _int(1),
            _seq(self.cert.issuer.public_bytes(), _int(self.cert.serial_number)),
            _algorithm(_SHA256),
            b"\xa0" + attributes[1:],
            _algorithm(_ECDSA_SHA256),
            _octets(signature),
        )
        signed_data = _seq(
            _int(3),
            _set(_algorithm(_SHA256)),
            _seq(_oid(_TST_INFO), _tlv(0xA0, _octets(tst_info))),
            _tlv(0xA0, cert_der),
            _set(signer_info),
        )
        token = _seq(_oid(_SIGNED_DATA), _tlv(0xA0, signed_data))
        return _seq(_seq(_int(0)), token)

    def trusted_root_entry(self, valid_from: str) -> dict[str, Any]:
        """This authority as a ``timestampAuthorities`` element of a trusted root."""
        return {
            "subject": {"organization": "fake-sigstore.test", "commonName": self.name},
            "uri": "https://tsa.fake-sigstore.invalid",
            "certChain": {
                "certificates": [
                    {
                        "rawBytes": base64.b64encode(
                            c.public_bytes(serialization.Encoding.DER)
                        ).decode()
                    }
                    for c in (self.cert, self.root_cert)
                ]
            },
            "validFor": {"start": valid_from},
        }
