"""Shared fixtures: a fake dl.k8s.io and a fake Sigstore stack on 127.0.0.1, and a mirror config
pointing at them. Everything the product does runs for real against these servers."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from mirror.config import Config, load_config
from mirror.report import RunReport
from mirror.sync import SyncRun
from tests.fakes.dlserver import FakeDl
from tests.fakes.release import UpstreamTree
from tests.fakes.sigstore_stack import FakeSigstore

REPO = Path(__file__).resolve().parent.parent
TEST_PLATFORMS = ("linux/amd64", "linux/arm64", "darwin/arm64", "windows/amd64")


@dataclass
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


@dataclass
class Env:
    """A fake upstream + Sigstore stack and a mirror.toml pointing at them."""

    tmp: Path
    sigstore: FakeSigstore
    tree: UpstreamTree
    dl: FakeDl
    dl_url: str
    rekor_url: str
    trusted_root: Path
    root: Path
    config_path: Path
    servers: list[TestServer] = field(default_factory=list)
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)

    async def stop_servers(self) -> None:
        """Take the fake dl.k8s.io and Rekor off the network (for offline checks)."""
        for server in self.servers:
            await server.close()

    def write_config(self, **sections: dict[str, Any]) -> Path:
        """Update the settings with ``sections`` (they stick) and rewrite mirror.toml."""
        for name, values in sections.items():
            self.settings.setdefault(name, {}).update(values)
        self.config_path.write_text(_toml(self.settings))
        return self.config_path

    def config(self, **sections: dict[str, Any]) -> Config:
        return load_config(self.write_config(**sections))

    async def sync(self, **sections: dict[str, Any]) -> RunReport:
        return await SyncRun(self.config(**sections)).run()

    async def cli(self, *args: str, env: dict[str, str] | None = None) -> CliResult:
        """Run ``python -m mirror ARGS`` as a subprocess while this loop keeps serving."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "mirror",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=self.tmp,
            env={**os.environ, **(env or {})},
        )
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return CliResult(proc.returncode, out.decode(), err.decode())

    def listing(self) -> list[str]:
        """Every served file under the root (state dir excluded), sorted."""
        return sorted(
            str(p.relative_to(self.root))
            for p in self.root.rglob("*")
            if p.is_file() and ".k8s-mirror" not in p.parts
        )

    def release_gets(self) -> list[str]:
        """Paths of GETs that reached files inside release directories (not markers)."""
        return [r.key for r in self.dl.requests() if r.key.count("/") >= 2]


def expected_listing(version: str, platform: str, names: tuple[str, ...]) -> list[str]:
    """Served files a sync of ``names`` for one platform of a signed release produces
    (the release SBOM always comes along: it binds the files to the release)."""
    files = []
    for base in [f"release/{version}/bin/{platform}/{n}" for n in names] + [
        f"release/{version}/kubernetes-release.spdx"
    ]:
        files += [base] + [
            base + s for s in (".sha256", ".sha512", ".sig", ".cert", ".sigstore.json")
        ]
    for sums in ("SHA256SUMS", "SHA512SUMS"):
        files += [f"release/{version}/{sums}{s}" for s in ("", ".sha256", ".sha512")]
    return files


def _toml(data: dict[str, dict[str, Any]]) -> str:
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{k} = {value(v)}" for k, v in values.items())
    return "\n".join(lines) + "\n"


@pytest.fixture
def sigstore() -> FakeSigstore:
    return FakeSigstore()


@pytest.fixture
def upstream_tree(sigstore: FakeSigstore) -> UpstreamTree:
    tree = UpstreamTree(seed="tests", signer=sigstore.sign_blob)
    tree.add_release("v1.34.2", platforms=TEST_PLATFORMS)
    tree.add_release("v1.33.6", platforms=TEST_PLATFORMS)
    tree.set_marker("stable", "v1.34.2")
    tree.set_marker("stable-1.33", "v1.33.6")
    return tree


@pytest.fixture
async def env(
    tmp_path: Path,
    sigstore: FakeSigstore,
    upstream_tree: UpstreamTree,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> Env:
    dl = FakeDl(upstream_tree)
    dl_server = await aiohttp_server(dl.app, host="127.0.0.1")
    rekor_server = await aiohttp_server(sigstore.rekor_app(), host="127.0.0.1")
    dl_url = str(dl_server.make_url("")).rstrip("/")
    rekor_url = str(rekor_server.make_url("")).rstrip("/")
    trusted_root = tmp_path / "trusted_root.json"
    trusted_root.write_text(sigstore.trusted_root_json(rekor_url))
    e = Env(
        tmp=tmp_path,
        sigstore=sigstore,
        tree=upstream_tree,
        dl=dl,
        dl_url=dl_url,
        rekor_url=rekor_url,
        trusted_root=trusted_root,
        root=tmp_path / "tree",
        config_path=tmp_path / "mirror.toml",
        servers=[dl_server, rekor_server],
    )
    e.settings = {
        "upstream": {
            "url": dl_url,
            "concurrency": 4,
            "retries": 3,
            "connect_timeout_s": 2,
            "read_timeout_s": 2,
            "backoff_base_s": 0.01,
            "backoff_max_s": 0.05,
        },
        "tree": {"root": str(e.root)},
        "select": {
            "versions": ["stable"],
            "platforms": ["linux/amd64"],
            "components": ["kubectl", "kubeadm", "kubelet"],
        },
        "verify": {"rekor_url": rekor_url, "trusted_root": str(trusted_root)},
    }
    e.write_config()
    return e
