"""Sharded counters keep every limit hard: no overspend, no refusal while the budget is left, revocation at once.

The enforcers here are separate processes of one deployment (their own shard estimates, random shard
choices, caches), all on one store. Every test runs on the memory and the SQLite store.
"""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from adapters.local.memory_store import MemoryStore
from adapters.local.sqlite_store import SQLiteStore
from core.budget_shards import (
    ShardCounts,
    ShardPolicy,
    block,
    budget,
    marked,
    on_shard,
    rebalance,
    shard_item,
)
from core.clock import FixedClock
from core.domain import ApiKeyRecord, CounterChange, Limits, Tenant, UsageRecord
from core.errors import Forbidden, QuotaExceeded, RateLimited, StoreThrottled, Unauthorized
from core.leases import LeaseClock
from core.limits import LimitEnforcer, Reservation, minute_item, period_bounds
from core.observability import NullMetrics
from core.ports import Store

SHARDED = ShardPolicy(max_shards=8, start_shards=8, refusal_memo_s=0.0, observe_after_s=61.0)  # stays at 8
LEASES = LeaseClock(max_request_s=30.0)
KEY = ApiKeyRecord("k1", "t1", "k", "", frozenset(), 0.0)
KEY_2 = ApiKeyRecord("k2", "t1", "k", "", frozenset(), 0.0)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1_767_225_600.0 + 3 * 86_400 + 7)  # early in a month, 7 s into a minute


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FixedClock) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore(clock=clock.now)
    else:
        yield SQLiteStore(str(tmp_path / "shards.db"), clock=clock.now)


def processes(store: Store, clock: FixedClock, n: int = 4, policy: ShardPolicy = SHARDED) -> list[LimitEnforcer]:
    return [LimitEnforcer(store, clock, NullMetrics(), LEASES, policy, random.Random(i)) for i in range(n)]


def record(request_id: str, tokens: int, now: float) -> UsageRecord:
    return UsageRecord(request_id, "t1", "k1", "m", "/v1/completions", 0, tokens, False, 0.0, 200, now)


def quota_items(store: Store, clock: FixedClock) -> dict[int, dict[str, int]]:
    parent = f"q|t1|{period_bounds(clock.now(), 'month')[0]}"
    return {s: store.read(shard_item(parent, s)) for s in range(SHARDED.max_shards + 1)}


# -- the pieces --------------------------------------------------------------------------------------------


def test_a_change_on_a_shard_spends_its_budget_and_keeps_the_guards() -> None:
    parent = CounterChange("rl|t|5", {"req": 1, "req|k": 1, "tok": 9, "n": 1}, {"req": 10, "tok": 99, "off": 0}, 180.0)
    spent = on_shard(parent, 3, minute=True)
    assert spent.item == "rl|t|5|3"
    assert spent.increments == {"b|req#10": -1, "req|k": 1, "b|tok#99": -9, "n": 1}
    assert spent.limits == {"off": 0}
    assert spent.floors == {"on": 1, "b|req#10": 0, "b|tok#99": 0}
    assert on_shard(parent, 0, minute=True) is parent
    period = on_shard(CounterChange("q|t|m", {"used": 5, "used|k": 5}, {"used": 50}), 2, minute=False)
    assert (period.increments, period.floors) == ({"b|used#50": -5}, {"b|used#50": 0})


def test_a_block_is_a_share_of_the_remainder_never_below_the_need() -> None:
    assert block(limit=1000, granted=200, shards=4, need=10, fraction=0.25) == 50
    assert block(limit=1000, granted=990, shards=4, need=30, fraction=0.25) == 30
    assert block(limit=1000, granted=1000, shards=1, need=5, fraction=0.25) == 5


