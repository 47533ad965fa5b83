"""Sigstore bundles as a cosign v3 signer publishes them (``<file>.sigstore.json``), for the
demo's and the tests' look-alike of dl.k8s.io: built from the fake log's answer, independently
of k8s-mirror's own bundle assembly, in every media type, with a Rekor v1 entry (SET) or a
Rekor v2 one (RFC 3161 timestamp from ``tsa.FakeTSA``, no SET). A local demonstration only.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import rfc8785
from cryptography.hazmat.primitives import serialization

from mirror.demo.fulcio import b64 as _b64
from mirror.demo.tsa import FakeTSA

if TYPE_CHECKING:
    from mirror.demo.sigstore_stack import FakeSigstore, SignedBlob

#: Sigstore bundle media types, by the short names tests use.
BUNDLE_MEDIA_TYPES = {
    "v0.1": "application/vnd.dev.sigstore.bundle+json;version=0.1",
    "v0.2": "application/vnd.dev.sigstore.bundle+json;version=0.2",
    "v0.3": "application/vnd.dev.sigstore.bundle.v0.3+json",
    "v0.3-alt": "application/vnd.dev.sigstore.bundle+json;version=0.3",
}


def _bundle_tlog_entry(answer: dict[str, Any], version: str) -> dict[str, Any]:
    """A bundle's `tlogEntries` element from a Rekor v1-shaped answer (hex -> base64, 64-bit
    integers as strings, as the protobuf JSON mapping writes them)."""
    (entry,) = answer.values()
    proof = entry["verification"]["inclusionProof"]
    return {
        "logIndex": str(entry["logIndex"]),
        "logId": {"keyId": _b64(bytes.fromhex(entry["logID"]))},
        "kindVersion": {"kind": "hashedrekord", "version": version},
        "integratedTime": str(entry["integratedTime"]),
        "inclusionPromise": {"signedEntryTimestamp": entry["verification"]["signedEntryTimestamp"]},
        "inclusionProof": {
            "logIndex": str(proof["logIndex"]),
            "rootHash": _b64(bytes.fromhex(proof["rootHash"])),
            "treeSize": str(proof["treeSize"]),
            "hashes": [_b64(bytes.fromhex(h)) for h in proof["hashes"]],
            "checkpoint": {"envelope": proof["checkpoint"]},
        },
        "canonicalizedBody": entry["body"],
    }


def published_bundle(
    stack: FakeSigstore,
    blob: SignedBlob,
    *,
    media_type: str = "v0.3",
    message_digest: bool = True,
    inclusion_promise: bool = True,
    indent: int | None = 2,
) -> bytes:
    """`<file>.sigstore.json` for `blob` as a cosign-style signer publishes it.

    Built here from the log's current answer (so every tamper knob applies), independently
    of the product's own bundle assembly. `media_type` is a key of `BUNDLE_MEDIA_TYPES`:
    v0.1/v0.2 carry the leaf as a one-element `x509CertificateChain`, v0.3 as
    `certificate`. `inclusion_promise=False` drops the SET (no signed time left at all);
    `message_digest=False` leaves out the optional digest; `indent` shapes the bytes.
    """
    uuid = blob.logged_uuid
    answer = stack.rekor.response(uuid) if uuid is not None else None
    if answer is None:
        raise ValueError("nothing logged for this blob: there is no bundle to publish")
    tlog_entry = _bundle_tlog_entry(answer, "0.0.1")
    if not inclusion_promise:
        del tlog_entry["inclusionPromise"]
    leaf = {"rawBytes": _b64(blob.certificate.public_bytes(serialization.Encoding.DER))}
    material: dict[str, Any] = {"tlogEntries": [tlog_entry]}
    if media_type in ("v0.1", "v0.2"):
        material["x509CertificateChain"] = {"certificates": [leaf]}
    else:
        material["certificate"] = leaf
    signature: dict[str, Any] = {"signature": _b64(blob.signature)}
    if message_digest:
        signature["messageDigest"] = {
            "algorithm": "SHA2_256",
            "digest": _b64(blob.data_sha256),
        }
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPES[media_type],
        "verificationMaterial": material,
        "messageSignature": signature,
    }
    return json.dumps(bundle, indent=indent).encode()


def published_bundle_v2(
    stack: FakeSigstore,
    data: bytes,
    *,
    tsa: FakeTSA | None = None,
    timestamp: bool = True,
    timestamp_offset_s: int = 1,
    **sign_opts: Any,
) -> tuple[bytes, SignedBlob]:
    """A Rekor v2 style `<file>.sigstore.json` for `data`, and the signing materials.

    The entry is hashedrekord 0.0.2, appended to the log (inclusion proof + signed
    checkpoint, no integrated time, no SET); the signing time is an RFC 3161 timestamp over
    the signature from `tsa` (default: the one the trusted root lists), taken
    `timestamp_offset_s` after signing. `timestamp=False` leaves it out. `sign_opts` go to
    `sign_blob` (identity, issuer, untrusted_ca, sign_other_bytes, ...).
    """
    blob = stack.sign_blob(data, log=False, **sign_opts)
    cert_der = blob.certificate.public_bytes(serialization.Encoding.DER)
    body = rfc8785.dumps(
        {
            "apiVersion": "0.0.2",
            "kind": "hashedrekord",
            "spec": {
                "hashedRekordV002": {
                    "data": {"algorithm": "SHA2_256", "digest": _b64(blob.data_sha256)},
                    "signature": {
                        "content": _b64(blob.signature),
                        "verifier": {
                            "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                            "x509Certificate": {"rawBytes": _b64(cert_der)},
                        },
                    },
                }
            },
        }
    )
    entry = stack.rekor.append(body, integrated_time=0)
    answer = stack.rekor.response(entry.uuid)
    assert answer is not None
    tlog_entry = _bundle_tlog_entry(answer, "0.0.2")
    del tlog_entry["inclusionPromise"], tlog_entry["integratedTime"]
    material: dict[str, Any] = {
        "certificate": {"rawBytes": _b64(cert_der)},
        "tlogEntries": [tlog_entry],
    }
    if timestamp:
        when = blob.signed_at + timedelta(seconds=timestamp_offset_s)
        token = (tsa or stack.tsa).timestamp(blob.signature, when)
        material["timestampVerificationData"] = {
            "rfc3161Timestamps": [{"signedTimestamp": _b64(token)}]
        }
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPES["v0.3"],
        "verificationMaterial": material,
        "messageSignature": {
            "messageDigest": {"algorithm": "SHA2_256", "digest": _b64(blob.data_sha256)},
            "signature": _b64(blob.signature),
        },
    }
    return json.dumps(bundle, indent=2).encode(), blob
