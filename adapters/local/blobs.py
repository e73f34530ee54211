"""FileBlobStore: the BlobStore port on a local directory (batch input and output files)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import BinaryIO

_READ_HINT = 64 * 1024  # bytes of whole lines read per step; one long line is still read whole


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

    def read_lines(self, key: str) -> AsyncIterator[bytes]:
        """Stream the object's lines without their line ending (``\\n`` or ``\\r\\n``).

        The key is checked at once; a missing object raises FileNotFoundError on first iteration.
        """
        return self._lines(self.path_for(key))

    async def _lines(self, path: Path) -> AsyncIterator[bytes]:
        handle: BinaryIO = await asyncio.to_thread(path.open, "rb")
        try:
            while True:
                lines = await asyncio.to_thread(handle.readlines, _READ_HINT)
                if not lines:
                    return
                for line in lines:
                    yield _strip_eol(line)
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
