"""Minute budgets split statically over a tenant's shards, for stores whose item takes about a write a second.

Firestore sustains about one write a second per document. The drawn design (``core.budget_shards``) writes a
minute window's own item whenever a shard registers or draws, which every shard does at the start of every
minute: dozens of writes a second on one document for a busy tenant, so it starves at tens of requests a
second. With a ``StaticSplit`` no reservation ever writes the window's own minute item:

* each limited minute field ``f`` with limit ``L`` is split over ``n = clamp(L // least, 1, max_shards)``
  shards (the items ``<window>|1`` .. ``<window>|n``; ``least`` is ``request_share`` for request counts,
  ``token_share`` for tokens): shard ``i`` may spend ``L // n`` (one more for the first ``L % n``). That is
  written as the floor ``-share`` of the shard's budget field ``b|f#L``, so an absent item holds its whole
  share and nothing is written when a minute starts;
* a request is spent on one shard in ``1..span``, ``span`` the least ``n`` of its fields, so every field it
  counts has a share there;
* a shard short of what a request needs takes it from other shards: one write set that takes from donors
  (each down to its own floor at most) and gives to the requester with its reservation. The window's own
  item is not involved. A request is refused only when every shard together lacks it (or, for
  ``refusal_memo_s``, when that was so a moment ago: ``core.shard_room``);
* revocation: shards do not register; a guard is written to the window's own item and to every shard
  ``1..max_shards`` of the windows it covers (``core.limits``), so a reservation on any shard sees it.

Zero overspend: each shard's budget never goes below minus its share, a field's shares sum to its limit, and
a move takes before it gives. The limit is in the field's name: a limit lowered during a minute starts new
fields with new shares, so within that minute a tenant may spend what it spent under the old limit plus the
new limit; from the next minute the new limit holds exactly.

The quota (period items) keeps the drawn design, since a lowered quota must hold exactly, which shares fixed
in advance cannot promise (what was spent under the old shares would not count against the new ones); but its
draws fill: the window item's whole remainder is spread over every shard in one write set
(``ShardRoom._draw``), so the period's own item is written once, not once per shard, and a shard short of
budget takes it from the others. Its budgets carry their limit in their names like every draw's, so a lowered
quota holds exactly.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass

from core.budget_shards import Moves, budget, budget_of, is_guard, shard_item
from core.domain import CounterChange


@dataclass(frozen=True)
class StaticSplit:
    """How a minute window's limits are split over shards; ``max_shards`` items at most per window."""

    max_shards: int = 64
    #: The fewest requests (``req`` fields) and tokens (``tok`` fields) one shard's share may hold: a small
    #: limit spreads over fewer shards, so that a quiet tenant is not refused for want of budget spread thin.
    request_share: int = 8
    token_share: int = 2048

    def __post_init__(self) -> None:
        if self.max_shards < 1 or self.request_share < 1 or self.token_share < 1:
            raise ValueError("a static split needs at least one shard and shares of at least one")

    def count(self, name: str, limit: int) -> int:
        """How many shards the field ``name`` under ``limit`` is split over."""
        least = self.request_share if name.startswith("req") else self.token_share
        return max(1, min(self.max_shards, limit // least))

    def share(self, name: str, limit: int, shard: int) -> int:
        """What shard ``shard`` may spend of ``name`` under ``limit`` in a minute, before any move."""
        n = self.count(name, limit)
        if not 1 <= shard <= n:
            return 0
        base, extra = divmod(max(0, limit), n)
        return base + (1 if shard <= extra else 0)

    def span(self, change: CounterChange) -> int:
        """The shards a minute change may be spent on: ``1..span``, where each of its fields has a share (all
        of them when it has no limit: its quota's shards, which follow the minute's, spread as wide)."""
        limited = [self.count(n, lim) for n, lim in change.limits.items() if not is_guard(n)]
        return min(limited, default=self.max_shards)

    def pick(self, change: CounterChange, rng: random.Random, avoid: int | None = None) -> int:
        """A shard for ``change`` at random (another than ``avoid`` where there is one)."""
        span = self.span(change)
        shard = 1 + rng.randrange(span)
        if shard == avoid and span > 1:
            shard = 1 + (shard + rng.randrange(span - 1)) % span
        return shard

    def on_shard(self, change: CounterChange, shard: int) -> CounterChange:
        """The window's change spent on shard ``shard`` (>= 1): each limited field out of its budget, down to
        minus its share; guard fields stay conditions; the other fields (request counts) are counted."""
        increments: dict[str, int] = {}
        floors: dict[str, int] = {}
        for name, value in change.increments.items():
            limit = change.limits.get(name)
            if limit is not None and not is_guard(name):
                increments[budget(name, limit)] = -value
                floors[budget(name, limit)] = -self.share(name, limit, shard)
            else:
                increments[name] = value
        guards = {name: limit for name, limit in change.limits.items() if is_guard(name)}
        return CounterChange(shard_item(change.item, shard), increments, guards, change.expires_at, floors)

    def free(self, values: Mapping[str, int], name: str, limit: int, shard: int) -> int:
        """What a shard holding ``values`` can still spend of ``name`` under ``limit``."""
        return values.get(budget(name, limit), 0) + self.share(name, limit, shard)

    def donors(self, need: Mapping[str, int], limits: Mapping[str, int], shard: int) -> list[int]:
        """The shards that may hold what ``need`` lacks: every shard with a share of a needed field."""
        last = max((self.count(name, limits[name]) for name in need), default=1)
        return [s for s in range(1, last + 1) if s != shard]

    def rebalance(
        self,
        parent: str,
        shard: int,
        need: Mapping[str, int],
        limits: Mapping[str, int],
        donors: Mapping[int, Mapping[str, int]],
        expires_at: float,
        rng: random.Random,
    ) -> Moves | None:
        """What ``need`` (by field) lacks on shard ``shard``, taken from ``donors`` (``{shard: values}``) and
        given with the reservation; None when all of them together lack it. A donor able to give it all is
        preferred, at random among those that can; each take is conditional on the donor keeping its floor."""
        takes: dict[int, dict[str, int]] = {}
        for name, amount in need.items():
            limit = limits[name]
            field = budget(name, limit)
            offers = [(donor, self.free(values, name, limit, donor)) for donor, values in donors.items()]
            rng.shuffle(offers)
            offers.sort(key=lambda offer: offer[1] < amount)  # stable: the able ones first, shuffled
            left = amount
            for donor, available in offers:
                if left <= 0:
                    break
                if available > 0:
                    taken = min(available, left)
                    takes.setdefault(donor, {})[field] = taken
                    left -= taken
            if left > 0:
                return None
        before = [
            CounterChange(
                shard_item(parent, donor),
                {field: -amount for field, amount in taken.items()},
                expires_at=expires_at,
                floors={field: -self._share_of(field, donor) for field in taken},
            )
            for donor, taken in takes.items()
        ]
        gift = {budget(name, limits[name]): amount for name, amount in need.items()}
        return Moves(before, {shard_item(parent, shard): gift}, [])

    def _share_of(self, field: str, shard: int) -> int:
        found = budget_of(field)
        return self.share(found[0], found[1], shard) if found is not None else 0


__all__ = ["StaticSplit"]
