"""BlobStore contract: streamed lines, whole objects, versions and deletes on every implementation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from adapters.local.blobs import FileBlobStore
from adapters.local.memory_blobs import MemoryBlobStore
from core.ports import BlobStore


@pytest.fixture(
    params=[
        "memory",
        "file",
        pytest.param("s3", marks=pytest.mark.aws),
        pytest.param("gcs", marks=pytest.mark.gcp),
        pytest.param("azure", marks=pytest.mark.azure),
    ]
)
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStore:
    if request.param == "memory":
        return MemoryBlobStore()
    if request.param == "s3":
        return _s3()
    if request.param == "gcs":
        return _gcs()
    if request.param == "azure":
        return _azure()
    return FileBlobStore(tmp_path / "bucket")


def _s3() -> BlobStore:
    """S3 on the run's shared moto server, a bucket per test; parts of the smallest size S3 allows."""
    import uuid

    from adapters.aws.s3 import MIN_PART_SIZE, S3BlobStore
    from tests.contract._backends import boto_client, shared_moto_url

    client = boto_client("s3", shared_moto_url())
    bucket = f"textnlp-blobs-{uuid.uuid4().hex[:20]}"
    client.create_bucket(Bucket=bucket)
    return S3BlobStore(bucket, client, part_size=MIN_PART_SIZE)


def _gcs() -> BlobStore:
    """Cloud Storage on the in-process emulator (shared by the run), a bucket per test; reads of 64 kB, so
    the long lines of the suite span several ranged GETs."""
    from adapters.gcp.gcs import CHUNK_MULTIPLE, GCSBlobStore
    from tests.gcp.gcs_emulator import new_bucket, storage_client

    client = storage_client()
    return GCSBlobStore(new_bucket(client), client, chunk_size=CHUNK_MULTIPLE, read_chunk=64 * 1024)


def _azure() -> BlobStore:
    """Blob Storage on the session's Azurite, a container per test; reads and blocks of 64 kB, so the long lines
    of the suite span several ranged GETs and its big objects are block uploads."""
    from adapters.azure.blob import AzureBlobStore
    from tests.azure.azurite import new_container

    return AzureBlobStore(new_container(), block_size=64 * 1024, read_chunk=64 * 1024)


def _lines(blobs: BlobStore, key: str, max_line_bytes: int | None = None) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [line async for line in blobs.read_lines(key, max_line_bytes)]

    return asyncio.run(collect())


def test_write_object_then_read_lines_and_object(blobs: BlobStore) -> None:
    blobs.write_object("files/t1/f1", b'{"a":1}\r\n\n{"b":2}\nlast')
    assert _lines(blobs, "files/t1/f1") == [b'{"a":1}', b"", b'{"b":2}', b"last"]
    assert blobs.read_object("files/t1/f1") == b'{"a":1}\r\n\n{"b":2}\nlast'


def test_write_lines_streams_a_generator_and_returns_the_size(blobs: BlobStore) -> None:
    size = blobs.write_lines("out/x.jsonl", (b"line %d" % i for i in range(1000)))
    data = blobs.read_object("out/x.jsonl")
    assert size == len(data)
    assert data.endswith(b"line 999\n")
    assert _lines(blobs, "out/x.jsonl") == [b"line %d" % i for i in range(1000)]
    assert blobs.write_lines("out/empty", iter(())) == 0
    assert blobs.read_object("out/empty") == b""
    assert _lines(blobs, "out/empty") == []


def test_long_lines_are_cut_to_one_byte_over_the_limit(blobs: BlobStore) -> None:
    exact = b"a" * 100
    over = b"b" * 101
    huge = b"c" * 300_000
    blobs.write_object("k", exact + b"\r\n" + over + b"\n" + huge + b"\r\n" + b"after\n" + huge)
    got = _lines(blobs, "k", max_line_bytes=100)
    assert got == [exact, over, b"c" * 101, b"after", b"c" * 101]
    assert _lines(blobs, "k")[2] == huge  # without a limit nothing is cut


def test_versions_change_with_content_and_vanish_with_the_object(blobs: BlobStore) -> None:
    assert blobs.object_version("nope") is None
    blobs.write_object("k", b"one\n")
    v1 = blobs.object_version("k")
    assert v1 is not None
    assert blobs.object_version("k") == v1  # stable while the object is unchanged
    blobs.write_object("k", b"two\n")
    v2 = blobs.object_version("k")
    assert v2 is not None
    assert v2 != v1
    assert blobs.delete_object("k") is True
    assert blobs.delete_object("k") is False
    assert blobs.object_version("k") is None


def test_missing_objects_raise_file_not_found(blobs: BlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        blobs.read_object("missing")
    with pytest.raises(FileNotFoundError):
        _lines(blobs, "missing")


def test_overwrite_replaces_the_whole_object(blobs: BlobStore) -> None:
    blobs.write_object("k", b"a\n" * 1000)
    blobs.write_lines("k", [b"b"])
    assert blobs.read_object("k") == b"b\n"
