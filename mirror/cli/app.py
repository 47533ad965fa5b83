"""The ``k8s-mirror`` click group; the commands live in the modules beside this one."""

from __future__ import annotations

import click

from mirror import __version__
from mirror.progress import pipe_safe_stdout


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="k8s-mirror")
def main() -> None:
    """Mirror Kubernetes releases from dl.k8s.io into a verified local tree."""
    pipe_safe_stdout()
