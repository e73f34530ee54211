"""The local server: ASGI scope -> core Request -> Gateway -> ASGI response (streams included)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from adapters.local.prometheus import PrometheusMetrics
from core.app import Gateway
from core.clock import new_id
from core.errors import PayloadTooLarge
from core.http import Request, Response, sane_request_id
from functions.local.batch_trigger import BatchTrigger, start_batch_trigger
from functions.local.bootstrap import DEFAULT_MODELS, LocalSettings, build_gateway

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class LocalApp:
    def __init__(
        self,
        gateway: Gateway,
        metrics: PrometheusMetrics,
        on_startup: Callable[[], None] | None = None,
        data_dir: Path | None = None,
    ) -> None:
        self.gateway = gateway
        self.metrics = metrics
        self._on_startup = on_startup
        self._data_dir = data_dir
        self._trigger: BatchTrigger | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        method: str = scope["method"]
        path: str = scope["path"]
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if path == "/metrics" and method == "GET":
            body = self.metrics.render().encode()
            response = Response(200, {"content-type": "text/plain; version=0.0.4"}, body)
            response.headers["x-request-id"] = _correlation_id(headers)
            await _send(send, response)
            return
        limit = self.gateway.max_body_for(method, path, headers)
        body_or_none = await _read_body(receive, limit)
        if body_or_none is None:
            # Answered here, before the gateway sees the request: it still gets a request id and is counted.
            err = PayloadTooLarge(f"request body above the limit of {limit} bytes")
            response = Response.error(err)
            response.headers["x-request-id"] = _correlation_id(headers)
            self.metrics.incr("requests_total", route="unmatched", status=str(err.status))
            await _send(send, response)
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        request = Request(method=method, path=path, headers=headers, query=query, body=body_or_none)
        response = await self.gateway.handle(request)
        await _send(send, response, receive)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self._on_startup is not None:
                    await asyncio.to_thread(self._on_startup)
                if self._data_dir is not None:
                    self._trigger = start_batch_trigger(self.gateway, self._data_dir)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._trigger is not None:
                    await self._trigger.stop()
                await self.gateway.stop_jobs()
                await self.gateway.give_back_budget()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _correlation_id(headers: dict[str, str]) -> str:
    """The rule core.app.Gateway applies: a caller's sane x-request-id is echoed, anything else replaced."""
    return sane_request_id(headers.get("x-request-id")) or new_id("req")


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The whole body, or None as soon as it grows past ``limit`` (no unbounded buffering)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _send(send: Send, response: Response, receive: Receive | None = None) -> None:
    headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers.items()]
    if response.stream is None:
        headers.append((b"content-length", str(len(response.body)).encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    if response.stream is None:
        await send({"type": "http.response.body", "body": response.body})
        return
    stream = response.stream
    # uvicorn's send() silently does nothing once the client is gone, so a stream would run to its
    # end (the model generating, the tenant charged) for nobody. Watch for the disconnect instead and
    # cancel the stream: the backend stops and metering charges only what was produced.
    gone = asyncio.ensure_future(_disconnected(receive)) if receive is not None else None
    step: asyncio.Future[bytes] | None = None
    try:
        iterator = aiter(stream)
        while True:
            step = asyncio.ensure_future(anext(iterator))
            await asyncio.wait({step} if gone is None else {step, gone}, return_when=asyncio.FIRST_COMPLETED)
            if not step.done():
                return  # the client left: the finally clause cancels the pending step
            try:
                chunk = step.result()
            except StopAsyncIteration:
                break
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})
    finally:
        if gone is not None:
            gone.cancel()
        if step is not None and not step.done():
            # Cancelling the pending step cancels the generator where it waits (the backend call).
            step.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await step
        closer = getattr(stream, "aclose", None)
        if closer is not None:
            await closer()


async def _disconnected(receive: Receive) -> None:
    """Returns when the client has gone away (the request body was read before the response)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def create_app() -> LocalApp:
    """uvicorn factory: every worker process builds its own gateway on the shared SQLite file."""
    settings = LocalSettings.from_env()
    gateway, metrics, backends = build_gateway(settings)

    def startup() -> None:
        if settings.preload:
            for spec in DEFAULT_MODELS:
                backends.warm(spec.backend)

    return LocalApp(gateway, metrics, startup, settings.data_dir)
