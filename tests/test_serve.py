"""Tests for mirror.serve: the real curl binary against the real aiohttp app on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from mirror.layout import STATE_DIR_NAME
from mirror.serve import make_app, serve
from mirror.serve import paths as serve_module
from mirror.serve.headers import parse_range

CURL = "/usr/bin/curl"
REPO = Path(__file__).resolve().parents[1]
VERSION = "v1.34.2"
KUBECTL = f"release/{VERSION}/bin/linux/amd64/kubectl"
BIG = f"release/{VERSION}/kubernetes-server-linux-amd64.tar.gz"
SECRET = b"SECRET-"  # every file that must never be served contains this marker

pytestmark = pytest.mark.skipif(not Path(CURL).exists(), reason="needs /usr/bin/curl")


@dataclass
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def header(self, name: str) -> str:
        return self.headers[name.lower()]


async def curl(url: str, *args: str) -> Reply:
    """Run curl; headers go to stderr, the body to stdout. Never any proxy, never ~/.curlrc."""
    proc = await asyncio.create_subprocess_exec(
        CURL,
        "-q",
        "--noproxy",
        "*",
        "--silent",
        "--path-as-is",
        "--max-time",
        "10",
        "--dump-header",
        "/dev/stderr",
        *args,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, f"curl exit {proc.returncode} for {args} {url}"
    if "--head" in args:
        out = b""  # curl prints the headers as "body" of a HEAD; it reads no body after them
    block = [b for b in err.decode("latin-1").split("\r\n\r\n") if b.strip()][-1]
    status_line, *lines = block.split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), headers, out)


@dataclass
class Tree:
    root: Path
    kubectl: bytes
    big: bytes


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    rng = random.Random(1234)
    root = tmp_path / "root"
    kubectl = rng.randbytes(300_000)
    big = rng.randbytes(8 * 1024 * 1024)

    def put(rel: str, data: bytes) -> None:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    put(KUBECTL, kubectl)
    put(KUBECTL + ".sha256", b"ab" * 32)
    put(KUBECTL + ".sigstore.json", b'{"mediaType": "x"}')
    put(BIG, big)
    put(f"release/{VERSION}/SHA256SUMS", b"ab" * 32 + b"  bin/linux/amd64/kubectl")
    put("release/stable.txt", VERSION.encode())
    put("release/empty.bin", b"")
    put(f"{STATE_DIR_NAME}/staging/x", SECRET + b"staged")
    put(f"{STATE_DIR_NAME}/lock", SECRET + b"lock")
    put("release/.hidden", SECRET + b"dotfile")
    put(f"release/{VERSION}/.tmp/partial", SECRET + b"dotdir")
    put("outside/secret.txt", SECRET + b"outside")  # under root: shows what escapes would reach
    (root / "outside").rename(tmp_path / "outside")
    rel = root / "release"
    (rel / "escape.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    (rel / "escape-dir").symlink_to(tmp_path / "outside")
    (rel / "escape-rel").symlink_to("../../outside/secret.txt")
    (rel / "state-link").symlink_to(f"../{STATE_DIR_NAME}")
    (rel / "hidden-link").symlink_to(".hidden")
    (rel / "dangling").symlink_to("does-not-exist")
    (rel / "loop").symlink_to("loop")
    (rel / "current").symlink_to(VERSION)  # inside the root: served
    (rel / "stable-link.txt").symlink_to("stable.txt")  # inside the root: served
    os.mkfifo(rel / "pipe")
    return Tree(root, kubectl, big)


StartServer = Callable[..., Awaitable[str]]


@pytest.fixture
def start(tree: Tree, aiohttp_server: Callable[..., Awaitable[TestServer]]) -> StartServer:
    async def _start(*, index_pages: bool = False) -> str:
        server = await aiohttp_server(make_app(tree.root, index_pages=index_pages))
        return str(server.make_url("")).rstrip("/")

    return _start


@pytest.fixture
async def base(start: StartServer) -> str:
    return await start()


# ---------------------------------------------------------------------------------------------
# Files, ranges, HEAD


async def test_get_whole_file(base: str, tree: Tree) -> None:
    reply = await curl(f"{base}/{KUBECTL}")
    assert reply.status == 200
    assert reply.body == tree.kubectl
    assert reply.header("Content-Length") == str(len(tree.kubectl))
    assert reply.header("Content-Type") == "application/octet-stream"
    assert reply.header("Accept-Ranges") == "bytes"
    assert "max-age" in reply.header("Cache-Control")
    assert "content-encoding" not in reply.headers


@pytest.mark.parametrize(
    ("curl_range", "first", "last"),
    [("10-99", 10, 99), ("100-", 100, 299_999), ("-50", 299_950, 299_999), ("0-0", 0, 0)],
)
async def test_range(base: str, tree: Tree, curl_range: str, first: int, last: int) -> None:
    reply = await curl(f"{base}/{KUBECTL}", "-r", curl_range)
    assert reply.status == 206
    assert reply.body == tree.kubectl[first : last + 1]
    assert reply.header("Content-Length") == str(last - first + 1)
    assert reply.header("Content-Range") == f"bytes {first}-{last}/{len(tree.kubectl)}"


async def test_range_edges(base: str, tree: Tree) -> None:
    size = len(tree.kubectl)
    too_far = await curl(f"{base}/{KUBECTL}", "-r", f"{size}-")
    assert too_far.status == 416
    assert too_far.header("Content-Range") == f"bytes */{size}"
    assert (await curl(f"{base}/{KUBECTL}", "-r", "-0")).status == 416
    # Past the end is clamped, suffix longer than the file is the whole file.
    clamped = await curl(f"{base}/{KUBECTL}", "-r", f"{size - 5}-{size + 100}")
    assert (clamped.status, clamped.body) == (206, tree.kubectl[-5:])
    longer = await curl(f"{base}/{KUBECTL}", "-r", f"-{size * 2}")
    assert (longer.status, longer.body) == (206, tree.kubectl)
    # Several ranges and invalid specs: ignored, the whole file (RFC 9110 allows that).
    for spec in ("0-1,5-6", "9-3"):
        whole = await curl(f"{base}/{KUBECTL}", "-r", spec)
        assert (whole.status, whole.body) == (200, tree.kubectl), spec
    other_unit = await curl(f"{base}/{KUBECTL}", "-H", "Range: items=0-3")
    assert (other_unit.status, other_unit.body) == (200, tree.kubectl)
    empty = await curl(f"{base}/release/empty.bin", "-r", "0-")
    assert (empty.status, empty.body, empty.header("Content-Length")) == (200, b"", "0")


async def test_head(base: str, tree: Tree) -> None:
    reply = await curl(f"{base}/{KUBECTL}", "--head")
    assert reply.status == 200
    assert reply.body == b""
    assert reply.header("Content-Length") == str(len(tree.kubectl))
    assert reply.header("ETag")
    ranged = await curl(f"{base}/{KUBECTL}", "--head", "-r", "10-99")
    assert (ranged.status, ranged.body) == (206, b"")
    assert ranged.header("Content-Length") == "90"
    assert ranged.header("Content-Range") == f"bytes 10-99/{len(tree.kubectl)}"


async def test_percent_encoded_legit_path(base: str, tree: Tree) -> None:
    encoded = KUBECTL.replace("kubectl", "kube%63tl")
    reply = await curl(f"{base}/{encoded}")
    assert (reply.status, reply.body) == (200, tree.kubectl)


async def test_absolute_form_request_target(base: str) -> None:
    reply = await curl(f"{base}/", "--request-target", f"{base}/release/stable.txt")
    assert (reply.status, reply.body) == (200, VERSION.encode())


async def test_symlinks_inside_root_are_served(base: str, tree: Tree) -> None:
    via_dir = await curl(f"{base}/release/current/bin/linux/amd64/kubectl")
    assert (via_dir.status, via_dir.body) == (200, tree.kubectl)
    via_file = await curl(f"{base}/release/stable-link.txt")
    assert (via_file.status, via_file.body) == (200, VERSION.encode())


async def test_content_types_and_cache_control(base: str) -> None:
    marker = await curl(f"{base}/release/stable.txt")
    assert marker.header("Content-Type") == "text/plain; charset=utf-8"
    assert marker.header("Cache-Control") == "no-cache"
    sums = await curl(f"{base}/release/{VERSION}/SHA256SUMS")
    assert sums.header("Content-Type") == "text/plain; charset=utf-8"
    assert "max-age" in sums.header("Cache-Control")
    assert (await curl(f"{base}/{KUBECTL}.sha256")).header("Content-Type").startswith("text/plain")
    bundle = await curl(f"{base}/{KUBECTL}.sigstore.json")
    assert bundle.header("Content-Type") == "application/json"
    tarball = await curl(f"{base}/{BIG}", "--head")
    assert tarball.header("Content-Type") == "application/octet-stream"
    assert "content-encoding" not in tarball.headers


# ---------------------------------------------------------------------------------------------
# Conditional requests


async def test_conditional_requests(base: str, tree: Tree) -> None:
    url = f"{base}/{KUBECTL}"
    first = await curl(url)
    etag, last_modified = first.header("ETag"), first.header("Last-Modified")
    assert re.fullmatch(r'"[0-9a-f]+-[0-9a-f]+"', etag)

    not_modified = await curl(url, "-H", f"If-None-Match: {etag}")
    assert (not_modified.status, not_modified.body) == (304, b"")
    assert not_modified.header("ETag") == etag
    weak = await curl(url, "-H", f'If-None-Match: "other", W/{etag}')
    assert weak.status == 304
    changed = await curl(url, "-H", 'If-None-Match: "other"')
    assert (changed.status, changed.body) == (200, tree.kubectl)
    since = await curl(url, "-H", f"If-Modified-Since: {last_modified}")
    assert (since.status, since.body) == (304, b"")
    # If-None-Match wins over If-Modified-Since (RFC 9110 section 13.2.2).
    both = await curl(
        url, "-H", 'If-None-Match: "other"', "-H", f"If-Modified-Since: {last_modified}"
    )
    assert both.status == 200
    old = await curl(url, "-H", "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT")
    assert old.status == 200

    assert (await curl(url, "-H", 'If-Match: "other"')).status == 412
    assert (await curl(url, "-H", f"If-Match: W/{etag}")).status == 412  # strong comparison
    assert (await curl(url, "-H", f"If-Match: {etag}")).status == 200
    unmodified = await curl(url, "-H", "If-Unmodified-Since: Mon, 01 Jan 2001 00:00:00 GMT")
    assert unmodified.status == 412


async def test_if_range(base: str, tree: Tree) -> None:
    url = f"{base}/{KUBECTL}"
    head = await curl(url, "--head")
    etag, last_modified = head.header("ETag"), head.header("Last-Modified")
    cases = [
        (etag, 206),  # still the same file: resume
        ('"stale"', 200),  # changed since: the whole new file, never a splice
        (f"W/{etag}", 200),  # weak tags never validate a range
        (last_modified, 206),
        ("Mon, 01 Jan 2001 00:00:00 GMT", 200),
        ("garbage", 200),
    ]
    for validator, status in cases:
        reply = await curl(url, "-r", "100-", "-H", f"If-Range: {validator}")
        expected = tree.kubectl[100:] if status == 206 else tree.kubectl
        assert (reply.status, reply.body) == (status, expected), validator


# ---------------------------------------------------------------------------------------------
# What must never be served

_TRAVERSALS = [
    # (request target, expected status); {port} is filled in for absolute-form targets
    ("/release/../.k8s-mirror/lock", 404),
    ("/release/%2e%2e/.k8s-mirror/lock", 404),
    ("/release/%2E%2E%2F.k8s-mirror%2Flock", 404),
    ("/release/..%2f.k8s-mirror%2flock", 404),
    ("/release%2f..%2f.k8s-mirror%2flock", 404),
    ("/../outside/secret.txt", 404),
    ("/%2e%2e/outside/secret.txt", 404),
    ("/%2e%2e%2foutside%2fsecret.txt", 404),
    ("/%252e%252e/outside/secret.txt", 404),  # double encoding is decoded once only
    ("/..%252foutside%252fsecret.txt", 404),
    ("/..\\outside\\secret.txt", 404),
    ("/%5c..%5coutside%5csecret.txt", 404),
    ("/release\\..\\.k8s-mirror\\lock", 404),
    ("//etc/passwd", 404),
    ("/%2fetc%2fpasswd", 404),
    ("/%2Fetc/passwd", 404),
    ("/release//stable.txt", 404),
    ("/release/./stable.txt", 404),
    ("/release/stable.txt%00.png", 404),
    ("/release/stable.txt/", 404),
    ("/.k8s-mirror/lock", 404),
    ("/.k8s-mirror/staging/x", 404),
    ("/.k8s-mirror/", 404),
    ("/.k8s-mirror", 404),
    ("/%2ek8s-mirror/lock", 404),
    ("/release/.hidden", 404),
    ("/release/%2ehidden", 404),
    (f"/release/{VERSION}/.tmp/partial", 404),
    (f"/release/{VERSION}/.tmp/", 404),
    ("/release/state-link/lock", 404),  # symlink inside the root, into the state dir
    ("/release/state-link/staging/x", 404),
    ("/release/hidden-link", 404),  # symlink to a dotfile
    ("/release/escape.txt", 403),  # symlinks resolving outside the root
    ("/release/escape-rel", 403),
    ("/release/escape-dir/secret.txt", 403),
    ("/release/escape-dir/", 403),
    ("/release/dangling", 404),
    ("/release/loop", 404),
    ("/release/pipe", 404),  # a FIFO: refused, and must not hang a worker thread
    ("http://127.0.0.1:{port}/.k8s-mirror/lock", 404),  # absolute-form request target
    ("http://127.0.0.1:{port}/release/%2e%2e/.k8s-mirror/lock", 404),
]


@pytest.mark.parametrize("index_pages", [False, True], ids=["plain", "index"])
async def test_never_serves_hidden_or_outside(start: StartServer, index_pages: bool) -> None:
    base = await start(index_pages=index_pages)
    port = base.rsplit(":", 1)[1]
    # All at once: also shows that refusals don't disturb each other.
    targets = [(t.format(port=port), status) for t, status in _TRAVERSALS]
    replies = await asyncio.gather(
        *(curl(f"{base}/", "--request-target", t) for t, _ in targets),
        *(curl(f"{base}/", "--head", "--request-target", t) for t, _ in targets),
    )
    for (target, status), reply in zip(targets * 2, replies, strict=True):
        assert reply.status == status, target
        assert SECRET not in reply.body, target
        assert b"root:" not in reply.body, target
        assert "etag" not in reply.headers, target


async def test_plain_url_traversal(base: str) -> None:
    # The same through curl's URL parser with --path-as-is (no --request-target).
    for path in ("/release/../.k8s-mirror/lock", "/%2e%2e/outside/secret.txt", "//etc/passwd"):
        reply = await curl(base + path)
        assert reply.status == 404, path
        assert SECRET not in reply.body


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
async def test_other_methods_405(base: str, tree: Tree, method: str) -> None:
    reply = await curl(f"{base}/release/stable.txt", "-X", method, "--data-binary", "x")
    assert reply.status == 405
    assert reply.header("Allow") == "GET, HEAD"
    assert (tree.root / "release/stable.txt").read_bytes() == VERSION.encode()
    hidden = await curl(f"{base}/.k8s-mirror/lock", "-X", method)
    assert hidden.status == 405
    assert SECRET not in hidden.body


# ---------------------------------------------------------------------------------------------
# Directories


async def test_directories_are_404_without_index(base: str) -> None:
    for path in ("/", "/release", "/release/", f"/release/{VERSION}/", "/release/current/"):
        reply = await curl(base + path)
        assert reply.status == 404, path
        assert b"stable.txt" not in reply.body


async def test_index_pages(start: StartServer) -> None:
    base = await start(index_pages=True)
    top = await curl(f"{base}/")
    assert top.status == 200
    assert top.header("Content-Type").startswith("text/html")
    assert b'href="/release/"' in top.body
    assert STATE_DIR_NAME.encode() not in top.body

    listing = await curl(f"{base}/release/")
    assert listing.status == 200
    text = listing.body.decode()
    for shown in (f"/release/{VERSION}/", "/release/stable.txt", "/release/current/"):
        assert f'href="{shown}"' in text, shown
    assert 'href="/release/stable-link.txt"' in text
    for hidden in (
        ".hidden",
        "escape",
        "state-link",
        "hidden-link",
        "dangling",
        "loop",
        "pipe",
        STATE_DIR_NAME,
    ):
        assert hidden not in text, hidden
    assert (await curl(f"{base}/release")).body == listing.body

    version = await curl(f"{base}/release/{VERSION}/")
    assert ".tmp" not in version.body.decode()
    assert (await curl(f"{base}/release/", "--head")).body == b""


# ---------------------------------------------------------------------------------------------
# Concurrency, logging


async def test_concurrent_range_downloads(base: str, tree: Tree) -> None:
    size = len(tree.big)
    pieces = 8
    step = size // pieces
    bounds = [
        (i * step, size - 1 if i == pieces - 1 else (i + 1) * step - 1) for i in range(pieces)
    ]
    jobs = [curl(f"{base}/{BIG}", "-r", f"{a}-{b}") for a, b in bounds]
    jobs += [curl(f"{base}/{BIG}") for _ in range(2)]
    jobs += [curl(f"{base}/{KUBECTL}", "-r", "-1000") for _ in range(4)]
    replies = await asyncio.gather(*jobs)
    assert [r.status for r in replies[:pieces]] == [206] * pieces
    assert b"".join(r.body for r in replies[:pieces]) == tree.big
    assert all(r.status == 200 and r.body == tree.big for r in replies[pieces : pieces + 2])
    assert all(r.body == tree.kubectl[-1000:] for r in replies[pieces + 2 :])


async def test_access_log(base: str, tree: Tree, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="mirror.serve"):
        await curl(f"{base}/{KUBECTL}", "-r", "0-9")
        await curl(f"{base}/.k8s-mirror/lock")
    records = [r for r in caplog.records if r.name == "mirror.serve" and hasattr(r, "http_path")]
    assert len(records) == 2
    ranged, refused = records
    assert (ranged.http_method, ranged.http_path) == ("GET", f"/{KUBECTL}")  # type: ignore[attr-defined]
    assert (ranged.http_status, ranged.http_bytes) == (206, 10)  # type: ignore[attr-defined]
    assert ranged.http_client == "127.0.0.1"  # type: ignore[attr-defined]
    assert ranged.http_duration >= 0  # type: ignore[attr-defined]
    assert "status=206" in ranged.getMessage() and "bytes=10" in ranged.getMessage()
    assert refused.http_status == 404  # type: ignore[attr-defined]


async def test_client_abort_is_not_a_server_error(
    base: str, tree: Tree, caplog: pytest.LogCaptureFixture
) -> None:
    # Larger than the loopback socket buffers, so the server is mid-body when curl gives up.
    (tree.root / "release/large.bin").write_bytes(bytes(32 << 20))
    with caplog.at_level(logging.INFO):
        proc = await asyncio.create_subprocess_exec(
            CURL,
            "-q",
            "--noproxy",
            "*",
            "--silent",
            "--limit-rate",
            "8M",
            "--max-time",
            "0.3",
            "--output",
            "/dev/null",
            f"{base}/release/large.bin",
        )
        assert await proc.wait() == 28  # curl: operation timed out
        for _ in range(50):  # the server notices the reset on its next send
            if any(getattr(r, "http_status", None) == 499 for r in caplog.records):
                break
            await asyncio.sleep(0.02)
        assert (await curl(f"{base}/release/stable.txt")).status == 200  # still serving
    aborted = [r for r in caplog.records if getattr(r, "http_status", None) == 499]
    assert len(aborted) == 1
    assert aborted[0].http_bytes is None  # type: ignore[attr-defined]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_component_swapped_for_symlink_after_resolve_is_refused(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race O_NOFOLLOW closes: resolution saw real directories, then one became a symlink
    # to a look-alike tree outside the root before the open.
    outside = tree.root.parent / "lookalike"
    (outside / "bin/linux/amd64").mkdir(parents=True)
    (outside / "bin/linux/amd64/kubectl").write_bytes(SECRET + b"swapped")
    resolve = serve_module.resolve_in_root

    def resolve_then_swap(root: Path, candidate: Path) -> Path:
        rel = resolve(root, candidate)
        version_dir = root / "release" / VERSION
        version_dir.rename(root / "release" / "moved-away")
        version_dir.symlink_to(outside)
        return rel

    monkeypatch.setattr(serve_module, "resolve_in_root", resolve_then_swap)
    with pytest.raises(serve_module.Reject) as refused:
        serve_module.open_in_root(tree.root.resolve(), tuple(KUBECTL.split("/")))
    assert refused.value.status == 404


@pytest.mark.parametrize(
    ("header", "size", "expected"),
    [
        ("bytes=0-9", 100, (0, 9)),
        ("BYTES = 5-", 100, (5, 99)),
        ("bytes=-10", 100, (90, 99)),
        ("bytes=90-200", 100, (90, 99)),
        ("bytes=100-", 100, "unsatisfiable"),
        ("bytes=-0", 100, "unsatisfiable"),
        ("bytes=100-,200-300", 100, "unsatisfiable"),
        ("bytes=0-1,5-6", 100, "full"),
        ("bytes=100-, 5-6", 100, (5, 6)),  # one satisfiable range left
        ("bytes=5-1", 100, "full"),
        ("bytes=-", 100, "full"),
        ("bytes=1-2-3", 100, "full"),
        ("bytes=" + "9" * 30 + "-", 100, "full"),
        ("items=0-1", 100, "full"),
        ("bytes=0-", 0, "full"),
    ],
)
def test_parse_range(header: str, size: int, expected: object) -> None:
    assert parse_range(header, size) == expected


# ---------------------------------------------------------------------------------------------
# serve(): validation and shutdown


def test_missing_or_file_root_is_value_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ValueError, match=re.escape(str(missing))):
        serve(missing, host="127.0.0.1", port=0)
    a_file = tmp_path / "file"
    a_file.write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(str(a_file))):
        serve(a_file, host="127.0.0.1", port=0)
    with pytest.raises(ValueError, match="nope"):
        make_app(missing)


_SERVE_SCRIPT = """
import logging, sys
from pathlib import Path
from mirror.serve import serve
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
serve(Path(sys.argv[1]), host="127.0.0.1", port=0)
print("serve returned", flush=True)
"""


async def _start_serve_process(root: Path) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SERVE_SCRIPT,
        str(root),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        line = (await asyncio.wait_for(proc.stderr.readline(), 10)).decode()
        match = re.search(r"read-only at (http://127\.0\.0\.1:\d+)/", line)
        if match:
            return proc, match.group(1)
        assert line, "server exited before listening"
    raise AssertionError("server did not log its URL")


async def test_sigterm_finishes_in_flight_download_then_exits_0(tree: Tree) -> None:
    # Bigger than the loopback socket buffers, read slowly: the handler is still sending
    # when SIGTERM arrives (an 8 MiB file would already sit in kernel buffers).
    slow = os.urandom(1 << 20) * 32
    (tree.root / "release/slow.bin").write_bytes(slow)
    proc, base = await _start_serve_process(tree.root)
    try:
        download = asyncio.ensure_future(curl(f"{base}/release/slow.bin", "--limit-rate", "32M"))
        await asyncio.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        reply = await download
        assert reply.status == 200
        assert reply.body == slow
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, stderr.decode()
        assert b"serve returned" in stdout
        log = stderr.decode()
        # The access line comes after the shutdown started: the request really was in flight.
        assert log.index("shutting down") < log.index("/release/slow.bin") < log.index("stopped")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_sigint_exits_0(tree: Tree) -> None:
    proc, base = await _start_serve_process(tree.root)
    try:
        assert (await curl(f"{base}/release/stable.txt")).body == VERSION.encode()
        proc.send_signal(signal.SIGINT)
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 10)
        assert proc.returncode == 0, stderr.decode()
        assert b"serve returned" in stdout
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
