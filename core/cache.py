"""Caching: a per-process LRU with TTL (L1) in front of the store's TTL cache (L2)."""

from __future__ import annotations

import hashlib
import json
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

from core.ports import CacheStore, Clock, Metrics

K = TypeVar("K")
V = TypeVar("V")


class TTLCache(Generic[K, V]):
    """A thread-safe LRU whose entries also expire after ``ttl_s`` seconds."""

    def __init__(self, maxsize: int, ttl_s: float, clock: Clock, on_evict: Callable[[], None] | None = None) -> None:
        self._data: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._maxsize = maxsize
        self._ttl = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._on_evict = on_evict

    def lookup(self, key: K) -> tuple[bool, V | None]:
        with self._lock:
            entry = self._data.get(key)
            if entry is None:
                return False, None
            expires, value = entry
            if expires <= self._clock.now():
                del self._data[key]
                return False, None
            self._data.move_to_end(key)
            return True, value

    def put(self, key: K, value: V, ttl_s: float | None = None) -> None:
        evicted = 0
        with self._lock:
            self._data[key] = (self._clock.now() + (self._ttl if ttl_s is None else ttl_s), value)
            self._data.move_to_end(key)
            while len(self._data) > self._maxsize:
                self._data.popitem(last=False)
                evicted += 1
        if evicted and self._on_evict:
            for _ in range(evicted):
                self._on_evict()

    def pop(self, key: K) -> None:
        with self._lock:
            self._data.pop(key, None)

    def __len__(self) -> int:
        return len(self._data)


class CacheKey(NamedTuple):
    """Whose entry (stores keep entries per tenant) and the digest of what was asked."""

    tenant_id: str
    digest: str


def cache_key(tenant_id: str, model: str, kind: str, params: dict[str, Any], payload: Any) -> CacheKey:
    """Tenant + model + normalised parameters + input. Tenants never share entries."""
    canonical = json.dumps(
        {"t": tenant_id, "m": model, "k": kind, "p": params, "i": payload},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return CacheKey(tenant_id, hashlib.sha256(canonical.encode()).hexdigest())


# An L2 value starts with a marker and its expiry time, so that the L1 copy of an L2 hit expires with it.
_EXPIRY = struct.Struct("<4sd")
_MARKER = b"tnc1"


class ResponseCache:
    """Deterministic responses and embeddings, looked up in L1 then L2."""

    def __init__(
        self,
        store: CacheStore,
        clock: Clock,
        metrics: Metrics,
        ttl_s: float = 3600.0,
        l1_size: int = 2048,
        enabled: bool = True,
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._ttl = ttl_s
        self.enabled = enabled
        self._l1: TTLCache[CacheKey, bytes] = TTLCache(
            l1_size, ttl_s, clock, on_evict=lambda: metrics.incr("cache_evictions_total", layer="l1")
        )

    def get(self, key: CacheKey, model: str) -> bytes | None:
        if not self.enabled:
            return None
        value = self.get_l1(key, model)
        return value if value is not None else self.get_l2(key, model)

    def get_l1(self, key: CacheKey, model: str) -> bytes | None:
        """This process's copy only (never a store call); None on a miss, which ``get_l2`` then counts."""
        if not self.enabled:
            return None
        found, value = self._l1.lookup(key)
        if found and value is not None:
            self._metrics.incr("cache_hits_total", model=model, layer="l1")
            return value
        return None

    def get_l2(self, key: CacheKey, model: str) -> bytes | None:
        """The store's copy (a blocking call), kept in L1 when found."""
        if not self.enabled:
            return None
        now = self._clock.now()
        stored = self._store.cache_get(key.tenant_id, key.digest, now)
        if stored is not None and stored.startswith(_MARKER) and len(stored) >= _EXPIRY.size:
            _, expires_at = _EXPIRY.unpack_from(stored)
            value = stored[_EXPIRY.size :]
            self._metrics.incr("cache_hits_total", model=model, layer="l2")
            self._l1.put(key, value, ttl_s=min(self._ttl, expires_at - now))
            return value
        self._metrics.incr("cache_misses_total", model=model)
        return None

    def put(self, key: CacheKey, value: bytes) -> None:
        if not self.enabled:
            return
        expires_at = self._clock.now() + self._ttl
        self._l1.put(key, value)
        self._store.cache_put(key.tenant_id, key.digest, _EXPIRY.pack(_MARKER, expires_at) + value, expires_at)
