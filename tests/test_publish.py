"""``k8s-mirror publish`` and ``verify --remote`` end to end, against a real SeaweedFS.

The tree is synced from the fake dl.k8s.io (real signatures, real verifier), then published
through the installed CLI. What is checked is what a user of the bucket relies on: every
object's bytes, the headers a CDN sees, what a second publish sends, what verify reports.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from mirror.errors import (
    PruneGuardError,
    PublishError,
    RemoteConflictError,
    TreeVerifyError,
)
from tests.conftest import CliResult, Env
from tests.fakes.seaweed import S3Proxy, Seaweed, aws_env

PREFIX = "mirror"
KUBECTL = "release/v1.34.2/bin/linux/amd64/kubectl"
_buckets = itertools.count()


@pytest.fixture(scope="module")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seaweed]:
    server = Seaweed(tmp_path_factory.mktemp("weed")).start()
    yield server
    server.stop()


@pytest.fixture
def bucket(weed: Seaweed) -> str:
    name = f"pub-{next(_buckets)}"
    weed.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
async def proxy(
    weed: Seaweed, aiohttp_server: Callable[..., Awaitable[TestServer]]
) -> tuple[S3Proxy, str]:
    recorder = S3Proxy(weed.endpoint)
    server = await aiohttp_server(recorder.app(), host="127.0.0.1")
    return recorder, str(server.make_url("")).rstrip("/")


def objects(weed: Seaweed, bucket: str) -> dict[str, bytes]:
    """Every object in the bucket with its content."""
    client = weed.client()
    out = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            out[item["Key"]] = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
    return out


def served(env: Env) -> dict[str, bytes]:
    return {path: (env.root / path).read_bytes() for path in env.listing()}


async def publish(env: Env, endpoint: str, bucket: str, *args: str, **kw: Any) -> CliResult:
    return await env.cli(
        "publish", "--root", str(env.root), "--to", f"s3://{bucket}/{PREFIX}",
        "--endpoint-url", endpoint, "--path-style", *args, env=aws_env(**kw),
    )  # fmt: skip


async def verify_remote(env: Env, endpoint: str, bucket: str, *args: str) -> CliResult:
    return await env.cli(
        "verify", "--root", str(env.root), "--remote", f"s3://{bucket}/{PREFIX}",
        "--endpoint-url", endpoint, "--path-style", *args, env=aws_env(),
    )  # fmt: skip


async def test_publish_uploads_exactly_the_verified_tree(
    env: Env, weed: Seaweed, bucket: str
) -> None:
    assert (await env.sync(select={"versions": ["stable", "stable-1.33"]})).exit_code == 0
    result = await publish(env, weed.endpoint, bucket)
    assert result.exit_code == 0, result.stderr
    assert "committed v1.33.6, v1.34.2" in result.stdout

    remote = objects(weed, bucket)
    local = served(env)
    served_keys = {k.removeprefix(f"{PREFIX}/"): v for k, v in remote.items() if "/.k8s" not in k}
    assert {k: hashlib.sha256(v).hexdigest() for k, v in served_keys.items()} == {
        k: hashlib.sha256(v).hexdigest() for k, v in local.items()
    }
    # Our own state: the manifests (as in the tree) and the commit records; nothing else
    # from the state directory, no staging, no probe left behind.
    state = sorted(k for k in remote if "/.k8s-mirror/" in k)
    assert state == [
        f"{PREFIX}/.k8s-mirror/manifests/v1.33.6.json",
        f"{PREFIX}/.k8s-mirror/manifests/v1.34.2.json",
        f"{PREFIX}/.k8s-mirror/published/v1.33.6.json",
        f"{PREFIX}/.k8s-mirror/published/v1.34.2.json",
    ]
    assert (
        remote[f"{PREFIX}/.k8s-mirror/manifests/v1.34.2.json"]
        == (env.root / ".k8s-mirror/manifests/v1.34.2.json").read_bytes()
    )
    assert remote[f"{PREFIX}/release/stable.txt"] == b"v1.34.2"
    assert remote[f"{PREFIX}/release/stable-1.33.txt"] == b"v1.33.6"
    assert f"{PREFIX}/sigstore/trusted_root.json" in remote

    # A plain HTTP GET through the S3 endpoint (what a CDN's origin fetch does).
    assert weed.http_get(f"{bucket}/{PREFIX}/{KUBECTL}") == (env.root / KUBECTL).read_bytes()
    client = weed.client()
    marker = client.head_object(Bucket=bucket, Key=f"{PREFIX}/release/stable.txt")
    assert marker["CacheControl"] == "no-cache"
    assert marker["ContentType"].startswith("text/plain")
    binary = client.head_object(Bucket=bucket, Key=f"{PREFIX}/{KUBECTL}")
    assert "immutable" in binary["CacheControl"]
    assert binary["ContentType"] == "application/octet-stream"

    for args in ((), ("--deep",)):
        check = await verify_remote(env, weed.endpoint, bucket, *args)
        assert check.exit_code == 0, check.stdout + check.stderr
        assert check.stdout.startswith("ok: ")


async def test_no_change_publish_makes_no_put_and_a_new_release_uploads_only_its_objects(
    env: Env, weed: Seaweed, bucket: str, proxy: tuple[S3Proxy, str]
) -> None:
    recorder, endpoint = proxy
    assert (await env.sync()).exit_code == 0
    assert (await publish(env, endpoint, bucket)).exit_code == 0
    order = [s.path.removeprefix(f"/{bucket}/{PREFIX}/") for s in recorder.puts()]
    assert KUBECTL in order
    # Trust root first, payload, then the manifest and the commit record, the marker last.
    assert order.index("sigstore/trusted_root.json") < order.index(KUBECTL)
    payload = [i for i, p in enumerate(order) if p.startswith("release/v1.34.2/")]
    assert max(payload) < order.index(".k8s-mirror/manifests/v1.34.2.json")
    assert order.index(".k8s-mirror/manifests/v1.34.2.json") < order.index(
        ".k8s-mirror/published/v1.34.2.json"
    )
    assert order[-1] == "release/stable.txt"

    recorder.seen.clear()
    again = await publish(env, endpoint, bucket)
    assert again.exit_code == 0, again.stderr
    assert recorder.puts() == []
    assert "uploaded 0 files" in again.stdout
    # A handful of LISTs and GETs, not a request per object.
    assert len(recorder.seen) <= 6, [(s.method, s.path) for s in recorder.seen]

    assert (await env.sync(select={"versions": ["stable", "stable-1.33"]})).exit_code == 0
    recorder.seen.clear()
    assert (await publish(env, endpoint, bucket)).exit_code == 0
    written = {s.path.removeprefix(f"/{bucket}/{PREFIX}/") for s in recorder.puts()}
    written = {p for p in written if not p.startswith(".k8s-mirror/probe-")}
    new_release = {p for p in env.listing() if p.startswith("release/v1.33.6/")}
    assert written == new_release | {
        ".k8s-mirror/manifests/v1.33.6.json",
        ".k8s-mirror/published/v1.33.6.json",
        "release/stable-1.33.txt",
    }


async def test_tampered_object_is_reported_and_not_overwritten_without_repair(
    env: Env, weed: Seaweed, bucket: str
) -> None:
    assert (await env.sync()).exit_code == 0
    assert (await publish(env, weed.endpoint, bucket)).exit_code == 0
    client = weed.client()
    key = f"{PREFIX}/{KUBECTL}"
    client.put_object(Bucket=bucket, Key=key, Body=b"not kubectl")
    sidecar = f"{PREFIX}/{KUBECTL}.sha256"
    client.delete_object(Bucket=bucket, Key=sidecar)
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/release/v1.34.2/stray", Body=b"x")

    check = await verify_remote(env, weed.endpoint, bucket)
    assert check.exit_code == TreeVerifyError.exit_code
    lines = check.stdout.splitlines()
    assert any(line.startswith(f"differs s3://{bucket}/{key}:") for line in lines), lines
    assert f"missing s3://{bucket}/{sidecar}" in lines
    assert any(
        line.startswith(f"extra s3://{bucket}/{PREFIX}/release/v1.34.2/stray") for line in lines
    )

    refused = await publish(env, weed.endpoint, bucket)
    assert refused.exit_code == RemoteConflictError.exit_code, refused.stderr
    assert f"s3://{bucket}/{key}" in refused.stderr
    assert "--repair" in refused.stderr
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"not kubectl"
    assert "Contents" not in client.list_objects_v2(Bucket=bucket, Prefix=sidecar)

    repaired = await publish(env, weed.endpoint, bucket, "--repair")
    assert repaired.exit_code == 0, repaired.stderr
    assert "repaired 1" in repaired.stdout
    assert (
        client.get_object(Bucket=bucket, Key=key)["Body"].read()
        == (env.root / KUBECTL).read_bytes()
    )
    check = await verify_remote(env, weed.endpoint, bucket)
    assert check.exit_code == TreeVerifyError.exit_code  # only the stray object is left
    assert [line.split()[0] for line in check.stdout.splitlines()] == ["extra"]


async def test_deep_verify_catches_content_the_store_misreports(
    env: Env, weed: Seaweed, bucket: str
) -> None:
    """An object replaced with forged metadata and its old ETag's size still fails --deep."""
    assert (await env.sync()).exit_code == 0
    assert (await publish(env, weed.endpoint, bucket)).exit_code == 0
    local = (env.root / KUBECTL).read_bytes()
    forged = bytes([local[0] ^ 1]) + local[1:]
    weed.client().put_object(
        Bucket=bucket, Key=f"{PREFIX}/{KUBECTL}", Body=forged,
        Metadata={"sha256": hashlib.sha256(local).hexdigest()},
    )  # fmt: skip
    deep = await verify_remote(env, weed.endpoint, bucket, "--deep")
    assert deep.exit_code == TreeVerifyError.exit_code
    assert f"differs s3://{bucket}/{PREFIX}/{KUBECTL}: size {len(local)} content " in deep.stdout


