"""``k8s-mirror status`` and ``k8s-mirror verify``: read an existing tree (or a bucket)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from mirror.cli.app import main
from mirror.cli.options import (
    binding_policy,
    logging_options,
    require_tree,
    tree_config,
    tree_options,
)
from mirror.cli.publish import s3_options, verify_remote_command
from mirror.cli.runner import fail
from mirror.cli.text import human_size, plural
from mirror.errors import (
    MirrorError,
    TreeVerifyError,
)
from mirror.progress import setup_logging
from mirror.report import read_status
from mirror.store import Store

log = logging.getLogger("mirror.cli")


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
