"""FileBlobStore: streamed line reads, atomic writes, keys confined to the root."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from adapters.local.blobs import FileBlobStore


def _read_all(blobs: FileBlobStore, key: str) -> list[bytes]:
    async def collect() -> list[bytes]:
        return [line async for line in blobs.read_lines(key)]

    return asyncio.run(collect())


@pytest.fixture
def blobs(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore(tmp_path / "root")


def test_write_then_read_lines_without_line_endings(blobs: FileBlobStore) -> None:
    blobs.write_object("batches/b1/input.jsonl", b'{"a": 1}\n{"b": 2}\r\n\nlast')
    assert (blobs.root / "batches" / "b1" / "input.jsonl").is_file()
    assert _read_all(blobs, "batches/b1/input.jsonl") == [b'{"a": 1}', b'{"b": 2}', b"", b"last"]


def test_trailing_newline_adds_no_empty_line_and_empty_object_has_none(blobs: FileBlobStore) -> None:
    blobs.write_object("a.jsonl", b"one\ntwo\n")
    assert _read_all(blobs, "a.jsonl") == [b"one", b"two"]
    blobs.write_object("empty", b"")
    assert _read_all(blobs, "empty") == []


def test_large_object_streams_every_line_in_order(blobs: FileBlobStore) -> None:
    lines = [(b"%06d " % i) * (1 + i % 40) for i in range(20_000)]  # several read steps
    lines.append(b"x" * 300_000)  # one line longer than a read step
    blobs.write_object("big", b"\n".join(lines) + b"\n")
    assert _read_all(blobs, "big") == lines


def test_stopping_early_closes_the_file(blobs: FileBlobStore) -> None:
    blobs.write_object("k", b"".join(b"line %d\n" % i for i in range(100_000)))

    async def first_two() -> list[bytes]:
        got: list[bytes] = []
        lines = blobs.read_lines("k")
        async for line in lines:
            got.append(line)
            if len(got) == 2:
                break
        await lines.aclose()  # type: ignore[attr-defined]
        return got

    assert asyncio.run(first_two()) == [b"line 0", b"line 1"]
    blobs.write_object("k", b"replaced\n")  # nothing holds the old file
    assert _read_all(blobs, "k") == [b"replaced"]


def test_overwrite_is_atomic_and_leaves_no_temp_files(blobs: FileBlobStore) -> None:
    blobs.write_object("out/result.jsonl", b"old\n")
    blobs.write_object("out/result.jsonl", b"new\n")
    assert _read_all(blobs, "out/result.jsonl") == [b"new"]
    assert os.listdir(blobs.root / "out") == ["result.jsonl"]


def test_failed_write_keeps_the_old_object(blobs: FileBlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    blobs.write_object("o", b"old\n")

    def fail(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        blobs.write_object("o", b"new\n")
    monkeypatch.undo()
    assert _read_all(blobs, "o") == [b"old"]
    assert os.listdir(blobs.root) == ["o"]


def test_missing_object_raises_file_not_found(blobs: FileBlobStore) -> None:
    with pytest.raises(FileNotFoundError):
        _read_all(blobs, "nope.jsonl")


@pytest.mark.parametrize(
    "key",
    [
        "",
        "../x",
        "a/../../x",
        "a/..",
        "..",
        "/etc/passwd",
        "a//b",
        "./a",
        "a/./b",
        "a\\..\\b",
        "a/",
        "a\x00b",
    ],
)
def test_keys_cannot_escape_the_root(blobs: FileBlobStore, key: str) -> None:
    with pytest.raises(ValueError):
        blobs.write_object(key, b"x")
    with pytest.raises(ValueError):
        blobs.read_lines(key)  # checked at once, before any iteration


def test_symlink_out_of_the_root_is_refused(blobs: FileBlobStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    blobs.root.mkdir(parents=True, exist_ok=True)
    (blobs.root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError):
        blobs.write_object("link/x", b"x")
    assert not (outside / "x").exists()


def test_root_may_be_given_as_a_relative_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    blobs = FileBlobStore(Path("rel"))
    blobs.write_object("k", b"v")
    assert (tmp_path / "rel" / "k").read_bytes() == b"v"
