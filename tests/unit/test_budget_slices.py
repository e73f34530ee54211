"""Budget slices keep every limit hard while an instance writes the counters once per slice, not per request.

Each ``SlicedLimits`` here is one function instance serving many requests at once (threads), all on one store;
every test runs on the memory and the SQLite store, over sharded counters as in production.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest

from adapters.local.memory_store import MemoryStore
from adapters.local.sqlite_store import SQLiteStore
from core.budget_shards import ShardPolicy, shard_item
from core.budget_slices import SlicedLimits, SlicePolicy, SliceShare
from core.clock import FixedClock
from core.domain import ApiKeyRecord, CounterChange, Limits, Tenant, UsageRecord
from core.errors import QuotaExceeded, RateLimited, StoreThrottled, Unauthorized
from core.leases import LeaseClock
from core.limits import LimitEnforcer, period_bounds
from core.observability import NullMetrics
from core.ports import Store
from core.settings import GatewaySettings
from tests.fakes import make_harness
from tests.unit.test_limits import completion

SHARDED = ShardPolicy(max_shards=8, start_shards=8, refusal_memo_s=0.0, observe_after_s=61.0)
KEY = ApiKeyRecord("k1", "t1", "k", "", frozenset(), 0.0)
SLICES = SlicePolicy(first_requests=4, max_requests=16, share=1 / 16)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1_767_225_600.0 + 3 * 86_400 + 7)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FixedClock) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore(clock=clock.now)
    else:
        yield SQLiteStore(str(tmp_path / "slices.db"), clock=clock.now)


class CountingStore:
    """The store, counting the counter writes (every attempt) that reach it."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.writes = 0

    def try_add_all(self, changes: Sequence[CounterChange]) -> tuple[bool, list[dict[str, int]]]:
        self.writes += 1
        return self._store.try_add_all(changes)

    def add(self, item: str, deltas: Mapping[str, int], expires_at: float | None = None) -> None:
        self.writes += 1
        self._store.add(item, deltas, expires_at)

    def read(self, item: str) -> dict[str, int]:
        return self._store.read(item)

    def read_many(self, items: Sequence[str]) -> list[dict[str, int]]:
        return self._store.read_many(items)


class ThrottledCounters(CountingStore):
    """Refuses every counter write for its rate while ``throttling`` (a hot item), counting the attempts."""

    throttling = True

    def try_add_all(self, changes: Sequence[CounterChange]) -> tuple[bool, list[dict[str, int]]]:
        self.writes += 1
        if self.throttling:
            raise StoreThrottled()
        return self._store.try_add_all(changes)


def instances(store: Store, clock: FixedClock, n: int = 4, policy: SlicePolicy = SLICES) -> list[SlicedLimits]:
    made = []
    for i in range(n):
        enforcer = LimitEnforcer(store, clock, NullMetrics(), LeaseClock(), SHARDED, random.Random(i))
        made.append(SlicedLimits(enforcer, store, clock, policy))
    return made


def record(request_id: str, tokens: int, now: float) -> UsageRecord:
    return UsageRecord(request_id, "t1", "k1", "m", "/v1/completions", 0, tokens, False, 0.0, 200, now)


def quota_spent(store: Store, clock: FixedClock) -> int:
    """What the quota counters say is spent: the window's own item less every shard's unspent budget."""
    parent = f"q|t1|{period_bounds(clock.now(), 'month')[0]}"
    spent = store.read(parent).get("used", 0)
    for shard in range(1, SHARDED.max_shards + 1):
        values = store.read(shard_item(parent, shard))
        spent -= sum(v for f, v in values.items() if f.startswith("b|used"))
        spent += values.get("used", 0)
    return spent


def counter_writes(store: Store, clock: FixedClock, sliced: bool, requests: int = 1000) -> int:
    """The counter writes of ``requests`` requests of one instance, one after the other."""
    counting = CountingStore(store)
    enforcer = LimitEnforcer(counting, clock, NullMetrics(), LeaseClock(), SHARDED, random.Random(1))  # type: ignore[arg-type]
    limits = SlicedLimits(enforcer, counting, clock, SLICES) if sliced else enforcer  # type: ignore[arg-type]
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=10_000_000, requests_per_minute=100_000))
    for i in range(requests):
        share = limits.reserve(tenant, KEY, 100)
        changes = limits.settlement(share, 60)
        counting.writes += bool(changes)  # a settlement's changes ride with the usage record, on the items
        assert store.record_usage(record(f"{sliced}-{i}", 60, clock.now()), changes)
        clock.advance(0.001)
    return counting.writes


