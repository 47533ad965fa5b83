"""Pure planning logic: safe paths, versions, markers, SUMS format, classification, selection."""

from __future__ import annotations

import pytest

from mirror import catalog
from mirror.catalog import RelPath, Selection, Version
from mirror.errors import SumsFormatError, UnsafePathError

H256 = "ab" * 32
H512 = "cd" * 64


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/etc/passwd",
        "../x",
        "a/../b",
        "a//b",
        "./a",
        "a/.",
        "a\\b",
        "a\x00b",
        ".hidden",
        "bin/.k8s-mirror/x",
        "a/b\n",
        "a b",
        "ü",
    ],
)
def test_relpath_refuses_unsafe_paths(bad: str) -> None:
    with pytest.raises(UnsafePathError):
        RelPath(bad)


def test_relpath_accepts_upstream_shapes() -> None:
    for ok in (
        "bin/linux/amd64/kubectl",
        "kubernetes-client-linux-amd64.tar.gz",
        "bin/windows/amd64/kubectl.exe",
        "bin/linux/amd64/kube-apiserver.docker_tag",
    ):
        assert RelPath(ok) == ok


def test_version_ordering_and_signing_start() -> None:
    assert (
        Version.parse("v1.26.0-alpha.3") < Version.parse("v1.26.0-rc.1") < Version.parse("v1.26.0")
    )
    assert not catalog.is_signed_release(Version.parse("v1.26.0-rc.0"))
    assert catalog.is_signed_release(Version.parse("v1.26.0-rc.1"))
    assert not catalog.is_signed_release(Version.parse("v1.25.16"))
    with pytest.raises(ValueError):
        Version.parse("1.34.2")


@pytest.mark.parametrize("name", ["stable", "latest", "stable-1", "stable-1.33", "latest-1.34"])
def test_marker_names(name: str) -> None:
    assert catalog.is_marker(name)


@pytest.mark.parametrize("body", ["v1.34", "../v1.34.2", "v1.34.2\nv1.35.0", "<html>"])
def test_marker_body_must_be_a_bare_version(body: str) -> None:
    with pytest.raises(UnsafePathError):
        catalog.parse_marker_body("stable", body)


def test_parse_sums_exact_format() -> None:
    text = f"{H256}  bin/linux/amd64/kubectl\n{H256}  kubernetes.tar.gz"
    assert catalog.parse_sums(text, "sha256", "SHA256SUMS") == {
        "bin/linux/amd64/kubectl": H256,
        "kubernetes.tar.gz": H256,
    }


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", SumsFormatError),
        (f"{H256} kubectl", SumsFormatError),
        (f"{H256.upper()}  kubectl", SumsFormatError),
        (f"{H256}  kubectl\n\n", SumsFormatError),
        (f"{H256}  kubectl\n{H256}  kubectl", SumsFormatError),
        (f"{H256}  ../kubectl", UnsafePathError),
        (f"{H256}  /kubectl", UnsafePathError),
        (f"{H512}  kubectl", SumsFormatError),
    ],
)
def test_parse_sums_rejects_malformed(text: str, error: type[Exception]) -> None:
    with pytest.raises(error, match="SHA256SUMS"):
        catalog.parse_sums(text, "sha256", "SHA256SUMS")


@pytest.mark.parametrize(
    ("path", "component", "platform", "signed"),
    [
        ("bin/linux/amd64/kubectl", "kubectl", "linux/amd64", True),
        ("bin/windows/amd64/kubelet.exe", "kubelet", "windows/amd64", True),
        ("bin/linux/arm64/kube-apiserver.tar", "kube-apiserver", "linux/arm64", True),
        ("bin/linux/arm64/kube-apiserver.docker_tag", "kube-apiserver", "linux/arm64", False),
        ("kubernetes-client-darwin-arm64.tar.gz", "kubernetes-client", "darwin/arm64", True),
        ("kubernetes-test-linux-s390x.tar.gz", "kubernetes-test", "linux/s390x", True),
        ("kubernetes-test-portable.tar.gz", "kubernetes-test-portable", None, True),
        ("kubernetes.tar.gz", "kubernetes", None, True),
        ("kubernetes-release.spdx", "kubernetes-release", None, True),
    ],
)
def test_classify(path: str, component: str, platform: str | None, signed: bool) -> None:
    info = catalog.classify(RelPath(path))
    assert (info.component, info.platform, info.signed_kind) == (component, platform, signed)


def test_selection_and_plan_cross_check_both_sums() -> None:
    paths = [
        "bin/linux/amd64/kubectl",
        "bin/linux/arm64/kubectl",
        "kubernetes.tar.gz",
        "bin/linux/amd64/kube-proxy.docker_tag",
    ]
    s256 = {RelPath(p): H256 for p in paths}
    s512 = {RelPath(p): H512 for p in paths}
    v = Version.parse("v1.34.2")
    plan = catalog.plan_release(
        v, s256, s512, Selection(("linux/amd64",), ()), verify_signatures=True
    )
    assert [(p.relpath, p.signed) for p in plan] == [
        ("bin/linux/amd64/kube-proxy.docker_tag", False),
        ("bin/linux/amd64/kubectl", True),
        ("kubernetes.tar.gz", True),
    ]
    assert plan[1].sidecars == tuple(
        RelPath("bin/linux/amd64/kubectl" + s) for s in (".sha256", ".sha512", ".sig", ".cert")
    )
    del s512[RelPath("kubernetes.tar.gz")]
    with pytest.raises(SumsFormatError, match="list different files"):
        catalog.plan_release(v, s256, s512, Selection(("*",), ()), verify_signatures=True)


@pytest.mark.parametrize(
    ("name", "version", "ok"),
    [
        ("stable", "v1.34.2", True),
        ("stable", "v1.35.0-rc.1", False),
        ("latest", "v1.35.0-rc.1", True),
        ("stable-1", "v1.34.2", True),
        ("stable-1", "v2.0.0", False),
        ("stable-1.33", "v1.33.6", True),
        ("stable-1.33", "v1.34.2", False),
        ("latest-1.34", "v1.34.0-beta.1", True),
    ],
)
def test_marker_series(name: str, version: str, ok: bool) -> None:
    assert (catalog.marker_series_problem(name, Version.parse(version)) is None) is ok
