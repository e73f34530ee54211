"""GCSBlobStore: the BlobStore port on a Cloud Storage bucket (batch input and output files, uploaded files)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterable
from typing import Any

from core.line_splitter import LineSplitter

READ_CHUNK = 1024 * 1024  # bytes per ranged GET while streaming an object's lines
CHUNK_SIZE = 8 * 1024 * 1024  # a resumable upload's chunk; Cloud Storage wants a multiple of 256 KiB
CHUNK_MULTIPLE = 256 * 1024


class GCSBlobStore:
    """Objects under ``prefix`` in ``bucket``. Needs storage.objects.get, create and delete (an overwrite
    needs delete too): ``roles/storage.objectUser`` on the bucket.

    ``client`` is a ``google.cloud.storage.Client``; without one, one is created on first use (it honours
    ``STORAGE_EMULATOR_HOST``). Every call blocks: core runs them on its store threads, and ``read_lines``
    does each read on a thread of its own.
    """

    def __init__(
        self,
        bucket: str,
        client: Any | None = None,
        *,
        prefix: str = "",
        chunk_size: int = CHUNK_SIZE,
        read_chunk: int = READ_CHUNK,
    ) -> None:
        if chunk_size <= 0 or chunk_size % CHUNK_MULTIPLE:
            raise ValueError(f"chunk_size must be a positive multiple of {CHUNK_MULTIPLE} bytes")
        if read_chunk <= 0:
            raise ValueError("read_chunk must be positive")
        self._bucket_name = bucket
        self._prefix = prefix
        self._chunk = chunk_size
        self._read_chunk = read_chunk
        self._given = client
        self._client: Any | None = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The client passed in, else one created on first use and kept for the instance."""
        if self._given is not None:
            return self._given
        with self._lock:
            if self._client is None:
                from google.cloud import storage  # type: ignore[import-untyped,attr-defined,unused-ignore]

                self._client = storage.Client()
            return self._client

    def read_lines(self, key: str, max_line_bytes: int | None = None) -> AsyncIterator[bytes]:
        """Stream the object's lines; a missing object raises FileNotFoundError on first iteration.

        The object's generation is read first and every ranged read asks for that generation, so an
        overwrite while reading is never mixed into the lines: the old content is read on to the end
        where the bucket keeps noncurrent versions, else the read fails with FileNotFoundError.
        """
        return self._lines(self._name(key), max_line_bytes)

    async def _lines(self, name: str, max_line_bytes: int | None) -> AsyncIterator[bytes]:
        generation, size = await asyncio.to_thread(self._current, name)
        splitter = LineSplitter(max_line_bytes)
        for start in range(0, size, self._read_chunk):
            chunk = await asyncio.to_thread(self._read, name, generation, start)
            for line in splitter.feed(chunk):
                yield line
        for line in splitter.close():
            yield line

    def _current(self, name: str) -> tuple[int, int]:
        """The object's generation and size."""
        found = self._bucket().get_blob(name)
        if found is None:
            raise FileNotFoundError(name)
        return int(found.generation), int(found.size or 0)

    def _read(self, name: str, generation: int, start: int) -> bytes:
        """One ranged GET of that generation (a blob handle of its own: a download updates its handle's
        generation from the response's headers)."""
        from google.api_core.exceptions import NotFound

        blob = self._bucket().blob(name, generation=generation)
        try:
            data: bytes = blob.download_as_bytes(start=start, end=start + self._read_chunk - 1, checksum=None)
        except NotFound:  # that generation is gone (overwritten in a bucket without versioning, or deleted)
            raise FileNotFoundError(name) from None
        return data

    def write_object(self, key: str, data: bytes) -> None:
        self._bucket().blob(self._name(key)).upload_from_string(bytes(data))

    def write_lines(self, key: str, lines: Iterable[bytes]) -> int:
        """One upload when it all fits in a chunk, else a resumable upload fed chunk by chunk.

        The object appears only when the upload is finalised: a source that fails midway leaves the
        previous object (or none) in place, and the unfinished upload is cancelled.
        """
        blob = self._bucket().blob(self._name(key))
        buffer = bytearray()
        size = 0
        writer: Any | None = None
        try:
            for line in lines:
                buffer += line
                buffer += b"\n"
                size += len(line) + 1
                if len(buffer) >= self._chunk:
                    writer = writer or blob.open("wb", chunk_size=self._chunk)
                    writer.write(bytes(buffer[: self._chunk]))
                    del buffer[: self._chunk]
            if writer is None:
                blob.upload_from_string(bytes(buffer))
                return size
            writer.write(bytes(buffer))
            writer.close()
        except BaseException:
            if writer is not None:
                with contextlib.suppress(Exception):  # best effort: an unfinished upload expires in a week
                    writer.terminate()
            raise
        return size

    def read_object(self, key: str) -> bytes:
        from google.api_core.exceptions import NotFound

        name = self._name(key)
        try:
            data: bytes = self._bucket().blob(name).download_as_bytes()
        except NotFound:
            raise FileNotFoundError(name) from None
        return data

    def delete_object(self, key: str) -> bool:
        """True if there was an object to delete; one call (with versioning on, it becomes noncurrent)."""
        from google.api_core.exceptions import NotFound

        try:
            self._bucket().blob(self._name(key)).delete()
        except NotFound:
            return False
        return True

    def object_version(self, key: str) -> str | None:
        """The object's generation (a new one at every write, also of the same bytes); None when absent."""
        found = self._bucket().get_blob(self._name(key))
        return None if found is None or found.generation is None else str(found.generation)

    def _bucket(self) -> Any:
        return self.client.bucket(self._bucket_name)  # a handle: no request

    def _name(self, key: str) -> str:
        if not key or key.startswith("/") or "\x00" in key:
            raise ValueError(f"invalid blob key: {key!r}")
        return self._prefix + key
