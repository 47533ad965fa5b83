"""``k8s-mirror demo``: a whole signed sync and an offline verify, with no network.

Owns the demo directory and the look-alike servers' lifetime. It starts, on 127.0.0.1, a
dl.k8s.io look-alike serving a generated signed release and a Rekor look-alike, writes the
throwaway CA's trust root and a ready ``mirror.toml`` into the demo directory, then runs the
installed program's own ``sync`` and ``verify`` as child processes: exactly what a user types,
nothing skipped. Nothing is written outside the demo directory (the Sigstore/XDG directories of
the children point into it too), so it works without a writable home directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shlex
import shutil
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from mirror.demo.dlserver import FakeDl
from mirror.demo.release import UpstreamTree
from mirror.demo.sigstore_stack import FakeSigstore
from mirror.errors import ConfigError, PortInUseError

VERSION = "v1.34.2"
PLATFORM = "linux/amd64"
FILE_SIZE_BYTES = 1 << 20
"""Size of each generated binary and image: large enough that the bars move."""
MARKER_FILE = ".k8s-mirror-demo"
TRUST_ROOT_NAME = "DEMO-ONLY-trusted_root.json"
WARNING = (
    "LOCAL DEMONSTRATION: the release, its signatures and the trust root are made up by a "
    "throwaway CA on this machine. Never use {trust_root} (or a mirror.toml naming it) "
    "for real data."
)


@dataclass(frozen=True)
class DemoPaths:
    """Everything the demo writes, all inside ``directory``."""

    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "mirror.toml"

    @property
    def trust_root(self) -> Path:
        return self.directory / TRUST_ROOT_NAME

    @property
    def tree(self) -> Path:
        return self.directory / "tree"

    @property
    def xdg(self) -> Path:
        return self.directory / ".xdg"

    def child_env(self) -> dict[str, str]:
        """The children's environment: XDG dirs (sigstore's TUF cache) inside the demo dir,
        and no proxy, since every request goes to 127.0.0.1."""
        env = {
            k: v
            for k, v in os.environ.items()
            if k.lower() not in ("https_proxy", "http_proxy", "all_proxy")
        }
        for name in ("DATA", "CACHE", "CONFIG", "STATE"):
            env[f"XDG_{name}_HOME"] = str(self.xdg / name.lower())
        return env


def prepare_directory(directory: Path) -> DemoPaths:
    """Make ``directory`` ready: new, empty, or an earlier demo's (which starts over)."""
    paths = DemoPaths(directory.absolute())
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory}: not a directory", source="--dir")
    if directory.is_dir() and any(directory.iterdir()):
        if not (directory / MARKER_FILE).is_file():
            raise ConfigError(
                f"{directory}: not empty and not an earlier demo's directory", source="--dir"
            )
        # A new run generates a new CA: the earlier tree's bundles would no longer match it.
        for stale in (paths.tree, paths.xdg):
            shutil.rmtree(stale, ignore_errors=True)
    paths.xdg.mkdir(parents=True, exist_ok=True)
    (directory / MARKER_FILE).write_text(
        "Made by `k8s-mirror demo`; running it again here starts the demo over.\n"
    )
    return paths


def demo_config(paths: DemoPaths, dl_url: str, rekor_url: str) -> str:
    """The demo's mirror.toml: the shipped defaults, pointed at the look-alikes."""
    return f"""\
# {WARNING.format(trust_root=TRUST_ROOT_NAME)}
# Written by `k8s-mirror demo`; the URLs below exist only while the demo serves.

[upstream]
url = "{dl_url}"            # the dl.k8s.io look-alike
retries = 2
backoff_base_s = 0.1

[tree]
root = "tree"

[select]
versions = ["stable"]
platforms = ["{PLATFORM}"]
components = []                           # everything of the platform

[verify]
rekor_url = "{rekor_url}"   # the Rekor look-alike
trusted_root = "{TRUST_ROOT_NAME}"
"""


@contextlib.asynccontextmanager
async def serving(app: web.Application, port: int) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1:``port`` (0: any free port); yields its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        try:
            await site.start()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise PortInUseError("127.0.0.1", port) from None
            raise
        host, bound_port = runner.addresses[0][:2]
        yield f"http://{host}:{bound_port}"
    finally:
        await runner.cleanup()


async def run_step(argv: list[str], env: dict[str, str]) -> int:
    """One step as a child process on this terminal; an interruption stops it too."""
    proc = await asyncio.create_subprocess_exec(*argv, env=env)
    try:
        return await proc.wait()
    finally:
        if proc.returncode is None:
            proc.terminate()
            await asyncio.shield(proc.wait())


def commands(paths: DemoPaths) -> list[tuple[str, list[str]]]:
    """Each step of the demo as the command a user would type."""
    config = str(paths.config)
    return [
        ("sync", ["sync", "--config", config]),
        ("verify", ["verify", "--config", config]),
        ("status", ["status", "--root", str(paths.tree)]),
        ("serve", ["serve", "--root", str(paths.tree), "--port", "8080"]),
    ]


def build_upstream() -> tuple[FakeSigstore, UpstreamTree]:
    sigstore = FakeSigstore()
    tree = UpstreamTree(seed="k8s-mirror demo", signer=sigstore.sign_blob)
    tree.add_release(VERSION, platforms=(PLATFORM,), size_bytes=FILE_SIZE_BYTES)
    tree.set_marker("stable", VERSION)
    return sigstore, tree


async def run_demo(
    directory: Path, *, port: int, keep_serving: bool, say: Callable[[str], None]
) -> int:
    """The demo; returns the exit code (that of the first step that failed, else 0)."""
    paths = prepare_directory(directory)
    say(WARNING.format(trust_root=paths.trust_root))
    sigstore, tree = build_upstream()
    rekor_port = port + 1 if port else 0
    async with (
        serving(FakeDl(tree).app, port) as dl_url,
        serving(sigstore.rekor_app(), rekor_port) as rekor_url,
    ):
        paths.trust_root.write_text(sigstore.trusted_root_json(rekor_url))
        paths.config.write_text(demo_config(paths, dl_url, rekor_url))
        say(f"dl.k8s.io look-alike: {dl_url} (release {VERSION}, stable -> {VERSION})")
        say(f"Rekor look-alike:     {rekor_url}")
        say(f"wrote {paths.config} and {paths.trust_root}")
        program = [sys.executable, "-m", "mirror"]
        for step, args in commands(paths)[:2]:
            say(f"\n== {step}: k8s-mirror {shlex.join(args)}")
            code = await run_step(program + args, paths.child_env())
            if code:
                say(f"demo: {step} failed with exit code {code}")
                return code
        say(f"\ndemo: sync and verify succeeded; the mirrored tree is in {paths.tree}")
        say(
            "Each step by hand (sync needs the look-alikes up: "
            + ("they are, until Ctrl-C):" if keep_serving else "run the demo with --keep-serving):")
        )
        for _step, args in commands(paths):
            say(f"  k8s-mirror {shlex.join(args)}")
        if keep_serving:
            say(f"\nserving {dl_url} and {rekor_url}; Ctrl-C stops")
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()
            say("demo: stopped serving")
    return 0
