"""The one aiohttp session of a run, and the translation of aiohttp's errors into ours.

Every HTTP request k8s-mirror makes (dl.k8s.io and Rekor) goes through ``Upstream``. One request
is one attempt here; retrying is ``fetch.py``'s job. Failures leave this module as:

- ``TransientError``: worth retrying (connection refused/reset, DNS, timeouts, truncated
  bodies, 408/429/5xx, with the server's ``Retry-After`` when it gave one);
- ``TLSCertificateError``: the server's certificate is not trusted; another attempt gets the
  same certificate, so it is final;
- ``HTTPStatusError``: a final answer (404, 403, other 4xx);
- ``IntegrityError``: a body larger than the caller allows.

A connection failure names the host and the cause (DNS, refused, TLS, timeout). Proxies: the
standard ``HTTPS_PROXY``/``HTTP_PROXY``/``NO_PROXY`` variables apply to every request, unless
``upstream.proxy`` names one (``NO_PROXY`` still exempts hosts from it); ``upstream.ca_file``
adds CAs (a TLS-intercepting proxy's) to the system's.
"""

from __future__ import annotations

import asyncio
import email.utils
import socket
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from types import TracebackType
from urllib.parse import urlsplit

import aiohttp

from mirror import __version__
from mirror.config import UpstreamConfig
from mirror.errors import (
    ConfigError,
    HTTPStatusError,
    IntegrityError,
    MirrorError,
    RetryableStatusError,
    TransientError,
    UpstreamError,
)

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRY_AFTER_CAP_S = 300.0
USER_AGENT = f"k8s-mirror/{__version__}"


class TLSCertificateError(UpstreamError):
    """The server's (or an intercepting proxy's) certificate does not verify: not transient."""

    hint = (
        "if a proxy re-signs TLS traffic, give its CA certificate (PEM) as upstream.ca_file; "
        "otherwise check the URL and the host's certificate"
    )


def parse_retry_after(value: str | None, *, now_s: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), capped."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), RETRY_AFTER_CAP_S)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    now = time.time() if now_s is None else now_s
    return min(max(when.timestamp() - now, 0.0), RETRY_AFTER_CAP_S)


def raise_for_status(url: str, response: aiohttp.ClientResponse) -> None:
    if response.status < 400:
        return
    if response.status in RETRYABLE_STATUSES:
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        raise RetryableStatusError(url, response.status, retry_after)
    raise HTTPStatusError(url, response.status)


def connect_cause(exc: aiohttp.ClientConnectorError) -> str:
    """Why a connection could not be made, in a user's words."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError) or isinstance(
        exc.os_error, socket.gaierror
    ):
        return "DNS lookup failed (name does not resolve)"
    if isinstance(exc, aiohttp.ClientSSLError):
        return f"TLS handshake failed: {exc.os_error}"
    if isinstance(exc.os_error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc.os_error, TimeoutError):
        return "connection timed out"
    return exc.os_error.strerror or str(exc.os_error)


@asynccontextmanager
async def translate_errors(url: str) -> AsyncIterator[None]:
    """Map aiohttp/socket failures of one request to ``TransientError`` (or, for an untrusted
    certificate, the final ``TLSCertificateError``), each naming host and cause."""
    host = urlsplit(url).netloc
    try:
        yield
    except MirrorError:
        raise
    except aiohttp.ClientConnectorCertificateError as exc:
        raise TLSCertificateError(
            f"{url}: cannot reach {host}: TLS certificate not trusted "
            f"({exc.certificate_error.__class__.__name__}: {exc.certificate_error})"
        ) from exc
    except aiohttp.ClientProxyConnectionError as exc:
        proxy = f"{exc.host}:{exc.port}"
        raise TransientError(
            f"{url}: cannot reach the proxy {proxy}: {connect_cause(exc)}"
        ) from exc
    except aiohttp.ClientHttpProxyError as exc:
        raise TransientError(
            f"{url}: the proxy refused to connect to {host}: HTTP {exc.status} {exc.message}"
        ) from exc
    except aiohttp.ClientConnectorError as exc:
        raise TransientError(f"{url}: cannot reach {host}: {connect_cause(exc)}") from exc
    except aiohttp.ClientPayloadError as exc:
        raise TransientError(f"{url}: body cut short ({exc.__class__.__name__})") from exc
    except aiohttp.ConnectionTimeoutError as exc:
        raise TransientError(f"{url}: cannot reach {host}: connection timed out") from exc
    except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
        raise TransientError(f"{url}: {host} timed out") from exc
    except aiohttp.ClientResponseError as exc:
        raise TransientError(f"{url}: bad response: {exc.message}") from exc
    except (aiohttp.ClientError, OSError) as exc:
        raise TransientError(f"{url}: {exc.__class__.__name__}: {exc}") from exc


READ_BUFFER_BYTES = 256 << 10
"""Per connection (aiohttp pauses reading at twice this). Not more: what is buffered when a
connection fails is dropped by aiohttp, so it is lost for resume."""


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system's trust (``SSL_CERT_FILE`` included), plus ``ca_file`` when given."""
    context = ssl.create_default_context()
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"{ca_file}: not a PEM CA file: {exc}", source="upstream.ca_file"
            ) from None
    return context


