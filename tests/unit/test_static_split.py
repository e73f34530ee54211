"""A minute window split statically over shards (``core.static_split``): limits hold exactly, a shard short of
its share takes from the others, the window's own minute item is never written by a reservation, and a
revocation reaches every shard. Each enforcer is a process of one deployment; memory and SQLite stores."""

from __future__ import annotations

import dataclasses
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.local.memory_store import MemoryStore
from adapters.local.sqlite_store import SQLiteStore
from core.budget_shards import ShardPolicy, shard_item
from core.budget_slices import SlicedLimits
from core.clock import FixedClock
from core.domain import ApiKeyRecord, CounterChange, Limits, Tenant
from core.errors import RateLimited, Unauthorized
from core.leases import LeaseClock
from core.limits import LimitEnforcer, Reservation, minute_item, period_bounds
from core.observability import NullMetrics
from core.ports import Store
from core.slice_parts import SlicePolicy
from core.static_split import StaticSplit
from tests.unit.test_budget_shards import CountingWrites, granted_after_lowering_the_quota, record

SPLIT = StaticSplit(max_shards=8, request_share=4, token_share=100)
POLICY = ShardPolicy(max_shards=8, refusal_memo_s=0.0, observe_after_s=61.0)
LEASES = LeaseClock(max_request_s=30.0)
KEY = ApiKeyRecord("k1", "t1", "k", "", frozenset(), 0.0)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1_767_225_600.0 + 3 * 86_400 + 7)  # early in a month, 7 s into a minute


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FixedClock) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore(clock=clock.now)
    else:
        yield SQLiteStore(str(tmp_path / "split.db"), clock=clock.now)


def processes(store: Store, clock: FixedClock, n: int = 4, policy: ShardPolicy = POLICY) -> list[LimitEnforcer]:
    return [LimitEnforcer(store, clock, NullMetrics(), LEASES, policy, random.Random(i), split=SPLIT) for i in range(n)]


class Pinned(random.Random):
    """Picks shard ``shard`` every time: a process whose requests all land on one shard."""

    def __init__(self, shard: int) -> None:
        super().__init__(0)
        self.shard = shard

    def randrange(self, *args: int, **kwargs: int) -> int:  # type: ignore[override]
        return self.shard - 1


