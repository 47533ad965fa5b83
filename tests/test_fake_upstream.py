"""The fake dl.k8s.io is only worth its name if it is exact: these tests pin its formats, its
HTTP semantics and that every fault reaches a real aiohttp client as the failure it imitates."""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import tarfile
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from multidict import CIMultiDictProxy

from tests.fakes.dlserver import FakeDl, Fault, FaultPlan, main
from tests.fakes.release import (
    CLIENT_BINARIES,
    IMAGE_COMPONENTS,
    PLATFORM_MATRIX,
    SERVER_ARCHES,
    SUMS_FILES,
    Release,
    Signer,
    UpstreamTree,
    is_signed_kind,
    make_not_sigstore_signer,
    sbom_covers,
    sha256_hex,
    sha512_hex,
)

V = "v1.34.2"
SUMS_LINE = {
    "SHA256SUMS": re.compile(r"[0-9a-f]{64}  \S+"),
    "SHA512SUMS": re.compile(r"[0-9a-f]{128}  \S+"),
}
DIGEST = {"SHA256SUMS": sha256_hex, "SHA512SUMS": sha512_hex}


@pytest.fixture(scope="module")
def signer() -> Signer:
    return make_not_sigstore_signer()


@pytest.fixture(scope="module")
def full_tree(signer: Signer) -> UpstreamTree:
    """Read-only: a full-matrix signed release and an old unsigned one."""
    tree = UpstreamTree(signer=signer)
    tree.add_release(V)
    tree.add_release("v1.25.3")
    tree.publish_markers()
    return tree


def files_of(tree: UpstreamTree, version: str) -> dict[str, bytes]:
    prefix = f"release/{version}/"
    return {k.removeprefix(prefix): v for k, v in tree.files.items() if k.startswith(prefix)}


# -- formats -----------------------------------------------------------------------------------


@pytest.mark.parametrize("which", SUMS_FILES)
def test_sums_exact_format_lists_primary_files_only(full_tree: UpstreamTree, which: str) -> None:
    release = full_tree.releases[V]
    text = full_tree.files[release.path(which)].decode()
    assert not text.endswith("\n")
    lines = text.split("\n")
    assert all(SUMS_LINE[which].fullmatch(line) for line in lines), lines[:3]
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in lines}
    assert tuple(sorted(listed)) == release.primary
    for relpath, hex_digest in listed.items():
        assert DIGEST[which](full_tree.files[release.path(relpath)]) == hex_digest
    assert not any(p.endswith((".sha256", ".sha512", ".sig", ".cert", "SUMS")) for p in listed)


def test_sidecars_are_bare_hex(full_tree: UpstreamTree) -> None:
    release = full_tree.releases[V]
    for relpath in (*release.primary, *SUMS_FILES):
        data = full_tree.files[release.path(relpath)]
        assert full_tree.files[release.path(relpath) + ".sha256"] == sha256_hex(data).encode()
        assert full_tree.files[release.path(relpath) + ".sha512"] == sha512_hex(data).encode()


def test_signed_kinds_and_formats(full_tree: UpstreamTree) -> None:
    files = files_of(full_tree, V)
    release = full_tree.releases[V]
    assert release.signed
    signed = {p.removesuffix(".sig") for p in files if p.endswith(".sig")}
    assert signed == {p.removesuffix(".cert") for p in files if p.endswith(".cert")}
    assert signed == set(release.signed_files)
    assert signed == {p for p in release.primary if not p.endswith(".docker_tag")}
    assert "kubernetes-release.spdx" in signed
    # The throwaway signer uses the upstream encodings: base64 DER signature, base64 PEM cert.
    data = files["bin/linux/amd64/kubectl"]
    cert = x509.load_pem_x509_certificate(base64.b64decode(files["bin/linux/amd64/kubectl.cert"]))
    sig = base64.b64decode(files["bin/linux/amd64/kubectl.sig"], validate=True)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    public_key.verify(sig, data, ec.ECDSA(hashes.SHA256()))
    assert "NOT SIGSTORE" in cert.subject.rfc4514_string()


