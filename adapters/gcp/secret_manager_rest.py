"""SecretManagerRest: the few Secret Manager v1 REST calls TextNLP makes, over a google-auth session.

Not ``google-cloud-secret-manager``: its gRPC stack costs a cold start far more than these calls do. The
session is a ``google.auth.transport.requests.AuthorizedSession`` on the application default credentials
(the function's service account), made on first use; tests pass a session of their own and ``endpoint``.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Mapping
from typing import Any, Protocol

ENDPOINT = "https://secretmanager.googleapis.com/v1"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"
TIMEOUT_S = 10.0
RETRYABLE = frozenset({429, 500, 502, 503, 504})
READ_ATTEMPTS = 3


class HttpResponse(Protocol):
    status_code: int
    text: str

    def json(self) -> Any: ...


class HttpSession(Protocol):
    """What is used of a ``requests.Session`` (an ``AuthorizedSession`` is one)."""

    def request(self, method: str, url: str, **kwargs: Any) -> HttpResponse: ...


class SecretManagerError(Exception):
    """An error answer: its HTTP status and canonical code (``NOT_FOUND``, ``FAILED_PRECONDITION``, ...)."""

    def __init__(self, http_status: int, status: str, message: str) -> None:
        super().__init__(f"{http_status} {status}: {message}")
        self.http_status = http_status
        self.status = status

    @property
    def not_found(self) -> bool:
        return self.status == "NOT_FOUND" or (self.http_status == 404 and not self.status)

    @property
    def stale_etag(self) -> bool:
        """A request whose etag is not the resource's: FAILED_PRECONDITION (400, what Secret Manager
        documents) or ABORTED (409, what AIP-154 prescribes); never ALREADY_EXISTS, also a 409."""
        return self.status in ("FAILED_PRECONDITION", "ABORTED")


class SecretManagerRest:
    """Calls on resource names (``projects/<project>/secrets/<id>``, ``.../versions/<n|latest|alias>``)."""

    def __init__(self, session: HttpSession | None = None, *, endpoint: str = ENDPOINT) -> None:
        self._given = session
        self._session: HttpSession | None = None
        self._endpoint = endpoint.rstrip("/")
        self._lock = threading.Lock()

    @property
    def session(self) -> HttpSession:
        """The session passed in, else an authorized one on the default credentials, made on first use."""
        if self._given is not None:
            return self._given
        with self._lock:
            if self._session is None:
                import google.auth
                from google.auth.transport.requests import AuthorizedSession

                credentials, _ = google.auth.default(scopes=[SCOPE])
                self._session = AuthorizedSession(credentials)  # type: ignore[no-untyped-call]
            return self._session

    def get_secret(self, secret: str) -> dict[str, Any]:
        return self._call("GET", secret)

    def create_secret(self, secret: str) -> dict[str, Any]:
        """Create ``projects/<p>/secrets/<id>`` with automatic replication (ALREADY_EXISTS if it exists)."""
        parent, _, secret_id = secret.rpartition("/secrets/")
        body: dict[str, Any] = {"replication": {"automatic": {}}}
        return self._call("POST", f"{parent}/secrets", body=body, params={"secretId": secret_id})

    def add_version(self, secret: str, data: bytes) -> int:
        """Add a version holding ``data`` (with its CRC32C, checked by the service); its number."""
        payload = {"data": base64.b64encode(data).decode(), "dataCrc32c": str(_crc32c(data))}
        found = self._call("POST", f"{secret}:addVersion", body={"payload": payload})
        return version_number(str(found["name"]))

    def access(self, version: str) -> tuple[int, bytes]:
        """A version's number and data (``version`` may name it by number, ``latest`` or an alias)."""
        found = self._call("GET", f"{version}:access")
        payload = found.get("payload") or {}
        data = base64.b64decode(payload.get("data") or "")
        checksum = payload.get("dataCrc32c")
        if checksum is not None and int(checksum) != _crc32c(data):
            raise SecretManagerError(500, "DATA_LOSS", f"{found.get('name')}: the payload's CRC32C does not match")
        return version_number(str(found["name"])), data

    def set_aliases(self, secret: str, aliases: Mapping[str, int], etag: str) -> dict[str, Any]:
        """Replace the secret's version aliases if its etag is still ``etag`` (else a ``stale_etag`` error)."""
        body = {"versionAliases": {name: str(number) for name, number in aliases.items()}, "etag": etag}
        return self._call("PATCH", secret, body=body, params={"updateMask": "versionAliases"})

    def destroy_version(self, version: str) -> None:
        self._call("POST", f"{version}:destroy", body={})

    def _call(
        self, method: str, path: str, *, body: Any = None, params: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        # Reads are retried on throttling and 5xx; writes never (an addVersion retried would add twice, a
        # patch retried after it applied would fail its own etag).
        reads = method == "GET"
        for attempt in range(READ_ATTEMPTS if reads else 1):
            response = self.session.request(
                method, f"{self._endpoint}/{path}", json=body, params=params, timeout=TIMEOUT_S
            )
            if response.status_code < 400:
                found = response.json()
                return found if isinstance(found, dict) else {}
            if not (reads and response.status_code in RETRYABLE and attempt + 1 < READ_ATTEMPTS):
                raise _error(response)
            time.sleep(0.1 * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover


def version_number(name: str) -> int:
    """The number at the end of ``projects/<p>/secrets/<id>/versions/<n>``."""
    return int(name.rsplit("/", 1)[-1])


def _error(response: HttpResponse) -> SecretManagerError:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    return SecretManagerError(
        response.status_code, str(error.get("status") or ""), str(error.get("message") or response.text[:200])
    )


def _crc32c(data: bytes) -> int:
    import google_crc32c

    return int(google_crc32c.value(data))
