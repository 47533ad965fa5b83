"""Names of things in the served tree and in the tool's hidden state directory.

The served tree mirrors the upstream URL space (``<root>/release/<v>/...`` is served at
``/release/<v>/...``). Everything the tool keeps for itself lives under ``<root>/.k8s-mirror``:
same filesystem (so promotion is a rename), and a dot-directory that ``serve`` never serves.
"""

from __future__ import annotations

from pathlib import Path

STATE_DIR_NAME = ".k8s-mirror"
"""Hidden per-tree state: lock, staging, partial downloads, manifests, reports."""

RELEASE_DIR_NAME = "release"
"""Top-level served directory, as on dl.k8s.io."""

TRUST_ROOT_RELPATH = "sigstore/trusted_root.json"
"""Where the tree carries the Sigstore trust root its bundles were verified against."""

BUNDLE_SUFFIX = ".sigstore.json"
"""Suffix of the Sigstore bundle stored beside each signed file."""


def state_dir(root: Path) -> Path:
    """The tool's hidden state directory for the tree at ``root``."""
    return root / STATE_DIR_NAME