def test_old_releases_are_unsigned_and_new_ones_need_a_signer() -> None:
    tree = UpstreamTree()
    tree.add_release("v1.25.3", platforms=["linux/amd64"])
    tree.add_release("v1.26.0-beta.0", platforms=["linux/amd64"])
    assert not any(k.endswith((".sig", ".cert")) for k in tree.files)
    assert not tree.releases["v1.25.3"].signed
    with pytest.raises(ValueError, match="signer"):
        tree.add_release("v1.26.0-rc.1", platforms=["linux/amd64"])
    tree.add_release("v1.26.0-rc.1", platforms=["linux/amd64"], signer=make_not_sigstore_signer())
    assert tree.releases["v1.26.0-rc.1"].signed
    assert "release/v1.26.0-rc.1/bin/linux/amd64/kubectl.sig" in tree.files


def test_platform_matrix_layout(full_tree: UpstreamTree) -> None:
    files = files_of(full_tree, V)
    bins = {p for p in files if p.startswith("bin/") and "." not in p.rsplit("/", 1)[1]}
    bins |= {p for p in files if p.endswith(".exe")}
    expected = {
        f"bin/{platform}/{name}{'.exe' if platform.startswith('windows') else ''}"
        for platform, names in PLATFORM_MATRIX.items()
        for name in names
    }
    assert bins == expected
    for arch in SERVER_ARCHES:
        for component in IMAGE_COMPONENTS:
            assert f"bin/linux/{arch}/{component}.tar" in files
            assert files[f"bin/linux/{arch}/{component}.docker_tag"] == V.encode()
    tarballs = {p for p in files if p.endswith(".tar.gz")}
    assert len(tarballs) == 4 + len(PLATFORM_MATRIX) + 2 * len(SERVER_ARCHES) + 5
    assert {"kubernetes-server-linux-s390x.tar.gz", "kubernetes-node-windows-amd64.tar.gz"} <= (
        tarballs
    )
    assert len(full_tree.releases[V].primary) == 128


def test_platform_subset_and_sizes() -> None:
    tree = UpstreamTree()
    release = tree.add_release("v1.25.3", platforms=["darwin/arm64"], size_bytes=1234)
    assert {p for p in release.primary if p.startswith("bin/")} == {
        "bin/darwin/arm64/kubectl",
        "bin/darwin/arm64/kubectl-convert",
    }
    assert len(tree.files[release.path("bin/darwin/arm64/kubectl")]) == 1234
    assert "kubernetes-client-darwin-arm64.tar.gz" in release.primary
    assert not any("linux" in p for p in release.primary)
    with pytest.raises(ValueError, match="unknown platforms"):
        tree.add_release("v1.25.4", platforms=["plan9/amd64"])


def test_client_tarball_is_real_and_holds_the_binaries(full_tree: UpstreamTree) -> None:
    files = files_of(full_tree, V)
    raw = gzip.decompress(files["kubernetes-client-windows-amd64.tar.gz"])
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        for name in CLIENT_BINARIES:
            member = tar.extractfile(f"kubernetes/client/bin/{name}.exe")
            assert member is not None
            assert member.read() == files[f"bin/windows/amd64/{name}.exe"]


def test_release_sbom_lists_covered_files_with_their_sha256(full_tree: UpstreamTree) -> None:
    files = files_of(full_tree, V)
    sbom = files["kubernetes-release.spdx"].decode()
    assert sbom.startswith("SPDXVersion: SPDX-2.3\n")
    listed: dict[str, str] = {}
    name = None
    for line in sbom.splitlines():
        if line.startswith("FileName: "):
            name = line.removeprefix("FileName: ")
        elif line.startswith("FileChecksum: SHA256: "):
            assert name is not None
            listed[name] = line.removeprefix("FileChecksum: SHA256: ")
    assert set(listed) == {p for p in full_tree.releases[V].primary if sbom_covers(p)}
    assert "bin/linux/amd64/kubectl" in listed
    assert "kubernetes-client-linux-amd64.tar.gz" in listed
    assert not any(p.endswith(".docker_tag") for p in listed)
    for relpath, hex_digest in listed.items():
        assert sha256_hex(files[relpath]) == hex_digest


