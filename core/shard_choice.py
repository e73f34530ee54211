"""Which shard a reservation tries (``core.limits``), and the tenant's shard count its processes share.

With the drawn design (``core.budget_shards``) a process spreads a tenant's requests over the shard count it
estimates from the rate it sees, learns the count the tenant's minute item publishes (so a new process does
not send its first requests to one item), and publishes what a throttle taught it. With a static split
(``core.static_split``) the shards of a minute are fixed by its limits: nothing to learn or publish.
"""

from __future__ import annotations

import contextlib

from core.budget_shards import SHARDS, ShardCounts
from core.domain import CounterChange
from core.errors import StoreThrottled
from core.ports import CounterStore
from core.shard_room import ShardRoom
from core.static_split import StaticSplit

_PUBLISHED_REMEMBERED = 4096


class ShardChoice:
    def __init__(self, counters: CounterStore, shards: ShardCounts, room: ShardRoom, split: StaticSplit | None) -> None:
        self._counters = counters
        self._shards = shards
        self._room = room
        self._split = split
        self._published: dict[str, int] = {}  # minute item -> the shard count this process wrote there

    def first(self, tenant_id: str, minute: CounterChange, period: CounterChange | None, now: float) -> int:
        """Where a reservation is tried first: a static split's shard, the window's own items while its budget
        is scarce, else one of the tenant's shards."""
        if self._split is not None:
            return self._split.pick(minute, self._shards.rng)
        if self._shards.policy.on and not self._shards.known(tenant_id):
            # A process's first request of a tenant: spread as the tenant's other processes do (one read).
            self._shards.learn(tenant_id, self._counters.read(minute.item).get(SHARDS, 0))
        scarce = self._room.scarce(minute.item, now) or (period is not None and self._room.scarce(period.item, now))
        return 0 if scarce else self._shards.pick(tenant_id)

    def other(self, tenant_id: str, minute: CounterChange, avoid: int) -> int:
        """Another shard than ``avoid`` (its item was throttled, or it could not draw)."""
        if self._split is not None:
            return self._split.pick(minute, self._shards.rng, avoid=avoid)
        return self._shards.pick(tenant_id, avoid=avoid)

    def spread(self, tenant_id: str, minute: CounterChange, now: float) -> bool:
        """A shard's own item was throttled: spread wider if the design can; whether there is elsewhere to go."""
        if self._split is not None:
            return self._split.span(minute) > 1
        return self._shards.throttled(tenant_id, now)

    def written(self, tenant_id: str, minute: CounterChange, shard: int, values: dict[str, int]) -> None:
        """A reservation wrote ``shard`` of the minute (seeing ``values``): learn or publish the shard count."""
        if self._split is not None:
            return
        if not shard or self._shards.unpublished(tenant_id, self._published.get(minute.item, 0)):
            self._publish(tenant_id, minute, values if not shard else None)

    def _publish(self, tenant_id: str, minute: CounterChange, values: dict[str, int] | None) -> None:
        """Learn the tenant's shard count from its minute item (``values``: as a write there saw it), or raise
        the item's count to what this process knows: one conditional write, refused when another process
        raised it meanwhile, made once per count and minute by a process."""
        published = values.get(SHARDS, 0) if values is not None else self._published.get(minute.item, 0)
        self._shards.learn(tenant_id, published)
        if raise_by := self._shards.unpublished(tenant_id, published):
            target = published + raise_by
            if len(self._published) > _PUBLISHED_REMEMBERED:
                self._published.clear()
            self._published[minute.item] = target  # tried once: a refusal means another raised it
            with contextlib.suppress(StoreThrottled):  # the count is advice; the next request tries again
                self._counters.try_add_all(
                    [CounterChange(minute.item, {SHARDS: raise_by}, {SHARDS: target}, minute.expires_at)]
                )


__all__ = ["ShardChoice"]
