"""Publish benchmark: ``k8s-mirror publish`` against ``rclone copy`` into the same SeaweedFS.

Both upload the same verified tree (``--files`` equal binaries totalling ``--total-mib``, with
sidecars, a manifest and a marker) from the page cache into a fresh bucket of one SeaweedFS
(``weed mini``, bound to 127.0.0.1, started here the way the tests start it):

- peer: ``rclone copy TREE remote:BUCKET`` (Debian's rclone, installed with apt-get when
  missing), ``--transfers`` = our concurrency, its default checksum (MD5) handling;
- k8s-mirror: ``k8s-mirror publish`` (re-hash every file against its manifest while
  reading, a sha256 checksum the server checks on every PUT, read-back confirm, index,
  marker last);
- k8s-mirror again with nothing changed (no PUT).

The figure is the median ratio against rclone in the same run (these machines are shared).
Run: ``.venv/bin/python bench/run_publish_bench.py [--total-mib 1536] [--files 8] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mirror.catalog import RelPath  # noqa: E402
from mirror.store import FileRecord, Manifest, Store  # noqa: E402
from tests.fakes.seaweed import ACCESS_KEY, SECRET_KEY, Seaweed, aws_env  # noqa: E402

VERSION = "v1.34.2"


def build_tree(root: Path, files: int, total_mib: int) -> int:
    """A tree as sync leaves it: binaries and sidecars, their manifest, a marker."""
    store = Store(root)
    store.prepare()
    manifest = Manifest(VERSION)
    size = total_mib * 2**20 // files
    block = os.urandom(2**20)
    total = 0
    for i in range(files):
        rel = f"bin/linux/amd64/kube-bench-{i:02d}"
        path = store.tree_path(VERSION, RelPath(rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        with open(path, "wb") as handle:
            for j in range(size // 2**20):
                chunk = bytes([i, j % 256]) + block[2:]
                handle.write(chunk)
                digest.update(chunk)
        manifest.files[rel] = FileRecord(size, digest.hexdigest(), check="checksums")
        sidecar = store.tree_path(VERSION, RelPath(rel + ".sha256"))
        sidecar.write_text(digest.hexdigest())
        manifest.files[rel + ".sha256"] = FileRecord(
            64, hashlib.sha256(digest.hexdigest().encode()).hexdigest()
        )
        total += size + 64
    store.save_manifest(manifest)
    store.write_marker("stable", VERSION)
    return total


def ensure_rclone() -> str:
    found = shutil.which("rclone")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True)
    subprocess.run(
        [*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", "rclone"],
        check=True,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return shutil.which("rclone") or "rclone"


def timed(cmd: list[str], env: dict[str, str]) -> float:
    started = time.monotonic()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"{cmd[0]} failed ({result.returncode}): {result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--total-mib", type=int, default=1536)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    rclone = ensure_rclone()
    work = Path(tempfile.mkdtemp(prefix="k8s-mirror-publish-bench-"))
    weed = None
    try:
        tree = work / "tree"
        print(f"building {args.files} files, {args.total_mib} MiB in {work} ...", flush=True)
        total = build_tree(tree, args.files, args.total_mib)
        weed = Seaweed(work / "weed").start()
        client = weed.client()
        env = {**os.environ, **aws_env()}
        # rclone 1.60 refuses a custom CA bundle on its transport; the endpoint is plain http.
        rclone_env = {
            **{k: v for k, v in os.environ.items() if k != "AWS_CA_BUNDLE"},
            "RCLONE_CONFIG_BENCH_TYPE": "s3",
            "RCLONE_CONFIG_BENCH_PROVIDER": "SeaweedFS",
            "RCLONE_CONFIG_BENCH_ENDPOINT": weed.endpoint,
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": ACCESS_KEY,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": SECRET_KEY,
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        }
        mirror = [str(Path(sys.executable).parent / "k8s-mirror")]
        times: dict[str, list[float]] = {"rclone": [], "publish": [], "nochange": []}
        for round_no in range(args.rounds):
            for name in ("rclone", "publish"):
                bucket = f"bench-{name}-{round_no}"
                client.create_bucket(Bucket=bucket)
                subprocess.run(["sync"], check=True)
                if name == "rclone":
                    cmd = [
                        rclone, "copy", str(tree), f"bench:{bucket}",
                        "--exclude", "/.k8s-mirror/**", "--transfers", str(args.concurrency),
                    ]  # fmt: skip
                    times[name].append(timed(cmd, rclone_env))
                else:
                    cmd = [
                        *mirror, "publish", "--root", str(tree), "--to", f"s3://{bucket}",
                        "--endpoint-url", weed.endpoint, "--path-style", "-q",
                        "--concurrency", str(args.concurrency),
                    ]  # fmt: skip
                    times[name].append(timed(cmd, env))
                    times["nochange"].append(timed(cmd, env))
                print(f"round {round_no + 1} {name}: {times[name][-1]:.2f} s", flush=True)
        med = {name: statistics.median(values) for name, values in times.items()}
        gib = total / 2**30
        print()
        print(f"data: {args.files} files, {gib:.2f} GiB, concurrency {args.concurrency}")
        print(f"median rclone copy:                {med['rclone']:.2f} s")
        print(
            f"median k8s-mirror publish:         {med['publish']:.2f} s "
            f"({med['publish'] / med['rclone']:.2f}x rclone)"
        )
        print(f"median k8s-mirror publish, no change: {med['nochange']:.2f} s")
    finally:
        if weed is not None:
            weed.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
