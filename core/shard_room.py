"""Room for a reservation a shard refused for budget: a draw from the window's own item, or a rebalance.

See ``core.budget_shards`` for the design. ``ShardRoom.make`` is called after a reservation was refused
because a limited field (on the window's own item) or a budget (on a shard) is short; it returns whether
the reservation may be tried again, and the window item's values as last seen (what a refusal reports).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from core.budget_shards import (
    NO_MOVES,
    Moves,
    ShardCounts,
    block,
    budget,
    budget_of,
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

if TYPE_CHECKING:
    from core.static_split import StaticSplit


def tenant_of(item: str) -> str:
    """The tenant of a window item (``<kind>|<tenant>|<window>``)."""
    return item.split("|")[1]


V = TypeVar("V")
_REMEMBERED = 4096  # window items whose values, or exhaustion, this process remembers at most


class ShardRoom:
    def __init__(
        self, counters: CounterStore, shards: ShardCounts, leases: LeaseClock, now: Callable[[], float]
    ) -> None:
        self._now = now
        self._counters = counters
        self._shards = shards
        self._leases = leases
        self._parents: dict[str, dict[str, int]] = {}  # the window items' values as last seen
        # window item -> (until when, what all its shards' budgets came to): a request needing more is
        # refused without reading every shard again
        self._exhausted: dict[str, tuple[float, dict[str, int], float]] = {}  # (until, free, memo length)
        # window item -> until when its budget is scarce: the window's own item serves every request then
        self._scarce: dict[str, float] = {}

    def refused(self, plan: CounterChange, now: float) -> bool:
        """Everything free was less than ``plan`` needs a moment ago (``refusal_memo_s``): refuse it without
        a store call. Bounds what a tenant refused in bulk costs the store (nothing) and the refusals made
        while budget was left (to what settlements gave back in that moment)."""
        until, free, _ = self._exhausted.get(plan.item, (0.0, {}, 0.0))
        return until > now and any(plan.increments.get(f, 0) > free.get(f, 1 << 62) for f in plan.limits)

    def free_as_used(self, plan: CounterChange) -> dict[str, int]:
        """What a memoised refusal reports as used: each limit less what was free (remaining = free)."""
        free = self._exhausted.get(plan.item, (0.0, {}, 0.0))[1]
        return {f: lim - free[f] for f, lim in plan.limits.items() if f in free}

    def scarce(self, item: str, now: float) -> bool:
        """The window's budget is running out: spreading it over shards would only move it back and forth,
        so the window's own item serves every request for ``scarce_s`` (as the single item always did)."""
        return self._scarce.get(item, 0.0) > now

    def make(
        self,
        plan: CounterChange,
        change: CounterChange,
        shard: int,
        values: dict[str, int],
        now: float,
        split: StaticSplit | None = None,
        fill: int = 0,
    ) -> tuple[bool, dict[str, int], Moves]:
        """Room for ``change`` (``plan`` on ``shard``), refused on ``values``: whether it may be tried again,
        the window item's values as last seen, and the budget to move with the next try. With ``split``, the
        window is split statically: budget comes from the other shards only. ``fill``: a draw gives a block to
        each of shards ``1..fill`` at once, while the window's item has that much (see ``_draw``)."""
        policy = self._shards.policy
        if not policy.on and split is None:
            return False, values, NO_MOVES
        limits = {f: lim for f, lim in plan.limits.items() if not is_guard(f)}
        if self.refused(plan, now):  # memoised meanwhile (another thread): report what the memo found free
            return False, {**self._parents.get(plan.item, values), **self.free_as_used(plan)}, NO_MOVES
        if split is not None:
            return self._split_room(plan, change, shard, values, limits, split, now)
        remainder: dict[str, int] = {}
        if shard == 0:
            parent_values = values
            need = {
                f: values.get(f, 0) + plan.increments.get(f, 0) - lim
                for f, lim in limits.items()
                if values.get(f, 0) + plan.increments.get(f, 0) > lim
            }
        else:
            need = {}
            for name, amount in short_of(change, values).items():
                found = budget_of(name)
                if found is not None:
                    need[found[0]] = amount
            drawn, parent_values = self._draw(plan, shard, need, limits, fill)
            if drawn:
                return True, parent_values, NO_MOVES
            remainder = {f: max(0, limits[f] - parent_values.get(f, 0)) for f in need}
            if all(n <= remainder[f] for f, n in need.items()):  # enough again (a settlement): draw next round
                return True, parent_values, NO_MOVES
        expires_at = plan.expires_at or 0.0
        if shard and self._reclaimed(plan.item, parent_values, expires_at, now):
            return True, parent_values, NO_MOVES  # leaked reservations given back to the window item: draw again
        # The requester's budget is already counted in its need; the others are read in one call.
        others = [donor for donor in marked(parent_values) if donor and donor != shard]
        items = [shard_item(plan.item, donor) for donor in others]
        donors = {}
        for donor, item, seen in zip(others, items, self._counters.read_many(items), strict=True):
            donors[donor] = self._counters.read(item) if self._reclaimed(item, seen, expires_at, now) else seen
        moves = rebalance(plan.item, shard, need, limits, donors, expires_at, self._shards.rng, remainder)
        if moves is None:  # everything free, everywhere, is less than this request: remember how much it was
            own = {f: values.get(budget(f, limits[f]), 0) if shard else 0 for f in need}
            free = {
                f: max(0, limits[f] - parent_values.get(f, 0)) + own[f] + sum(_budgets(v, f) for v in donors.values())
                for f in need
            }
            self._memo(plan.item, free, now)
            return False, {**parent_values, **self.free_as_used(plan)}, NO_MOVES
        return True, parent_values, moves

    def _split_room(
        self,
        plan: CounterChange,
        change: CounterChange,
        shard: int,
        values: dict[str, int],
        limits: dict[str, int],
        split: StaticSplit,
        now: float,
    ) -> tuple[bool, dict[str, int], Moves]:
        """``make`` for a window split statically: what the shard lacks, taken from the others (read each)."""
        need = {found[0]: n for name, n in short_of(change, values).items() if (found := budget_of(name)) is not None}
        others = split.donors(need, limits, shard)
        donors = dict(zip(others, self._counters.read_many([shard_item(plan.item, d) for d in others]), strict=True))
        moves = split.rebalance(plan.item, shard, need, limits, donors, plan.expires_at or 0.0, self._shards.rng)
        if moves is not None:
            return True, values, moves
        free = {
            f: split.free(values, f, limits[f], shard) + sum(split.free(v, f, limits[f], d) for d, v in donors.items())
            for f in need
        }
        self._memo(plan.item, free, now)
        return False, self.free_as_used(plan), NO_MOVES

    def _memo(self, item: str, free: dict[str, int], now: float) -> None:
        """Everything free, everywhere, was ``free``: refuse what needs more without asking the store for a
        while. Refused again right after the last memo ran out: remember twice as long (a spent quota stays
        spent; a process stops asking the store once a second), up to ``refusal_memo_max_s``."""
        policy = self._shards.policy
        until, _, length = self._exhausted.get(item, (0.0, {}, 0.0))
        again = until > now - 2 * length
        length = min(policy.refusal_memo_max_s, 2 * length) if again else policy.refusal_memo_s
        self._remember(self._exhausted, item, (now + length, free, length))

    def seen(self, item: str) -> dict[str, int]:
        """A window item's values as this process last saw them."""
        return self._parents.get(item, {})

    def note(self, item: str, values: dict[str, int]) -> None:
        """The values of a window item, seen by a write the enforcer made."""
        self._remember(self._parents, item, values)

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
        self, plan: CounterChange, shard: int, need: dict[str, int], limits: dict[str, int], fill: int = 0
    ) -> tuple[bool, dict[str, int]]:
        """A block for each short budget, from the window item; a smaller one if that is all it has.

        ``fill``: the window item's whole remainder (as last seen) is spread over shards ``1..fill`` in one
        write set, a block each (never less than ``need``: then over as many shards as it has blocks for).
        For a store whose item takes about a write a second (Firestore), where a draw per shard would queue
        every shard's first requests behind the window's item, and a block of a fraction of the remainder
        would have it drawn from again and again: one write of it serves every shard, and a shard short of
        budget later rebalances from the others. Budgets carry their limit in their names as every draw's do,
        so a lowered quota still holds exactly (a rebalance gives the old ones back, a fill spreads them anew)."""
        seen = self._parents.get(plan.item, {})
        in_use = max(1, len(marked(seen)), self._shards.count(tenant_of(plan.item)), fill)
        fraction = 1.0 if fill > 1 else self._shards.policy.block_fraction  # a fill: the whole remainder
        amounts = {f: block(limits[f], seen.get(f, 0), in_use, n, fraction) for f, n in need.items()}
        fits = min((max(0, limits[f] - seen.get(f, 0)) // max(1, a) for f, a in amounts.items()), default=0)
        spread = min(fill, fits)  # shards given a block, the requester's among them
        also: list[int] = [s for s in range(1, spread + 1) if s != shard][: spread - 1] if spread > 1 else []
        policy = self._shards.policy
        for _ in range(2):
            writes = draw(plan.item, shard, amounts, limits, plan.expires_at or 0.0, also)
            ok, values = self._counters.try_add_all(writes)
            self._remember(self._parents, plan.item, values[0])
            remainder = {f: limits[f] - values[0].get(f, 0) for f in amounts}
            if any(remainder[f] < need[f] * policy.scarce_requests * in_use for f in need):
                self._remember(self._scarce, plan.item, self._now() + policy.scarce_s)
            if ok:
                return True, values[0]
            if any(remainder[f] < need[f] for f in need):
                return False, values[0]
            amounts = {f: min(amounts[f], remainder[f]) for f in amounts}
            also = []
        return False, self._parents[plan.item]

    def used_estimate(self, minute: CounterChange, values: dict[str, int]) -> dict[str, int]:
        """What each limited minute field has used, as a shard sees it: the window item's grants (as last
        seen) less this shard's budget left. An estimate: other shards spend from their own budgets."""
        parent = self._parents.get(minute.item, {})
        return {
            f: max(0, parent.get(f, 0) - values.get(budget(f, limit), 0))
            for f, limit in minute.limits.items()
            if not is_guard(f)
        }

    @staticmethod
    def split_used_estimate(
        minute: CounterChange, values: dict[str, int], shard: int, split: StaticSplit
    ) -> dict[str, int]:
        """What each limited minute field has used, as a shard of a static split sees it: as if every shard
        had as much left as this one (an estimate; exact with one shard)."""
        used = {}
        for f, limit in minute.limits.items():
            if not is_guard(f):
                left = split.free(values, f, limit, shard) * split.count(f, limit)
                used[f] = min(limit, max(0, limit - left))
        return used

    @staticmethod
    def _remember(memory: dict[str, V], item: str, value: V) -> None:
        if len(memory) >= _REMEMBERED and item not in memory:
            memory.clear()
        memory[item] = value


def _budgets(values: dict[str, int], name: str) -> int:
    """A shard's budgets of the parent field ``name``, under any limit."""
    return sum(v for f, v in values.items() if v > 0 and (found := budget_of(f)) is not None and found[0] == name)
