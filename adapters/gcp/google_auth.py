"""``GoogleAccessTokens``: OAuth access tokens for Google APIs from Application Default Credentials, cached until
shortly before they expire and refreshed off the event loop.

Loading the credentials (on Cloud Run, a call to the metadata server) and refreshing them are blocking HTTP
calls: they run on a worker thread, one at a time (callers that find the token stale together wait for the one
refresh). google-auth and its ``requests`` transport are imported on the first refresh, never at import.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from core.errors import BackendError

if TYPE_CHECKING:
    from google.auth.credentials import Credentials
    from google.auth.transport import Request

CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
# Refresh this long before the expiry: a token must not expire between its check and its use at Google
# (google-auth's own threshold is 3 min 45 s; tokens live an hour).
REFRESH_MARGIN = timedelta(minutes=5)
_MAX_DETAIL_CHARS = 300


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # google-auth's expiries are naive UTC


class GoogleAccessTokens:
    """Bearer tokens of one set of credentials: the ones passed in, else ``google.auth.default()``."""

    def __init__(
        self,
        credentials: Credentials | None = None,
        *,
        scopes: tuple[str, ...] = (CLOUD_PLATFORM,),
        request: Callable[[], Request] | None = None,
        now: Callable[[], datetime] = _utcnow,
    ) -> None:
        self._credentials = credentials
        self._scopes = scopes
        self._make_request = request
        self._request: Request | None = None
        self._now = now
        self._refused: str | None = None  # a token the API refused (401): never used again
        self._lock = threading.Lock()

    async def token(self) -> str:
        """A token valid for at least ``REFRESH_MARGIN``; refreshes on a worker thread when it is not."""
        fresh = self._fresh()
        if fresh is not None:
            return fresh
        return await asyncio.to_thread(self._refresh)

    @property
    def quota_project(self) -> str | None:
        """The project billed for quota when the credentials name one (user credentials, ``x-goog-user-project``)."""
        project = getattr(self._credentials, "quota_project_id", None)
        return project if isinstance(project, str) and project else None

    def invalidate(self, token: str) -> None:
        """The API refused ``token`` (401): the next call refreshes, whatever its expiry said."""
        self._refused = token

    def load(self) -> Credentials:
        """The credentials, loaded now (blocking) if none were passed in: a runtime calls this at start so that
        credentials that cannot be loaded are a clear error there rather than on the first request."""
        with self._lock:
            return self._loaded()

    def _fresh(self) -> str | None:
        credentials = self._credentials
        if credentials is None:
            return None
        token: str | None = credentials.token
        if not token or token == self._refused:
            return None
        expiry: datetime | None = credentials.expiry
        if expiry is not None and expiry - self._now() < REFRESH_MARGIN:
            return None
        return token

    def _loaded(self) -> Credentials:
        if self._credentials is None:
            import google.auth
            from google.auth.exceptions import DefaultCredentialsError

            try:
                self._credentials, _ = google.auth.default(scopes=list(self._scopes))
            except DefaultCredentialsError as exc:
                raise BackendError(
                    "Google credentials cannot be loaded: set GOOGLE_APPLICATION_CREDENTIALS or run with a "
                    f"service account ({_detail(exc)})",
                    status=502,
                    code="backend_misconfigured",
                ) from None
        return self._credentials

    def _refresh(self) -> str:
        from google.auth.exceptions import GoogleAuthError, TransportError

        with self._lock:
            fresh = self._fresh()  # another caller refreshed while this one waited
            if fresh is not None:
                return fresh
            credentials = self._loaded()
            try:
                credentials.refresh(self._transport())  # type: ignore[no-untyped-call]  # untyped in google-auth
            except TransportError as exc:
                raise BackendError(
                    f"the Google token endpoint is unreachable: {_detail(exc)}", status=502, retryable=True
                ) from None
            except GoogleAuthError as exc:  # RefreshError: says itself whether a retry may help
                raise BackendError(
                    f"Google credentials could not be refreshed: {_detail(exc)}",
                    status=502,
                    retryable=bool(getattr(exc, "retryable", False)),
                    code="backend_misconfigured",
                ) from None
            token: str | None = credentials.token
            if not token:
                raise BackendError("Google credentials gave no access token", code="backend_misconfigured")
            self._refused = None
            return token

    def _transport(self) -> Request:
        if self._request is None:
            if self._make_request is not None:
                self._request = self._make_request()
            else:
                from google.auth.transport.requests import Request as RequestsRequest

                self._request = RequestsRequest()
        return self._request


def _detail(exc: Exception) -> str:
    return str(exc)[:_MAX_DETAIL_CHARS] or type(exc).__name__
