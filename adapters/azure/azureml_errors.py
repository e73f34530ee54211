"""The gateway's errors for Azure ML online endpoints: an error status, a refused key or token, a malformed body.

Azure ML's front end answers ``429`` (the endpoint's or a deployment's rate, or ``max_concurrent_requests_per_
instance`` reached) with ``Retry-After`` or ``retry-after-ms``; ``408`` when the scoring script ran past
``request_timeout_ms``; ``424`` when the scoring script or the model container failed; ``502``/``503`` when the
deployment is unhealthy or scaling. Messages come as ``{"message"}``, ``{"error": {"code", "message"}}``
(serverless, OpenAI-compatible containers), ``{"error": "..."}`` (TGI) or plain text.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from typing import Any

from core.errors import BackendError, BackendTimeout

_MAX_MESSAGE_CHARS = 500


def upstream_message(body: bytes | str) -> str:
    """The error message in a body, truncated; the text itself when it is not one of the JSON shapes."""
    data: Any = None
    with contextlib.suppress(ValueError):
        data = json.loads(body)
    message: object = None
    if isinstance(data, Mapping):
        error = data.get("error")
        message = error.get("message") if isinstance(error, Mapping) else error
        message = message or data.get("message") or data.get("detail")
    if not isinstance(message, str) or not message:
        message = body.decode(errors="replace") if isinstance(body, bytes) else body
    return message.strip()[:_MAX_MESSAGE_CHARS] or "no message"


def error_for_status(
    status: int, body: bytes, headers: Mapping[str, str], where: str, credentials: str = "credentials"
) -> BackendError:
    """The gateway error for an Azure ML answer with an error status; ``where`` names the endpoint, ``credentials``
    what the gateway sent (said when they are refused)."""
    detail = f"{upstream_message(body)} (HTTP {status})"
    if status == 429:
        return throttled(f"the Azure ML endpoint {where} is throttling requests: {detail}", retry_after(headers))
    if status in (408, 504):
        return BackendTimeout(f"the Azure ML endpoint {where} did not answer in time: {detail}")
    if status >= 500 or status == 424:  # 424: the scoring script or the model failed, not the request
        return BackendError(f"the Azure ML endpoint {where} failed: {detail}", status=502, retryable=True)
    if status in (401, 403):
        return misconfigured(f"the Azure ML endpoint {where} refused the gateway's {credentials}: {detail}")
    if status == 404 or status < 400:
        return misconfigured(f"the Azure ML endpoint {where} (or its deployment) was not found: {detail}")
    return BackendError(
        f"the Azure ML endpoint {where} rejected the request: {detail}",
        status=400,
        retryable=False,
        type="invalid_request_error",
        code="backend_rejected",
    )


def retry_after(headers: Mapping[str, str]) -> str | None:
    """``Retry-After`` in whole seconds: the header as sent, else ``retry-after-ms`` / ``x-ms-retry-after-ms``."""
    given = headers.get("retry-after")  # both clients' headers answer lowercase names
    if given:
        return given
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        value = headers.get(name)
        if value:
            try:
                return str(max(1, math.ceil(float(value) / 1000)))
            except ValueError:
                return None
    return None


def throttled(detail: str, after: str | None = None) -> BackendError:
    return BackendError(
        detail,
        status=429,
        retryable=True,
        type="rate_limit_error",
        code="backend_throttled",
        headers={"Retry-After": after} if after else None,
    )


def bad_response(where: str, detail: str) -> BackendError:
    return BackendError(
        f"the Azure ML endpoint {where} sent a malformed response: {detail}", code="backend_bad_response"
    )


def misconfigured(detail: str) -> BackendError:
    return BackendError(detail, status=502, retryable=False, code="backend_misconfigured")


def not_supported(detail: str) -> BackendError:
    return BackendError(detail, status=400, type="invalid_request_error", code="model_not_supported")
