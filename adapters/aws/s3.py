"""S3BlobStore: the BlobStore port on an S3 bucket (batch input and output files, uploaded files)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from core.line_splitter import LineSplitter

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

READ_CHUNK = 256 * 1024
PART_SIZE = 8 * 1024 * 1024  # S3 wants every part but the last to be at least 5 MiB
MIN_PART_SIZE = 5 * 1024 * 1024
_MISSING = frozenset({"NoSuchKey", "404", "NotFound", "NoSuchVersion"})


class S3BlobStore:
    """Objects under ``prefix`` in ``bucket``. Needs s3:GetObject, PutObject, DeleteObject, ListBucket
    (without ListBucket a missing object answers 403, not 404) and, for big writes, the multipart calls."""

    def __init__(
        self, bucket: str, client: S3Client | None = None, *, prefix: str = "", part_size: int = PART_SIZE
    ) -> None:
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes")
        self._bucket = bucket
        self._prefix = prefix
        self._part_size = part_size
        self._given = client
        self._client: S3Client | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> S3Client:
        """The client passed in, else one created on first use and kept for the container."""
        if self._given is not None:
            return self._given
        with self._lock:
            if self._client is None:
                import boto3

                self._client = boto3.client("s3")
            return self._client

    def read_lines(self, key: str, max_line_bytes: int | None = None) -> AsyncIterator[bytes]:
        """Stream the object's lines; a missing object raises FileNotFoundError on first iteration."""
        return self._lines(self._key(key), max_line_bytes)

    async def _lines(self, key: str, max_line_bytes: int | None) -> AsyncIterator[bytes]:
        body = await asyncio.to_thread(self._get, key)
        splitter = LineSplitter(max_line_bytes)
        try:
            while chunk := await asyncio.to_thread(body.read, READ_CHUNK):
                for line in splitter.feed(chunk):
                    yield line
            for line in splitter.close():
                yield line
        finally:
            body.close()

    def _get(self, key: str) -> Any:
        try:
            return self.client.get_object(Bucket=self._bucket, Key=key)["Body"]
        except ClientError as exc:
            raise _not_found(exc, key) from None

    def write_object(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self._bucket, Key=self._key(key), Body=data)

    def write_lines(self, key: str, lines: Iterable[bytes]) -> int:
        """One PutObject when it all fits in a part, else a multipart upload fed part by part."""
        full_key = self._key(key)
        buffer = bytearray()
        size = 0
        upload: _Upload | None = None
        try:
            for line in lines:
                buffer += line
                buffer += b"\n"
                size += len(line) + 1
                if len(buffer) >= self._part_size:
                    upload = upload or _Upload(self.client, self._bucket, full_key)
                    upload.send(bytes(buffer[: self._part_size]))
                    del buffer[: self._part_size]
            if upload is None:
                self.client.put_object(Bucket=self._bucket, Key=full_key, Body=bytes(buffer))
                return size
            if buffer:
                upload.send(bytes(buffer))
            upload.complete()
        except BaseException:
            if upload is not None:
                upload.abort()
            raise
        return size

    def read_object(self, key: str) -> bytes:
        body = self._get(self._key(key))
        try:
            data: bytes = body.read()
        finally:
            body.close()
        return data

    def delete_object(self, key: str) -> bool:
        """True if there was an object to delete (with versioning on, a delete marker now hides it)."""
        full_key = self._key(key)
        if self._head(full_key) is None:
            return False
        self.client.delete_object(Bucket=self._bucket, Key=full_key)
        return True

    def object_version(self, key: str) -> str | None:
        """The S3 version id when the bucket versions objects, else the ETag; None when absent."""
        head = self._head(self._key(key))
        if head is None:
            return None
        version = head.get("VersionId")
        if version and version != "null":
            return str(version)
        return str(head.get("ETag", "")).strip('"') or None

    def _head(self, key: str) -> dict[str, Any] | None:
        try:
            return dict(self.client.head_object(Bucket=self._bucket, Key=key))
        except ClientError as exc:
            if _is_missing(exc):
                return None
            raise

    def _key(self, key: str) -> str:
        if not key or key.startswith("/") or "\x00" in key:
            raise ValueError(f"invalid blob key: {key!r}")
        return self._prefix + key


class _Upload:
    """One multipart upload: parts are sent as they fill; abort on any failure."""

    def __init__(self, client: S3Client, bucket: str, key: str) -> None:
        self._client, self._bucket, self._key = client, bucket, key
        self._id = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
        self._parts: list[dict[str, Any]] = []

    def send(self, data: bytes) -> None:
        number = len(self._parts) + 1
        etag = self._client.upload_part(
            Bucket=self._bucket, Key=self._key, UploadId=self._id, PartNumber=number, Body=data
        )["ETag"]
        self._parts.append({"ETag": etag, "PartNumber": number})

    def complete(self) -> None:
        self._client.complete_multipart_upload(
            Bucket=self._bucket,
            Key=self._key,
            UploadId=self._id,
            MultipartUpload={"Parts": self._parts},  # type: ignore[typeddict-item]
        )

    def abort(self) -> None:
        # Best effort: the bucket's lifecycle rule for incomplete uploads cleans up what this cannot.
        with contextlib.suppress(ClientError):
            self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=self._id)


def _is_missing(exc: ClientError) -> bool:
    return str(exc.response.get("Error", {}).get("Code", "")) in _MISSING


def _not_found(exc: ClientError, key: str) -> Exception:
    return FileNotFoundError(key) if _is_missing(exc) else exc
