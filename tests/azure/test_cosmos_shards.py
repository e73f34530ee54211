"""Budget shards and slices on Cosmos DB: the sharded-counter suite (tests/unit/test_budget_shards.py) and the
budget-slice suite on the emulator, and the quota race of the core with several function instances.

Each instance is a store of its own (its own ``CosmosClient``: its own connections, as in another process) on one
database, with its own enforcer (its own shard estimates and random choices). Each counter write is one
conditional operation on one item, several items one after the other with an undo when a later one refuses: the
race checks that whatever the interleaving, the tokens granted never pass the quota and the usage records charge
exactly what the callers were given back.
"""

from __future__ import annotations

import inspect
import random
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from adapters.azure.cosmos import CosmosStore, cosmos_client
from core.budget_shards import ShardPolicy
from core.budget_slices import SlicedLimits, SlicePolicy
from core.clock import FixedClock
from core.domain import Limits, Tenant
from core.errors import QuotaExceeded, ServiceUnavailable
from core.limits import LimitEnforcer
from core.observability import NullMetrics
from tests.azure.cosmos_server import KEY, CosmosServer, cosmos_store
from tests.azure.test_cosmos_store import call_contract
from tests.unit import test_budget_shards as suite
from tests.unit import test_budget_slices as slices
from tests.unit import test_static_split as split

pytestmark = pytest.mark.azure
# Left out for time (the memory and SQLite stores run them; the races below are their concurrent counterpart):
# random traffic (600 steps each), the threaded bursts of 200 reservations, and two that take 3-5 s here (the
# emulator compiles each new filter predicate: a clock that moves makes every one new). Tests/gcp leaves the same.
SLOW = {
    "test_a_lowered_quota_holds_at_once_whatever_the_shards_drew_under_the_old_one",
    "test_requests_per_minute_hold_exactly_with_slices",
    "test_random_traffic_never_overspends_and_never_refuses_with_budget_left",
    "test_refusals_remembered_for_a_moment_stay_within_what_settlements_gave_back_meanwhile",
    "test_every_refusal_of_a_concurrent_burst_reports_nothing_left",
    "test_concurrent_instances_never_overspend_and_every_token_is_accounted",
    "test_one_instance_writes_the_counters_once_per_slice_not_per_request",
    "test_a_concurrent_burst_is_granted_exactly_the_limit",
    "test_random_traffic_refuses_with_tokens_left_only_within_the_memo_bound",
}


def _on_a_store(module: object) -> list[Callable[..., None]]:
    names = sorted(n for n in dir(module) if n.startswith("test_") and n not in SLOW)
    tests = [getattr(module, n) for n in names]
    return [t for t in tests if "store" in inspect.signature(t).parameters]


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(1_767_225_600.0 + 3 * 86_400 + 7)


@pytest.fixture
def store(cosmos_emulator: CosmosServer, clock: FixedClock) -> Iterator[CosmosStore]:
    s = cosmos_store(clock.now)
    yield s
    s.close()


@pytest.mark.parametrize("shard_test", _on_a_store(suite), ids=lambda f: f.__name__.removeprefix("test_"))
def test_budget_shards_on_cosmos(shard_test: Callable[..., None], store: CosmosStore, clock: FixedClock) -> None:
    call_contract(shard_test, {"store": store, "clock": clock})


@pytest.mark.parametrize("split_test", _on_a_store(split), ids=lambda f: f.__name__.removeprefix("test_"))
def test_static_split_on_cosmos(split_test: Callable[..., None], store: CosmosStore, clock: FixedClock) -> None:
    """Minute windows split statically, as the Azure runtime runs them."""
    call_contract(split_test, {"store": store, "clock": clock})


@pytest.mark.parametrize("slice_test", _on_a_store(slices), ids=lambda f: f.__name__.removeprefix("test_"))
def test_budget_slices_on_cosmos(slice_test: Callable[..., None], store: CosmosStore, clock: FixedClock) -> None:
    call_contract(slice_test, {"store": store, "clock": clock})


def instances(store: CosmosStore, clock: FixedClock, n: int) -> list[CosmosStore]:
    """``n`` function instances on the database of ``store``: each a client (connections) and a store of its own."""
    endpoint = store.client.client_connection.url_connection
    return [
        CosmosStore(cosmos_client(endpoint, key=KEY), database=store.database.id, clock=clock.now) for _ in range(n)
    ]


QUOTA = 1_000
NEED = 20
INSTANCES = 4
CONCURRENT = 50  # reservations per instance, all at once
POLICY = ShardPolicy(max_shards=4, start_shards=4, refusal_memo_s=0.0, observe_after_s=61.0)


