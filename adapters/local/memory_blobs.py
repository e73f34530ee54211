"""MemoryBlobStore: the BlobStore port in a dictionary, for unit tests and benchmarks."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import AsyncIterator, Iterable


class MemoryBlobStore:
    """Objects as bytes by key; each write bumps a generation, as a bucket's object version does."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._objects: dict[str, tuple[bytes, int]] = {}
        self._generation = 0

    def keys(self) -> list[str]:
        with self._lock:
            return sorted(self._objects)

    def read_lines(self, key: str, max_line_bytes: int | None = None) -> AsyncIterator[bytes]:
        return self._lines(key, max_line_bytes)

    async def _lines(self, key: str, max_line_bytes: int | None) -> AsyncIterator[bytes]:
        data = self.read_object(key)
        start = 0
        while start < len(data):
            end = data.find(b"\n", start)
            stop = len(data) if end < 0 else end
            line = data[start:stop]
            if line.endswith(b"\r"):
                line = line[:-1]
            yield line if max_line_bytes is None else line[: max_line_bytes + 1]
            start = stop + 1

    def write_object(self, key: str, data: bytes) -> None:
        with self._lock:
            self._generation += 1
            self._objects[key] = (bytes(data), self._generation)

    def write_lines(self, key: str, lines: Iterable[bytes]) -> int:
        data = b"".join(line + b"\n" for line in lines)
        self.write_object(key, data)
        return len(data)

    def read_object(self, key: str) -> bytes:
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            raise FileNotFoundError(key)
        return found[0]

    def delete_object(self, key: str) -> bool:
        with self._lock:
            return self._objects.pop(key, None) is not None

    def object_version(self, key: str) -> str | None:
        with self._lock:
            found = self._objects.get(key)
        if found is None:
            return None
        return f"{found[1]}-{hashlib.sha256(found[0]).hexdigest()[:16]}"
