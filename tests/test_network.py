"""Enterprise networks, end to end through the CLI: HTTPS_PROXY/NO_PROXY and ``upstream.proxy``
seen by a real local CONNECT proxy, a private CA through ``upstream.ca_file`` against a local
HTTPS dl.k8s.io and Rekor, and failures that name host and cause."""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import json
import socket
import ssl
import types
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mirror.errors import UpstreamError
from mirror.upstream import connect_cause
from tests.conftest import Env
from tests.fakes.dlserver import FakeDl


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def make_tls(directory: Path) -> tuple[Path, ssl.SSLContext]:
    """A test CA (its PEM file) and a server context with a leaf for 127.0.0.1 it issued."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("k8s-mirror test proxy CA"))
        .issuer_name(_name("k8s-mirror test proxy CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(_name("127.0.0.1"))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_file = directory / "test-ca.pem"
    ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_file = directory / "leaf.pem"
    key_file = directory / "leaf.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return ca_file, context


@dataclass
class ConnectProxy:
    """A real HTTP CONNECT proxy on 127.0.0.1 that only tunnels to 127.0.0.1, counting what
    each tunnel was for."""

    tunnels: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    server: asyncio.Server | None = None
    credentials: str | None = None
    """``user:password`` the proxy demands (407 without them), or None."""

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = (await reader.readline()).decode()
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            method, target, _ = request.split(" ", 2)
            host, _, port = target.rpartition(":")
            wanted = "Basic " + base64.b64encode((self.credentials or "").encode()).decode()
            if self.credentials and headers.get("proxy-authorization") != wanted:
                self.refused.append(target)
                writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
                writer.write(b'Proxy-Authenticate: Basic realm="test"\r\nContent-Length: 0\r\n\r\n')
                return
            if method != "CONNECT" or host != "127.0.0.1":
                self.refused.append(target)
                writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                return
            self.tunnels.append(target)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(1 << 16):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[ConnectProxy]:
    p = ConnectProxy()
    p.server = await asyncio.start_server(p.handle, "127.0.0.1", 0)
    yield p
    p.server.close()


@dataclass
class Https:
    ca_file: Path
    dl: FakeDl
    dl_url: str
    rekor_url: str

    def hostports(self) -> set[str]:
        return {u.removeprefix("https://") for u in (self.dl_url, self.rekor_url)}


@pytest.fixture
async def https(env: Env, aiohttp_server: Callable[..., Awaitable[TestServer]]) -> Https:
    """The same fake release and Rekor log as ``env``, served over TLS by a private CA."""
    ca_file, context = make_tls(env.tmp)
    dl = FakeDl(env.tree)
    dl_server = await aiohttp_server(dl.app, host="127.0.0.1", ssl=context)
    rekor_server = await aiohttp_server(env.sigstore.rekor_app(), host="127.0.0.1", ssl=context)
    return Https(
        ca_file,
        dl,
        str(dl_server.make_url("")).rstrip("/"),
        str(rekor_server.make_url("")).rstrip("/"),
    )


NO_PROXY_ENV = {"HTTPS_PROXY": "", "HTTP_PROXY": "", "NO_PROXY": "", "ALL_PROXY": ""}


def last_report(env: Env) -> dict[str, object]:
    reports = sorted((env.root / ".k8s-mirror/reports").glob("*.json"))
    return json.loads(reports[-1].read_text())  # type: ignore[no-any-return]


async def test_https_proxy_variable_carries_every_request(
    env: Env, https: Https, proxy: ConnectProxy
) -> None:
    env.write_config(
        upstream={"url": https.dl_url, "ca_file": str(https.ca_file)},
        verify={"rekor_url": https.rekor_url},
    )
    result = await env.cli(
        "sync", "--config", str(env.config_path), env={**NO_PROXY_ENV, "HTTPS_PROXY": proxy.url}
    )
    assert result.exit_code == 0, result.stderr
    assert set(proxy.tunnels) == https.hostports()  # dl.k8s.io and Rekor alike
    assert len(https.dl.requests()) > 0
    assert (env.root / "release/v1.34.2/bin/linux/amd64/kubectl.sigstore.json").is_file()


async def test_no_proxy_exempts_hosts_from_the_variable_and_the_config_key(
    env: Env, https: Https, proxy: ConnectProxy
) -> None:
    env.write_config(
        upstream={"url": https.dl_url, "ca_file": str(https.ca_file), "proxy": proxy.url},
        verify={"rekor_url": https.rekor_url},
    )
    result = await env.cli(
        "sync", "--config", str(env.config_path), env={**NO_PROXY_ENV, "NO_PROXY": "127.0.0.1"}
    )
    assert result.exit_code == 0, result.stderr
    assert proxy.tunnels == []
    assert len(https.dl.requests()) > 0


async def test_upstream_proxy_key_carries_every_request(
    env: Env, https: Https, proxy: ConnectProxy
) -> None:
    env.write_config(
        upstream={"url": https.dl_url, "ca_file": str(https.ca_file), "proxy": proxy.url},
        verify={"rekor_url": https.rekor_url},
    )
    result = await env.cli("sync", "--config", str(env.config_path), env=NO_PROXY_ENV)
    assert result.exit_code == 0, result.stderr
    assert set(proxy.tunnels) == https.hostports()


async def test_proxy_credentials_in_the_config_url_are_sent(
    env: Env, https: Https, proxy: ConnectProxy
) -> None:
    proxy.credentials = "mirror@corp:p4ss"
    with_credentials = proxy.url.replace("http://", "http://mirror%40corp:p4ss@")
    env.write_config(
        upstream={"url": https.dl_url, "ca_file": str(https.ca_file), "proxy": with_credentials},
        verify={"rekor_url": https.rekor_url},
    )
    result = await env.cli("sync", "--config", str(env.config_path), env=NO_PROXY_ENV)
    assert result.exit_code == 0, result.stderr
    assert proxy.refused == []
    assert set(proxy.tunnels) == https.hostports()


async def test_netrc_credentials_for_the_proxy_host_are_sent(
    env: Env, https: Https, proxy: ConnectProxy
) -> None:
    """HTTPS_PROXY without credentials: ``~/.netrc``'s entry for the proxy's host is used, as
    curl and aiohttp's own ``trust_env`` do."""
    proxy.credentials = "mirror:p4ss"
    netrc = env.tmp / "netrc"
    netrc.write_text("machine 127.0.0.1 login mirror password p4ss\n")
    netrc.chmod(0o600)
    env.write_config(
        upstream={"url": https.dl_url, "ca_file": str(https.ca_file)},
        verify={"rekor_url": https.rekor_url},
    )
    result = await env.cli(
        "sync",
        "--config",
        str(env.config_path),
        env={**NO_PROXY_ENV, "HTTPS_PROXY": proxy.url, "NETRC": str(netrc)},
    )
    assert result.exit_code == 0, result.stderr
    assert proxy.refused == []
    assert set(proxy.tunnels) == https.hostports()


