"""AzureBlobStore on Azurite: what the BlobStore contract does not cover (the contract suite runs on it from
tests/contract): block uploads, what a failed write leaves, the requests each call costs, reads pinned to the
version they began on and kept off the event loop, create-only writes, listing, missing blobs and containers."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from azure.core.exceptions import ResourceNotFoundError

from adapters.azure.blob import AzureBlobStore
from adapters.azure.blob_errors import BlobChanged
from tests.azure.azurite import Azurite, azurite, container, new_container  # noqa: F401 - fixtures

pytestmark = pytest.mark.azure


@dataclass(frozen=True)
class Sent:
    method: str
    url: str
    headers: dict[str, str]
    thread: str

    @property
    def comp(self) -> str | None:
        """The operation's ``comp`` parameter: ``block``, ``blocklist``, ``list``; None for Put/Get Blob."""
        return parse_qs(urlsplit(self.url).query).get("comp", [None])[0]


class Recorder:
    """A ``raw_request_hook``: every request the client sends (each retry too), with the thread it ran on."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []

    def __call__(self, request: Any) -> None:
        http = request.http_request
        self.sent.append(Sent(http.method, http.url, dict(http.headers), threading.current_thread().name))

    def of(self, method: str, comp: str | None = None) -> list[Sent]:
        return [s for s in self.sent if s.method == method and s.comp == comp]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def recorded(azurite: Azurite, recorder: Recorder) -> Any:  # noqa: F811 - the fixture
    """A container of the test's own whose client's requests are recorded."""
    client = new_container(raw_request_hook=recorder)
    recorder.sent.clear()
    return client


def lines_of(store: AzureBlobStore, key: str, max_line_bytes: int | None = None) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [line async for line in store.read_lines(key, max_line_bytes)]

    return asyncio.run(collect())


def numbered(count: int, width: int) -> Iterator[bytes]:
    for i in range(count):
        yield b"%08d " % i + b"x" * (width - 9)


def test_big_writes_are_block_uploads_and_read_back_in_pinned_ranges(recorded: Any, recorder: Recorder) -> None:
    store = AzureBlobStore(recorded, block_size=64 * 1024, read_chunk=100_000)
    count, width = 700, 1000  # ~700 kB: ten full blocks of 64 KiB and a short last one
    size = store.write_lines("out/big.jsonl", numbered(count, width))
    assert size == count * (width + 1)
    blocks = recorder.of("PUT", "block")
    assert len(blocks) == -(-size // (64 * 1024))
    assert {int(s.headers["Content-Length"]) for s in blocks[:-1]} == {64 * 1024}
    assert len(recorder.of("PUT", "blocklist")) == 1
    assert recorder.of("PUT") == []  # no Put Blob: the blob appears only at the commit
    assert recorded.get_blob_client("out/big.jsonl").get_blob_properties().size == size
    etag = recorded.get_blob_client("out/big.jsonl").get_blob_properties().etag

    recorder.sent.clear()
    assert lines_of(store, "out/big.jsonl") == list(numbered(count, width))
    gets = recorder.of("GET")
    assert len(gets) == len(recorder.sent) == -(-size // 100_000)  # no HEAD: the first GET answers the size
    assert [s.headers["x-ms-range"] for s in gets[:2]] == ["bytes=0-99999", "bytes=100000-199999"]
    assert "If-Match" not in gets[0].headers
    assert {s.headers["If-Match"] for s in gets[1:]} == {etag}


def test_small_writes_and_each_call_cost_one_request(recorded: Any, recorder: Recorder) -> None:
    store = AzureBlobStore(recorded)

    def etag() -> str:
        return str(recorded.get_blob_client("small").get_blob_properties().etag).strip('"')

    for call, expected in [
        (lambda: store.write_lines("small", [b"a", b"b"]), lambda: 4),
        (lambda: store.write_object("obj", b"x"), lambda: None),
        (lambda: store.read_object("small"), lambda: b"a\nb\n"),
        (lambda: lines_of(store, "small"), lambda: [b"a", b"b"]),
        (lambda: store.object_version("small"), etag),
        (lambda: list(store.list_keys()), lambda: ["obj", "small"]),
        (lambda: store.delete_object("small"), lambda: True),
        (lambda: store.delete_object("small"), lambda: False),
    ]:
        recorder.sent.clear()
        got = call()
        assert len(recorder.sent) == 1, recorder.sent
        assert got == expected()


def test_a_failing_source_leaves_the_previous_blob_in_place(container: Any) -> None:  # noqa: F811
    store = AzureBlobStore(container, block_size=64 * 1024)
    store.write_object("out/partial", b"before\n")
    version = store.object_version("out/partial")

    def source() -> Iterator[bytes]:
        yield from numbered(200, 1000)  # three blocks staged before it fails
        raise RuntimeError("the producer failed")

    with pytest.raises(RuntimeError, match="producer failed"):
        store.write_lines("out/partial", source())
    assert store.read_object("out/partial") == b"before\n"
    assert store.object_version("out/partial") == version
    with pytest.raises(RuntimeError, match="producer failed"):
        store.write_lines("out/new", source())
    assert store.object_version("out/new") is None
    # The uncommitted blocks left behind do not get in the way of the next upload.
    assert store.write_lines("out/new", numbered(200, 1000)) == 200 * 1001
    assert lines_of(store, "out/new") == list(numbered(200, 1000))


def test_write_object_of_many_blocks(recorded: Any, recorder: Recorder) -> None:
    store = AzureBlobStore(recorded, block_size=1000, read_chunk=700)
    data = bytes(range(256)) * 10
    store.write_object("bin", data)
    assert len(recorder.of("PUT", "block")) == 3
    assert store.read_object("bin") == data
    store.write_object("one", b"x" * 1000)  # exactly one block: one Put Blob
    assert len(recorder.of("PUT")) == 1


def test_versions_are_etags_new_at_every_write(container: Any) -> None:  # noqa: F811
    store = AzureBlobStore(container)
    store.write_object("k", b"one\n")
    version = store.object_version("k")
    assert version == str(container.get_blob_client("k").get_blob_properties().etag).strip('"')
    store.write_object("k", b"one\n")  # the same bytes again: a new ETag (a re-upload re-runs a batch)
    assert store.object_version("k") not in (None, version)


@pytest.mark.parametrize("change", ["overwrite", "delete"])
def test_a_blob_replaced_during_a_read_is_detected_never_mixed(container: Any, change: str) -> None:  # noqa: F811
    store = AzureBlobStore(container, read_chunk=1000)
    old = list(numbered(20, 200))
    store.write_object("in.jsonl", b"".join(line + b"\n" for line in old))

    seen: list[bytes] = []

    async def keep() -> None:
        async for line in store.read_lines("in.jsonl"):
            seen.append(line)
            if len(seen) == 1:
                if change == "overwrite":
                    await asyncio.to_thread(store.write_object, "in.jsonl", b"new\n" * 2000)
                else:
                    await asyncio.to_thread(store.delete_object, "in.jsonl")

    with pytest.raises(FileNotFoundError) as raised:
        asyncio.run(keep())
    assert seen == old[: len(seen)]  # only the old content, never a line of the new
    assert len(seen) == 4  # the first range's whole lines (1000 bytes: four lines of 201)
    if change == "overwrite":
        assert isinstance(raised.value, BlobChanged)


def test_reads_pin_the_version_id_where_the_account_versions_blobs(azurite: Azurite) -> None:  # noqa: F811
    """Azurite keeps no versions, so the test makes its answers carry one (as an account with versioning on
    does) and checks what is asked: the later ranges name that version and need no If-Match (on Azure an
    overwrite meanwhile is then read past, like a Cloud Storage generation)."""
    recorder = Recorder()

    def with_version(response: Any) -> None:
        if response.http_request.method == "GET":
            response.http_response.headers["x-ms-version-id"] = "2026-12-06T00:00:00.0000000Z"

    client = new_container(raw_request_hook=recorder, raw_response_hook=with_version)
    store = AzureBlobStore(client, read_chunk=1000)
    store.write_object("in.jsonl", b"a\n" * 1500)
    recorder.sent.clear()
    assert len(lines_of(store, "in.jsonl")) == 1500  # Azurite ignores the version it is asked for
    gets = recorder.of("GET")
    assert len(gets) == 3
    assert "versionid" not in gets[0].url
    assert parse_qs(urlsplit(gets[1].url).query)["versionid"] == ["2026-12-06T00:00:00.0000000Z"]
    assert "If-Match" not in gets[1].headers


def test_read_lines_never_calls_blob_storage_on_the_event_loop(recorded: Any, recorder: Recorder) -> None:
    store = AzureBlobStore(recorded, read_chunk=1000)
    store.write_object("in.jsonl", b"a\n" * 3000)
    recorder.sent.clear()
    assert len(lines_of(store, "in.jsonl")) == 3000
    assert len(recorder.sent) == 6
    assert threading.current_thread().name not in {s.thread for s in recorder.sent}


def test_empty_blobs(recorded: Any, recorder: Recorder) -> None:
    store = AzureBlobStore(recorded)
    assert store.write_lines("empty", []) == 0
    recorder.sent.clear()
    assert lines_of(store, "empty") == []
    assert len(recorder.sent) == 1  # the ranged GET's 416 says it: empty
    assert store.read_object("empty") == b""


def test_create_only_writes(container: Any) -> None:  # noqa: F811
    store = AzureBlobStore(container, block_size=64 * 1024)
    store.write_object("once", b"first\n", if_absent=True)
    with pytest.raises(FileExistsError):
        store.write_object("once", b"second\n", if_absent=True)
    with pytest.raises(FileExistsError):  # a block upload: refused at the commit
        store.write_lines("once", numbered(200, 1000), if_absent=True)
    assert store.read_object("once") == b"first\n"
    assert store.write_lines("big", numbered(200, 1000), if_absent=True) == 200 * 1001
    with pytest.raises(FileExistsError):
        store.write_lines("big", [b"x"], if_absent=True)
    assert store.read_object("big").startswith(b"00000000 ")
    store.write_object("once", b"third\n")  # without if_absent: replaced
    assert store.read_object("once") == b"third\n"


def test_list_keys_by_prefix_under_the_store_prefix(container: Any) -> None:  # noqa: F811
    store = AzureBlobStore(container, prefix="tenants/t1/")
    for key in ("batch-input/a.jsonl", "batch-input/b.jsonl", "batch-output/a.jsonl"):
        store.write_object(key, b"x\n")
    AzureBlobStore(container, prefix="tenants/t2/").write_object("batch-input/c.jsonl", b"x\n")
    assert list(store.list_keys("batch-input/")) == ["batch-input/a.jsonl", "batch-input/b.jsonl"]
    assert len(list(store.list_keys())) == 3
    assert list(store.list_keys("none/")) == []


def test_missing_blobs_and_containers(recorded: Any, recorder: Recorder) -> None:
    store = AzureBlobStore(recorded)
    lines = store.read_lines("absent")  # nothing happens before the first iteration
    assert recorder.sent == []

    async def first() -> bytes:
        return await anext(lines)

    with pytest.raises(FileNotFoundError) as raised:
        asyncio.run(first())
    assert not isinstance(raised.value, BlobChanged)
    with pytest.raises(FileNotFoundError):
        store.read_object("absent")
    assert store.delete_object("absent") is False
    assert store.object_version("absent") is None

    gone = new_container()
    gone.delete_container()
    gone = AzureBlobStore(gone)
    for call in (
        lambda: gone.write_object("k", b"x"),
        lambda: gone.write_lines("k", [b"x"]),
        lambda: gone.read_object("k"),
        lambda: lines_of(gone, "k"),
        lambda: gone.object_version("k"),
        lambda: gone.delete_object("k"),
        lambda: list(gone.list_keys()),
    ):
        with pytest.raises(ResourceNotFoundError) as missing:  # a deployment error, not a missing file
            call()
        assert getattr(missing.value, "error_code", None) == "ContainerNotFound"


def test_prefix_and_key_checks(container: Any) -> None:  # noqa: F811
    store = AzureBlobStore(container, prefix="tenants/t1/")
    store.write_object("f.jsonl", b"x\n")
    assert container.download_blob("tenants/t1/f.jsonl").readall() == b"x\n"
    for bad in ("", "/abs", "a\x00b"):
        with pytest.raises(ValueError, match="invalid blob key"):
            store.read_object(bad)
    with pytest.raises(ValueError, match="block_size"):
        AzureBlobStore(container, block_size=0)
    with pytest.raises(ValueError, match="read_chunk"):
        AzureBlobStore(container, read_chunk=0)
