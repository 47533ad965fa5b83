"""Offline checking of a Sigstore bundle against a file's digest: the one signature check.

Every signature the mirror accepts passes through ``BundleChecker.check_bundle``: a bundle
published upstream (``<file>.sigstore.json``, checked byte for byte as published), a bundle this
tool assembled from a Rekor answer (``mirror.verify.rekor``), and a bundle stored in the tree
(``verify``, ``import``). It needs no network: sigstore-python's ``Verifier`` checks the
inclusion proof and checkpoint, the SET or the RFC 3161 timestamp, the chain at that time, the
embedded SCT and the signature over the sha256 computed while streaming; our policy checks the
identity. Bundle media types v0.1-v0.3 and Rekor v1 (hashedrekord 0.0.1) and v2 (0.0.2) entries
are accepted when valid.

Every failure is a ``SignatureError`` naming the file; anything unexpected from sigstore or its
dependencies fails closed as one too.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sigstore.errors import Error as SigstoreError
from sigstore.hashes import Hashed
from sigstore.models import Bundle
from sigstore.verify import Verifier
from sigstore_models.common.v1 import HashAlgorithm

from mirror.catalog import BUNDLE_MAX_BYTES
from mirror.config import IdentityConfig
from mirror.errors import ConfigError, SignatureError
from mirror.verify import compat
from mirror.verify.detached import decode_certificate, decode_signature
from mirror.verify.policy import AcceptedIdentities
from mirror.verify.trust import TrustRoot

#: A valid bundle nests about six levels deep.
_JSON_MAX_DEPTH = 32

_REASON_MAX_CHARS = 200
_MEDIA_TYPES = frozenset(t.value for t in Bundle.BundleType)

#: The log entry's form, by its hashedrekord version.
_FORMS = {"0.0.1": "rekor-v1", "0.0.2": "rekor-v2"}


@dataclass(frozen=True)
class Verified:
    """A signature that checked out: the bundle proving it and what the manifest records."""

    #: The bundle checked, as text: for a given bundle exactly its bytes (``bundle_bytes``).
    bundle_json: str
    #: The configured identity the certificate matched.
    identity: str
    log_index: int
    #: ``rekor-v1`` (hashedrekord 0.0.1, time from the SET) or ``rekor-v2`` (hashedrekord
    #: 0.0.2, time from an RFC 3161 timestamp).
    form: str
    media_type: str
    #: True when this tool built the bundle from a Rekor lookup; False for a bundle as given.
    assembled: bool = False

    @property
    def bundle_bytes(self) -> bytes:
        return self.bundle_json.encode("utf-8")


class BundleChecker:
    """Checks bundles under one trust root and identity policy; builds the ``Verifier`` once
    (it is the expensive part) and is safe to share between threads."""

    def __init__(self, trust_root: TrustRoot, identities: Sequence[IdentityConfig]) -> None:
        self.trust_root = trust_root
        self.identities = AcceptedIdentities(identities)
        self.policy = self.identities.as_sigstore_policy()
        try:
            self.verifier = Verifier(trusted_root=trust_root.trusted_root)
        except SigstoreError as exc:
            raise ConfigError(f"unusable trust root: {exc}", source=trust_root.source) from None

    def check_bundle(
        self,
        name: str,
        sha256_hex: str,
        bundle: bytes | str,
        *,
        sig_text: bytes | None = None,
        cert_text: bytes | None = None,
    ) -> Verified:
        """Verify ``bundle`` for the file ``name`` whose sha256 is ``sha256_hex``.

        ``sig_text``/``cert_text``, a ``.sig``/``.cert`` published or kept beside the file,
        must carry the same signature and certificate as the bundle: nothing else vouches
        for them.
        """
        # (1) Bounded input: a hostile bundle costs at most BUNDLE_MAX_BYTES of parsing.
        raw = bundle.encode("utf-8") if isinstance(bundle, str) else bundle
        if len(raw) > BUNDLE_MAX_BYTES:
            raise SignatureError(
                f"{name}: bundle is {len(raw)} bytes, more than the {BUNDLE_MAX_BYTES} allowed"
            )
        # (2) Plain, shallow JSON, no key given twice (a parser differential invites tricks),
        #     of a media type this sigstore knows.
        text, document = _parse_json(name, raw)
        if (declared := _field(document, "mediaType")) not in _MEDIA_TYPES:
            raise SignatureError(
                f"{name}: not a Sigstore bundle of a known version (mediaType {declared!r})"
            )
        # (3) Early refusals with a message that says what is wrong; sigstore, authoritative,
        #     enforces both again in (4). (a) The bundle signs this file, if it says which
        #     digest it signs. (b) This trust root can establish a signing time: a SET (Rekor
        #     v1) or an RFC 3161 timestamp from an authority it lists (Rekor v2).
        _require_digest(name, document, sha256_hex)
        self._require_time_evidence(name, document)
        # (4) sigstore-python's verification, its steps (0)-(8): time, chain at that time,
        #     SCT, certificate profile and our policy, inclusion proof + checkpoint, SET,
        #     validity at the signing time, signature over the digest, entry consistency.
        try:
            parsed = Bundle.from_json(text)
            hashed = Hashed(algorithm=HashAlgorithm.SHA2_256, digest=bytes.fromhex(sha256_hex))
            self.verifier.verify_artifact(hashed, parsed, self.policy)
            # (5) Which configured pair matched, for the manifest.
            pair = self.identities.matching(parsed.signing_certificate)
            log_index, _, version = compat.log_entry_facts(parsed)
            media_type = compat.media_type(parsed)
        except SigstoreError as exc:
            raise SignatureError(self._rejection(name, exc)) from None
        except Exception as exc:  # fail closed: nothing unexpected ever counts as verified
            raise SignatureError(
                f"{name}: bundle unreadable ({exc.__class__.__name__}: {first_line(exc)})"
            ) from None
        # (6) A detached pair beside the bundle says the same thing, or the file fails.
        if sig_text is not None and decode_signature(name, sig_text)[1] != parsed.signature:
            raise SignatureError(f"{name}.sig: not the signature in the verified bundle")
        if cert_text is not None and decode_certificate(name, cert_text)[1] != (
            parsed.signing_certificate
        ):
            raise SignatureError(f"{name}.cert: not the certificate in the verified bundle")
        form = _FORMS.get(version, f"hashedrekord {version}")
        return Verified(text, pair.identity, log_index, form, media_type)

    def _require_time_evidence(self, name: str, document: dict[str, Any]) -> None:
        material = _field(document, "verificationMaterial")
        entries = _field(material, "tlogEntries")
        entry = entries[0] if isinstance(entries, list) and len(entries) == 1 else None
        has_set = bool(_field(_field(entry, "inclusionPromise"), "signedEntryTimestamp")) and (
            str(_field(entry, "integratedTime") or "0") != "0"
        )
        timestamps = _field(_field(material, "timestampVerificationData"), "rfc3161Timestamps")
        has_timestamp = isinstance(timestamps, list) and bool(timestamps)
        if entry is not None and not has_set and not has_timestamp:
            raise SignatureError(
                f"{name}: the bundle's signing time cannot be verified: it has neither a "
                "signed entry timestamp (SET) nor an RFC 3161 timestamp"
            )
        if has_timestamp and not self.trust_root.has_timestamp_authority:
            raise SignatureError(
                f"{name}: the bundle's signing time cannot be verified: it carries an RFC 3161 "
                f"timestamp, and the trust root ({self.trust_root.source}) lists no timestamp "
                "authority to check it",
                hint="use a trust root that lists the timestamp authority (production does)",
            )

    def _rejection(self, name: str, exc: BaseException) -> str:
        reason = first_line(exc)
        if compat.NO_VERIFIED_TIME_MESSAGE in reason or (
            compat.NO_TIMESTAMP_AUTHORITY_MESSAGE in reason
        ):
            return (
                f"{name}: the bundle's signing time cannot be verified: none of its RFC 3161 "
                "timestamps verifies for its signature under the timestamp authorities of the "
                f"trust root ({self.trust_root.source}), and no SET vouches for it"
            )
        return f"{name}: signature rejected: {reason}"


def _require_digest(name: str, document: dict[str, Any], sha256_hex: str) -> None:
    digest = _field(_field(document, "messageSignature"), "messageDigest")
    encoded = _field(digest, "digest")
    if _field(digest, "algorithm") != "SHA2_256" or not isinstance(encoded, str):
        return
    try:
        signed_hex = base64.b64decode(encoded, validate=True).hex()
    except (binascii.Error, ValueError):
        return  # malformed: sigstore's parser says so in (4)
    if signed_hex != sha256_hex.lower():
        raise SignatureError(
            f"{name}: the bundle is for another file: it signs sha256 {signed_hex}, "
            f"the file's is {sha256_hex}"
        )


def _parse_json(name: str, raw: bytes) -> tuple[str, dict[str, Any]]:
    try:
        text = raw.decode("utf-8")
        document = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except UnicodeDecodeError:
        raise SignatureError(f"{name}: bundle is not UTF-8 JSON") from None
    except _DuplicateKeyError as exc:
        raise SignatureError(f"{name}: bundle repeats the JSON key {exc.args[0]!r}") from None
    except RecursionError:
        raise SignatureError(f"{name}: bundle JSON is nested too deeply") from None
    except ValueError:
        raise SignatureError(f"{name}: bundle is not JSON") from None
    if not isinstance(document, dict):
        raise SignatureError(f"{name}: bundle is not a JSON object")
    if _depth(document) > _JSON_MAX_DEPTH:
        raise SignatureError(f"{name}: bundle JSON is nested too deeply")
    return text, document


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion (the input is hostile)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        deepest = max(deepest, level)
        if isinstance(item, dict):
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            stack.extend((child, level + 1) for child in item)
    return deepest


def _field(obj: object, key: str) -> Any:
    """``obj[key]`` in the protobuf JSON spelling (camelCase) or, as sigstore's parser also
    accepts it, the field's own (snake_case); None when absent or ``obj`` is no object."""
    if not isinstance(obj, dict):
        return None
    if key in obj:
        return obj[key]
    return obj.get(_SNAKE_CASE.get(key, key))


_SNAKE_CASE = {
    "mediaType": "media_type",
    "verificationMaterial": "verification_material",
    "tlogEntries": "tlog_entries",
    "inclusionPromise": "inclusion_promise",
    "signedEntryTimestamp": "signed_entry_timestamp",
    "integratedTime": "integrated_time",
    "timestampVerificationData": "timestamp_verification_data",
    "rfc3161Timestamps": "rfc3161_timestamps",
    "messageSignature": "message_signature",
    "messageDigest": "message_digest",
}


def first_line(exc: BaseException) -> str:
    """The gist of an exception's message in one line (sigstore's span several; pydantic's
    first line only counts the errors, the second names the field)."""
    lines = (str(exc).strip() or exc.__class__.__name__).splitlines()
    line = lines[0]
    if "validation error" in line and len(lines) > 1:
        line = f"{line}: {lines[1].strip()}"
    if len(line) > _REASON_MAX_CHARS:
        # sigstore appends reprs of whole proofs and certificates; the gist comes first.
        for detail in (": expected ", " (encountered "):
            if 0 < line.find(detail) < _REASON_MAX_CHARS:
                line = line[: line.find(detail)]
                break
        else:
            line = line[:_REASON_MAX_CHARS] + "..."
    return line
