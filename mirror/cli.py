"""The ``k8s-mirror`` command line: click commands, logging and progress set-up, exit codes.

The only module that catches ``MirrorError``: each error becomes one line on stderr
(``k8s-mirror: error: ...``, plus a hint when there is one) and its documented exit code.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from mirror import __version__
from mirror.check import BindingPolicy
from mirror.config import Config, VerifyConfig, load_config
from mirror.errors import (
    EXIT_INTERRUPTED,
    ConfigError,
    MirrorError,
    TreeVerifyError,
    UpstreamError,
)
from mirror.layout import STATE_DIR_NAME
from mirror.progress import BarProgress, LogProgress, pipe_safe_stdout, setup_logging
from mirror.report import RunReport, read_status
from mirror.store import Store

log = logging.getLogger("mirror.cli")
T = TypeVar("T")


def fail(exc: MirrorError) -> NoReturn:
    click.echo(f"k8s-mirror: error: {exc}", err=True)
    if exc.hint:
        click.echo(f"k8s-mirror: hint: {exc.hint}", err=True)
    sys.exit(exc.exit_code)


def run_async(
    make: Callable[[], Coroutine[Any, Any, T]],
    *,
    before_message: Callable[[], None] | None = None,
    overrides: dict[str, Any] | None = None,
) -> T:
    """Run a coroutine; SIGTERM and Ctrl-C cancel it cleanly (partials stay for resume).

    ``before_message`` (taking progress bars down) runs before an interruption or error is
    printed, so that the message is the last thing on the terminal; with ``overrides``, a
    config error about a key that came from a flag names the flag."""

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        return await make()

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        if before_message is not None:
            before_message()
        click.echo("k8s-mirror: interrupted; the next run resumes", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except MirrorError as exc:
        if before_message is not None:
            before_message()
        if isinstance(exc, ConfigError) and overrides:
            exc = name_flags(exc, overrides)
        fail(exc)


def wait_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--wait SECONDS``: how long to wait for a tree's lock (0: exit 3 at once)."""
    return click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=0, help=help_text)


def logging_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "-v", "--verbose", count=True, help="Debug lines; -vv also libraries' warnings."
    )(func)
    func = click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")(func)
    func = click.option(
        "--log-format",
        type=click.Choice(["text", "json"]),
        default="text",
        show_default=True,
        help="Log line format (json: one object per line).",
    )(func)
    return func


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Flags that override mirror.toml for one run."""
    options = [
        click.option("--root", type=click.Path(path_type=Path), help="Tree root (tree.root)."),
        click.option(
            "--version", "versions", multiple=True, help="Version or marker (select.versions)."
        ),
        click.option(
            "--platform", "platforms", multiple=True, help="os/arch or '*' (select.platforms)."
        ),
        click.option(
            "--component", "components", multiple=True, help="Component (select.components)."
        ),
        click.option("--concurrency", type=int, help="Parallel requests (upstream.concurrency)."),
        click.option("--upstream-url", help="Upstream base URL (upstream.url)."),
        click.option("--rekor-url", help="Rekor base URL (verify.rekor_url)."),
        click.option("--trusted-root", help="'production' or a trusted_root.json path."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_overrides(**flags: Any) -> dict[str, Any]:
    mapping = {
        "root": "tree.root",
        "versions": "select.versions",
        "platforms": "select.platforms",
        "components": "select.components",
        "concurrency": "upstream.concurrency",
        "upstream_url": "upstream.url",
        "rekor_url": "verify.rekor_url",
        "trusted_root": "verify.trusted_root",
    }
    overrides: dict[str, Any] = {}
    for flag, key in mapping.items():
        value = flags.get(flag)
        if value is None or value == ():
            continue
        if isinstance(value, tuple):
            value = list(value)
        elif isinstance(value, Path):
            value = str(value.absolute())
        overrides[key] = value
    return overrides


FLAG_OF_KEY = {
    "tree.root": "--root",
    "select.versions": "--version",
    "select.platforms": "--platform",
    "select.components": "--component",
    "upstream.concurrency": "--concurrency",
    "upstream.url": "--upstream-url",
    "verify.rekor_url": "--rekor-url",
    "verify.trusted_root": "--trusted-root",
}


def name_flags(
    error: ConfigError, overrides: dict[str, Any], flag_of_key: dict[str, str] | None = None
) -> ConfigError:
    """``error`` with each problem about a key that came from a flag named as typed
    (``--platform linux-amd64 (select.platforms[0]): ...``), not as a key of a config file it
    is not in."""
    flags = {**FLAG_OF_KEY, **(flag_of_key or {})}
    problems = []
    for problem in error.problems:
        key, _, message = problem.partition(": ")
        base, _, index = key.partition("[")
        if base not in overrides or base not in flags:
            problems.append(problem)
            continue
        value = overrides[base]
        # The key stays in brackets: it is what mirror.toml would call the same setting.
        if index and isinstance(value, list):
            typed = f"{flags[base]} {value[int(index.rstrip(']'))]}"
        elif isinstance(value, list):
            typed = flags[base]  # the message quotes the value
        else:
            typed = f"{flags[base]} {value}"
        problems.append(f"{typed} ({key}): {message}")
    if problems == error.problems:
        return error
    named = ConfigError(problems, source="command line")
    named.hint = error.hint
    return named


def check_flags(overrides: dict[str, Any], flag_of_key: dict[str, str] | None = None) -> None:
    """Validate the flags on their own first, so that a bad one is reported by its name."""
    try:
        load_config(None, overrides)
    except ConfigError as exc:
        raise name_flags(exc, overrides, flag_of_key) from None


def load(config_path: Path | None, **flags: Any) -> Config:
    overrides = build_overrides(**flags)
    try:
        check_flags(overrides)
        return load_config(config_path, overrides)
    except ConfigError as exc:
        fail(exc)


def binding_policy(verify: VerifyConfig) -> BindingPolicy:
    return BindingPolicy(verify.release_binding, verify.unbound_allowed)


def tree_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--root`` and ``--config`` of the commands that read an existing tree."""
    func = click.option(
        "-c",
        "--config",
        "config_path",
        type=click.Path(path_type=Path, dir_okay=False),
        default=None,
        help="Take tree.root (unless --root) and verify.identities from this config "
        "(default: ./mirror.toml if it exists).",
    )(func)
    return click.option(
        "--root",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help="The mirror tree (default: tree.root of the config).",
    )(func)


