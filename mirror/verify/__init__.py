"""Sigstore verification of release files: the only package that imports sigstore.

One job per module:

* ``trust``    -- the trust root: production via TUF (falling back to the cached or embedded
  copy), a pinned ``trusted_root.json``, and whether one is the embedded production root;
* ``policy``   -- who may have signed: identity/issuer pairs, either issuer extension;
* ``detached`` -- the ``.sig``/``.cert`` pair as dl.k8s.io publishes it;
* ``bundle``   -- the one signature check: a Sigstore bundle against a digest, offline;
* ``rekor``    -- online: a detached pair's Rekor v1 entry, looked up and assembled into a
  bundle that ``bundle`` then checks;
* ``compat``   -- every private sigstore-python call, pinned by its own tests.

Callers use the names re-exported here. They are loaded on first use: importing sigstore
costs about half a second of CPU, which a run with nothing to verify (a no-change re-sync,
``status``) should not pay.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mirror.verify.bundle import BundleChecker, Verified
    from mirror.verify.policy import AcceptedIdentities, IdentityPolicy
    from mirror.verify.rekor import (
        RekorChecker,
        assemble_bundle,
        hashedrekord_body,
        rekor_uuid,
    )
    from mirror.verify.trust import TrustRoot, is_embedded_production_root, load_trust_root

_HOME = {
    "BundleChecker": "bundle",
    "Verified": "bundle",
    "AcceptedIdentities": "policy",
    "IdentityPolicy": "policy",
    "RekorChecker": "rekor",
    "assemble_bundle": "rekor",
    "hashedrekord_body": "rekor",
    "rekor_uuid": "rekor",
    "TrustRoot": "trust",
    "is_embedded_production_root": "trust",
    "load_trust_root": "trust",
}

__all__ = [
    "AcceptedIdentities",
    "BundleChecker",
    "IdentityPolicy",
    "RekorChecker",
    "TrustRoot",
    "Verified",
    "assemble_bundle",
    "hashedrekord_body",
    "is_embedded_production_root",
    "load_trust_root",
    "rekor_uuid",
]


def preload() -> None:
    """Import what verification needs (about 0.5 s, mostly sigstore's dependencies) ahead of
    first use: ``sync`` calls it in a worker thread as soon as it sees a release new to the
    tree, so the import overlaps the SUMS downloads instead of delaying the first verified
    file. A failure here is left for the import at first use to report."""
    for home in sorted(set(_HOME.values())):
        try:
            importlib.import_module(f"{__name__}.{home}")
        except Exception:  # reported where the name is used
            return


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value
    return value
