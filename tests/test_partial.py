"""A download's partial file (``mirror.partial``): real files in a temporary directory."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mirror.errors import LocalStoreError
from mirror.partial import keep_prefix, meta_path, resume_offset, write_whole


def test_a_whole_small_body_replaces_an_old_partial_and_its_metadata(tmp_path: Path) -> None:
    part = tmp_path / "partial" / "kubectl"
    keep_prefix(part, [b"old", b" bytes"], {"url": "u", "etag": '"e"'}, 1 << 20)
    assert resume_offset(part, "u") == (9, '"e"')
    digests = write_whole(part, b"new body")
    assert part.read_bytes() == b"new body" and not meta_path(part).exists()
    assert digests.sha256 == hashlib.sha256(b"new body").hexdigest()


def test_a_partial_that_cannot_be_written_is_a_local_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "partial").write_text("a file where the directory belongs")
    part = tmp_path / "partial" / "kubectl"
    with pytest.raises(LocalStoreError, match="partial/kubectl: cannot write"):
        write_whole(part, b"body")