class Upstream:
    """Owns the run's ``aiohttp.ClientSession`` (one per run, as aiohttp wants)."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Upstream:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.config.connect_timeout_s,
            sock_read=self.config.read_timeout_s,
        )
        ca_file = None if self.config.ca_file is None else str(self.config.ca_file)
        connector = aiohttp.TCPConnector(
            limit=self.config.concurrency * 2, ttl_dns_cache=300, ssl=tls_context(ca_file)
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            # HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and ~/.netrc) apply as for curl; a request
            # passes upstream.proxy explicitly when that is set (see proxy_for).
            trust_env=True,
            # identity: we never decompress (below), so never invite a compressed answer.
            headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity"},
            # Release tarballs must arrive byte for byte as signed: never let the client
            # undo a Content-Encoding the server chose.
            auto_decompress=False,
            raise_for_status=False,
            # aiohttp pauses a connection's reading at twice this much buffered; at its
            # default (64 KiB) that is after nearly every socket read of a fast download.
            read_bufsize=READ_BUFFER_BYTES,
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream used outside 'async with'")
        return self._session

    def proxy_for(self, url: str) -> str | None:
        """``upstream.proxy`` unless ``NO_PROXY`` exempts the host; None leaves the choice to
        the environment variables (``trust_env``)."""
        if self.config.proxy is None:
            return None
        host = urlsplit(url).hostname or ""
        if urllib.request.proxy_bypass(host):
            return None
        return self.config.proxy

    def release_url(self, tree_path: str) -> str:
        """URL of a path in the upstream URL space (``release/v1.34.2/SHA256SUMS``)."""
        return f"{self.config.url}/{tree_path}"

    async def get_bytes(
        self,
        url: str,
        *,
        max_bytes: int,
        method: str = "GET",
        json_body: object = None,
    ) -> bytes:
        """One attempt at a small body, refusing anything over ``max_bytes``."""
        async with (
            translate_errors(url),
            self.session.request(
                method, url, json=json_body, proxy=self.proxy_for(url)
            ) as response,
        ):
            raise_for_status(url, response)
            length = response.content_length
            if length is not None and length > max_bytes:
                raise IntegrityError(f"{url}: {length} bytes, more than the {max_bytes} allowed")
            chunks: list[bytes] = []
            received = 0
            async for chunk in response.content.iter_any():
                received += len(chunk)
                if received > max_bytes:
                    raise IntegrityError(f"{url}: body larger than the {max_bytes} bytes allowed")
                chunks.append(chunk)
            if length is not None and received != length:
                raise TransientError(f"{url}: got {received} of {length} bytes")
            return b"".join(chunks)

    async def content_length(self, url: str) -> int | None:
        """One HEAD attempt: the size the server announces for ``url``."""
        async with (
            translate_errors(url),
            self.session.head(url, allow_redirects=True, proxy=self.proxy_for(url)) as response,
        ):
            raise_for_status(url, response)
            return response.content_length

    @asynccontextmanager
    async def stream(
        self, url: str, headers: Mapping[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One streaming GET; the caller reads ``response.content`` inside the block."""
        async with (
            translate_errors(url),
            self.session.get(url, headers=dict(headers), proxy=self.proxy_for(url)) as response,
        ):
            yield response


def salvage_buffered(content: aiohttp.StreamReader) -> bytes:
    """What the client had received of a body before its connection broke, which aiohttp
    would drop: once a stream holds an exception, every read raises at once, buffered bytes
    or not. Uses one private attribute (``_exception``), pinned by a test, so an aiohttp
    upgrade that changes it fails in one place; returns b"" if anything is unexpected."""
    failure = content.exception()
    if failure is None or not hasattr(content, "_exception"):
        return b""
    try:
        content._exception = None
        return content.read_nowait()
    except Exception:
        return b""
    finally:
        content.set_exception(failure)


async def sleep_s(seconds: float) -> None:
    """Backoff sleeps in one place, so a test can see the schedule in the code that runs."""
    await asyncio.sleep(seconds)
