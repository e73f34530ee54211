"""The built-in HTTP/1.1 client of the OpenAI-compatible backend, against scripted raw servers."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from adapters.openai_compat.backend import CLIENT_ENV, OpenAICompatBackend, _Target, sse_lines
from adapters.openai_compat.http11 import ConnectionPool, HTTPTimeout, HTTPTransportError
from bench.fake_openai_server import start_in_thread
from core.inference import ChatMessage, GenerationParams, Prompt

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def read_request(reader: asyncio.StreamReader) -> bytes | None:
    """One request (head + Content-Length body), or None at EOF."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


class Server:
    """A raw asyncio server; ``connections`` counts accepted connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Server:
        async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                await self.handler(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        self.server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        port: int = self.server.sockets[0].getsockname()[1]
        return port


def keep_alive(response: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            writer.write(response)
            await writer.drain()

    return handler


OK = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


async def post(pool: ConnectionPool, port: int, body: bytes = b"{}", limit_s: float = 5.0) -> tuple[int, bytes]:
    response = await pool.request(
        "POST",
        "127.0.0.1",
        port,
        "/v1/x",
        {"Content-Type": "application/json"},
        body,
        read_timeout=limit_s,
        connect_timeout=limit_s,
    )
    return response.status_code, await response.read()


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_content_length_responses_reuse_one_connection() -> None:
    async def body() -> None:
        async with Server(keep_alive(OK)) as server:
            pool = ConnectionPool()
            for _ in range(3):
                assert await post(pool, server.port) == (200, b'{"ok":true}')
            assert server.connections == 1
            await pool.aclose()

    run(body())


def test_chunked_body_with_trailers_and_lines_split_across_chunks() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"7\r\ndata: a\r\n"
        b"8;ext=1\r\n\n\ndata: \r\n"
        b"4\r\nbc\r\n\r\n"
        b"0\r\nX-Trailer: 1\r\n\r\n"
    )

    async def body() -> None:
        async with Server(keep_alive(chunked)) as server:
            pool = ConnectionPool()
            response = await pool.request(
                "POST", "127.0.0.1", server.port, "/", {}, b"", read_timeout=5, connect_timeout=5
            )
            lines = [line async for line in sse_lines(response.iter_bytes())]
            assert lines == ["data: a", "", "data: bc"]
            assert await post(pool, server.port) == (200, b"data: a\n\ndata: bc\r\n")
            assert server.connections == 1
            await pool.aclose()

    run(body())


def test_body_delimited_by_close_and_connection_close_are_not_reused() -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n\r\nall of it")
        await writer.drain()

    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"

    async def body() -> None:
        pool = ConnectionPool()
        async with Server(until_close) as server:
            assert await post(pool, server.port) == (200, b"all of it")
            assert await post(pool, server.port) == (200, b"all of it")
            assert server.connections == 2
        async with Server(keep_alive(closing)) as server:
            assert await post(pool, server.port) == (200, b"ok")
            assert await post(pool, server.port) == (200, b"ok")
            assert server.connections == 2
        await pool.aclose()

    run(body())


def test_a_pooled_connection_the_server_closed_is_replaced_transparently() -> None:
    async def one_then_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(OK)
        await writer.drain()
        # keep-alive expiry on the server side: close without a word

    async def body() -> None:
        async with Server(one_then_close) as server:
            pool = ConnectionPool()
            assert await post(pool, server.port) == (200, b'{"ok":true}')
            await asyncio.sleep(0.05)
            assert await post(pool, server.port) == (200, b'{"ok":true}')
            assert server.connections == 2
            await pool.aclose()

    run(body())


def test_a_server_that_closes_mid_body_is_a_transport_error() -> None:
    async def truncated(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        await writer.drain()

    async def body() -> None:
        async with Server(truncated) as server:
            pool = ConnectionPool()
            with pytest.raises(HTTPTransportError) as caught:
                await post(pool, server.port)
            assert caught.value.kind == "RemoteProtocolError"
            await pool.aclose()

    run(body())


def reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with a TCP reset (RST), not a clean close (FIN)."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@pytest.mark.parametrize(
    "head",
    [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"],
    ids=["content-length", "until-close"],
)
def test_a_reset_mid_body_is_a_read_error_even_when_the_close_ends_the_body(head: bytes) -> None:
    async def resetting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(head + b"partial")
        await writer.drain()
        await asyncio.sleep(0.05)
        reset(writer)

    async def body() -> None:
        async with Server(resetting) as server:
            pool = ConnectionPool()
            response = await pool.request(
                "POST", "127.0.0.1", server.port, "/", {}, b"", read_timeout=5, connect_timeout=5
            )
            received: list[bytes] = []

            async def consume() -> None:
                async for piece in response.iter_bytes():
                    received.append(piece)

            with pytest.raises(HTTPTransportError) as caught:
                await consume()
            assert caught.value.kind == "ReadError"
            assert b"".join(received) == b"partial"
            await pool.aclose()

    run(body())


def test_read_timeout_and_connect_error() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        await asyncio.sleep(5)

    async def body() -> None:
        pool = ConnectionPool()
        async with Server(silent) as server:
            with pytest.raises(HTTPTimeout) as timed_out:
                await post(pool, server.port, limit_s=0.05)
            assert timed_out.value.kind == "ReadTimeout"
            port = server.port
        await asyncio.sleep(0.01)
        with pytest.raises(HTTPTransportError) as refused:
            await post(pool, port)
        assert refused.value.kind == "ConnectError"
        assert all(host.open == 0 for host in pool._hosts.values())
        await pool.aclose()

    run(body())


def test_pool_limit_queues_requests_and_cancellation_frees_the_connection() -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await read_request(reader) is not None:
            await asyncio.sleep(0.02)
            writer.write(OK)
            await writer.drain()

    async def body() -> None:
        async with Server(slow) as server:
            pool = ConnectionPool(max_connections=1)
            results = await asyncio.gather(*(post(pool, server.port) for _ in range(3)))
            assert results == [(200, b'{"ok":true}')] * 3
            assert server.connections == 1
            task = asyncio.ensure_future(post(pool, server.port))
            await asyncio.sleep(0.005)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert pool._hosts[("127.0.0.1", server.port)].open == 0
            assert await post(pool, server.port) == (200, b'{"ok":true}')
            await pool.aclose()

    run(body())


def test_interim_100_continue_is_skipped_and_header_injection_refused() -> None:
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + OK

    async def body() -> None:
        async with Server(keep_alive(interim)) as server:
            pool = ConnectionPool()
            assert await post(pool, server.port) == (200, b'{"ok":true}')
            with pytest.raises(HTTPTransportError):
                await pool.request(
                    "POST",
                    "127.0.0.1",
                    server.port,
                    "/",
                    {"X": "a\r\nInjected: 1"},
                    b"",
                    read_timeout=5,
                    connect_timeout=5,
                )
            await pool.aclose()

    run(body())


# --- the backend's choice of client -------------------------------------------------------------

CHAT = Prompt(messages=(ChatMessage("user", "alpha beta gamma"),))


def test_plain_http_uses_the_pool_and_streams_keep_the_connection() -> None:
    base_url, stop = start_in_thread()
    route = {"type": "openai", "base_url": base_url, "model": "fake-model", "timeout_s": 5}

    async def body() -> None:
        backend = OpenAICompatBackend()
        try:
            for _ in range(3):
                events = [e async for e in backend.stream(route, CHAT, GenerationParams(max_tokens=10))]
                assert len(events) == 4
                await backend.generate(route, CHAT, GenerationParams(max_tokens=10))
            assert backend._owned is None  # httpx never created
            pool = backend._pool
            assert pool is not None
            (host,) = pool._hosts.values()
            assert (host.open, len(host.idle)) == (1, 1)
        finally:
            await backend.aclose()

    try:
        run(body())
    finally:
        stop()


def test_https_proxies_credentials_and_the_opt_out_use_httpx(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _Target.of("http://10.0.0.5:8000/v1/") == _Target("10.0.0.5", 8000, "/v1")
    assert _Target.of("http://[::1]/v1") == _Target("::1", 80, "/v1")
    assert _Target.of("https://api.example.com/v1") is None
    assert _Target.of("http://user:pw@h/v1") is None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy:3128")
    assert _Target.of("http://h/v1") is None
    monkeypatch.delenv("HTTP_PROXY")
    monkeypatch.setenv(CLIENT_ENV, "httpx")
    assert OpenAICompatBackend()._target("http://h/v1") is None
