"""Throughput benchmark: the whole verified k8s-mirror pipeline against curl, same machine.

What it measures, on one local upstream (files on disk served by ``k8s-mirror serve``, which
uses sendfile) and the fake Sigstore stack from the tests (real signatures, real verifier):

- peer A: ``curl --parallel`` of the primary files to disk, then ``sync``;
- peer B: peer A, then ``sha256sum`` and ``sha512sum`` of every file ("download, then hash");
- k8s-mirror: ``k8s-mirror sync`` into an empty tree (download, both digests, sidecars,
  Rekor lookup, Sigstore verification, fsync, atomic promotion), its peak RSS;
- k8s-mirror again with nothing new upstream (the no-change re-sync).

Figures are ratios against peer A measured in the same script, because these machines are
shared and noisy. Run: ``.venv/bin/python bench/run_bench.py [--total-mib 1600] [--files 8]``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from aiohttp import web

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mirror.serve import make_app  # noqa: E402
from tests.fakes.sigstore_stack import FakeSigstore  # noqa: E402

VERSION = "v1.34.2"


def build_upstream(base: Path, stack: FakeSigstore, files: int, total_mib: int) -> list[str]:
    """Write a release with ``files`` binaries of equal size, SUMS, sidecars and signatures."""
    rel = base / "release" / VERSION
    size = total_mib * 2**20 // files
    names = [f"bin/linux/amd64/kube-bench-{i:02d}" for i in range(files)]
    sums256, sums512 = [], []
    block = os.urandom(2**20)
    for i, name in enumerate(names):
        path = rel / name
        path.parent.mkdir(parents=True, exist_ok=True)
        h256, h512 = hashlib.sha256(), hashlib.sha512()
        with open(path, "wb") as handle:
            for j in range(size // 2**20):
                chunk = bytes([i, j % 256]) + block[2:]
                handle.write(chunk)
                h256.update(chunk)
                h512.update(chunk)
        d256, d512 = h256.hexdigest(), h512.hexdigest()
        (rel / f"{name}.sha256").write_text(d256)
        (rel / f"{name}.sha512").write_text(d512)
        signed = stack.sign_blob(path.read_bytes())
        (rel / f"{name}.sig").write_bytes(signed.sig)
        (rel / f"{name}.cert").write_bytes(signed.cert)
        sums256.append(f"{d256}  {name}")
        sums512.append(f"{d512}  {name}")
    for sums_name, lines in (("SHA256SUMS", sums256), ("SHA512SUMS", sums512)):
        body = "\n".join(lines).encode()
        (rel / sums_name).write_bytes(body)
        (rel / f"{sums_name}.sha256").write_text(hashlib.sha256(body).hexdigest())
        (rel / f"{sums_name}.sha512").write_text(hashlib.sha512(body).hexdigest())
    (base / "release" / "stable.txt").write_text(VERSION)
    return names


class Servers:
    """The upstream (k8s-mirror serve) and the fake Rekor on 127.0.0.1, in a background loop."""

    def __init__(self, upstream_root: Path, stack: FakeSigstore) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.urls: list[str] = []
        self.apps = [make_app(upstream_root), stack.rekor_app()]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        self.ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            for app in self.apps:
                runner = web.AppRunner(app, access_log=None)
                await runner.setup()
                site = web.TCPSite(runner, "127.0.0.1", 0)
                await site.start()
                port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
                self.urls.append(f"http://127.0.0.1:{port}")
            self.ready.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()


def timed(cmd: list[str], **kwargs: object) -> tuple[float, int]:
    """Wall seconds and peak RSS (KiB) of a child process.

    Peak RSS is sampled from /proc/<pid>/status (VmHWM, which only grows) rather than taken
    from wait4's ru_maxrss: a forked child's ru_maxrss counts the parent's pages from before
    exec, and this script holds large buffers while it builds the upstream tree.
    """
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, **kwargs)  # type: ignore[call-overload]
    peak = 0
    while proc.poll() is None:
        try:
            with open(f"/proc/{proc.pid}/status") as status:
                for line in status:
                    if line.startswith("VmHWM:"):
                        peak = max(peak, int(line.split()[1]))
        except OSError:
            pass
        time.sleep(0.01)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed with {proc.returncode}")
    return elapsed, peak


def drop_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    subprocess.run(["sync"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mib", type=int, default=1600)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="k8s-mirror-bench-"))
    stack = FakeSigstore()
    upstream = work / "upstream"
    print(f"building {args.files} files, {args.total_mib} MiB in {work} ...", flush=True)
    names = build_upstream(upstream, stack, args.files, args.total_mib)
    servers = Servers(upstream, stack)
    dl_url, rekor_url = servers.urls
    trusted = work / "trusted_root.json"
    trusted.write_text(stack.trusted_root_json(rekor_url))
    config = work / "mirror.toml"
    config.write_text(
        f'[upstream]\nurl = "{dl_url}"\nconcurrency = {args.concurrency}\n'
        f'[tree]\nroot = "{work / "tree"}"\n'
        f'[select]\nversions = ["stable"]\nplatforms = ["linux/amd64"]\ncomponents = []\n'
        f'[verify]\nrekor_url = "{rekor_url}"\ntrusted_root = "{trusted}"\n'
    )
    urls = [f"{dl_url}/release/{VERSION}/{n}" for n in names]
    curl_out = work / "curl"
    k8s_mirror = [sys.executable, "-m", "mirror"]

    results: dict[str, list[float]] = {"curl": [], "curl+hash": [], "k8s-mirror": []}
    rss: list[int] = []
    noop: list[float] = []
    for round_ in range(args.rounds):
        # peer A: curl --parallel to disk, then sync
        drop_dir(curl_out)
        curl_out.mkdir()
        cmd = [
            "curl",
            "-q",
            "--noproxy",
            "*",
            "-sS",
            "--fail",
            "--parallel",
            "--parallel-max",
            str(args.concurrency),
        ]
        for i, url in enumerate(urls):
            cmd += ["-o", str(curl_out / f"f{i}"), url]
        t_curl, _ = timed(cmd, stderr=subprocess.DEVNULL)
        t_sync, _ = timed(["sync"])
        results["curl"].append(t_curl + t_sync)
        # peer B: then hash every file with both coreutils tools
        files = [str(p) for p in sorted(curl_out.iterdir())]
        t256, _ = timed(["sha256sum", *files], stdout=subprocess.DEVNULL)
        t512, _ = timed(["sha512sum", *files], stdout=subprocess.DEVNULL)
        results["curl+hash"].append(t_curl + t_sync + t256 + t512)
        drop_dir(curl_out)
        # k8s-mirror, fresh tree
        drop_dir(work / "tree")
        t_mirror, peak = timed(
            [*k8s_mirror, "sync", "--config", str(config), "--quiet", "--no-progress"],
            cwd=work,
        )
        results["k8s-mirror"].append(t_mirror)
        rss.append(peak)
        t_noop, _ = timed(
            [*k8s_mirror, "sync", "--config", str(config), "--quiet", "--no-progress"],
            cwd=work,
        )
        noop.append(t_noop)
        print(
            f"round {round_ + 1}: curl+sync {results['curl'][-1]:.2f}s, "
            f"curl+sync+sha256sum+sha512sum {results['curl+hash'][-1]:.2f}s, "
            f"k8s-mirror {t_mirror:.2f}s (peak RSS {peak // 1024} MiB), no-change {t_noop:.2f}s",
            flush=True,
        )

    med = {k: statistics.median(v) for k, v in results.items()}
    gb = args.total_mib / 1024
    print()
    print(f"data: {args.files} signed files, {gb:.2f} GiB, concurrency {args.concurrency}")
    print(f"median curl --parallel + sync:            {med['curl']:.2f} s")
    print(
        f"median curl + sync + sha256sum/sha512sum: {med['curl+hash']:.2f} s "
        f"({med['curl+hash'] / med['curl']:.2f}x curl)"
    )
    print(
        f"median k8s-mirror sync (verified):        {med['k8s-mirror']:.2f} s "
        f"({med['k8s-mirror'] / med['curl']:.2f}x curl, "
        f"{med['k8s-mirror'] / med['curl+hash']:.2f}x curl+hash)"
    )
    print(
        f"k8s-mirror peak RSS: {max(rss) // 1024} MiB; no-change re-sync: "
        f"{statistics.median(noop):.2f} s"
    )
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