def test_one_instance_writes_the_counters_once_per_slice_not_per_request(store: Store, clock: FixedClock) -> None:
    """Without slices a request writes its reservation and its settlement; a slice of 16 requests writes its
    reservation (its quota part charged outright) and its give-back, and now and then a draw from the window's
    own item."""
    per_request = counter_writes(store, clock, sliced=False)
    per_slice = counter_writes(store, clock, sliced=True)
    assert per_request >= 2000
    assert per_slice < per_request / 10  # 63 slices of 16: about 2 writes each (with a leased quota, 3: 255)


def test_concurrent_instances_never_overspend_and_every_token_is_accounted(store: Store, clock: FixedClock) -> None:
    """4 instances x 6 threads reserve and settle at random until the quota is spent: never a token over, and
    once the slices are closed the counters say exactly what the usage records charged."""
    quota = 20_000
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=quota))
    fleet = instances(store, clock)
    charged: list[int] = []
    lock = threading.Lock()

    def serve(thread: int) -> None:
        rng = random.Random(thread)
        limits = fleet[thread % len(fleet)]
        for i in range(80):
            tokens = rng.randint(50, 150)
            try:
                share = limits.reserve(tenant, KEY, tokens)
            except QuotaExceeded:
                continue
            used = rng.choice([0, tokens // 2, tokens])
            assert store.record_usage(record(f"r{thread}-{i}", used, clock.now()), limits.settlement(share, used))
            with lock:
                charged.append(used)

    threads = [threading.Thread(target=serve, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(charged) <= quota
    for limits in fleet:
        limits.close_all()
    assert quota_spent(store, clock) == sum(charged)


def test_closed_slices_give_everything_back_so_the_last_tokens_are_granted(store: Store, clock: FixedClock) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=10_000))
    fleet = instances(store, clock)
    for i in range(40):  # every instance holds a slice, partly spent
        limits = fleet[i % 4]
        share = limits.reserve(tenant, KEY, 100)
        store.record_usage(record(f"r{i}", 50, clock.now()), limits.settlement(share, 50))
    for limits in fleet:
        limits.close_all()
    last = fleet[0].reserve(tenant, KEY, 10_000 - 40 * 50)  # exactly what is left, wherever it was held
    assert not isinstance(last, SliceShare)
    with pytest.raises(QuotaExceeded):
        fleet[1].reserve(tenant, KEY, 1)


def test_a_crashed_instance_strands_at_most_its_share_and_never_overspends(store: Store, clock: FixedClock) -> None:
    quota = 16_000
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=quota))
    crashed, alive = instances(store, clock, n=2)
    crashed.reserve(tenant, KEY, 100)  # draws a slice, then dies holding it, its request served
    clock.advance(LeaseClock().bound_s + 1)  # past the lease bound: a leased slice would be given back whole
    granted = 0
    while True:
        try:
            share = alive.reserve(tenant, KEY, 100)
        except QuotaExceeded:
            break
        store.record_usage(record(f"r{granted}", 100, clock.now()), alive.settlement(share, 100))
        granted += 100
    alive.close_all()
    stranded = quota - granted - 100
    assert 0 <= stranded <= quota * SLICES.share


def test_a_revoked_key_is_refused_within_the_guard_read_by_instances_holding_a_slice(
    store: Store, clock: FixedClock
) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=100_000))
    other = ApiKeyRecord("k2", "t1", "k", "", frozenset(), 0.0)
    fleet = instances(store, clock)
    for limits in fleet:
        limits.reserve(tenant, KEY, 10)
        limits.reserve(tenant, other, 10)  # a key without limits spends the tenant's slice
    fleet[0].guard_key("t1", KEY.id)
    clock.advance(SLICES.guard_read_s + 0.001)
    for limits in fleet:
        with pytest.raises(Unauthorized):
            limits.reserve(tenant, KEY, 10)
        assert isinstance(limits.reserve(tenant, other, 10), SliceShare)  # the other key still is served


