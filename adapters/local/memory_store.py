"""MemoryStore: a thread-safe in-memory Store, the fake of unit tests and benchmarks (policy in core.stores)."""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from adapters.local.memory_documents import MemoryDocuments
from core.domain import ApiKeyRecord, ModelSpec, SigningKey, Tenant, UsageAggregate, UsageRecord
from core.stores import CacheEntry, Loaded, StorePolicy, TransactionalCounters

_PURGE_EVERY = 1024


@dataclass(slots=True)
class _Counters:
    values: dict[str, int]
    expires_at: float | None


@dataclass(slots=True)
class _Daily:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_requests: int = 0
    cost: float = 0.0


@dataclass(slots=True)
class _State:
    tenants: dict[str, Tenant] = field(default_factory=dict)
    keys: dict[str, ApiKeyRecord] = field(default_factory=dict)
    counters: dict[str, _Counters] = field(default_factory=dict)
    usage: dict[str, UsageRecord] = field(default_factory=dict)
    daily: dict[tuple[str, str, str], _Daily] = field(default_factory=dict)
    cache: dict[tuple[str, str], CacheEntry] = field(default_factory=dict)
    models: dict[str, ModelSpec] = field(default_factory=dict)
    signing_keys: dict[str, SigningKey] = field(default_factory=dict)


class MemoryStore(MemoryDocuments, TransactionalCounters[_State], StorePolicy):
    """Every Store role in dictionaries behind one lock.

    Counter items expire when ``expires_at < now``; cache entries when ``expires_at <= now``.
    ``clock`` gives "now" for counters (the protocol passes no time to ``try_add``/``add``/``read``).
    """

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._clock = clock
        self._lock = threading.Lock()
        self._s = _State()
        self._writes = 0

    # -- tenants and keys ---------------------------------------------------------------------------

    def put_tenant(self, tenant: Tenant) -> None:
        with self._lock:
            self._s.tenants[tenant.id] = tenant

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        with self._lock:
            return self._s.tenants.get(tenant_id)

    def _load_tenants(self) -> list[Tenant]:
        with self._lock:
            return list(self._s.tenants.values())

    def put_key(self, key: ApiKeyRecord) -> None:
        with self._lock:
            self._s.keys[key.id] = key

    def get_key(self, key_id: str) -> ApiKeyRecord | None:
        with self._lock:
            return self._s.keys.get(key_id)

    def _load_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        with self._lock:
            return [k for k in self._s.keys.values() if k.tenant_id == tenant_id]

    # -- counters and usage writes (core.stores.TransactionalCounters) -------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[_State]:
        with self._lock:
            yield self._s
            self._wrote(self._clock())

    def _load_item(self, tx: _State, item: str, now: float) -> Loaded:
        counters = tx.counters.get(item)
        if counters is None or (counters.expires_at is not None and counters.expires_at < now):
            return None
        return counters.values, counters.expires_at

    def _save_item(
        self, tx: _State, item: str, fields: Mapping[str, int], expires_at: float | None, *, replace: bool
    ) -> None:
        if replace:
            tx.counters[item] = _Counters(dict(fields), expires_at)
        else:
            tx.counters[item].values.update(fields)

    def _wrote(self, now: float) -> None:
        self._writes += 1
        if self._writes % _PURGE_EVERY == 0:
            expired = [k for k, c in self._s.counters.items() if c.expires_at is not None and c.expires_at < now]
            for k in expired:
                del self._s.counters[k]
            for entry in [k for k, e in self._s.cache.items() if e.expires_at <= now]:
                del self._s.cache[entry]

    def _save_usage(self, tx: _State, record: UsageRecord, day: str) -> bool:
        if record.request_id in tx.usage:
            return False
        tx.usage[record.request_id] = record
        daily = tx.daily.setdefault((record.tenant_id, day, record.model), _Daily())
        daily.requests += 1
        daily.prompt_tokens += record.prompt_tokens
        daily.completion_tokens += record.completion_tokens
        daily.cached_requests += int(record.cached)
        daily.cost += record.cost
        return True

    # -- usage reads --------------------------------------------------------------------------------

    def _load_usage(self, tenant_id: str, request_id: str) -> UsageRecord | None:
        with self._lock:
            return self._s.usage.get(request_id)

    def _list_usage(self, tenant_id: str | None, start: float, end: float, limit: int) -> list[UsageRecord]:
        with self._lock:
            return [
                r
                for r in self._s.usage.values()
                if start <= r.created_at < end and (tenant_id is None or r.tenant_id == tenant_id)
            ]

    def _daily_usage(self, tenant_id: str | None, start_day: str, end_day: str) -> list[UsageAggregate]:
        with self._lock:
            return [
                UsageAggregate(
                    tenant_id=t,
                    day=day,
                    model=model,
                    requests=d.requests,
                    prompt_tokens=d.prompt_tokens,
                    completion_tokens=d.completion_tokens,
                    cached_requests=d.cached_requests,
                    cost=d.cost,
                )
                for (t, day, model), d in self._s.daily.items()
                if start_day <= day <= end_day and (tenant_id is None or t == tenant_id)
            ]

    # -- cache --------------------------------------------------------------------------------------

    def _load_cache_entry(self, tenant_id: str, key: str) -> CacheEntry | None:
        with self._lock:
            return self._s.cache.get((tenant_id, key))

    def _save_cache_entry(self, tenant_id: str, key: str, entry: CacheEntry) -> None:
        with self._lock:
            self._s.cache[(tenant_id, key)] = entry
            self._wrote(self._clock())

    # -- models and signing keys --------------------------------------------------------------------

    def put_model(self, spec: ModelSpec) -> None:
        spec = copy.deepcopy(spec)  # the spec holds dicts; keep callers from mutating the stored one
        with self._lock:
            self._s.models[spec.id] = spec

    def get_model(self, model_id: str) -> ModelSpec | None:
        with self._lock:
            return self._s.models.get(model_id)

    def _load_models(self) -> list[ModelSpec]:
        with self._lock:
            return list(self._s.models.values())

    def delete_model(self, model_id: str) -> bool:
        with self._lock:
            return self._s.models.pop(model_id, None) is not None

    def put_signing_key(self, key: SigningKey) -> None:
        with self._lock:
            self._s.signing_keys[key.kid] = key

    def _load_signing_keys(self) -> list[SigningKey]:
        with self._lock:
            return list(self._s.signing_keys.values())

    def close(self) -> None:
        """Nothing to release; present so both local stores can be closed alike."""
