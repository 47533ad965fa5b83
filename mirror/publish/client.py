"""The S3 boundary: the one aiobotocore client of a publish, retries, and errors -> ours.

Every request goes through ``S3Store._call``, which retries what can pass (connection errors,
timeouts, 5xx, 429, ``SlowDown``: capped exponential backoff with full jitter, ``Retry-After``
honoured) and turns everything else into one ``MirrorError`` line naming the target and the
object: ``BucketMissingError``, ``PublishDeniedError`` (credentials or access refused),
``PublishError`` (unreachable, or still failing after the retries). botocore's own retries
are off, so our backoff is the only one and its settings are the config's.

Credentials come from botocore's standard chain (environment, shared config/credentials
files with an optional profile, container or instance role); nothing here logs or reports
them. Payloads are sent unsigned (``UNSIGNED-PAYLOAD``): every PUT carries its own checksum
header, which the server checks, so SigV4 need not hash each body a second time.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import AioSession
from botocore import exceptions as boto_errors

from mirror import __version__
from mirror.config import PublishConfig
from mirror.errors import (
    BucketMissingError,
    ConfigError,
    PublishDeniedError,
    PublishError,
)
from mirror.publish.target import Target

if TYPE_CHECKING:
    from types_aiobotocore_s3 import S3Client

log = logging.getLogger("mirror.publish")
T = TypeVar("T")

_RETRY_CODES = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequests",
    "OperationAborted",
}
_DENIED_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AllAccessDisabled",
    "AccountProblem",
    "InvalidToken",
    "ExpiredToken",
    "InvalidSecurity",
}
_BAD_DIGEST_CODES = {"BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch"}
_NETWORK_ERRORS = (
    boto_errors.ConnectionError,  # EndpointConnectionError, ConnectTimeoutError
    boto_errors.HTTPClientError,  # ReadTimeoutError, ConnectionClosedError
    aiohttp.ClientError,
    TimeoutError,
    ConnectionError,
)
MAX_RETRY_AFTER_S = 300.0


@dataclass(frozen=True)
class Headers:
    """What a static host would send for an object."""

    content_type: str
    cache_control: str


@dataclass(frozen=True)
class RemoteObject:
    """An object as the store reports it (a listing gives size and ETag; HEAD the rest)."""

    key: str
    size: int
    etag: str
    sha256: str | None = None
    """Hex sha256 the store holds for the object: its full-object checksum, else the
    ``sha256`` metadata we wrote with it."""
    content_type: str | None = None
    cache_control: str | None = None


def b64_digest(hex_digest: str) -> str:
    return base64.b64encode(bytes.fromhex(hex_digest)).decode()


def _stored_sha256(response: Any) -> str | None:
    """The store's full-object sha256 if it has one (a composite multipart checksum,
    ``<b64>-<parts>``, is not the file's digest), else our metadata."""
    checksum = response.get("ChecksumSHA256")
    if checksum and "-" not in checksum and response.get("ChecksumType") != "COMPOSITE":
        try:
            return base64.b64decode(checksum, validate=True).hex()
        except (binascii.Error, ValueError):
            return None
    meta = response.get("Metadata") or {}
    value = meta.get("sha256")
    return value.lower() if isinstance(value, str) else None


