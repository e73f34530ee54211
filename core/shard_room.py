"""Room for a reservation a shard refused for budget: a draw from the window's own item, or a rebalance.

See ``core.budget_shards`` for the design. ``ShardRoom.make`` is called after a reservation was refused
because a limited field (on the window's own item) or a budget (on a shard) is short; it returns whether
the reservation may be tried again, and the window item's values as last seen (what a refusal reports).
"""

from __future__ import annotations

from typing import TypeVar

from core.budget_shards import (
    BUDGET,
    ShardCounts,
    block,
    draw,
    is_guard,
    marked,
    rebalance,
    shard_item,
    short_of,
)
from core.domain import CounterChange
from core.leases import LeaseClock, epoch_field, reclaim, stale_slots
from core.ports import CounterStore

V = TypeVar("V")
_REMEMBERED = 4096  # window items whose values, or exhaustion, this process remembers at most


class ShardRoom:
    def __init__(self, counters: CounterStore, shards: ShardCounts, leases: LeaseClock) -> None:
        self._counters = counters
        self._shards = shards
        self._leases = leases
        self._parents: dict[str, dict[str, int]] = {}  # the window items' values as last seen
        self._exhausted: dict[str, float] = {}  # window item -> refuse without looking again until then

    def make(
        self, plan: CounterChange, change: CounterChange, shard: int, values: dict[str, int], now: float
    ) -> tuple[bool, dict[str, int]]:
        """Room for ``change`` (``plan`` on ``shard``), refused on ``values``: True when it may be tried again."""
        policy = self._shards.policy
        if not policy.on:
            return False, values
        if self._exhausted.get(plan.item, 0.0) > now:
            return False, self._parents.get(plan.item, values)
        limits = {f: lim for f, lim in plan.limits.items() if not is_guard(f)}
        if shard == 0:
            parent_values = values
            need = {
                f: values.get(f, 0) + plan.increments.get(f, 0) - lim
                for f, lim in limits.items()
                if values.get(f, 0) + plan.increments.get(f, 0) > lim
            }
        else:
            need = {name[len(BUDGET) :]: amount for name, amount in short_of(change, values).items()}
            drawn, parent_values = self._draw(plan, shard, need, limits)
            if drawn:
                return True, parent_values
            remainder = {f: max(0, limits[f] - parent_values.get(f, 0)) for f in need}
            need = {f: n - remainder[f] for f, n in need.items() if n > remainder[f]}
            if not need:  # the window item has enough again (a settlement, a rebalance): draw next round
                return True, parent_values
        expires_at = plan.expires_at or 0.0
        if shard and self._reclaimed(plan.item, parent_values, expires_at, now):
            return True, parent_values  # leaked reservations given back to the window item: draw again
        donors = {}
        for donor in marked(parent_values):
            if donor != shard:
                item = shard_item(plan.item, donor)
                values = self._counters.read(item)
                donors[donor] = self._counters.read(item) if self._reclaimed(item, values, expires_at, now) else values
        changes = rebalance(plan.item, need, donors, expires_at)
        if changes is None:
            self._remember(self._exhausted, plan.item, now + policy.refusal_memo_s)
            return False, parent_values
        self._counters.try_add_all(changes)
        return True, parent_values

    def _reclaimed(self, item: str, values: dict[str, int], expires_at: float, now: float) -> bool:
        """Give back the leaked reservations an item's stale lease slots hold (``core.leases``): a budget a
        dead process reserved on another shard counts again. Whether anything was given back."""
        given = False
        for slot in stale_slots(values, self._leases, now):
            change = reclaim(item, values, slot, values.get(epoch_field(slot), 0), expires_at)
            if change is not None:
                given = self._counters.try_add_all([change])[0] or given
        return given

    def _draw(
        self, plan: CounterChange, shard: int, need: dict[str, int], limits: dict[str, int]
    ) -> tuple[bool, dict[str, int]]:
        """A block for each short budget, from the window item; a smaller one if that is all it has."""
        seen = self._parents.get(plan.item, {})
        in_use = max(1, len(marked(seen)))
        fraction = self._shards.policy.block_fraction
        amounts = {f: block(limits[f], seen.get(f, 0), in_use, n, fraction) for f, n in need.items()}
        for _ in range(2):
            ok, values = self._counters.try_add_all(draw(plan.item, shard, amounts, limits, plan.expires_at or 0.0))
            self._remember(self._parents, plan.item, values[0])
            if ok:
                return True, values[0]
            remainder = {f: limits[f] - values[0].get(f, 0) for f in amounts}
            if any(remainder[f] < need[f] for f in need):
                return False, values[0]
            amounts = {f: min(amounts[f], remainder[f]) for f in amounts}
        return False, self._parents[plan.item]

    def used_estimate(self, minute: CounterChange, values: dict[str, int]) -> dict[str, int]:
        """What each limited minute field has used, as a shard sees it: the window item's grants (as last
        seen) less this shard's budget left. An estimate: other shards spend from their own budgets."""
        parent = self._parents.get(minute.item, {})
        return {f: max(0, parent.get(f, 0) - values.get(f"{BUDGET}{f}", 0)) for f in minute.limits if not is_guard(f)}

    @staticmethod
    def _remember(memory: dict[str, V], item: str, value: V) -> None:
        if len(memory) >= _REMEMBERED and item not in memory:
            memory.clear()
        memory[item] = value