def test_markers_and_release_notes_index(full_tree: UpstreamTree) -> None:
    files = full_tree.files
    assert files["release/stable.txt"] == V.encode()
    assert files["release/stable-1.25.txt"] == b"v1.25.3"
    assert files["release/latest-1.txt"] == V.encode()
    index = json.loads(files["release/release-notes-index.json"])
    assert set(index) == {V, "v1.25.3"}
    tree = UpstreamTree()
    tree.set_marker("latest-1.35", "v1.35.0-alpha.1")
    assert tree.files["release/latest-1.35.txt"] == b"v1.35.0-alpha.1"


def test_optional_files_have_no_sidecars_and_can_be_absent(full_tree: UpstreamTree) -> None:
    files = files_of(full_tree, V)
    for name in ("provenance.json", "release-notes.json"):
        assert name in files
        assert not any(p.startswith(name + ".") for p in files)
    tree = UpstreamTree()
    release = tree.add_release("v1.25.3", platforms=["linux/arm"], optional_files=())
    assert "provenance.json" not in files_of(tree, "v1.25.3")
    assert release.optional == ()


def test_content_is_deterministic_per_seed() -> None:
    def gen(seed: int) -> dict[str, bytes]:
        tree = UpstreamTree(seed=seed)
        tree.add_release("v1.25.3", platforms=["linux/amd64"])
        return tree.files

    assert gen(1) == gen(1)
    assert (
        gen(1)["release/v1.25.3/bin/linux/amd64/kubectl"]
        != (gen(2)["release/v1.25.3/bin/linux/amd64/kubectl"])
    )


# -- mutations ---------------------------------------------------------------------------------


@pytest.fixture
def small_tree(signer: Signer) -> UpstreamTree:
    tree = UpstreamTree(signer=signer)
    tree.add_release(V, platforms=["linux/amd64"])
    return tree


def sums_entry(tree: UpstreamTree, which: str, relpath: str) -> str:
    text = tree.files[f"release/{V}/{which}"].decode()
    return next(line for line in text.split("\n") if line.endswith("  " + relpath)).split()[0]


def test_replace_file_consistently_keeps_the_old_signature(small_tree: UpstreamTree) -> None:
    path = f"release/{V}/bin/linux/amd64/kubectl"
    old_sig = small_tree.files[path + ".sig"]
    small_tree.replace_file(path, b"evil")
    assert small_tree.files[path + ".sha256"] == sha256_hex(b"evil").encode()
    assert sums_entry(small_tree, "SHA256SUMS", "bin/linux/amd64/kubectl") == sha256_hex(b"evil")
    assert sums_entry(small_tree, "SHA512SUMS", "bin/linux/amd64/kubectl") == sha512_hex(b"evil")
    sums = small_tree.files[f"release/{V}/SHA256SUMS"]
    assert small_tree.files[f"release/{V}/SHA256SUMS.sha256"] == sha256_hex(sums).encode()
    assert not sums.endswith(b"\n")
    assert small_tree.files[path + ".sig"] == old_sig


def test_replace_file_inconsistently_or_resigned(small_tree: UpstreamTree) -> None:
    path = f"release/{V}/bin/linux/amd64/kubectl"
    old = small_tree.files[path]
    small_tree.replace_file(path, b"evil", update_sums=False, update_sidecars=False)
    assert small_tree.files[path + ".sha256"] == sha256_hex(old).encode()
    assert sums_entry(small_tree, "SHA256SUMS", "bin/linux/amd64/kubectl") == sha256_hex(old)
    other = make_not_sigstore_signer("someone else")
    small_tree.replace_file(path, b"evil2", resign=True, signer=other)
    cert = x509.load_pem_x509_certificate(base64.b64decode(small_tree.files[path + ".cert"]))
    assert "someone else" in cert.subject.rfc4514_string()
    with pytest.raises(ValueError, match="never signs"):
        small_tree.replace_file(
            f"release/{V}/bin/linux/amd64/kube-proxy.docker_tag", b"x", resign=True
        )


