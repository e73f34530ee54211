"""The Functions host's stand-in: HTTP (ASGI, under uvicorn) to the registered ``api`` function and back.

Azure Functions Core Tools cannot be installed here (its npm package downloads the host from a CDN), so this small
host does what the Functions host and the Python worker do for an HTTP trigger, and no more: reads the request
(up to the host's 100 MB), builds an ``azure.functions.HttpRequest`` (URL, headers, query params, the catch-all
route's ``path`` parameter, body), calls the function object the worker would index (``app.get_functions()``)
with a ``context`` holding a new invocation id, and turns its HttpResponse into the HTTP answer through the v2
model's own output converter (``HttpResponseConverter.encode``: the content type from the mimetype where the
function set none, as the worker does). Every invocation runs on uvicorn's one event loop, as on the worker's.

Unlike the real host it does not keep ``/admin/...`` for itself: the admin API answers there too (and under
``/_admin/...``, the path that works on Azure).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

import azure.functions as func
from azure.functions.http import HttpResponseConverter

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Hook = Callable[[], Awaitable[None]]

#: The Functions host's default request size limit (``maxRequestBodySize``, 100 MB).
MAX_REQUEST_BYTES = 104_857_600

log = logging.getLogger("textnlp.local.azure")


@dataclass(frozen=True)
class Context:
    """The ``context`` argument the worker passes (the fields a function reads)."""

    invocation_id: str
    function_name: str = "api"
    function_directory: str = ""


class FunctionsHost:
    """An ASGI app calling ``api`` (the registered function's user function) for every request."""

    def __init__(self, api: Callable[..., Awaitable[func.HttpResponse]], on_start: Hook, on_stop: Hook) -> None:
        self._api = api
        self._on_start = on_start
        self._on_stop = on_stop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        body = await _read_body(receive)
        if body is None:
            await _answer(send, 413, [(b"content-type", b"text/plain")], b"request body too large")
            return
        answer = await self._api(to_http_request(scope, body), Context(str(uuid.uuid4())))
        status, headers, data = from_http_response(answer)
        await _answer(send, status, headers, data)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self._on_start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self._on_stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def to_http_request(scope: Scope, body: bytes) -> func.HttpRequest:
    """The HttpRequest the worker would build for this ASGI request."""
    headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
    raw_query = scope.get("query_string", b"").decode("latin-1")
    host = headers.get("host", "127.0.0.1")
    raw_path = scope.get("raw_path") or scope["path"].encode()
    url = f"http://{host}{raw_path.decode('latin-1')}" + (f"?{raw_query}" if raw_query else "")
    return func.HttpRequest(
        scope["method"],
        url,
        headers=headers,
        params=dict(parse_qsl(raw_query, keep_blank_values=True)),
        route_params={"path": scope["path"].lstrip("/")},
        body=body,
    )


def from_http_response(answer: func.HttpResponse) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Status, headers and body as the worker sends them to the host (the v2 model's output converter)."""
    datum = HttpResponseConverter.encode(answer, expected_type=None).value
    headers = [(k.encode("latin-1"), v.value.encode("latin-1")) for k, v in datum["headers"].items()]
    body = datum["body"].value or b""
    if not any(k.lower() == b"content-length" for k, _ in headers):
        headers.append((b"content-length", str(len(body)).encode()))
    return int(datum["status_code"].value), headers, body


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _answer(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
