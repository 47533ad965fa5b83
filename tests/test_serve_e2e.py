"""A synced tree served by ``k8s-mirror serve`` behaves like dl.k8s.io for its clients."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable

from aiohttp.test_utils import TestServer

from mirror.serve import make_app
from tests.conftest import Env


async def test_clients_get_files_whose_digests_match_the_sums(
    env: Env, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    env.write_config(select={"platforms": ["linux/amd64", "darwin/arm64"]})
    assert (await env.sync()).exit_code == 0
    server = await aiohttp_server(make_app(env.root), host="127.0.0.1")
    base = str(server.make_url("")).rstrip("/")
    version = (env.root / "release/stable.txt").read_text()

    async def curl(path: str) -> bytes:
        proc = await asyncio.create_subprocess_exec(
            "curl",
            "-q",
            "--noproxy",
            "*",
            "-sSf",
            f"{base}/{path}",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err
        return out

    assert (await curl("release/stable.txt")).decode() == version
    sums = (await curl(f"release/{version}/SHA256SUMS")).decode().split("\n")
    mirrored = 0
    for line in sums:
        digest, path = line.split("  ")
        if not (env.root / f"release/{version}/{path}").exists():
            continue
        body = await curl(f"release/{version}/{path}")
        assert hashlib.sha256(body).hexdigest() == digest, path
        sidecar = (await curl(f"release/{version}/{path}.sha256")).decode()
        assert sidecar == digest
        mirrored += 1
    assert mirrored == 5  # darwin/arm64 carries only kubectl of the three; + the SBOM
    # The state directory and the manifests are not reachable.
    proc = await asyncio.create_subprocess_exec(
        "curl",
        "-q",
        "--noproxy",
        "*",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        f"{base}/.k8s-mirror/manifests/{version}.json",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    assert out == b"404"


async def test_a_mirror_can_be_mirrored_by_swapping_the_host(
    env: Env, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    """Downstream sites point their upstream.url at our server and get a verified copy."""
    assert (await env.sync()).exit_code == 0
    server = await aiohttp_server(make_app(env.root), host="127.0.0.1")
    downstream = env.tmp / "downstream"
    env.write_config(
        upstream={"url": str(server.make_url("")).rstrip("/")}, tree={"root": str(downstream)}
    )
    result = await env.cli("sync", "--config", str(env.config_path), "--no-progress")
    assert result.exit_code == 0, result.stderr
    for name in ("kubectl", "kubeadm", "kubelet"):
        rel = f"release/v1.34.2/bin/linux/amd64/{name}"
        assert (downstream / rel).read_bytes() == (env.root / rel).read_bytes()
    verify = await env.cli("verify", "--root", str(downstream))
    assert verify.exit_code == 0, verify.stdout
