"""The one offline signature check, ``BundleChecker.check_bundle``, against the fake Sigstore stack.

Bundles here are built by the fake stack the way a cosign-style signer publishes them
(``FakeSigstore.published_bundle``), independently of the product's own assembly; the real
sigstore-python verifier checks them. Each hostile case must be a ``SignatureError`` that names
the file and says what is wrong.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mirror.catalog import BUNDLE_MAX_BYTES
from mirror.config import IdentityConfig
from mirror.errors import SignatureError
from mirror.verify import (
    BundleChecker,
    assemble_bundle,
    load_trust_root,
)
from tests.fakes.sigstore_stack import (
    BUNDLE_MEDIA_TYPES,
    DEFAULT_IDENTITY,
    DEFAULT_ISSUER,
    FakeSigstore,
    SignedBlob,
)

NAME = "release/v1.34.2/bin/linux/amd64/kubectl"
ARTIFACT = b"\x7fELF kubectl " * 64
OTHER = b"\x7fELF kubeadm " * 64


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def stack() -> FakeSigstore:
    return FakeSigstore()


@pytest.fixture
def checker(stack: FakeSigstore, tmp_path: Path) -> BundleChecker:
    # The URL only labels the log in the trust root; nothing is ever contacted.
    root_path, _ = stack.write_trust_files(tmp_path, "http://127.0.0.1:9")
    trust = load_trust_root(str(root_path))
    return BundleChecker(trust, [IdentityConfig(DEFAULT_IDENTITY, DEFAULT_ISSUER)])


def signed(stack: FakeSigstore, data: bytes = ARTIFACT, **opts: Any) -> SignedBlob:
    # A few entries before this one, so the inclusion proof has siblings to break.
    for i in range(3):
        stack.sign_blob(b"padding %d" % i)
    return stack.sign_blob(data, **opts)


@pytest.mark.parametrize("media_type", sorted(BUNDLE_MEDIA_TYPES))
def test_published_bundle_verifies_and_is_kept_byte_identical(
    stack: FakeSigstore, checker: BundleChecker, media_type: str
) -> None:
    blob = signed(stack)
    published = stack.published_bundle(blob, media_type=media_type)
    verified = checker.check_bundle(
        NAME, sha256_hex(ARTIFACT), published, sig_text=blob.sig, cert_text=blob.cert
    )
    assert verified.bundle_bytes == published
    assert verified.identity == DEFAULT_IDENTITY
    assert verified.log_index == blob.log_index
    assert verified.form == "rekor-v1"
    assert verified.media_type == BUNDLE_MEDIA_TYPES[media_type]
    assert not verified.assembled


def test_bundle_without_the_optional_message_digest_verifies(
    stack: FakeSigstore, checker: BundleChecker
) -> None:
    blob = signed(stack)
    published = stack.published_bundle(blob, message_digest=False, indent=None)
    assert checker.check_bundle(NAME, sha256_hex(ARTIFACT), published).log_index == blob.log_index


def test_second_identity_pair_matches_and_is_reported(stack: FakeSigstore, tmp_path: Path) -> None:
    root_path, _ = stack.write_trust_files(tmp_path, "http://127.0.0.1:9")
    new = "krel-next@k8s-releng-prod.iam.gserviceaccount.com"
    checker = BundleChecker(
        load_trust_root(str(root_path)),
        [IdentityConfig(DEFAULT_IDENTITY, DEFAULT_ISSUER), IdentityConfig(new, DEFAULT_ISSUER)],
    )
    blob = signed(stack, identity=new)
    verified = checker.check_bundle(NAME, sha256_hex(ARTIFACT), stack.published_bundle(blob))
    assert verified.identity == new


# Each case: (stack, blob of ARTIFACT) -> (bundle bytes, digest checked, .sig, .cert), and the
# words the refusal must contain.
Case = Callable[[FakeSigstore], tuple[bytes, str, bytes | None, bytes | None]]


def _plain(**sign: Any) -> Case:
    def case(stack: FakeSigstore) -> tuple[bytes, str, bytes | None, bytes | None]:
        blob = signed(stack, **sign)
        return stack.published_bundle(blob), sha256_hex(ARTIFACT), None, None

    return case


def _tampered(what: str) -> Case:
    def case(stack: FakeSigstore) -> tuple[bytes, str, bytes | None, bytes | None]:
        blob = signed(stack)
        assert blob.logged_uuid is not None
        stack.rekor.tamper(blob.logged_uuid, what)  # type: ignore[arg-type]
        return stack.published_bundle(blob), sha256_hex(ARTIFACT), None, None

    return case


def _other_file(stack: FakeSigstore, **opts: Any) -> tuple[bytes, str, bytes | None, bytes | None]:
    blob = signed(stack)
    return stack.published_bundle(blob, **opts), sha256_hex(OTHER), None, None


def _no_set(media_type: str) -> Case:
    def case(stack: FakeSigstore) -> tuple[bytes, str, bytes | None, bytes | None]:
        blob = signed(stack)
        bundle = stack.published_bundle(blob, media_type=media_type, inclusion_promise=False)
        return bundle, sha256_hex(ARTIFACT), None, None

    return case


def _disagreeing(sidecar: str) -> Case:
    def case(stack: FakeSigstore) -> tuple[bytes, str, bytes | None, bytes | None]:
        blob = signed(stack)
        # The same file signed again: a valid pair, but not the one in the bundle.
        again = stack.sign_blob(ARTIFACT)
        sig, cert = (again.sig, None) if sidecar == ".sig" else (None, again.cert)
        return stack.published_bundle(blob), sha256_hex(ARTIFACT), sig, cert

    return case


def _raw(body: bytes) -> Case:
    return lambda stack: (body, sha256_hex(ARTIFACT), None, None)


def _padded_valid_bundle(stack: FakeSigstore) -> tuple[bytes, str, bytes | None, bytes | None]:
    # Valid if it were parsed: the size limit must refuse it before that.
    bundle = stack.published_bundle(signed(stack)) + b" " * (10 * 1024 * 1024)
    return bundle, sha256_hex(ARTIFACT), None, None


def _edited(edit: Callable[[dict[str, Any]], None]) -> Case:
    def case(stack: FakeSigstore) -> tuple[bytes, str, bytes | None, bytes | None]:
        document = json.loads(stack.published_bundle(signed(stack)))
        edit(document)
        return json.dumps(document).encode(), sha256_hex(ARTIFACT), None, None

    return case


def _nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


HOSTILE: dict[str, tuple[Case, str]] = {
    "bundle for another file": (_other_file, "the bundle is for another file"),
    "bundle for another file, without a message digest": (
        lambda s: _other_file(s, message_digest=False),
        "Signature is invalid for input",
    ),
    "another identity": (
        _plain(identity="krel-trust@k8s-releng-prod.iam.gserviceaccount.com"),
        "wrong identity",
    ),
    "another issuer in the newer extension": (
        _plain(issuer_v2="https://evil.example"),
        "wrong issuer",
    ),
    "signature over other bytes": (
        _plain(sign_other_bytes=b"something else"),
        "Signature is invalid for input",
    ),
    "untrusted CA": (_plain(untrusted_ca=True), "failed to build timestamp certificate chain"),
    "certificate expired at the integrated time": (
        _plain(integrated_time_offset_s=3600),
        "not valid at validation time",
    ),
    "broken inclusion proof": (_tampered("inclusion_proof"), "inclusion proof"),
    "broken SET": (_tampered("set"), "SET: invalid inclusion promise"),
    "checkpoint disagrees with the proof": (_tampered("checkpoint"), "invalid log entry"),
    "no SET and no timestamp (v0.3)": (_no_set("v0.3"), "signing time cannot be verified"),
    "no SET and no timestamp (v0.1)": (_no_set("v0.1"), "signing time cannot be verified"),
    ".sig disagrees with the bundle": (
        _disagreeing(".sig"),
        ".sig: not the signature in the verified bundle",
    ),
    ".cert disagrees with the bundle": (
        _disagreeing(".cert"),
        ".cert: not the certificate in the verified bundle",
    ),
    "not JSON": (_raw(b"<html>502 Bad Gateway</html>"), "bundle is not JSON"),
    "not UTF-8": (_raw(b'\xff\xfe{"mediaType": 1}'), "bundle is not UTF-8 JSON"),
    "not an object": (_raw(b"[]"), "bundle is not a JSON object"),
    "10 MB": (_padded_valid_bundle, f"more than the {BUNDLE_MAX_BYTES} allowed"),
    "nested beyond the parser": (_raw(b"[" * 100_000 + b"]" * 100_000), "nested too deeply"),
    "nested beyond any bundle": (_raw(_nested(200)), "nested too deeply"),
    "a key given twice": (
        _raw(b'{"mediaType": "a", "mediaType": "b"}'),
        "repeats the JSON key 'mediaType'",
    ),
    "unknown media type": (
        _edited(lambda d: d.update(mediaType="application/vnd.dev.sigstore.bundle.v9+json")),
        "not a Sigstore bundle of a known version",
    ),
    "two log entries": (
        _edited(lambda d: d["verificationMaterial"]["tlogEntries"].append({})),
        "signature rejected",
    ),
    "log entries of the wrong shape": (
        _edited(lambda d: d["verificationMaterial"].update(tlogEntries="yes")),
        "validation error for Bundle: verificationMaterial.tlogEntries",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_bundle_is_refused_with_a_clear_message(
    stack: FakeSigstore, checker: BundleChecker, case: str
) -> None:
    build, reason = HOSTILE[case]
    bundle, digest, sig, cert = build(stack)
    with pytest.raises(SignatureError) as info:
        checker.check_bundle(NAME, digest, bundle, sig_text=sig, cert_text=cert)
    message = str(info.value)
    assert message.startswith(NAME), message
    assert reason in message, message
    assert "\n" not in message


def _rekor_answer(stack: FakeSigstore) -> tuple[SignedBlob, dict[str, Any]]:
    blob = signed(stack)
    assert blob.logged_uuid is not None
    answer = stack.rekor_response(blob.logged_uuid)
    assert answer is not None
    return blob, answer


def test_bundle_assembled_from_a_rekor_answer_passes_the_same_check(
    stack: FakeSigstore, checker: BundleChecker
) -> None:
    blob, answer = _rekor_answer(stack)
    assembled = assemble_bundle(
        NAME, sha256_hex(ARTIFACT), blob.signature, blob.certificate, answer
    )
    verified = checker.check_bundle(
        NAME, sha256_hex(ARTIFACT), assembled, sig_text=blob.sig, cert_text=blob.cert
    )
    assert verified.bundle_json == assembled
    assert (verified.log_index, verified.form) == (blob.log_index, "rekor-v1")
    assert verified.media_type == BUNDLE_MEDIA_TYPES["v0.3"]
    document = json.loads(assembled)
    digest = document["messageSignature"]["messageDigest"]["digest"]
    assert base64.b64decode(digest) == blob.data_sha256


def _entry(answer: dict[str, Any]) -> dict[str, Any]:
    (entry,) = answer.values()
    return entry  # type: ignore[no-any-return]


MALFORMED: dict[str, Callable[[dict[str, Any]], None]] = {
    "no verification": lambda a: _entry(a).pop("verification"),
    "log index a string": lambda a: _entry(a).update(logIndex="7"),
    "log index a boolean": lambda a: _entry(a).update(logIndex=True),
    "log ID not hex": lambda a: _entry(a).update(logID="zz"),
    "proof hashes not hex": lambda a: _entry(a)["verification"]["inclusionProof"].update(
        hashes=["not hex"]
    ),
    "SET not base64": lambda a: _entry(a)["verification"].update(signedEntryTimestamp="%%"),
    "checkpoint not text": lambda a: _entry(a)["verification"]["inclusionProof"].update(
        checkpoint=7
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_rekor_answer_is_refused(stack: FakeSigstore, case: str) -> None:
    blob, answer = _rekor_answer(stack)
    MALFORMED[case](answer)
    with pytest.raises(SignatureError, match=f"^{NAME}: malformed Rekor entry"):
        assemble_bundle(NAME, sha256_hex(ARTIFACT), blob.signature, blob.certificate, answer)


def test_snake_case_field_names_sigstore_also_reads_get_the_same_early_checks(
    stack: FakeSigstore, checker: BundleChecker
) -> None:
    """sigstore's parser also accepts the fields' own names; the early checks must read them
    the same way, so they neither miss a refusal nor refuse a bundle sigstore would pass."""
    blob = signed(stack)
    document = json.loads(stack.published_bundle(blob))
    entry = document["verificationMaterial"]["tlogEntries"][0]
    entry["inclusion_promise"] = entry.pop("inclusionPromise")
    document["message_signature"] = document.pop("messageSignature")
    bundle = json.dumps(document).encode()
    assert checker.check_bundle(NAME, sha256_hex(ARTIFACT), bundle).log_index == blob.log_index
    with pytest.raises(SignatureError, match="the bundle is for another file"):
        checker.check_bundle(NAME, sha256_hex(OTHER), bundle)
