"""Budget shards: a busy tenant's counters spread over several items, with the limits still hard.

Every reservation writes a counter item of its tenant (the minute, and the period when a quota is set), and
every store caps the writes one item or partition takes (DynamoDB about 1,000 write units a second per
partition, Firestore about one sustained write a second per document, Cosmos DB 10,000 RU/s per logical
partition): one item per tenant throttles a busy tenant, and its neighbours, at a few hundred requests a
second. So a tenant's counters of one window live in up to ``max_shards`` items:

* shard 0 is the window's own item (``rl|<tenant>|<minute>``, ``q|<tenant>|<month>``): the *parent*. It
  holds every limited field as before (``req``, ``tok``, ``used``, ... with their limits), counting what was
  spent on it directly AND what it granted to the other shards. A quiet tenant only ever uses shard 0:
  exactly the single item of old.
* shard ``s > 0`` is the item ``<parent>|<s>``. It holds, for each limited field ``f``, a budget
  ``b|f#<limit>`` it was granted by the parent; a reservation there spends it (floor 0) with ONE
  conditional write on that shard alone. When a shard's budget is short it *draws* a block from the
  parent: the parent's ``f += block`` under the limit, then the shard's budget ``+= block``. Taking is
  always written before giving, so neither an interleaving nor a crash between two writes ever lets more
  budget exist than the limit.
* when the parent cannot grant what a request needs, budget left in other shards moves to the shard that
  needs it (*rebalance*): every shard the parent marks (``s<i>``) is read, and one write set takes from
  donors (floor 0), then gives to the requester (on shard 0: lowers the parent's field). A request is
  refused only when the parent's remainder plus every shard's budget is short of it. The one exception is
  bounded: for ``refusal_memo_s`` after a process saw everything free fall short of a request, it refuses
  requests needing more than that at once, without reading every shard again; what settlements gave back
  in that time is the most it can refuse while left.

Invariant: the parent's field plus every shard's budget never counts less than what was spent, and the
parent's field never exceeds its limit: zero overspend, on every store, with or without transactions
across items. The limit is in a budget's name: a lowered limit leaves the old budgets unspendable (a
rebalance gives them back), so it holds, with nothing spent over it, once processes have read it.

How many shards a tenant needs is estimated per process from the minute item it writes (``n``, the
requests counted on that shard this minute): the tenant's rate is about ``n x shards / seconds``, and the
count is the power of two that keeps each item under ``item_writes_per_s``. A throttled write doubles it
at once (and it does not shrink for a minute after); it shrinks when traffic falls.

Revocation: the guard fields (``off``, ``off|<key>``) must stop spending on every shard. A minute shard is
*registered* in its parent before its first reservation (the parent marks it, and the shard copies the
parent's guard fields, both conditional on the parent's guard version ``gv``); revoking writes the parent
first (guard and ``gv``), then every shard the parent marks. A shard registered before that write is
marked and written; one registering after it copies the guard.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from core.domain import CounterChange

BUDGET = "b|"
REGISTERED = "on"
GUARD_VERSION = "gv"
GUARD = "off"
COUNT = "n"
#: The parent minute item's record of the tenant's shard count this minute: a new process learns it from
#: its first reservation there, instead of sending its requests to the parent until it has measured the rate.
SHARDS = "S"
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
    observe_after_s: float = 1.0
    #: After a refusal that saw every shard's budget exhausted, refuse at once for this long; doubled for each
    #: such refusal that follows the last one's end, up to ``refusal_memo_max_s``.
    refusal_memo_s: float = 1.0
    refusal_memo_max_s: float = 16.0
    #: A block drawn from the parent: this fraction of the parent's remainder per shard in use.
    block_fraction: float = 0.25
    #: When the parent has less left than this many requests' worth per shard in use, the budget is scarce:
    #: for ``scarce_s`` a process sends the tenant's requests to the parent alone (one item, as of old).
    scarce_requests: int = 4
    scarce_s: float = 10.0

    def __post_init__(self) -> None:
        if self.max_shards < 1 or self.max_shards & (self.max_shards - 1):
            raise ValueError("max_shards must be a power of two, at least 1")
        if not 1 <= self.start_shards <= self.max_shards:
            raise ValueError("start_shards must be between 1 and max_shards")

    @property
    def on(self) -> bool:
        return self.max_shards > 1


def budget(name: str, limit: int) -> str:
    """The field of a shard item holding its budget of the parent's field ``name`` under ``limit``.

    The limit is in the name: when an operator lowers a limit, budgets drawn under the old one are not
    spent any more (a rebalance gives them back), so the new limit holds as soon as each process has read
    it (the tenant and key caches' lifetime), with nothing spent over it."""
    return f"{BUDGET}{name}#{limit}"


def budget_of(field_name: str) -> tuple[str, int] | None:
    """The parent field and limit a budget field is for; None for other fields."""
    if not field_name.startswith(BUDGET) or "#" not in field_name:
        return None
    name, _, limit = field_name[len(BUDGET) :].rpartition("#")
    return (name, int(limit)) if limit.lstrip("-").isdigit() else None


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
        self.rng = rng or random.Random()  # noqa: S311  # nosec B311 - spreading load, not a secret

    def count(self, tenant_id: str) -> int:
        return self._counts.get(tenant_id, self.policy.start_shards)

    def pick(self, tenant_id: str, avoid: int | None = None) -> int:
        """With one shard, the window's own item (0); with ``count`` > 1, one of the items ``1..count`` at
        random (another than ``avoid`` where there is one): the window's own item then only grants budget."""
        count = self.count(tenant_id)
        if count == 1:
            return 0
        shard = 1 + self.rng.randrange(count)
        if shard == avoid:
            shard = 1 + (shard + self.rng.randrange(count - 1)) % count
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

    def known(self, tenant_id: str) -> bool:
        """Whether this process has a count for the tenant yet (else it reads the minute item's first)."""
        return tenant_id in self._counts

    def learn(self, tenant_id: str, published: int) -> None:
        """The count the tenant's minute item holds: never spread over fewer than that."""
        if len(self._counts) >= 100_000 and tenant_id not in self._counts:
            self._counts.clear()
        if published > self.count(tenant_id) or tenant_id not in self._counts:
            self._counts[tenant_id] = min(self.policy.max_shards, max(published, self.count(tenant_id)))

    def unpublished(self, tenant_id: str, published: int) -> int:
        """How much to raise the minute item's count by: what a throttle taught this process and the item
        does not say yet (0: nothing). A count estimated from the rate is not published: every process
        estimates it alike, and thousands of them writing it would make the item hot themselves."""
        if not self.policy.on or tenant_id not in self._grown:
            return 0
        return max(0, self.count(tenant_id) - published)

    def throttled(self, tenant_id: str, now: float) -> bool:
        """The store refused a write for its rate: spread wider (from one item, at once over four). False
        when it cannot spread any more."""
        count = self.count(tenant_id)
        if count >= self.policy.max_shards:
            return False
        self._counts[tenant_id] = min(self.policy.max_shards, count * 2 if count > 1 else 4)
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
            increments[budget(name, change.limits[name])] = -value
            floors[budget(name, change.limits[name])] = 0
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
    parent: str,
    shard: int,
    amounts: Mapping[str, int],
    limits: Mapping[str, int],
    expires_at: float,
    also: Sequence[int] = (),
) -> list[CounterChange]:
    """Move ``amounts`` (by parent field) from the parent, under its limits, to shard ``shard``'s budget, and
    as much to each shard of ``also`` (a fill: one write of the parent for many shards). The parent is written
    first: a crash between the writes leaves budget unused, never extra."""
    shards = [shard, *(s for s in also if s != shard)]
    taken = CounterChange(
        parent,
        {name: v * len(shards) for name, v in amounts.items()} | {mark(s): 1 for s in shards},
        {name: limits[name] for name in amounts},
        expires_at,
    )
    given = [
        CounterChange(s_item, {budget(n, limits[n]): v for n, v in amounts.items()}, expires_at=expires_at)
        for s_item in (shard_item(parent, s) for s in shards)
    ]
    return [taken, *given]


