"""How SageMaker runtime failures (botocore errors, stream error events) map to gateway errors."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)
from urllib3.exceptions import ProtocolError
from urllib3.exceptions import ReadTimeoutError as Urllib3ReadTimeout

from adapters.aws.sagemaker_wire import container_error_type
from adapters.openai_compat.backend import upstream_message
from core.errors import BackendError, BackendTimeout

THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "ModelNotReadyException"}
)
SERVER_CODES = frozenset(
    {"ServiceUnavailable", "InternalFailure", "InternalDependencyException", "InternalStreamFailure"}
)
DENIED_CODES = frozenset(
    {"AccessDeniedException", "UnrecognizedClientException", "InvalidSignatureException", "ExpiredTokenException"}
)
# Everything the runtime calls can raise that this module knows how to map.
#: A connection that broke: mid-stream, the stream was interrupted (not an endpoint that cannot be reached).
BROKEN_CONNECTION: tuple[type[Exception], ...] = (ConnectionClosedError, ProtocolError)
MAPPED_ERRORS: tuple[type[Exception], ...] = (
    ClientError,
    ConnectTimeoutError,
    ReadTimeoutError,
    Urllib3ReadTimeout,
    EndpointConnectionError,
    ConnectionClosedError,
    ProtocolError,
)


def backend_error(exc: Exception) -> BackendError:
    """The gateway error for a failed ``invoke_endpoint*`` call or a failed event stream."""
    if isinstance(exc, ConnectTimeoutError | ReadTimeoutError | Urllib3ReadTimeout):
        return BackendTimeout()
    if isinstance(exc, ClientError):
        return _client_error(exc.response, str(exc))
    if isinstance(exc, EndpointConnectionError | ConnectionClosedError | ProtocolError):
        return BackendError(f"the SageMaker runtime is unreachable: {type(exc).__name__}", status=502, retryable=True)
    return BackendError(f"the SageMaker call failed: {type(exc).__name__}", status=502, retryable=True)


def _client_error(response: Any, fallback: str) -> BackendError:
    error = response.get("Error") or {}
    code = str(error.get("Code") or "")
    message = str(error.get("Message") or fallback)[:500]
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
    if code == "ModelError":
        return _model_error(response, message)
    if code in THROTTLING_CODES or status == 429:
        return throttled(message)
    if code == "ModelStreamError":
        return BackendError(f"the model stream failed: {message}", status=502, retryable=True)
    if code in SERVER_CODES or status >= 500:
        return BackendError(f"the SageMaker runtime failed ({code or status}): {message}", status=502, retryable=True)
    if code == "ValidationError" or code in DENIED_CODES or status in (401, 403, 404):
        return misconfigured(f"SageMaker refused the call ({code or status}): {message}")
    return BackendError(f"the SageMaker call failed ({code or status}): {message}", status=502)


def _model_error(response: Any, message: str) -> BackendError:
    """The container itself answered an error: ``OriginalStatusCode`` and its body ``OriginalMessage``."""
    original = response.get("OriginalStatusCode")
    body = response.get("OriginalMessage")
    detail = upstream_message(body) if isinstance(body, str) and body else message
    kind = container_error_type(body) if isinstance(body, str) else None
    if original == 429 or kind == "overloaded":
        return throttled(detail)
    if kind in ("generation", "incomplete_generation"):  # TGI's 424/500: the model failed, not the request
        return BackendError(f"the model container failed: {detail}", status=502, retryable=True)
    if isinstance(original, int) and 400 <= original < 500:
        return BackendError(detail, status=400, retryable=False, type="invalid_request_error", code="backend_rejected")
    return BackendError(f"the model container failed ({original}): {detail}", status=502, retryable=True)


def throttled(message: str) -> BackendError:
    return BackendError(
        f"the model endpoint is throttling requests: {message}",
        status=429,
        retryable=True,
        type="rate_limit_error",
        code="backend_throttled",
    )


def misconfigured(detail: str) -> BackendError:
    return BackendError(detail, status=502, retryable=False, code="backend_misconfigured")
