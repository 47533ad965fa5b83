"""The Fulcio side of the demo's Sigstore look-alike: a CA chain issuing Fulcio-shaped leaf
certificates (empty subject, critical SAN email, codeSigning EKU, OIDC issuer extensions) with
exactly one embedded SCT from a CT log key of its own.

Part of a LOCAL DEMONSTRATION: every key is generated per process; see ``sigstore_stack``.
"""

from __future__ import annotations

import base64
import hashlib
import struct
from datetime import UTC, datetime, timedelta
from typing import Literal

from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_IDENTITY = "krel-staging@k8s-releng-prod.iam.gserviceaccount.com"
DEFAULT_ISSUER = "https://accounts.google.com"
# A fixed "now" in the past, so that (like the real ones) every leaf certificate is long expired
# when the tests run: the verifier must check the chain at the log's integrated time.
DEFAULT_NOW = datetime(2026, 1, 1, tzinfo=UTC)
CERT_LIFETIME = timedelta(minutes=10)

IssuerExtensions = Literal["both", "v1", "v2"]

# Fulcio's OIDC issuer extensions: .1.1 is the legacy one (raw UTF-8 bytes, not DER) that
# sigstore's `policy.Identity` checks; .1.8 is the newer one (a DER UTF8String).
OID_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
OID_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
# RFC 6962: the embedded SCT list, and the poison that marks a precertificate.
OID_SCT_LIST = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.2")
OID_CT_POISON = x509.ObjectIdentifier("1.3.6.1.4.1.11129.2.4.3")

# Used only as labels inside the trust documents; `.invalid` can never resolve, so nothing can
# accidentally talk to them.
FULCIO_URI = "https://fulcio.fake-sigstore.invalid"
CTFE_URI = "https://ctfe.fake-sigstore.invalid"
OPERATOR = "fake-sigstore.test"


# --------------------------------------------------------------------------------------------
# Small encoding helpers
# --------------------------------------------------------------------------------------------


def spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    """Sigstore's (and RFC 6962's) key/log ID: sha256 of the SubjectPublicKeyInfo DER."""
    return hashlib.sha256(spki_der(key)).digest()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# --------------------------------------------------------------------------------------------
# CT log
# --------------------------------------------------------------------------------------------


