"""A minimal asyncio HTTP/1.1 client with a keep-alive connection pool, for plain-HTTP backends.

Why: the gateway's hot path is one POST per request to a model server on the local network.
httpx costs 1.5-4 ms of CPU per call here (anyio, h11, httpcore's pool scans, which grow with
the calls in flight); this costs 0.1-0.2 ms (``python -m bench.backend_client``).
It does what that path needs and no more: ``http://`` only (no TLS, no proxies, no redirects,
no compression), requests with a body already encoded, responses framed by Content-Length,
chunked transfer encoding or connection close. Anything else stays with httpx.

Timeouts: ``connect_timeout`` bounds the TCP connect; ``read_timeout`` bounds every wait for
response bytes (like httpx's read timeout: inactivity, not a total) and the wait for a connection
when the pool is at its limit (like httpx's pool timeout). Errors are ``HTTPTimeout`` and
``HTTPTransportError``, whose ``kind`` mirrors httpx's exception names (ConnectError, ReadError,
RemoteProtocolError, ...). A body that breaks off is always an error, never a short body: a close before the
framing says the body is over is a RemoteProtocolError, a reset (even of a body delimited by the close) a
ReadError.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import cast

_HEAD_END = b"\r\n\r\n"
_MAX_HEAD = 64 * 1024
_USER_AGENT = "textnlp-gateway"


class HTTPError(Exception):
    """Base of this module's errors."""


class HTTPTimeout(HTTPError):
    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class HTTPTransportError(HTTPError):
    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind


