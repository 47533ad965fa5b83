"""A fake Sigstore stack that the real sigstore-python verifier accepts.

This module owns everything on the "Sigstore side" of the tests:

* ``CertificateAuthority`` -- a Fulcio look-alike: a P-384 root and intermediate issuing
  10-minute ECDSA P-256 leaf certificates shaped like real Fulcio ones (empty subject, critical
  SAN email, codeSigning EKU, OIDC issuer extensions, exactly one embedded SCT).
* ``CTLog`` -- a certificate-transparency log key that signs RFC 6962 precertificate SCTs.
* ``RekorLog`` -- a Rekor v1 look-alike holding hashedrekord 0.0.1 entries in an RFC 6962 Merkle
  tree, answering with inclusion proofs, signed checkpoints and SETs on the real v1 API shapes
  (served by an aiohttp ``web.Application``), with a request log and knobs to break it.
* ``FakeSigstore`` -- ties them together: ``sign_blob`` produces the dl.k8s.io sidecars
  (``.sig``/``.cert``) and logs the entry; ``trusted_root_json`` / ``client_trust_config_json``
  produce the trust documents sigstore-python (library and CLI) needs to verify against it.

Nothing here mocks the verifier: every signature, proof and certificate is real cryptography, so
anything ``sigstore.verify.Verifier`` accepts here it would accept from the public-good instance
with the same shapes. No network traffic leaves the process except to the aiohttp app the tests
serve on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import rfc8785
from aiohttp import web
from aiohttp.typedefs import Handler
from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
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
_FULCIO_URI = "https://fulcio.fake-sigstore.invalid"
_CTFE_URI = "https://ctfe.fake-sigstore.invalid"
_OPERATOR = "fake-sigstore.test"


# --------------------------------------------------------------------------------------------
# Small encoding helpers
# --------------------------------------------------------------------------------------------


def _spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_id(key: ec.EllipticCurvePublicKey) -> bytes:
    """Sigstore's (and RFC 6962's) key/log ID: sha256 of the SubjectPublicKeyInfo DER."""
    return hashlib.sha256(_spki_der(key)).digest()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _rfc3339(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _flip_first_byte(data: bytes) -> bytes:
    return bytes([data[0] ^ 0x01]) + data[1:]


def _leaf_hash(body: bytes) -> bytes:
    """RFC 6962 leaf hash; also the Rekor entry UUID (as hex)."""
    return hashlib.sha256(b"\x00" + body).digest()


def _node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def hashedrekord_body(sha256_digest: bytes, signature: bytes, cert_pem: bytes) -> bytes:
    """The RFC 8785 canonical hashedrekord 0.0.1 body Rekor stores for a blob signature."""
    entry: dict[str, Any] = {
        "apiVersion": "0.0.1",
        "kind": "hashedrekord",
        "spec": {
            "data": {"hash": {"algorithm": "sha256", "value": sha256_digest.hex()}},
            "signature": {
                "content": _b64(signature),
                "publicKey": {"content": _b64(cert_pem)},
            },
        },
    }
    return rfc8785.dumps(entry)


def rekor_uuid(body: bytes) -> str:
    """The 64-hex Rekor UUID of an entry body: hex(sha256(0x00 || body))."""
    return _leaf_hash(body).hex()


# --------------------------------------------------------------------------------------------
# RFC 6962 Merkle tree (recursive definitions; log sizes in tests are small)
# --------------------------------------------------------------------------------------------


def _split(n: int) -> int:
    """Largest power of two strictly smaller than n (n >= 2)."""
    k = 1
    while k << 1 < n:
        k <<= 1
    return k


def _merkle_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) over already-hashed leaves."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = _split(len(leaves))
    return _node_hash(_merkle_root(leaves[:k]), _merkle_root(leaves[k:]))


def _inclusion_path(index: int, leaves: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) from RFC 6962 2.1.1, ordered leaf level first (as Rekor returns it)."""
    if len(leaves) <= 1:
        return []
    k = _split(len(leaves))
    if index < k:
        return [*_inclusion_path(index, leaves[:k]), _merkle_root(leaves[k:])]
    return [*_inclusion_path(index - k, leaves[k:]), _merkle_root(leaves[:k])]


# --------------------------------------------------------------------------------------------
# CT log
# --------------------------------------------------------------------------------------------


