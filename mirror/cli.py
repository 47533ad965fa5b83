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
from mirror.config import Config, load_config
from mirror.errors import EXIT_INTERRUPTED, ConfigError, MirrorError, TreeVerifyError
from mirror.progress import BarProgress, LogProgress, setup_logging
from mirror.report import RunReport, read_status
from mirror.store import Store

log = logging.getLogger("mirror.cli")
T = TypeVar("T")


def fail(exc: MirrorError) -> NoReturn:
    click.echo(f"k8s-mirror: error: {exc}", err=True)
    if exc.hint:
        click.echo(f"k8s-mirror: hint: {exc.hint}", err=True)
    sys.exit(exc.exit_code)


def run_async(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine; SIGTERM and Ctrl-C cancel it cleanly (partials stay for resume)."""

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
        click.echo("k8s-mirror: interrupted; the next run resumes", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except MirrorError as exc:
        fail(exc)


def logging_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("-v", "--verbose", count=True, help="More log output.")(func)
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


def load(config_path: Path | None, **flags: Any) -> Config:
    try:
        return load_config(config_path, build_overrides(**flags))
    except ConfigError as exc:
        fail(exc)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="k8s-mirror")
def main() -> None:
    """Mirror Kubernetes releases from dl.k8s.io into a verified local tree."""


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
@click.option(
    "--wait",
    "wait_s",
    type=click.FloatRange(min=0),
    default=0,
    help="Wait up to SECONDS for another run's lock instead of exiting at once.",
)
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
            lambda: SyncRun(config, dry_run=dry_run, progress=reporter, lock_wait_s=wait_s).run()
        )
    finally:
        reporter.close()
    if dry_run:
        print_plan(report)
    else:
        print_summary(report, quiet=quiet)
    sys.exit(report.exit_code or 0)


def print_plan(report: RunReport) -> None:
    for marker, version in sorted(report.markers.items()):
        click.echo(f"marker {marker} -> {version}")
    for version, info in sorted(report.versions.items()):
        state = "in tree" if info.get("in_tree") else "new"
        click.echo(
            f"release/{version} ({state}): {info['files']} selected, {info['present']} present "
            f"({info['present_bytes']} bytes), {info['staged']} staged, "
            f"{len(info['to_fetch'])} to fetch ({info['fetch_bytes']} bytes)"
        )
        for path in info["to_fetch"]:
            click.echo(f"  fetch {path}")
    for path in report.pruned:
        click.echo(f"prune {path}")
    for failure in report.failures:
        click.echo(f"cannot plan {failure.path}: {failure.reason}", err=True)


def print_summary(report: RunReport, *, quiet: bool) -> None:
    line = (
        f"{report.outcome}: fetched {report.files_fetched} files ({report.bytes_fetched} bytes), "
        f"reused {report.files_reused}, present {report.files_present}, "
        f"failed {report.files_failed} in {report.duration_s:.1f}s"
    )
    if report.exit_code:
        for failure in report.failures:
            click.echo(f"k8s-mirror: failed: {failure.path}: {failure.reason}", err=True)
        click.echo(f"k8s-mirror: error: {line}", err=True)
    elif not quiet:
        click.echo(line)


@main.command()
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Read tree.root from this config (when --root is not given).",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(root: Path | None, config_path: Path | None, as_json: bool) -> None:
    """Summarise the tree and the last runs."""
    if root is None:
        root = load(config_path or Path("mirror.toml")).tree.root
    store = Store(root)
    state = read_status(store)
    releases = {}
    for version in store.versions_in_tree():
        manifest = store.load_manifest(version)
        releases[version] = {
            "files": len(manifest.files),
            "bytes": sum(r.size for r in manifest.files.values()),
            "signed": sum(1 for r in manifest.files.values() if r.check == "sigstore"),
        }
    markers = (
        {
            p.stem: p.read_text().strip()
            for p in sorted((root / "release").glob("*.txt"))
            if p.is_file()
        }
        if (root / "release").is_dir()
        else {}
    )
    data = {"root": str(root), "releases": releases, "markers": markers, "status": state}
    if as_json:
        click.echo(json.dumps(data, indent=1))
        return
    click.echo(f"tree: {root}")
    for version, info in releases.items():
        click.echo(
            f"  release/{version}: {info['files']} files, {info['bytes']} bytes, "
            f"{info['signed']} signature-verified"
        )
    for marker, version in markers.items():
        click.echo(f"  marker {marker} -> {version}")
    last = state.get("last_run")
    if last:
        click.echo(f"last run: {last['finished_at']} {last['outcome']} (exit {last['exit_code']})")
    success = state.get("last_success")
    click.echo(f"last success: {success['finished_at'] if success else 'never'}")


@main.command()
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=None)
@click.option(
    "-c",
    "--config",
    "config_path",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="Take tree.root and verify.identities from this config.",
)
@click.option(
    "--release", "releases", multiple=True, help="Only this release (repeatable), e.g. v1.34.2."
)
@click.option(
    "--trusted-root",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Verify bundles against this trusted_root.json instead of the tree's own.",
)
@click.option("--resume", is_flag=True, help="Skip releases an interrupted audit already passed.")
@logging_options
def verify(
    root: Path | None,
    config_path: Path | None,
    releases: tuple[str, ...],
    trusted_root: Path | None,
    resume: bool,
    verbose: int,
    quiet: bool,
    log_format: str,
) -> None:
    """Re-verify the tree offline: digests, sidecars, SUMS, bundles, markers."""
    from mirror.audit import TreeAudit

    setup_logging(verbose=verbose, quiet=quiet, fmt=log_format)
    default_config = Path("mirror.toml")
    if config_path is None and root is None and default_config.is_file():
        config_path = default_config
    config = load(config_path)
    audit = TreeAudit(
        root or config.tree.root,
        config.verify.identities,
        trusted_root=trusted_root,
        releases=releases,
        resume=resume,
        on_release=lambda v, n: log.info("release/%s: %s", v, "ok" if not n else f"{n} problems"),
    )
    try:
        result = audit.run()
    except MirrorError as exc:
        fail(exc)
    for problem in result.problems:
        click.echo(str(problem))
    summary = (
        f"{len(result.releases)} releases, {result.files_checked} files, "
        f"{result.signatures_checked} signatures checked"
        + (f", {len(result.skipped)} skipped (resume)" if result.skipped else "")
    )
    if result.problems:
        fail(TreeVerifyError(f"{len(result.problems)} problems found; {summary}"))
    if not quiet:
        click.echo(f"ok: {summary}")


@main.command()
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True)
@click.option("--index/--no-index", default=False, help="Simple directory index pages.")
@logging_options
def serve(
    root: Path, host: str, port: int, index: bool, verbose: int, quiet: bool, log_format: str
) -> None:
    """Serve the tree read-only over HTTP (GET/HEAD, Range, ETag)."""
    from mirror.serve import serve as serve_tree

    setup_logging(verbose=verbose, quiet=quiet, fmt=log_format)
    try:
        serve_tree(root, host=host, port=port, index_pages=index)
    except ValueError as exc:
        fail(ConfigError(str(exc), source="--root"))


if __name__ == "__main__":  # pragma: no cover
    main()
