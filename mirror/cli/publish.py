"""``k8s-mirror publish`` and ``verify --remote``: the verified tree in object storage."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mirror.cli.app import main
from mirror.cli.options import logging_options, tree_config, wait_option
from mirror.cli.runner import fail, run_async
from mirror.config import Config
from mirror.errors import (
    ConfigError,
    TreeVerifyError,
)
from mirror.progress import setup_logging


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
