"""KeyVaultRest: the few Key Vault secrets REST calls (api-version 7.4) TextNLP makes, with Entra tokens.

Not ``azure-keyvault-secrets``: these four calls need no SDK. The bearer token comes from a token provider
(a callable answering a token for ``https://vault.azure.net/.default``); without one, azure-identity's
``DefaultAzureCredential`` (the Function App's managed identity) is imported and made on first use, never at
import. ``requests`` is imported on first use too; tests pass a session of their own and an ``endpoint`` (the
vault URL). Neither a secret's value nor a token is ever put in an error or a log line.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, cast
from urllib.parse import quote

API_VERSION = "7.4"
SCOPE = "https://vault.azure.net/.default"
TIMEOUT_S = 10.0
RETRYABLE = frozenset({429, 500, 502, 503, 504})
ATTEMPTS = 3
MAX_RETRY_AFTER_S = 5.0
TOKEN_MARGIN_S = 300.0  # a token is renewed this long before it expires


class HttpResponse(Protocol):
    status_code: int
    text: str
    headers: Mapping[str, str]

    def json(self) -> Any: ...


class HttpSession(Protocol):
    """What is used of a ``requests.Session``."""

    def request(self, method: str, url: str, **kwargs: Any) -> HttpResponse: ...


TokenProvider = Callable[[], str]


class KeyVaultError(Exception):
    """An error answer: its HTTP status and Key Vault's code (``SecretNotFound``, ``Forbidden``, ``Throttled``...)."""

    def __init__(self, http_status: int, code: str, message: str, inner: str = "") -> None:
        super().__init__(f"{http_status} {code}{f' ({inner})' if inner else ''}: {message}")
        self.http_status = http_status
        self.code = code
        self.inner = inner

    @property
    def not_found(self) -> bool:
        return self.http_status == 404

    @property
    def disabled(self) -> bool:
        """A read of a disabled version (403 ``Forbidden``, inner ``SecretDisabled``)."""
        return self.http_status == 403 and (self.inner == "SecretDisabled" or "disabled" in str(self).lower())


def managed_identity_token() -> TokenProvider:
    """A provider on azure-identity's ``DefaultAzureCredential``, tokens reused until 5 minutes before expiry."""
    import importlib

    identity: Any = importlib.import_module("azure.identity")  # only where no provider is given
    credential = identity.DefaultAzureCredential()
    lock = threading.Lock()
    held: list[tuple[str, float]] = []

    def token() -> str:
        with lock:
            if not held or time.time() > held[0][1] - TOKEN_MARGIN_S:
                got = credential.get_token(SCOPE)
                held[:] = [(str(got.token), float(got.expires_on))]
            return held[0][0]

    return token


class KeyVaultRest:
    """Calls on one vault (``https://<name>.vault.azure.net``); every call may be retried (see ``_call``)."""

    def __init__(
        self,
        vault_url: str,
        *,
        token_provider: TokenProvider | None = None,
        session: HttpSession | None = None,
    ) -> None:
        if not vault_url.startswith(("https://", "http://127.0.0.1", "http://localhost")):
            raise ValueError(f"not a vault URL (https://<name>.vault.azure.net): {vault_url!r}")
        self._vault = vault_url.rstrip("/")
        self._given_token = token_provider
        self._given_session = session
        self._token: TokenProvider | None = None
        self._session: HttpSession | None = None
        self._lock = threading.Lock()

    def get_secret(self, name: str, version: str = "") -> dict[str, Any]:
        """A version's bundle (``value``, ``id``, ``attributes``, ``tags``); the latest without ``version``."""
        return self._call("GET", _path(name, version))

    def set_secret(self, name: str, value: str, tags: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A new version holding ``value`` (a missing secret is created); its bundle."""
        body: dict[str, Any] = {"value": value, "contentType": "application/json"}
        if tags:
            body["tags"] = dict(tags)
        return self._call("PUT", _path(name), body=body)

    def update_version(self, name: str, version: str, *, enabled: bool) -> dict[str, Any]:
        return self._call("PATCH", _path(name, version), body={"attributes": {"enabled": enabled}})

    def list_versions(self, name: str) -> Iterator[dict[str, Any]]:
        """Every version's item (``id``, ``attributes``, ``tags``; no value), following ``nextLink``."""
        page = self._call("GET", f"{_path(name)}/versions", params={"maxresults": "25"})
        while True:
            yield from page.get("value") or []
            link = page.get("nextLink")
            if not link:
                return
            page = self._call("GET", str(link), absolute=True)

    @property
    def session(self) -> HttpSession:
        if self._given_session is not None:
            return self._given_session
        with self._lock:
            if self._session is None:
                import requests

                self._session = cast("HttpSession", requests.Session())
            return self._session

    def _bearer(self) -> str:
        if self._given_token is not None:
            return self._given_token()
        with self._lock:
            if self._token is None:
                self._token = managed_identity_token()
        return self._token()

    def _call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        absolute: bool = False,
    ) -> dict[str, Any]:
        # Every call here may be retried on throttling and 5xx: a PUT repeated adds a version with the same
        # value (which the signing keys' merge absorbs), a PATCH of ``enabled`` is idempotent.
        url = path if absolute else f"{self._vault}/{path}"
        query = None if absolute else {"api-version": API_VERSION, **(params or {})}
        for attempt in range(ATTEMPTS):
            headers = {"authorization": f"Bearer {self._bearer()}"}
            response = self.session.request(method, url, params=query, json=body, headers=headers, timeout=TIMEOUT_S)
            if response.status_code < 400:
                found = response.json()
                return found if isinstance(found, dict) else {}
            if response.status_code not in RETRYABLE or attempt + 1 == ATTEMPTS:
                raise _error(response)
            time.sleep(_retry_after(response, attempt))
        raise AssertionError("unreachable")  # pragma: no cover


def version_of(secret_id: str) -> str:
    """The version at the end of ``https://<vault>/secrets/<name>/<version>``."""
    return secret_id.rstrip("/").rsplit("/", 1)[-1]


def _path(name: str, version: str = "") -> str:
    return f"secrets/{quote(name, safe='')}" + (f"/{quote(version, safe='')}" if version else "")


def _retry_after(response: HttpResponse, attempt: int) -> float:
    try:
        given = float(response.headers.get("retry-after") or "")
    except ValueError:
        given = 0.1 * 2**attempt
    return max(0.0, min(given, MAX_RETRY_AFTER_S))


def _error(response: HttpResponse) -> KeyVaultError:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    inner = error.get("innererror") if isinstance(error.get("innererror"), dict) else {}
    return KeyVaultError(
        response.status_code,
        str(error.get("code") or ""),
        str(error.get("message") or f"HTTP {response.status_code}"),
        str((inner or {}).get("code") or ""),
    )