def tree_config(root: Path | None, config_path: Path | None) -> Config:
    """The config a tree command uses: the one given, else ./mirror.toml when no --root
    says where the tree is, else the defaults."""
    default = Path("mirror.toml")
    if config_path is None and root is None and default.is_file():
        config_path = default
    return load(config_path)


def s3_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """How to reach an S3-compatible store (credentials come from the AWS chain only)."""
    options = [
        click.option(
            "--endpoint-url", help="S3 endpoint, e.g. http://127.0.0.1:8333 (default: AWS)."
        ),
        click.option("--region", help="Region (default: from the AWS config chain)."),
        click.option(
            "--path-style", is_flag=True, default=None, help="Path-style bucket addressing."
        ),
        click.option("--profile", help="AWS profile from the shared config files."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def publish_settings(config: Config, to: str | None, flags: dict[str, Any]) -> list[Any]:
    """The targets of a command: ``--to`` (with the settings of the [[publish]] entry of the
    same URL, if any) or every configured one; flags override either."""
    from dataclasses import replace

    from mirror.config import PublishConfig
    from mirror.publish.target import target_problem

    if to is not None:
        if (why := target_problem(to)) is not None:
            fail(ConfigError(why, source="--to"))
        known = {t.to.rstrip("/"): t for t in config.publish}
        targets = [known.get(to.rstrip("/"), PublishConfig(to=to))]
    else:
        targets = list(config.publish)
    overrides = {k: v for k, v in flags.items() if v is not None}
    if "endpoint_url" in overrides:
        url = overrides["endpoint_url"]
        if not str(url).startswith(("http://", "https://")):
            fail(ConfigError(f"{url!r} is not an http(s) URL", source="--endpoint-url"))
    return [replace(t, **overrides) for t in targets]


def _part_size_bytes(text: str) -> int:
    import re

    match = re.fullmatch(r"(\d+)([KMG]?)", text.strip().upper())
    size = int(match[1]) << (10 * " KMG".index(match[2] or " ")) if match else 0
    if not 5 * 1024**2 <= size <= 5 * 1024**3:
        fail(ConfigError(f"{text!r} is not a size from 5M to 5G", source="--part-size"))
    return size


def verify_remote_command(
    root: Path, config: Config, remote: str, deep: bool, quiet: bool, flags: dict[str, Any]
) -> None:
    from mirror.publish.audit import verify_remote

    (settings,) = publish_settings(config, remote, flags)
    audit = run_async(lambda: verify_remote(root, settings, deep=deep))
    for problem in audit.problems:
        click.echo(problem)
    how = "re-hashed" if deep else "checked by size and stored digest"
    summary = f"{audit.target}: {audit.objects_checked} objects {how}"
    if audit.problems:
        fail(TreeVerifyError(f"{len(audit.problems)} problems found; {summary}"))
    if not quiet:
        click.echo(f"ok: {summary}")


def run_publish(
    root: Path,
    config: Config,
    targets: list[Any],
    *,
    repair: bool = False,
    prune: bool = False,
    lock_wait_s: float = 0.0,
    quiet: bool = False,
) -> None:
    """Publish to each target in turn; the first failure ends the command with its code."""
    from mirror.publish.run import publish

    for settings in targets:
        result = run_async(
            lambda s=settings: publish(  # type: ignore[misc]
                root, s, repair=repair, prune=prune, guard=config.tree, lock_wait_s=lock_wait_s
            )
        )
        if quiet:
            continue
        parts = [
            f"published {result.target}: uploaded {result.files_uploaded} files "
            f"({result.bytes_uploaded} bytes), {result.files_unchanged} unchanged, "
            f"{result.files_reused} already there"
        ]
        if result.repaired:
            parts.append(f"repaired {len(result.repaired)}")
        if result.releases_committed:
            parts.append(f"committed {', '.join(result.releases_committed)}")
        if result.markers_written:
            parts.append(
                "markers " + ", ".join(f"{m} -> {v}" for m, v in result.markers_written.items())
            )
        if result.pruned is not None:
            parts.append(f"pruned {result.pruned.deleted} objects")
        click.echo("; ".join(parts) + f" ({result.duration_s:.1f}s)")


def require_tree(root: Path, source: str) -> None:
    """``status`` and ``verify`` read an existing tree: a path that is none is a usage error
    (exit 2), not an empty tree ("last success: never") or an unwritable one."""
    if not root.exists():
        problem = f"{root}: does not exist"
    elif not (root / "release").is_dir() and not (root / STATE_DIR_NAME).is_dir():
        problem = f"{root}: not a k8s-mirror tree (no release/ or {STATE_DIR_NAME}/ in it)"
    else:
        return
    error = ConfigError(problem, source=source)
    error.hint = "give a mirror tree's root with --root, or its mirror.toml with --config"
    fail(error)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="k8s-mirror")
def main() -> None:
    """Mirror Kubernetes releases from dl.k8s.io into a verified local tree."""
    pipe_safe_stdout()


@main.command()
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default="mirror.toml",
    show_default=True,
    envvar="K8S_MIRROR_CONFIG",
    help="mirror.toml to use.",
)
@config_options
@click.option("--dry-run", is_flag=True, help="Show the plan; download and change nothing.")
@wait_option("Wait up to SECONDS for another run's lock instead of exiting at once.")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars (default: only when stderr is a terminal).",
)
@logging_options
def sync(
    config_path: Path,
    dry_run: bool,
    wait_s: float,
    progress: bool | None,
    verbose: int,
    quiet: bool,
    log_format: str,
    **flags: Any,
) -> None:
    """Make the tree match the config: fetch, verify, promote, move markers."""
    from mirror.sync import SyncRun

    setup_logging(verbose=verbose, quiet=quiet, fmt=log_format)
    config = load(config_path, **flags)
    show_bars = sys.stderr.isatty() if progress is None else progress
    reporter = BarProgress() if show_bars and not quiet and not dry_run else LogProgress()
    try:
        report = run_async(
            lambda: SyncRun(config, dry_run=dry_run, progress=reporter, lock_wait_s=wait_s).run(),
            before_message=reporter.close,
            overrides=build_overrides(**flags),
        )
    finally:
        reporter.close()
    if dry_run:
        print_plan(report)
    else:
        print_summary(report, quiet=quiet)
    if not dry_run and report.exit_code == 0 and config.publish:
        # Only a fully successful run is published; a failed one leaves the bucket as it was.
        run_publish(config.tree.root, config, list(config.publish), lock_wait_s=wait_s, quiet=quiet)
    sys.exit(report.exit_code or 0)


