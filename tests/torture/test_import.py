"""Hostile transfer sets and archives: every one refused with a clear error (or, for a marker
outside its series, the releases in and the marker not), never a traceback, nothing served
that did not verify beside its primary.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest

from mirror.config import VerifyConfig
from mirror.errors import IntegrityError
from mirror.transfer import import_set
from mirror.transfer.members import ARCHIVE_END
from tests.conftest import Env
from tests.test_transfer import export, hostile_tar, import_, member, staging_empty, tree_digests

pytestmark = pytest.mark.torture

V = "v1.34.2"
DEEP = "[" * 100_000 + "]" * 100_000
ARM64_KUBECTL = "bin/linux/arm64/kubectl"


async def a_set(env: Env) -> Path:
    assert (await env.sync()).exit_code == 0
    out = env.tmp / "set"
    await export(env, out)
    return out


@pytest.mark.parametrize("where", ["toc", "toc-manifest"])
async def test_deeply_nested_json_in_a_set_is_refused(env: Env, where: str) -> None:
    set_dir = await a_set(env)
    if where == "toc":
        text = (set_dir / "toc.json").read_text()
        (set_dir / "toc.json").write_text(text[:-1] + ', "x": ' + DEEP + "}")
    else:
        toc = json.loads((set_dir / "toc.json").read_text())
        toc["releases"][V]["manifest"] = "@DEEP@"
        (set_dir / "toc.json").write_text(json.dumps(toc).replace('"@DEEP@"', DEEP))
    dest = env.tmp / "far"
    code, _, err = await import_(env, set_dir, dest)
    assert code == IntegrityError.exit_code, err
    assert "nested" in err and "Traceback" not in err
    assert tree_digests(dest) == []


@pytest.mark.parametrize("name", [f".k8s-mirror/manifests/{V}.json", ARCHIVE_END])
async def test_deeply_nested_json_in_an_archive_member_is_refused(env: Env, name: str) -> None:
    info = member(name)
    info.size = len(DEEP)
    hostile_tar(env.tmp / "evil.tar", info, DEEP.encode())
    dest = env.tmp / "far"
    code, _, err = await import_(env, env.tmp / "evil.tar", dest)
    assert code == IntegrityError.exit_code, err
    assert "nested" in err and "Traceback" not in err
    assert tree_digests(dest) == [] and staging_empty(dest)


TAR_TYPES = {
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chardev": tarfile.CHRTYPE,
    "blockdev": tarfile.BLKTYPE,
    "fifo": tarfile.FIFOTYPE,
    "directory": tarfile.DIRTYPE,
    "sparse": tarfile.GNUTYPE_SPARSE,
}


@pytest.mark.parametrize("kind", sorted(TAR_TYPES))
def test_every_tar_member_type_but_a_regular_file_is_refused(tmp_path: Path, kind: str) -> None:
    info = member(f"release/{V}/bin/linux/amd64/kubectl", TAR_TYPES[kind], "/etc/passwd")
    hostile_tar(tmp_path / "evil.tar", info)
    dest = tmp_path / "far"
    with pytest.raises(IntegrityError, match="not a regular file"):
        import_set(dest, tmp_path / "evil.tar", identities=VerifyConfig().identities)
    assert tree_digests(dest) == [] and staging_empty(dest)


async def test_companions_without_their_primary_are_refused(env: Env) -> None:
    """A set carrying arm64 kubectl's sidecars and bundle but not the binary, into a tree
    that has only amd64: nothing of it may be served."""
    source = env.tmp / "source"
    platforms = {"platforms": ["linux/amd64", "linux/arm64"]}
    assert (await env.sync(tree={"root": str(source)}, select=platforms)).exit_code == 0
    dest = env.tmp / "far"
    shutil.copytree(source, dest, symlinks=True)
    drop_records(dest, lambda rel: rel.startswith("bin/linux/arm64/"))
    shutil.rmtree(dest / "release" / V / "bin/linux/arm64")
    drop_records(source, lambda rel: rel == ARM64_KUBECTL)
    (source / "release" / V / ARM64_KUBECTL).unlink()
    out = env.tmp / "set"
    await export(env, out, root=source)
    code, _, err = await import_(env, out, dest)
    assert code == IntegrityError.exit_code, err
    assert "orphan" in err
    assert not (dest / "release" / V / (ARM64_KUBECTL + ".sha256")).exists()
    assert staging_empty(dest)


def drop_records(root: Path, drop: Callable[[str], bool]) -> None:
    path = root / ".k8s-mirror/manifests" / f"{V}.json"
    manifest = json.loads(path.read_text())
    manifest["files"] = {k: v for k, v in manifest["files"].items() if not drop(k)}
    path.write_text(json.dumps(manifest))


async def test_verify_reports_an_orphan_companion(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    base = env.root / "release" / V
    orphan = base / (ARM64_KUBECTL + ".sha256")
    orphan.parent.mkdir(parents=True)
    orphan.write_text("a" * 64)
    manifest_path = env.root / ".k8s-mirror/manifests" / f"{V}.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][ARM64_KUBECTL + ".sha256"] = {
        "size": 64,
        "sha256": hashlib.sha256(b"a" * 64).hexdigest(),
    }
    manifest_path.write_text(json.dumps(manifest))
    result = await env.cli("verify", "--config", str(env.config_path))
    assert result.exit_code == IntegrityError.exit_code, result.stdout + result.stderr
    assert "orphan" in result.stdout + result.stderr


async def test_a_marker_outside_its_series_fails_the_import(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    (env.root / "release/stable-1.33.txt").write_text(V)
    set_dir = env.tmp / "set"
    await export(env, set_dir)
    dest = env.tmp / "far"
    code, _, err = await import_(env, set_dir, dest)
    assert code == IntegrityError.exit_code, err
    assert "stable-1.33" in err and "outside its series" in err
    assert not (dest / "release/stable-1.33.txt").exists()
    assert (dest / "release" / V / "bin/linux/amd64/kubectl").is_file()
