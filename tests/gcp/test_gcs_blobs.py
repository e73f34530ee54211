"""GCSBlobStore on the Cloud Storage emulator: what the BlobStore contract does not cover (the contract suite
runs on it from tests/contract): resumable writes, what a failed write leaves, the requests each call costs,
reads pinned to a generation and kept off the event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from google.api_core.exceptions import NotFound

from adapters.gcp.gcs import CHUNK_MULTIPLE, GCSBlobStore
from core.line_splitter import LineSplitter
from tests.gcp.conftest import RecordingSession

pytestmark = pytest.mark.gcp


def lines_of(store: GCSBlobStore, key: str, max_line_bytes: int | None = None) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [line async for line in store.read_lines(key, max_line_bytes)]

    return asyncio.run(collect())


def numbered(count: int, width: int) -> Iterator[bytes]:
    for i in range(count):
        yield b"%08d " % i + b"x" * (width - 9)


def test_big_writes_are_one_resumable_upload_and_read_back_streamed(
    gcs_client: Any, gcs_session: RecordingSession, bucket: str
) -> None:
    store = GCSBlobStore(bucket, gcs_client, chunk_size=CHUNK_MULTIPLE, read_chunk=100_000)
    count, width = 700, 1000  # ~700 kB: two full chunks of 256 KiB and a short last one
    gcs_session.sent.clear()
    size = store.write_lines("out/big.jsonl", numbered(count, width))
    assert size == count * (width + 1)
    uploads = [s for s in gcs_session.sent if "/upload/" in s.url]
    assert [parse_qs(urlsplit(s.url).query).get("uploadType") for s in uploads[:1]] == [["resumable"]]
    assert len(uploads) == 1 + 3  # the session, then one request per chunk
    assert gcs_client.bucket(bucket).get_blob("out/big.jsonl").size == size
    gcs_session.sent.clear()
    got = lines_of(store, "out/big.jsonl")
    assert got == list(numbered(count, width))
    downloads = [s for s in gcs_session.sent if "alt=media" in s.url]
    assert len(downloads) == -(-size // 100_000)  # ranged GETs of 100 kB, the size known from the first call


def test_small_writes_and_each_call_cost_one_request(
    gcs_client: Any, gcs_session: RecordingSession, bucket: str
) -> None:
    store = GCSBlobStore(bucket, gcs_client)

    def generation() -> str:
        return str(gcs_client.bucket(bucket).get_blob("small").generation)

    for call, expected in [
        (lambda: store.write_lines("small", [b"a", b"b"]), lambda: 4),
        (lambda: store.write_object("obj", b"x"), lambda: None),
        (lambda: store.read_object("small"), lambda: b"a\nb\n"),
        (lambda: store.object_version("small"), generation),
        (lambda: store.delete_object("small"), lambda: True),
        (lambda: store.delete_object("small"), lambda: False),
    ]:
        gcs_session.sent.clear()
        got = call()
        assert len(gcs_session.made) == 1, gcs_session.sent
        assert got == expected()


def test_a_failing_source_leaves_the_previous_object_in_place(gcs_client: Any, bucket: str) -> None:
    store = GCSBlobStore(bucket, gcs_client, chunk_size=CHUNK_MULTIPLE)
    store.write_object("out/partial", b"before\n")
    version = store.object_version("out/partial")

    def source() -> Iterator[bytes]:
        yield from numbered(600, 1000)  # two chunks sent before it fails
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        store.write_lines("out/partial", source())
    assert store.read_object("out/partial") == b"before\n"
    assert store.object_version("out/partial") == version
    with pytest.raises(RuntimeError, match="producer failed"):
        store.write_lines("out/new", source())
    assert store.object_version("out/new") is None


def test_versions_are_generations_new_at_every_write(gcs_client: Any, bucket: str) -> None:
    store = GCSBlobStore(bucket, gcs_client)
    store.write_object("k", b"one\n")
    version = store.object_version("k")
    assert version == str(gcs_client.bucket(bucket).get_blob("k").generation)
    store.write_object("k", b"one\n")  # the same bytes again: a new generation (a re-upload re-runs a batch)
    assert store.object_version("k") not in (None, version)


def test_reads_ask_for_the_generation_they_started_on(
    gcs_client: Any, gcs_session: RecordingSession, bucket: str
) -> None:
    """The emulator serves the current object whatever generation is asked for, so the test checks what is
    asked: every ranged GET names the generation found when the read began (on Cloud Storage, an overwrite
    meanwhile is then never mixed into the lines)."""
    store = GCSBlobStore(bucket, gcs_client, read_chunk=1000)
    store.write_object("in.jsonl", b"".join(line + b"\n" for line in numbered(20, 200)))
    generation = store.object_version("in.jsonl")
    gcs_session.sent.clear()
    assert len(lines_of(store, "in.jsonl")) == 20
    downloads = [s for s in gcs_session.sent if "alt=media" in s.url]
    assert len(downloads) == 5  # 20 lines of 201 bytes in reads of 1000
    assert {parse_qs(urlsplit(s.url).query)["generation"][0] for s in downloads} == {generation}


def test_read_lines_never_calls_cloud_storage_on_the_event_loop(
    gcs_client: Any, gcs_session: RecordingSession, bucket: str
) -> None:
    store = GCSBlobStore(bucket, gcs_client, read_chunk=1000)
    store.write_object("in.jsonl", b"a\n" * 3000)
    gcs_session.sent.clear()
    assert len(lines_of(store, "in.jsonl")) == 3000
    assert len(gcs_session.sent) > 5
    assert threading.current_thread().name not in {s.thread for s in gcs_session.sent}


def test_missing_objects_and_buckets(gcs_client: Any, gcs_session: RecordingSession, bucket: str) -> None:
    store = GCSBlobStore(bucket, gcs_client)
    gcs_session.sent.clear()
    lines = store.read_lines("absent")  # nothing happens before the first iteration
    assert gcs_session.sent == []

    async def first() -> bytes:
        return await anext(lines)

    with pytest.raises(FileNotFoundError):
        asyncio.run(first())
    assert store.delete_object("absent") is False
    assert store.object_version("absent") is None
    with pytest.raises(NotFound):  # a missing bucket is a deployment error, not a missing file
        GCSBlobStore(f"{bucket}-none", gcs_client).write_object("k", b"x")


def test_prefix_and_key_checks(gcs_client: Any, bucket: str) -> None:
    store = GCSBlobStore(bucket, gcs_client, prefix="tenants/t1/")
    store.write_object("f.jsonl", b"x\n")
    assert gcs_client.bucket(bucket).blob("tenants/t1/f.jsonl").download_as_bytes() == b"x\n"
    for bad in ("", "/abs", "a\x00b"):
        with pytest.raises(ValueError, match="invalid blob key"):
            store.read_object(bad)
    for chunk in (0, 1000, CHUNK_MULTIPLE + 1):
        with pytest.raises(ValueError, match="chunk_size"):
            GCSBlobStore(bucket, gcs_client, chunk_size=chunk)


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 10_000])
def test_line_splitter_is_independent_of_chunk_boundaries(chunk: int) -> None:
    data = b"a" * 10 + b"\r\n" + b"b" * 11 + b"\n" + b"c" * 12 + b"\r\n\n" + b"d" * 9 + b"\r\nend\r"
    splitter = LineSplitter(max_line_bytes=10)
    got: list[bytes] = []
    for start in range(0, len(data), chunk):
        got += splitter.feed(data[start : start + chunk])
    got += splitter.close()
    assert got == [b"a" * 10, b"b" * 11, b"c" * 11, b"", b"d" * 9, b"end\r"]
