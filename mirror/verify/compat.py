"""Every use of sigstore-python's private API, in one place.

sigstore-python has no public way to serialize a ``TrustedRoot`` or to build one from bytes in
memory, exposes a verified bundle's log index, entry version and media type only through its
private models, and reports "no verifiable time" only as the text of a ``VerificationError``.
We need each of those, so they live here and nowhere else; ``tests/test_verify_compat.py`` pins each
one against the installed sigstore, so an upgrade that changes them fails there, loudly, instead
of somewhere in a sync.

Everything else in ``mirror.verify`` speaks the public API: ``Bundle.from_json``,
``Verifier.verify_artifact``, ``ClientTrustConfig``, the policy classes, and the bundle JSON
format itself (bundles are assembled as JSON, not through sigstore's private constructors).
"""

from __future__ import annotations

from sigstore.models import Bundle, TrustedRoot
from sigstore_models.trustroot import v1 as trustroot_v1

#: How ``Verifier`` says that no timestamp in a bundle could be verified (and no SET
#: vouches for the log's integrated time).
NO_VERIFIED_TIME_MESSAGE = "not enough sources of verified time"

#: How ``Verifier`` refuses a bundle carrying RFC 3161 timestamps when the trust root lists
#: no timestamp authority.
NO_TIMESTAMP_AUTHORITY_MESSAGE = "no Timestamp Authorities have been provided"


def trusted_root_json(root: TrustedRoot) -> str:
    """The JSON document of a loaded trusted root (what the tree stores beside its bundles)."""
    return root._inner.to_json()


def trusted_root_from_json(data: bytes) -> TrustedRoot:
    """A trusted root parsed from bytes already in memory; raises ``ValueError`` (malformed
    JSON or schema) or ``sigstore.errors.Error`` (unknown media type)."""
    # The constructor is documented as private; ``TrustedRoot.from_file`` would re-read a path
    # we already read, and the bytes checked must be the bytes stored.
    return TrustedRoot(trustroot_v1.TrustedRoot.from_json(data))


def log_entry_facts(bundle: Bundle) -> tuple[int, str, str]:
    """(log index, entry kind, entry version) of the bundle's one transparency-log entry,
    exactly as sigstore parsed and verified it."""
    inner = bundle.log_entry._inner
    return int(inner.log_index), str(inner.kind_version.kind), str(inner.kind_version.version)


def media_type(bundle: Bundle) -> str:
    """The bundle's media type, as sigstore accepted it."""
    return str(bundle._inner.media_type)
