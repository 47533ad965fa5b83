"""The air-gap workflows: ``fetch`` (one-off, to a directory or an archive), ``export``
and ``import`` of transfer sets.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from mirror.cli.app import main
from mirror.cli.options import (
    binding_policy,
    build_overrides,
    check_flags,
    load,
    logging_options,
    wait_option,
)
from mirror.cli.runner import _blocking, fail, run_async
from mirror.cli.text import human_size, plural, print_summary
from mirror.config import Config, load_config
from mirror.errors import (
    ConfigError,
    MirrorError,
)
from mirror.progress import BarProgress, LogProgress, setup_logging
from mirror.report import RunReport

T = TypeVar("T")


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
    _fetch_to_archive(
        archive.absolute(),
        lambda tree: run_sync(_fetch_config(config_path, tree, **selection)),
        quiet,
    )


def _fetch_to_archive(archive: Path, run_sync: Callable[[Path], RunReport], quiet: bool) -> None:
    """Sync into a private tree beside ``archive``, then write the archive from it."""
    from mirror.transfer import archive_compression, temporary_tree, write_archive

    try:
        archive_compression(archive)
        # The private tree is removed on every way out (sys.exit included).
        with temporary_tree(archive) as work:
            tree = work / "tree"
            report = run_sync(tree)
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
