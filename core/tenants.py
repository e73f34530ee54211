"""Tenants and their keys as the request path sees them: read through a short per-process cache."""

from __future__ import annotations

from core.cache import TTLCache
from core.domain import Tenant
from core.errors import Unauthorized
from core.ports import Clock, TenantStore


class TenantDirectory:
    def __init__(self, store: TenantStore, clock: Clock, cache_ttl_s: float = 5.0) -> None:
        self._store = store
        self._cache: TTLCache[str, Tenant | None] = TTLCache(10_000, cache_ttl_s, clock)

    def get(self, tenant_id: str) -> Tenant:
        found, tenant = self._cache.lookup(tenant_id)
        if not found:
            tenant = self._store.get_tenant(tenant_id)
            self._cache.put(tenant_id, tenant)
        if tenant is None:
            raise Unauthorized("the tenant of this credential no longer exists", code="unknown_tenant")
        return tenant

    def cached(self, tenant_id: str) -> bool:
        """Whether ``get(tenant_id)`` is answered from this process's cache (no store call)."""
        return self._cache.lookup(tenant_id)[0]

    def forget(self, tenant_id: str) -> None:
        self._cache.pop(tenant_id)
