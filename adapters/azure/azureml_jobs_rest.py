"""``AzureMLRest``: the Azure Resource Manager calls of fine-tuning on one Azure ML workspace (jobs, environments,
models, online endpoints and deployments, long-running operations), with Microsoft Entra tokens, retries, and the
gateway's errors for what Azure refuses.

Not ``azure-ai-ml``: it takes about 3 s to import. httpx (sync) and azure-identity are imported on the first call,
so importing this costs a cold start nothing. Every call blocks: the fine-tuning service runs the tuner on worker
threads. Tests pass a credential of their own (``get_token(scope)`` -> ``.token``, ``.expires_on``) and ``api_url``.

=========================================  ==================================================================
Azure answer                               what the caller gets
=========================================  ==================================================================
401 (after one fresh token), 403           ``BackendError`` 502 ``backend_misconfigured`` naming the workspace
429, 5xx, no connection, no answer         retried with jittered backoff (``Retry-After`` honoured), then 503
other 4xx                                  ``ArmError`` (status, ARM code, message): the caller decides
=========================================  ==================================================================
"""

from __future__ import annotations

import importlib
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from adapters.azure.azureml_errors import misconfigured, upstream_message
from core.errors import BackendError, ServiceUnavailable

if TYPE_CHECKING:
    import httpx

API_VERSION = "2024-04-01"
SCOPE = "https://management.azure.com/.default"
ARM_URL = "https://management.azure.com"
TIMEOUT_S = 30.0
_EARLY_S = 300.0  # a token is refreshed this long before it expires
_MAX_WAIT_S = 30.0  # the longest Retry-After honoured between two attempts


class TokenCredential(Protocol):
    def get_token(self, *scopes: str) -> Any: ...


