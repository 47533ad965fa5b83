"""The one exception tree of k8s-mirror, and the exit code of each branch.

Everything the tool can fail with is a ``MirrorError``; only ``cli.py`` catches it and turns it
into a one-line message and the exit code below. Third-party exceptions (aiohttp, sigstore,
OSError from the disk, botocore) are translated where they enter: ``upstream.py``,
``verify/``, ``store.py``, ``publish/client.py``.

    MirrorError                      1  (unexpected; never raised directly)
    ├── ConfigError                  2  mirror.toml or a flag is wrong
    ├── LockHeldError                3  another run holds the tree's lock
    ├── UpstreamError                4  dl.k8s.io or Rekor unreachable / HTTP error after retries
    │   ├── HTTPStatusError             a non-retryable or exhausted HTTP status
    │   └── TransientError              worth another attempt (only seen inside the retry loop)
    │       └── RetryableStatusError    408/429/5xx, with the server's Retry-After
    ├── IntegrityError               5  a file, SUMS line, sidecar or signature did not verify
    │   ├── UnsafePathError             a path from the network that would leave the tree
    │   ├── SumsFormatError             a malformed SHA256SUMS/SHA512SUMS line
    │   ├── DigestMismatchError         content disagrees with SUMS or a sidecar
    │   ├── SignatureError              the Sigstore signature did not verify
    │   ├── BindingError                nothing signed binds the file to its release and path
    │   └── TreeVerifyError             ``k8s-mirror verify`` found problems in the tree
    ├── PartialSyncError             6  some releases completed, some files failed upstream
    ├── LocalStoreError              7  the local tree cannot be written (disk full, permissions)
    ├── PruneGuardError              8  pruning would delete more than the configured guard allows
    ├── PublishError                 9  the object store is unreachable or failing (after retries)
    │   ├── PublishDeniedError      10  the object store refused the credentials or the access
    │   ├── BucketMissingError      11  the target bucket does not exist
    │   └── RemoteConflictError     12  an object in the bucket differs from the verified local
    │                                   file; it was not overwritten (``--repair`` does)
    ├── ReleaseNotFoundError        13  a selected version does not exist upstream (SUMS is 404)
    └── PortInUseError              14  ``serve``/``demo`` cannot listen: the address is taken

Interrupted runs (Ctrl-C, SIGTERM) exit 130 and are recorded as failed.

Each branch also has a ``kind`` (``config``, ``upstream``, ``integrity``, ``local``, ...): a
run records its failures by kind and path, and ``outcome.conclude`` derives the run's exit code
from those kinds alone.
"""

from __future__ import annotations


class MirrorError(Exception):
    """Base of every error k8s-mirror reports; ``exit_code`` is what the CLI exits with."""

    exit_code = 1
    kind = "internal"
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(MirrorError):
    """The configuration file or a command-line flag is invalid."""

    exit_code = 2
    kind = "config"

    def __init__(self, problems: list[str] | str, *, source: str = "config") -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        super().__init__(f"{source}: " + "; ".join(self.problems))


class LockHeldError(MirrorError):
    """Another k8s-mirror run holds the tree's lock."""

    exit_code = 3
    kind = "lock"


class UpstreamError(MirrorError):
    """A network failure talking to dl.k8s.io or Rekor, after retries."""

    exit_code = 4
    kind = "upstream"


class HTTPStatusError(UpstreamError):
    """The server answered with an error status we do not (or no longer) retry."""

    def __init__(self, url: str, status: int, message: str | None = None) -> None:
        self.url = url
        self.status = status
        super().__init__(message or f"{url}: HTTP {status}")


class TransientError(UpstreamError):
    """A failure that another attempt may not hit; ``retry_after_s`` is the server's hint."""

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RetryableStatusError(TransientError, HTTPStatusError):
    """408/429/5xx: the server asked us to come back later."""

    def __init__(self, url: str, status: int, retry_after_s: float | None) -> None:
        HTTPStatusError.__init__(self, url, status)
        self.retry_after_s = retry_after_s


class IntegrityError(MirrorError):
    """Something downloaded did not verify; it was not promoted."""

    exit_code = 5
    kind = "integrity"


class UnsafePathError(IntegrityError):
    """A path from the network (SUMS line, marker) that is absolute, escapes, or is malformed."""


class SumsFormatError(IntegrityError):
    """A SHA256SUMS/SHA512SUMS file that is not in the exact upstream format."""


class DigestMismatchError(IntegrityError):
    """Content, SUMS entry and sidecar disagree."""


class SignatureError(IntegrityError):
    """The Sigstore signature of a file did not verify under the configured policy."""


class BindingError(IntegrityError):
    """A file is validly signed, but nothing signed binds it to the release and path it is
    served under (the release SBOM disagrees, or does not list it)."""


class TreeVerifyError(IntegrityError):
    """``k8s-mirror verify`` found at least one problem in the tree."""


class PartialSyncError(MirrorError):
    """The run finished, but some selected files could not be fetched."""

    exit_code = 6
    kind = "partial"


class LocalStoreError(MirrorError):
    """The local tree or its state directory cannot be written or read."""

    exit_code = 7
    kind = "local"


class PruneGuardError(MirrorError):
    """Pruning was refused because it would delete more than the configured guard allows."""

    exit_code = 8
    kind = "prune-guard"


class PublishError(MirrorError):
    """Publishing to object storage failed: endpoint unreachable, 5xx/slow-down after retries,
    or a request the store rejected. No marker was written."""

    exit_code = 9
    kind = "publish"


class PublishDeniedError(PublishError):
    """The object store refused the credentials (or found none) or denied the access."""

    exit_code = 10


class BucketMissingError(PublishError):
    """The bucket named by the publish target does not exist."""

    exit_code = 11


class RemoteConflictError(PublishError):
    """An object in the bucket differs from the verified local file and was not overwritten."""

    exit_code = 12


class ReleaseNotFoundError(MirrorError):
    """Upstream has no release of that version: its SHA256SUMS answered 404."""

    exit_code = 13
    kind = "config"

    def __init__(self, version: str, upstream_url: str) -> None:
        self.version = version
        super().__init__(
            f"release {version} not found upstream ({upstream_url})",
            hint=f"check the version ({upstream_url}/release/stable.txt names the current "
            "stable one) or --upstream-url / upstream.url",
        )


class PortInUseError(MirrorError):
    """A server cannot listen on its address because something else already does."""

    exit_code = 14

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        super().__init__(
            f"cannot listen on {host}:{port}: the address is already in use",
            hint="stop what listens there or pick another --port",
        )


EXIT_INTERRUPTED = 130
