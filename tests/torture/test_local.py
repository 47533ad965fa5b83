"""A hostile disk, through the CLI: planted symlinks, corrupt state files of each kind, a full
disk, read-only media. Each ends in a clear error or a recovery, never a traceback, and
nothing is ever written outside the root.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import Env
from tests.torture.invariants import tree_problems

pytestmark = pytest.mark.torture

V = "v1.34.2"
KUBECTL = f"release/{V}/bin/linux/amd64/kubectl"
KUBEADM = f"release/{V}/bin/linux/amd64/kubeadm"
STATE = ".k8s-mirror"
WANTED = {V: [f"bin/linux/amd64/{n}" for n in ("kubectl", "kubeadm", "kubelet")]}


async def cli(env: Env, *args: str) -> tuple[int, str]:
    result = await env.cli(*args, "--config", str(env.config_path))
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    return result.exit_code, output


async def sync(env: Env) -> tuple[int, str]:
    return await cli(env, "sync", "--no-progress")


# -- planted symlinks -------------------------------------------------------------------------

SYMLINKS = [
    "sigstore",
    STATE,
    f"{STATE}/staging",
    f"{STATE}/staging/{V}",
    f"{STATE}/partial",
    f"{STATE}/partial/{V}",
    f"{STATE}/partial/{V}/bin",
    f"{STATE}/manifests",
    f"{STATE}/reports",
    f"{STATE}/tmp",
    "release",
]


@pytest.mark.parametrize("planted", SYMLINKS)
async def test_a_planted_symlink_is_refused_and_nothing_is_written_outside(
    env: Env, planted: str
) -> None:
    outside = env.tmp / "outside"
    outside.mkdir()
    link = env.root / planted
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    code, output = await sync(env)
    assert code == 7, output
    assert "symlink" in output
    assert list(outside.rglob("*")) == []
    assert not (env.root / "release").is_symlink() or planted == "release"
    assert not (env.root / f"release/{V}").exists()


@pytest.mark.parametrize("planted", ["bin", "bin/linux", "bin/linux/arm64"])
async def test_a_symlink_inside_a_release_is_refused_before_any_directory_is_made(
    env: Env, planted: str
) -> None:
    assert (await sync(env))[0] == 0
    outside = env.tmp / "outside"
    outside.mkdir()
    link = env.root / "release" / V / planted
    if link.exists():
        shutil.move(link, env.tmp / "moved-away")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)
    env.write_config(select={"platforms": ["linux/amd64", "linux/arm64"]})
    code, output = await sync(env)
    assert code == 7, output
    assert list(outside.rglob("*")) == []


# -- corrupt state files ----------------------------------------------------------------------

DEEP = b"[" * 100_000 + b"]" * 100_000
NOT_UTF8 = b"\xff\xfe\x00garbage\x80"


def manifest_path(env: Env) -> Path:
    return env.root / STATE / "manifests" / f"{V}.json"


@pytest.mark.parametrize("content", [DEEP, NOT_UTF8, b"{}", b'{"format": 1, "files": []}'])
async def test_a_corrupt_manifest_is_a_clear_error_for_every_command(
    env: Env, content: bytes
) -> None:
    assert (await sync(env))[0] == 0
    manifest_path(env).write_bytes(content)
    code, output = await sync(env)
    assert code == 7, output
    assert "unreadable manifest" in output
    code, output = await cli(env, "verify")
    assert code == 5, output
    code, output = await cli(env, "status")
    assert code == 7, output
    assert "move the file aside" in output


async def test_a_mistyped_manifest_record_is_refused(env: Env) -> None:
    assert (await sync(env))[0] == 0
    data = json.loads(manifest_path(env).read_text())
    data["files"]["bin/linux/amd64/kubectl"]["size"] = "12"
    manifest_path(env).write_text(json.dumps(data))
    code, output = await sync(env)
    assert code == 7, output
    assert "size: expected int" in output


async def test_a_manifest_that_lost_a_record_is_repaired_by_the_next_sync(env: Env) -> None:
    assert (await sync(env))[0] == 0
    data = json.loads(manifest_path(env).read_text())
    del data["files"]["bin/linux/amd64/kubectl.sigstore.json"]
    manifest_path(env).write_text(json.dumps(data))
    env.dl.log.clear()
    assert (await sync(env))[0] == 0
    assert env.dl.count(KUBECTL) == 1  # fetched and checked again, with what vouches for it
    code, output = await cli(env, "verify")
    assert code == 0, output


async def _staged_state(env: Env) -> Path:
    """A release with some files verified and staged, one failed: a later run resumes it."""
    env.dl.faults.add(KUBECTL, *["404"] * 5)
    code, output = await sync(env)
    assert code != 0, output
    journal = env.root / STATE / "staging" / f"{V}.journal"
    assert journal.is_file()
    env.dl.faults = type(env.dl.faults)()
    return journal


async def test_a_staged_file_changed_on_disk_is_fetched_again(env: Env) -> None:
    await _staged_state(env)
    staged = env.root / STATE / "staging" / V / "bin/linux/amd64/kubeadm"
    data = bytearray(staged.read_bytes())
    data[len(data) // 2] ^= 0x01
    staged.write_bytes(bytes(data))
    env.dl.log.clear()
    code, output = await sync(env)
    assert code == 0, output
    assert env.dl.count(KUBEADM) == 1
    assert (env.root / KUBEADM).read_bytes() == env.tree.files[KUBEADM]
    assert tree_problems(env.root, env.tree, WANTED) == []


@pytest.mark.parametrize("damage", ["cut-last-line", "not-utf8", "deep", "wrong-types"])
async def test_a_damaged_journal_is_recovered_from(env: Env, damage: str) -> None:
    journal = await _staged_state(env)
    text = journal.read_bytes()
    if damage == "cut-last-line":
        journal.write_bytes(text[:-40])
    elif damage == "not-utf8":
        journal.write_bytes(NOT_UTF8 + b"\n" + text)
    elif damage == "deep":
        journal.write_bytes(DEEP + b"\n" + text)
    else:
        journal.write_bytes(b'{"path": 1, "record": []}\n[1, 2]\n"x"\n' + text)
    code, output = await sync(env)
    assert code == 0, output
    assert tree_problems(env.root, env.tree, WANTED) == []
    assert (await cli(env, "verify"))[0] == 0


@pytest.mark.parametrize(
    "status",
    [
        DEEP,
        NOT_UTF8,
        b'{"last_run": "yesterday", "last_success": [1], "last_success_ts": "soon"}',
        b'{"last_run": {"finished_at": 5, "outcome": {}, "exit_code": "0"}}',
        b"[]",
    ],
)
async def test_a_corrupt_status_file_is_rebuilt(env: Env, status: bytes) -> None:
    assert (await sync(env))[0] == 0
    (env.root / STATE / "status.json").write_bytes(status)
    metrics = env.tmp / "metrics.prom"
    env.write_config(report={"metrics_file": str(metrics)})
    env.write_config(select={"platforms": ["linux/amd64", "linux/arm64"]})
    env.dl.faults.add(KUBECTL.replace("amd64", "arm64"), *["503"] * 20)
    code, output = await sync(env)
    assert code == 6, output  # the run's real outcome, not a crash while recording it
    assert "k8s_mirror_last_run_exit_code 6" in metrics.read_text()
    code, output = await cli(env, "status")
    assert code == 0, output
    assert "(exit 6)" in output


@pytest.mark.parametrize("content", [DEEP, NOT_UTF8, b'{"url": []}'])
async def test_corrupt_resume_metadata_restarts_the_download(env: Env, content: bytes) -> None:
    await _staged_state(env)
    part = env.root / STATE / "partial" / V / "bin/linux/amd64/kubectl"
    part.parent.mkdir(parents=True, exist_ok=True)
    part.write_bytes(b"x" * 100)
    part.with_name("kubectl.meta").write_bytes(content)
    code, output = await sync(env)
    assert code == 0, output
    assert (env.root / KUBECTL).read_bytes() == env.tree.files[KUBECTL]


async def test_corrupt_audit_progress_is_ignored(env: Env) -> None:
    assert (await sync(env))[0] == 0
    (env.root / STATE / "audit-progress.json").write_bytes(DEEP)
    code, output = await cli(env, "verify", "--resume")
    assert code == 0, output


# -- the configuration and the process --------------------------------------------------------


async def test_the_filesystem_root_is_refused_as_a_tree(env: Env) -> None:
    env.write_config(tree={"root": "/"})
    code, output = await sync(env)
    assert code == 2, output
    assert "tree.root" in output


async def test_an_overlong_sums_path_is_refused_as_unsafe(env: Env) -> None:
    sums = env.tree.files[f"release/{V}/SHA256SUMS"].decode()
    env.tree.set_sums_text(V, sums + "\n" + "a" * 64 + "  bin/" + "x" * 10_000)
    code, output = await sync(env)
    assert code == 5, output
    assert "longer than" in output
    assert len(output) < 4000


async def test_sigterm_at_start_up_exits_130(env: Env) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mirror",
        "sync",
        "--config",
        str(env.config_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    await asyncio.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = await proc.communicate()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err


# -- a full disk and read-only media (need root for a tmpfs) ------------------------------------


@contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root and mount(8) (CI runs as root)")
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_a_full_disk_is_recorded_where_it_can_be(env: Env) -> None:
    metrics = env.tmp / "metrics.prom"  # on another filesystem than the tree
    env.write_config(report={"metrics_file": str(metrics)})
    arm64 = KUBECTL.replace("amd64", "arm64")
    env.tree.replace_file(arm64, os.urandom(3 << 20), resign=True)
    with tmpfs(env.root, "2m"):
        assert (await sync(env))[0] == 0
        env.write_config(select={"platforms": ["linux/amd64", "linux/arm64"]})
        code, output = await sync(env)
        assert code == 7, output
        assert "No space left" in output
        assert "k8s_mirror_last_run_exit_code 7" in metrics.read_text()
        status = json.loads((env.root / STATE / "status.json").read_text())
        assert status["last_run"]["exit_code"] == 7
        assert tree_problems(env.root, env.tree, WANTED) == []
        assert not (env.root / arm64).exists()


async def test_verify_and_status_work_on_read_only_media(env: Env) -> None:
    with tmpfs(env.root, "64m"):
        assert (await sync(env))[0] == 0
        subprocess.run(["mount", "-o", "remount,ro", str(env.root)], check=True)
        code, output = await cli(env, "verify")
        assert code == 0, output
        code, output = await cli(env, "verify", "--resume")
        assert code == 0, output
        code, output = await cli(env, "status")
        assert code == 0, output
        code, output = await sync(env)
        assert code == 7, output
