"""The Sigstore trust root: which keys and CAs a signature must chain to.

``production`` is Sigstore's public-good root, refreshed through TUF when the network allows and
otherwise the cached or embedded copy (with a warning: it may be stale). Anything else is the
path of a pinned ``trusted_root.json``. ``is_embedded_production_root`` decides, offline,
whether a trust root that travelled with data is the public-good one this sigstore carries.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from sigstore.models import ClientTrustConfig, TrustedRoot

from mirror.errors import ConfigError
from mirror.verify import compat

log = logging.getLogger(__name__)

_SETTING_KEY = "verify.trusted_root"


@dataclass(frozen=True)
class TrustRoot:
    """A loaded Sigstore trusted root, with its JSON (stored in the tree) and where it came from."""

    trusted_root: TrustedRoot
    json_text: str
    source: str

    @property
    def has_timestamp_authority(self) -> bool:
        """Whether RFC 3161 timestamps (Rekor v2 bundles) can be checked against this root."""
        return bool(self.trusted_root.get_timestamp_authorities())


def load_trust_root(setting: str) -> TrustRoot:
    """``production`` (TUF refresh, falling back to the cached/embedded root) or a file path."""
    if setting == "production":
        return _production()
    path = Path(setting)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}", source=_SETTING_KEY) from None
    try:
        root = compat.trusted_root_from_json(data)
        text = data.decode("utf-8")
    except Exception as exc:  # ValueError, sigstore's Error, pydantic's errors: all "not one"
        raise ConfigError(
            f"{path}: not a Sigstore trusted_root.json: {str(exc).splitlines()[0]}",
            source=_SETTING_KEY,
        ) from None
    return TrustRoot(root, text, str(path))


def _production() -> TrustRoot:
    try:
        config = ClientTrustConfig.production(offline=False)
        source = "production (TUF, refreshed)"
    except Exception as exc:  # TUF, network and disk errors alike: fall back, loudly
        log.warning(
            "could not refresh the Sigstore trust root via TUF (%s); using the cached or "
            "embedded production root, which may be stale",
            exc.__class__.__name__,
        )
        try:
            config = ClientTrustConfig.production(offline=True)
        except Exception as exc2:
            raise ConfigError(
                f"cannot load the production trust root offline: {exc2}", source=_SETTING_KEY
            ) from None
        source = "production (cached/embedded, offline)"
    root = config.trusted_root
    return TrustRoot(root, compat.trusted_root_json(root), source)


def is_embedded_production_root(json_bytes: bytes) -> bool:
    """Whether ``json_bytes`` is the Sigstore public-good root this sigstore-python carries
    (or has cached), compared offline; any doubt is a no."""
    try:
        embedded = compat.trusted_root_json(ClientTrustConfig.production(offline=True).trusted_root)
        candidate = compat.trusted_root_json(compat.trusted_root_from_json(json_bytes))
    except Exception:  # any parse or cache problem means "not provably the same"
        return False
    return bool(json.loads(embedded) == json.loads(candidate))