class ArmError(Exception):
    """A 4xx answer other than 401/403: its status, the ARM error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message

    @property
    def not_found(self) -> bool:
        return self.status == 404


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


class AzureMLRest:
    """Calls on paths under one workspace (``jobs/<name>``); ``where`` names it in errors (never a token)."""

    def __init__(
        self,
        api_url: str,
        workspace_path: str,
        where: str,
        credential: TokenCredential | None = None,
        client: httpx.Client | None = None,
        *,
        attempts: int = 4,
        backoff_s: float = 0.5,
        timeout_s: float = TIMEOUT_S,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base = api_url.rstrip("/")
        self.workspace_path = workspace_path
        self.where = where
        self._credential, self._client = credential, client
        self._attempts, self._backoff_s, self._timeout_s, self._sleep = max(1, attempts), backoff_s, timeout_s, sleep
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    # --- calls ----------------------------------------------------------------------------------------------

    def get(self, path: str) -> dict[str, Any]:
        return self.call("GET", path).body

    def find(self, path: str) -> dict[str, Any] | None:
        """The resource, or None when it does not exist."""
        try:
            return self.get(path)
        except ArmError as exc:
            if exc.not_found:
                return None
            raise

    def put(self, path: str, body: Any) -> Answer:
        return self.call("PUT", path, body)

    def url(self, path: str) -> str:
        suffix = f"/{path}" if path else ""
        return f"{self.base}{self.workspace_path}{suffix}?api-version={API_VERSION}"

    def call(self, method: str, path: str, body: Any = None, *, absolute: bool = False) -> Answer:
        """One ARM call, retried on throttling, 5xx and transport failures (ARM PUTs are create-or-update and
        POST cancel is idempotent, so repeating any of them is safe)."""
        import httpx

        url = self._same_host(path) if absolute else self.url(path)
        refreshed, last = False, ""
        for attempt in range(self._attempts):
            token = self._bearer()
            headers = {"authorization": f"Bearer {token}", "accept": "application/json"}
            try:
                response = self._http().request(method, url, json=body, headers=headers, timeout=self._timeout_s)
            except httpx.TimeoutException:
                last, wait = "no answer in time", None
            except httpx.TransportError as exc:
                last, wait = f"unreachable ({type(exc).__name__})", None
            else:
                status = response.status_code
                if status == 401 and not refreshed and attempt + 1 < self._attempts:  # one fresh token, at once
                    refreshed = True
                    self._drop(token)
                    continue
                if status in (401, 403):
                    raise self._refused(status, response.content)
                if status != 429 and status < 500:
                    return self._answer(status, response)
                last = f"{upstream_message(response.content)} (HTTP {status})"
                wait = _retry_after(response.headers)
            if attempt + 1 < self._attempts:
                self._sleep(self._delay(attempt, wait))
        raise ServiceUnavailable(
            f"the Azure ML workspace {self.where} is unavailable after {self._attempts} attempts: {last}",
            headers={"retry-after": "10"},
        )

    def operation(self, answer: Answer) -> tuple[str, str]:
        """Where a long-running operation started by ``answer`` is: (``InProgress``/``Succeeded``/``Failed``/
        ``Canceled``, error message), read once from its ``Azure-AsyncOperation`` (else ``Location``: 202 while it
        runs) URL; an answer without either header finished in place."""
        url = answer.headers.get("azure-asyncoperation") or answer.headers.get("location")
        if not url:
            return "Succeeded", ""
        try:
            found = self.call("GET", url, absolute=True)
        except ArmError as exc:
            if exc.not_found:  # not visible yet, or expired: the resource's provisioningState says the rest
                return "InProgress", ""
            raise
        status = str(found.body.get("status") or ("InProgress" if found.status == 202 else "Succeeded"))
        error = found.body.get("error")
        message = str(error.get("message") or error.get("code") or "") if isinstance(error, Mapping) else ""
        return status, message[:500]

    # --- pieces ---------------------------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                import httpx

                self._client = httpx.Client(timeout=self._timeout_s, follow_redirects=False)
            return self._client

    def _bearer(self) -> str:
        """A cached token for ``SCOPE``; the credential (default: azure-identity's ``DefaultAzureCredential``,
        the Function App's managed identity) is asked only when there is none or it is about to expire."""
        with self._lock:
            if self._token is not None and time.time() < self._token[1] - _EARLY_S:
                return self._token[0]
            if self._credential is None:
                try:  # by name: azure-identity is imported on the first call of this path only
                    identity = importlib.import_module("azure.identity")
                except ImportError:
                    raise misconfigured(
                        "Azure ML fine-tuning needs azure-identity (pip install azure-identity)"
                    ) from None
                self._credential = identity.DefaultAzureCredential()
            credential = self._credential
        try:
            got = credential.get_token(SCOPE)
        except Exception as exc:  # ClientAuthenticationError, CredentialUnavailableError, a network failure
            error = misconfigured(
                f"no Microsoft Entra token for the Azure ML workspace {self.where}: {type(exc).__name__}"
            )
            error.retryable = True
            raise error from None
        token = getattr(got, "token", None)
        if not (isinstance(token, str) and token):
            raise misconfigured(f"the Entra credential gave no token for the Azure ML workspace {self.where}")
        with self._lock:
            self._token = (token, float(getattr(got, "expires_on", 0) or 0))
        return token

    def _drop(self, token: str) -> None:
        with self._lock:
            if self._token is not None and self._token[0] == token:
                self._token = None

    def _refused(self, status: int, content: bytes) -> BackendError:
        hint = "the token was refused" if status == 401 else "the gateway's identity lacks a role on it"
        return misconfigured(
            f"the Azure ML workspace {self.where} refused the gateway's Microsoft Entra credentials ({hint}): "
            f"{upstream_message(content)} (HTTP {status})"
        )

    def _answer(self, status: int, response: httpx.Response) -> Answer:
        body: Any = None
        if response.content:
            try:
                body = response.json()
            except ValueError:
                body = None
        if status >= 400:
            error = body.get("error") if isinstance(body, dict) else None
            code = str(error.get("code") or "") if isinstance(error, dict) else ""
            raise ArmError(status, code, upstream_message(response.content))
        return Answer(
            status, body if isinstance(body, dict) else {}, {k.lower(): v for k, v in response.headers.items()}
        )

    def _same_host(self, url: str) -> str:
        """An operation URL from Azure's headers, only on the API's own host (a token never goes elsewhere)."""
        if urlsplit(url).netloc != urlsplit(self.base).netloc or not url.startswith(("https://", "http://")):
            raise BackendError(
                f"the Azure ML workspace {self.where} named an operation on another host", code="backend_bad_response"
            )
        return url

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, _MAX_WAIT_S)
        return random.uniform(0, self._backoff_s * 2**attempt)  # noqa: S311  # nosec B311 - jitter, not a secret


def _retry_after(headers: Mapping[str, str]) -> float | None:
    for name, scale in (("retry-after-ms", 1000.0), ("x-ms-retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value:
            try:
                return max(0.0, float(value) / scale)
            except ValueError:
                return None
    return None


def arm_error(exc: ArmError, where: str, what: str = "Azure ML") -> BackendError:
    """The gateway error for a refused control-plane call: a quota is a 503 ``training_capacity``; anything else
    (a compute, datastore or environment that does not exist, a body Azure does not take) is the deployment's
    configuration, a 502 ``backend_misconfigured``."""
    detail = deploy_refusal(exc)
    if "quota" in exc.code.lower() or "quota" in exc.message.lower():
        return BackendError(
            f"no Azure ML capacity for this job in {where}: {detail}", status=503, code="training_capacity"
        )
    return misconfigured(f"{what} refused the call (workspace {where}): {detail}")


def deploy_refusal(exc: ArmError) -> str:
    return f"{exc.message} ({exc.code or exc.status})"
