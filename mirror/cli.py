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


def wait_option(help_text: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """``--wait SECONDS``: how long to wait for a tree's lock (0: exit 3 at once)."""
    return click.option("--wait", "wait_s", type=click.FloatRange(min=0), default=0, help=help_text)


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
    return click.option("--root", type=click.Path(path_type=Path, file_okay=False), default=None)(
        func
    )


def tree_config(root: Path | None, config_path: Path | None) -> Config:
    """The config a tree command uses: the one given, else ./mirror.toml when no --root
    says where the tree is, else the defaults."""
    default = Path("mirror.toml")
    if config_path is None and root is None and default.is_file():
        config_path = default
    return load(config_path)


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
    if report.exit_code:
        click.echo(f"k8s-mirror: error: {report.error}", err=True)


def print_summary(report: RunReport, *, quiet: bool) -> None:
    line = (
        f"{report.outcome}: fetched {report.files_fetched} files ({report.bytes_fetched} bytes), "
        f"reused {report.files_reused}, present {report.files_present}, "
        f"failed {report.files_failed} in {report.duration_s:.1f}s"
    )
    if report.exit_code:
        # Each failure was already logged once as it happened; this is the verdict.
        click.echo(f"k8s-mirror: error: {line}", err=True)
    elif not quiet:
        click.echo(line)


@main.command()
@tree_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(root: Path | None, config_path: Path | None, as_json: bool) -> None:
    """Summarise the tree and the last runs."""
    root = root or tree_config(root, config_path).tree.root
    store = Store(root)
    state = read_status(store)
    releases = {}
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
            f"  release/{version}: {info['files']} files, {info['bytes']} bytes, "
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
    config = tree_config(root, config_path)
    audit = TreeAudit(
        root or config.tree.root,
        config.verify.identities,
        trusted_root=trusted_root,
        releases=releases,
        resume=resume,
        on_release=lambda v, n: log.info("release/%s: %s", v, "ok" if not n else f"{n} problems"),
        binding=binding_policy(config.verify),
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
    for warning in result.warnings:
        log.warning("%s", warning)
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
                ).run()
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
            f"wrote {archive} ({result.stream_bytes} bytes): {result.files} files, "
            f"release(s) {', '.join(result.releases) or 'none'}"
        )


def _echo_export(result: Any, quiet: bool) -> None:
    if quiet:
        return
    kind = "incremental transfer set" if result.incremental else "transfer set"
    click.echo(
        f"wrote {kind} {result.output}: {len(result.parts)} part(s), "
        f"{result.stream_bytes} bytes, {result.files} files"
    )
    for version, (carried, required) in result.releases.items():
        needs = f", needs {required} already at the target" if required else ""
        click.echo(f"  release/{version}: {carried} files{needs}")
    for marker, version in result.markers.items():
        click.echo(f"  marker {marker} -> {version}")


@main.command("export")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), required=True)
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
@click.option("--root", type=click.Path(path_type=Path, file_okay=False), required=True)
@click.option(
    "--trusted-root",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    help="Verify bundles against this trusted_root.json (default: the tree's own; for a first "
    "import into an empty tree, the one the set carries).",
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
    parts = [f"imported {result.files_imported} files ({result.bytes_imported} bytes)"]
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