def test_a_rebalance_to_a_shard_takes_from_one_donor_able_to_give_it_all_and_to_the_parent_takes_all() -> None:
    donors: Mapping[int, Mapping[str, int]] = {1: {"b|used#90": 5}, 2: {"b|used#90": 40}, 3: {}}
    moves = rebalance("q|t|m", 0, {"used": 42}, {"used": 90}, donors, 100.0, random.Random(1))
    assert moves is not None
    assert sorted(c.item for c in moves.before) == ["q|t|m|1", "q|t|m|2"]
    assert sum(c.increments["b|used#90"] for c in moves.before) == -45  # to the parent: all of it comes home
    assert all(c.floors == {"b|used#90": 0} for c in moves.before)
    assert (moves.gift, moves.after) == ({"q|t|m": {"used": -45}}, [])
    assert rebalance("q|t|m", 0, {"used": 46}, {"used": 90}, donors, 100.0, random.Random(1)) is None
    for seed in range(5):  # one donor can give it all: only that one is written
        to_shard = rebalance("q|t|m", 3, {"used": 30}, {"used": 90}, donors, 100.0, random.Random(seed))
        assert to_shard is not None
        assert [(c.item, c.increments) for c in to_shard.before] == [
            ("q|t|m", {"s3": 1}),
            ("q|t|m|2", {"b|used#90": -30}),
        ]
        assert to_shard.gift == {"q|t|m|3": {"b|used#90": 30}}
    # With what the parent has left, in the same write, under its limit:
    both = rebalance("q|t|m", 3, {"used": 30}, {"used": 90}, donors, 100.0, random.Random(0), {"used": 7})
    assert both is not None
    assert (both.before[0].increments, both.before[0].limits) == ({"used": 7, "s3": 1}, {"used": 90})
    assert sum(c.increments.get("b|used#90", 0) for c in both.before[1:]) == -23
    assert both.gift == {"q|t|m|3": {"b|used#90": 30}}


def test_a_rebalance_gives_back_every_budget_drawn_under_an_older_limit() -> None:
    donors: Mapping[int, Mapping[str, int]] = {1: {"b|used#500": 30, "b|used#90": 5}, 2: {"b|used#90": 40}}
    moves = rebalance("q|t|m", 0, {"used": 20}, {"used": 90}, donors, 100.0, random.Random(1))
    assert moves is not None
    assert [(c.item, c.increments) for c in moves.before] == [
        ("q|t|m|1", {"b|used#500": -30, "b|used#90": -5}),
        ("q|t|m|2", {"b|used#90": -40}),
    ]
    assert moves.gift == {"q|t|m": {"used": -75}}
    to_shard = rebalance("q|t|m", 2, {"used": 20}, {"used": 90}, donors, 100.0, random.Random(1))
    assert to_shard is not None  # the stale 30 go back to the parent, which grants the 20 from them
    assert [(c.item, c.increments) for c in to_shard.before] == [
        ("q|t|m", {"used": -10, "s2": 1}),
        ("q|t|m|1", {"b|used#500": -30}),
    ]
    assert to_shard.gift == {"q|t|m|2": {"b|used#90": 20}}


def test_the_shard_count_follows_the_rate_and_grows_when_throttled() -> None:
    counts = ShardCounts(ShardPolicy(max_shards=16, item_writes_per_s=100.0, observe_after_s=5.0), random.Random(1))
    minute = 600_000.0
    counts.observe("t", counted=100, now=minute + 2)  # too early in the minute to tell
    assert counts.count("t") == 1
    counts.observe("t", counted=600, now=minute + 10)  # 60/s x 2 writes: 120 writes/s > 100
    assert counts.count("t") == 2
    counts.observe("t", counted=600, now=minute + 10)  # the same per shard over 2 shards: 120/s, 240 writes/s
    assert counts.count("t") == 4
    assert counts.unpublished("t", 0) == 0  # an estimate is not written to the minute item
    counts.observe("t", counted=20, now=minute + 30)  # traffic fell
    assert counts.count("t") == 1
    assert counts.pick("t") == 0  # one shard: the window's own item
    assert counts.throttled("t", minute + 31)
    assert counts.count("t") == 4  # from the one item, at once over four
    assert counts.unpublished("t", 0) == 4  # a throttle's lesson is written for the other processes
    assert {counts.pick("t") for _ in range(80)} == {1, 2, 3, 4}  # the own item then only grants
    counts.observe("t", counted=1, now=minute + 40)  # a new shard has counted little: no shrinking yet
    assert counts.count("t") == 4
    counts.observe("t", counted=1, now=minute + 60 + 32)
    assert counts.count("t") == 1
    counts.learn("t", 8)  # another process's lesson, read from the minute item
    assert counts.count("t") == 8
    for _ in range(4):
        counts.throttled("t", minute + 100)
    assert counts.count("t") == 16
    assert not counts.throttled("t", minute + 100)


