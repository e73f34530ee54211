"""``EntraTokens``: Microsoft Entra access tokens for Azure ML endpoints, cached until shortly before they expire.

azure-identity is imported only here, and only when the first token of a route with ``auth: entra`` is asked for
(a deployment on endpoint keys never pays for it, nor needs it installed). Tests pass a credential of their own:
anything with ``get_token(*scopes)`` returning an object with ``token`` and ``expires_on`` (epoch seconds), as
azure-identity's credentials do, synchronous (run in a worker thread: it may do network I/O) or asynchronous.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
from typing import Any, Protocol

from adapters.azure.azureml_errors import misconfigured

#: The audience of Azure ML's data plane (online endpoints' scoring URIs).
SCOPE = "https://ml.azure.com/.default"
_EARLY_S = 300.0  # refresh this long before the token expires


class TokenCredential(Protocol):
    def get_token(self, *scopes: str) -> Any: ...


class EntraTokens:
    """One cached token for ``scope``; ``credential`` defaults to azure-identity's ``DefaultAzureCredential``
    (the Function App's managed identity on Azure)."""

    def __init__(self, credential: TokenCredential | None = None, scope: str = SCOPE) -> None:
        self._credential = credential
        self._scope = scope
        self._token: str | None = None
        self._expires_on = 0.0

    async def token(self) -> str:
        if self._token is not None and time.time() < self._expires_on - _EARLY_S:
            return self._token
        credential = self._load()
        try:
            if inspect.iscoroutinefunction(credential.get_token):  # azure.identity.aio
                got = await credential.get_token(self._scope)
            else:  # azure.identity's synchronous credentials do network I/O: off the event loop
                got = await asyncio.to_thread(credential.get_token, self._scope)
        except Exception as exc:  # ClientAuthenticationError, CredentialUnavailableError, a network failure
            error = misconfigured(f"no Microsoft Entra token for Azure ML: {type(exc).__name__}")
            error.retryable = True  # a managed identity endpoint that is briefly unavailable
            raise error from None
        token, expires_on = getattr(got, "token", None), getattr(got, "expires_on", 0)
        if not (isinstance(token, str) and token):
            raise misconfigured("the Entra credential gave no access token for Azure ML")
        self._token, self._expires_on = token, float(expires_on)
        return token

    def invalidate(self, token: str) -> None:
        """Drop ``token`` (the endpoint refused it): the next call gets a new one."""
        if self._token == token:
            self._token = None

    def _load(self) -> TokenCredential:
        if self._credential is None:
            try:  # by name: azure-identity is optional (not a dependency of deployments on endpoint keys)
                identity = importlib.import_module("azure.identity")
            except ImportError:
                raise misconfigured(
                    "an Azure ML route with auth 'entra' needs azure-identity (pip install azure-identity)"
                ) from None
            credential: TokenCredential = identity.DefaultAzureCredential()
            self._credential = credential
        return self._credential
