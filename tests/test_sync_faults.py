"""Network faults, resume, hostile SUMS, disagreements, markers and the lock, end to end."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from mirror.errors import IntegrityError, LockHeldError, PartialSyncError
from mirror.store import Store
from tests.conftest import Env
from tests.fakes.dlserver import Fault

KUBECTL = "release/v1.34.2/bin/linux/amd64/kubectl"
KUBE3 = ("kubectl", "kubeadm", "kubelet")
SERVED_KUBECTL = Path("release/v1.34.2/bin/linux/amd64/kubectl")


def no_partials(env: Env) -> bool:
    partial = env.root / ".k8s-mirror/partial"
    return not partial.exists() or not any(p.is_file() for p in partial.rglob("*"))


@pytest.mark.parametrize(
    ("faults", "gets"),
    [
        # Each fault once, then service is normal: the run recovers with exactly these GETs.
        (["corrupt"], 2),
        ([Fault("429", retry_after_s=0)], 2),
        (["503"], 2),
        (["500", "503", "503"], 4),
        # aiohttp itself retries a connection dropped before any response once; two drops
        # reach our retry loop.
        (["reset", "reset"], 3),
        (["disconnect", "disconnect"], 3),
        ([Fault("slow", stall_s=5, after_bytes=10)], 2),
        (["truncate"], 2),
    ],
    ids=lambda v: str(v),
)
async def test_fault_recovers_with_exact_retries(env: Env, faults: list[object], gets: int) -> None:
    env.dl.faults.add(KUBECTL, *faults)  # type: ignore[arg-type]
    report = await env.sync(upstream={"read_timeout_s": 0.5})
    assert report.exit_code == 0, report.failures
    assert env.dl.count(KUBECTL) == gets
    assert (env.root / SERVED_KUBECTL).read_bytes() == env.tree.files[KUBECTL]
    assert env.dl.faults.pending() == {}
    assert no_partials(env)


async def test_retry_after_is_honoured(env: Env) -> None:
    env.dl.faults.add(KUBECTL, Fault("429", retry_after_s=1))
    started = time.monotonic()
    report = await env.sync()
    assert report.exit_code == 0
    assert time.monotonic() - started >= 1.0
    first, second = env.dl.requests(KUBECTL)
    assert second.at_s - first.at_s >= 1.0


@pytest.mark.parametrize(
    ("faults", "gets", "exit_code", "reason"),
    [
        (["404"], 1, PartialSyncError.exit_code, "HTTP 404"),
        (["403"], 1, PartialSyncError.exit_code, "HTTP 403"),
        (["503"] * 4, 4, PartialSyncError.exit_code, "HTTP 503"),
        (["corrupt", "corrupt"], 2, IntegrityError.exit_code, "does not match"),
    ],
    ids=["404", "403", "503-exhausted", "corrupt-twice"],
)
async def test_fault_that_persists_fails_that_file_only(
    env: Env, faults: list[str], gets: int, exit_code: int, reason: str
) -> None:
    env.dl.faults.add(KUBECTL, *faults)
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == exit_code, result.stderr
    assert KUBECTL in result.stderr and reason in result.stderr
    assert env.dl.count(KUBECTL) == gets
    # The release is new and incomplete: nothing of it is served, and no marker names it.
    assert not (env.root / "release/v1.34.2").exists()
    assert not (env.root / "release/stable.txt").exists()
    # The other files are verified and staged, so the next run only fetches kubectl.
    env.dl.log.clear()
    second = await env.sync()
    assert second.exit_code == 0
    assert second.files_reused == 3 and second.files_fetched == 1
    primaries = [k for k in env.release_gets() if k.rsplit("/", 1)[-1] in KUBE3]
    assert primaries == [KUBECTL]


async def test_partial_file_is_resumed_with_range_in_the_next_run(env: Env) -> None:
    big = os.urandom(3 * 2**20 + 123)
    env.tree.replace_file(KUBECTL, big, resign=True)
    env.dl.faults.add(KUBECTL, "truncate")
    first = await env.sync(upstream={"retries": 0})
    assert first.exit_code == PartialSyncError.exit_code
    partial = env.root / ".k8s-mirror/partial/v1.34.2/bin/linux/amd64/kubectl"
    kept = partial.stat().st_size
    assert 0 < kept < len(big)
    env.dl.log.clear()
    second = await env.sync()
    assert second.exit_code == 0, second.failures
    (request,) = env.dl.requests(KUBECTL)
    assert request.range == f"bytes={kept}-" and request.if_range
    assert request.status == 206
    assert (env.root / SERVED_KUBECTL).read_bytes() == big


async def test_resume_restarts_when_upstream_file_changed(env: Env) -> None:
    """If-Range with a stale ETag: the server answers 200 and we restart from zero."""
    big = os.urandom(3 * 2**20)
    env.tree.replace_file(KUBECTL, big, resign=True)
    env.dl.faults.add(KUBECTL, "truncate")
    assert (await env.sync(upstream={"retries": 0})).exit_code == PartialSyncError.exit_code
    newer = os.urandom(3 * 2**20)
    env.tree.replace_file(KUBECTL, newer, resign=True)
    env.dl.log.clear()
    assert (await env.sync()).exit_code == 0
    (request,) = env.dl.requests(KUBECTL)
    assert request.range is not None and request.status == 200
    assert (env.root / SERVED_KUBECTL).read_bytes() == newer


HOSTILE_SUMS = {
    "dot-dot": "{h}  ../../../../tmp/evil",
    "absolute": "{h}  /etc/cron.d/evil",
    "backslash": "{h}  bin\\..\\evil",
    "bad-hex": "{h_upper}  bin/linux/amd64/kubectl",
    "short-hex": "{h_short}  bin/linux/amd64/kubectl",
    "duplicate": "{h}  bin/linux/amd64/kubectl\n{h}  bin/linux/amd64/kubectl",
    "one-space": "{h} bin/linux/amd64/kubectl",
    "hidden": "{h}  bin/linux/amd64/.kubectl",
}


@pytest.mark.parametrize("case", sorted(HOSTILE_SUMS))
async def test_hostile_sums_line_is_rejected_and_nothing_written(env: Env, case: str) -> None:
    sums = env.tree.files["release/v1.34.2/SHA256SUMS"].decode()
    h = "a" * 64
    line = HOSTILE_SUMS[case].format(h=h, h_upper="A" * 64, h_short="a" * 63)
    env.tree.set_sums_text("v1.34.2", sums + "\n" + line)
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == IntegrityError.exit_code, result.stderr
    assert "release/v1.34.2/SHA256SUMS" in result.stderr
    assert env.listing() == []
    assert not Path("/tmp/evil").exists()
    assert [p for p in env.tmp.rglob("*evil*")] == []


DISAGREEMENTS = {
    # content differs from SUMS (sidecars updated to the new content, SUMS not)
    "content-vs-sums": dict(update_sums=False, update_sidecars=True),
    # SUMS updated, sidecars still the old digests
    "sidecar-vs-sums": dict(update_sums=True, update_sidecars=False),
    # neither updated: content differs from both
    "content-vs-both": dict(update_sums=False, update_sidecars=False),
}


@pytest.mark.parametrize("case", sorted(DISAGREEMENTS))
async def test_sums_sidecar_content_disagreement_fails_that_file(env: Env, case: str) -> None:
    env.tree.replace_file(KUBECTL, b"different bytes" * 300, **DISAGREEMENTS[case])  # type: ignore[arg-type]
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == IntegrityError.exit_code, result.stderr
    assert KUBECTL in result.stderr
    assert not (env.root / SERVED_KUBECTL).exists()
    assert not (env.root / "release/stable.txt").exists()
    assert no_partials(env)


async def test_sha512sums_disagreeing_with_sha256sums_fails(env: Env) -> None:
    sums512 = env.tree.files["release/v1.34.2/SHA512SUMS"].decode().split("\n")
    env.tree.set_sums_text("v1.34.2", "\n".join(sums512[1:]), which="SHA512SUMS")
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == IntegrityError.exit_code
    assert "list different files" in result.stderr
    assert env.listing() == []


async def test_marker_never_names_an_incomplete_release(env: Env) -> None:
    env.write_config(select={"versions": ["stable"]})
    env.tree.set_marker("stable", "v1.33.6")
    assert (await env.sync()).exit_code == 0
    assert (env.root / "release/stable.txt").read_text() == "v1.33.6"
    # stable moves upstream, but one file of the new release cannot be fetched
    env.tree.set_marker("stable", "v1.34.2")
    env.dl.faults.add(KUBECTL, "404")
    report = await env.sync()
    assert report.exit_code == PartialSyncError.exit_code
    assert (env.root / "release/stable.txt").read_text() == "v1.33.6"
    assert not (env.root / "release/v1.34.2").exists()
    # once complete, the marker moves
    report = await env.sync()
    assert report.exit_code == 0
    assert (env.root / "release/stable.txt").read_text() == "v1.34.2"
    assert (env.root / SERVED_KUBECTL).is_file()


async def test_second_concurrent_run_gets_lock_held_exit_code(env: Env) -> None:
    store = Store(env.root)
    store.prepare()
    with store.lock():
        result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == LockHeldError.exit_code
    assert "holds the lock" in result.stderr
    assert env.listing() == []


async def test_wait_flag_waits_for_the_lock(env: Env) -> None:
    store = Store(env.root)
    store.prepare()
    lock = store.lock()
    lock.__enter__()
    task = asyncio.create_task(
        env.cli("sync", "--config", str(env.config_path), "--no-progress", "--wait", "30")
    )
    await asyncio.sleep(1.5)
    assert not task.done()
    lock.__exit__(None, None, None)
    result = await task
    assert result.exit_code == 0, result.stderr


async def test_kill_9_mid_download_leaves_tree_consistent_and_next_run_resumes(env: Env) -> None:
    big = os.urandom(3 * 2**20)
    env.tree.replace_file(KUBECTL, big, resign=True)
    env.dl.faults.add(KUBECTL, Fault("slow", stall_s=30, after_bytes=2 * 2**20))
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mirror",
        "sync",
        "--config",
        str(env.config_path),
        "--no-progress",
        cwd=env.tmp,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    partial = env.root / ".k8s-mirror/partial/v1.34.2/bin/linux/amd64/kubectl"
    for _ in range(200):
        if partial.exists() and partial.stat().st_size >= 2**20:
            break
        await asyncio.sleep(0.05)
    else:
        pytest.fail("download never started")
    proc.send_signal(signal.SIGKILL)
    await proc.wait()
    # Served tree: nothing of the interrupted release, no marker (only the trust root).
    assert env.listing() == ["sigstore/trusted_root.json"]
    env.dl.log.clear()
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == 0, result.stderr
    (request,) = env.dl.requests(KUBECTL)
    assert request.range is not None and request.status == 206
    assert (env.root / SERVED_KUBECTL).read_bytes() == big


async def test_redirects_are_followed(env: Env) -> None:
    env.dl.redirect_prefix = "/cdn"
    report = await env.sync()
    assert report.exit_code == 0, report.failures
    assert any(r.status == 302 for r in env.dl.log)
