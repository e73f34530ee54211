"""Turns the credential of a request (API key or bearer JWT) into a Principal."""

from __future__ import annotations

from core.auth import api_keys
from core.auth.access_tokens import TokenService
from core.cache import TTLCache
from core.domain import ApiKeyRecord, Principal
from core.errors import Forbidden, Unauthorized
from core.http import Request
from core.ports import Clock, KeyStore
from core.tenants import TenantDirectory


class Authenticator:
    """Resolves credentials. Key and tenant records are cached per process for a few seconds, so a
    revocation or suspension made in another process reaches this one's routes within that time (at once in
    this one). Routes that spend tokens refuse at once everywhere: see ``core.auth.revocation``.
    """

    def __init__(
        self,
        keys: KeyStore,
        tokens: TokenService,
        clock: Clock,
        key_cache_ttl_s: float = 5.0,
        tenants: TenantDirectory | None = None,
    ) -> None:
        self._keys = keys
        self._tokens = tokens
        self._clock = clock
        self._tenants = tenants
        self._cache: TTLCache[str, ApiKeyRecord | None] = TTLCache(maxsize=10_000, ttl_s=key_cache_ttl_s, clock=clock)

    def key_record(self, key_id: str) -> ApiKeyRecord | None:
        found, record = self._cache.lookup(key_id)
        if not found:
            record = self._keys.get_key(key_id)
            self._cache.put(key_id, record)
        return record

    def forget(self, key_id: str) -> None:
        self._cache.pop(key_id)

    def from_api_key(self, presented: str) -> Principal:
        record = self.key_record(api_keys.parse_key(presented))
        if record is None or not api_keys.verify(presented, record):
            raise Unauthorized("invalid API key")
        if not record.is_active(self._clock.now()):
            raise Unauthorized("API key revoked or expired", code="key_revoked")
        self._check_tenant(record.tenant_id)
        return Principal(tenant_id=record.tenant_id, key_id=record.id, scopes=record.scopes, via="api_key")

    def from_token(self, token: str) -> Principal:
        principal = self._tokens.verify(token)
        record = self.key_record(principal.key_id)
        if record is None or record.tenant_id != principal.tenant_id or not record.is_active(self._clock.now()):
            raise Unauthorized("the API key behind this token is revoked or expired", code="key_revoked")
        self._check_tenant(record.tenant_id)
        # A token never carries more than its key has now.
        return Principal(principal.tenant_id, principal.key_id, principal.scopes & record.scopes, via="jwt")

    def _check_tenant(self, tenant_id: str) -> None:
        if self._tenants is not None and self._tenants.get(tenant_id).suspended_at is not None:
            raise Forbidden("the tenant of this credential is suspended", code="tenant_suspended")

    @staticmethod
    def presented(request: Request) -> list[str]:
        """The credentials the headers present, in the order they count: a bearer value, an ``x-api-key``."""
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        found = [value.strip()] if scheme.lower() == "bearer" else []
        found.append(request.headers.get("x-api-key", "").strip())
        return [c for c in found if c]

    def cached(self, request: Request) -> bool:
        """Whether ``authenticate(request)`` is answered from this process's caches, with no store call.

        Access tokens never are: verifying their RSA signature is worth a thread of its own.
        """
        credential = next(iter(self.presented(request)), None)
        if credential is None:
            return True
        if _is_token(credential):
            return False
        found, record = self._cache.lookup(api_keys.parse_key(credential))
        if not found:
            return False
        return record is None or self._tenants is None or self._tenants.cached(record.tenant_id)

    def authenticate(self, request: Request) -> Principal:
        credential = next(iter(self.presented(request)), None)
        if credential is None:
            raise Unauthorized(
                "missing credentials: send 'Authorization: Bearer <API key or access token>'",
                code="missing_credentials",
            )
        if _is_token(credential):
            return self.from_token(credential)
        return self.from_api_key(credential)


def _is_token(credential: str) -> bool:
    return credential.count(".") == 2 and not credential.startswith(api_keys.KEY_PREFIX + "_")


def require(principal: Principal, scope: str) -> None:
    if not principal.has(scope):
        raise Forbidden(f"this credential lacks the '{scope}' scope")