# -- the pieces --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, 1, 3, 4, 7, 31, 32, 33, 100, 1_000, 12_345])
def test_the_shares_of_a_limit_add_up_to_it_over_a_count_its_size_allows(limit: int) -> None:
    count = SPLIT.count("req", limit)
    assert count == max(1, min(8, limit // 4))
    shares = [SPLIT.share("req", limit, s) for s in range(0, 10)]
    assert sum(shares) == limit
    assert shares[0] == 0
    assert all(s == 0 for s in shares[count + 1 :])
    assert max(shares[1 : count + 1]) - min(shares[1 : count + 1]) <= 1


def test_a_change_is_spent_on_a_shard_down_to_minus_its_share_and_keeps_the_guards() -> None:
    change = CounterChange("rl|t|1", {"req": 1, "tok": 50, "n": 1}, {"req": 40, "tok": 1000, "off": 0}, 60.0)
    spent = SPLIT.on_shard(change, 3)
    assert spent.item == "rl|t|1|3"
    assert spent.increments == {"b|req#40": -1, "b|tok#1000": -50, "n": 1}
    assert spent.floors == {"b|req#40": -5, "b|tok#1000": -125}
    assert spent.limits == {"off": 0}
    assert SPLIT.span(change) == 8
    assert SPLIT.span(CounterChange("rl|t|1", {"req": 1}, {"req": 40, "req|k": 8})) == 2  # the key's 8: 2 shards
    assert SPLIT.span(CounterChange("rl|t|1", {"req": 1}, {"off": 0})) == 8  # no limit: every shard


# -- the limits hold ---------------------------------------------------------------------------------------


def test_requests_per_minute_hold_exactly_and_the_window_item_is_never_written(clock: FixedClock) -> None:
    store = CountingWrites(clock)
    tenant = Tenant("t1", "t1", 0.0, Limits(requests_per_minute=50, tokens_per_minute=100_000))
    enforcers = processes(store, clock)
    for i in range(50):
        enforcers[i % 4].reserve(tenant, KEY, 100)
    for enforcer in enforcers:
        with pytest.raises(RateLimited) as refused:
            enforcer.reserve(tenant, KEY, 100)
        assert refused.value.headers["x-ratelimit-remaining-requests"] == "0"
    window = minute_item("t1", int(clock.now() // 60))
    assert store.writes.get(window, 0) == 0
    assert len([item for item in store.writes if item.startswith(window + "|")]) == 8
    clock.advance(60)
    enforcers[0].reserve(tenant, KEY, 100)


def test_a_shard_short_of_its_share_takes_from_the_others_until_every_one_is_spent(
    store: Store, clock: FixedClock
) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits(requests_per_minute=64))
    one_shard = LimitEnforcer(store, clock, NullMetrics(), LEASES, POLICY, Pinned(1), split=SPLIT)
    held = [one_shard.reserve(tenant, KEY, 0) for _ in range(64)]  # shard 1's share is 8: 56 came from others
    assert {r.shard for r in held} == {1}
    with pytest.raises(RateLimited):
        one_shard.reserve(tenant, KEY, 0)
    window = minute_item("t1", int(clock.now() // 60))
    left = sum(SPLIT.free(store.read(shard_item(window, s)), "req", 64, s) for s in range(1, 9))
    assert left == 0


def test_tokens_per_minute_settle_back_into_the_shard_and_are_spent_again(store: Store, clock: FixedClock) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits(tokens_per_minute=1000))
    enforcers = processes(store, clock, n=2)
    for i in range(20):
        reservation = enforcers[i % 2].reserve(tenant, KEY, 100)
        store.record_usage(record(f"r{i}", 10, clock.now()), enforcers[i % 2].settlement(reservation, 10))
    held = [enforcers[i % 2].reserve(tenant, KEY, 100) for i in range(8)]  # 20 x 10 used: 800 left
    assert len(held) == 8
    with pytest.raises(RateLimited):
        enforcers[0].reserve(tenant, KEY, 100)


def test_a_concurrent_burst_is_granted_exactly_the_limit(store: Store, clock: FixedClock) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits(requests_per_minute=120, tokens_per_minute=1_000_000))
    enforcers = processes(store, clock)
    granted: list[Reservation] = []
    refused: list[RateLimited] = []
    start = threading.Barrier(8)

    def send(thread: int) -> None:
        start.wait()
        for _ in range(25):
            try:
                granted.append(enforcers[thread % 4].reserve(tenant, KEY, 10))
            except RateLimited as refusal:
                refused.append(refusal)

    workers = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert len(granted) == 120
    assert len(refused) == 80


def test_a_key_with_a_small_limit_is_split_over_fewer_shards_and_holds(store: Store, clock: FixedClock) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits(requests_per_minute=1000))
    small = ApiKeyRecord("k2", "t1", "k", "", frozenset(), 0.0, limits=Limits(requests_per_minute=9))
    enforcers = processes(store, clock)
    held = [enforcers[i % 4].reserve(tenant, small, 0) for i in range(9)]
    assert {r.shard for r in held} <= {1, 2}  # 9 // 4: two shards of the key's limit
    with pytest.raises(RateLimited):
        enforcers[0].reserve(tenant, small, 0)
    enforcers[0].reserve(tenant, KEY, 0)  # the tenant's other keys are not refused


def test_a_lowered_limit_starts_new_shares_that_hold_from_then_on(store: Store, clock: FixedClock) -> None:
    """Within the minute of a change, what was spent under the old limit is not counted against the new one
    (the stated bound: old spent + new limit); the new limit itself holds exactly."""
    enforcers = processes(store, clock)
    before = Tenant("t1", "t1", 0.0, Limits(requests_per_minute=40))
    for i in range(30):
        enforcers[i % 4].reserve(before, KEY, 0)
    after = Tenant("t1", "t1", 0.0, Limits(requests_per_minute=20))
    for i in range(20):
        enforcers[i % 4].reserve(after, KEY, 0)
    with pytest.raises(RateLimited):
        enforcers[0].reserve(after, KEY, 0)


def test_the_quotas_first_draw_fills_every_shard_with_one_write_of_its_window_item(clock: FixedClock) -> None:
    """With a split, a quota's draw spreads the window item's whole remainder over the shards at once: the item
    a store writes about once a second is written once, not once per shard; a shard short of budget later
    takes it from the others."""
    store = CountingWrites(clock)
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=80_000))
    enforcers = processes(store, clock)
    parent = f"q|t1|{period_bounds(clock.now(), 'month')[0]}"
    enforcers[0].reserve(tenant, KEY, 100)
    assert store.writes[parent] == 1
    assert store.read(parent)["used"] == 80_000
    for shard in range(1, SPLIT.max_shards + 1):  # a block each (less what the first reservation spent there)
        budget = store.read(shard_item(parent, shard)).get("b|used#80000", 0)
        assert 9_900 <= budget <= 10_000
    for i in range(600):  # 60,000 of the 80,000: every shard spends its block, some take from the others
        store.record_usage(
            record(f"r{i}", 100, clock.now()),
            enforcers[i % 4].settlement(enforcers[i % 4].reserve(tenant, KEY, 100), 100),
        )
    assert store.writes[parent] == 1