def plural(count: int, word: str) -> str:
    """``1 file``, ``2 files``: every count a user reads goes through here."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def human_size(size_bytes: int) -> str:
    """``1.5 MiB``: sizes for people (reports and --log-format json keep exact bytes)."""
    if size_bytes < 1024:
        return f"{size_bytes} B"
    size = size_bytes / 1024
    for unit in ("KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            break
        size /= 1024
    return f"{size:.1f} {unit}"


def print_plan(report: RunReport) -> None:
    for marker, version in sorted(report.markers.items()):
        click.echo(f"marker {marker} -> {version}")
    for version, info in sorted(report.versions.items()):
        state = "in tree" if info.get("in_tree") else "new"
        click.echo(
            f"release/{version} ({state}): {info['files']} selected, "
            f"{info['present']} present ({human_size(info['present_bytes'])}), "
            f"{info['staged']} staged, {len(info['to_fetch'])} to fetch "
            f"({info['fetch_bytes']} bytes), {human_size(info['fetch_bytes'])} to download"
        )
        for path in info["to_fetch"]:
            click.echo(f"  fetch {path}")
    for path in report.pruned:
        click.echo(f"prune {path}")
    for failure in report.failures:
        click.echo(f"cannot plan {failure.path}: {failure.reason}", err=True)
    if report.exit_code:
        click.echo(f"k8s-mirror: error: {report.error}", err=True)


def unreachable_hint(report: RunReport) -> str:
    """What to do when upstream could not be reached at all (exit 4)."""
    from mirror.upstream import TLSCertificateError

    if any("TLS certificate not trusted" in f.reason for f in report.failures):
        return str(TLSCertificateError.hint)
    return (
        "check the network and the proxy settings (HTTPS_PROXY/NO_PROXY or upstream.proxy), "
        "or point --upstream-url / upstream.url at a reachable mirror"
    )


def print_summary(report: RunReport, *, quiet: bool) -> None:
    line = (
        f"{report.outcome}: fetched {plural(report.files_fetched, 'file')} "
        f"({human_size(report.bytes_fetched)}), "
        f"reused {report.files_reused}, present {report.files_present}, "
        f"failed {report.files_failed} in {report.duration_s:.1f}s"
    )
    if report.exit_code:
        # Each failure was already logged once as it happened; this is the verdict.
        click.echo(f"k8s-mirror: error: {line}", err=True)
        if report.exit_code == UpstreamError.exit_code:
            click.echo(f"k8s-mirror: hint: {unreachable_hint(report)}", err=True)
    elif not quiet:
        click.echo(line)


@main.command()
@tree_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(root: Path | None, config_path: Path | None, as_json: bool) -> None:
    """Summarise the tree and the last runs."""
    source = "--root" if root is not None else "tree.root"
    root = root or tree_config(root, config_path).tree.root
    require_tree(root, source)
    store = Store(root)
    state = read_status(store)
    releases: dict[str, dict[str, Any]] = {}
    for version in store.versions_in_tree():
        try:
            manifest = store.load_manifest(version)
        except MirrorError as exc:
            fail(exc)
        releases[version] = {
            "files": len(manifest.files),
            "bytes": sum(r.size for r in manifest.files.values()),
            "signed": sum(1 for r in manifest.files.values() if r.check == "sigstore"),
            "binding": manifest.binding_summary(),
        }
    markers = store.markers()
    data = {"root": str(root), "releases": releases, "markers": markers, "status": state}
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    click.echo(f"tree: {root}")
    for version, info in releases.items():
        click.echo(
            f"  release/{version}: {plural(info['files'], 'file')}, {human_size(info['bytes'])}, "
            f"{info['signed']} signature-verified, binding: {info['binding']}"
        )
    for marker, version in markers.items():
        click.echo(f"  marker {marker} -> {version}")
    last = state.get("last_run")
    if last:
        click.echo(f"last run: {last['finished_at']} {last['outcome']} (exit {last['exit_code']})")
    success = state.get("last_success")
    click.echo(f"last success: {success['finished_at'] if success else 'never'}")


@main.command()
@tree_options
@click.option(
    "--release", "releases", multiple=True, help="Only this release (repeatable), e.g. v1.34.2."
)
@click.option(
    "--trusted-root",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Verify bundles against this trusted_root.json instead of the tree's own.",
)
@click.option("--resume", is_flag=True, help="Skip releases an interrupted audit already passed.")
@click.option(
    "--remote",
    metavar="s3://BUCKET/PREFIX",
    help="Instead, check that this bucket holds exactly the tree: missing, extra, differing.",
)
@click.option("--deep", is_flag=True, help="With --remote: read back and re-hash every object.")
@s3_options
@logging_options
def verify(
    root: Path | None,
    config_path: Path | None,
    releases: tuple[str, ...],
    trusted_root: Path | None,
    resume: bool,
    remote: str | None,
    deep: bool,
    verbose: int,
    quiet: bool,
    log_format: str,
    **s3_flags: Any,
) -> None:
    """Re-verify the tree offline: digests, sidecars, SUMS, bundles, markers.

    With --remote, compare a published bucket with the tree instead (size and stored digest
    of every object; --deep re-reads them)."""
    from mirror.audit import TreeAudit

    setup_logging(verbose=verbose, quiet=quiet, fmt=log_format)
    config = tree_config(root, config_path)
    if remote is not None:
        verify_remote_command(root or config.tree.root, config, remote, deep, quiet, s3_flags)
        return
    if deep or any(v not in (None, False) for v in s3_flags.values()):
        raise click.UsageError(
            "--deep, --endpoint-url, --region, --path-style and --profile need --remote"
        )
    require_tree(root or config.tree.root, "--root" if root is not None else "tree.root")
    audit = TreeAudit(
        root or config.tree.root,
        config.verify.identities,
        trusted_root=trusted_root,
        releases=releases,
        resume=resume,
        on_release=lambda v, n: log.info(
            "release/%s: %s", v, "ok" if not n else plural(n, "problem")
        ),
        binding=binding_policy(config.verify),
    )
    try:
        result = audit.run()
    except MirrorError as exc:
        fail(exc)
    for problem in result.problems:
        click.echo(str(problem))
    summary = (
        # "N releases" even for one: a phrase scripts and tests already match.
        f"{len(result.releases)} releases, {plural(result.files_checked, 'file')}, "
        f"{plural(result.signatures_checked, 'signature')} checked"
        + (f", {len(result.skipped)} skipped (resume)" if result.skipped else "")
    )
    for warning in result.warnings:
        log.warning("%s", warning)
    if result.problems:
        fail(TreeVerifyError(f"problems found: {len(result.problems)}; {summary}"))
    if not quiet:
        click.echo(f"ok: {summary}")


@main.command("publish")
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="The verified tree to publish (default: tree.root of the config).",
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Take tree.root (unless --root), the [[publish]] targets and the prune guard from "
    "this config (default: ./mirror.toml if it exists).",
)
@click.option(
    "--to",
    metavar="s3://BUCKET/PREFIX",
    help="Target (default: every [[publish]] target of the config).",
)
@s3_options
@click.option("--repair", is_flag=True, help="Re-check every object; replace any that differs.")
@click.option(
    "--prune", is_flag=True, help="Also delete what the tree no longer has (mass-delete guard)."
)
@click.option("--concurrency", type=click.IntRange(1, 64), help="Parallel uploads.")
@click.option(
    "--part-size",
    help="Multipart part size (K, M, G are powers of 1024; 5M to 5G; default 16M).",
)
@wait_option("Wait up to SECONDS for the tree's lock.")
@logging_options
def publish_command(
    root: Path | None,
    config_path: Path | None,
    to: str | None,
    repair: bool,
    prune: bool,
    concurrency: int | None,
    part_size: str | None,
    wait_s: float,
    verbose: int,
    quiet: bool,
    log_format: str,
    **s3_flags: Any,
) -> None:
    """Upload the verified tree to S3-compatible object storage (markers last)."""
    setup_logging(verbose=verbose, quiet=quiet, fmt=log_format)
    config = tree_config(root, config_path)
    flags = dict(s3_flags, concurrency=concurrency)
    if part_size is not None:
        flags["part_size_bytes"] = _part_size_bytes(part_size)
    targets = publish_settings(config, to, flags)
    if not targets:
        fail(
            ConfigError("give --to s3://BUCKET/PREFIX or add a [[publish]] table", source="publish")
        )
    run_publish(
        root or config.tree.root,
        config,
        targets,
        repair=repair,
        prune=prune,
        lock_wait_s=wait_s,
        quiet=quiet,
    )


@main.command()
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The mirror tree to serve (its tree.root).",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port to listen on (0: any free port; the log names it).",
)
@click.option(
    "--prefix",
    default="",
    metavar="PATH",
    help="Serve the tree below this URL path only, e.g. /dl.k8s.io for kubespray's files_repo.",
)
@click.option("--index/--no-index", default=False, help="Simple directory index pages.")
@logging_options
def serve(
    root: Path,
    host: str,
    port: int,
    prefix: str,
    index: bool,
    verbose: int,
    quiet: bool,
    log_format: str,
) -> None:
    """Serve the tree read-only over HTTP (GET/HEAD, Range, ETag)."""
    from mirror.serve import parse_prefix
    from mirror.serve import serve as serve_tree

    setup_logging(verbose=verbose, quiet=quiet, fmt=log_format)
    if prefix:
        try:
            parse_prefix(prefix)
        except ValueError as exc:
            fail(ConfigError(str(exc), source="--prefix"))
    try:
        serve_tree(root, host=host, port=port, index_pages=index, prefix=prefix)
    except ValueError as exc:
        fail(ConfigError(str(exc), source="--root"))
    except MirrorError as exc:
        fail(exc)


@main.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(path_type=Path, file_okay=False),
    default="k8s-mirror-demo",
    show_default=True,
    help="Directory for everything the demo writes (new, empty, or an earlier demo's).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65534),
    default=0,
    help="Port of the dl.k8s.io look-alike; the Rekor look-alike takes the next one "
    "(default: any free ports).",
)
@click.option(
    "--keep-serving", is_flag=True, help="Keep the look-alikes up afterwards, until Ctrl-C."
)
def demo(directory: Path, port: int, keep_serving: bool) -> None:
    """LOCAL DEMONSTRATION with no network: sync a generated, signed release from look-alikes
    of dl.k8s.io and Rekor on 127.0.0.1, then verify it. Its throwaway trust root must never
    be used for real data."""
    from mirror.demo.runner import run_demo

    code = run_async(
        lambda: run_demo(directory, port=port, keep_serving=keep_serving, say=click.echo)
    )
    sys.exit(code)


# --- air-gap workflows (issue 5): fetch, export, import -------------------------------------


def _blocking(func: Callable[[], T]) -> T:
    """Run a blocking command step; SIGTERM unwinds like Ctrl-C so its cleanup runs."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        return func()
    except KeyboardInterrupt:
        click.echo("k8s-mirror: interrupted; run the command again to finish", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except MirrorError as exc:
        fail(exc)


def _fetch_config(
    config_path: Path | None,
    root: Path,
    versions: tuple[str, ...],
    platforms: tuple[str, ...],
    components: tuple[str, ...],
    all_components: bool,
    trusted_root: str | None,
    **flags: Any,
) -> Config:
    """Config of a one-off fetch: selection and tree from the command line, [upstream] and
    [verify] from ``config_path`` if given, defaults otherwise."""
    from dataclasses import replace

    from mirror.config import ReportConfig, SelectConfig, TreeConfig

    defaults = SelectConfig()
    overrides = build_overrides(**flags)
    if trusted_root is not None:
        overrides["verify.trusted_root"] = (
            trusted_root if trusted_root == "production" else str(Path(trusted_root).absolute())
        )
    overrides.update(
        {
            "tree.root": str(root.absolute()),
            "select.versions": list(versions),
            "select.platforms": list(platforms or defaults.platforms),
            "select.components": [] if all_components else list(components or defaults.components),
        }
    )
    try:
        check_flags(overrides, {"select.versions": "VERSION", "tree.root": "--output"})
        config = load_config(config_path, overrides)
    except ConfigError as exc:
        fail(exc)
    # Only [upstream] and [verify] of a config file apply: a one-off fetch never prunes and
    # leaves the standing mirror's metrics file alone.
    return replace(config, tree=TreeConfig(root=config.tree.root), report=ReportConfig())


@main.command("fetch")
@click.argument("versions", nargs=-1, required=True)
@click.option(
    "--platform", "platforms", multiple=True, help="os/arch, or '*' (repeatable; linux/amd64)."
)
@click.option(
    "--component",
    "components",
    multiple=True,
    help="Component or file name (repeatable; kubectl, kubeadm, kubelet).",
)
@click.option("--all-components", is_flag=True, help="Every file of the selected platforms.")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    help="Write a mirror tree into DIR (new, empty, or an earlier fetch's tree).",
)
@click.option(
    "--archive",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Write one archive FILE (.tar, .tar.gz, .tar.xz) instead of a tree.",
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Take [upstream] and [verify] from this mirror.toml.",
)
@click.option("--concurrency", type=int, help="Parallel requests (upstream.concurrency).")
@click.option("--upstream-url", help="Upstream base URL (upstream.url).")
@click.option("--rekor-url", help="Rekor base URL (verify.rekor_url).")
@click.option("--trusted-root", help="'production' or a trusted_root.json path.")
@wait_option("Wait up to SECONDS for the lock of the --output tree.")
@click.option("--progress/--no-progress", default=None, help="Progress bars (default: on a tty).")
@logging_options
def fetch_command(
    versions: tuple[str, ...],
    platforms: tuple[str, ...],
    components: tuple[str, ...],
    all_components: bool,
    output: Path | None,
    archive: Path | None,
    config_path: Path | None,
    trusted_root: str | None,
    wait_s: float,
    progress: bool | None,
    verbose: int,
    quiet: bool,
    log_format: str,
    **flags: Any,
) -> None:
    """One-off fetch of VERSIONS (e.g. v1.34.2, stable, stable-1.33) without a config file.

    Downloads and verifies exactly like sync. --output DIR leaves a mirror tree (with its
    .k8s-mirror state, so `verify --root DIR` works and a re-run resumes); --archive FILE
    leaves one archive, written only after everything verified (`import` it, or untar it into
    an empty directory).
    """
    from mirror.sync import SyncRun
    from mirror.transfer import archive_compression, temporary_tree, write_archive

    if (output is None) == (archive is None):
        raise click.UsageError("give exactly one of --output DIR or --archive FILE")
    if all_components and components:
        raise click.UsageError("--all-components and --component exclude each other")
    setup_logging(verbose=verbose, quiet=quiet, fmt=log_format)
    show_bars = sys.stderr.isatty() if progress is None else progress
    selection: dict[str, Any] = {
        "versions": versions,
        "platforms": platforms,
        "components": components,
        "all_components": all_components,
        "trusted_root": trusted_root,
        **flags,
    }

    def run_sync(config: Config) -> RunReport:
        reporter = BarProgress() if show_bars and not quiet else LogProgress()
        try:
            report = run_async(
                lambda: SyncRun(
                    config, progress=reporter, lock_wait_s=wait_s, command="fetch"
                ).run(),
                before_message=reporter.close,
                overrides={
                    key: list(value)
                    for key, value in (
                        ("select.platforms", platforms),
                        ("select.components", components),
                    )
                    if value
                },
            )
        finally:
            reporter.close()
        print_summary(report, quiet=quiet)
        return report

    if output is not None:
        if output.is_dir() and any(output.iterdir()) and not (output / ".k8s-mirror").is_dir():
            fail(ConfigError(f"{output}: not empty and not a k8s-mirror tree", source="--output"))
        report = run_sync(_fetch_config(config_path, output, **selection))
        sys.exit(report.exit_code or 0)

    assert archive is not None
    archive = archive.absolute()
    try:
        archive_compression(archive)
        # The private tree is removed on every way out (sys.exit included).
        with temporary_tree(archive) as work:
            tree = work / "tree"
            report = run_sync(_fetch_config(config_path, tree, **selection))
            if report.exit_code:
                # Nothing unverified may travel: a failed fetch leaves no archive at all.
                sys.exit(report.exit_code)
            result = _blocking(lambda: write_archive(tree, archive, work))
    except MirrorError as exc:
        fail(exc)
    if not quiet:
        click.echo(
            f"wrote {archive} ({human_size(result.stream_bytes)}): {plural(result.files, 'file')}, "
            f"{'release' if len(result.releases) == 1 else 'releases'} "
            f"{', '.join(result.releases) or 'none'}"
        )