async def test_a_proxy_refusing_our_credentials_fails_with_its_answer(
    env: Env, https: Https, proxy: ConnectProxy
) -> None:
    proxy.credentials = "mirror:right"
    env.write_config(
        upstream={
            "url": https.dl_url,
            "ca_file": str(https.ca_file),
            "proxy": proxy.url.replace("http://", "http://mirror:wrong@"),
            "retries": 0,
        },
        verify={"rekor_url": https.rekor_url},
    )
    result = await env.cli("sync", "--config", str(env.config_path), env=NO_PROXY_ENV)
    assert result.exit_code == UpstreamError.exit_code, result.stderr
    assert "407" in result.stderr and "Traceback" not in result.stderr
    assert proxy.tunnels == [] and proxy.refused
    assert not (env.root / "release/v1.34.2").exists()


async def test_untrusted_certificate_fails_at_once_with_a_ca_file_hint(
    env: Env, https: Https, proxy: ConnectProxy
) -> None:
    env.write_config(upstream={"url": https.dl_url, "proxy": proxy.url, "retries": 3})
    result = await env.cli("sync", "--config", str(env.config_path), env=NO_PROXY_ENV)
    assert result.exit_code == 4
    host = https.dl_url.removeprefix("https://")
    assert f"cannot reach {host}: TLS certificate not trusted" in result.stderr
    assert "hint: if a proxy re-signs TLS traffic, give its CA certificate" in result.stderr
    assert "upstream.ca_file" in result.stderr
    # Not retried: one tunnel for the one marker request, and no retry in the report.
    assert proxy.tunnels == [host]
    assert last_report(env)["retries"] == 0
    assert https.dl.requests() == []


