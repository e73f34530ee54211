"""FileBlobStore: the BlobStore port on a local directory (batch input and output files)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import tempfile
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import BinaryIO

_READ_HINT = 64 * 1024  # bytes of whole lines read per step; one long line is still read whole


def _read_step(handle: BinaryIO, max_line_bytes: int | None) -> list[bytes]:
    """About ``_READ_HINT`` bytes of whole lines; an over-long line is cut and its rest skipped."""
    if max_line_bytes is None:
        return [_strip_eol(line) for line in handle.readlines(_READ_HINT)]
    lines: list[bytes] = []
    size = 0
    while size < _READ_HINT:
        line = handle.readline(max_line_bytes + 2)  # room for the longest allowed line and its CRLF
        if not line:
            break
        size += len(line)
        if not line.endswith(b"\n") and len(line) == max_line_bytes + 2:
            while (rest := handle.readline(_READ_HINT)) and not rest.endswith(b"\n"):
                pass
        lines.append(_strip_eol(line)[: max_line_bytes + 1])
    return lines


def _strip_eol(line: bytes) -> bytes:
    if line.endswith(b"\r\n"):
        return line[:-2]
    if line.endswith(b"\n"):
        return line[:-1]
    return line


class FileBlobStore:
    """Objects are files under ``root``; a key is a relative ``/``-separated path inside it."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root).resolve()

    @property
    def root(self) -> Path:
        return self._root

    def path_for(self, key: str) -> Path:
        """The file of ``key``; ValueError for a key that is empty, absolute or leaves the root."""
        if not key or "\x00" in key or "\\" in key or key.startswith("/") or Path(key).is_absolute():
            raise ValueError(f"invalid blob key: {key!r}")
        parts = key.split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"invalid blob key: {key!r}")
        path = self._root.joinpath(*parts)
        resolved = path.resolve()
        if resolved != self._root and self._root not in resolved.parents:
            raise ValueError(f"blob key escapes the root: {key!r}")
        return path

    def read_lines(self, key: str, max_line_bytes: int | None = None) -> AsyncIterator[bytes]:
        """Stream the object's lines without their line ending (``\\n`` or ``\\r\\n``).

        The key is checked at once; a missing object raises FileNotFoundError on first iteration.
        A line longer than ``max_line_bytes`` comes cut to ``max_line_bytes + 1`` bytes, the rest skipped.
        """
        return self._lines(self.path_for(key), max_line_bytes)

    async def _lines(self, path: Path, max_line_bytes: int | None) -> AsyncIterator[bytes]:
        handle: BinaryIO = await asyncio.to_thread(path.open, "rb")
        try:
            while True:
                lines = await asyncio.to_thread(_read_step, handle, max_line_bytes)
                if not lines:
                    return
                for line in lines:
                    yield line
        finally:
            handle.close()

    def write_object(self, key: str, data: bytes) -> None:
        """Write the whole object atomically: readers see the old content or the new, never a part."""
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def write_lines(self, key: str, lines: Iterable[bytes]) -> int:
        """Write the lines, each ended by ``\\n``, as one object (atomically); returns its size."""
        path = self.path_for(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        size = 0
        try:
            with os.fdopen(fd, "wb") as out:
                for line in lines:
                    out.write(line)
                    out.write(b"\n")
                    size += len(line) + 1
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        return size

    def read_object(self, key: str) -> bytes:
        return self.path_for(key).read_bytes()

    def delete_object(self, key: str) -> bool:
        try:
            self.path_for(key).unlink()
        except FileNotFoundError:
            return False
        return True

    def object_version(self, key: str) -> str | None:
        """``<size>-<mtime ns>-<sha256 prefix>`` of the file, or None when there is none."""
        return file_version(self.path_for(key))


def file_version(path: Path) -> str | None:
    """A file's version: its size, modification time and the SHA-256 of its content."""
    try:
        with path.open("rb") as handle:
            stat = os.fstat(handle.fileno())
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except (FileNotFoundError, IsADirectoryError):
        return None
    return f"{stat.st_size}-{stat.st_mtime_ns}-{digest[:32]}"
