"""What vouches for a file, fetched from upstream: its digest sidecars and its signature, in
whichever form upstream publishes it.

Kubernetes signs with cosign. Up to now every signed file ``p`` came with ``p.sig`` +
``p.cert`` (no transparency-log proof: the bundle is assembled from a Rekor lookup); cosign v3
publishes a Sigstore bundle ``p.sigstore.json`` instead, or beside them. A mirror serving a
k8s-mirror tree publishes both. Which form a release uses is learnt once per release, from the
first signed file the run fetches (``SignatureForm``, probed: all three asked for, a 404 is an
answer); every later file of the release asks only for that form, and falls back to the other
form when its own answer is 404 (a release published half one way, half the other).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from mirror import catalog
from mirror.catalog import (
    BUNDLE_MAX_BYTES,
    CERT_MAX_BYTES,
    SIG_MAX_BYTES,
    PlannedFile,
    RelPath,
)
from mirror.errors import DigestMismatchError, HTTPStatusError, SignatureError
from mirror.fetch import Fetcher
from mirror.layout import BUNDLE_SUFFIX
from mirror.manifest import Manifest

_LIMITS = {".sig": SIG_MAX_BYTES, ".cert": CERT_MAX_BYTES, BUNDLE_SUFFIX: BUNDLE_MAX_BYTES}


@dataclass(frozen=True)
class SignatureForm:
    """How upstream publishes a release's signatures."""

    bundle: bool
    """``<file>.sigstore.json`` (verified offline, no Rekor lookup)."""
    detached: bool
    """``<file>.sig`` + ``<file>.cert`` (bundle assembled from the Rekor entry)."""

    @classmethod
    def recorded_in(cls, manifest: Manifest) -> SignatureForm | None:
        """How a release in the tree was published, from what its manifest records (None:
        no signed file recorded with its origin yet)."""
        bundle = any(r.bundle == "upstream" for r in manifest.files.values())
        assembled = any(r.bundle == "assembled" for r in manifest.files.values())
        if not (bundle or assembled):
            return None
        return cls(bundle=bundle, detached=any(p.endswith(".sig") for p in manifest.files))

    def suffixes(self) -> tuple[str, ...]:
        return (BUNDLE_SUFFIX,) * self.bundle + catalog.SIGNATURE_SIDECARS * self.detached


PROBE = SignatureForm(bundle=True, detached=True)


async def fetch_companions(
    fetcher: Fetcher, planned: PlannedFile, form: SignatureForm | None
) -> tuple[dict[RelPath, bytes], SignatureForm | None]:
    """A planned file's upstream companions and the signature form they came in (None for
    an unsigned file): digest sidecars first, checked against SUMS before any download."""
    sidecars = _digest_sidecars(planned)
    wanted = form or PROBE
    # Asked for all at once (on a real link each is a round trip, and none depends on
    # another); problems are raised in the order the requests were listed.
    fetches: list[Awaitable[Any]] = [_digest_sidecar(fetcher, planned, s) for s in sidecars]
    if planned.signed:
        fetches.append(_optional(fetcher, planned, wanted.suffixes()))
    results = _first_error(await asyncio.gather(*fetches, return_exceptions=True))
    out: dict[RelPath, bytes] = dict(zip(sidecars, results, strict=False))
    if not planned.signed:
        return out, None
    found: dict[RelPath, bytes] = results[-1]
    if not _complete(planned, found) and form is not None:
        other = SignatureForm(bundle=not form.bundle, detached=not form.detached)
        found.update(await _optional(fetcher, planned, other.suffixes()))
    name = f"release/{planned.version}/{planned.relpath}"
    has_sig = planned.relpath.child(".sig") in found
    if has_sig != (planned.relpath.child(".cert") in found):
        raise SignatureError(f"{name}: upstream publishes only one of its .sig and .cert")
    if not _complete(planned, found):
        raise SignatureError(
            f"{name}: upstream publishes neither a Sigstore bundle ({BUNDLE_SUFFIX}) nor a "
            ".sig/.cert pair for it"
        )
    out.update(found)
    return out, SignatureForm(
        bundle=planned.relpath.child(BUNDLE_SUFFIX) in found, detached=has_sig
    )


def _complete(planned: PlannedFile, found: dict[RelPath, bytes]) -> bool:
    return planned.relpath.child(BUNDLE_SUFFIX) in found or (
        planned.relpath.child(".sig") in found and planned.relpath.child(".cert") in found
    )


def _digest_sidecars(planned: PlannedFile) -> tuple[RelPath, ...]:
    return tuple(planned.relpath.child(s) for s in catalog.SIDECAR_DIGESTS)


async def _digest_sidecar(fetcher: Fetcher, planned: PlannedFile, sidecar: RelPath) -> bytes:
    path = f"release/{planned.version}/{sidecar}"
    body = await fetcher.bytes(
        fetcher.upstream.release_url(path), max_bytes=catalog.SIDECAR_MAX_BYTES
    )
    algo = sidecar.rpartition(".")[2]
    try:
        text = body.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    if catalog.parse_sidecar(text, algo, path) != getattr(planned, algo):
        raise DigestMismatchError(
            f"{path}: disagrees with {algo.upper()}SUMS for {planned.relpath}"
        )
    return body


async def _optional(
    fetcher: Fetcher, planned: PlannedFile, suffixes: tuple[str, ...]
) -> dict[RelPath, bytes]:
    """The companions with these suffixes that upstream has (a 404 means "not published")."""
    paths = [planned.relpath.child(suffix) for suffix in suffixes]
    bodies = await asyncio.gather(
        *(
            fetcher.bytes(
                fetcher.upstream.release_url(f"release/{planned.version}/{path}"),
                max_bytes=_LIMITS[suffix],
            )
            for path, suffix in zip(paths, suffixes, strict=True)
        ),
        return_exceptions=True,
    )
    found: dict[RelPath, bytes] = {}
    for path, body in zip(paths, bodies, strict=True):
        if isinstance(body, HTTPStatusError) and body.status == 404:
            continue
        found[path] = _first_error([body])[0]
    return found


def _first_error(results: list[Any]) -> list[Any]:
    """``results`` of a gather, or the first exception among them, raised."""
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results
