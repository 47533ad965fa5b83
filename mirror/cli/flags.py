"""Which command-line flag set which config key, so an error names what the user typed."""

from __future__ import annotations

import logging
from typing import Any

from mirror.errors import (
    ConfigError,
)

log = logging.getLogger("mirror.cli")


FLAG_OF_KEY = {
    "tree.root": "--root",
    "select.versions": "--version",
    "select.platforms": "--platform",
    "select.components": "--component",
    "upstream.concurrency": "--concurrency",
    "upstream.url": "--upstream-url",
    "verify.rekor_url": "--rekor-url",
    "verify.trusted_root": "--trusted-root",
}


def name_flags(
    error: ConfigError, overrides: dict[str, Any], flag_of_key: dict[str, str] | None = None
) -> ConfigError:
    """``error`` with each problem about a key that came from a flag named as typed
    (``--platform linux-amd64 (select.platforms[0]): ...``), not as a key of a config file it
    is not in."""
    flags = {**FLAG_OF_KEY, **(flag_of_key or {})}
    problems = []
    for problem in error.problems:
        key, _, message = problem.partition(": ")
        base, _, index = key.partition("[")
        if base not in overrides or base not in flags:
            problems.append(problem)
            continue
        value = overrides[base]
        # The key stays in brackets: it is what mirror.toml would call the same setting.
        if index and isinstance(value, list):
            typed = f"{flags[base]} {value[int(index.rstrip(']'))]}"
        elif isinstance(value, list):
            typed = flags[base]  # the message quotes the value
        else:
            typed = f"{flags[base]} {value}"
        problems.append(f"{typed} ({key}): {message}")
    if problems == error.problems:
        return error
    named = ConfigError(problems, source="command line")
    named.hint = error.hint
    return named
