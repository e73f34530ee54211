"""``VertexJobsRest``: the Vertex AI control-plane REST calls of fine-tuning (custom jobs, models, endpoints,
long-running operations) over a google-auth session, and the gateway errors for their failures.

Not ``google-cloud-aiplatform``: it takes seconds to import and brings gRPC. Every call blocks: the fine-tuning
service runs the tuner on worker threads, never on the event loop. The session is a
``google.auth.transport.requests.AuthorizedSession`` on the application default credentials (it refreshes the
token, and retries once on a 401), made on first use; tests pass a session of their own and ``api_url``.

=============================================================  ======  =========  ======================
Vertex AI answer                                               status  retryable  code
=============================================================  ======  =========  ======================
429 ``RESOURCE_EXHAUSTED`` naming a quota limit (GPUs, CPUs)     503     no         ``training_capacity``
429 ``RESOURCE_EXHAUSTED`` otherwise (request rate)             429     yes        ``backend_throttled``
408, 504, ``DEADLINE_EXCEEDED``, no answer in time             504     yes        ``backend_timeout``
5xx, ``UNAVAILABLE``, ``INTERNAL``, no connection              502     yes        ``backend_error``
other 4xx (403, 404, ``INVALID_ARGUMENT``, 401 ...)            502     no         ``backend_misconfigured``
=============================================================  ======  =========  ======================
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from adapters.gcp.vertex_errors import parse_error_body
from core.errors import BackendError, BackendTimeout

SCOPE = "https://www.googleapis.com/auth/cloud-platform"
TIMEOUT_S = 30.0
_QUOTA_LIMIT = re.compile(r"quota (metric|limit)s?|exceed(s|ed)? quota|quota .*exceeded", re.IGNORECASE)


class HttpResponse(Protocol):
    status_code: int
    content: bytes

    def json(self) -> Any: ...


class HttpSession(Protocol):
    """What is used of a ``requests.Session`` (an ``AuthorizedSession`` is one)."""

    def request(self, method: str, url: str, **kwargs: Any) -> HttpResponse: ...


class VertexApiError(Exception):
    """An error answer: its HTTP status, the canonical code (``NOT_FOUND``, ``ALREADY_EXISTS`` ...), the message."""

    def __init__(self, http_status: int, status: str, message: str) -> None:
        super().__init__(f"{http_status} {status}: {message}")
        self.http_status = http_status
        self.status = status
        self.message = message

    @property
    def not_found(self) -> bool:
        return self.status == "NOT_FOUND" or (self.http_status == 404 and not self.status)

    @property
    def already_exists(self) -> bool:
        return self.status == "ALREADY_EXISTS" or (self.http_status == 409 and not self.status)

    @property
    def failed_precondition(self) -> bool:
        return self.status == "FAILED_PRECONDITION"


def regional_url(location: str) -> str:
    if location == "global":
        return "https://aiplatform.googleapis.com"
    return f"https://{location}-aiplatform.googleapis.com"


class VertexJobsRest:
    """Calls on resource names (``projects/<p>/locations/<l>/customJobs/<id>``, ``.../operations/<id>``)."""

    def __init__(self, api_url: str, session: HttpSession | None = None, *, timeout_s: float = TIMEOUT_S) -> None:
        self._base = api_url.rstrip("/") + "/v1/"
        self._given = session
        self._session: HttpSession | None = None
        self._timeout_s = timeout_s
        self._lock = threading.Lock()

    @property
    def session(self) -> HttpSession:
        """The session passed in, else an authorized one on the default credentials, made on first use."""
        if self._given is not None:
            return self._given
        with self._lock:
            if self._session is None:
                import google.auth
                from google.auth.exceptions import DefaultCredentialsError
                from google.auth.transport.requests import AuthorizedSession

                try:
                    credentials, _ = google.auth.default(scopes=[SCOPE])
                except DefaultCredentialsError as exc:
                    raise BackendError(
                        f"Google credentials cannot be loaded for Vertex AI: {str(exc)[:300]}",
                        code="backend_misconfigured",
                    ) from None
                self._session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
            return self._session

    def get(self, name: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self.call("GET", name, params=params)

    def find(self, name: str) -> dict[str, Any] | None:
        """The resource, or None when it does not exist."""
        try:
            return self.get(name)
        except VertexApiError as exc:
            if exc.not_found:
                return None
            raise

    def post(self, path: str, body: Any, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        return self.call("POST", path, body=body, params=params)

    def operations(self, resource: str) -> list[dict[str, Any]]:
        """The long-running operations on ``resource`` (newest first, as Vertex AI lists them)."""
        found: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = self.get(f"{resource}/operations", {"pageToken": cursor} if cursor else None)
            found += [op for op in page.get("operations") or [] if isinstance(op, dict)]
            cursor = page.get("nextPageToken")
            if not cursor:
                return found

    def call(
        self, method: str, path: str, *, body: Any = None, params: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """One call, never retried here: the service polls again, and a create is not safe to repeat."""
        import requests

        try:
            response = self.session.request(
                method, self._base + path, json=body, params=params, timeout=self._timeout_s
            )
        except requests.Timeout:
            raise BackendTimeout("Vertex AI did not answer in time") from None
        except requests.RequestException as exc:
            raise BackendError(f"Vertex AI is unreachable: {type(exc).__name__}", status=502, retryable=True) from None
        if response.status_code >= 400:
            upstream = parse_error_body(response.content)
            raise VertexApiError(response.status_code, upstream.status, upstream.message)
        if not response.content:
            return {}
        found = response.json()
        return found if isinstance(found, dict) else {}


def job_error(exc: VertexApiError, what: str = "Vertex AI") -> BackendError:
    """The gateway error for a failed control-plane call (see the module's table)."""
    detail = f"{exc.message} ({exc.status or exc.http_status})"
    if exc.http_status == 429 or exc.status == "RESOURCE_EXHAUSTED":
        if _QUOTA_LIMIT.search(exc.message) and "per minute" not in exc.message.lower():
            return BackendError(f"no Vertex AI capacity for this job: {detail}", status=503, code="training_capacity")
        return BackendError(
            f"{what} is throttling: {detail}",
            status=429,
            retryable=True,
            type="rate_limit_error",
            code="backend_throttled",
        )
    if exc.http_status in (408, 504) or exc.status == "DEADLINE_EXCEEDED":
        return BackendTimeout(f"{what} did not answer in time: {detail}")
    if exc.http_status >= 500 or exc.status in ("UNAVAILABLE", "INTERNAL", "UNKNOWN", "ABORTED"):
        return BackendError(f"{what} failed: {detail}", status=502, retryable=True)
    return BackendError(f"{what} refused the call: {detail}", status=502, code="backend_misconfigured")


def operation_error(operation: Mapping[str, Any]) -> dict[str, Any] | None:
    """A done operation's ``error`` (a ``google.rpc.Status``), or None."""
    error = operation.get("error") if operation.get("done") else None
    return error if isinstance(error, dict) else None


def operation_kind(operation: Mapping[str, Any]) -> str:
    """``DeployModel``, ``UploadModel``, ``CreateEndpoint``...: from the metadata's type."""
    metadata = operation.get("metadata")
    kind = str(metadata.get("@type", "")) if isinstance(metadata, Mapping) else ""
    return kind.rsplit(".", 1)[-1].removesuffix("OperationMetadata")
