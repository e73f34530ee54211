"""API Gateway HTTP API (payload format 2.0) events to core Requests, and Responses back."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from core.http import Request, Response, sane_request_id


class BadEvent(ValueError):
    """An event that is not an HTTP API 2.0 request."""


def to_request(event: Any) -> Request:
    """The core Request of an HTTP API 2.0 event; BadEvent for anything else (answered 400, never 500)."""
    try:
        http = event["requestContext"]["http"]
        method = str(http["method"]).upper()
        path = str(event.get("rawPath") or http["path"])
    except (KeyError, TypeError, AttributeError) as exc:
        raise BadEvent("not an API Gateway HTTP API (2.0) event") from exc
    if not path.startswith("/"):
        raise BadEvent("the event's path is not absolute")
    raw_headers = event.get("headers") or {}
    if not isinstance(raw_headers, Mapping):
        raise BadEvent("the event's headers are not an object")
    headers = {str(k).lower(): str(v) for k, v in raw_headers.items()}
    raw_query = event.get("rawQueryString") or ""
    if not isinstance(raw_query, str):
        raise BadEvent("the event's rawQueryString is not a string")
    query = dict(parse_qsl(raw_query, keep_blank_values=True))
    body = event.get("body") or ""
    if not isinstance(body, str):
        raise BadEvent("the event's body is not a string")
    if event.get("isBase64Encoded"):
        try:
            raw = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadEvent("the event's body is not valid base64") from exc
    else:
        raw = body.encode()
    return Request(method=method, path=path, headers=headers, query=query, body=raw)


def request_id_of(event: Any) -> str | None:
    """API Gateway's request id (base64 with its "=" padding, which core accepts), if the event has a sane one."""
    context = event.get("requestContext") if isinstance(event, Mapping) else None
    found = context.get("requestId") if isinstance(context, Mapping) else None
    return sane_request_id(found) if isinstance(found, str) else None


async def to_result(response: Response) -> dict[str, Any]:
    """The Lambda result. HTTP APIs cannot stream, so an SSE body is collected and sent whole."""
    body = response.body
    if response.stream is not None:
        body = b"".join([chunk async for chunk in response.stream])
    result: dict[str, Any] = {"statusCode": response.status, "headers": dict(response.headers)}
    if response.headers.get("content-type", "").startswith(("application/json", "text/")):
        try:
            result["body"] = body.decode()
            result["isBase64Encoded"] = False
            return result
        except UnicodeDecodeError:
            pass  # a text type with bytes that are not UTF-8 travels as binary
    result["body"] = base64.b64encode(body).decode()
    result["isBase64Encoded"] = True
    return result
