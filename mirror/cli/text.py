"""What the commands print about a run: counts, sizes, the plan of a dry run, the summary."""

from __future__ import annotations

import logging

import click

from mirror.errors import (
    UpstreamError,
)
from mirror.report import RunReport

log = logging.getLogger("mirror.cli")


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
