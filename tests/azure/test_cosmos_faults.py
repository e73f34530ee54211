"""CosmosStore under faults, injected in the SDK's HTTP transport (``tests.azure.cosmos_server.CosmosTransport``):
throttling retried as the server asks then a 503, a write whose answer was lost never sent again (no double
charge), a request never sent sent again, and a change set refused half-way undone."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from adapters.azure.cosmos import CosmosStore
from adapters.azure.cosmos_retry import CosmosCalls
from core.domain import CounterChange
from core.errors import ServiceUnavailable, StoreThrottled
from tests.azure.cosmos_server import CosmosServer, CosmosTransport, Fault, cosmos_store
from tests.contract.test_store_contract import T0, _usage

pytestmark = pytest.mark.azure
QUOTA_ITEM = "q|t1|2024-03"


class Sleeps(CosmosCalls):
    """The store's calls, with the pauses recorded (and shortened: the tests need not wait them)."""

    def __init__(self) -> None:
        self.slept: list[float] = []
        super().__init__(sleep=self._record)

    def _record(self, seconds: float) -> None:
        self.slept.append(seconds)


class Resending(Sleeps):
    """What the store must not do: send a write again after its answer was lost (as if every write were idempotent)."""

    def write(self, call, *, idempotent=False):
        return super().write(call, idempotent=True)


@pytest.fixture
def transport() -> CosmosTransport:
    return CosmosTransport()


@pytest.fixture
def calls() -> Sleeps:
    return Sleeps()


@pytest.fixture
def store(cosmos_emulator: CosmosServer, transport: CosmosTransport, calls: Sleeps) -> Iterator[CosmosStore]:
    s = cosmos_store(lambda: T0, transport=transport, calls=calls)
    s.try_add(QUOTA_ITEM, {"used": 100}, {"used": 1000}, T0 + 3600)  # the item exists: a reservation is one patch
    transport.trips.clear()
    yield s
    s.close()


def patches(transport: CosmosTransport) -> list[int]:
    return [t.status for t in transport.trips if t.kind == "patch"]


def test_a_429_is_retried_after_the_servers_retry_after_then_the_write_goes_through(
    store: CosmosStore, transport: CosmosTransport, calls: Sleeps
) -> None:
    transport.faults.append(Fault(lambda kind: kind == "patch", "throttle", retry_after_ms=40, times=2))
    assert store.try_add(QUOTA_ITEM, {"used": 10}, {"used": 1000}, T0 + 3600) == (True, {"used": 110})
    assert patches(transport) == [429, 429, 200]
    assert len(calls.slept) == 2
    assert all(0.040 <= s < 0.040 + 0.02 for s in calls.slept)  # the server's wait, plus a little jitter


def test_persistent_throttling_is_a_503_and_nothing_is_written(
    store: CosmosStore, transport: CosmosTransport, calls: Sleeps
) -> None:
    transport.faults.append(Fault(lambda kind: kind == "patch", "throttle", retry_after_ms=100, times=1000))
    with pytest.raises(StoreThrottled) as refused:
        store.try_add(QUOTA_ITEM, {"used": 10}, {"used": 1000}, T0 + 3600)
    assert (refused.value.status, refused.value.code) == (503, "store_unavailable")
    assert sum(calls.slept) <= 5.0  # bounded
    assert set(patches(transport)) == {429}
    transport.faults.clear()
    assert store.read(QUOTA_ITEM) == {"used": 100}


def test_a_reservation_whose_answer_was_lost_is_a_503_and_is_not_sent_again(
    store: CosmosStore, transport: CosmosTransport
) -> None:
    transport.faults.append(Fault(lambda kind: kind == "patch", "lost"))
    with pytest.raises(ServiceUnavailable) as lost:
        store.try_add(QUOTA_ITEM, {"used": 10}, {"used": 1000}, T0 + 3600)
    assert lost.value.status == 503
    assert patches(transport) == [200]  # sent once: the server applied it, its answer never came
    assert store.read(QUOTA_ITEM) == {"used": 110}  # charged once


def test_without_the_rule_a_lost_answer_charges_twice(cosmos_emulator: CosmosServer) -> None:
    """The test above fails without the rule: a store that resends the lost write charges the tokens twice."""
    transport = CosmosTransport()
    store = cosmos_store(lambda: T0, transport=transport, calls=Resending())
    store.try_add(QUOTA_ITEM, {"used": 100}, {"used": 1000}, T0 + 3600)
    transport.faults.append(Fault(lambda kind: kind == "patch", "lost"))
    assert store.try_add(QUOTA_ITEM, {"used": 10}, {"used": 1000}, T0 + 3600)[0] is True
    assert store.read(QUOTA_ITEM) == {"used": 120}  # a double charge
    store.close()


