"""WriterShards: which daily-aggregate document a usage record adds to, so that none is written too often.

A store whose documents each take about one sustained write a second (Firestore) cannot add every request of a
busy tenant to a few shared aggregate documents, however many: a fixed count is either too small for a tenant
at thousands of requests a second or wasteful for every other. What a process knows exactly is its OWN write
rate, so each process (a function instance) adds to aggregate shards of its own: ``<writer><n>``, ``writer``
random per process, ``n`` taken round-robin from as many as its rate per tenant over the last ``window_s``
needs to keep each under ``writes_per_shard_s``. A tenant's aggregate of a day is then spread over the
processes that served it, each document written at most ``writes_per_shard_s`` a second, and readers add up
whatever shards exist (their names are not needed). Documents per (tenant, day, model): about the processes
that served it that day, plus its peak rate over ``writes_per_shard_s``.

Thread-safe (a Cloud Run instance writes from many threads); memory: one entry per tenant seen in the last
minute.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable

_FORGET_S = 60.0  # a tenant not written for this long is forgotten (its rate starts again from its next write)


class _TenantRate:
    __slots__ = ("count", "last", "next", "previous", "start")

    def __init__(self, now: float) -> None:
        self.start, self.count, self.previous, self.next, self.last = now, 0, 0, 0, now


class WriterShards:
    """The aggregate shards of one writer (a process); ``shard(tenant)`` names the one for the next write."""

    def __init__(
        self,
        writer: str | None = None,
        *,
        writes_per_shard_s: float = 0.5,
        window_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if writes_per_shard_s <= 0 or window_s <= 0:
            raise ValueError("writes_per_shard_s and window_s must be positive")
        self.writer = writer if writer is not None else secrets.token_hex(4)
        self._per_shard = writes_per_shard_s
        self._window = window_s
        self._clock = clock
        self._tenants: dict[str, _TenantRate] = {}
        self._lock = threading.Lock()

    def shards_for(self, writes_per_s: float) -> int:
        """Shards that keep each under the per-shard rate at this write rate."""
        return max(1, math.ceil(writes_per_s / self._per_shard))

    def shard(self, tenant_id: str) -> str:
        """The shard this writer's next aggregate write of ``tenant_id`` goes to (counts the write)."""
        now = self._clock()
        with self._lock:
            rate = self._tenants.get(tenant_id)
            if rate is None:
                if len(self._tenants) > 1024:
                    self._forget(now)
                rate = self._tenants[tenant_id] = _TenantRate(now)
            elapsed = now - rate.start
            if elapsed >= self._window:  # a new window: the last one's count if it was the one just before
                rate.previous = rate.count if elapsed < 2 * self._window else 0
                rate.start, rate.count = now, 0
            rate.count += 1
            rate.last = now
            shards = self.shards_for(max(rate.previous, rate.count) / self._window)
            n = rate.next % shards
            rate.next = n + 1
        return f"{self.writer}{n:x}"

    def _forget(self, now: float) -> None:
        for tenant_id in [t for t, r in self._tenants.items() if now - r.last > _FORGET_S]:
            del self._tenants[tenant_id]
