"""Command-line options shared by several commands, and turning them into a ``Config``:
one way to load a config (``load``; ``tree_config`` for commands that read an existing
tree), errors naming the flag a value came from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mirror.check import BindingPolicy
from mirror.cli.flags import name_flags
from mirror.cli.runner import fail
from mirror.config import Config, VerifyConfig, load_config
from mirror.errors import (
    ConfigError,
)
from mirror.layout import STATE_DIR_NAME

log = logging.getLogger("mirror.cli")


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