async def test_refused_connection_names_host_and_cause_with_a_hint(env: Env) -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env.write_config(upstream={"url": f"http://127.0.0.1:{port}", "retries": 1})
    result = await env.cli("sync", "--config", str(env.config_path), env=NO_PROXY_ENV)
    assert result.exit_code == 4
    assert f"cannot reach 127.0.0.1:{port}: connection refused" in result.stderr
    assert "retry 1/1 in " in result.stderr  # retries are visible, not a frozen bar
    hints = [line for line in result.stderr.splitlines() if line.startswith("k8s-mirror: hint:")]
    assert len(hints) == 1
    assert "HTTPS_PROXY" in hints[0] and "--upstream-url" in hints[0]


async def test_a_missing_ca_file_is_a_config_error(env: Env) -> None:
    env.write_config(upstream={"ca_file": "no-such-ca.pem"})
    result = await env.cli("sync", "--config", str(env.config_path))
    assert result.exit_code == 2
    assert "upstream.ca_file" in result.stderr and "no-such-ca.pem" in result.stderr


async def test_an_offline_trust_root_refresh_is_one_warning(env: Env, proxy: ConnectProxy) -> None:
    """The TUF client honours HTTPS_PROXY; our proxy refuses the internet, so nothing leaves
    the machine and the refresh fails as it would offline."""
    env.write_config(verify={"trusted_root": "production"})
    xdg = {f"XDG_{n}_HOME": str(env.tmp / "xdg" / n.lower()) for n in ("DATA", "CACHE")}
    result = await env.cli(
        "sync",
        "--config",
        str(env.config_path),
        env={**NO_PROXY_ENV, **xdg, "HTTPS_PROXY": proxy.url, "NO_PROXY": "127.0.0.1"},
    )
    assert any("sigstore" in target for target in proxy.refused), proxy.refused
    assert result.stderr.count("could not refresh the Sigstore trust root") == 1
    assert "Retrying" not in result.stderr and "urllib3" not in result.stderr


async def test_a_proxy_that_is_no_url_is_a_config_error(env: Env) -> None:
    env.write_config(upstream={"proxy": "proxy.example:3128"})
    result = await env.cli("sync", "--config", str(env.config_path))
    assert result.exit_code == 2
    assert "upstream.proxy: must be an http(s) URL, got 'proxy.example:3128'" in result.stderr


@pytest.mark.parametrize(
    ("os_error", "cause"),
    [
        (socket.gaierror(-2, "Name or service not known"), "DNS lookup failed"),
        (ConnectionRefusedError(111, "Connection refused"), "connection refused"),
        (TimeoutError(110, "Connection timed out"), "connection timed out"),
        (OSError(113, "No route to host"), "No route to host"),
    ],
)
def test_connection_failures_are_told_by_cause(os_error: OSError, cause: str) -> None:
    """The causes a user acts on differently, from the exceptions aiohttp raises for them."""
    key = types.SimpleNamespace(host="dl.k8s.io", port=443, ssl=True)
    exc = aiohttp.ClientConnectorError(key, os_error)  # type: ignore[arg-type]
    assert connect_cause(exc).startswith(cause)
