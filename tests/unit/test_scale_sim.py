"""The scale model (bench.scale_sim, bench.scale_stores): the throttling store refuses all or nothing and counts
it, today's single counters item throttles on DynamoDB at 2,000 requests/s without overspending, and the
simulator counts a refusal while budget was left exactly."""

from __future__ import annotations

import pytest

from bench.scale_sim import SLICED_CONCURRENCY, T0, TENANT_ID, limits_for, simulate, single, split
from bench.scale_stores import MODELS, ThrottlingStore
from core.clock import FixedClock
from core.domain import CounterChange, Limits, UsageRecord
from core.errors import APIError, QuotaExceeded, RateLimited, StoreThrottled
from core.leases import LeaseClock
from core.limits import LimitEnforcer
from core.observability import NullMetrics

A, B = f"rl|{TENANT_ID}|1", f"q|{TENANT_ID}|2026-10"


def firestore() -> tuple[ThrottlingStore, FixedClock]:
    clock = FixedClock(T0)
    return ThrottlingStore(MODELS["firestore"], clock.now), clock


def test_a_write_over_one_items_rate_writes_nothing_and_is_counted() -> None:
    store, clock = firestore()  # 1 write/s per document, a burst of 5
    for _ in range(5):
        assert store.try_add(A, {"req": 1}, {"req": 100}, T0 + 60)[0]
    writes = store.stats.writes

    with pytest.raises(StoreThrottled):
        store.try_add_all([CounterChange(B, {"used": 7}, {}, T0 + 60), CounterChange(A, {"req": 1}, {}, T0 + 60)])

    assert store.peek(A) == {"req": 5}
    assert store.peek(B) == {}  # the other item, under its rate, was not written either
    assert (store.stats.writes, store.stats.throttled_writes) == (writes + 1, 1)
    assert store.stats.served[f"doc:{B}"] == {}  # nothing charged to B's bucket
    clock.advance(1.0)
    assert store.try_add_all([CounterChange(B, {"used": 7}, {}, T0 + 60), CounterChange(A, {"req": 1}, {}, T0 + 60)])[0]
    assert (store.peek(A), store.peek(B)) == ({"req": 6}, {"used": 7})


def test_a_refused_conditional_write_costs_its_units_and_a_throttled_settle_writes_no_record() -> None:
    clock = FixedClock(T0)
    store = ThrottlingStore(MODELS["dynamodb"], clock.now)
    assert not store.try_add(A, {"req": 1}, {"req": 0}, T0 + 60)[0]  # refused by its limit
    assert store.stats.write_units == 1.0
    record = UsageRecord("r1", TENANT_ID, "k1", "m", "/v1/chat/completions", 10, 5, False, 1.0, 200, T0)
    store._buckets[f"T#{TENANT_ID}/LIMITS"].tokens = 0.0  # the counters item has no capacity left this second
    with pytest.raises(StoreThrottled):
        store.record_usage(record, [CounterChange(B, {"used": -5}, {}, T0 + 60)])
    assert store.get_usage(TENANT_ID, "r1") is None
    assert store.stats.calls["record_usage"] == 1
    store.read(A)  # reads are counted, in their own buckets on DynamoDB
    assert (store.stats.calls["read"], store.stats.reads) == (1, 1)


def test_single_item_throttles_on_dynamodb_at_2000_per_s_without_overspending() -> None:
    model = MODELS["dynamodb"]
    run = simulate(model, 2000.0, 2.0, single(model), "quota")

    name, attempted, served, limit = run.stats.busiest()
    assert name == f"T#{TENANT_ID}/LIMITS"  # the tenant's one counters item
    assert attempted > 5 * limit
    assert served <= limit * 2  # its bucket (a burst of one second's units, then the rate)
    assert run.stats.throttled_writes > 0
    assert run.unavailable_reserve > 0
    assert (run.overspend, run.drift, run.lost) == (0, 0, 0)


class _Refuses:
    """A real enforcer, except that the ``nth`` reservation of all instances is refused (a 429) while the store
    has room; ``seen`` gets what the store had counted then."""

    calls = 0
    seen: list[int] = []

    def __init__(self, store: ThrottlingStore, clock: FixedClock, error: type[APIError], nth: int) -> None:
        self._real = LimitEnforcer(store, clock, NullMetrics(), LeaseClock())
        self._store, self._error, self._nth = store, error, nth

    def reserve(self, *args: object) -> object:
        _Refuses.calls += 1
        if _Refuses.calls == self._nth:
            item = f"q|{TENANT_ID}|2026-10" if self._error is QuotaExceeded else f"rl|{TENANT_ID}|{int(T0 // 60)}"
            counted = self._store.peek(item).get("used" if self._error is QuotaExceeded else "tok", 0)
            _Refuses.seen.append(counted)
            raise self._error("refused")
        return self._real.reserve(*args)  # type: ignore[arg-type]

    def settlement(self, *args: object) -> object:
        return self._real.settlement(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("error", "limits", "limit"),
    [(QuotaExceeded, Limits(token_quota=2000), 2000), (RateLimited, Limits(tokens_per_minute=2000), 2000)],
)
def test_a_refusal_while_budget_was_left_is_counted_with_the_budget_left(
    error: type[APIError], limits: Limits, limit: int
) -> None:
    _Refuses.calls, _Refuses.seen = 0, []
    model = MODELS["dynamodb"]
    run = simulate(
        model,
        5.0,
        6.0,
        lambda store, clock: _Refuses(store, clock, error, nth=2),  # type: ignore[arg-type,return-value]
        limits=limits,
    )

    # The forced refusal left at least 2000 - 350 tokens; the real ones later (the limit spent) are not counted.
    assert run.refused > 1
    assert run.refused_with_budget == 1
    assert run.max_budget_left == limit - _Refuses.seen[0] >= 1650
    assert (run.overspend, run.drift, run.lost) == (0, 0, 0)


def test_sharded_counters_serve_what_the_single_item_throttles_on_dynamodb_at_2000_per_s() -> None:
    """The same 8 s of a tenant at 2,000 requests/s, once per design: the sharded counters serve the whole
    quota's worth where the single item serves a fraction, and neither overspends nor loses a record."""
    from bench.scale_sim import sharded, single

    model = MODELS["dynamodb"]
    runs = {}
    for name, design in (("single", single), ("sharded", sharded)):
        factory = design(model)
        assert factory is not None
        runs[name] = simulate(model, 2000.0, 8.0, factory, "quota", design=name)
    for run in runs.values():
        assert (run.overspend, run.drift, run.lost) == (0, 0, 0)
    assert runs["sharded"].served > 2.5 * runs["single"].served


def test_on_firestore_the_split_serves_a_mid_month_tenant_at_500_per_s_where_one_item_serves_a_handful() -> None:
    """The design the Google Cloud runtime runs (slices, minute windows split, quota draws filling every shard,
    usage on writer shards), on a store whose documents take a write a second: everything offered is served."""
    model = MODELS["firestore"]
    limits = limits_for("steady", 500.0, 6.0)
    run = simulate(model, 500.0, 6.0, split(model), design="split", limits=limits, concurrency=SLICED_CONCURRENCY)
    before = simulate(model, 500.0, 6.0, single(model), limits=limits)
    assert run.served >= 0.97 * run.arrivals
    assert before.served < 0.05 * before.arrivals
    assert (run.overspend, run.drift, run.lost) == (0, 0, 0)