def test_set_sums_text_and_remove(small_tree: UpstreamTree) -> None:
    hostile = f"{'0' * 64}  ../../etc/passwd\n{'1' * 64}  /abs"
    small_tree.set_sums_text(V, hostile)
    sums = small_tree.files[f"release/{V}/SHA256SUMS"]
    assert sums == hostile.encode()
    assert small_tree.files[f"release/{V}/SHA256SUMS.sha512"] == sha512_hex(sums).encode()
    small_tree.remove(f"release/{V}/bin/linux/amd64/kubectl.sig")
    assert f"release/{V}/bin/linux/amd64/kubectl.sig" not in small_tree.files
    with pytest.raises(KeyError):
        small_tree.remove("release/nope")


# -- the server --------------------------------------------------------------------------------

KUBECTL = f"release/{V}/bin/linux/amd64/kubectl"
ServerFactory = Callable[..., Awaitable[TestServer]]


@pytest.fixture
def fake(small_tree: UpstreamTree) -> FakeDl:
    # Small stall and Retry-After so fault tests stay fast.
    return FakeDl(small_tree, faults=FaultPlan(retry_after_s=0, stall_s=2.0))


@pytest.fixture
async def base_url(fake: FakeDl, aiohttp_server: ServerFactory) -> str:
    server = await aiohttp_server(fake.app)
    return str(server.make_url("/"))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    # A plain ClientSession, not pytest-aiohttp's TestClient: the mirror uses one, and its
    # behaviour (e.g. the silent retry after a dropped connection) is what the faults must meet.
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as s:
        yield s


