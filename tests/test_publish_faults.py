"""Publishing when things go wrong: kills, a server that stops, refusals, slow-down, a local
file that changed, and multipart uploads. Real SeaweedFS, the installed CLI as a subprocess.

The invariant checked after every failure: no marker in the bucket names a release whose
committed objects are missing or differ, and the next publish completes the job.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import random
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from mirror.catalog import RelPath
from mirror.errors import (
    BucketMissingError,
    IntegrityError,
    PublishDeniedError,
    PublishError,
)
from mirror.store import FileRecord, Manifest, Store
from tests.conftest import CliResult, Env
from tests.fakes.seaweed import (
    READER_KEY,
    READER_SECRET,
    S3Proxy,
    Seaweed,
    aws_env,
)

PREFIX = "mirror"
KUBECTL = "release/v1.34.2/bin/linux/amd64/kubectl"
MIB = 1024**2
_buckets = itertools.count()


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    server = Seaweed(tmp_path_factory.mktemp("weed")).start()
    yield server
    server.stop()


def new_bucket(weed: Seaweed) -> str:
    name = f"fault-{next(_buckets)}"
    weed.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket(weed: Seaweed) -> str:
    return new_bucket(weed)


async def start_proxy(
    upstream: str, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> tuple[S3Proxy, str]:
    recorder = S3Proxy(upstream)
    server = await aiohttp_server(recorder.app(), host="127.0.0.1")
    return recorder, str(server.make_url("")).rstrip("/")


def publish_config(tmp: Path, root: Path, endpoint: str, bucket: str, extra: str = "") -> Path:
    """A config with one [[publish]] target and quick retries (tests must not wait 30 s)."""
    path = tmp / f"publish-{bucket}.toml"
    path.write_text(
        f'[tree]\nroot = "{root}"\n\n[[publish]]\nto = "s3://{bucket}/{PREFIX}"\n'
        f'endpoint_url = "{endpoint}"\npath_style = true\nretries = 2\n'
        "backoff_base_s = 0.01\nbackoff_max_s = 0.05\nconnect_timeout_s = 1\n"
        f"read_timeout_s = 5\n{extra}"
    )
    return path


async def cli(
    cwd: Path, *args: str, env: dict[str, str] | None = None, started: list[int] | None = None
) -> CliResult:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mirror", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd,
        env={**os.environ, **aws_env(), **(env or {})},
    )  # fmt: skip
    if started is not None:
        started.append(proc.pid)
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return CliResult(proc.returncode, out.decode(), err.decode())


def remote_objects(weed: Seaweed, bucket: str) -> dict[str, bytes]:
    client = weed.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            rel = item["Key"].removeprefix(f"{PREFIX}/")
            out[rel] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def assert_markers_name_complete_releases(weed: Seaweed, bucket: str) -> list[str]:
    """Every marker in the bucket names a committed release whose objects are all there,
    byte for byte as committed. Returns the markers found."""
    remote = remote_objects(weed, bucket)
    markers = [p for p in remote if p.startswith("release/") and p.count("/") == 1]
    for marker in markers:
        version = remote[marker].decode()
        index = json.loads(remote[f".k8s-mirror/published/{version}.json"])
        assert index["objects"], marker
        for rel, record in index["objects"].items():
            data = remote.get(f"release/{version}/{rel}")
            assert data is not None, f"{marker} names {version}, but {rel} is missing"
            assert len(data) == record["size"]
            assert hashlib.sha256(data).hexdigest() == record["sha256"], rel
    return markers


def synthetic_tree(root: Path, files: dict[str, bytes], version: str = "v1.34.2") -> None:
    """A tree as sync leaves it, written directly (publish reads only manifests and files)."""
    store = Store(root)
    store.prepare()
    manifest = Manifest(version)
    for rel, data in files.items():
        path = store.tree_path(version, RelPath(rel))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        manifest.files[rel] = FileRecord(len(data), hashlib.sha256(data).hexdigest())
    store.save_manifest(manifest)
    store.move_markers({"stable": version}, lambda v: True)


@pytest.mark.parametrize("seed", [1, 2, 3, 4])
async def test_killed_publish_leaves_the_bucket_consistent_and_the_next_one_finishes(
    env: Env,
    weed: Seaweed,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    seed: int,
) -> None:
    assert (await env.sync(select={"versions": ["stable", "stable-1.33"]})).exit_code == 0
    recorder, endpoint = await start_proxy(weed.endpoint, aiohttp_server)
    scratch = new_bucket(weed)
    config = publish_config(env.tmp, env.root, endpoint, scratch)
    assert (await cli(env.tmp, "publish", "--config", str(config))).exit_code == 0
    total_puts = len(recorder.puts())

    bucket = new_bucket(weed)
    config = publish_config(env.tmp, env.root, endpoint, bucket)
    kill_at = random.Random(seed).randint(1, total_puts)
    pids: list[int] = []

    def kill(count: int, path: str) -> None:
        if count == kill_at:
            os.kill(pids[0], signal.SIGKILL)
            recorder.dead = True  # the PUT it was sending never arrives

    recorder.seen.clear()
    recorder.before_put = kill
    killed = await cli(env.tmp, "publish", "--config", str(config), started=pids)
    assert killed.exit_code == -signal.SIGKILL
    recorder.before_put, recorder.dead = None, False
    assert_markers_name_complete_releases(weed, bucket)
    await asyncio.sleep(0.5)  # let PUTs that were in flight at the kill land (or not)
    stored = {f"/{bucket}/{PREFIX}/{p}" for p in remote_objects(weed, bucket) if "/v1." in p}

    recorder.seen.clear()
    done = await cli(env.tmp, "publish", "--config", str(config))
    assert done.exit_code == 0, done.stderr
    assert sorted(assert_markers_name_complete_releases(weed, bucket)) == [
        "release/stable-1.33.txt",
        "release/stable.txt",
    ]
    # What the killed run had stored is confirmed by HEAD and reused, not sent again.
    assert {s.path for s in recorder.puts()} & stored == set()
    check = await cli(
        env.tmp, "verify", "--root", str(env.root), "--remote", f"s3://{bucket}/{PREFIX}",
        "--endpoint-url", weed.endpoint, "--path-style", "--deep",
    )  # fmt: skip
    assert check.exit_code == 0, check.stdout


async def test_server_stopping_mid_publish_fails_cleanly_and_nothing_is_marked(
    env: Env, tmp_path: Path, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> None:
    assert (await env.sync()).exit_code == 0
    own = Seaweed(tmp_path / "own-weed").start()
    try:
        own.client().create_bucket(Bucket="stops")
        recorder, endpoint = await start_proxy(own.endpoint, aiohttp_server)

        def stop_server(count: int, path: str) -> None:
            if count == 5:
                own.stop()
                recorder.dead = True

        recorder.before_put = stop_server
        config = publish_config(env.tmp, env.root, endpoint, "stops")
        result = await cli(env.tmp, "publish", "--config", str(config))
        assert result.exit_code == PublishError.exit_code, result.stderr
        errors = [e for e in result.stderr.splitlines() if e.startswith("k8s-mirror: error:")]
        assert len(errors) == 1, result.stderr
        assert errors[0].startswith(f"k8s-mirror: error: s3://stops/{PREFIX}/")
        assert "Traceback" not in result.stderr

        own.start()  # same data directory: what the bucket holds survived
        assert assert_markers_name_complete_releases(own, "stops") == []
        config = publish_config(env.tmp, env.root, own.endpoint, "stops")
        assert (await cli(env.tmp, "publish", "--config", str(config))).exit_code == 0
        assert assert_markers_name_complete_releases(own, "stops") == ["release/stable.txt"]
    finally:
        own.stop()


async def test_wrong_credentials_and_read_only_access_are_denied(
    env: Env, weed: Seaweed, bucket: str
) -> None:
    assert (await env.sync()).exit_code == 0
    config = publish_config(env.tmp, env.root, weed.endpoint, bucket)
    for key, secret in (("mirror-test-key", "wrong-secret"), (READER_KEY, READER_SECRET)):
        result = await cli(
            env.tmp, "publish", "--config", str(config),
            env={"AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret},
        )  # fmt: skip
        assert result.exit_code == PublishDeniedError.exit_code, result.stderr
        assert f"s3://{bucket}/{PREFIX}/" in result.stderr
        assert "access denied" in result.stderr
        assert secret not in result.stderr + result.stdout
        assert remote_objects(weed, bucket) == {}


async def test_missing_bucket_and_unreachable_endpoint(env: Env, weed: Seaweed) -> None:
    assert (await env.sync()).exit_code == 0
    config = publish_config(env.tmp, env.root, weed.endpoint, "no-such-bucket")
    missing = await cli(env.tmp, "publish", "--config", str(config))
    assert missing.exit_code == BucketMissingError.exit_code, missing.stderr
    assert "bucket 'no-such-bucket' does not exist" in missing.stderr

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = publish_config(env.tmp, env.root, closed, "anything")
    gone = await cli(env.tmp, "publish", "--config", str(config))
    assert gone.exit_code == PublishError.exit_code, gone.stderr
    assert "unreachable" in gone.stderr and "s3://anything/mirror/" in gone.stderr


async def test_slow_down_is_retried_with_backoff_then_fails_naming_the_object(
    env: Env,
    weed: Seaweed,
    bucket: str,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
) -> None:
    assert (await env.sync()).exit_code == 0
    recorder, endpoint = await start_proxy(weed.endpoint, aiohttp_server)
    recorder.slow_down[KUBECTL] = -1
    config = publish_config(env.tmp, env.root, endpoint, bucket)
    failed = await cli(env.tmp, "publish", "--config", str(config))
    assert failed.exit_code == PublishError.exit_code, failed.stderr
    assert f"s3://{bucket}/{PREFIX}/{KUBECTL}: PUT failed after 3 attempts" in failed.stderr
    assert "SlowDown" in failed.stderr
    assert [p for p in remote_objects(weed, bucket) if p.endswith(".txt")] == []
    assert sum(1 for s in recorder.puts() if s.path.endswith(KUBECTL)) == 3

    recorder.slow_down[KUBECTL] = 2
    ok = await cli(env.tmp, "publish", "--config", str(config))
    assert ok.exit_code == 0, ok.stderr
    assert assert_markers_name_complete_releases(weed, bucket) == ["release/stable.txt"]


async def test_local_file_that_changed_is_not_published(
    env: Env, weed: Seaweed, bucket: str
) -> None:
    assert (await env.sync()).exit_code == 0
    path = env.root / KUBECTL
    data = path.read_bytes()
    path.write_bytes(bytes([data[0] ^ 1]) + data[1:])
    config = publish_config(env.tmp, env.root, weed.endpoint, bucket)
    result = await cli(env.tmp, "publish", "--config", str(config))
    assert result.exit_code == IntegrityError.exit_code, result.stderr
    assert f"{KUBECTL}: content differs from its manifest" in result.stderr
    assert "run k8s-mirror verify" in result.stderr
    remote = remote_objects(weed, bucket)
    assert KUBECTL not in remote
    assert [p for p in remote if p.endswith(".txt")] == []


async def test_multipart_upload_with_bounded_parts(
    tmp_path: Path, weed: Seaweed, bucket: str
) -> None:
    rng = random.Random(7)
    big = rng.randbytes(12 * MIB + 12345)
    root = tmp_path / "tree"
    synthetic_tree(root, {"bin/linux/amd64/big": big, "SHA256SUMS": b"sums"})
    config = publish_config(tmp_path, root, weed.endpoint, bucket, "part_size_bytes = 5242880\n")
    result = await cli(tmp_path, "publish", "--config", str(config))
    assert result.exit_code == 0, result.stderr
    client = weed.client()
    head = client.head_object(
        Bucket=bucket, Key=f"{PREFIX}/release/v1.34.2/bin/linux/amd64/big", PartNumber=1
    )
    assert head["PartsCount"] == 3
    assert remote_objects(weed, bucket)["release/v1.34.2/bin/linux/amd64/big"] == big
    check = await cli(
        tmp_path, "verify", "--root", str(root), "--remote", f"s3://{bucket}/{PREFIX}",
        "--endpoint-url", weed.endpoint, "--path-style",
    )  # fmt: skip
    assert check.exit_code == 0, check.stdout

    # The same file changed on disk (same size): its multipart upload is never completed.
    other = new_bucket(weed)
    path = root / "release/v1.34.2/bin/linux/amd64/big"
    path.write_bytes(big[:-1] + bytes([big[-1] ^ 1]))
    config = publish_config(tmp_path, root, weed.endpoint, other, "part_size_bytes = 5242880\n")
    changed = await cli(tmp_path, "publish", "--config", str(config))
    assert changed.exit_code == IntegrityError.exit_code, changed.stderr
    remote = remote_objects(weed, other)
    assert "release/v1.34.2/bin/linux/amd64/big" not in remote
    assert "release/stable.txt" not in remote
    assert client.list_multipart_uploads(Bucket=other).get("Uploads", []) == []


@pytest.mark.parametrize("ignores_sha256", [False, True])
async def test_every_put_carries_the_checksum_the_target_checks(
    tmp_path: Path,
    weed: Seaweed,
    bucket: str,
    aiohttp_server: Callable[..., Awaitable[TestServer]],
    ignores_sha256: bool,
) -> None:
    """SeaweedFS checks x-amz-checksum-sha256; a store that ignores it (the probe with a
    wrong digest is accepted) gets Content-MD5 instead, on single and multipart uploads."""
    root = tmp_path / "tree"
    synthetic_tree(root, {"big": random.Random(3).randbytes(6 * MIB), "small": b"abc"})
    recorder, endpoint = await start_proxy(weed.endpoint, aiohttp_server)
    recorder.ignore_checksums = ignores_sha256
    config = publish_config(tmp_path, root, endpoint, bucket, "part_size_bytes = 5242880\n")
    result = await cli(tmp_path, "publish", "--config", str(config))
    assert result.exit_code == 0, result.stderr
    # Requests that carry a body: plain PUTs and multipart parts (not create/complete).
    bodies = [
        s for s in recorder.puts()
        if s.method == "PUT" and "/.k8s-mirror/probe-" not in s.path
        and ("uploadId=" not in s.query or "partNumber=" in s.query)
    ]  # fmt: skip
    assert len(bodies) == 6  # 2 parts of big, small, manifest, index, marker
    header = "content-md5" if ignores_sha256 else "x-amz-checksum-sha256"
    other = "x-amz-checksum-sha256" if ignores_sha256 else "content-md5"
    assert all(header in s.headers and other not in s.headers for s in bodies), [
        (s.path, s.query) for s in bodies if header not in s.headers
    ]
    remote = remote_objects(weed, bucket)
    assert remote["release/v1.34.2/big"] == (root / "release/v1.34.2/big").read_bytes()
    assert not [p for p in remote if "probe-" in p]
