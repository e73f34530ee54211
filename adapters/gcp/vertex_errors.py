"""How Vertex AI failures map to gateway errors: an HTTP status with Google's error body (``{"error": {"code",
"message", "status"}}``, the gRPC status name in ``status``) or a serving container's own (TGI's ``{"error",
"error_type"}``, an OpenAI error), and credentials that cannot give a token.

=====================================================  ======  =========  =============================
upstream                                               status  retryable  code
=====================================================  ======  =========  =============================
429, ``RESOURCE_EXHAUSTED`` (quota), TGI ``overloaded``  429     yes        ``backend_throttled``
408, 504, ``DEADLINE_EXCEEDED``                        504     yes        ``backend_timeout``
other 5xx, ``UNAVAILABLE``, ``INTERNAL``, TGI 424      502     yes        ``backend_error``
401 ``UNAUTHENTICATED`` (the token is refreshed)        502     yes        ``backend_misconfigured``
403, 404, ``FAILED_PRECONDITION`` (nothing deployed)   502     no         ``backend_misconfigured``
other 4xx (``INVALID_ARGUMENT``, TGI 422)              400     no         ``backend_rejected``
=====================================================  ======  =========  =============================
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.errors import BackendError, BackendTimeout

_MAX_MESSAGE_CHARS = 500
_THROTTLED = frozenset({"RESOURCE_EXHAUSTED"})
_TIMED_OUT = frozenset({"DEADLINE_EXCEEDED"})
_SERVER = frozenset({"UNAVAILABLE", "INTERNAL", "UNKNOWN", "ABORTED", "CANCELLED", "DATA_LOSS"})
_MISCONFIGURED = frozenset({"PERMISSION_DENIED", "NOT_FOUND", "FAILED_PRECONDITION", "UNIMPLEMENTED"})


@dataclass(frozen=True, slots=True)
class UpstreamError:
    """What an error body says: the message, the gRPC status name (Google) and the container's error type (TGI)."""

    message: str
    status: str = ""
    error_type: str = ""


def parse_error_body(body: bytes | str | Mapping[str, Any]) -> UpstreamError:
    """Google's envelope (also inside a one-element list, as streaming methods send it), TGI's, OpenAI's, or text."""
    data: Any = body
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
    if isinstance(data, list) and data:
        data = data[0]
    message: object = None
    status: object = ""
    error_type: object = ""
    if isinstance(data, Mapping):
        error = data.get("error")
        if isinstance(error, Mapping):  # Google and OpenAI
            message, status = error.get("message"), error.get("status") or ""
        else:  # TGI: {"error": "...", "error_type": "overloaded"}
            message, error_type = error, data.get("error_type") or ""
        message = message or data.get("message") or data.get("detail")
    if not isinstance(message, str) or not message:
        message = body.decode(errors="replace") if isinstance(body, bytes) else body if isinstance(body, str) else ""
    return UpstreamError(
        message.strip()[:_MAX_MESSAGE_CHARS] or "no message",
        status if isinstance(status, str) else "",
        error_type if isinstance(error_type, str) else "",
    )


def error_for_status(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> BackendError:
    """The gateway error for a Vertex AI answer with an error status."""
    upstream = parse_error_body(body)
    grpc, kind = upstream.status, upstream.error_type.lower()
    detail = f"{upstream.message} ({grpc or status})"
    if status == 429 or grpc in _THROTTLED or kind == "overloaded":
        return throttled(detail, (headers or {}).get("retry-after"))
    if status in (408, 504) or grpc in _TIMED_OUT:
        return BackendTimeout(f"Vertex AI did not answer in time: {detail}")
    if status >= 500 or grpc in _SERVER or status == 424:  # TGI's 424: the generation failed, not the request
        return BackendError(f"the Vertex AI endpoint failed: {detail}", status=502, retryable=True)
    if status == 401 or grpc == "UNAUTHENTICATED":
        # The cached token was refused (revoked, or expired early): the backend drops it, so a retry uses a new one.
        error = misconfigured(f"Vertex AI refused the gateway's credentials: {detail}")
        error.retryable = True
        return error
    if status in (403, 404) or grpc in _MISCONFIGURED or status < 400:
        return misconfigured(f"Vertex AI refused the call: {detail}")
    return BackendError(
        f"the Vertex AI endpoint rejected the request: {detail}",
        status=400,
        retryable=False,
        type="invalid_request_error",
        code="backend_rejected",
    )


def throttled(detail: str, retry_after: str | None = None) -> BackendError:
    return BackendError(
        f"the Vertex AI endpoint is throttling requests: {detail}",
        status=429,
        retryable=True,
        type="rate_limit_error",
        code="backend_throttled",
        headers={"Retry-After": retry_after} if retry_after else None,
    )


def misconfigured(detail: str) -> BackendError:
    return BackendError(detail, status=502, retryable=False, code="backend_misconfigured")


def not_supported(detail: str) -> BackendError:
    return BackendError(detail, status=400, type="invalid_request_error", code="model_not_supported")