class CTLog:
    """A certificate-transparency log key that issues RFC 6962 v1 precertificate SCTs."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.log_id = key_id(self.key.public_key())

    def sct_list_extension(
        self, precert_tbs: bytes, issuer_key_hash: bytes, timestamp_ms: int
    ) -> x509.UnrecognizedExtension:
        """The SignedCertificateTimestampList extension holding one SCT for `precert_tbs`.

        cryptography can parse SCTs but not build them, so the TLS structures are encoded here.
        `precert_tbs` is the precertificate's TBSCertificate with the poison removed; the
        verifier reconstructs exactly these bytes from the final certificate with the SCT list
        removed (`Certificate.tbs_precertificate_bytes`).
        """
        no_extensions = b""
        # RFC 6962 3.2 digitally-signed struct: sct_version v1(0), signature_type
        # certificate_timestamp(0), timestamp, entry_type precert_entry(1),
        # PreCert{issuer_key_hash, tbs_certificate<1..2^24-1>}, CtExtensions<0..2^16-1>.
        signed = (
            struct.pack("!BBQH", 0, 0, timestamp_ms, 1)
            + issuer_key_hash
            + len(precert_tbs).to_bytes(3, "big")
            + precert_tbs
            + struct.pack("!H", len(no_extensions))
            + no_extensions
        )
        signature = self.key.sign(signed, ec.ECDSA(hashes.SHA256()))
        # SignedCertificateTimestamp: version, LogID, timestamp, extensions, and a
        # DigitallySigned{hash sha256(4), signature ecdsa(3), opaque<0..2^16-1>}.
        sct = (
            struct.pack("!B", 0)
            + self.log_id
            + struct.pack("!QH", timestamp_ms, len(no_extensions))
            + no_extensions
            + struct.pack("!BBH", 4, 3, len(signature))
            + signature
        )
        # SignedCertificateTimestampList: opaque SerializedSCT<1..2^16-1> list<1..2^16-1>.
        serialized = struct.pack("!H", len(sct)) + sct
        sct_list = struct.pack("!H", len(serialized)) + serialized
        # The X.509 extension value is that TLS blob wrapped in an ASN.1 OCTET STRING.
        return x509.UnrecognizedExtension(OID_SCT_LIST, asn1.encode_der(sct_list))


# --------------------------------------------------------------------------------------------
# Fulcio-like CA
# --------------------------------------------------------------------------------------------


class CertificateAuthority:
    """A root + intermediate CA pair issuing Fulcio-shaped short-lived leaf certificates."""

    def __init__(self, name: str, now: datetime) -> None:
        self.name = name
        # Both CA certificates cover a wide window around `now`: a verifier checks them at the
        # integrated time of each entry, which tests may move around.
        not_before = now - timedelta(days=365)
        not_after = now + timedelta(days=3650)

        self.root_key = ec.generate_private_key(ec.SECP384R1())
        root_name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, OPERATOR),
                x509.NameAttribute(NameOID.COMMON_NAME, name),
            ]
        )
        root_ski = x509.SubjectKeyIdentifier.from_public_key(self.root_key.public_key())
        self.root_cert = (
            x509.CertificateBuilder()
            .subject_name(root_name)
            .issuer_name(root_name)
            .public_key(self.root_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(root_ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
                critical=False,
            )
            .sign(self.root_key, hashes.SHA384())
        )

        self.intermediate_key = ec.generate_private_key(ec.SECP384R1())
        intermediate_ski = x509.SubjectKeyIdentifier.from_public_key(
            self.intermediate_key.public_key()
        )
        self.intermediate_cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, OPERATOR),
                        x509.NameAttribute(NameOID.COMMON_NAME, f"{name}-intermediate"),
                    ]
                )
            )
            .issuer_name(root_name)
            .public_key(self.intermediate_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(_ca_key_usage(), critical=True)
            # Real Fulcio intermediates carry codeSigning; sigstore's chain policy allows it.
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(intermediate_ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(root_ski),
                critical=False,
            )
            .sign(self.root_key, hashes.SHA384())
        )
        self._intermediate_ski = intermediate_ski

    @property
    def chain(self) -> list[x509.Certificate]:
        """Intermediate first, root last: the order trusted_root.json lists them in."""
        return [self.intermediate_cert, self.root_cert]

    def issue_leaf(
        self,
        *,
        public_key: ec.EllipticCurvePublicKey,
        identity: str,
        issuer: str,
        issuer_v2: str,
        issuer_extensions: IssuerExtensions,
        not_before: datetime,
        sct_timestamp_ms: int,
        ct_log: CTLog,
    ) -> x509.Certificate:
        """Issue a leaf the way Fulcio does: precertificate -> SCT -> final certificate."""
        # Real Fulcio leaves have an empty subject; the (then mandatory critical) SAN carries
        # the identity.
        extensions: list[tuple[x509.ExtensionType, bool]] = [
            (_leaf_key_usage(), True),
            (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), False),
            (x509.SubjectKeyIdentifier.from_public_key(public_key), False),
            (
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                    self._intermediate_ski
                ),
                False,
            ),
            (x509.SubjectAlternativeName([x509.RFC822Name(identity)]), True),
        ]
        if issuer_extensions in ("both", "v1"):
            # Legacy encoding: the raw URL bytes, not DER.
            extensions.append(
                (x509.UnrecognizedExtension(OID_ISSUER_V1, issuer.encode("utf-8")), False)
            )
        if issuer_extensions in ("both", "v2"):
            extensions.append(
                (x509.UnrecognizedExtension(OID_ISSUER_V2, asn1.encode_der(issuer_v2)), False)
            )

        serial = x509.random_serial_number()

        def build(last: x509.ExtensionType, critical: bool) -> x509.Certificate:
            # Same serial, validity and extension order for precert and final cert, so the
            # precert TBS (poison removed) equals the final TBS with the SCT list removed.
            builder = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([]))
                .issuer_name(self.intermediate_cert.subject)
                .public_key(public_key)
                .serial_number(serial)
                .not_valid_before(not_before)
                .not_valid_after(not_before + CERT_LIFETIME)
            )
            for ext, ext_critical in extensions:
                builder = builder.add_extension(ext, ext_critical)
            builder = builder.add_extension(last, critical)
            return builder.sign(self.intermediate_key, hashes.SHA384())

        precert = build(x509.PrecertPoison(), True)
        precert_tbs = _strip_poison(precert.tbs_certificate_bytes)
        sct_ext = ct_log.sct_list_extension(
            precert_tbs, key_id(self.intermediate_key.public_key()), sct_timestamp_ms
        )
        cert = build(sct_ext, False)
        # Guard the invariant the SCT depends on (checked the way sigstore reconstructs it); a
        # mismatch would otherwise only surface as an opaque "SCT verify failed" much later.
        if cert.tbs_precertificate_bytes != precert_tbs:
            raise AssertionError("precertificate and final certificate TBS differ")
        return cert


def _der_read(data: bytes, offset: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER TLV at `offset`."""
    tag, first = data[offset], data[offset + 1]
    start = offset + 2
    if first < 0x80:
        return tag, start, start + first
    size = first & 0x7F
    length = int.from_bytes(data[start : start + size], "big")
    return tag, start + size, start + size + length


def _der_children(data: bytes) -> list[bytes]:
    """The encoded TLVs directly inside a DER content block."""
    children, offset = [], 0
    while offset < len(data):
        _, _, end = _der_read(data, offset)
        children.append(data[offset:end])
        offset = end
    return children


def _der_wrap(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = (n.bit_length() + 7) // 8
    return bytes([tag, 0x80 | size]) + n.to_bytes(size, "big") + content


def _strip_poison(tbs: bytes) -> bytes:
    """The precertificate TBS with the CT poison extension removed (RFC 6962 3.2).

    cryptography only offers this for final certificates (dropping the SCT list), so the
    precertificate's TBSCertificate is re-encoded here without its poison extension.
    """
    poison_oid = asn1.encode_der(OID_CT_POISON)
    tag, start, end = _der_read(tbs, 0)
    fields = []
    for item in _der_children(tbs[start:end]):
        if item[0] == 0xA3:  # [3] EXPLICIT SEQUENCE OF Extension
            _, seq_start, seq_end = _der_read(item, _der_read(item, 0)[1])
            kept = [
                ext
                for ext in _der_children(item[seq_start:seq_end])
                if _der_children(ext[_der_read(ext, 0)[1] :])[0] != poison_oid
            ]
            item = _der_wrap(0xA3, _der_wrap(0x30, b"".join(kept)))
        fields.append(item)
    return _der_wrap(tag, b"".join(fields))


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