def test_requests_per_minute_hold_exactly_with_slices(store: Store, clock: FixedClock) -> None:
    """Slices hold the minute's requests without spending them: closed, they give them back, and the minute
    grants exactly its limit."""
    tenant = Tenant("t1", "t1", 0.0, Limits(requests_per_minute=64))
    fleet = instances(store, clock)
    granted = 0
    for _ in range(2):
        for i in range(200):
            limits = fleet[i % 4]
            try:
                share = limits.reserve(tenant, KEY, 10)
            except RateLimited:
                continue
            granted += 1
            store.record_usage(record(f"r{granted}", 10, clock.now()), limits.settlement(share, 10))
        assert granted <= 64
        for limits in fleet:
            limits.close_all()
    assert granted == 64


def test_an_instance_refused_a_slice_makes_the_others_give_theirs_back(store: Store, clock: FixedClock) -> None:
    """When the budget is too short for a slice, the other instances see it on their next guard read and give
    back what their slices hold: the last tokens are not stranded in slices while a request is refused."""
    quota = 4_000
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=quota))
    fleet = instances(store, clock, policy=dataclasses.replace(SLICES, share=1 / 4))
    held = [limits.reserve(tenant, KEY, 100) for limits in fleet[:3]]  # three slices of 4 requests, 400 tokens each
    assert all(isinstance(share, SliceShare) for share in held)
    granted = 0
    while True:  # the fourth instance spends what is left, then is refused a slice, and signals it
        try:
            fleet[3].reserve(tenant, KEY, 100)
        except QuotaExceeded:
            break
        granted += 100
    assert granted < quota - 300
    clock.advance(SLICES.guard_read_s + 0.001)
    for limits in fleet[:3]:  # each sees the signal: its slice closes, and the 3 requests' worth it held go back
        assert not isinstance(limits.reserve(tenant, KEY, 50), SliceShare)
    granted_after = 0
    while True:
        try:
            fleet[3].reserve(tenant, KEY, 100)
        except QuotaExceeded:
            break
        granted_after += 100
    assert granted_after == 3 * 300 - 3 * 50 - 50  # what came back, less the 50s, to the hundred


def test_a_share_settled_into_a_duplicate_record_is_given_back_whole(store: Store, clock: FixedClock) -> None:
    """A retried request whose usage record already exists writes nothing: the runtime releases its share after
    the settlement, and the counters end up charging the first attempt only, whether the slice is still out or
    went back with that very settlement."""
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=100_000))
    (limits,) = instances(store, clock, n=1)
    first = limits.reserve(tenant, KEY, 100)
    assert store.record_usage(record("r1", 80, clock.now()), limits.settlement(first, 80))
    retry = limits.reserve(tenant, KEY, 100)
    assert not store.record_usage(record("r1", 80, clock.now()), limits.settlement(retry, 80))
    limits.release(retry)  # the slice is still out
    last = limits.reserve(tenant, KEY, 100)
    limits.close_all()  # closed with a request in flight: its settlement carries the rest back
    carried = limits.settlement(last, 80)
    assert carried
    assert not store.record_usage(record("r1", 80, clock.now()), carried)  # a duplicate again: nothing written
    limits.release(last)
    assert quota_spent(store, clock) == 80


def test_a_gateway_with_slices_charges_exactly_what_it_served_once_it_gives_its_budget_back() -> None:
    h = make_harness(limits=Limits(token_quota=400), settings=GatewaySettings(counter_slice_requests=8))
    assert isinstance(h.gateway.limits, SlicedLimits)
    statuses = [completion(h, max_tokens=20).status for _ in range(40)]
    served = statuses.count(200)
    assert served > 0
    assert statuses[served:] == [429] * (40 - served)  # refused only once the quota is spent
    asyncio.run(h.gateway.give_back_budget())
    used = sum(r.prompt_tokens + r.completion_tokens for r in h.usage())
    month = period_bounds(h.clock.now(), "month")[0]
    assert h.store.read(f"q|{h.tenant.id}|{month}").get("used", 0) == used <= 400