# -- the quota ---------------------------------------------------------------------------------------------


def test_the_whole_quota_is_granted_across_shards_and_not_a_token_more(store: Store, clock: FixedClock) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=1000))
    enforcers = processes(store, clock)
    granted = 0
    for i in range(100):
        reservation = enforcers[i % 4].reserve(tenant, KEY, 10)
        assert store.record_usage(record(f"r{i}", 10, clock.now()), enforcers[i % 4].settlement(reservation, 10))
        granted += 10
    for enforcer in enforcers:
        with pytest.raises(QuotaExceeded):
            enforcer.reserve(tenant, KEY, 1)
    assert granted == 1000
    items = quota_items(store, clock)
    assert len([s for s, v in items.items() if v]) > 1  # it did spread
    assert sum(v.get("b|used#1000", 0) for v in items.values()) == 0


def check_random_traffic(
    store: Store, clock: FixedClock, tenant: Tenant, need: int, policy: ShardPolicy = SHARDED
) -> tuple[int, int, int]:
    """Random reserve/settle/fail interleavings over 4 processes, 50 ms apart: never over the quota, and a
    refusal while budget is left happens only as ``core.budget_shards`` bounds it. Without refusal memos,
    never: the quota less what is charged and what is still reserved is short of the request. With them,
    what is left is short of the request plus what settlements gave back during the longest memo.
    Returns what was charged, the refusals, and the refusals made while budget was left."""
    rng = random.Random(7)
    enforcers = processes(store, clock, policy=policy)
    quota = tenant.limits.token_quota or 0
    live: list[tuple[LimitEnforcer, Reservation]] = []
    given_back: list[tuple[float, int]] = []  # (when, tokens a settlement returned)
    charged = refusals = with_budget_left = 0
    for i in range(600):
        clock.advance(0.05)
        enforcer = rng.choice(enforcers)
        if live and rng.random() < 0.5:
            owner, reservation = live.pop(rng.randrange(len(live)))
            used = rng.choice([0, reservation.tokens // 2, reservation.tokens])
            assert store.record_usage(record(f"r{i}", used, clock.now()), owner.settlement(reservation, used))
            charged += used
            given_back.append((clock.now(), reservation.tokens - used))
            continue
        tokens = rng.randint(1, need)
        outstanding = sum(r.tokens for _, r in live)
        try:
            live.append((enforcer, enforcer.reserve(tenant, KEY, tokens)))
        except QuotaExceeded:
            refusals += 1
            left = quota - charged - outstanding
            since = clock.now() - policy.refusal_memo_max_s if policy.refusal_memo_s else clock.now()
            assert left < tokens + sum(n for t, n in given_back if t > since), "refused beyond the bound"
            with_budget_left += left >= tokens
        assert charged + sum(r.tokens for _, r in live) <= quota
    return charged, refusals, with_budget_left


def test_random_traffic_never_overspends_and_never_refuses_with_budget_left(store: Store, clock: FixedClock) -> None:
    charged, refusals, with_budget_left = check_random_traffic(
        store, clock, Tenant("t1", "t1", 0.0, Limits(token_quota=5000)), 60
    )
    assert refusals > 0
    assert with_budget_left == 0
    assert charged <= 5000


def test_refusals_remembered_for_a_moment_stay_within_what_settlements_gave_back_meanwhile(
    store: Store, clock: FixedClock
) -> None:
    """The refusal memo (1 s, doubling to 16 s) is the one way budget left is refused: bounded, and rare
    (here 12 of 416 refusals; a bound of 0.2 s instead of 16 s fails)."""
    policy = dataclasses.replace(SHARDED, refusal_memo_s=1.0, refusal_memo_max_s=16.0)
    charged, refusals, with_budget_left = check_random_traffic(
        store, clock, Tenant("t1", "t1", 0.0, Limits(token_quota=1500)), 60, policy
    )
    assert refusals > 300
    assert with_budget_left < refusals * 0.05
    assert charged == 1500


def test_a_shard_refused_for_want_of_budget_takes_it_back_from_the_others(store: Store, clock: FixedClock) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=800))
    enforcers = processes(store, clock)
    held = [enforcers[i % 4].reserve(tenant, KEY, 10) for i in range(40)]  # blocks drawn into many shards
    for i, reservation in enumerate(held):
        store.record_usage(record(f"r{i}", 0, clock.now()), enforcers[i % 4].settlement(reservation, 0))
    # Nothing is spent: one request may now take the whole quota, wherever its budget sits.
    big = enforcers[0].reserve(tenant, KEY, 800)
    assert big.tokens == 800
    with pytest.raises(QuotaExceeded):
        enforcers[1].reserve(tenant, KEY, 1)


