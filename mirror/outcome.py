"""How a run ended, decided from what failed: a pure function of typed failures.

A run records each failure with its error ``kind`` (see ``errors.py``); the exit code follows
from the kinds by precedence, so the most serious problem decides: a bug (1) over a file
that did not verify (5) over a tree that cannot be written (7) over upstream trouble, which
is a partial success (6) when anything else worked and "unreachable" (4) when nothing did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from mirror.errors import (
    IntegrityError,
    LocalStoreError,
    MirrorError,
    PartialSyncError,
    UpstreamError,
)
from mirror.report import Failure


@dataclass(frozen=True)
class Conclusion:
    outcome: str
    """``success``, ``integrity``, ``partial`` or ``failed``."""
    exit_code: int
    error: str | None


def conclude(failures: Sequence[Failure], succeeded_files: int) -> Conclusion:
    """The outcome of a run with these failures, in which ``succeeded_files`` files are fine."""
    if not failures:
        return Conclusion("success", 0, None)
    kinds = {f.kind for f in failures}
    error: MirrorError
    if "internal" in kinds:
        error = MirrorError("internal error (a bug; please report it)")
    elif "integrity" in kinds:
        error = IntegrityError("some files failed verification")
    elif "local" in kinds:
        error = LocalStoreError("local tree could not be written")
    elif succeeded_files:
        error = PartialSyncError("some files could not be fetched")
    else:
        error = UpstreamError("upstream unreachable for every selected file")
    if isinstance(error, IntegrityError):
        outcome = "integrity"
    else:
        outcome = "partial" if succeeded_files else "failed"
    first = failures[0]
    message = f"{error} ({len(failures)} failed; first: {first.path}: {first.reason})"
    return Conclusion(outcome, error.exit_code, message)


def incomplete_releases(failures: Sequence[Failure]) -> set[str]:
    """Releases a failure belongs to: none of them may be reported complete."""
    return {f.release for f in failures if f.release is not None}
