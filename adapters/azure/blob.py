"""AzureBlobStore: the BlobStore port on a Blob Storage container (batch input and output files, uploaded files).

Reads are pinned to the content they began on: the first ranged GET answers the blob's ETag (and its version id
where the account versions blobs), and every later ranged GET of the same read asks for that version, else
``If-Match`` that ETag, so an overwrite while reading is never mixed into the lines: the old version is read on
to the end where the account keeps versions, else the read fails with ``BlobChanged``. Big writes are block
uploads (Put Block per ``block_size``, then one Put Block List): the blob appears, whole, only at the commit; a
source that fails midway leaves the previous blob (or none), and the uncommitted blocks are dropped by the
service (within a week, or at the blob's next commit). Errors: ``adapters.azure.blob_errors``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar

from azure.core import MatchConditions
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError
from azure.storage.blob import BlobBlock, BlobClient, ContainerClient, ExponentialRetry

from adapters.azure.blob_errors import is_blob_missing, translated
from core.line_splitter import LineSplitter

READ_CHUNK = 1024 * 1024  # bytes per ranged GET while streaming a blob's lines
BLOCK_SIZE = 8 * 1024 * 1024  # one Put Block of a big write (Blob Storage allows up to 50,000 blocks)
T = TypeVar("T")


class AzureBlobStore:
    """Blobs under ``prefix`` in the container of ``container_client`` (an ``azure.storage.blob.ContainerClient``;
    ``open_blob_store`` builds one). Needs the data role Storage Blob Data Contributor on the container.

    Every call blocks: core runs them on its store threads, and ``read_lines`` does each read on a thread of
    its own. Beyond the port: ``list_keys(prefix)``, and ``if_absent=True`` on writes (``If-None-Match: *``: a
    blob already there raises ``FileExistsError`` and is left as it was).
    """

    def __init__(
        self,
        container_client: ContainerClient,
        *,
        prefix: str = "",
        block_size: int = BLOCK_SIZE,
        read_chunk: int = READ_CHUNK,
    ) -> None:
        if block_size <= 0:
            raise ValueError("block_size must be positive")
        if read_chunk <= 0:
            raise ValueError("read_chunk must be positive")
        self.container_client = container_client
        self._prefix = prefix
        self._block = block_size
        self._read_chunk = read_chunk

    def read_lines(self, key: str, max_line_bytes: int | None = None) -> AsyncIterator[bytes]:
        """Stream the blob's lines, pinned to the version the read began on (see the module's docstring); a
        missing blob raises FileNotFoundError on first iteration."""
        return self._lines(self._name(key), max_line_bytes)

    async def _lines(self, name: str, max_line_bytes: int | None) -> AsyncIterator[bytes]:
        first = await asyncio.to_thread(self._first_range, name)
        if first is None:
            return
        data, size, pin = first
        splitter = LineSplitter(max_line_bytes)
        for line in splitter.feed(data):
            yield line
        for start in range(self._read_chunk, size, self._read_chunk):
            chunk = await asyncio.to_thread(self._range, name, start, pin)
            for line in splitter.feed(chunk):
                yield line
        for line in splitter.close():
            yield line

    def _first_range(self, name: str) -> tuple[bytes, int, dict[str, Any]] | None:
        """The first range, the blob's size and how to ask for that same version again; None when empty."""
        try:
            download = self.container_client.download_blob(name, offset=0, length=self._read_chunk)
            data = download.readall()
        except HttpResponseError as exc:
            if exc.status_code == 416:  # a range of an empty blob: there is nothing to read
                return None
            raise translated(exc, name) from None
        except AzureError as exc:
            raise translated(exc, name) from None
        found = download.properties
        pin: dict[str, Any] = (
            {"version_id": found.version_id}
            if found.version_id
            else {"etag": found.etag, "match_condition": MatchConditions.IfNotModified}
        )
        return data, _total(str(found.content_range)), pin

    def _range(self, name: str, start: int, pin: dict[str, Any]) -> bytes:
        return _call(name, _read, self.container_client, name, start, self._read_chunk, pin)

    def write_object(self, key: str, data: bytes, *, if_absent: bool = False) -> None:
        """One Put Blob up to ``block_size`` bytes, else a block upload."""
        self._write(self._name(key), _pieces(bytes(data), self._block), if_absent)

    def write_lines(self, key: str, lines: Iterable[bytes], *, if_absent: bool = False) -> int:
        """Write the lines, newline-terminated, as one blob: one Put Blob when it all fits in a block, else a
        block upload fed block by block (memory: one block and one line); returns the bytes written."""
        counted = _Counted(lines)
        self._write(self._name(key), _blocks(counted, self._block), if_absent)
        return counted.size

    def _write(self, name: str, blocks: Iterator[bytes], if_absent: bool) -> None:
        blob = self.container_client.get_blob_client(name)  # a handle: no request
        condition: dict[str, Any] = {"match_condition": MatchConditions.IfMissing} if if_absent else {}
        ahead = [next(blocks, b"")]
        following = next(blocks, None)
        if following is None:
            _call(name, blob.upload_blob, ahead[0], overwrite=not if_absent, create_only=if_absent, **condition)
            return
        ahead.append(following)
        del following
        upload = uuid.uuid4().hex  # block ids of one length for every upload (the service wants that per blob)
        ids: list[BlobBlock] = []
        for data in _drained(ahead, blocks):
            block_id = f"{upload}{len(ids):08d}"  # the client base64-encodes it
            _call(name, _stage, blob, block_id, data)
            ids.append(BlobBlock(block_id=block_id))
        _call(name, blob.commit_block_list, ids, create_only=if_absent, **condition)

    def read_object(self, key: str) -> bytes:
        """The whole blob (the client reads a big one in ranges, each ``If-Match`` the first one's ETag)."""
        name = self._name(key)
        return _call(name, _read, self.container_client, name, None, None, {})

    def delete_object(self, key: str) -> bool:
        """True if there was a blob to delete (with its snapshots; where the account versions blobs, the
        current version becomes a previous one); one request."""
        name = self._name(key)
        try:
            self.container_client.delete_blob(name, delete_snapshots="include")
        except AzureError as exc:
            if is_blob_missing(exc):
                return False
            raise translated(exc, name) from None
        return True

    def object_version(self, key: str) -> str | None:
        """The blob's ETag without its quotes (a new one at every write, also of the same bytes); None when
        absent."""
        name = self._name(key)
        try:
            found = self.container_client.get_blob_client(name).get_blob_properties()
        except AzureError as exc:
            if is_blob_missing(exc):
                return None
            raise translated(exc, name) from None
        return str(found.etag).strip('"') or None

    def list_keys(self, prefix: str = "") -> Iterator[str]:
        """The keys that begin with ``prefix`` (under the store's own prefix), in name order, paged lazily."""
        names = self.container_client.list_blob_names(name_starts_with=self._prefix + prefix)
        cut = len(self._prefix)
        while True:
            try:
                name = next(names)
            except StopIteration:
                return
            except AzureError as exc:
                raise translated(exc, self._prefix + prefix) from None
            yield name[cut:]

    def _name(self, key: str) -> str:
        if not key or key.startswith("/") or "\x00" in key:
            raise ValueError(f"invalid blob key: {key!r}")
        return self._prefix + key


