"""Revoking keys and suspending tenants, so that it holds at once on every instance.

Each process caches key and tenant records for a few seconds (``Authenticator``, ``TenantDirectory``), so a
record alone reaches other instances only when their caches expire. What must stop at once is spending:
every route that spends tokens reserves through ``LimitEnforcer.reserve``, whose one conditional write
also checks the guard fields that ``guard_key`` and ``guard_tenant`` set. The guard is written before the
record, so there is no moment in which neither refuses. Routes that spend nothing (listing models, reading
usage, files) see the change when their instance's cached record expires (``key_cache_ttl_s``,
``tenant_cache_ttl_s``: 5 s by default, at most ``MAX_RECORD_CACHE_S``); this instance forgets at once.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from core.auth import api_keys
from core.auth.authenticator import Authenticator
from core.domain import ApiKeyRecord, Tenant
from core.limits import LimitEnforcer, RequestLimits
from core.observability import NullMetrics
from core.ports import Clock, KeyStore, Store, TenantStore
from core.tenants import TenantDirectory


class StoreOfTenantsAndKeys(TenantStore, KeyStore, Protocol):
    """What revocation writes: tenant and key records."""


class Revocations:
    """Key revocation and tenant suspension. ``auth`` and ``tenants``: this process's caches, told at once."""

    def __init__(
        self,
        store: StoreOfTenantsAndKeys,
        limits: RequestLimits,
        clock: Clock,
        auth: Authenticator | None = None,
        tenants: TenantDirectory | None = None,
    ) -> None:
        self._store = store
        self._limits = limits
        self._auth = auth
        self._tenants = tenants
        self._clock = clock

    @classmethod
    def beside_the_servers(cls, store: Store, clock: Clock) -> Revocations:
        """For code that writes the store outside a gateway (a CLI, a bootstrap): no caches to tell."""
        return cls(store, LimitEnforcer(store, clock, NullMetrics()), clock)

    def revoke_key(self, key: ApiKeyRecord) -> ApiKeyRecord:
        """Revoke a key and the access tokens issued for it; revoking a revoked key changes nothing."""
        if key.revoked_at is None:
            self._limits.guard_key(key.tenant_id, key.id)
            key = api_keys.revoked(key, self._clock.now())
            self._store.put_key(key)
        if self._auth is not None:
            self._auth.forget(key.id)
        return key

    def suspend(self, tenant: Tenant) -> Tenant:
        """Refuse every key of the tenant (and their tokens) until it is resumed; idempotent."""
        if tenant.suspended_at is None:
            now = self._clock.now()
            self._limits.guard_tenant(tenant.id, now)
            tenant = replace(tenant, suspended_at=now)
            self._store.put_tenant(tenant)
        self._forget(tenant.id)
        return tenant

    def resume(self, tenant: Tenant) -> Tenant:
        """Lift a suspension: at once on this instance, on others within their tenant cache's lifetime."""
        if tenant.suspended_at is not None:
            suspended_at = tenant.suspended_at
            tenant = replace(tenant, suspended_at=None)
            self._store.put_tenant(tenant)
            self._limits.unguard_tenant(tenant.id, suspended_at)
        self._forget(tenant.id)
        return tenant

    def _forget(self, tenant_id: str) -> None:
        if self._tenants is not None:
            self._tenants.forget(tenant_id)
