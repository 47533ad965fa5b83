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
adds CAs (a TLS-intercepting proxy's) to the system's. ``Routes`` decides a request's proxy and
credentials once per scheme and host, from the environment and ``~/.netrc`` as read at the
start of the run (aiohttp's own ``trust_env`` re-reads both on every request).
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import logging
import netrc
import os
import socket
import ssl
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote, urlsplit

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

log = logging.getLogger(__name__)

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


@dataclass(frozen=True)
class Route:
    """How one request goes out: through which proxy, with which credentials."""

    proxy: str | None = None
    """The proxy URL, with its credentials (from the URL or ``~/.netrc``) as userinfo."""
    authorization: str | None = None
    """Basic credentials ``~/.netrc`` holds for the request's own host (curl --netrc-optional)
    as an ``Authorization`` value; aiohttp drops it on a redirect to another origin."""

    def headers(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.authorization is not None:
            headers["Authorization"] = self.authorization
        return headers


class Routes:
    """Proxy and credentials per scheme and host, as aiohttp's ``trust_env`` would choose them,
    decided once per run and host. ``trust_env`` itself re-reads the environment and
    ``~/.netrc`` on every request, in two hops to a worker thread: measured, 0.65 ms of the
    event loop's time per request, five times what the request itself costs, and most of a
    small file's cost.

    ``upstream.proxy`` (``configured``) wins over the variables; ``NO_PROXY`` exempts hosts
    from both. A proxy without credentials in its URL gets ``~/.netrc``'s for its host. An
    ``https://`` proxy from the variables is ignored with a warning, as aiohttp does.
    """

    def __init__(self, configured: str | None) -> None:
        self._configured = configured
        self._netrc = _load_netrc()
        self._env_proxies = {
            scheme: url
            for scheme, url in urllib.request.getproxies().items()
            if scheme in ("http", "https")
        }
        self._cache: dict[tuple[str, str], Route] = {}

    def for_url(self, url: str) -> Route:
        parts = urlsplit(url)
        key = (parts.scheme, parts.hostname or "")
        route = self._cache.get(key)
        if route is None:
            route = self._cache[key] = self._decide(*key)
        return route

    def _decide(self, scheme: str, host: str) -> Route:
        entry = self._credentials(host)
        authorization = None if entry is None else _basic(*entry)
        proxy = self._configured or self._env_proxies.get(scheme)
        if proxy is None or (host and urllib.request.proxy_bypass(host)):
            return Route(authorization=authorization)
        parts = urlsplit(proxy)
        if self._configured is None and parts.scheme == "https":
            log.warning(
                "%s proxy %s from the environment is not supported, ignoring it",
                scheme.upper(),
                proxy,
            )
            return Route(authorization=authorization)
        if parts.username is None and (found := self._credentials(parts.hostname or "")):
            userinfo = ":".join(quote(part, safe="") for part in found)
            proxy = parts._replace(netloc=f"{userinfo}@{parts.netloc}").geturl()
        return Route(proxy, authorization)

    def _credentials(self, host: str) -> tuple[str, str] | None:
        entry = self._netrc.authenticators(host) if self._netrc is not None and host else None
        if entry is None:
            return None
        login, account, password = entry
        return login or account or "", password or ""


def _basic(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode("latin-1")).decode()


def _load_netrc() -> netrc.netrc | None:
    """``$NETRC`` or ``~/.netrc``, parsed once; none, or unreadable, is no credentials."""
    location = os.environ.get("NETRC")
    try:
        path = Path(location) if location else Path.home() / ".netrc"
        return netrc.netrc(str(path))
    except FileNotFoundError:
        return None
    except (OSError, RuntimeError, netrc.NetrcParseError) as exc:
        log.warning("%s: not used: %s", location or "~/.netrc", exc)
        return None


class Upstream:
    """Owns the run's ``aiohttp.ClientSession`` (one per run, as aiohttp wants)."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self.routes = Routes(config.proxy)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Upstream:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.config.connect_timeout_s,
            sock_read=self.config.read_timeout_s,
        )
        ca_file = None if self.config.ca_file is None else str(self.config.ca_file)
        connector = aiohttp.TCPConnector(
            # Upstream's requests in flight, and as many again for Rekor's (its own bound).
            limit=self.config.concurrency * 2,
            ttl_dns_cache=300,
            # Without a ca_file, aiohttp's own default context (built at its import) is the
            # same as tls_context(None), which would cost another 90 ms to build.
            ssl=True if ca_file is None else tls_context(ca_file),
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout,
            connector=connector,
            # HTTPS_PROXY / HTTP_PROXY / NO_PROXY (and ~/.netrc) apply as for curl, decided
            # once per host by Routes and passed with each request.
            trust_env=False,
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
        route = self.routes.for_url(url)
        async with (
            translate_errors(url),
            self.session.request(
                method,
                url,
                json=json_body,
                headers=route.headers(),
                proxy=route.proxy,
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
        route = self.routes.for_url(url)
        async with (
            translate_errors(url),
            self.session.head(
                url,
                allow_redirects=True,
                headers=route.headers(),
                proxy=route.proxy,
            ) as response,
        ):
            raise_for_status(url, response)
            return response.content_length

    @asynccontextmanager
    async def stream(
        self, url: str, headers: Mapping[str, str]
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One streaming GET; the caller reads ``response.content`` inside the block."""
        route = self.routes.for_url(url)
        async with (
            translate_errors(url),
            self.session.get(
                url,
                headers=route.headers(headers),
                proxy=route.proxy,
            ) as response,
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
