"""``k8s-mirror sync``: reconcile the tree with mirror.toml."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mirror.cli.app import main
from mirror.cli.options import build_overrides, config_options, load, logging_options, wait_option
from mirror.cli.publish import run_publish
from mirror.cli.runner import run_async
from mirror.cli.text import print_plan, print_summary
from mirror.progress import BarProgress, LogProgress, setup_logging


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
