"""Online verification of a detached ``.sig`` + ``.cert`` pair through a Rekor v1 lookup.

A detached pair carries no transparency-log proof. We compute the Rekor entry's UUID offline
(RFC 6962 leaf hash of the RFC 8785 hashedrekord 0.0.1 body), fetch that entry, insist its body
is exactly the one we computed, assemble a standard Sigstore bundle (v0.3 JSON) from the answer,
and hand it to the one offline check, ``BundleChecker.check_bundle``. The bundle is what the
tree stores beside the file, so the same check can be repeated with no network.

Rekor v2 has no lookup API; its entries only ever arrive inside a published bundle, which
needs no lookup at all.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import functools
import hashlib
import json
from concurrent.futures import Executor
from typing import Any

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from mirror.errors import HTTPStatusError, SignatureError
from mirror.fetch import Fetcher
from mirror.verify.bundle import BundleChecker, Verified
from mirror.verify.detached import decode_certificate, decode_signature

_BUNDLE_V03 = "application/vnd.dev.sigstore.bundle.v0.3+json"


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


class RekorChecker:
    """Verifies detached pairs for one run: looks each entry up, then checks offline."""

    def __init__(
        self,
        bundles: BundleChecker,
        *,
        rekor_url: str,
        fetcher: Fetcher,
        executor: Executor | None = None,
    ) -> None:
        self.bundles = bundles
        self.rekor_url = rekor_url.rstrip("/")
        self.fetcher = fetcher
        self.executor = executor

    async def check(
        self, name: str, sha256_hex: str, sig_text: bytes, cert_text: bytes
    ) -> Verified:
        """Verify a downloaded file by the digest computed while streaming it."""
        bundle_json = await self.lookup(name, sha256_hex, sig_text, cert_text)
        # (5) The one offline check, off the event loop (a verify is 1-2 ms of CPU).
        check = functools.partial(self.bundles.check_bundle, name, sha256_hex, bundle_json)
        verified = await asyncio.get_running_loop().run_in_executor(self.executor, check)
        return dataclasses.replace(verified, assembled=True)

    async def lookup(self, name: str, sha256_hex: str, sig_text: bytes, cert_text: bytes) -> str:
        """Steps (1)-(4): the bundle for a detached pair, assembled from the log's answer but
        not yet verified (the caller hands it to ``BundleChecker.check_bundle``)."""
        # (1) The detached pair, decoded (malformed sidecars fail before any request).
        sig_b64, sig_der = decode_signature(name, sig_text)
        cert_b64, cert = decode_certificate(name, cert_text)
        # (2) The entry the signer must have logged, and its UUID, computed offline.
        body = hashedrekord_body(sha256_hex, sig_b64, cert_b64)
        # (3) The log's answer for exactly that body.
        answer = await self._entry(name, rekor_uuid(body), body)
        # (4) A standard bundle from the answer.
        return assemble_bundle(name, sha256_hex, sig_der, cert, answer)

    async def _entry(self, name: str, uuid: str, body: bytes) -> dict[str, Any]:
        """The log entry for ``body``: GET by UUID, then the retrieve endpoint as a fallback."""
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


def assemble_bundle(
    name: str, sha256_hex: str, sig_der: bytes, cert: x509.Certificate, answer: dict[str, Any]
) -> str:
    """A Sigstore bundle v0.3 (protobuf JSON mapping) from a Rekor v1 entry answer.

    Rekor v1 writes hashes and the log ID in hex; the bundle format wants base64, and 64-bit
    integers as strings. The message digest is included: cosign and sigstore-go read it.
    """
    try:
        (entry,) = answer.values()
        verification = entry["verification"]
        proof = verification["inclusionProof"]
        log_entry = {
            "logIndex": _uint(entry["logIndex"]),
            "logId": {"keyId": _hex_to_b64(entry["logID"])},
            "kindVersion": {"kind": "hashedrekord", "version": "0.0.1"},
            "integratedTime": _uint(entry["integratedTime"]),
            "inclusionPromise": {
                "signedEntryTimestamp": _b64(verification["signedEntryTimestamp"]),
            },
            "inclusionProof": {
                "logIndex": _uint(proof["logIndex"]),
                "rootHash": _hex_to_b64(proof["rootHash"]),
                "treeSize": _uint(proof["treeSize"]),
                "hashes": [_hex_to_b64(h) for h in proof["hashes"]],
                "checkpoint": {"envelope": _str(proof["checkpoint"])},
            },
            "canonicalizedBody": _b64(entry["body"]),
        }
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise SignatureError(
            f"{name}: malformed Rekor entry: {exc.__class__.__name__} {exc}".rstrip()
        ) from None
    document = {
        "mediaType": _BUNDLE_V03,
        "verificationMaterial": {
            "certificate": {"rawBytes": _encode(cert.public_bytes(Encoding.DER))},
            "tlogEntries": [log_entry],
        },
        "messageSignature": {
            "messageDigest": {
                "algorithm": "SHA2_256",
                "digest": _encode(bytes.fromhex(sha256_hex)),
            },
            "signature": _encode(sig_der),
        },
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def _uint(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a non-negative integer: {value!r}")
    return str(value)


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"not a string: {value!r}")
    return value


def _hex_to_b64(value: object) -> str:
    return _encode(bytes.fromhex(_str(value)))


def _b64(value: object) -> str:
    """``value`` if it is strict base64 (it is copied into the bundle as is)."""
    base64.b64decode(_str(value), validate=True)
    return _str(value)


def _encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _json(name: str, raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except Exception:  # ValueError, but also RecursionError on hostile nesting
        raise SignatureError(f"{name}: Rekor answered with something not JSON") from None
