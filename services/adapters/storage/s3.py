"""Object storage on S3 or an S3-compatible server (MinIO, moto) through boto3."""

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

import boto3
from boto3.exceptions import Boto3Error
from boto3.s3.transfer import TransferConfig
from botocore.client import BaseClient
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError

from ports.storage import ObjectNotFound, StorageUnavailable

log = logging.getLogger(__name__)

_MiB = 1024 * 1024
# A store that vanishes without closing its connections (a partition, a NAT or proxy that drops
# one side) must fail a request within about 30 s instead of hanging its worker: connecting
# gives up after CONNECT_TIMEOUT_S, a reply silent for READ_TIMEOUT_S fails the attempt, and
# MAX_ATTEMPTS bounds the tries (15 + 2 x 5 s plus backoff). S3 and MinIO send a reply's first
# bytes within a second or two, and keep a long CompleteMultipartUpload alive with whitespace.
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 15
MAX_ATTEMPTS = 3
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_NO_BUCKET_CODES = {"404", "NoSuchBucket", "NotFound"}
_DELETE_BATCH = 1000  # the DeleteObjects limit


class S3ObjectStorage:
    """ObjectStorage for one S3 bucket; boto3 clients are built on first use, not at import."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        region: str = "us-east-1",
        connect_timeout: float = CONNECT_TIMEOUT_S,
        read_timeout: float = READ_TIMEOUT_S,
        max_attempts: int = MAX_ATTEMPTS,
        presign_downloads: bool = True,
    ) -> None:
        self.bucket = bucket
        # False: clients cannot reach the store (e.g. MinIO on a private network), so
        # presigned_url gives None and the API streams downloads itself.
        self.presign_downloads = presign_downloads
        self.endpoint_url = endpoint_url
        self.public_endpoint_url = public_endpoint_url or endpoint_url
        self.region = region
        self._credentials = {
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
        }
        self._config = Config(
            region_name=region,
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            # total_max_attempts counts the first try (botocore's max_attempts does not).
            retries={"total_max_attempts": max_attempts, "mode": "standard"},
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            # Connections idle in the pool are probed, so a dead one is noticed and not reused.
            tcp_keepalive=True,
            # Newer botocore adds CRC checksums by default, which older MinIO rejects.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        self._transfer = TransferConfig(
            multipart_threshold=16 * _MiB,
            multipart_chunksize=16 * _MiB,
            max_concurrency=4,
        )
        # Readiness probes answer fast: one try, short timeouts.
        self._probe_config = self._config.merge(
            Config(connect_timeout=2, read_timeout=5, retries={"total_max_attempts": 1})
        )
        self._client: BaseClient | None = None
        self._presign_client: BaseClient | None = None
        self._probe_client: BaseClient | None = None

    @property
    def client(self) -> BaseClient:
        """The client for every operation, on endpoint_url."""
        if self._client is None:
            self._client = _new_client(self.endpoint_url, self._credentials, self._config)
        return self._client

    @property
    def presign_client(self) -> BaseClient:
        """The client that signs URLs for outside callers, on public_endpoint_url."""
        if self._presign_client is None:
            self._presign_client = _new_client(
                self.public_endpoint_url, self._credentials, self._config
            )
        return self._presign_client

    def ensure_ready(self) -> None:
        """Create the bucket if it does not exist yet (idempotent)."""
        with self._errors():
            try:
                self.client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if _error_code(exc) not in _NO_BUCKET_CODES:
                    raise
            self._create_bucket(self.client)

    def check(self) -> None:
        """Raise StorageUnavailable unless the bucket is reachable (one quick try).

        A missing bucket fails this check once and is created again, so the next one passes
        (what was stored in it is gone, which the log says).
        """
        if self._probe_client is None:
            self._probe_client = _new_client(
                self.endpoint_url, self._credentials, self._probe_config
            )
        with self._errors():
            try:
                self._probe_client.head_bucket(Bucket=self.bucket)
                return
            except ClientError as exc:
                if _error_code(exc) not in _NO_BUCKET_CODES:
                    raise
                missing = exc
            log.warning("%s does not exist: creating it", self._where())
            self._create_bucket(self._probe_client)
            raise StorageUnavailable(
                f"{self._where()} does not exist; it was created for the next try"
            ) from missing

    def put_file(self, key: str, path: Path, content_type: str | None = None) -> None:
        """Upload a local file (multipart above 16 MiB)."""

        def upload() -> None:
            self.client.upload_file(
                str(path), self.bucket, key, ExtraArgs=_extra(content_type), Config=self._transfer
            )

        with self._errors(key):
            self._into_the_bucket(upload, repeatable=True)

    def put_stream(self, key: str, stream: BinaryIO, content_type: str | None = None) -> None:
        """Upload from a binary stream, seekable or not, in bounded memory."""
        source: BinaryIO | _FullReads = stream if _seekable(stream) else _FullReads(stream)

        def upload() -> None:
            self.client.upload_fileobj(
                source, self.bucket, key, ExtraArgs=_extra(content_type), Config=self._transfer
            )

        # Not repeatable: the transfer manager has read (and closed) the stream.
        with self._errors(key):
            self._into_the_bucket(upload, repeatable=False)

    def iter_chunks(self, key: str, chunk_size: int = 1024 * 1024) -> Iterator[bytes]:
        """Stream an object's bytes; raises ObjectNotFound at call time, not on first next()."""
        with self._errors(key):
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            except ClientError as exc:
                if not _bucket_missing(exc):
                    raise
                self._create_bucket_again()
                raise ObjectNotFound(key) from exc  # a bucket made anew holds nothing
        return self._read_body(body, key, chunk_size)

    def download_file(self, key: str, path: Path) -> None:
        """Download an object to a local file (boto3 writes a temp file, then renames)."""
        with self._errors(key):
            self.client.download_file(self.bucket, key, str(path), Config=self._transfer)

    def size(self, key: str) -> int:
        """Size in bytes; raises ObjectNotFound."""
        with self._errors(key):
            return int(self.client.head_object(Bucket=self.bucket, Key=key)["ContentLength"])

    def exists(self, key: str) -> bool:
        """Whether an object is stored under key."""
        try:
            self.size(key)
        except ObjectNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        """Remove one object; a missing key is not an error (S3 answers 204 either way)."""
        with self._errors(key):
            try:
                self.client.delete_object(Bucket=self.bucket, Key=key)
            except ClientError as exc:
                if not _bucket_missing(exc):  # without its bucket, the object is gone too
                    raise

    def delete_prefix(self, prefix: str) -> None:
        """Remove every object whose key starts with prefix, and abort the multipart uploads
        under it that never completed (a killed attempt's), whose parts S3 keeps and bills."""
        with self._errors():
            uploads = self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            )
            for page in uploads:
                for upload in page.get("Uploads", []):
                    with suppress(self.client.exceptions.NoSuchUpload):  # just ended
                        self.client.abort_multipart_upload(
                            Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, PaginationConfig={"PageSize": _DELETE_BATCH}
            )
            for page in pages:
                objects = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if not objects:
                    continue
                response = self.client.delete_objects(
                    Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True}
                )
                if errors := response.get("Errors"):
                    first = errors[0]
                    raise StorageUnavailable(
                        f"{self._where()}: could not delete {len(errors)} object(s) under "
                        f"{prefix!r}, first {first.get('Key')!r}: {first.get('Message')}"
                    )

    def presigned_url(
        self, key: str, expires_s: int = 3600, filename: str | None = None
    ) -> str | None:
        """A GET URL signed for the public endpoint (None when not presigning); no request."""
        if not self.presign_downloads:
            return None
        params = {"Bucket": self.bucket, "Key": key}
        if filename:
            params["ResponseContentDisposition"] = _attachment(filename)
        with self._errors(key):
            url: str = self.presign_client.generate_presigned_url(
                "get_object", Params=params, ExpiresIn=expires_s
            )
        return url

    def _read_body(self, body: Any, key: str, chunk_size: int) -> Iterator[bytes]:
        try:
            with self._errors(key):
                yield from body.iter_chunks(chunk_size)
        finally:
            body.close()

    def _into_the_bucket(self, upload: Callable[[], None], *, repeatable: bool) -> None:
        """Run `upload`; if the bucket went missing, create it again and upload once more, or,
        when the data cannot be read twice, fail so that the caller sends it again."""
        try:
            upload()
        except (ClientError, Boto3Error) as exc:
            if not _bucket_missing(exc):
                raise
            self._create_bucket_again()
            if not repeatable:
                raise StorageUnavailable(
                    f"{self._where()} was missing and was created again; send the data again"
                ) from exc
            upload()

    def _create_bucket_again(self) -> None:
        """Recreate a bucket found missing mid-operation; a failure is logged, and the
        operation's own error then says the storage is unavailable."""
        log.warning(
            "%s is missing: creating it again (objects stored in it before are gone)",
            self._where(),
        )
        try:
            with self._errors():
                self._create_bucket(self.client)
        except StorageUnavailable as exc:
            log.warning("could not create %s again: %s", self._where(), exc)

    def _create_bucket(self, client: BaseClient) -> None:
        params: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
            params["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            client.create_bucket(**params)
        except ClientError as exc:
            # Another process started at the same time and won the race.
            if _error_code(exc) != "BucketAlreadyOwnedByYou":
                raise

    def _where(self) -> str:
        return f"S3 bucket {self.bucket!r} at {self.endpoint_url or 'AWS ' + self.region}"

    @contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        """Translate boto errors to the port's: ObjectNotFound, or StorageUnavailable."""
        try:
            yield
        except ParamValidationError:
            raise  # a bug in the caller, not an outage
        except ClientError as exc:
            code = _error_code(exc)
            if key is not None and code in _NOT_FOUND_CODES:
                raise ObjectNotFound(key) from exc
            if key is None and code in _NO_BUCKET_CODES:
                raise StorageUnavailable(f"{self._where()} does not exist") from exc
            raise StorageUnavailable(f"{self._where()}: {code}: {exc}") from exc
        except Boto3Error as exc:
            # The transfer manager wraps ClientError (e.g. S3UploadFailedError); look inside.
            cause = exc.__cause__
            missing = isinstance(cause, ClientError) and _error_code(cause) in _NOT_FOUND_CODES
            if key is not None and missing:
                raise ObjectNotFound(key) from exc
            raise StorageUnavailable(f"{self._where()}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageUnavailable(f"{self._where()} is unreachable: {exc}") from exc


_SESSION_LOCK = threading.Lock()


@functools.cache
def _shared_session() -> boto3.session.Session:
    return boto3.session.Session()


def _new_client(
    endpoint_url: str | None, credentials: dict[str, str | None], config: Config
) -> BaseClient:
    """An S3 client from one shared session, which caches the parsed service model (~0.1 s)."""
    # boto3 sessions are not thread-safe; clients are, once built.
    with _SESSION_LOCK:
        return _shared_session().client(
            "s3", endpoint_url=endpoint_url, config=config, **credentials
        )


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _bucket_missing(exc: BaseException) -> bool:
    """Whether S3 answered NoSuchBucket (the transfer manager wraps it, as cause or context)."""
    for error in (exc, exc.__cause__, exc.__context__):
        if isinstance(error, ClientError) and _error_code(error) == "NoSuchBucket":
            return True
    return False


def _extra(content_type: str | None) -> dict[str, str]:
    return {"ContentType": content_type} if content_type else {}


def _attachment(filename: str) -> str:
    """Content-Disposition with an ASCII fallback and an RFC 5987 UTF-8 name."""
    safe = (c.isascii() and c.isprintable() and c not in '"\\' for c in filename)
    fallback = "".join(c if ok else "_" for c, ok in zip(filename, safe, strict=True))
    value = f'attachment; filename="{fallback}"'
    if fallback != filename:
        value += f"; filename*=UTF-8''{quote(filename, safe='')}"
    return value


def _seekable(stream: BinaryIO) -> bool:
    try:
        return bool(stream.seekable())
    except (AttributeError, ValueError):
        return False


class _FullReads:
    """Make read(n) return n bytes unless at EOF.

    The transfer manager decides "single PUT" when its first read comes back short, and then
    reads the rest of the stream into memory at once; sockets and pipes do return short reads.
    """

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self._stream.read()
        parts: list[bytes] = []
        remaining = size
        while remaining > 0 and (chunk := self._stream.read(remaining)):
            parts.append(chunk)
            remaining -= len(chunk)
        return b"".join(parts)