def _echo_export(result: Any, quiet: bool) -> None:
    if quiet:
        return
    kind = "incremental transfer set" if result.incremental else "transfer set"
    click.echo(
        f"wrote {kind} {result.output}: {plural(len(result.parts), 'part')}, "
        f"{human_size(result.stream_bytes)}, {plural(result.files, 'file')}"
    )
    for version, (carried, required) in result.releases.items():
        needs = f", needs {required} already at the target" if required else ""
        click.echo(f"  release/{version}: {plural(carried, 'file')}{needs}")
    for marker, version in result.markers.items():
        click.echo(f"  marker {marker} -> {version}")


@main.command("export")
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The mirror tree to export from.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="New or empty directory for the set.",
)
@click.option(
    "--since",
    help="Only what changed since: an earlier set (its directory or toc.json, exact), a run "
    "report (.k8s-mirror/reports/*.json) or an ISO date/datetime (UTC unless given).",
)
@click.option(
    "--max-part-size",
    default="4G",
    show_default=True,
    help="Largest part file (K, M, G, T are powers of 1024).",
)
@click.option(
    "--release", "releases", multiple=True, help="Only this release (repeatable), e.g. v1.34.2."
)
@wait_option("Wait up to SECONDS for the tree's lock.")
@logging_options
def export_command(
    root: Path,
    output: Path,
    since: str | None,
    max_part_size: str,
    releases: tuple[str, ...],
    wait_s: float,
    verbose: int,
    quiet: bool,
    log_format: str,
) -> None:
    """Write a transfer set (parts + toc.json) of the tree, to carry across an air gap."""
    from mirror.transfer import export_set, parse_size

    setup_logging(verbose=verbose, quiet=quiet, fmt=log_format)
    result = _blocking(
        lambda: export_set(
            root,
            output,
            since=since,
            max_part_size=parse_size(max_part_size),
            releases=releases,
            lock_wait_s=wait_s,
        )
    )
    _echo_export(result, quiet)


