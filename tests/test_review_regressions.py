"""Hostile or unlucky situations found in review, each pinned by a test."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestServer

from mirror.errors import LocalStoreError, PartialSyncError, PruneGuardError, UpstreamError
from mirror.store import Store
from tests.conftest import Env

KUBECTL = "release/v1.34.2/bin/linux/amd64/kubectl"


async def test_rekor_outage_keeps_verified_downloads_for_the_next_run(env: Env) -> None:
    rekor = env.rekor_url
    # A body over fetch.WHOLE_BODY_MAX_BYTES streams to disk with resume metadata (upstream
    # republished kubectl at 2 MiB, re-signed). Per-file behaviour: with release binding,
    # nothing but the SBOM would be fetched (below).
    env.tree.replace_file(KUBECTL, bytes(range(256)) * (8 << 10), resign=True)
    env.write_config(
        verify={"rekor_url": "http://127.0.0.1:9", "release_binding": "off"},
        upstream={"retries": 0},
    )
    first = await env.sync()
    assert first.exit_code == UpstreamError.exit_code
    partial = env.root / ".k8s-mirror/partial/v1.34.2/bin/linux/amd64/kubectl"
    assert partial.stat().st_size == len(env.tree.files[KUBECTL])
    env.write_config(verify={"rekor_url": rekor})
    env.dl.log.clear()
    second = await env.sync()
    assert second.exit_code == 0, second.failures
    # The whole partial is finished from disk: the server only answered 416, sent no body.
    (request,) = env.dl.requests(KUBECTL)
    assert request.status == 416
    assert (env.root / KUBECTL).read_bytes() == env.tree.files[KUBECTL]


async def test_a_small_download_kept_by_a_rekor_outage_is_simply_fetched_again(
    env: Env,
) -> None:
    """A body of at most fetch.WHOLE_BODY_MAX_BYTES is received whole and written without
    resume metadata: the next run asks for all of it again (one small request) and verifies
    it like any other."""
    rekor = env.rekor_url
    env.write_config(
        verify={"rekor_url": "http://127.0.0.1:9", "release_binding": "off"},
        upstream={"retries": 0},
    )
    first = await env.sync()
    assert first.exit_code == UpstreamError.exit_code
    env.write_config(verify={"rekor_url": rekor})
    env.dl.log.clear()
    second = await env.sync()
    assert second.exit_code == 0, second.failures
    (request,) = env.dl.requests(KUBECTL)
    assert request.status == 200 and request.range is None
    assert (env.root / KUBECTL).read_bytes() == env.tree.files[KUBECTL]


async def test_rekor_outage_fetches_only_the_sbom_and_the_next_run_completes(env: Env) -> None:
    """Release binding needs the verified SBOM first: while Rekor is down nothing else of the
    release is downloaded, and the SBOM's download is kept for the next run."""
    rekor = env.rekor_url
    env.write_config(verify={"rekor_url": "http://127.0.0.1:9"}, upstream={"retries": 0})
    first = await env.sync()
    assert first.exit_code == UpstreamError.exit_code
    sbom = "release/v1.34.2/kubernetes-release.spdx"
    # The SBOM's companions, in every signature form (the release's form is probed on it).
    suffixes = ("", ".sha256", ".sha512", ".sig", ".cert", ".sigstore.json")
    assert {g for g in env.release_gets() if "/SHA" not in g} == {sbom + s for s in suffixes}
    assert (env.root / ".k8s-mirror/partial/v1.34.2/kubernetes-release.spdx").is_file()
    assert not (env.root / "release/v1.34.2").exists()
    env.write_config(verify={"rekor_url": rekor})
    second = await env.sync()
    assert second.exit_code == 0, second.failures
    assert (env.root / KUBECTL).read_bytes() == env.tree.files[KUBECTL]


async def test_hostile_rekor_json_fails_closed(
    env: Env, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    async def nested(request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 200_000, content_type="application/json")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", nested)
    server = await aiohttp_server(app, host="127.0.0.1")
    env.write_config(verify={"rekor_url": str(server.make_url("")).rstrip("/")})
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == 5, result.stderr
    assert "not JSON" in result.stderr
    assert "Traceback" not in result.stderr


async def test_symlinked_release_dir_is_refused(env: Env) -> None:
    outside = env.tmp / "outside"
    outside.mkdir()
    (env.root / "release").mkdir(parents=True)
    (env.root / "release/v1.34.2").symlink_to(outside)
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == LocalStoreError.exit_code, result.stderr
    assert "symlink" in result.stderr
    assert list(outside.iterdir()) == []


async def test_symlinked_lock_file_is_refused(env: Env) -> None:
    victim = env.tmp / "victim.conf"
    victim.write_text("precious")
    (env.root / ".k8s-mirror").mkdir(parents=True)
    (env.root / ".k8s-mirror/lock").symlink_to(victim)
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == LocalStoreError.exit_code, result.stderr
    assert victim.read_text() == "precious"


async def test_dry_run_reports_a_prune_guard_refusal(env: Env) -> None:
    env.write_config(select={"versions": ["stable", "v1.33.6"]})
    assert (await env.sync()).exit_code == 0
    env.write_config(select={"versions": ["stable"]}, tree={"prune": True, "prune_max_files": 3})
    result = await env.cli("sync", "--config", str(env.config_path), "--dry-run")
    assert result.exit_code == PruneGuardError.exit_code
    assert "prune release/v1.33.6/" in result.stdout
    assert "tree.prune_max_files" in result.stderr
    assert (env.root / "release/v1.33.6").is_dir()


async def test_sigterm_interrupts_waiting_for_the_lock(env: Env) -> None:
    store = Store(env.root)
    store.prepare()
    with store.lock():
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mirror",
            "sync",
            "--config",
            str(env.config_path),
            "--wait",
            "60",
            cwd=env.tmp,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        await asyncio.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode == 130, err


async def test_a_marker_that_does_not_resolve_holds_back_nothing_else(env: Env) -> None:
    env.write_config(select={"versions": ["stable", "stable-1.31"]})
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == PartialSyncError.exit_code, result.stderr
    assert "release/stable-1.31.txt" in result.stderr
    assert (env.root / KUBECTL).is_file()
    assert (env.root / "release/stable.txt").read_text() == "v1.34.2"


async def test_markers_never_move_backwards_or_out_of_their_series(env: Env) -> None:
    env.write_config(select={"versions": ["stable", "stable-1.33"]})
    assert (await env.sync()).exit_code == 0
    # A hostile (or broken) upstream rolls stable back and points stable-1.33 at 1.34.
    env.tree.set_marker("stable", "v1.33.6")
    env.tree.set_marker("stable-1.33", "v1.34.2")
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == 5, result.stderr
    assert "stable would move back from v1.34.2 to v1.33.6" in result.stderr
    assert "stable-1.33 names v1.34.2, outside its series" in result.stderr
    assert (env.root / "release/stable.txt").read_text() == "v1.34.2"
    assert (env.root / "release/stable-1.33.txt").read_text() == "v1.33.6"
