"""The ``k8s-mirror`` command line: click commands, logging and progress set-up, exit codes.

``cli.runner`` is the only module that catches ``MirrorError``: each error becomes one line on
stderr (``k8s-mirror: error: ...``, plus a hint when there is one) and its documented exit
code. Each command module below only parses its flags, sets up logging and progress, calls
the engine and prints the result.
"""

from mirror.cli import airgap, publish, serve, sync, tree
from mirror.cli.app import main

__all__ = ["airgap", "main", "publish", "serve", "sync", "tree"]