async def get(
    session: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    async with session.get(url, headers={k.replace("_", "-"): v for k, v in headers.items()}) as r:
        return r.status, r.headers, await r.read()


async def test_get_head_and_404(
    fake: FakeDl, base_url: str, session: aiohttp.ClientSession
) -> None:
    data = fake.tree.files[KUBECTL]
    status, headers, body = await get(session, base_url + KUBECTL)
    assert (status, body) == (200, data)
    assert re.fullmatch(r'"[0-9a-f]{32}"', headers["ETag"])
    assert headers["Content-Length"] == str(len(data))
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["Last-Modified"].endswith(" GMT")
    async with session.head(base_url + KUBECTL) as r:
        assert r.status == 200
        assert r.headers["Content-Length"] == str(len(data))
        assert r.headers["ETag"] == headers["ETag"]
        assert await r.read() == b""
    for missing in (f"release/{V}/announcement.html", f"release/{V}/", "release/"):
        status, _, body = await get(session, base_url + missing)
        assert status == 404
        assert b"NoSuchKey" in body
    status, _, body = await get(session, base_url + "release/stable.txt")
    assert status == 404  # markers only exist once set
    assert fake.count(KUBECTL) == 1
    assert fake.count(KUBECTL, "HEAD") == 1
    assert [r.status for r in fake.requests(method=None)] == [200, 200, 404, 404, 404, 404]


async def test_ranges_and_validators(
    fake: FakeDl, base_url: str, session: aiohttp.ClientSession
) -> None:
    data = fake.tree.files[KUBECTL]
    size = len(data)
    url = base_url + KUBECTL
    _, headers, _ = await get(session, url)
    etag, last_modified = headers["ETag"], headers["Last-Modified"]

    status, h, body = await get(session, url, Range="bytes=100-")
    assert (status, body, h["Content-Range"]) == (206, data[100:], f"bytes 100-{size - 1}/{size}")
    status, h, body = await get(session, url, Range="bytes=10-19")
    assert (status, body, h["Content-Range"]) == (206, data[10:20], f"bytes 10-19/{size}")
    status, _, body = await get(session, url, Range="bytes=-5")
    assert (status, body) == (206, data[-5:])
    status, _, body = await get(session, url, Range=f"bytes=10-{size + 50}")
    assert (status, body) == (206, data[10:])

    status, _, body = await get(session, url, Range="bytes=100-", If_Range=etag)
    assert (status, body) == (206, data[100:])
    status, _, body = await get(session, url, Range="bytes=100-", If_Range=last_modified)
    assert (status, body) == (206, data[100:])
    status, _, body = await get(session, url, Range="bytes=100-", If_Range='"stale"')
    assert (status, body) == (200, data)

    for ignored in ("bytes=20-10", "bytes=0-1,5-6", "items=0-1"):
        status, _, body = await get(session, url, Range=ignored)
        assert (status, body) == (200, data), ignored

    status, h, body = await get(session, url, Range=f"bytes={size}-")
    assert (status, body, h["Content-Range"]) == (416, b"", f"bytes */{size}")
    status, _, body = await get(session, url, If_None_Match=etag)
    assert (status, body) == (304, b"")

    # A replaced file gets a new ETag and date, so a resume against the old one restarts.
    fake.tree.replace_file(KUBECTL, b"new content")
    status, h, body = await get(session, url, Range="bytes=3-", If_Range=etag)
    assert (status, body) == (200, b"new content")
    assert h["ETag"] != etag
    assert h["Last-Modified"] != last_modified
    assert [r.range for r in fake.requests(KUBECTL)][:2] == [None, "bytes=100-"]


async def read_or_raise(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as r:
        return r.status, await r.read()


@pytest.mark.parametrize(
    ("actions", "error"),
    [
        (["truncate"], aiohttp.ClientPayloadError),
        (["reset", "reset"], aiohttp.ClientOSError),
        (["disconnect", "disconnect"], aiohttp.ServerDisconnectedError),
        ([Fault("slow", stall_s=2.0)], aiohttp.ServerTimeoutError),
        ([Fault("slow", stall_s=2.0, after_bytes=100)], aiohttp.ServerTimeoutError),
    ],
    ids=["truncate", "reset", "disconnect", "slow", "slow-mid-body"],
)
async def test_network_faults_fail_then_recover(
    fake: FakeDl,
    base_url: str,
    actions: list[str | Fault],
    error: type[Exception],
) -> None:
    fake.faults.add(KUBECTL, *actions)
    timeout = aiohttp.ClientTimeout(total=5, sock_read=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        with pytest.raises(error):
            await read_or_raise(session, base_url + KUBECTL)
        assert await read_or_raise(session, base_url + KUBECTL) == (200, fake.tree.files[KUBECTL])
    assert fake.faults.pending() == {}
    assert fake.count(KUBECTL) == len(actions) + 1
    assert [r.fault for r in fake.requests(KUBECTL)] == [
        *(a.kind if isinstance(a, Fault) else a for a in actions),
        None,
    ]


async def test_single_reset_is_retried_by_aiohttp_itself(
    fake: FakeDl, base_url: str, session: aiohttp.ClientSession
) -> None:
    fake.faults.add(KUBECTL, "reset")
    assert await read_or_raise(session, base_url + KUBECTL) == (200, fake.tree.files[KUBECTL])
    assert [(r.status, r.fault) for r in fake.requests(KUBECTL)] == [(None, "reset"), (200, None)]


async def test_truncate_of_a_range_is_short_too(
    fake: FakeDl, base_url: str, session: aiohttp.ClientSession
) -> None:
    fake.faults.add(KUBECTL, "truncate")
    async with session.get(base_url + KUBECTL, headers={"Range": "bytes=1000-"}) as r:
        assert r.status == 206
        with pytest.raises(aiohttp.ClientPayloadError):
            await r.read()


@pytest.mark.parametrize("status", [429, 503, 500, 404, 403])
async def test_status_faults_then_recover(
    fake: FakeDl, base_url: str, session: aiohttp.ClientSession, status: int
) -> None:
    fake.faults.add(KUBECTL, str(status))
    async with session.get(base_url + KUBECTL) as r:
        assert r.status == status
        assert r.headers.get("Retry-After") == ("0" if status == 429 else None)
    assert await read_or_raise(session, base_url + KUBECTL) == (200, fake.tree.files[KUBECTL])


async def test_retry_after_per_fault_and_on_503(
    fake: FakeDl, base_url: str, session: aiohttp.ClientSession
) -> None:
    fake.faults.add(KUBECTL, Fault("429", retry_after_s=7), Fault("503", retry_after_s=2))
    for expected in ("7", "2"):
        async with session.get(base_url + KUBECTL) as r:
            assert r.headers["Retry-After"] == expected


async def test_corrupt_and_oversize_bodies(
    fake: FakeDl, base_url: str, session: aiohttp.ClientSession
) -> None:
    data = fake.tree.files[KUBECTL]
    fake.faults.add(KUBECTL, "corrupt", "oversize", Fault("oversize", extra_bytes=1))
    status, headers, body = await get(session, base_url + KUBECTL)
    assert status == 200
    assert len(body) == len(data)
    assert sum(a != b for a, b in zip(body, data, strict=True)) == 1
    status, headers, body = await get(session, base_url + KUBECTL, Range="bytes=5-")
    assert (status, len(body), body[: len(data)]) == (200, len(data) + 64, data)
    assert headers["Content-Length"] == str(len(data) + 64)
    _, _, body = await get(session, base_url + KUBECTL)
    assert len(body) == len(data) + 1
    assert await read_or_raise(session, base_url + KUBECTL) == (200, data)


async def test_head_does_not_consume_get_faults(
    fake: FakeDl, base_url: str, session: aiohttp.ClientSession
) -> None:
    fake.faults.add(KUBECTL, "503")
    fake.faults.add(f"/release/{V}/SHA256SUMS", "404", methods=("GET", "HEAD"))
    async with session.head(base_url + KUBECTL) as r:
        assert r.status == 200
    assert fake.faults.pending() == {KUBECTL: ["503"], f"release/{V}/SHA256SUMS": ["404"]}
    async with session.head(base_url + f"release/{V}/SHA256SUMS") as r:
        assert r.status == 404
    with pytest.raises(ValueError, match="unknown fault"):
        fake.faults.add(KUBECTL, "explode")


async def test_redirect_mode(small_tree: UpstreamTree, aiohttp_server: ServerFactory) -> None:
    fake = FakeDl(small_tree, redirect_prefix="/cdn")
    server = await aiohttp_server(fake.app)
    fake.faults.add(KUBECTL, "503")
    async with aiohttp.ClientSession() as session:
        async with session.get(server.make_url("/" + KUBECTL)) as r:
            assert r.status == 503
        async with session.get(server.make_url("/" + KUBECTL)) as r:
            assert r.status == 200
            assert r.url.path == "/cdn/" + KUBECTL
            assert [h.status for h in r.history] == [302]
            assert await r.read() == small_tree.files[KUBECTL]
    assert [(r.path, r.status) for r in fake.log] == [
        ("/" + KUBECTL, 302),
        ("/cdn/" + KUBECTL, 503),
        ("/" + KUBECTL, 302),
        ("/cdn/" + KUBECTL, 200),
    ]
    assert fake.count(KUBECTL) == 2


def test_cli_help_names_the_signing_limitation(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    assert "REJECTS" in " ".join(capsys.readouterr().out.split())


def test_release_record_paths(full_tree: UpstreamTree) -> None:
    release: Release = full_tree.releases[V]
    assert release.path("SHA256SUMS") == f"release/{V}/SHA256SUMS"
    assert full_tree.release_of("/" + KUBECTL) == (release, "bin/linux/amd64/kubectl")
    assert is_signed_kind("bin/linux/amd64/kube-proxy.tar")
    assert not is_signed_kind("bin/linux/amd64/kube-proxy.docker_tag")


def test_fake_sigstore_stack_signs_the_tree() -> None:
    # The contract between the two fakes: sign_blob plugs in as the signer, unwrapped.
    from tests.fakes.sigstore_stack import FakeSigstore, SignedBlob

    tree = UpstreamTree(signer=FakeSigstore().sign_blob)
    release = tree.add_release(V, platforms=["linux/arm"], optional_files=())
    for relpath in release.signed_files:
        path = release.path(relpath)
        blob = tree.signatures[path]
        assert isinstance(blob, SignedBlob)
        assert (tree.files[path + ".sig"], tree.files[path + ".cert"]) == (blob.sig, blob.cert)