def test_a_reservation_on_a_shard_that_never_settles_comes_back_after_the_lease_bound(
    store: Store, clock: FixedClock
) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=1000))
    enforcers = processes(store, clock)
    for i in range(5):
        enforcers[i % 4].reserve(tenant, KEY, 200)  # the processes die
    with pytest.raises(QuotaExceeded):
        enforcers[0].reserve(tenant, KEY, 1)
    clock.advance(LEASES.bound_s)
    assert enforcers[1].reserve(tenant, KEY, 1000).tokens == 1000


def granted_after_lowering_the_quota(store: Store, clock: FixedClock, enforcers: Sequence[LimitEnforcer]) -> int:
    """400 tokens spent under a quota of 10,000 (its budgets drawn into the shards), then the quota lowered to
    500: the tokens granted under the new one (100 when it holds exactly)."""
    generous = Tenant("t1", "t1", 0.0, Limits(token_quota=10_000))
    for i in range(40):
        reservation = enforcers[i % 4].reserve(generous, KEY, 10)
        store.record_usage(record(f"r{i}", 10, clock.now()), enforcers[i % 4].settlement(reservation, 10))
    strict = Tenant("t1", "t1", 0.0, Limits(token_quota=500))
    granted = 0
    for i in range(40):
        try:
            reservation = enforcers[i % 4].reserve(strict, KEY, 10)
        except QuotaExceeded:
            continue
        store.record_usage(record(f"s{i}", 10, clock.now()), enforcers[i % 4].settlement(reservation, 10))
        granted += 10
    return granted


def test_a_lowered_quota_holds_at_once_whatever_the_shards_drew_under_the_old_one(
    store: Store, clock: FixedClock
) -> None:
    assert granted_after_lowering_the_quota(store, clock, processes(store, clock)) == 100  # 400 + 100, not a token over


# -- the per-minute limits ---------------------------------------------------------------------------------


def test_requests_per_minute_hold_exactly_across_shards(store: Store, clock: FixedClock) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits(requests_per_minute=50, tokens_per_minute=10_000))
    enforcers = processes(store, clock)
    for i in range(50):
        enforcers[i % 4].reserve(tenant, KEY, 100)
    for enforcer in enforcers:
        with pytest.raises(RateLimited):
            enforcer.reserve(tenant, KEY, 100)
    clock.advance(60)
    enforcers[0].reserve(tenant, KEY, 100)