def test_a_lowered_quota_holds_exactly_on_a_split_whatever_its_shards_were_given(
    store: Store, clock: FixedClock
) -> None:
    """The fill gave every shard budget under the old quota; those budgets are not spent under the new one
    (their limit is in their name) and go back to be spread anew: nothing is granted over the new quota."""
    assert granted_after_lowering_the_quota(store, clock, processes(store, clock)) == 100


# -- revocation --------------------------------------------------------------------------------------------


def test_a_revoked_key_is_refused_on_every_shard_at_once(store: Store, clock: FixedClock) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits(requests_per_minute=1000))
    enforcers = processes(store, clock)
    for i in range(20):
        enforcers[i % 4].reserve(tenant, KEY, 0)
    enforcers[0].guard_key("t1", "k1")
    for shard in range(1, 9):  # shards that were written and shards that were not
        pinned = LimitEnforcer(store, clock, NullMetrics(), LEASES, POLICY, Pinned(shard), split=SPLIT)
        with pytest.raises(Unauthorized):
            pinned.reserve(tenant, KEY, 0)
    other = ApiKeyRecord("k2", "t1", "k", "", frozenset(), 0.0)
    enforcers[1].reserve(tenant, other, 0)  # only that key


def test_a_suspended_tenant_is_refused_everywhere_and_resumes(store: Store, clock: FixedClock) -> None:
    tenant = Tenant("t1", "t1", 0.0, Limits(requests_per_minute=1000))
    enforcers = processes(store, clock)
    enforcers[0].guard_tenant("t1", clock.now())
    for enforcer in enforcers:
        with pytest.raises(Exception, match="suspended"):
            enforcer.reserve(tenant, KEY, 0)
    enforcers[0].unguard_tenant("t1", clock.now())
    for enforcer in enforcers:
        enforcer.reserve(tenant, KEY, 0)


# -- behind budget slices (the Cloud Run and Azure Functions runtimes) ----------------------------------------


def test_slices_on_a_static_split_never_overspend_and_leave_the_window_item_alone(clock: FixedClock) -> None:
    store = CountingWrites(clock)
    tenant = Tenant("t1", "t1", 0.0, Limits(requests_per_minute=400, tokens_per_minute=10_000_000))
    instances = [SlicedLimits(e, store, clock, SlicePolicy()) for e in processes(store, clock)]
    granted: list[int] = []
    start = threading.Barrier(8)

    def send(thread: int) -> None:
        start.wait()
        for _ in range(80):
            try:
                instances[thread % 4].reserve(tenant, KEY, 10)
                granted.append(1)
            except RateLimited:
                pass

    workers = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert 0 < len(granted) <= 400
    window = minute_item("t1", int(clock.now() // 60))
    assert store.writes.get(window, 0) <= len(instances)  # at most each instance's one "scarce" mark


@pytest.mark.parametrize("memo_s", [0.0, 1.0])
def test_random_traffic_refuses_with_tokens_left_only_within_the_memo_bound(
    store: Store, clock: FixedClock, memo_s: float
) -> None:
    """Random reserve/settle interleavings over 4 processes, 50 ms apart, within one minute: never over the
    tokens-per-minute limit; without a refusal memo never refused while the minute had room; with one, what was
    left is short of the request plus what settlements gave back during the longest memo (``core.shard_room``)."""
    limit, policy = 6000, dataclasses.replace(POLICY, refusal_memo_s=memo_s, refusal_memo_max_s=16 * memo_s)
    tenant = Tenant("t1", "t1", 0.0, Limits(tokens_per_minute=limit))
    enforcers = processes(store, clock, policy=policy)
    rng = random.Random(11)
    live: list[tuple[LimitEnforcer, Reservation]] = []
    given_back: list[tuple[float, int]] = []
    charged = refusals = with_room = 0
    for i in range(1000):
        clock.advance(0.05)
        if live and rng.random() < 0.5:
            owner, reservation = live.pop(rng.randrange(len(live)))
            used = rng.choice([0, reservation.tokens // 2, reservation.tokens])
            assert store.record_usage(record(f"r{i}", used, clock.now()), owner.settlement(reservation, used))
            charged += used
            given_back.append((clock.now(), reservation.tokens - used))
            continue
        tokens = rng.randint(1, 200)
        outstanding = sum(r.tokens for _, r in live)
        enforcer = enforcers[rng.randrange(4)]
        try:
            live.append((enforcer, enforcer.reserve(tenant, KEY, tokens)))
        except RateLimited:
            refusals += 1
            left = limit - charged - outstanding
            since = clock.now() - policy.refusal_memo_max_s
            assert left < tokens + sum(n for t, n in given_back if t > since), "refused beyond the bound"
            with_room += left >= tokens
        assert charged + sum(r.tokens for _, r in live) <= limit
    assert refusals > 50
    if not memo_s:
        assert with_room == 0
