"""API errors in OpenAI's shape: ``{"error": {"message", "type", "code", "param"}}``."""

from __future__ import annotations

from collections.abc import Mapping


class APIError(Exception):
    """An error that maps to one HTTP status and one error body."""

    status: int = 500
    type: str = "api_error"
    code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        type: str | None = None,
        code: str | None = None,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if type is not None:
            self.type = type
        if code is not None:
            self.code = code
        self.param = param
        self.headers: dict[str, str] = dict(headers or {})

    def body(self) -> dict[str, object]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code, "param": self.param}}


class InvalidRequest(APIError):
    status = 400
    type = "invalid_request_error"


class Unauthorized(APIError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(APIError):
    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class NotFound(APIError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class MethodNotAllowed(APIError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(APIError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class PayloadTooLarge(APIError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(APIError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class QuotaExceeded(APIError):
    status = 429
    type = "insufficient_quota"
    code = "insufficient_quota"


class BackendError(APIError):
    """The inference backend failed. ``retryable`` errors are retried with backoff."""

    status = 502
    type = "api_error"
    code = "backend_error"

    def __init__(self, message: str, *, status: int = 502, retryable: bool = False, **kw: object) -> None:
        super().__init__(message, status=status, **kw)  # type: ignore[arg-type]
        self.retryable = retryable


class BackendTimeout(BackendError):
    def __init__(self, message: str = "the model backend did not answer in time") -> None:
        super().__init__(message, status=504, retryable=True, code="backend_timeout")


class ServiceUnavailable(APIError):
    status = 503
    type = "api_error"
    code = "service_unavailable"


class StoreThrottled(ServiceUnavailable):
    """The store refused a write because one item or partition is over its rate (DynamoDB's per-partition
    write units, Firestore's writes per document, Cosmos DB's RU/s per logical partition). The counters
    spread a busy tenant over more shards when they see it (``core.budget_shards``). To a caller it is the
    same 503 ``store_unavailable`` as any other store outage."""

    code = "store_unavailable"

    def __init__(self, message: str = "the database is busy or unreachable; retry shortly", **kw: object) -> None:
        kw.setdefault("headers", {"retry-after": "1"})
        super().__init__(message, **kw)  # type: ignore[arg-type]