@dataclass(frozen=True)
class Moves:
    """Budget on its way to a reservation: ``before`` (takes) and ``after`` (marks) are written around the
    reservation's own changes, in one write set, and ``gift`` is added to the reservation's change of
    each item it names."""

    before: list[CounterChange]
    gift: dict[str, dict[str, int]]
    after: list[CounterChange]


NO_MOVES = Moves([], {}, [])


def rebalance(
    parent: str,
    shard: int,
    need: Mapping[str, int],
    limits: Mapping[str, int],
    donors: Mapping[int, Mapping[str, int]],
    expires_at: float,
    rng: random.Random,
    remainder: Mapping[str, int] | None = None,
) -> Moves | None:
    """Budget for a request short of ``need`` (by parent field) on shard ``shard``, gathered in ONE write set
    with its reservation, or None when everything free together lacks it.

    What is free: the parent's ``remainder`` (shard > 0; on shard 0 ``need`` is already beyond it), every
    budget drawn under another limit than ``limits`` (a limit since changed: all of it goes back to the
    parent, and counts), and the donors' budgets (``{shard: values}``). A donor able to give the rest alone
    is preferred, at random among those that can, so that concurrent rebalances rarely pick the same one.
    Takes are written first, each on the condition that the donor still has what is taken from it; the
    parent's part keeps it under its limits; what the requester receives is a ``gift`` added to its own
    reservation's change, so that no concurrent rebalance can take it before the request spends it."""
    takes: dict[int, dict[str, int]] = {}
    parent_delta: dict[str, int] = {}  # added to the parent's fields
    gift: dict[str, int] = {}
    for name, amount in need.items():
        current = budget(name, limits[name])
        stale = 0
        for donor, values in donors.items():
            for field_name, available in values.items():
                found = budget_of(field_name)
                if found and found[0] == name and field_name != current and available > 0:
                    takes.setdefault(donor, {})[field_name] = available
                    stale += available
        # Stale budgets lower the parent's field: more it can grant (shard > 0) or less it is over (shard 0).
        from_parent = min(amount, stale + max(0, (remainder or {}).get(name, 0))) if shard else min(amount, stale)
        left = amount - from_parent
        order = list(donors.items())
        rng.shuffle(order)
        order.sort(key=lambda d: d[1].get(current, 0) < left)  # stable: the able ones first, shuffled
        from_donors = 0
        for donor, values in order:
            if left <= 0 and shard:
                break
            available = values.get(current, 0)
            if available > 0:
                # To the parent (shard 0: the budget is scarce), every budget comes home at once, so that
                # the requests that follow find it there rather than rebalancing again one by one.
                taken = min(available, left) if shard else available
                takes.setdefault(donor, {})[current] = taken
                left -= taken
                from_donors += taken
        if left > 0:
            return None
        if shard:
            parent_delta[name] = from_parent - stale
            gift[current] = amount
        else:
            parent_delta[name] = -(stale + from_donors)
    before = [
        CounterChange(
            shard_item(parent, donor),
            {n: -v for n, v in taken.items()},
            expires_at=expires_at,
            floors=dict.fromkeys(taken, 0),
        )
        for donor, taken in takes.items()
    ]
    if not shard:
        return Moves(before, {parent: parent_delta}, [])
    # The parent goes first (a grant under its limits); it marks the receiver, so later rebalances find it.
    granted = {n: v for n, v in parent_delta.items() if v}
    grant = CounterChange(
        parent, granted | {mark(shard): 1}, {n: limits[n] for n, v in granted.items() if v > 0}, expires_at=expires_at
    )
    return Moves([grant, *before], {shard_item(parent, shard): gift}, [])


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