async def test_prune_follows_the_tree_behind_the_guard(
    env: Env, weed: Seaweed, bucket: str
) -> None:
    assert (await env.sync(select={"versions": ["stable", "v1.33.6"]})).exit_code == 0
    assert (await publish(env, weed.endpoint, bucket)).exit_code == 0
    client = weed.client()
    # A release only a marker in the bucket names is never pruned.
    client.put_object(Bucket=bucket, Key=f"{PREFIX}/release/latest-1.33.txt", Body=b"v1.33.6")
    assert (
        await env.sync(
            select={"versions": ["stable"]},
            tree={"prune": True, "prune_max_share": 1.0, "prune_max_files": 1000},
        )
    ).exit_code == 0
    assert not (env.root / "release/v1.33.6").exists()
    kept = await publish(env, weed.endpoint, bucket, "--prune")
    assert kept.exit_code == 0, kept.stderr
    assert "pruned 0 objects" in kept.stdout

    client.delete_object(Bucket=bucket, Key=f"{PREFIX}/release/latest-1.33.txt")
    before = objects(weed, bucket)
    guarded = await publish(env, weed.endpoint, bucket, "--prune")
    assert guarded.exit_code == PruneGuardError.exit_code, guarded.stderr
    assert "prune_max" in guarded.stderr
    assert objects(weed, bucket) == before

    config = env.tmp / "prune.toml"
    config.write_text(
        f'[tree]\nroot = "{env.root}"\nprune_max_files = 1000\nprune_max_share = 1.0\n'
    )
    pruned = await env.cli(
        "publish", "--config", str(config), "--to", f"s3://{bucket}/{PREFIX}",
        "--endpoint-url", weed.endpoint, "--path-style", "--prune", env=aws_env(),
    )  # fmt: skip
    assert pruned.exit_code == 0, pruned.stderr
    left = objects(weed, bucket)
    assert not [k for k in left if "v1.33.6" in k and not k.endswith(".txt")]
    assert left[f"{PREFIX}/release/stable.txt"] == b"v1.34.2"
    check = await verify_remote(env, weed.endpoint, bucket)
    assert check.exit_code == 0, check.stdout