def test_a_quota_race_of_function_instances_never_grants_above_the_quota(store: CosmosStore, clock: FixedClock) -> None:
    """4 instances x 50 concurrent reservations of 20 tokens on a 1,000-token quota; each settles what it used
    (0 to 20) with its usage record. At every moment the reservations held plus what was charged stay within the
    quota; the records charge exactly what the callers got back; the quota's counters say what the records charged,
    plus what is still held by a reservation whose write got a 503 (until its lease is reclaimed)."""
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=QUOTA))
    fleet = instances(store, clock, INSTANCES)
    enforcers = [
        LimitEnforcer(s, clock, NullMetrics(), suite.LEASES, POLICY, random.Random(i)) for i, s in enumerate(fleet)
    ]
    state = {"held": 0, "charged": 0, "peak": 0, "granted": 0, "refused": 0, "busy": 0, "stranded": 0}
    returned: list[int] = []
    lock = threading.Lock()

    def request(n: int, i: int) -> None:
        try:
            reservation = enforcers[n].reserve(tenant, suite.KEY, NEED)
        except QuotaExceeded:
            with lock:
                state["refused"] += 1
            return
        except ServiceUnavailable:
            with lock:
                state["busy"] += 1  # a 503 (contention past the retries): nothing reserved
            return
        used = random.Random(n * 1000 + i).choice([0, NEED // 2, NEED, NEED])
        with lock:
            state["held"] += reservation.tokens
            state["peak"] = max(state["peak"], state["held"] + state["charged"])
        with lock:  # counted as settled before the write: what is tracked never exceeds what the counters hold
            state["held"] -= reservation.tokens
            state["charged"] += used
        try:
            recorded = fleet[n].record_usage(
                suite.record(f"r{n}-{i}", used, clock.now()), enforcers[n].settlement(reservation, used)
            )
        except ServiceUnavailable:
            with lock:
                state["stranded"] += reservation.tokens  # still held by its lease; its record may be there
            return
        assert recorded
        with lock:
            state["granted"] += 1
            returned.append(used)

    began = time.monotonic()
    with ThreadPoolExecutor(INSTANCES * 8) as pool:
        futures = [pool.submit(request, n, i) for i in range(CONCURRENT) for n in range(INSTANCES)]
        for future in futures:
            future.result()
    elapsed = time.monotonic() - began
    charged = sum(a.completion_tokens for a in store.daily_usage("t1", "2026-01-01", "2026-01-31"))
    records = store.list_usage("t1", 0.0, clock.now() + 1, limit=1000)
    print(f"quota race: {state}, {sum(returned)} of {QUOTA} tokens charged, {elapsed:.1f} s")
    assert state["peak"] <= QUOTA
    assert state["stranded"] == 0  # no fault injected: every record and its settlement was written
    assert charged == sum(returned) == sum(r.completion_tokens for r in records) <= QUOTA
    assert len(records) == state["granted"]
    assert state["refused"] > 0  # the quota did run out
    items = suite.quota_items(store, clock)
    spent = items[0].get("used", 0) - sum(v.get(f"b|used#{QUOTA}", 0) for v in items.values())
    assert spent == charged  # the window's count less the shards' budgets: exactly what the records charged
    assert charged >= QUOTA - 4 * NEED  # it ran out of quota, not out of luck: what is left is below a request's need
    for s in fleet:
        s.close()


def test_instances_spending_budget_slices_never_grant_above_the_quota(store: CosmosStore, clock: FixedClock) -> None:
    """The Azure runtime's way (core.budget_slices): 4 instances, 8 request threads each, spend slices of a quota in
    memory. Never a token over it; once the instances give their slices back, the quota's counters say exactly what
    the usage records charged."""
    quota = 2_000
    tenant = Tenant("t1", "t1", 0.0, Limits(token_quota=quota))
    fleet = instances(store, clock, INSTANCES)
    limits = [
        SlicedLimits(
            LimitEnforcer(s, clock, NullMetrics(), suite.LEASES, POLICY, random.Random(i)),
            s,
            clock,
            SlicePolicy(first_requests=4, max_requests=8, share=1 / 4),
        )
        for i, s in enumerate(fleet)
    ]
    returned: list[int] = []
    lock = threading.Lock()

    def request(n: int, i: int) -> None:
        try:
            share = limits[n].reserve(tenant, suite.KEY, NEED)
        except (QuotaExceeded, ServiceUnavailable):
            return
        used = NEED // 2 + (i % 2)
        if fleet[n].record_usage(suite.record(f"s{n}-{i}", used, clock.now()), limits[n].settlement(share, used)):
            with lock:
                returned.append(used)

    with ThreadPoolExecutor(INSTANCES * 8) as pool:
        futures = [pool.submit(request, n, i) for i in range(CONCURRENT) for n in range(INSTANCES)]
        for future in futures:
            future.result()
    print(f"sliced quota race: {len(returned)} requests served, {sum(returned)} of {quota} tokens charged")
    assert sum(returned) <= quota
    assert len(returned) >= quota // NEED  # reservations of 20 ran the quota out, not contention
    for sliced in limits:
        assert sliced.close_all()
    charged = sum(a.completion_tokens for a in store.daily_usage("t1", "2026-01-01", "2026-01-31"))
    assert charged == sum(returned) == slices.quota_spent(store, clock)
    for s in fleet:
        s.close()