def threaded_burst(enforcers: list[LimitEnforcer], tenant: Tenant, threads: int = 8, each: int = 25) -> list[object]:
    """``threads`` threads, spread over the processes, each reserving ``each`` times at once: what each got."""
    start = threading.Barrier(threads)
    results: list[object] = []

    def send(thread: int) -> None:
        start.wait()
        for _ in range(each):
            try:
                results.append(enforcers[thread % len(enforcers)].reserve(tenant, KEY, 10))
            except RateLimited as refusal:
                results.append(refusal)

    workers = [threading.Thread(target=send, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


def test_every_refusal_of_a_concurrent_burst_reports_nothing_left(store: Store, clock: FixedClock) -> None:
    """8 threads over 4 processes whose refusals are memoised: a thread refused by a memo another thread wrote
    meanwhile reports what that memo found free (nothing), not the window item as its process saw it before."""
    policy = dataclasses.replace(SHARDED, refusal_memo_s=1.0)
    for burst in range(10):
        tenant = Tenant(f"t{burst}", f"t{burst}", 0.0, Limits(requests_per_minute=50))
        results = threaded_burst(processes(store, clock, policy=policy), tenant)
        assert sum(isinstance(r, Reservation) for r in results) == 50
        refusals = [r for r in results if isinstance(r, RateLimited)]
        assert len(refusals) == 150
        assert {r.headers["x-ratelimit-remaining-requests"] for r in refusals} == {"0"}
        assert all("rate limit of 50 requests per minute" in str(r) for r in refusals)


def test_tokens_per_minute_settle_back_into_the_shard(store: Store, clock: FixedClock) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits(tokens_per_minute=1000))
    enforcers = processes(store, clock, n=2)
    for i in range(20):
        reservation = enforcers[i % 2].reserve(tenant, KEY, 100)
        store.record_usage(record(f"r{i}", 10, clock.now()), enforcers[i % 2].settlement(reservation, 10))
    # 20 x 10 used: 800 left, wherever it sits.
    held = [enforcers[i % 2].reserve(tenant, KEY, 100) for i in range(8)]
    assert len(held) == 8
    with pytest.raises(RateLimited):
        enforcers[0].reserve(tenant, KEY, 100)


# -- revocation --------------------------------------------------------------------------------------------


def test_a_revoked_key_is_refused_on_every_shard_registered_before_or_after(store: Store, clock: FixedClock) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits())
    enforcers = processes(store, clock)
    for i in range(40):
        enforcers[i % 4].reserve(tenant, KEY, 10)
    registered = marked(store.read(minute_item("t1", int(clock.now() // 60))))
    assert len(registered) > 3
    enforcers[0].guard_key("t1", KEY.id)
    for i in range(40):
        with pytest.raises(Unauthorized):
            enforcers[i % 4].reserve(tenant, KEY, 10)
        enforcers[i % 4].reserve(tenant, KEY_2, 10)  # the tenant's other keys go on
    clock.advance(60)  # a new minute: shards register afresh, copying the guard
    wide = LimitEnforcer(store, clock, NullMetrics(), LEASES, SHARDED)
    for _ in range(30):
        with pytest.raises(Unauthorized):
            wide.reserve(tenant, KEY, 10)


def test_a_suspension_and_a_resume_reach_every_shard(store: Store, clock: FixedClock) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits())
    enforcers = processes(store, clock)
    for i in range(20):
        enforcers[i % 4].reserve(tenant, KEY, 10)
    at = clock.now()
    enforcers[0].guard_tenant("t1", at)
    for i in range(20):
        with pytest.raises(Forbidden):
            enforcers[i % 4].reserve(tenant, KEY_2, 10)
    enforcers[0].unguard_tenant("t1", at)
    for i in range(20):
        enforcers[i % 4].reserve(tenant, KEY_2, 10)


# -- a throttled store -------------------------------------------------------------------------------------


class ThrottledItems(MemoryStore):
    """Refuses the next ``hot[item]`` writes to an item, as a store refuses an item over its rate."""

    def __init__(self, clock: FixedClock, hot: dict[str, int]) -> None:
        super().__init__(clock=clock.now)
        self.hot = hot

    def _try_add_counters(self, changes: Sequence[CounterChange]) -> tuple[bool, list[dict[str, int]]]:
        for change in changes:
            if self.hot.get(change.item, 0) > 0:
                self.hot[change.item] -= 1
                raise StoreThrottled()
        return super()._try_add_counters(changes)


def test_a_throttled_item_spreads_the_tenant_over_more_shards(clock: FixedClock) -> None:
    parent = minute_item("t1", int(clock.now() // 60))
    store = ThrottledItems(clock, {parent: 1})
    tenant = Tenant("t1", "t1", 0.0, Limits(requests_per_minute=100))
    enforcer = LimitEnforcer(store, clock, NullMetrics(), LEASES, ShardPolicy(max_shards=4), random.Random(3))
    assert enforcer.reserve(tenant, KEY, 10).shard > 0  # throttled on the parent: moved, drew, reserved
    assert enforcer.shards.count("t1") == 4
    store.hot = {parent: 10**6}
    refusals = []
    for _ in range(100):  # nowhere to draw from once the shard's budget is spent: the store's 503, never a 429
        try:
            enforcer.reserve(tenant, KEY, 10)
        except StoreThrottled as exc:
            refusals.append(exc)
    assert refusals
    single = LimitEnforcer(store, clock, NullMetrics(), LEASES)
    with pytest.raises(StoreThrottled):
        single.reserve(tenant, KEY, 10)


def test_one_item_policy_writes_exactly_the_single_item(store: Store, clock: FixedClock) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=100, requests_per_minute=5))
    enforcer = LimitEnforcer(store, clock, NullMetrics(), LEASES)
    reservation = enforcer.reserve(tenant, KEY, 10)
    assert reservation.shard == 0
    assert budget("used", 100) not in quota_items(store, clock)[0]
    assert not any(quota_items(store, clock)[s] for s in range(1, 9))


class CountingWrites(MemoryStore):
    """Counts the writes each counter item takes (reservations, draws, registrations, settlements)."""

    def __init__(self, clock: FixedClock) -> None:
        super().__init__(clock=clock.now)
        self.writes: dict[str, int] = {}

    def _note(self, items: Sequence[str]) -> None:
        for item in items:
            self.writes[item] = self.writes.get(item, 0) + 1

    def _try_add_counters(self, changes: Sequence[CounterChange]) -> tuple[bool, list[dict[str, int]]]:
        self._note([c.item for c in changes])
        return super()._try_add_counters(changes)

    def _record_usage(self, record: UsageRecord, day: str, settle: Sequence[CounterChange]) -> bool:
        self._note([c.item for c in settle])
        return super()._record_usage(record, day, settle)


def test_a_burst_writes_no_item_above_its_share(clock: FixedClock) -> None:
    """2,000 requests of a busy tenant over 8 shards, from 4 processes: each shard takes about an eighth of the
    writes, and the window's own items only what grants budget (draws, registrations)."""
    store = CountingWrites(clock)
    tenant = Tenant("t1", "t1", 0.0, Limits(requests_per_minute=100_000, token_quota=10_000_000))
    enforcers = processes(store, clock)
    for i in range(2000):
        enforcer = enforcers[i % 4]
        reservation = enforcer.reserve(tenant, KEY, 300)
        assert store.record_usage(record(f"r{i}", 120, clock.now()), enforcer.settlement(reservation, 120))
    total = sum(store.writes.values())
    minute, month = minute_item("t1", int(clock.now() // 60)), f"q|t1|{period_bounds(clock.now(), 'month')[0]}"
    for parent in (minute, month):
        shards = [n for item, n in store.writes.items() if item.startswith(parent + "|")]
        assert len(shards) == 8
        assert max(shards) < 1.3 * sum(shards) / 8, sorted(shards)  # each about an eighth of its window's
    assert store.writes.get(minute, 0) + store.writes.get(month, 0) < 0.02 * total  # grants only: 24 of 6,120


def test_a_reservation_stops_drawing_from_a_throttled_window_item_after_two_tries(clock: FixedClock) -> None:
    """Every shard without budget draws from the window's own item: when that item is throttled, trying shard
    after shard would only write it again and again (each attempt is one more write it refuses)."""
    parent = f"q|t1|{period_bounds(clock.now(), 'month')[0]}"
    store = ThrottledItems(clock, {parent: 10**6})
    attempts: list[str] = []
    original = store._try_add_counters

    def counting(changes: Sequence[CounterChange]) -> tuple[bool, list[dict[str, int]]]:
        attempts.extend(c.item for c in changes if c.item == parent)
        return original(changes)

    store._try_add_counters = counting  # type: ignore[method-assign]
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=10_000))
    enforcer = LimitEnforcer(store, clock, NullMetrics(), LEASES, SHARDED, random.Random(1))
    with pytest.raises(StoreThrottled):
        enforcer.reserve(tenant, KEY, 10)
    assert len(attempts) == 2
