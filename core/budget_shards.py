"""Budget shards: a busy tenant's counters spread over several items, with the limits still hard.

Every reservation writes a counter item of its tenant (the minute, and the period when a quota is set), and
every store caps the writes one item or partition takes (DynamoDB about 1,000 write units a second per
partition, Firestore about one sustained write a second per document, Cosmos DB 10,000 RU/s per logical
partition): one item per tenant throttles a busy tenant, and its neighbours, at a few hundred requests a
second. So a tenant's counters of one window live in up to ``max_shards`` items:

* shard 0 is the window's own item (``rl|<tenant>|<minute>``, ``q|<tenant>|<month>``): the *parent*. It holds
  every limited field as before (``req``, ``tok``, ``used``, ... with their limits), counting what was spent
  on it directly AND what it granted to the other shards. A quiet tenant only ever uses shard 0: exactly
  the single item of old.
* shard ``s > 0`` is the item ``<parent>|<s>``. It holds, for each limited field ``f``, a budget
  ``b|f`` that it was granted by the parent; a reservation there spends it (``b|f -= x``, floor 0) with ONE
  conditional write on that shard alone. When a shard's budget is short, it *draws* a block from the parent:
  the parent's ``f += block`` under the limit, then the shard's ``b|f += block`` (taking before giving, so
  no interleaving, and no crash between the two writes, ever lets more budget exist than the limit).
* when the parent cannot grant what a request needs, budget left in other shards is moved back to it
  (*rebalance*): every shard the parent has marked (``s<i>``) is read, and one write set takes from the
  donors (floor 0) and then lowers the parent's field; the request draws again. A request is refused
  only when the parent's remainder plus every shard's budget is short of it: budget stranded in shards
  never refuses a request, except within ``refusal_memo_s`` after a refusal that saw the whole budget
  exhausted (a process then refuses at once, without reading every shard again; what settlements gave
  back meanwhile is the bound).

Invariant: (the parent's limited field) + sum over shards of (``b|f``) never counts less than what was
spent, and the parent's field never exceeds its limit, so zero overspend holds on every store, with or
without transactions across items.

How many shards a tenant needs is estimated per process from the minute item it writes (``n``, the
requests counted on that shard this minute): the tenant's rate is about ``n x shards / seconds``; the
shard count is the power of two that keeps each item under ``item_writes_per_s``. A throttled write
doubles it at once. It shrinks when traffic falls (the estimate of each new minute starts again).

Revocation: the guard fields (``off``, ``off|<key>``) must stop spending on every shard. A shard is
*registered* in its minute's parent before its first reservation (the parent marks it, and the shard
copies the parent's guard fields, both conditional on the parent's guard version ``gv``); revoking writes
the parent first (guard and ``gv``), then every shard the parent marks. A shard registered before that
write is marked, and is written; one registering after it copies the guard.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from core.domain import CounterChange

BUDGET = "b|"
REGISTERED = "on"
GUARD_VERSION = "gv"
GUARD = "off"
COUNT = "n"
#: Writes a request makes to its shard items: the reservation, the settlement.
WRITES_PER_REQUEST = 2


@dataclass(frozen=True)
class ShardPolicy:
    """How far one tenant's counters may spread. ``max_shards=1`` is the single item per window."""

    max_shards: int = 1
    #: Writes a second one shard item should take at most (below the store's per-item limit, with headroom).
    item_writes_per_s: float = 400.0
    #: The shard count a process starts each tenant with (tests: force sharding from the first request).
    start_shards: int = 1
    #: A minute's first seconds are too few to estimate a rate from.
    observe_after_s: float = 5.0
    #: After a refusal that saw every shard's budget exhausted, refuse at once for this long.
    refusal_memo_s: float = 1.0
    #: A block drawn from the parent: this fraction of the parent's remainder per shard in use.
    block_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.max_shards < 1 or self.max_shards & (self.max_shards - 1):
            raise ValueError("max_shards must be a power of two, at least 1")
        if not 1 <= self.start_shards <= self.max_shards:
            raise ValueError("start_shards must be between 1 and max_shards")

    @property
    def on(self) -> bool:
        return self.max_shards > 1


