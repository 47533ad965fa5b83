"""Running a command and ending it: one error line (and hint) per failure with its exit code,
and interruption (Ctrl-C, SIGTERM).

Two ways to run, because there are two kinds of command: ``run_async`` for the asyncio engine
(a signal cancels the task, so partial downloads stay for the next run) and ``_blocking`` for
the blocking air-gap steps (SIGTERM unwinds like Ctrl-C so their cleanup runs). The only
place that catches ``MirrorError``.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, NoReturn, TypeVar

import click

from mirror.cli.flags import name_flags
from mirror.errors import (
    EXIT_INTERRUPTED,
    ConfigError,
    MirrorError,
)

T = TypeVar("T")


def fail(exc: MirrorError) -> NoReturn:
    click.echo(f"k8s-mirror: error: {exc}", err=True)
    if exc.hint:
        click.echo(f"k8s-mirror: hint: {exc.hint}", err=True)
    sys.exit(exc.exit_code)


def run_async(
    make: Callable[[], Coroutine[Any, Any, T]],
    *,
    before_message: Callable[[], None] | None = None,
    overrides: dict[str, Any] | None = None,
) -> T:
    """Run a coroutine; SIGTERM and Ctrl-C cancel it cleanly (partials stay for resume).

    ``before_message`` (taking progress bars down) runs before an interruption or error is
    printed, so that the message is the last thing on the terminal; with ``overrides``, a
    config error about a key that came from a flag names the flag."""

    async def guarded() -> T:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        return await make()

    # The engine makes short-lived objects per request and per chunk; at the default threshold
    # (a collection every 700 allocations) the collector took 2-3 % of a sync's CPU, mostly
    # re-scanning the imported modules' objects. Those are frozen out of its view, and it runs
    # a tenth as often (cyclic garbage is rare here; memory stays bounded by the queues).
    gc.freeze()
    gc.set_threshold(7000, 10, 10)
    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        if before_message is not None:
            before_message()
        click.echo("k8s-mirror: interrupted; the next run resumes", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except MirrorError as exc:
        if before_message is not None:
            before_message()
        if isinstance(exc, ConfigError) and overrides:
            exc = name_flags(exc, overrides)
        fail(exc)


def _blocking(func: Callable[[], T]) -> T:
    """Run a blocking command step; SIGTERM unwinds like Ctrl-C so its cleanup runs."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        return func()
    except KeyboardInterrupt:
        click.echo("k8s-mirror: interrupted; run the command again to finish", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except MirrorError as exc:
        fail(exc)
