"""The HTTP/1.1 messages of the built-in client (``http11``): a request's head encoded, a response's head parsed,
and ``Response``, its body read as framed (Content-Length, chunked, or the connection's close).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from adapters.openai_compat.http11_connection import Connection, HTTPError, HTTPTransportError

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024
_USER_AGENT = "textnlp-gateway"


class ConnectionOwner(Protocol):
    """Where a response hands its connection when it is done with it (``ConnectionPool``)."""

    def release(self, key: tuple[str, int], conn: Connection) -> None: ...

    def discard(self, key: tuple[str, int], conn: Connection) -> None: ...


class Response:
    """Status and headers at once; the body through ``read()`` or ``iter_bytes()``.

    Reading the body to its end returns the connection to the pool; ``close()`` before that drops it
    (a failure or a cancellation while reading drops it too).
    """

    def __init__(
        self,
        pool: ConnectionOwner,
        key: tuple[str, int],
        conn: Connection,
        status: int,
        headers: dict[str, str],
        timeout: float,
    ) -> None:
        self.status_code = status
        self.headers = headers
        self._pool = pool
        self._key = key
        self._timeout = timeout
        self._chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        self._remaining = -1  # bytes left when framed by Content-Length; -1 otherwise
        if status in (204, 304):
            self._remaining = 0
        elif not self._chunked and "content-length" in headers:
            try:
                self._remaining = int(headers["content-length"])
            except ValueError:
                raise HTTPTransportError("RemoteProtocolError", "bad Content-Length") from None
            if self._remaining < 0:
                raise HTTPTransportError("RemoteProtocolError", "bad Content-Length")
        self._reusable = "close" not in headers.get("connection", "").lower() and (
            self._chunked or self._remaining >= 0
        )
        self._conn: Connection | None = conn
        if self._remaining == 0:
            self._finish()

    async def read(self) -> bytes:
        """The whole body."""
        conn = self._conn
        if conn is None:
            return b""
        n = self._remaining
        if n < 0:
            return b"".join([piece async for piece in self.iter_bytes()])
        try:
            while len(conn.buf) < n:
                await conn.wait(self._timeout)
        except BaseException:
            self.close()
            raise
        body = bytes(conn.buf[:n])
        del conn.buf[:n]
        self._remaining = 0
        self._finish()
        return body

    async def iter_bytes(self) -> AsyncIterator[bytes]:
        """The body as it arrives (de-chunked)."""
        conn = self._conn
        if conn is None:
            return
        try:
            if self._chunked:
                async for piece in self._chunks(conn):
                    yield piece
            elif self._remaining >= 0:
                while self._remaining:
                    if not conn.buf:
                        await conn.wait(self._timeout)
                        continue
                    piece = bytes(conn.buf[: self._remaining])
                    del conn.buf[: len(piece)]
                    self._remaining -= len(piece)
                    yield piece
            else:  # delimited by the connection closing
                while True:
                    if conn.buf:
                        piece = bytes(conn.buf)
                        conn.buf.clear()
                        yield piece
                    elif conn.reset:
                        raise HTTPTransportError("ReadError", conn.reset)
                    elif conn.closed:
                        break
                    else:
                        await conn.wait(self._timeout)
        except BaseException:
            self.close()
            raise
        self._finish()

    async def _chunks(self, conn: Connection) -> AsyncIterator[bytes]:
        buf = conn.buf
        while True:
            eol = buf.find(b"\r\n")
            while eol == -1:
                await conn.wait(self._timeout)
                eol = buf.find(b"\r\n")
            try:
                size = int(bytes(buf[:eol]).split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise HTTPTransportError("RemoteProtocolError", "bad chunk size") from None
            if size == 0:
                await self._trailers(conn, eol)
                return
            start, stop = eol + 2, eol + 2 + size
            while len(buf) < stop + 2:
                await conn.wait(self._timeout)
            piece = bytes(buf[start:stop])
            del buf[: stop + 2]
            yield piece

    async def _trailers(self, conn: Connection, eol: int) -> None:
        """After the last chunk: trailer lines (usually none), then the blank line ending the body."""
        buf = conn.buf
        while True:
            end = buf.find(b"\r\n", eol + 2)
            while end == -1:
                await conn.wait(self._timeout)
                end = buf.find(b"\r\n", eol + 2)
            if end == eol + 2:
                del buf[: end + 2]
                self._chunked = False
                self._remaining = 0
                return
            eol = end

    async def drain(self, grace: float) -> None:
        """Read whatever is left of the body within ``grace`` seconds, for reuse; else drop it."""
        if self._conn is None:
            return
        saved, self._timeout = self._timeout, grace
        try:
            async for _ in self.iter_bytes():
                pass
        except HTTPError:
            pass  # dropped by iter_bytes; the data the caller needed is already in
        finally:
            self._timeout = saved

    def _finish(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._reusable and not conn.buf:
            self._pool.release(self._key, conn)
        else:
            self._pool.discard(self._key, conn)

    def close(self) -> None:
        """Give up on the rest of the body: the connection cannot be reused."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.discard(self._key, conn)


def encode_head(method: str, host: str, port: int, target: str, headers: Mapping[str, str], length: int) -> bytes:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {_USER_AGENT}\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise HTTPTransportError("LocalProtocolError", "a header contains a line break")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {length}\r\n\r\n")
    return "".join(lines).encode("latin-1")


async def read_head(conn: Connection, limit_s: float) -> tuple[int, dict[str, str]]:
    buf = conn.buf
    while True:
        end = buf.find(_HEAD_END)
        while end == -1:
            if len(buf) > _MAX_HEAD:
                raise HTTPTransportError("RemoteProtocolError", "response head too large")
            if conn.closed:
                kind = "RemoteProtocolError" if conn.received else "ReadError"
                raise HTTPTransportError(kind, "the server closed the connection without a response")
            await conn.wait(limit_s)
            end = buf.find(_HEAD_END)
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        del buf[: end + 4]
        status_line = lines[0]
        if not status_line.startswith("HTTP/1.") or len(status_line) < 12:
            raise HTTPTransportError("RemoteProtocolError", "not an HTTP/1.x response")
        try:
            status = int(status_line[9:12])
        except ValueError:
            raise HTTPTransportError("RemoteProtocolError", "bad status line") from None
        if 100 <= status < 200 and status != 101:
            continue  # an interim response (100 Continue): the real one follows
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep:
                raise HTTPTransportError("RemoteProtocolError", "bad header line")
            name = name.strip().lower()
            value = value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        if status_line.startswith("HTTP/1.0") and "keep-alive" not in headers.get("connection", "").lower():
            headers["connection"] = "close"
        return status, headers


__all__ = ["ConnectionOwner", "Response", "encode_head", "read_head"]