def budget(name: str) -> str:
    """The field of a shard item holding its budget of the parent's limited field ``name``."""
    return f"{BUDGET}{name}"


def shard_item(parent: str, shard: int) -> str:
    return parent if shard == 0 else f"{parent}|{shard}"


def mark(shard: int) -> str:
    """The parent's field that says shard ``shard`` was registered or drew budget in this window."""
    return f"s{shard}"


def marked(values: Mapping[str, int]) -> list[int]:
    """The shards a parent's values mark."""
    return sorted(int(name[1:]) for name, v in values.items() if v and name[:1] == "s" and name[1:].isdigit())


def is_guard(name: str) -> bool:
    return name == GUARD or name.startswith(GUARD + "|")


class ShardCounts:
    """This process's estimate of the shards each tenant needs (a power of two), and the shard to use."""

    def __init__(self, policy: ShardPolicy, rng: random.Random | None = None) -> None:
        self.policy = policy
        self._counts: dict[str, int] = {}
        self._grown: dict[str, float] = {}  # when a throttle last grew a tenant's count
        self._rng = rng or random.Random()  # noqa: S311  # nosec B311 - spreading load, not a secret

    def count(self, tenant_id: str) -> int:
        return self._counts.get(tenant_id, self.policy.start_shards)

    def pick(self, tenant_id: str, avoid: int | None = None) -> int:
        """A shard in ``[0, count)``, at random; another than ``avoid`` where there is one."""
        count = self.count(tenant_id)
        if count == 1:
            return 0
        shard = self._rng.randrange(count)
        if shard == avoid:
            shard = (shard + 1 + self._rng.randrange(count - 1)) % count
        return shard

    def observe(self, tenant_id: str, counted: int, now: float) -> None:
        """``counted`` requests on one shard in its minute so far: re-estimate the count. It does not shrink
        for a minute after a throttle grew it (a new shard has counted little yet)."""
        seconds = now % 60
        if not self.policy.on or seconds < self.policy.observe_after_s:
            return
        rate = counted * self.count(tenant_id) / seconds
        needed = max(1.0, rate * WRITES_PER_REQUEST / self.policy.item_writes_per_s)
        estimate = min(self.policy.max_shards, 1 << math.ceil(math.log2(needed)))
        if estimate < self.count(tenant_id) and self._grown.get(tenant_id, -math.inf) > now - 60:
            return
        self._counts[tenant_id] = estimate

    def throttled(self, tenant_id: str, now: float) -> bool:
        """The store refused a write for its rate: spread wider. False when it cannot spread any more."""
        count = self.count(tenant_id)
        if count >= self.policy.max_shards:
            return False
        self._counts[tenant_id] = count * 2
        self._grown[tenant_id] = now
        return True


def on_shard(change: CounterChange, shard: int, *, minute: bool) -> CounterChange:
    """A parent's change as spent on shard ``shard``: each limited field's increment out of its budget.

    Guard fields stay conditions. A minute shard must be registered (so that a revocation reaches it) and
    counts its fields without a limit as they are (the request counts); a period shard keeps budgets only.
    """
    if shard == 0:
        return change
    increments: dict[str, int] = {}
    floors: dict[str, int] = {REGISTERED: 1} if minute else {}
    limits = {name: value for name, value in change.limits.items() if is_guard(name)}
    for name, value in change.increments.items():
        if name in change.limits and not is_guard(name):
            increments[budget(name)] = -value
            floors[budget(name)] = 0
        elif minute:
            increments[name] = value
    return CounterChange(shard_item(change.item, shard), increments, limits, change.expires_at, floors)


