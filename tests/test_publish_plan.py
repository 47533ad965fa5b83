"""The pure parts of publishing: targets, the [[publish]] config, and what a plan decides."""

from __future__ import annotations

from pathlib import Path

import pytest

from mirror.config import load_config
from mirror.errors import ConfigError
from mirror.publish.client import RemoteObject
from mirror.publish.objects import IMMUTABLE, NO_CACHE, PublishedIndex, PublishedObject, headers_for
from mirror.publish.plan import plan_release, settle
from mirror.publish.target import Target, parse_target
from mirror.publish.tree import LocalFile, LocalRelease

SHA_A = "a" * 64
SHA_B = "b" * 64


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("s3://bucket", Target("bucket", "")),
        ("s3://bucket/", Target("bucket", "")),
        ("s3://my.bucket-1/k8s/mirror/", Target("my.bucket-1", "k8s/mirror/")),
    ],
)
def test_parse_target(text: str, target: Target) -> None:
    assert parse_target(text) == target
    assert target.key("release/stable.txt") == target.prefix + "release/stable.txt"


@pytest.mark.parametrize(
    "text",
    ["http://bucket/x", "s3://", "s3://UPPER", "s3://ab", "s3://b..x", "s3://bucket/a//b",
     "s3://bucket/../x", "s3://bucket/.hidden", "s3://bucket/a b"],
)  # fmt: skip
def test_bad_targets_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_target(text)


def test_publish_config_reports_every_problem_by_key(tmp_path: Path) -> None:
    path = tmp_path / "mirror.toml"
    path.write_text(
        '[[publish]]\nto = "s3://bucket/a"\nendpoint_url = "ftp://x"\npart_size_bytes = 1\n'
        'checksum = "crc"\nsecret = "no"\n\n[[publish]]\nto = "s3://bucket/a"\n'
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = caught.value.problems
    assert "publish[0].secret: unknown key" in problems
    assert any(p.startswith("publish[0].endpoint_url:") for p in problems)
    assert any(p.startswith("publish[0].part_size_bytes:") for p in problems)
    assert any(p.startswith("publish[0].checksum:") for p in problems)
    assert "publish[1].to: s3://bucket/a is listed twice" in problems

    path.write_text('[[publish]]\nto = "s3://bucket/a"\nendpoint_url = "http://127.0.0.1:9"\n')
    (target,) = load_config(path).publish
    assert (target.endpoint_url, target.concurrency, target.prune) == (
        "http://127.0.0.1:9",
        8,
        False,
    )


def release(files: dict[str, str]) -> LocalRelease:
    out = LocalRelease("v1.34.2", manifest_bytes=b"{}")
    for rel, sha in files.items():
        out.files[rel] = LocalFile(f"release/v1.34.2/{rel}", Path("/nonexistent"), 10, sha)
    return out


def listed(rel: str, etag: str, size: int = 10) -> tuple[str, RemoteObject]:
    return f"release/v1.34.2/{rel}", RemoteObject(f"k/{rel}", size, etag)


def test_plan_trusts_the_index_only_while_the_listing_agrees() -> None:
    local = release({"a": SHA_A, "b": SHA_B, "c": SHA_A})
    index = PublishedIndex(
        "v1.34.2",
        local.manifest_sha256,
        "m",
        {"a": PublishedObject(10, SHA_A, "e1"), "b": PublishedObject(10, SHA_B, "e2")},
    )
    listing = dict([listed("a", "e1"), listed("b", "replaced")])
    plan = plan_release(local, listing, index)
    assert list(plan.current) == ["a"]
    assert plan.check == ["b"]  # someone replaced it: read what it is
    assert plan.upload == ["c"]
    assert plan.needs_commit

    everything = plan_release(local, listing, index, recheck=True)
    assert everything.check == ["a", "b"]


def test_no_change_needs_no_commit() -> None:
    local = release({"a": SHA_A})
    index = PublishedIndex(
        "v1.34.2", local.manifest_sha256, "m", {"a": PublishedObject(10, SHA_A, "e")}
    )
    plan = plan_release(local, dict([listed("a", "e")]), index)
    assert not plan.needs_commit


def test_settle_reuses_our_objects_and_refuses_others_unless_repairing() -> None:
    local = release({"ours": SHA_A, "theirs": SHA_A, "gone": SHA_A})
    heads: dict[str, RemoteObject | None] = {
        "ours": RemoteObject("k", 10, "e", SHA_A),
        "theirs": RemoteObject("k", 10, "e", SHA_B),
        "gone": None,
    }
    for repair in (False, True):
        plan = plan_release(local, dict(listed(r, "e") for r in heads), None)
        settle(plan, local, heads, repair=repair)
        assert list(plan.current) == ["ours"]
        if repair:
            assert plan.upload == ["gone", "theirs"] and not plan.conflicts
        else:
            assert plan.upload == ["gone"] and list(plan.conflicts) == ["theirs"]


def test_headers_a_static_host_would_send() -> None:
    assert headers_for("release/stable.txt").cache_control == NO_CACHE
    assert headers_for("sigstore/trusted_root.json").cache_control == NO_CACHE
    binary = headers_for("release/v1.34.2/bin/linux/amd64/kubectl")
    assert (binary.content_type, binary.cache_control) == ("application/octet-stream", IMMUTABLE)
    assert headers_for("release/v1.34.2/kubernetes.tar.gz").content_type == "application/gzip"
    assert headers_for("release/v1.34.2/SHA256SUMS").content_type.startswith("text/plain")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["publish"], "give --to s3://BUCKET/PREFIX or add a [[publish]] table"),
        (["publish", "--to", "s3://Bad_Bucket"], "--to: 'Bad_Bucket' is not a bucket name"),
        (["publish", "--to", "s3://bucket", "--part-size", "1M"], "--part-size: '1M'"),
        (
            ["publish", "--to", "s3://bucket", "--endpoint-url", "ftp://x"],
            "--endpoint-url: 'ftp://x' is not an http(s) URL",
        ),
        (["verify", "--deep"], "need --remote"),
    ],
)
def test_bad_publish_flags_are_refused_before_anything_happens(
    tmp_path: Path, args: list[str], message: str
) -> None:
    from click.testing import CliRunner

    from mirror.cli import main

    (tmp_path / "release").mkdir()
    result = CliRunner().invoke(main, [args[0], "--root", str(tmp_path), *args[1:]])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["release"]