async def test_sync_publishes_after_success_only(env: Env, weed: Seaweed, bucket: str) -> None:
    def with_publish() -> None:
        env.write_config()
        with env.config_path.open("a") as handle:
            handle.write(
                f'[[publish]]\nto = "s3://{bucket}/{PREFIX}"\nendpoint_url = "{weed.endpoint}"\n'
                "path_style = true\n"
            )

    env.dl.faults.add(KUBECTL, "corrupt", "corrupt")
    with_publish()
    failed = await env.cli("sync", "--config", str(env.config_path), env=aws_env())
    assert failed.exit_code == 5, failed.stderr
    assert objects(weed, bucket) == {}

    with_publish()
    ok = await env.cli("sync", "--config", str(env.config_path), env=aws_env())
    assert ok.exit_code == 0, ok.stderr
    assert f"published s3://{bucket}/{PREFIX}/" in ok.stdout
    remote = objects(weed, bucket)
    assert remote[f"{PREFIX}/{KUBECTL}"] == (env.root / KUBECTL).read_bytes()
    assert remote[f"{PREFIX}/release/stable.txt"] == b"v1.34.2"


async def test_damaged_index_is_an_error_and_repair_rewrites_it(
    env: Env, weed: Seaweed, bucket: str
) -> None:
    assert (await env.sync()).exit_code == 0
    assert (await publish(env, weed.endpoint, bucket)).exit_code == 0
    index = f"{PREFIX}/.k8s-mirror/published/v1.34.2.json"
    weed.client().put_object(Bucket=bucket, Key=index, Body=b"{not json")

    broken = await publish(env, weed.endpoint, bucket)
    assert broken.exit_code == PublishError.exit_code, broken.stderr
    assert f"s3://{bucket}/{index}: unreadable published index" in broken.stderr
    check = await verify_remote(env, weed.endpoint, bucket)
    assert check.exit_code == TreeVerifyError.exit_code
    assert f"unindexed s3://{bucket}/{index}" in check.stdout

    repaired = await publish(env, weed.endpoint, bucket, "--repair")
    assert repaired.exit_code == 0, repaired.stderr
    assert "uploaded 0 files" in repaired.stdout  # every object was still ours
    assert (await verify_remote(env, weed.endpoint, bucket)).exit_code == 0