@main.command("import")
@click.argument("source", type=click.Path(path_type=Path, exists=True))
@click.option(
    "--root",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="The mirror tree to import into (created if missing).",
)
@click.option(
    "--trusted-root",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Verify bundles against this trusted_root.json, which is then written into ROOT "
    "(default: ROOT's own; a first import into an empty tree accepts the set's only if it is "
    "the Sigstore public-good root, otherwise it stops and asks for this option).",
)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Take verify.identities and verify.unsigned_releases from this config.",
)
@click.option(
    "--allow-unsigned",
    is_flag=True,
    help="Accept releases published before signing began (checksums only).",
)
@wait_option("Wait up to SECONDS for the tree's lock.")
@logging_options
def import_command(
    source: Path,
    root: Path,
    trusted_root: Path | None,
    config_path: Path | None,
    allow_unsigned: bool,
    wait_s: float,
    verbose: int,
    quiet: bool,
    log_format: str,
) -> None:
    """Verify a transfer set (or a fetch --archive file) offline and promote it into ROOT."""
    from mirror.transfer import import_set

    setup_logging(verbose=verbose, quiet=quiet, fmt=log_format)
    verify_config = load(config_path).verify
    result = _blocking(
        lambda: import_set(
            root,
            source,
            identities=verify_config.identities,
            trusted_root=trusted_root,
            allow_unsigned=allow_unsigned or verify_config.unsigned_releases == "checksums-only",
            lock_wait_s=wait_s,
            binding=binding_policy(verify_config),
        )
    )
    if quiet:
        return
    if not result.changed:
        click.echo(f"nothing to import: {root} already has everything {source} carries")
        return
    parts = [
        f"imported {plural(result.files_imported, 'file')} ({human_size(result.bytes_imported)})"
    ]
    if result.new_releases:
        parts.append(f"new: {', '.join(result.new_releases)}")
    if result.updated_releases:
        parts.append(f"added to: {', '.join(result.updated_releases)}")
    if result.files_present:
        parts.append(f"{result.files_present} already present")
    if result.trust_root_written:
        parts.append("trust root written")
    click.echo("; ".join(parts))
    for marker, version in result.markers_moved.items():
        click.echo(f"  marker {marker} -> {version}")


if __name__ == "__main__":  # pragma: no cover
    main()
