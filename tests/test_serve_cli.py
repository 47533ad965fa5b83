"""``k8s-mirror serve`` as a user starts it: kubespray's URL patterns, with and without
``--prefix /dl.k8s.io``, and a busy port reported in one line with its own exit code."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp

from tests.conftest import Env

PROGRAM = str(Path(sys.executable).parent / "k8s-mirror")
KUBE_VERSION = "1.34.2"  # kubespray's kube_version carries no "v"; its URLs add it


def kubespray_urls(dl_k8s_io_url: str) -> list[str]:
    """kubespray's download URLs: ``{{ dl_k8s_io_url }}/release/v{{ kube_version }}/bin/linux/
    {{ image_arch }}/<binary>``; with files_repo, dl_k8s_io_url is
    ``{{ files_repo }}/dl.k8s.io``."""
    return [
        f"{dl_k8s_io_url}/release/v{KUBE_VERSION}/bin/linux/amd64/{name}"
        for name in ("kubelet", "kubectl", "kubeadm")
    ]


@asynccontextmanager
async def serving(root: Path, *args: str) -> AsyncIterator[str]:
    proc = await asyncio.create_subprocess_exec(
        PROGRAM, "serve", "--root", str(root), "--port", "0", *args,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        while True:
            line = (await asyncio.wait_for(proc.stderr.readline(), 30)).decode()
            assert line, "serve exited before listening"
            if m := re.search(r"read-only at (http://\S+)/", line):
                break
        yield m.group(1)
    finally:
        proc.terminate()
        assert await proc.wait() == 0


async def status_and_body(url: str) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read()


async def test_kubespray_url_patterns_resolve_with_and_without_prefix(env: Env) -> None:
    assert (await env.sync()).exit_code == 0
    tree_file = env.root / f"release/v{KUBE_VERSION}/bin/linux/amd64"
    async with serving(env.root) as base:
        for url in kubespray_urls(base):
            status, body = await status_and_body(url)
            assert status == 200 and body == (tree_file / url.rsplit("/", 1)[1]).read_bytes()
        assert (await status_and_body(kubespray_urls(f"{base}/dl.k8s.io")[0]))[0] == 404
    async with serving(env.root, "--prefix", "/dl.k8s.io") as files_repo:
        for url in kubespray_urls(f"{files_repo}/dl.k8s.io"):
            status, body = await status_and_body(url)
            assert status == 200 and body == (tree_file / url.rsplit("/", 1)[1]).read_bytes()
        status, body = await status_and_body(f"{files_repo}/dl.k8s.io/release/stable.txt")
        assert (status, body) == (200, f"v{KUBE_VERSION}".encode())
        # Only below the prefix: the bare layout and the state directory stay 404.
        assert (await status_and_body(kubespray_urls(files_repo)[0]))[0] == 404
        hidden = f"{files_repo}/dl.k8s.io/.k8s-mirror/status.json"
        assert (await status_and_body(hidden))[0] == 404


async def test_a_bad_prefix_is_a_flag_error(env: Env, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        PROGRAM, "serve", "--root", str(tmp_path), "--prefix", "dl.k8s.io",
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert err.decode().startswith("k8s-mirror: error: --prefix: 'dl.k8s.io' must start with")


async def test_a_busy_port_is_one_line_and_exit_10(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = await asyncio.create_subprocess_exec(
            PROGRAM, "serve", "--root", str(tmp_path), "--port", str(port),
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await proc.communicate()
    assert proc.returncode == 14
    lines = err.decode().splitlines()
    assert lines == [
        f"k8s-mirror: error: cannot listen on 127.0.0.1:{port}: the address is already in use",
        "k8s-mirror: hint: stop what listens there or pick another --port",
    ]
