"""``azure.functions.HttpRequest`` to core Requests, and core Responses back to ``azure.functions.HttpResponse``.

The Functions host has read the whole body before the worker sees the request (its own limit, 100 MB), so the
route's body limit is checked on the bytes given: above it, 413 before the gateway sees them.

No streaming: the v2 Python model of azure-functions 1.26 answers with an ``HttpResponse`` holding bytes. HTTP
streams exist only through the ``azurefunctions-extensions-http-fastapi`` worker extension (a FastAPI
``Request``/``StreamingResponse`` pair, ``PYTHON_ENABLE_INIT_INDEXING``), which this project does not ship (it
brings FastAPI and Starlette into the cold start). So an SSE answer (``stream: true``) is collected on the loop and
sent whole, as API Gateway HTTP APIs do on AWS: the caller gets every event, ``[DONE]`` included, at once; the
stream is metered exactly as when streamed (its settle step runs when it ends).

The Functions host reserves ``/admin/...`` for its own admin API (a catch-all route never sees those paths), so
``/_admin/...`` is accepted as the same routes on Azure (``ADMIN_ALIAS``); every other path is the other clouds'.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

import azure.functions as func

from core.http import Request, Response

#: Paths under it are the gateway's ``/admin/...`` (the host keeps ``/admin`` for itself).
ADMIN_ALIAS = "/_admin/"


def path_of(req: func.HttpRequest) -> str:
    """The request's path (decoded, as ASGI and Flask give it), the admin alias mapped."""
    path = unquote(urlsplit(req.url).path) or "/"
    if not path.startswith("/"):
        path = "/" + path
    if path.startswith(ADMIN_ALIAS) or path == ADMIN_ALIAS.rstrip("/"):
        path = "/admin" + path[len(ADMIN_ALIAS) - 1 :]
    return path


def headers_of(req: func.HttpRequest) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in req.headers.items()}


def to_request(req: func.HttpRequest, limit_for: Callable[[str, str, Mapping[str, str]], int]) -> Request | None:
    """The core Request, or None when the body is above the route's limit."""
    method = req.method.upper()
    path = path_of(req)
    headers = headers_of(req)
    body = req.get_body() or b""
    if len(body) > limit_for(method, path, headers):
        return None
    query = {str(k): str(v) for k, v in req.params.items()}
    return Request(method=method, path=path, headers=headers, query=query, body=body)


async def to_http_response(response: Response) -> func.HttpResponse:
    """The HttpResponse; an SSE stream is collected first (see the module docstring), and closed on every way
    out so its settle step runs on the loop."""
    body = response.body
    stream = response.stream
    if stream is not None:
        chunks: list[bytes] = []
        try:
            async for chunk in stream:
                chunks.append(chunk)
        finally:
            closer: Any = getattr(stream, "aclose", None)
            if closer is not None:
                with contextlib.suppress(Exception):
                    await closer()
        body = b"".join(chunks)
    headers = dict(response.headers)
    mimetype = headers.get("content-type", "application/octet-stream").split(";")[0]
    return func.HttpResponse(body, status_code=response.status, headers=headers, mimetype=mimetype)
