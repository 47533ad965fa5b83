"""``k8s-mirror serve`` and ``k8s-mirror demo``."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from mirror.cli.app import main
from mirror.cli.options import logging_options
from mirror.cli.runner import fail, run_async
from mirror.errors import (
    ConfigError,
    MirrorError,
)
from mirror.progress import setup_logging

log = logging.getLogger("mirror.cli")


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
@click.option(
    "--max-connections",
    type=click.IntRange(1, 100_000),
    default=512,
    show_default=True,
    help="Open connections at once; more are closed at once (keep below LimitNOFILE).",
)
@click.option(
    "--idle-timeout",
    "idle_timeout_s",
    type=click.FloatRange(0.1, 3600),
    default=15.0,
    show_default=True,
    help="Close a connection that starts no request for this many seconds (new, or after a "
    "response): idle and half-sent requests cannot pile up.",
)
@logging_options
def serve(
    root: Path,
    host: str,
    port: int,
    prefix: str,
    index: bool,
    max_connections: int,
    idle_timeout_s: float,
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
        serve_tree(
            root,
            host=host,
            port=port,
            index_pages=index,
            prefix=prefix,
            max_connections=max_connections,
            idle_timeout_s=idle_timeout_s,
        )
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
