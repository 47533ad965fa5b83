"""mirror.toml -> frozen dataclasses.

Every problem in a file is reported at once, each naming its key (``select.platforms[1]``), so a
user fixes a config in one round. Command-line flags are applied as overrides of dotted keys
before validation, so a bad flag is reported the same way. Relative paths in the file are
resolved against the file's directory, so a systemd unit and a shell give the same tree.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mirror.catalog import is_marker, is_version, platform_problem, valid_component_name
from mirror.errors import ConfigError
from mirror.publish.target import target_problem

DEFAULT_IDENTITY = "krel-staging@k8s-releng-prod.iam.gserviceaccount.com"
DEFAULT_ISSUER = "https://accounts.google.com"
BINDING_MODES = ("sbom", "off")
UNSIGNED_POLICIES = ("refuse", "checksums-only")
CHECKSUM_MODES = ("auto", "sha256", "md5")
MIB = 1024**2


@dataclass(frozen=True)
class UpstreamConfig:
    url: str = "https://dl.k8s.io"
    concurrency: int = 32
    """Requests in flight at once, across all files (a connection each: HTTP/1.1)."""
    large_downloads: int = 8
    """Of those, bodies over 1 MiB streaming at once (more only split the same link)."""
    retries: int = 5
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_file_size_bytes: int = 4 * 1024**3
    min_rate_bytes_per_s: int = 1024
    """A body slower than this, averaged over ``min_rate_window_s``, is cut and retried."""
    min_rate_window_s: float = 30.0
    file_timeout_s: float = 0.0
    """Longest one attempt at one file may take (0: no limit beyond the rate)."""
    proxy: str | None = None
    """HTTP(S) proxy URL for every request; None: the HTTPS_PROXY/HTTP_PROXY/NO_PROXY variables."""
    ca_file: Path | None = None
    """PEM file of extra CAs (a TLS-intercepting proxy's), trusted besides the system's."""


@dataclass(frozen=True)
class TreeConfig:
    root: Path = Path("k8s-mirror")
    prune: bool = False
    prune_max_files: int = 200
    prune_max_share: float = 0.25


@dataclass(frozen=True)
class SelectConfig:
    versions: tuple[str, ...] = ("stable",)
    platforms: tuple[str, ...] = ("linux/amd64",)
    components: tuple[str, ...] = ("kubectl", "kubeadm", "kubelet")


@dataclass(frozen=True)
class IdentityConfig:
    identity: str
    issuer: str


@dataclass(frozen=True)
class VerifyConfig:
    rekor_url: str = "https://rekor.sigstore.dev"
    """Where to look up the log entry of a file published with ``.sig``/``.cert`` only; ``""``
    for none (a mirror inside the air gap, syncing from a mirror that serves bundles)."""
    trusted_root: str = "production"
    """``production`` (Sigstore public-good via TUF) or the path of a trusted_root.json."""
    identities: tuple[IdentityConfig, ...] = (IdentityConfig(DEFAULT_IDENTITY, DEFAULT_ISSUER),)
    unsigned_releases: str = "refuse"
    """``refuse`` releases published before signing began, or accept them ``checksums-only``."""
    release_binding: str = "sbom"
    """``sbom``: every file must be bound to its release and path by the release's signed
    SBOM (or the image rules); ``off``: per-file signatures only."""
    unbound_allowed: tuple[str, ...] = ()
    """Glob patterns (paths inside a release) whose files may be unbound, with a warning."""


@dataclass(frozen=True)
class ReportConfig:
    metrics_file: Path | None = None
    """Prometheus textfile-collector output, written atomically after each run."""
    keep_reports: int = 50


@dataclass(frozen=True)
class PublishConfig:
    """One ``[[publish]]`` target: where the verified tree is uploaded after a good sync.

    Credentials are never configured here: they come from the standard AWS chain
    (environment, ``profile`` in the shared config files, instance or container role)."""

    to: str
    """``s3://BUCKET/PREFIX``."""
    endpoint_url: str | None = None
    region: str | None = None
    path_style: bool = False
    profile: str | None = None
    prune: bool = False
    concurrency: int = 8
    part_size_bytes: int = 16 * MIB
    checksum: str = "auto"
    """``auto`` (probe the target), ``sha256`` (x-amz-checksum-sha256) or ``md5`` (Content-MD5)."""
    retries: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0


@dataclass(frozen=True)
class Config:
    upstream: UpstreamConfig = field(default_factory=UpstreamConfig)
    tree: TreeConfig = field(default_factory=TreeConfig)
    select: SelectConfig = field(default_factory=SelectConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    publish: tuple[PublishConfig, ...] = ()


def load_config(path: Path | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read ``path`` (or only defaults when None), apply dotted-key ``overrides``, validate."""
    raw: dict[str, Any] = {}
    source = "defaults"
    base_dir = Path.cwd()
    if path is not None:
        source = str(path)
        try:
            raw = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("file not found", source=source) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read: {exc}", source=source) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", source=source) from None
        base_dir = path.resolve().parent
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})
        if isinstance(raw[section], dict):
            raw[section][key] = value
    return _Validator(source, base_dir).build(raw)


class _Validator:
    """Collects every problem instead of stopping at the first."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir
        self.problems: list[str] = []

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{key}: {message}")

    def section(self, raw: Mapping[str, Any], name: str, known: set[str]) -> dict[str, Any]:
        value = raw.get(name, {})
        if not isinstance(value, dict):
            self.problem(name, "must be a table")
            return {}
        for key in sorted(set(value) - known):
            self.problem(f"{name}.{key}", "unknown key")
        return value

    def build(self, raw: Mapping[str, Any]) -> Config:
        sections = {"upstream", "tree", "select", "verify", "report", "publish"}
        for key in sorted(set(raw) - sections):
            self.problem(key, "unknown section")
        config = Config(
            upstream=self._upstream(raw),
            tree=self._tree(raw),
            select=self._select(raw),
            verify=self._verify(raw),
            report=self._report(raw),
            publish=self._publish_targets(raw),
        )
        if self.problems:
            raise ConfigError(self.problems, source=self.source)
        return config

    # -- typed getters -----------------------------------------------------------------------

    def _int(self, table: Mapping[str, Any], key: str, default: int, lo: int, hi: int) -> int:
        value = table.get(key.rsplit(".", 1)[-1], default)
        if isinstance(value, bool) or not isinstance(value, int):
            self.problem(key, f"must be an integer, got {value!r}")
            return default
        if not lo <= value <= hi:
            self.problem(key, f"must be between {lo} and {hi}, got {value}")
            return default
        return value

    def _float(
        self, table: Mapping[str, Any], key: str, default: float, lo: float, hi: float
    ) -> float:
        value = table.get(key.rsplit(".", 1)[-1], default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.problem(key, f"must be a number, got {value!r}")
            return default
        if not lo <= value <= hi:
            self.problem(key, f"must be between {lo} and {hi}, got {value}")
            return default
        return float(value)

    def _bool(self, table: Mapping[str, Any], key: str, default: bool) -> bool:
        value = table.get(key.rsplit(".", 1)[-1], default)
        if not isinstance(value, bool):
            self.problem(key, f"must be true or false, got {value!r}")
            return default
        return value

    def _str(self, table: Mapping[str, Any], key: str, default: str) -> str:
        value = table.get(key.rsplit(".", 1)[-1], default)
        if not isinstance(value, str) or not value:
            self.problem(key, f"must be a non-empty string, got {value!r}")
            return default
        return value

    def _url(self, table: Mapping[str, Any], key: str, default: str) -> str:
        value = self._str(table, key, default)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            self.problem(key, f"must be an http(s) URL, got {value!r}")
            return default
        if parts.query or parts.fragment:
            self.problem(key, "must not carry a query or fragment")
        return value.rstrip("/")

    def _path(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def _strings(self, table: Mapping[str, Any], key: str, default: tuple[str, ...]) -> list[str]:
        value = table.get(key.rsplit(".", 1)[-1], list(default))
        if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            self.problem(key, f"must be a list of strings, got {value!r}")
            return list(default)
        return list(value)

    # -- sections ----------------------------------------------------------------------------

    def _upstream(self, raw: Mapping[str, Any]) -> UpstreamConfig:
        d = UpstreamConfig()
        t = self.section(raw, "upstream", set(UpstreamConfig.__dataclass_fields__))
        return UpstreamConfig(
            url=self._url(t, "upstream.url", d.url),
            concurrency=self._int(t, "upstream.concurrency", d.concurrency, 1, 256),
            large_downloads=self._int(t, "upstream.large_downloads", d.large_downloads, 1, 64),
            retries=self._int(t, "upstream.retries", d.retries, 0, 50),
            connect_timeout_s=self._float(
                t, "upstream.connect_timeout_s", d.connect_timeout_s, 0.1, 600
            ),
            read_timeout_s=self._float(t, "upstream.read_timeout_s", d.read_timeout_s, 0.1, 3600),
            backoff_base_s=self._float(t, "upstream.backoff_base_s", d.backoff_base_s, 0, 60),
            backoff_max_s=self._float(t, "upstream.backoff_max_s", d.backoff_max_s, 0, 3600),
            max_file_size_bytes=self._int(
                t, "upstream.max_file_size_bytes", d.max_file_size_bytes, 1, 1 << 40
            ),
            min_rate_bytes_per_s=self._int(
                t, "upstream.min_rate_bytes_per_s", d.min_rate_bytes_per_s, 0, 1 << 40
            ),
            min_rate_window_s=self._float(
                t, "upstream.min_rate_window_s", d.min_rate_window_s, 0.1, 3600
            ),
            file_timeout_s=self._float(t, "upstream.file_timeout_s", d.file_timeout_s, 0, 86400),
            proxy=self._url(t, "upstream.proxy", "") if "proxy" in t else None,
            ca_file=self._existing_file(t, "upstream.ca_file"),
        )

    def _existing_file(self, table: Mapping[str, Any], key: str) -> Path | None:
        if key.rsplit(".", 1)[-1] not in table:
            return None
        path = self._path(self._str(table, key, ""))
        if not path.is_file():
            self.problem(key, f"{str(path)!r} is not a readable file")
            return None
        return path

    def _tree(self, raw: Mapping[str, Any]) -> TreeConfig:
        d = TreeConfig()
        t = self.section(raw, "tree", set(TreeConfig.__dataclass_fields__))
        root_text = self._str(t, "tree.root", str(d.root))
        if self._path(root_text).resolve() == Path("/"):
            # The tree's state and pruning would act on the whole filesystem.
            self.problem("tree.root", "must not be the filesystem root '/'")
        return TreeConfig(
            root=self._path(root_text),
            prune=self._bool(t, "tree.prune", d.prune),
            prune_max_files=self._int(t, "tree.prune_max_files", d.prune_max_files, 0, 10**7),
            prune_max_share=self._float(t, "tree.prune_max_share", d.prune_max_share, 0, 1),
        )

    def _select(self, raw: Mapping[str, Any]) -> SelectConfig:
        d = SelectConfig()
        t = self.section(raw, "select", set(SelectConfig.__dataclass_fields__))
        versions = self._strings(t, "select.versions", d.versions)
        if not versions:
            self.problem("select.versions", "must name at least one version or marker")
        for i, v in enumerate(versions):
            if not (is_version(v) or is_marker(v)):
                self.problem(
                    f"select.versions[{i}]",
                    f"{v!r} is neither a version like v1.34.2 nor a marker like stable-1.34",
                )
        platforms = self._strings(t, "select.platforms", d.platforms)
        if not platforms:
            self.problem("select.platforms", "must name at least one os/arch, or '*'")
        for i, p in enumerate(platforms):
            if (why := platform_problem(p)) is not None:
                self.problem(f"select.platforms[{i}]", why)
        components = self._strings(t, "select.components", d.components)
        for i, c in enumerate(components):
            if not valid_component_name(c):
                self.problem(f"select.components[{i}]", f"{c!r} is not a file or component name")
        return SelectConfig(
            versions=tuple(dict.fromkeys(versions)),
            platforms=tuple(dict.fromkeys(platforms)),
            components=tuple(dict.fromkeys(components)),
        )

    def _verify(self, raw: Mapping[str, Any]) -> VerifyConfig:
        d = VerifyConfig()
        t = self.section(raw, "verify", set(VerifyConfig.__dataclass_fields__))
        trusted_root = self._str(t, "verify.trusted_root", d.trusted_root)
        if trusted_root != "production":
            trusted_root = str(self._path(trusted_root))
        unsigned = self._str(t, "verify.unsigned_releases", d.unsigned_releases)
        if unsigned not in UNSIGNED_POLICIES:
            self.problem(
                "verify.unsigned_releases", f"must be one of {', '.join(UNSIGNED_POLICIES)}"
            )
            unsigned = d.unsigned_releases
        binding = self._str(t, "verify.release_binding", d.release_binding)
        if binding not in BINDING_MODES:
            self.problem("verify.release_binding", f"must be one of {', '.join(BINDING_MODES)}")
            binding = d.release_binding
        return VerifyConfig(
            rekor_url=(
                "" if t.get("rekor_url") == "" else self._url(t, "verify.rekor_url", d.rekor_url)
            ),
            trusted_root=trusted_root,
            identities=self._identities(t, d.identities),
            unsigned_releases=unsigned,
            release_binding=binding,
            unbound_allowed=self._patterns(t),
        )

    def _patterns(self, table: Mapping[str, Any]) -> tuple[str, ...]:
        patterns = self._strings(table, "verify.unbound_allowed", ())
        for i, pattern in enumerate(patterns):
            if not pattern or pattern.startswith("/") or ".." in pattern.split("/"):
                self.problem(
                    f"verify.unbound_allowed[{i}]",
                    f"{pattern!r} must be a glob relative to a release directory, like "
                    "'provenance.json' or 'bin/*/*/extra-*'",
                )
        return tuple(patterns)

    def _identities(
        self, table: Mapping[str, Any], default: tuple[IdentityConfig, ...]
    ) -> tuple[IdentityConfig, ...]:
        value = table.get("identities")
        if value is None:
            return default
        if not isinstance(value, list) or not value:
            self.problem("verify.identities", "must be a non-empty array of tables")
            return default
        identities = []
        for i, item in enumerate(value):
            key = f"verify.identities[{i}]"
            if not isinstance(item, dict):
                self.problem(key, "must be a table with identity and issuer")
                continue
            for extra in sorted(set(item) - {"identity", "issuer"}):
                self.problem(f"{key}.{extra}", "unknown key")
            identity = item.get("identity")
            issuer = item.get("issuer")
            if not isinstance(identity, str) or not identity:
                self.problem(f"{key}.identity", "must be a non-empty string")
                continue
            if not isinstance(issuer, str) or not issuer.startswith("https://"):
                self.problem(f"{key}.issuer", "must be an https:// OIDC issuer URL")
                continue
            identities.append(IdentityConfig(identity, issuer))
        return tuple(identities) or default

    def _report(self, raw: Mapping[str, Any]) -> ReportConfig:
        d = ReportConfig()
        t = self.section(raw, "report", set(ReportConfig.__dataclass_fields__))
        metrics = t.get("metrics_file")
        metrics_path = None
        if metrics is not None:
            metrics_path = self._path(self._str(t, "report.metrics_file", ""))
        return ReportConfig(
            metrics_file=metrics_path,
            keep_reports=self._int(t, "report.keep_reports", d.keep_reports, 1, 100000),
        )

    def _publish_targets(self, raw: Mapping[str, Any]) -> tuple[PublishConfig, ...]:
        value = raw.get("publish", [])
        if not isinstance(value, list):
            self.problem("publish", "must be an array of tables ([[publish]])")
            return ()
        targets = []
        for i, item in enumerate(value):
            key = f"publish[{i}]"
            if not isinstance(item, dict):
                self.problem(key, "must be a table with at least 'to'")
                continue
            if (target := self._publish(item, key)) is not None:
                targets.append(target)
        seen: set[str] = set()
        for i, target in enumerate(targets):
            if target.to in seen:
                self.problem(f"publish[{i}].to", f"{target.to} is listed twice")
            seen.add(target.to)
        return tuple(targets)

    def _publish(self, t: Mapping[str, Any], key: str) -> PublishConfig | None:
        for extra in sorted(set(t) - set(PublishConfig.__dataclass_fields__)):
            self.problem(f"{key}.{extra}", "unknown key")
        to = t.get("to")
        if not isinstance(to, str) or not to:
            self.problem(f"{key}.to", "must be an s3://BUCKET/PREFIX URL")
            return None
        if (why := target_problem(to)) is not None:
            self.problem(f"{key}.to", why)
            return None
        d = PublishConfig(to=to)
        checksum = self._str(t, f"{key}.checksum", d.checksum)
        if checksum not in CHECKSUM_MODES:
            self.problem(f"{key}.checksum", f"must be one of {', '.join(CHECKSUM_MODES)}")
            checksum = d.checksum
        return PublishConfig(
            to=to,
            endpoint_url=(self._url(t, f"{key}.endpoint_url", "") or None)
            if "endpoint_url" in t
            else None,
            region=(self._str(t, f"{key}.region", "") or None) if "region" in t else None,
            path_style=self._bool(t, f"{key}.path_style", d.path_style),
            profile=(self._str(t, f"{key}.profile", "") or None) if "profile" in t else None,
            prune=self._bool(t, f"{key}.prune", d.prune),
            concurrency=self._int(t, f"{key}.concurrency", d.concurrency, 1, 64),
            # S3 refuses multipart parts under 5 MiB (but the last) and over 5 GiB.
            part_size_bytes=self._int(
                t, f"{key}.part_size_bytes", d.part_size_bytes, 5 * MIB, 5 * 1024 * MIB
            ),
            checksum=checksum,
            retries=self._int(t, f"{key}.retries", d.retries, 0, 50),
            backoff_base_s=self._float(t, f"{key}.backoff_base_s", d.backoff_base_s, 0, 60),
            backoff_max_s=self._float(t, f"{key}.backoff_max_s", d.backoff_max_s, 0, 3600),
            connect_timeout_s=self._float(
                t, f"{key}.connect_timeout_s", d.connect_timeout_s, 0.1, 600
            ),
            read_timeout_s=self._float(t, f"{key}.read_timeout_s", d.read_timeout_s, 0.1, 3600),
        )
