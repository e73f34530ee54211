"""``JsonTransport``: JSON POSTs of the cloud inference backends (Vertex AI, Azure ML) on the project's two
async HTTP clients.

As in the OpenAI-compatible adapter: ``https://`` (every managed endpoint), proxies and a client passed in go
through httpx (imported on first use); a plain ``http://`` URL (a local server, a private address behind a
TLS-terminating proxy) goes through the built-in keep-alive HTTP/1.1 pool. Both map their failures alike: no
answer in time is a ``BackendTimeout``, no connection a retryable 502, a whole body that broke off a retryable
``backend_bad_response``, a stream's body that broke off ``BodyBroken`` (the backend decides what it means), an
error status ``StatusError`` (mapped by the backend, which also drops a refused token)."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Mapping
from typing import TYPE_CHECKING, Any

from adapters.openai_compat.http11 import ConnectionPool, HTTPTimeout, HTTPTransportError, Response
from adapters.openai_compat.route import Target
from adapters.openai_compat.wire import BodyBroken, cut_body, json_bytes, sse_data, sse_lines, unreachable
from core.errors import BackendTimeout

if TYPE_CHECKING:
    import httpx

_CONNECT_TIMEOUT_S = 10.0
_DRAIN_GRACE_S = 0.1  # after ``data: [DONE]``, how long to wait for the body's end so the connection is reused


class StatusError(Exception):
    """The endpoint (or the container or scoring script behind it) answered an error status."""

    def __init__(self, status: int, body: bytes, headers: Mapping[str, str]) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status
        self.body = body
        self.headers = headers


class JsonTransport:
    """One keep-alive pool (built-in) or client (httpx) per event loop: connections cannot outlive their loop."""

    def __init__(self, client: httpx.AsyncClient | None = None, http_client: str = "auto") -> None:
        self._given = client
        self._fast_ok = client is None and http_client != "httpx"
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ConnectionPool] = weakref.WeakKeyDictionary()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
            weakref.WeakKeyDictionary()
        )
        self._targets: dict[str, Target | None] = {}

    async def post(self, url: str, headers: dict[str, str], payload: dict[str, Any], timeout_s: float) -> bytes:
        """The whole body of a successful answer; ``StatusError`` for an error status."""
        target = self._target(url)
        if target is None:
            status, response_headers, content = await self._httpx_post(url, headers, payload, timeout_s)
        else:
            response = await self._fast_request(target, headers, payload, timeout_s, "application/json")
            try:
                content = await response.read()
            except HTTPTimeout:
                raise BackendTimeout() from None
            except HTTPTransportError as exc:
                raise cut_body(exc.kind) from None
            status, response_headers = response.status_code, response.headers
        if status >= 300:
            raise StatusError(status, content, response_headers)
        return content

    async def lines(
        self, url: str, headers: dict[str, str], payload: dict[str, Any], timeout_s: float
    ) -> AsyncGenerator[str, None]:
        """The lines of an event stream as they arrive; ``BodyBroken`` when the body breaks off or stalls."""
        target = self._target(url)
        lines = (
            self._httpx_lines(url, headers, payload, timeout_s)
            if target is None
            else self._fast_lines(target, headers, payload, timeout_s)
        )
        try:
            async for line in lines:
                yield line
        finally:
            await lines.aclose()

    async def aclose(self) -> None:
        """Close what this transport opened on the running loop (a client passed in is the caller's)."""
        loop = asyncio.get_running_loop()
        pool = self._pools.pop(loop, None)
        if pool is not None:
            await pool.aclose()
        client = self._clients.pop(loop, None)
        if client is not None:
            await client.aclose()

    def _target(self, url: str) -> Target | None:
        if not self._fast_ok:
            return None
        try:
            return self._targets[url]
        except KeyError:
            target = self._targets[url] = Target.of(url)
            return target

    # -- the built-in HTTP/1.1 pool ----------------------------------------------------------------------------

    async def _fast_request(
        self, target: Target, headers: dict[str, str], payload: dict[str, Any], timeout_s: float, accept: str
    ) -> Response:
        loop = asyncio.get_running_loop()
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = ConnectionPool(max_keepalive=32)
        sent = {**headers, "Content-Type": "application/json", "Accept": accept}
        try:
            return await pool.request(
                "POST",
                target.host,
                target.port,
                target.prefix or "/",
                sent,
                json_bytes(payload),
                read_timeout=timeout_s,
                connect_timeout=min(timeout_s, _CONNECT_TIMEOUT_S),
            )
        except HTTPTimeout:
            raise BackendTimeout() from None
        except HTTPTransportError as exc:
            raise unreachable(exc.kind) from None

    async def _fast_lines(
        self, target: Target, headers: dict[str, str], payload: dict[str, Any], timeout_s: float
    ) -> AsyncGenerator[str, None]:
        response = await self._fast_request(target, headers, payload, timeout_s, "text/event-stream")
        try:
            if response.status_code >= 300:
                raise StatusError(response.status_code, await response.read(), response.headers)
            async for line in sse_lines(response.iter_bytes()):
                if sse_data(line) == "[DONE]":
                    await response.drain(min(timeout_s, _DRAIN_GRACE_S))
                yield line
        except HTTPTimeout as exc:
            raise BodyBroken(exc.kind, timed_out=True) from None
        except HTTPTransportError as exc:
            raise BodyBroken(exc.kind) from None
        finally:
            response.close()

    # -- httpx ---------------------------------------------------------------------------------------------------

    def _client(self) -> httpx.AsyncClient:
        if self._given is not None:
            return self._given
        import httpx

        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            client = self._clients[loop] = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=32))
        return client

    async def _httpx_send(
        self, url: str, headers: dict[str, str], payload: dict[str, Any], timeout_s: float
    ) -> httpx.Response:
        import httpx

        client = self._client()
        timeout = httpx.Timeout(timeout_s, connect=min(timeout_s, _CONNECT_TIMEOUT_S))
        request = client.build_request("POST", url, json=payload, headers=headers, timeout=timeout)
        try:
            return await client.send(request, stream=True)
        except httpx.TimeoutException:
            raise BackendTimeout() from None
        except httpx.TransportError as exc:
            raise unreachable(type(exc).__name__) from None

    async def _httpx_post(
        self, url: str, headers: dict[str, str], payload: dict[str, Any], timeout_s: float
    ) -> tuple[int, Mapping[str, str], bytes]:
        import httpx

        response = await self._httpx_send(url, headers, payload, timeout_s)
        try:
            content = await response.aread()
        except httpx.TimeoutException:
            raise BackendTimeout() from None
        except httpx.TransportError as exc:
            raise cut_body(type(exc).__name__) from None
        finally:
            await response.aclose()
        return response.status_code, response.headers, content

    async def _httpx_lines(
        self, url: str, headers: dict[str, str], payload: dict[str, Any], timeout_s: float
    ) -> AsyncGenerator[str, None]:
        import httpx

        response = await self._httpx_send(url, headers, payload, timeout_s)
        try:
            if response.status_code >= 300:
                raise StatusError(response.status_code, await response.aread(), response.headers)
            async for line in sse_lines(response.aiter_bytes()):
                yield line
        except httpx.TimeoutException as exc:
            raise BodyBroken(type(exc).__name__, timed_out=True) from None
        except httpx.TransportError as exc:
            raise BodyBroken(type(exc).__name__) from None
        finally:
            await response.aclose()
