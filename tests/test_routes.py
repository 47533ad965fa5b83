"""Which proxy and credentials a request takes (``upstream.Routes``), pure: decided once per
scheme and host from the environment, ``~/.netrc`` and ``upstream.proxy``."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from mirror.upstream import Routes

PROXY_VARS = (
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "NO_PROXY",
    "ALL_PROXY",
    "https_proxy",
    "http_proxy",
    "no_proxy",
    "all_proxy",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in PROXY_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_no_proxy_anywhere_goes_direct() -> None:
    route = Routes(None).for_url("https://dl.k8s.io/release/stable.txt")
    assert (route.proxy, route.authorization) == (None, None)
    assert route.headers({"Range": "bytes=1-"}) == {"Range": "bytes=1-"}


def test_the_variable_for_the_scheme_applies(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain.example:8080")
    routes = Routes(None)
    assert routes.for_url("https://dl.k8s.io/x").proxy == "http://proxy.example:3128"
    assert routes.for_url("http://mirror.example/x").proxy == "http://plain.example:8080"


def test_no_proxy_exempts_a_host_from_variables_and_the_config_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "internal.example")
    assert Routes(None).for_url("https://internal.example/x").proxy is None
    configured = Routes("http://configured.example:3128")
    assert configured.for_url("https://internal.example/x").proxy is None
    assert configured.for_url("https://dl.k8s.io/x").proxy == "http://configured.example:3128"


def test_credentials_in_a_proxy_url_stay_with_it() -> None:
    proxy = "http://me%40corp:s3cret@proxy.example:3128"
    route = Routes(proxy).for_url("https://dl.k8s.io/x")
    assert route.proxy == proxy and route.authorization is None


def test_netrc_gives_the_proxy_and_the_host_their_credentials(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(
        "machine proxy.example login pu password pp\nmachine mirror.example login mu password mp\n"
    )
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    routes = Routes("http://proxy.example:3128")
    route = routes.for_url("https://mirror.example/release/stable.txt")
    assert route.proxy == "http://pu:pp@proxy.example:3128"
    assert route.headers() == {"Authorization": "Basic " + base64.b64encode(b"mu:mp").decode()}
    assert routes.for_url("https://dl.k8s.io/x").authorization is None


def test_an_https_proxy_from_the_environment_is_ignored_as_aiohttp_does(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "https://tls-proxy.example:443")
    assert Routes(None).for_url("https://dl.k8s.io/x").proxy is None
    assert "not supported" in caplog.text


def test_the_decision_is_made_once_per_scheme_and_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """The point of Routes: the environment is read at the start of the run, not per request."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    routes = Routes(None)
    first = routes.for_url("https://dl.k8s.io/a")
    monkeypatch.setenv("HTTPS_PROXY", "http://other.example:3128")
    assert routes.for_url("https://dl.k8s.io/b") is first
