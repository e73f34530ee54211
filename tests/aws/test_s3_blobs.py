"""S3BlobStore against moto: the BlobStore contract, multipart writes, streamed reads, versions."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from adapters.aws.s3 import MIN_PART_SIZE, S3BlobStore
from core.line_splitter import LineSplitter
from core.ports import BlobStore

# The behavioural suite every BlobStore passes, run here on S3 (see ``test_blob_store_contract``).
from tests.contract import test_blob_store_contract as contract

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client

pytestmark = pytest.mark.aws
BUCKET = "textnlp-batch"
CONTRACT = [getattr(contract, name) for name in sorted(dir(contract)) if name.startswith("test_")]


@pytest.fixture(params=["unversioned", "versioned"])
def blobs(request: pytest.FixtureRequest, s3: S3Client) -> BlobStore:
    s3.create_bucket(Bucket=BUCKET)
    if request.param == "versioned":
        s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    return S3BlobStore(BUCKET, s3)


def lines_of(store: BlobStore, key: str, max_line_bytes: int | None = None) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [line async for line in store.read_lines(key, max_line_bytes)]

    return asyncio.run(collect())


def numbered(count: int, width: int) -> Iterator[bytes]:
    for i in range(count):
        yield b"%08d " % i + b"x" * (width - 9)


def test_big_writes_go_multipart_and_read_back_streamed(s3: S3Client) -> None:
    s3.create_bucket(Bucket=BUCKET)
    store = S3BlobStore(BUCKET, s3, part_size=MIN_PART_SIZE)
    count, width = 12_000, 1000  # ~12 MB: two full parts and a short last one
    size = store.write_lines("out/big.jsonl", numbered(count, width))
    assert size == count * (width + 1)
    head = s3.head_object(Bucket=BUCKET, Key="out/big.jsonl")
    assert head["ContentLength"] == size
    assert head["ETag"].strip('"').endswith("-3")  # a multipart ETag names its part count
    got = 0
    for i, line in enumerate(lines_of(store, "out/big.jsonl")):
        assert line.startswith(b"%08d " % i)
        got += 1
    assert got == count
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []


def test_small_writes_are_one_put(s3: S3Client) -> None:
    s3.create_bucket(Bucket=BUCKET)
    store = S3BlobStore(BUCKET, s3)
    assert store.write_lines("small", [b"a", b"b"]) == 4
    assert "-" not in s3.head_object(Bucket=BUCKET, Key="small")["ETag"]


def test_a_failing_source_aborts_the_multipart_upload(s3: S3Client) -> None:
    s3.create_bucket(Bucket=BUCKET)
    store = S3BlobStore(BUCKET, s3, part_size=MIN_PART_SIZE)

    def source() -> Iterator[bytes]:
        yield from numbered(6000, 1000)
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        store.write_lines("out/partial", source())
    assert s3.list_multipart_uploads(Bucket=BUCKET).get("Uploads", []) == []
    assert store.object_version("out/partial") is None


def test_versions_are_version_ids_when_versioning_is_on_else_etags(s3: S3Client) -> None:
    s3.create_bucket(Bucket=BUCKET)
    store = S3BlobStore(BUCKET, s3)
    store.write_object("k", b"one\n")
    assert store.object_version("k") == s3.head_object(Bucket=BUCKET, Key="k")["ETag"].strip('"')
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    store.write_object("k", b"one\n")  # same content, new version
    version = store.object_version("k")
    assert version == s3.head_object(Bucket=BUCKET, Key="k")["VersionId"]
    store.write_object("k", b"one\n")
    assert store.object_version("k") not in (None, version)
    assert store.delete_object("k") is True
    assert store.object_version("k") is None  # hidden by a delete marker
    assert store.delete_object("k") is False


def test_missing_bucket_or_key(s3: S3Client) -> None:
    s3.create_bucket(Bucket=BUCKET)
    store = S3BlobStore(BUCKET, s3)
    lines = store.read_lines("absent")  # nothing happens before the first iteration

    async def first() -> bytes:
        return await anext(lines)

    with pytest.raises(FileNotFoundError):
        asyncio.run(first())
    assert store.delete_object("absent") is False
    from botocore.exceptions import ClientError

    with pytest.raises(ClientError):
        S3BlobStore("no-such-bucket", s3).write_object("k", b"x")


def test_prefix_and_key_checks(s3: S3Client) -> None:
    s3.create_bucket(Bucket=BUCKET)
    store = S3BlobStore(BUCKET, s3, prefix="tenants/t1/")
    store.write_object("f.jsonl", b"x\n")
    assert s3.get_object(Bucket=BUCKET, Key="tenants/t1/f.jsonl")["Body"].read() == b"x\n"
    for bad in ("", "/abs", "a\x00b"):
        with pytest.raises(ValueError, match="invalid blob key"):
            store.read_object(bad)
    with pytest.raises(ValueError, match="part_size"):
        S3BlobStore(BUCKET, s3, part_size=1024)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 10_000])
def test_line_splitter_is_independent_of_chunk_boundaries(chunk: int) -> None:
    data = b"a" * 10 + b"\r\n" + b"b" * 11 + b"\n" + b"c" * 12 + b"\r\n\n" + b"d" * 9 + b"\r\nend\r"
    splitter = LineSplitter(max_line_bytes=10)
    got: list[bytes] = []
    for start in range(0, len(data), chunk):
        got += splitter.feed(data[start : start + chunk])
    got += splitter.close()
    assert got == [b"a" * 10, b"b" * 11, b"c" * 11, b"", b"d" * 9, b"end\r"]


def test_line_splitter_holds_at_most_the_limit_of_a_huge_line() -> None:
    splitter = LineSplitter(max_line_bytes=100)
    assert splitter.feed(b"x" * 50) == []
    assert splitter.feed(b"x" * 1_000_000) == [b"x" * 101]
    assert splitter.feed(b"y" * 1_000_000) == []  # skipped as it arrives
    assert splitter.feed(b"yy\nnext\n") == [b"next"]
    assert splitter.close() == []


@pytest.mark.parametrize("contract_test", CONTRACT, ids=lambda f: f.__name__.removeprefix("test_"))
def test_blob_store_contract(contract_test: object, blobs: BlobStore) -> None:
    contract_test(blobs)  # type: ignore[operator]