def test_a_settlement_whose_answer_was_lost_is_applied_once_and_a_redelivery_settles_nothing(
    store: CosmosStore, transport: CosmosTransport
) -> None:
    settle = [CounterChange(QUOTA_ITEM, {"used": -60}, expires_at=T0 + 3600)]
    transport.faults.append(Fault(lambda kind: kind == "patch", "lost"))
    with pytest.raises(ServiceUnavailable):
        store.record_usage(_usage("r1"), settle)
    assert store.read(QUOTA_ITEM) == {"used": 40}  # applied by the server, once
    assert store.get_usage("t1", "r1") is not None  # the record was written first
    [day] = store.daily_usage("t1", "2024-03-10", "2024-03-10")  # the aggregate was still written after the 503
    assert day.requests == 1
    assert store.record_usage(_usage("r1"), settle) is False  # the request delivered again: nothing settled twice
    assert store.read(QUOTA_ITEM) == {"used": 40}


def test_a_usage_record_whose_answer_was_lost_is_a_503_and_its_redelivery_writes_nothing(
    store: CosmosStore, transport: CosmosTransport
) -> None:
    settle = [CounterChange(QUOTA_ITEM, {"used": -60}, expires_at=T0 + 3600)]
    transport.faults.append(Fault(lambda kind: kind == "create", "lost"))
    with pytest.raises(ServiceUnavailable):
        store.record_usage(_usage("r1"), settle)
    assert store.read(QUOTA_ITEM) == {"used": 100}  # not settled: the reservation waits for its lease
    assert store.record_usage(_usage("r1"), settle) is False
    assert store.read(QUOTA_ITEM) == {"used": 100}


def test_a_read_or_a_whole_item_upsert_whose_answer_was_lost_is_sent_again(
    store: CosmosStore, transport: CosmosTransport
) -> None:
    transport.faults.append(Fault(lambda kind: kind == "read", "lost"))
    assert store.read(QUOTA_ITEM) == {"used": 100}
    transport.faults.append(Fault(lambda kind: kind == "upsert", "lost"))
    store.cache_put("t1", "k", b"v", T0 + 60)  # the same item whether written once or twice
    assert store.cache_get("t1", "k", T0) == b"v"
    assert [t.kind for t in transport.trips].count("upsert") == 2


def test_a_request_that_was_never_sent_is_sent_again(store: CosmosStore, transport: CosmosTransport) -> None:
    transport.faults.append(Fault(lambda kind: kind == "patch", "unsent"))
    assert store.try_add(QUOTA_ITEM, {"used": 10}, {"used": 1000}, T0 + 3600) == (True, {"used": 110})
    assert patches(transport) == [200]


def test_a_change_set_refused_half_way_is_undone_and_a_failure_half_way_too(
    store: CosmosStore, transport: CosmosTransport
) -> None:
    minute = CounterChange("rl|t1|5", {"req": 1, "tok": 50}, {"req": 10}, T0 + 60)
    too_much = CounterChange(QUOTA_ITEM, {"used": 950}, {"used": 1000}, T0 + 3600)
    assert store.try_add_all([minute, too_much]) == (False, [{"req": 0, "tok": 0}, {"used": 100}])
    assert store.read("rl|t1|5") == {"req": 0, "tok": 0}  # applied, then undone
    fits = CounterChange(QUOTA_ITEM, {"used": 50}, {"used": 1000}, T0 + 3600)
    with pytest.raises(StoreThrottled):
        _first_then_throttled(store, transport, [minute, fits])
    assert store.read("rl|t1|5") == {"req": 0, "tok": 0}  # the first change undone after the second failed
    assert store.read(QUOTA_ITEM) == {"used": 100}


def _first_then_throttled(store: CosmosStore, transport: CosmosTransport, changes: list[CounterChange]) -> None:
    """The first patch goes through; every later one (until the undo) is throttled."""
    seen = {"patches": 0}

    def second_on(kind: str) -> bool:
        if kind != "patch":
            return False
        seen["patches"] += 1
        return 1 < seen["patches"] < 1 + 8 + 1  # the second change's attempts; the undo after them goes through

    transport.faults[:] = [Fault(second_on, "throttle", retry_after_ms=1, times=1000)]
    store.try_add_all(changes)