def test_a_throttled_draw_pauses_the_instances_draws_for_the_tenant(clock: FixedClock) -> None:
    """Without the pause every request of a throttled instance would try a draw of its own, each a write to the
    tenant's hot items: the throttle would feed itself and slices would never form."""
    counters = ThrottledCounters(MemoryStore(clock=clock.now))
    enforcer = LimitEnforcer(counters, clock, NullMetrics(), LeaseClock(), SHARDED, random.Random(0))
    instance = SlicedLimits(enforcer, counters, clock, SLICES)
    tenant = Tenant("t1", "t1", 0.0, Limits(requests_per_minute=1000))
    with pytest.raises(StoreThrottled):
        instance.reserve(tenant, KEY, 10)
    tried = counters.writes
    for _ in range(50):  # within the pause (0.25 s): a 503 each, with no store call
        with pytest.raises(StoreThrottled):
            instance.reserve(tenant, KEY, 10)
    assert counters.writes == tried
    clock.advance(0.3)
    with pytest.raises(StoreThrottled):  # still throttled: the next pause is twice as long
        instance.reserve(tenant, KEY, 10)
    tried = counters.writes
    clock.advance(0.3)
    with pytest.raises(StoreThrottled):
        instance.reserve(tenant, KEY, 10)
    assert counters.writes == tried
    clock.advance(0.3)
    counters.throttling = False
    assert isinstance(instance.reserve(tenant, KEY, 10), SliceShare)  # drawn again once the store takes writes
    other = Tenant("t2", "t2", 0.0, Limits(requests_per_minute=1000))
    counters.throttling = True
    with pytest.raises(StoreThrottled):
        instance.reserve(other, KEY, 10)
    assert isinstance(instance.reserve(tenant, KEY, 10), SliceShare)  # another tenant's pause is its own


class ThrottledAdds(CountingStore):
    """Refuses every plain add (a slice's give-back written alone) while ``throttling``, counting attempts."""

    throttling = True
    adds = 0

    def add(self, item: str, deltas: Mapping[str, int], expires_at: float | None = None) -> None:
        self.writes += 1
        self.adds += 1
        if self.throttling:
            raise StoreThrottled()
        self._store.add(item, deltas, expires_at)


def test_a_throttled_give_back_is_retried_after_a_pause_not_by_every_request(clock: FixedClock) -> None:
    """A give-back the store throttled is written later, but not tried again by each of the instance's requests
    (hundreds a second: they would keep the item it writes throttled); nothing is lost or counted twice."""
    store = MemoryStore(clock=clock.now)
    counters = ThrottledAdds(store)
    enforcer = LimitEnforcer(counters, clock, NullMetrics(), LeaseClock(), SHARDED, random.Random(0))  # type: ignore[arg-type]
    instance = SlicedLimits(enforcer, counters, clock, SLICES)  # type: ignore[arg-type]
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=100_000))
    share = instance.reserve(tenant, KEY, 100)
    assert store.record_usage(record("r0", 60, clock.now()), instance.settlement(share, 60))
    clock.advance(SLICES.max_age_s + 0.1)  # the slice is too old: the next request closes it and draws anew
    share = instance.reserve(tenant, KEY, 100)
    assert counters.adds == 1  # the closed slice's give-back: throttled
    for i in range(1, 40):  # within the pause: the throttled give-back waits, and so do the ones after it
        assert store.record_usage(record(f"r{i}", 100, clock.now()), instance.settlement(share, 100))
        share = instance.reserve(tenant, KEY, 100)
    assert counters.adds == 1
    counters.throttling = False
    clock.advance(SlicePolicy().throttle_backoff_s + 0.01)
    assert store.record_usage(record("r40", 0, clock.now()), instance.settlement(share, 0))
    share = instance.reserve(tenant, KEY, 100)  # after the pause: the give-backs are written
    assert counters.adds > 1
    assert store.record_usage(record("r41", 30, clock.now()), instance.settlement(share, 30))
    clock.advance(SLICES.max_age_s + 0.1)
    assert instance.close_all()
    assert quota_spent(store, clock) == 60 + 39 * 100 + 30  # every share's use charged, each give-back once