def short_of(change: CounterChange, values: Mapping[str, int]) -> dict[str, int]:
    """The budget fields a shard change was refused for, and how much each lacks."""
    return {
        name: floor - (values.get(name, 0) + change.increments.get(name, 0))
        for name, floor in change.floors.items()
        if name.startswith(BUDGET) and values.get(name, 0) + change.increments.get(name, 0) < floor
    }


def block(limit: int, granted: int, shards: int, need: int, fraction: float) -> int:
    """How much to draw: ``fraction`` of the parent's remainder per shard in use, never below ``need``."""
    remainder = max(0, limit - granted)
    return max(need, min(remainder, math.ceil(remainder * fraction / max(1, shards))))


def draw(
    parent: str, shard: int, amounts: Mapping[str, int], limits: Mapping[str, int], expires_at: float
) -> list[CounterChange]:
    """Move ``amounts`` (by parent field) from the parent, under its limits, to shard ``shard``'s budget.
    The parent is written first: a crash between the two leaves budget unused, never extra."""
    taken = CounterChange(
        parent,
        dict(amounts) | {mark(shard): 1},
        {name: limits[name] for name in amounts},
        expires_at,
    )
    given = CounterChange(shard_item(parent, shard), {budget(n): v for n, v in amounts.items()}, expires_at=expires_at)
    return [taken, given]


def rebalance(
    parent: str, need: Mapping[str, int], donors: Mapping[int, Mapping[str, int]], expires_at: float
) -> list[CounterChange] | None:
    """Move ``need`` (by parent field) from the donors' budgets (``{shard: values}``) back into the parent's
    remainder, or None when the donors together lack it. The donors are written first, each on the
    condition that it still has what is taken from it; the parent's field goes down last."""
    takes: dict[int, dict[str, int]] = {}
    for name, amount in need.items():
        left = amount
        for donor, values in sorted(donors.items(), key=lambda d: -d[1].get(budget(name), 0)):
            available = values.get(budget(name), 0)
            if left <= 0 or available <= 0:
                break
            taken = min(available, left)
            takes.setdefault(donor, {})[budget(name)] = taken
            left -= taken
        if left > 0:
            return None
    changes = [
        CounterChange(
            shard_item(parent, donor),
            {n: -v for n, v in taken.items()},
            expires_at=expires_at,
            floors=dict.fromkeys(taken, 0),
        )
        for donor, taken in takes.items()
    ]
    changes.append(CounterChange(parent, {n: -v for n, v in need.items() if v}, expires_at=expires_at))
    return changes


def registration(
    parent: str, shard: int, parent_values: Mapping[str, int], shard_values: Mapping[str, int], expires_at: float
) -> list[CounterChange]:
    """Register a minute shard: the parent marks it and the shard copies the parent's guard fields, both on
    the condition that neither changed since they were read (the parent's guard version, the shard's guards)."""
    version = parent_values.get(GUARD_VERSION, 0)
    same_version = {GUARD_VERSION: version}
    guards = {n for n in (*parent_values, *shard_values) if is_guard(n)}
    increments = {n: parent_values.get(n, 0) - shard_values.get(n, 0) for n in guards} | {REGISTERED: 1}
    # Conditions hold on the values after the write: each guard as the parent has it, registered once more.
    after = {n: shard_values.get(n, 0) + v for n, v in increments.items()}
    return [
        CounterChange(parent, {mark(shard): 1}, same_version, expires_at, floors=same_version),
        CounterChange(
            shard_item(parent, shard),
            {n: v for n, v in increments.items() if v},
            after,
            expires_at,
            floors=after,
        ),
    ]


def guard_writes(parent: str, shards: Iterable[int], name: str, delta: int, expires_at: float) -> list[CounterChange]:
    """The guard's write to each marked shard (after the parent's, which also moved ``gv``)."""
    return [CounterChange(shard_item(parent, s), {name: delta}, expires_at=expires_at) for s in shards if s]
