"""Reservations cannot leak: one that is never settled is given back after ``LeaseClock.bound_s``.

The processes that reserved here "die": they reserve and never settle. After the bound, the tenant's whole
remaining quota is spendable again, the counter equals the usage records plus live reservations, and a
settlement that comes after its lease was reclaimed charges exactly what it used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.local.memory_store import MemoryStore
from adapters.local.sqlite_store import SQLiteStore
from core.clock import FixedClock
from core.domain import ApiKeyRecord, Limits, Tenant, UsageRecord
from core.errors import QuotaExceeded
from core.leases import SLOTS, LeaseClock
from core.limits import LimitEnforcer, Reservation, period_bounds
from core.observability import NullMetrics
from core.ports import Store

QUOTA = 1000
LEASES = LeaseClock(max_request_s=30.0)


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path, clock: FixedClock) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore(clock=clock.now)
    else:
        yield SQLiteStore(str(tmp_path / "leases.db"), clock=clock.now)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1_767_225_600.0 + 3 * 86_400)  # early in a month: no period ends during a test


def limits_on(store: Store, clock: FixedClock) -> LimitEnforcer:
    return LimitEnforcer(store, clock, NullMetrics(), LEASES)


TENANT = Tenant("t1", "t1", 0.0, Limits(token_quota=QUOTA))
KEY = ApiKeyRecord("k1", "t1", "k", "", frozenset(), 0.0)
KEY_2 = ApiKeyRecord("k2", "t1", "k", "", frozenset(), 0.0, limits=Limits(token_quota=600))


def used(store: Store, clock: FixedClock) -> dict[str, int]:
    month = period_bounds(clock.now(), "month")[0]
    values = store.read(f"q|t1|{month}")
    return {name: v for name, v in values.items() if name.startswith("used")}


def test_a_reservation_never_settled_is_given_back_after_the_bound(store: Store, clock: FixedClock) -> None:
    limits = limits_on(store, clock)
    for _ in range(4):
        limits.reserve(TENANT, KEY, 200)  # four processes reserve, then die
    with pytest.raises(QuotaExceeded):
        limits.reserve(TENANT, KEY, 300)
    clock.advance(LEASES.bound_s - 1)
    with pytest.raises(QuotaExceeded):  # not yet: they might still be running
        limits.reserve(TENANT, KEY, 300)
    clock.advance(1)
    limits.reserve(TENANT, KEY, QUOTA)  # the whole quota, at once
    assert used(store, clock) == {"used": QUOTA, "used|k1": QUOTA}


def test_the_counter_converges_to_the_records_plus_live_reservations(store: Store, clock: FixedClock) -> None:
    limits = limits_on(store, clock)
    live = limits.reserve(TENANT, KEY, 100)
    limits.reserve(TENANT, KEY_2, 250)  # dies
    settled = limits.reserve(TENANT, KEY, 50)
    assert store.record_usage(_record("r1"), limits.settlement(settled, 30))
    # `live` outlives max_request_s (a frozen container thawed late, say): its lease is reclaimed with k2's.
    clock.advance(LEASES.bound_s)
    limits.reserve(TENANT, KEY, 10)  # a later reservation turns old slots over when it needs them
    with pytest.raises(QuotaExceeded):
        limits.reserve(TENANT, KEY, QUOTA)  # refused, after reclaiming what is stale
    assert used(store, clock)["used"] == 30 + 10  # the settled 30 and the new 10; the leaked leases are back
    # live's late settlement finds its lease reclaimed: it charges what it used, and gives nothing back twice.
    assert store.record_usage(_record("r2"), limits.settlement(live, 70))
    assert used(store, clock)["used"] == 30 + 10 + 70
    assert used(store, clock)["used|k2"] == 0


def test_a_slot_is_turned_over_when_its_epoch_comes_round_again(store: Store, clock: FixedClock) -> None:
    limits = limits_on(store, clock)
    limits.reserve(TENANT, KEY, 400)  # dies
    clock.advance(SLOTS * LEASES.bucket_s)  # the same slot, SLOTS epochs later
    limits.reserve(TENANT, KEY, 10)
    assert used(store, clock)["used"] == 10  # the turnover gave the 400 back in the same round


def test_a_settlement_within_the_bound_is_exact_and_leaves_no_lease(store: Store, clock: FixedClock) -> None:
    limits = limits_on(store, clock)
    reservation = limits.reserve(TENANT, KEY, 300)
    clock.advance(LEASES.max_request_s)
    assert store.record_usage(_record("r1"), limits.settlement(reservation, 120))
    clock.advance(LEASES.bound_s * 3)
    limits.reserve(TENANT, KEY, 1)
    with pytest.raises(QuotaExceeded):
        limits.reserve(TENANT, KEY, QUOTA - 120)  # the 120 used stay charged: nothing was "reclaimed"
    assert used(store, clock)["used"] == 121


def test_a_release_after_the_lease_was_reclaimed_gives_nothing_back_twice(store: Store, clock: FixedClock) -> None:
    limits = limits_on(store, clock)
    slow: Reservation = limits.reserve(TENANT, KEY, 500)
    clock.advance(LEASES.bound_s)
    limits.reserve(TENANT, KEY, 600)  # reclaims slow's 500 on its quota refusal, then fits
    limits.release(slow)  # slow turns out to be a duplicate: its release must not give 500 back again
    assert used(store, clock)["used"] == 600


def test_a_killed_batch_of_sixteen_leaves_nothing_after_the_bound(store: Store, clock: FixedClock) -> None:
    limits = limits_on(store, clock)
    for i in range(16):
        limits.reserve(TENANT, KEY if i % 2 else KEY_2, 31)  # 496 tokens in flight when the process died
    clock.advance(LEASES.bound_s)
    limits.reserve(TENANT, KEY, QUOTA)
    assert used(store, clock) == {"used": QUOTA, "used|k1": QUOTA, "used|k2": 0}


def test_the_bound_covers_the_longest_request_and_clock_skew() -> None:
    leases = LeaseClock(max_request_s=900.0)
    assert (SLOTS - 1) * leases.bucket_s >= leases.max_request_s + 60
    assert leases.bound_s == pytest.approx(leases.bucket_s + 960)
    assert leases.bound_s < 1300  # about 21 minutes with the 15-minute cap of a Lambda


def _record(request_id: str) -> UsageRecord:
    return UsageRecord(request_id, "t1", "k1", "m", "completions", 0, 0, False, 1.0, 200, 0.0)