def open_blob_store(
    account_url: str | None = None,
    *,
    connection_string: str | None = None,
    credential: Any = None,
    container: str,
    create: bool = False,
    prefix: str = "",
    block_size: int = BLOCK_SIZE,
    read_chunk: int = READ_CHUNK,
    **client_options: Any,
) -> AzureBlobStore:
    """An ``AzureBlobStore`` on ``container``: with a connection string (Azurite, an account key) that string,
    else ``account_url`` with ``credential``, by default azure-identity's ``DefaultAzureCredential`` (the
    Function App's managed identity; azure-identity is imported only then). ``create`` makes the container if
    it does not exist. ``client_options`` go to the ``ContainerClient`` (``transport``, ``raw_request_hook``,
    timeouts); the retry policy defaults to ``default_retry()``."""
    client_options.setdefault("retry_policy", default_retry())
    if connection_string:
        if credential is not None:
            client_options["credential"] = credential
        client = ContainerClient.from_connection_string(connection_string, container, **client_options)
    elif account_url:
        client = ContainerClient(
            account_url,
            container,
            credential=credential if credential is not None else _default_credential(),
            **client_options,
        )
    else:
        raise ValueError("open_blob_store needs an account URL or a connection string")
    if create:
        try:
            client.create_container()
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise translated(exc, container) from None
    return AzureBlobStore(client, prefix=prefix, block_size=block_size, read_chunk=read_chunk)


def default_retry() -> ExponentialRetry:
    """Up to 4 retries after about 1, 3, 5 and 9 s (the SDK's default waits 15 s, then 18 and 24)."""
    return ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=4, random_jitter_range=1)


def _default_credential() -> Any:
    try:
        from azure.identity import DefaultAzureCredential
    except ImportError:  # an optional dependency: a deployment on connection strings never needs it
        raise RuntimeError("Blob Storage without a connection string needs azure-identity") from None
    return DefaultAzureCredential()


def _call(name: str, call: Callable[..., T], *args: Any, create_only: bool = False, **kwargs: Any) -> T:
    """``call(*args, **kwargs)`` with its Azure errors translated for the blob ``name``."""
    try:
        return call(*args, **kwargs)
    except AzureError as exc:
        raise translated(exc, name, create_only=create_only) from None


def _read(client: ContainerClient, name: str, offset: int | None, length: int | None, pin: dict[str, Any]) -> bytes:
    data: bytes = client.download_blob(name, offset, length, **pin).readall()
    return data


def _stage(blob: BlobClient, block_id: str, data: bytes) -> None:
    blob.stage_block(block_id, data, length=len(data))


def _total(content_range: str) -> int:
    """The blob's size from a Content-Range, ``bytes 0-1048575/7340032``."""
    return int(content_range.rpartition("/")[2])


class _Counted:
    """Lines with their newlines, counting the bytes."""

    def __init__(self, lines: Iterable[bytes]) -> None:
        self._lines = lines
        self.size = 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self._lines:
            self.size += len(line) + 1
            yield line


def _blocks(lines: Iterable[bytes], block: int) -> Iterator[bytes]:
    """The newline-terminated lines in pieces of exactly ``block`` bytes (the last one shorter, maybe empty)."""
    buffer = bytearray()
    for line in lines:
        buffer += line
        buffer += b"\n"
        while len(buffer) >= block:
            yield bytes(buffer[:block])
            del buffer[:block]
    if buffer:
        yield bytes(buffer)


def _pieces(data: bytes, block: int) -> Iterator[bytes]:
    for start in range(0, len(data), block):
        yield data[start : start + block]


def _drained(ahead: list[bytes], rest: Iterator[bytes]) -> Iterator[bytes]:
    """``ahead``'s pieces (each let go of once given: memory holds one block at a time), then ``rest``'s."""
    while ahead:
        yield ahead.pop(0)
    yield from rest
