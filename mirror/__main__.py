"""``python -m mirror`` and the ``k8s-mirror`` script: the command line, guarded from the
first instant.

Importing the command line takes about a second (sigstore and its crypto stack). A SIGTERM in
that window (a systemd stop, a timeout) would otherwise kill the process by signal, with no
word and the wrong exit status; here it exits 130 like any other interruption. Nothing has
been written by then: the commands install their own handlers before they touch the tree.
"""

import signal
import sys
from types import FrameType

from mirror.errors import EXIT_INTERRUPTED  # cheap: no third-party imports


def _interrupted_early(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("k8s-mirror: interrupted before it started; nothing was changed\n")
    raise SystemExit(EXIT_INTERRUPTED)


def run() -> None:
    signal.signal(signal.SIGTERM, _interrupted_early)
    from mirror.cli import main

    main()


if __name__ == "__main__":
    run()
