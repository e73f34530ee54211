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
from collections.abc import Mapping

from adapters.openai_compat.http11_connection import Connection, HTTPError, HTTPTimeout, HTTPTransportError
from adapters.openai_compat.http11_response import Response, encode_head, read_head


class _Host:
    __slots__ = ("idle", "open", "waiters")

    def __init__(self) -> None:
        self.idle: deque[Connection] = deque()
        self.open = 0
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()


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
        head = encode_head(method, host, port, target, headers, len(body))
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
                status, response_headers = await read_head(conn, read_timeout)
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

    async def _acquire(self, key: tuple[str, int], connect_timeout: float, pool_timeout: float) -> Connection:
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
            waiter: asyncio.Future[Connection | None] = self._loop.create_future()
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
                _, protocol = await self._loop.create_connection(lambda: Connection(self._loop), key[0], key[1])
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

    def release(self, key: tuple[str, int], conn: Connection) -> None:
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

    def discard(self, key: tuple[str, int], conn: Connection) -> None:
        conn.close()
        host = self._hosts.get(key)
        if host is not None:
            self._closed_one(host)

    def _drop(self, host: _Host, conn: Connection) -> None:
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


__all__ = ["ConnectionPool", "HTTPError", "HTTPTimeout", "HTTPTransportError", "Response"]