class _Connection(asyncio.Protocol):
    """One TCP connection; bytes land in ``buf`` and wake whoever waits for them."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[None] | None = None
        self.closed = False
        self.reset = ""  # why the connection failed (a reset), if it did not end with a clean close
        self.used = False  # served a request before: a failure with no reply may be a stale connection
        self.received = False  # any byte of the current response arrived

    # -- protocol callbacks --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not subclasses

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self.received = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        self._lost()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.reset = f"{type(exc).__name__}: {exc}"
        self._lost()

    def _lost(self) -> None:
        self.closed = True
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- used by the client ----------------------------------------------------------------------------

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def wait(self, limit_s: float) -> None:
        """Until more bytes arrive or the connection ends; HTTPTimeout after ``limit_s`` seconds."""
        if self.reset:
            raise HTTPTransportError("ReadError", self.reset)
        if self.closed:
            raise HTTPTransportError("RemoteProtocolError", "the server closed the connection mid-response")
        waiter = self.waiter = self.loop.create_future()
        timer = self.loop.call_later(limit_s, _expire, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            self.waiter = None


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(HTTPTimeout("ReadTimeout"))


class Response:
    """Status and headers at once; the body through ``read()`` or ``iter_bytes()``.

    Reading the body to its end returns the connection to the pool; ``close()`` before that drops it
    (a failure or a cancellation while reading drops it too).
    """

    def __init__(
        self,
        pool: ConnectionPool,
        key: tuple[str, int],
        conn: _Connection,
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
        self._conn: _Connection | None = conn
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

    async def _chunks(self, conn: _Connection) -> AsyncIterator[bytes]:
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

    async def _trailers(self, conn: _Connection, eol: int) -> None:
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


class _Host:
    __slots__ = ("idle", "open", "waiters")

    def __init__(self) -> None:
        self.idle: deque[_Connection] = deque()
        self.open = 0
        self.waiters: deque[asyncio.Future[_Connection | None]] = deque()


class ConnectionPool:
    """Keep-alive connections per (host, port), for one event loop.

    At most ``max_connections`` per host at once (more requests wait for one, up to the read
    timeout); at most ``max_keepalive`` of them are kept idle between requests.
    """

    def __init__(self, max_connections: int = 100, max_keepalive: int = 32) -> None:
        self._loop = asyncio.get_running_loop()
        self._hosts: dict[tuple[str, int], _Host] = {}
        self._max_connections = max_connections
        self._max_keepalive = max_keepalive
        self._closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    async def request(
        self,
        method: str,
        host: str,
        port: int,
        target: str,
        headers: Mapping[str, str],
        body: bytes,
        *,
        read_timeout: float,
        connect_timeout: float,
    ) -> Response:
        """Send the request; returns once the status line and headers are in."""
        key = (host, port)
        head = _encode_head(method, host, port, target, headers, len(body))
        payload = head + body if len(body) < 65536 else None
        retried = False
        while True:
            conn = await self._acquire(key, connect_timeout, read_timeout)
            reused = conn.used
            conn.used = True
            conn.received = False
            transport = conn.transport
            try:
                if transport is None:
                    raise HTTPTransportError("ConnectError", "no transport")
                if payload is not None:
                    transport.write(payload)
                else:
                    transport.write(head)
                    transport.write(body)
                status, response_headers = await _read_head(conn, read_timeout)
                return Response(self, key, conn, status, response_headers, read_timeout)
            except HTTPTransportError:
                self.discard(key, conn)
                # A pooled connection the server had already closed: nothing was processed, so
                # one retry on a fresh connection is safe.
                if reused and not conn.received and not retried:
                    retried = True
                    continue
                raise
            except BaseException:
                self.discard(key, conn)
                raise

    async def _acquire(self, key: tuple[str, int], connect_timeout: float, pool_timeout: float) -> _Connection:
        if self._closed:
            raise HTTPTransportError("ConnectError", "the connection pool is closed")
        host = self._hosts.get(key)
        if host is None:
            host = self._hosts[key] = _Host()
        while host.idle:
            conn = host.idle.pop()
            if not conn.closed and not conn.buf:
                return conn
            self._drop(host, conn)
        if host.open >= self._max_connections:
            waiter: asyncio.Future[_Connection | None] = self._loop.create_future()
            host.waiters.append(waiter)
            try:
                async with asyncio.timeout(pool_timeout):
                    handed = await waiter
            except BaseException as exc:
                if waiter in host.waiters:
                    host.waiters.remove(waiter)
                elif waiter.done() and not waiter.cancelled():
                    # Handed a connection (or a free slot) just as the wait ended: pass it on.
                    given = waiter.result()
                    if given is not None:
                        self.release(key, given)
                    else:
                        self._wake_one(host)
                if isinstance(exc, TimeoutError):
                    raise HTTPTimeout("PoolTimeout") from None
                raise
            if handed is not None:
                return handed
        host.open += 1
        try:
            async with asyncio.timeout(connect_timeout):
                _, protocol = await self._loop.create_connection(lambda: _Connection(self._loop), key[0], key[1])
        except TimeoutError:
            self._closed_one(host)
            raise HTTPTimeout("ConnectTimeout") from None
        except OSError as exc:
            self._closed_one(host)
            raise HTTPTransportError("ConnectError", str(exc)) from None
        except BaseException:
            self._closed_one(host)
            raise
        return protocol

    def release(self, key: tuple[str, int], conn: _Connection) -> None:
        """A connection whose response was read to its end."""
        host = self._hosts.get(key)
        if host is None or conn.closed or self._closed:
            self.discard(key, conn)
            return
        while host.waiters:
            waiter = host.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if len(host.idle) >= self._max_keepalive:
            self.discard(key, conn)
            return
        host.idle.append(conn)

    def discard(self, key: tuple[str, int], conn: _Connection) -> None:
        conn.close()
        host = self._hosts.get(key)
        if host is not None:
            self._closed_one(host)

    def _drop(self, host: _Host, conn: _Connection) -> None:
        conn.close()
        self._closed_one(host)

    def _closed_one(self, host: _Host) -> None:
        host.open = max(0, host.open - 1)
        self._wake_one(host)

    @staticmethod
    def _wake_one(host: _Host) -> None:
        """A slot is free: the first waiter may open a connection of its own."""
        while host.waiters:
            waiter = host.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def aclose(self) -> None:
        self._closed = True
        for host in self._hosts.values():
            while host.idle:
                host.idle.pop().close()
            host.open = 0
            for waiter in host.waiters:
                if not waiter.done():
                    waiter.set_result(None)
        self._hosts.clear()


def _encode_head(method: str, host: str, port: int, target: str, headers: Mapping[str, str], length: int) -> bytes:
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"{method} {target} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {_USER_AGENT}\r\n"]
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name:
            raise HTTPTransportError("LocalProtocolError", "a header contains a line break")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Length: {length}\r\n\r\n")
    return "".join(lines).encode("latin-1")


async def _read_head(conn: _Connection, limit_s: float) -> tuple[int, dict[str, str]]:
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


__all__ = ["ConnectionPool", "HTTPError", "HTTPTimeout", "HTTPTransportError", "Response"]
