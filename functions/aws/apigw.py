"""API Gateway HTTP API (payload format 2.0) events to core Requests, and Responses back."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from core.http import Request, Response


class BadEvent(ValueError):
    """An event that is not an HTTP API 2.0 request."""


def to_request(event: Mapping[str, Any]) -> Request:
    try:
        http = event["requestContext"]["http"]
        method = str(http["method"]).upper()
        path = str(event.get("rawPath") or http["path"])
    except (KeyError, TypeError) as exc:
        raise BadEvent("not an API Gateway HTTP API (2.0) event") from exc
    headers = {str(k).lower(): str(v) for k, v in (event.get("headers") or {}).items()}
    raw_query = event.get("rawQueryString") or ""
    query = dict(parse_qsl(raw_query, keep_blank_values=True))
    body = event.get("body") or ""
    raw = base64.b64decode(body) if event.get("isBase64Encoded") else str(body).encode()
    return Request(method=method, path=path, headers=headers, query=query, body=raw)


async def to_result(response: Response) -> dict[str, Any]:
    """The Lambda result. HTTP APIs cannot stream, so an SSE body is collected and sent whole."""
    body = response.body
    if response.stream is not None:
        body = b"".join([chunk async for chunk in response.stream])
    text_like = response.headers.get("content-type", "").startswith(("application/json", "text/"))
    result: dict[str, Any] = {"statusCode": response.status, "headers": dict(response.headers)}
    if text_like:
        result["body"] = body.decode()
        result["isBase64Encoded"] = False
    else:
        result["body"] = base64.b64encode(body).decode()
        result["isBase64Encoded"] = True
    return result
