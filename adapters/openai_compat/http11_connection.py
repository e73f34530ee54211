"""One keep-alive TCP connection of the built-in HTTP/1.1 client (``http11``), and the client's errors.

Bytes land in the connection's buffer as they arrive; a reader waits for more with ``wait``, bounded by its read
timeout. The errors' ``kind`` mirrors httpx's exception names (ConnectError, ReadError, RemoteProtocolError, ...).
"""

from __future__ import annotations

import asyncio
from typing import cast


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


class Connection(asyncio.Protocol):
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


__all__ = ["Connection", "HTTPError", "HTTPTimeout", "HTTPTransportError"]