class CTLog:
    """A certificate-transparency log key that issues RFC 6962 v1 precertificate SCTs."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.log_id = _key_id(self.key.public_key())

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
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, _OPERATOR),
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
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, _OPERATOR),
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
            precert_tbs, _key_id(self.intermediate_key.public_key()), sct_timestamp_ms
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


# --------------------------------------------------------------------------------------------
# Rekor-like log
# --------------------------------------------------------------------------------------------


@dataclass
class LogEntry:
    """One hashedrekord entry as Rekor holds it."""

    body: bytes
    integrated_time: int
    log_index: int

    @property
    def uuid(self) -> str:
        return rekor_uuid(self.body)


_Tamper = Literal["inclusion_proof", "set", "checkpoint"]


class RekorLog:
    """An append-only hashedrekord log with Rekor v1's HTTP API (the parts clients use)."""

    # Rekor's entry UUIDs are prefixed with the 16-hex tree ID of the shard holding them.
    TREE_ID = 0x1A2B3C4D5E6F7081

    def __init__(self, name: str = "rekor.fake-sigstore.test") -> None:
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.log_id = _key_id(self.key.public_key())
        self.tree_id_hex = f"{self.TREE_ID:016x}"
        # Checkpoint origin as Rekor v1 writes it: "<hostname> - <tree id in decimal>".
        self.origin = f"{name} - {self.TREE_ID}"
        self.entries: list[LogEntry] = []
        self._by_uuid: dict[str, LogEntry] = {}
        self._forgotten: set[str] = set()
        self._tampered: dict[str, set[_Tamper]] = {}
        self._failures: list[int] = []
        self.requests: list[tuple[str, str]] = []

    # -- log state -----------------------------------------------------------------------------

    def append(self, body: bytes, integrated_time: int) -> LogEntry:
        entry = LogEntry(body=body, integrated_time=integrated_time, log_index=len(self.entries))
        if entry.uuid in self._by_uuid:
            # Rekor refuses duplicates (409); the fake just hands back the existing entry.
            return self._by_uuid[entry.uuid]
        self.entries.append(entry)
        self._by_uuid[entry.uuid] = entry
        return entry

    def _normalize(self, uuid: str) -> str | None:
        """64-hex UUID for a 64-hex UUID or an 80-hex entry UUID of this tree; else None."""
        uuid = uuid.lower()
        if len(uuid) == 80 and uuid[:16] == self.tree_id_hex:
            uuid = uuid[16:]
        if len(uuid) != 64 or any(c not in "0123456789abcdef" for c in uuid):
            return None
        return uuid

    def lookup(self, uuid: str) -> LogEntry | None:
        """The entry the server would serve for `uuid` (None if unknown or forgotten)."""
        key = self._normalize(uuid)
        if key is None or key in self._forgotten:
            return None
        return self._by_uuid.get(key)

    def _require(self, uuid: str) -> str:
        key = self._normalize(uuid)
        if key is None or key not in self._by_uuid:
            raise KeyError(f"no such entry: {uuid}")
        return key

    def forget(self, uuid: str) -> None:
        """Serve 404 for this entry from now on (it stays in the tree; other proofs hold)."""
        self._forgotten.add(self._require(uuid))

    def tamper(self, uuid: str, what: _Tamper) -> None:
        """Make the server answer for this entry with a broken `what`."""
        self._tampered.setdefault(self._require(uuid), set()).add(what)

    def fail_next(self, count: int = 1, status: int = 503) -> None:
        """Answer the next `count` API requests with HTTP `status` (for retry tests)."""
        self._failures.extend([status] * count)

    # -- signing -------------------------------------------------------------------------------

    def _sign(self, data: bytes) -> bytes:
        return self.key.sign(data, ec.ECDSA(hashes.SHA256()))

    def signed_checkpoint(self, size: int, root: bytes) -> str:
        """A signed note: origin, size, base64 root, blank line, em-dash signature line."""
        note = f"{self.origin}\n{size}\n{_b64(root)}\n"
        signature = self.log_id[:4] + self._sign(note.encode())
        return f"{note}\n\u2014 {self.name} {_b64(signature)}\n"

    def signed_entry_timestamp(self, entry: LogEntry) -> bytes:
        """The SET: a signature over the RFC 8785 JSON of body/integratedTime/logID/logIndex."""
        payload: dict[str, str | int] = {
            "body": _b64(entry.body),
            "integratedTime": entry.integrated_time,
            "logID": self.log_id.hex(),
            "logIndex": entry.log_index,
        }
        return self._sign(rfc8785.dumps(payload))

    # -- API answers ---------------------------------------------------------------------------

    def entry_uuid(self, uuid: str) -> str:
        """The 80-hex entry UUID (tree ID + UUID) Rekor keys its answers by."""
        return self.tree_id_hex + self._require(uuid)

    def response(self, uuid: str) -> dict[str, Any] | None:
        """The `GET /api/v1/log/entries/{uuid}` JSON for `uuid`, proven against the current
        tree (None where the server would answer 404)."""
        entry = self.lookup(uuid)
        if entry is None:
            return None
        leaves = [_leaf_hash(e.body) for e in self.entries]
        root = _merkle_root(leaves)
        proof = _inclusion_path(entry.log_index, leaves)
        checkpoint = self.signed_checkpoint(len(leaves), root)
        signed_entry_timestamp = self.signed_entry_timestamp(entry)

        tampered = self._tampered.get(entry.uuid, set())
        if "inclusion_proof" in tampered:
            # A wrong sibling hash; a one-entry tree has no siblings, so break the root instead
            # (the checkpoint keeps the true root).
            if proof:
                proof[0] = _flip_first_byte(proof[0])
            else:
                root = _flip_first_byte(root)
        if "set" in tampered:
            # Flip a bit in the signature's last byte: still well-formed DER, no longer valid.
            signed_entry_timestamp = signed_entry_timestamp[:-1] + bytes(
                [signed_entry_timestamp[-1] ^ 0x01]
            )
        if "checkpoint" in tampered:
            # Sign a different root: a valid signature over a note that disagrees with the proof.
            checkpoint = self.signed_checkpoint(len(leaves), _flip_first_byte(root))

        return {
            self.tree_id_hex + entry.uuid: {
                "body": _b64(entry.body),
                "integratedTime": entry.integrated_time,
                "logID": self.log_id.hex(),
                "logIndex": entry.log_index,
                "verification": {
                    "inclusionProof": {
                        "checkpoint": checkpoint,
                        "hashes": [h.hex() for h in proof],
                        "logIndex": entry.log_index,
                        "rootHash": root.hex(),
                        "treeSize": len(leaves),
                    },
                    "signedEntryTimestamp": _b64(signed_entry_timestamp),
                },
            }
        }

    def _find_proposed(self, proposed: Any) -> LogEntry | None:
        """Match a proposed hashedrekord (what `RekorClient` posts) by its canonical UUID."""
        try:
            if proposed["kind"] != "hashedrekord":
                return None
            spec = proposed["spec"]
            body = hashedrekord_body(
                bytes.fromhex(spec["data"]["hash"]["value"]),
                base64.b64decode(spec["signature"]["content"], validate=True),
                base64.b64decode(spec["signature"]["publicKey"]["content"], validate=True),
            )
        except (KeyError, TypeError, ValueError):
            return None
        return self.lookup(rekor_uuid(body))

    # -- HTTP ----------------------------------------------------------------------------------

    def app(self) -> web.Application:
        """The aiohttp application serving the Rekor v1 API subset."""

        @web.middleware
        async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
            self.requests.append((request.method, request.path))
            if self._failures:
                status = self._failures.pop(0)
                return _error(status, "injected failure")
            return await handler(request)

        async def get_entry(request: web.Request) -> web.Response:
            uuid = request.match_info["uuid"]
            if self._normalize(uuid) is None:
                return _error(400, f"invalid entry UUID: {uuid}")
            body = self.response(uuid)
            if body is None:
                return _error(404, "entry not found")
            return web.json_response(body)

        async def get_entry_by_index(request: web.Request) -> web.Response:
            try:
                index = int(request.query["logIndex"])
                entry = self.entries[index]
            except (KeyError, ValueError, IndexError):
                return _error(404, "entry not found")
            body = self.response(entry.uuid)
            return web.json_response(body) if body is not None else _error(404, "entry not found")

        async def retrieve(request: web.Request) -> web.Response:
            try:
                query = await request.json()
            except ValueError:
                return _error(400, "request body is not JSON")
            if not isinstance(query, dict):
                return _error(400, "request body must be an object")
            found: list[LogEntry] = []
            for uuid in query.get("entryUUIDs") or []:
                if isinstance(uuid, str) and (entry := self.lookup(uuid)) is not None:
                    found.append(entry)
            for index in query.get("logIndexes") or []:
                in_range = isinstance(index, int) and 0 <= index < len(self.entries)
                if in_range and (entry := self.lookup(self.entries[index].uuid)) is not None:
                    found.append(entry)
            for proposed in query.get("entries") or []:
                if (entry := self._find_proposed(proposed)) is not None:
                    found.append(entry)
            answers = [self.response(entry.uuid) for entry in found]
            return web.json_response([a for a in answers if a is not None])

        async def log_info(request: web.Request) -> web.Response:
            leaves = [_leaf_hash(e.body) for e in self.entries]
            root = _merkle_root(leaves)
            return web.json_response(
                {
                    "inactiveShards": [],
                    "rootHash": root.hex(),
                    "signedTreeHead": self.signed_checkpoint(len(leaves), root),
                    "treeID": str(self.TREE_ID),
                    "treeSize": len(leaves),
                }
            )

        async def public_key(request: web.Request) -> web.Response:
            pem = self.key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            return web.Response(body=pem, content_type="application/x-pem-file")

        app = web.Application(middlewares=[record])
        app.router.add_get("/api/v1/log", log_info)
        app.router.add_get("/api/v1/log/publicKey", public_key)
        app.router.add_get("/api/v1/log/entries", get_entry_by_index)
        # `RekorClient` posts to ".../retrieve/" (trailing slash); curl users omit it.
        app.router.add_post("/api/v1/log/entries/retrieve", retrieve)
        app.router.add_post("/api/v1/log/entries/retrieve/", retrieve)
        app.router.add_get("/api/v1/log/entries/{uuid}", get_entry)
        return app


