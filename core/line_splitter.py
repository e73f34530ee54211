"""Lines out of a byte stream read in chunks (an object store's ranged or streamed reads), memory bounded.

Every BlobStore adapter that streams an object (S3, Cloud Storage, Blob Storage) splits it the same way, so
``read_lines`` answers alike on every cloud: lines without ``\\n`` / ``\\r\\n``, a last line without a newline
kept, and a line over ``max_line_bytes`` cut to its first ``max_line_bytes + 1`` bytes (the reader then says it
is too long) with the rest skipped as it arrives.
"""

from __future__ import annotations


class LineSplitter:
    """Splits a byte stream into lines without ``\\n`` / ``\\r\\n``; over-long lines are cut, never held.

    With ``max_line_bytes``, a longer line comes out as its first ``max_line_bytes + 1`` bytes and the
    rest of it is skipped as it arrives, so memory stays bounded by the limit and one chunk.
    """

    def __init__(self, max_line_bytes: int | None = None) -> None:
        self._max = max_line_bytes
        self._buffer = bytearray()
        self._skipping = False

    def feed(self, chunk: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            if not self._skipping:
                if self._buffer:
                    self._buffer += chunk[start:end]
                    lines.append(self._line(bytes(self._buffer)))
                else:
                    lines.append(self._line(chunk[start:end]))
            self._buffer.clear()
            self._skipping = False
            start = end + 1
        if not self._skipping:
            self._buffer += chunk[start:]
            # One byte of room for a "\r" before the "\n": past that the line is surely too long,
            # and its first max + 1 bytes are known; the rest is dropped as it arrives.
            if self._max is not None and len(self._buffer) > self._max + 1:
                lines.append(bytes(self._buffer[: self._max + 1]))
                self._buffer.clear()
                self._skipping = True
        return lines

    def close(self) -> list[bytes]:
        """The last line when the stream does not end with a newline (kept as is, like a file's)."""
        rest, skipping = bytes(self._buffer), self._skipping
        self._buffer.clear()
        self._skipping = False
        return [rest] if rest and not skipping else []

    def _line(self, raw: bytes) -> bytes:
        line = raw[:-1] if raw.endswith(b"\r") else raw
        return line if self._max is None else line[: self._max + 1]