class S3Store:
    """One bucket, one client, one retry policy; use as ``async with``."""

    def __init__(self, settings: PublishConfig, target: Target) -> None:
        self.settings = settings
        self.target = target
        self.endpoint = settings.endpoint_url or "the default AWS endpoint"
        self._stack = AsyncExitStack()
        self._client: S3Client | None = None

    async def __aenter__(self) -> S3Store:
        try:
            session = AioSession(profile=self.settings.profile)
            config = AioConfig(
                s3={
                    "addressing_style": "path" if self.settings.path_style else "auto",
                    "payload_signing_enabled": False,
                },
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                retries={"total_max_attempts": 1, "mode": "standard"},
                connect_timeout=self.settings.connect_timeout_s,
                read_timeout=self.settings.read_timeout_s,
                max_pool_connections=max(10, 2 * self.settings.concurrency),
                user_agent_extra=f"k8s-mirror/{__version__}",
            )
            self._client = await self._stack.enter_async_context(
                session.create_client(
                    "s3",
                    endpoint_url=self.settings.endpoint_url,
                    region_name=self.settings.region,
                    config=config,
                )
            )
        except boto_errors.ProfileNotFound as exc:
            raise ConfigError(f"{exc}", source="publish.profile / AWS_PROFILE") from None
        except boto_errors.BotoCoreError as exc:
            raise PublishError(f"{self.target}: cannot set up the S3 client: {exc}") from None
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    @property
    def client(self) -> S3Client:
        assert self._client is not None, "use S3Store as an async context manager"
        return self._client

    # -- the one request path ----------------------------------------------------------------

    async def _call(self, what: str, relpath: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run one request with retries; raise ours, naming the target and the object."""
        attempt = 0
        while True:
            try:
                return await make()
            except boto_errors.ClientError as exc:
                error = exc.response.get("Error", {})
                meta = exc.response.get("ResponseMetadata", {})
                code = str(error.get("Code", ""))
                status = int(meta.get("HTTPStatusCode", 0) or 0)
                detail = f"HTTP {status} {code}".strip() if code != str(status) else f"HTTP {code}"
                if code == "NoSuchBucket":
                    raise BucketMissingError(
                        f"{self.target.url(relpath)}: {what}: bucket {self.target.bucket!r} "
                        f"does not exist at {self.endpoint}",
                        hint="create the bucket, or check the target and --endpoint-url",
                    ) from None
                if code in _DENIED_CODES or status == 403:
                    raise PublishDeniedError(
                        f"{self.target.url(relpath)}: {what}: access denied ({detail})",
                        hint="check the credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, ...) "
                        "and the bucket's policy",
                    ) from None
                retryable = code in _RETRY_CODES or status >= 500 or status in (408, 429)
                retry_after = _retry_after_s(meta.get("HTTPHeaders", {}))
            except (boto_errors.NoCredentialsError, boto_errors.PartialCredentialsError) as exc:
                raise PublishDeniedError(
                    f"{self.target.url(relpath)}: {what}: no usable AWS credentials ({exc})",
                    hint="set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or run "
                    "with an instance or container role",
                ) from None
            except boto_errors.ProfileNotFound as exc:
                raise ConfigError(f"{exc}", source="publish.profile / AWS_PROFILE") from None
            except boto_errors.CredentialRetrievalError as exc:
                raise PublishDeniedError(
                    f"{self.target.url(relpath)}: {what}: cannot get AWS credentials ({exc})"
                ) from None
            except _NETWORK_ERRORS as exc:
                detail = f"{self.endpoint} unreachable ({type(exc).__name__})"
                retryable, retry_after = True, None
            if not retryable or attempt >= self.settings.retries:
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise PublishError(
                    f"{self.target.url(relpath)}: {what} failed{tries}: {detail}",
                    hint="nothing was marked; the next publish resumes where this one stopped",
                ) from None
            delay_s = random.uniform(
                0, min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2**attempt)
            )
            if retry_after is not None:
                delay_s = max(delay_s, retry_after)
            log.warning(
                "%s: %s: %s; retrying in %.2fs", self.target.url(relpath), what, detail, delay_s
            )
            await asyncio.sleep(delay_s)
            attempt += 1

    # -- operations --------------------------------------------------------------------------

    async def list_objects(
        self, relprefix: str, *, delimiter: str | None = None
    ) -> tuple[dict[str, RemoteObject], list[str]]:
        """Objects under ``relprefix`` by tree path, and (with a delimiter) sub-prefixes."""
        objects: dict[str, RemoteObject] = {}
        prefixes: list[str] = []
        token: str | None = None
        while True:
            args: dict[str, Any] = {
                "Bucket": self.target.bucket,
                "Prefix": self.target.key(relprefix),
            }
            if delimiter:
                args["Delimiter"] = delimiter
            if token:
                args["ContinuationToken"] = token
            page = await self._call(
                "LIST",
                relprefix,
                lambda a=args: self.client.list_objects_v2(**a),  # type: ignore[misc]
            )
            for item in page.get("Contents", []):
                rel = self.target.relpath(item["Key"])
                objects[rel] = RemoteObject(item["Key"], int(item["Size"]), item.get("ETag", ""))
            prefixes += [self.target.relpath(p["Prefix"]) for p in page.get("CommonPrefixes", [])]
            if not page.get("IsTruncated"):
                return objects, prefixes
            token = page.get("NextContinuationToken")

    async def head(self, relpath: str) -> RemoteObject | None:
        key = self.target.key(relpath)

        async def make() -> RemoteObject | None:
            try:
                response = await self.client.head_object(
                    Bucket=self.target.bucket, Key=key, ChecksumMode="ENABLED"
                )
            except boto_errors.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                    return None
                raise
            return RemoteObject(
                key,
                int(response.get("ContentLength", 0)),
                response.get("ETag", ""),
                _stored_sha256(response),
                response.get("ContentType"),
                response.get("CacheControl"),
            )

        return await self._call("HEAD", relpath, make)

    async def get(self, relpath: str, *, max_bytes: int) -> bytes | None:
        """A small object's content, or None if there is none."""
        key = self.target.key(relpath)

        async def make() -> bytes | None:
            try:
                response = await self.client.get_object(Bucket=self.target.bucket, Key=key)
            except boto_errors.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                    return None
                raise
            data = b""
            async with response["Body"] as body:
                # read(n) returns what has arrived, not n bytes: loop to the end.
                while len(data) <= max_bytes and (chunk := await body.read(64 * 1024)):
                    data += chunk
            if len(data) > max_bytes:
                raise PublishError(f"{self.target.url(relpath)}: larger than {max_bytes} bytes")
            return data

        return await self._call("GET", relpath, make)

    async def read_digest(self, relpath: str, chunk_bytes: int = 1024**2) -> tuple[int, str]:
        """Size and sha256 of an object's content, read back from the store."""
        key = self.target.key(relpath)

        async def make() -> tuple[int, str]:
            response = await self.client.get_object(Bucket=self.target.bucket, Key=key)
            digest = hashlib.sha256()
            size = 0
            async with response["Body"] as body:
                while chunk := await body.read(chunk_bytes):
                    digest.update(chunk)
                    size += len(chunk)
            return size, digest.hexdigest()

        return await self._call("GET", relpath, make)

    async def probe_sha256(self, relpath: str) -> bool:
        """Whether the store checks ``x-amz-checksum-sha256``: PUT a probe with a wrong one.

        Refused as a bad digest: it checks. Accepted: it ignores the header (the probe is
        deleted again). Refused otherwise (it does not know the header): it does not check."""
        key = self.target.key(relpath)
        wrong = b64_digest(hashlib.sha256(b"k8s-mirror probe: not this body").hexdigest())

        async def make() -> bool:
            try:
                await self.client.put_object(
                    Bucket=self.target.bucket, Key=key, Body=b"probe", ChecksumSHA256=wrong
                )
            except boto_errors.ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
                if code in _BAD_DIGEST_CODES:
                    return True
                if 400 <= status < 500 and status != 403 and code not in _DENIED_CODES:
                    return False
                raise
            await self.client.delete_object(Bucket=self.target.bucket, Key=key)
            return False

        return await self._call("PUT (checksum probe)", relpath, make)

    async def put(
        self, relpath: str, body: bytes, headers: Headers, sha256: str, checksum: dict[str, str]
    ) -> None:
        """One PUT; ``checksum`` is the header argument the server checks the body against."""
        await self._call(
            "PUT",
            relpath,
            lambda: self.client.put_object(
                Bucket=self.target.bucket,
                Key=self.target.key(relpath),
                Body=body,
                ContentType=headers.content_type,
                CacheControl=headers.cache_control,
                Metadata={"sha256": sha256},
                **checksum,  # type: ignore[arg-type]
            ),
        )

    async def create_multipart(
        self, relpath: str, headers: Headers, sha256: str, algorithm: str | None
    ) -> str:
        args: dict[str, Any] = {
            "Bucket": self.target.bucket,
            "Key": self.target.key(relpath),
            "ContentType": headers.content_type,
            "CacheControl": headers.cache_control,
            "Metadata": {"sha256": sha256},
        }
        if algorithm:
            args["ChecksumAlgorithm"] = algorithm
        response = await self._call(
            "CreateMultipartUpload", relpath, lambda: self.client.create_multipart_upload(**args)
        )
        return response["UploadId"]

    async def upload_part(
        self, relpath: str, upload_id: str, number: int, body: bytes, checksum: dict[str, str]
    ) -> dict[str, Any]:
        response = await self._call(
            f"UploadPart {number}",
            relpath,
            lambda: self.client.upload_part(
                Bucket=self.target.bucket,
                Key=self.target.key(relpath),
                UploadId=upload_id,
                PartNumber=number,
                Body=body,
                **checksum,  # type: ignore[arg-type]
            ),
        )
        part: dict[str, Any] = {"PartNumber": number, "ETag": response["ETag"]}
        if "ChecksumSHA256" in checksum:
            part["ChecksumSHA256"] = checksum["ChecksumSHA256"]
        return part

    async def complete_multipart(
        self, relpath: str, upload_id: str, parts: list[dict[str, Any]]
    ) -> None:
        await self._call(
            "CompleteMultipartUpload",
            relpath,
            lambda: self.client.complete_multipart_upload(
                Bucket=self.target.bucket,
                Key=self.target.key(relpath),
                UploadId=upload_id,
                MultipartUpload={"Parts": parts},  # type: ignore[typeddict-item]
            ),
        )

    async def abort_multipart(self, relpath: str, upload_id: str) -> None:
        """Best effort: a failed abort leaves an invisible upload the bucket's lifecycle
        rule (or the next abort) removes; it never becomes an object."""
        try:
            await self.client.abort_multipart_upload(
                Bucket=self.target.bucket, Key=self.target.key(relpath), UploadId=upload_id
            )
        except (boto_errors.ClientError, *_NETWORK_ERRORS):
            log.warning("%s: could not abort multipart upload", self.target.url(relpath))

    async def delete(self, relpaths: list[str]) -> None:
        """Delete objects, 1000 per request (the S3 limit)."""
        for start in range(0, len(relpaths), 1000):
            batch = relpaths[start : start + 1000]
            objects = [{"Key": self.target.key(r)} for r in batch]
            response = await self._call(
                "DELETE",
                batch[0],
                lambda o=objects: self.client.delete_objects(  # type: ignore[misc]
                    Bucket=self.target.bucket, Delete={"Objects": o, "Quiet": True}
                ),
            )
            errors = response.get("Errors", [])
            if errors:
                first = errors[0]
                rel = self.target.relpath(first.get("Key", ""))
                raise PublishError(
                    f"{self.target.url(rel)}: DELETE failed: {first.get('Code')} "
                    f"({len(errors)} objects not deleted)"
                )


def _retry_after_s(headers: Any) -> float | None:
    value = headers.get("retry-after") if isinstance(headers, dict) else None
    try:
        return min(MAX_RETRY_AFTER_S, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None