def _error(status: int, message: str) -> web.Response:
    # Rekor's error model: {"code": int, "message": str}.
    return web.json_response({"code": status, "message": message}, status=status)


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

    def __init__(self, *, now: datetime = DEFAULT_NOW, rekor_name: str | None = None) -> None:
        #: The signing clock: `sign_blob` signs "at" this instant unless told otherwise.
        self.now = now
        self.ca = CertificateAuthority("fake-sigstore", now)
        # A look-alike chain that is NOT in the trusted root (for "untrusted CA" tests).
        self.untrusted_ca = CertificateAuthority("fake-sigstore", now)
        self.ct_log = CTLog()
        self.rekor = RekorLog(rekor_name) if rekor_name else RekorLog()

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
            sig=_b64(signature).encode("ascii"),
            cert=_b64(cert_pem).encode("ascii"),
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
        return _rfc3339(min(self.now, datetime.now(UTC)) - timedelta(days=365))

    def trusted_root(self, rekor_url: str) -> dict[str, Any]:
        """The trusted root naming this stack's Rekor key, CT log key and Fulcio chain."""
        start = self._valid_from()

        def ecdsa_key(key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
            return {
                "rawBytes": _b64(_spki_der(key.public_key())),
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
                    "logId": {"keyId": _b64(self.rekor.log_id)},
                }
            ],
            "certificateAuthorities": [
                {
                    "subject": {"organization": _OPERATOR, "commonName": self.ca.name},
                    "uri": _FULCIO_URI,
                    "certChain": {
                        "certificates": [
                            {"rawBytes": _b64(c.public_bytes(serialization.Encoding.DER))}
                            for c in self.ca.chain
                        ]
                    },
                    "validFor": {"start": start},
                }
            ],
            "ctlogs": [
                {
                    "baseUrl": _CTFE_URI,
                    "hashAlgorithm": "SHA2_256",
                    "publicKey": ecdsa_key(self.ct_log.key),
                    "logId": {"keyId": _b64(self.ct_log.log_id)},
                }
            ],
            "timestampAuthorities": [],
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
                        "url": _FULCIO_URI,
                        "majorApiVersion": 1,
                        "validFor": {"start": start},
                        "operator": _OPERATOR,
                    }
                ],
                "oidcUrls": [],
                "rekorTlogUrls": [
                    {
                        "url": rekor_url.rstrip("/"),
                        "majorApiVersion": 1,
                        "validFor": {"start": start},
                        "operator": _OPERATOR,
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
