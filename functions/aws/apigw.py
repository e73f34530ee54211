"""API Gateway HTTP API (payload format 2.0) events to core Requests, and Responses back."""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qsl

from core.http import Request, Response, sane_request_id

#: API Gateway HTTP APIs answer 503 themselves when an integration has not answered in 30 s (a hard limit).
INTEGRATION_TIMEOUT_S = 30.0
#: How far API Gateway's clock (``timeEpoch``) may be ahead of the function's and still be trusted.
CLOCK_SKEW_S = 1.0


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


def deadline_of(event: Any, context: Any, *, now: float | None = None, wall: float | None = None) -> float | None:
    """When this invocation must have answered (``time.monotonic()`` seconds), None if nothing says.

    The earlier of Lambda's end (``context.get_remaining_time_in_millis()``) and API Gateway's integration
    timeout counted from the event's ``requestContext.timeEpoch``, which also covers a cold start's init time
    (not part of the function's timeout). A ``timeEpoch`` in the future or older than the integration timeout
    is not API Gateway's clock (a stored test event) and is ignored.
    """
    now = time.monotonic() if now is None else now
    left: list[float] = []
    remaining = getattr(context, "get_remaining_time_in_millis", None)
    if callable(remaining):
        left.append(remaining() / 1000)
    context_ = event.get("requestContext") if isinstance(event, Mapping) else None
    epoch_ms = context_.get("timeEpoch") if isinstance(context_, Mapping) else None
    if isinstance(epoch_ms, int | float) and not isinstance(epoch_ms, bool):
        age = (time.time() if wall is None else wall) - epoch_ms / 1000
        if -CLOCK_SKEW_S <= age <= INTEGRATION_TIMEOUT_S:
            left.append(INTEGRATION_TIMEOUT_S - max(age, 0.0))
    return now + min(left) if left else None


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
