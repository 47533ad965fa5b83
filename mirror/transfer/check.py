"""Re-verifying what an import staged, offline and exactly as ``k8s-mirror verify`` would.

The carried manifests are not trusted: each staged file is checked by the tree audit's rules
(digests, sidecars, SUMS, the Sigstore bundle of every file whose path and version say
upstream signs it) against a trust root this side already trusts. Which one that is, and why a
trust root that travelled with the set is not enough by itself, is decided here too.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mirror import audit
from mirror.binding import tags_in
from mirror.check import Binder, BindingPolicy, check_release, check_signing_policy
from mirror.config import IdentityConfig
from mirror.digest import Digests
from mirror.errors import ConfigError, TreeVerifyError
from mirror.layout import TRUST_ROOT_RELPATH
from mirror.store import Store
from mirror.transfer.plan import ImportPlan, ReleasePlan
from mirror.transfer.staging import Staging
from mirror.verify import is_embedded_production_root

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrustChoice:
    """The trust root an import verifies against, and where it came from."""

    path: Path | None
    """None: nothing to verify signatures against (and nothing that needs it)."""
    origin: str
    """``--trusted-root``, ``the tree's``, ``the set's`` or ``none``."""


def choose_trust_root(
    store: Store,
    staging: Staging,
    plan: ImportPlan,
    *,
    trusted_root: Path | None,
    carried: bytes | None,
    source: Path,
) -> TrustChoice:
    """``--trusted-root`` if given, else the tree's own, else (first import into an empty tree)
    the carried one, but only if it is the public-good root this sigstore-python carries."""
    set_root = staging.work / TRUST_ROOT_RELPATH
    if carried is not None:
        set_root = staging.stage_trust_root(carried)
    tree_root = store.root / TRUST_ROOT_RELPATH
    if trusted_root is not None:
        return TrustChoice(trusted_root, "--trusted-root")
    if tree_root.is_file():
        if carried is not None and carried != tree_root.read_bytes():
            log.info("the set carries another trust root; verifying against the tree's own")
        return TrustChoice(tree_root, "the tree's")
    if carried is not None:
        # Nothing here is trusted yet. A trust root that travelled with the data proves nothing
        # (whoever forged the set could forge it), unless sigstore-python already carries it.
        if not is_embedded_production_root(carried):
            raise ConfigError(
                f"{store.root} has no trust root yet and the set's is not Sigstore's "
                "public-good root: pass the trusted_root.json you trust with --trusted-root",
                source=str(source),
            )
        return TrustChoice(set_root, "the set's")
    signed = any(
        release.merged.files[rel].check == "sigstore"
        for release in plan.releases.values()
        for rel in release.needed
    )
    if signed:
        raise ConfigError(
            f"neither {store.root} nor the set has a Sigstore trust root to verify "
            "signatures against: pass --trusted-root",
            source=str(source),
        )
    return TrustChoice(None, "none")


def verify_staged(
    store: Store,
    staging: Staging,
    plan: ImportPlan,
    trust: TrustChoice,
    *,
    identities: Sequence[IdentityConfig],
    allow_unsigned: bool,
    binding: BindingPolicy,
    carried_root: bytes | None,
    source: Path,
) -> None:
    """Check every staged file with the rules ``sync`` and ``verify`` apply (``check``);
    ``TreeVerifyError`` listing the problems if any. What bound each file to its release is
    derived here and written into the merged manifest: the carried one is no authority."""
    # With no trust root, the audit is pointed at a path that does not exist: it then fails
    # loudly if a file turns out to need a signature check after all.
    trust_path = trust.path or staging.work / TRUST_ROOT_RELPATH
    tree_audit = audit.TreeAudit(staging.work, identities, trusted_root=trust_path)
    for version, release in plan.releases.items():
        staged = staging.files(version)
        if not staged:
            continue
        _check_policy(tree_audit, staging, release, allow_unsigned)
        digests = {
            rel: Digests(
                d.size_bytes,
                d.sha256,
                d.sha512 if release.merged.files[rel].sha512 is not None else None,
            )
            for rel, d in staged.items()
        }
        locate = staging.locate(version)
        binder = Binder(binding, None, tags_in(locate))
        result = tree_audit.result
        check_release(
            version, release.merged, digests, audit.reader(locate), tree_audit, binder, result
        )
        for rel, rule in result.bindings.items():
            release.merged.files[rel] = dataclasses.replace(release.merged.files[rel], binding=rule)
        result.bindings.clear()
    for warning in tree_audit.result.warnings:
        log.warning("%s", warning)
    problems = tree_audit.result.problems
    if problems:
        for problem in problems:
            log.error("%s", problem)
        tree_root = store.root / TRUST_ROOT_RELPATH
        hint = None
        if (
            trust.origin == "the tree's"
            and any(p.kind == "bad-bundle" for p in problems)
            and carried_root is not None
            and carried_root != tree_root.read_bytes()
        ):
            hint = (
                "the set carries another trust root than the tree; if you trust it, "
                "pass it with --trusted-root"
            )
        raise TreeVerifyError(
            f"{source}: {len(problems)} problem(s) found, nothing imported; first: {problems[0]}",
            hint=hint,
        )
    if tree_audit.result.files_checked:
        log.info(
            "verified %d files, %d signatures against %s trust root",
            tree_audit.result.files_checked,
            tree_audit.result.signatures_checked,
            trust.origin,
        )


def _check_policy(
    tree_audit: audit.TreeAudit, staging: Staging, release: ReleasePlan, allow_unsigned: bool
) -> None:
    """Refuse unsigned releases unless allowed. What the carried manifest claims is then
    checked against the paths by the audit (a primary of a signed release must have its bundle
    checked; nothing outside the SUMS and their companions rides along), as ``verify`` does
    for a tree."""
    version = release.version
    check_signing_policy(
        [version],
        allow_unsigned=allow_unsigned,
        hint="to import it with checksum verification only, pass --allow-unsigned",
    )
    if not staging.locate(version)("SHA256SUMS").is_file():
        tree_audit.result.add(
            f"release/{version}/SHA256SUMS", "missing", "neither in the set nor the tree"
        )
