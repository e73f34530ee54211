"""FirestoreStore on the Firestore emulator: the whole Store contract, plus what only Firestore has (its layout,
TTL fields, contention and unavailability retried then 503, a lost commit answer charged once)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from adapters.gcp.firestore import FirestoreStore
from core.domain import CounterChange, UsageRecord
from core.errors import ServiceUnavailable, StoreThrottled
from core.ports import Store

# The behavioural suite every Store passes, run here on Firestore (see ``tests/contract``).
from tests.contract import test_store_contract as contract
from tests.contract.test_store_contract import T0, FakeClock
from tests.gcp.firestore_emulator import FirestoreEmulator, firestore_client

pytestmark = pytest.mark.gcp
# What only the SQLite store has (reopening a file, its transaction rollback) is not part of the contract. The
# purge test writes 1,400 transactions (15 s on the emulator) to check a sweeper Firestore does not have: its TTL
# policy deletes expired documents, and that reads ignore them meanwhile is ``counters_expire`` and
# ``test_expired_documents_are_absent_until_the_ttl_policy_deletes_them`` below.
SLOW = {"test_many_counter_writes_purge_expired_items_without_losing_live_ones"}
CONTRACT = [
    getattr(contract, name)
    for name in sorted(dir(contract))
    if name.startswith("test_") and not name.startswith("test_sqlite_") and name not in SLOW
]


def firestore_store(clock: Callable[[], float], **kwargs: Any) -> FirestoreStore:
    """A store on a project of its own on the session's emulator (nothing to reset between tests)."""
    return FirestoreStore(firestore_client(), clock=clock, **kwargs)


def as_store(store: FirestoreStore) -> Store:
    """Never called: mypy checks here that FirestoreStore has every role of the Store protocol."""
    return store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(firestore_emulator_host: FirestoreEmulator, clock: FakeClock) -> Iterator[FirestoreStore]:
    s = firestore_store(clock)
    yield s
    s.close()


def call_contract(test: Callable[..., None], available: dict[str, Any]) -> None:
    """Call a contract test with the fixtures it names; one it names and we lack fails loudly."""
    wanted = inspect.signature(test).parameters
    missing = set(wanted) - set(available)
    assert not missing, f"{test.__name__} needs fixtures this file lacks: {sorted(missing)}"
    test(**{name: available[name] for name in wanted})


@pytest.mark.parametrize("contract_test", CONTRACT, ids=lambda f: f.__name__.removeprefix("test_"))
def test_store_contract(contract_test: Callable[..., None], store: FirestoreStore, clock: FakeClock) -> None:
    call_contract(contract_test, {"store": store, "clock": clock})


class _Faulty:
    """The GAPIC client with faults: ``fail[method]`` errors raised before (or, ``lost``, after) the real call."""

    def __init__(self, api: Any) -> None:
        self._api = api
        self.fail: dict[str, list[Exception]] = {}
        self.lost = False
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._api, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            errors = self.fail.get(name)
            if errors and not self.lost:
                raise errors.pop(0)
            result = method(*args, **kwargs)
            if errors and self.lost:
                raise errors.pop(0)  # it applied; its answer is lost
            return result

        return call


def faulty(store: FirestoreStore) -> _Faulty:
    api = _Faulty(store.rpc.api)
    store.rpc.api = api
    return api


def _usage(request_id: str) -> UsageRecord:
    return UsageRecord(request_id, "t1", "k1", "m", "/v1/generate", 10, 5, False, 1.0, 200, T0, 0.5)


def test_a_usage_commit_whose_answer_was_lost_is_charged_once(store: FirestoreStore) -> None:
    store.try_add("q|t1|2024-03", {"used": 100}, {"used": 1000}, T0 + 3600)
    api = faulty(store)
    api.lost = True
    api.fail["commit"] = [gexc.DeadlineExceeded("lost"), gexc.ServiceUnavailable("lost")]
    settle = [CounterChange("q|t1|2024-03", {"used": -60}, expires_at=T0 + 3600)]
    assert store.record_usage(_usage("r1"), settle) is True  # the retry finds its own record: applied once
    assert store.read("q|t1|2024-03") == {"used": 40}
    assert store.record_usage(_usage("r1"), settle) is False  # another delivery of the same request
    assert store.read("q|t1|2024-03") == {"used": 40}
    [day] = store.daily_usage("t1", "2024-03-10", "2024-03-10")
    assert day.requests == 1


def test_a_reservation_whose_answer_was_lost_is_not_made_twice(store: FirestoreStore) -> None:
    api = faulty(store)
    api.lost = True
    api.fail["commit"] = [gexc.DeadlineExceeded("lost")]
    assert store.try_add("rl|t1|5", {"req": 1}, {"req": 5}, T0 + 120) == (True, {"req": 1})
    assert store.read("rl|t1|5") == {"req": 1}


def test_contention_is_retried_then_a_503_and_nothing_is_half_written(store: FirestoreStore) -> None:
    store.rpc.rounds = 3
    api = faulty(store)
    api.fail["commit"] = [gexc.Aborted("contention")]  # once: retried, and it goes through
    assert store.record_usage(_usage("r1"), [CounterChange("q|t1|2024-03", {"used": 5}, expires_at=T0 + 60)])
    assert store.read("q|t1|2024-03") == {"used": 5}
    api.fail["commit"] = [gexc.Aborted("contention")] * 3
    with pytest.raises(StoreThrottled):
        store.record_usage(_usage("r2"), [CounterChange("q|t1|2024-03", {"used": 7}, expires_at=T0 + 60)])
    api.fail["batch_get_documents"] = [gexc.ServiceUnavailable("down")] * 3
    with pytest.raises(ServiceUnavailable) as refused:
        store.try_add("q|t1|2024-03", {"used": 1}, {"used": 100}, T0 + 60)
    assert refused.value.status == 503
    assert refused.value.code == "store_unavailable"
    assert store.get_usage("t1", "r2") is None  # nothing of the refused commits was written
    assert store.read("q|t1|2024-03") == {"used": 5}
    assert [a.requests for a in store.daily_usage("t1", "2024-03-10", "2024-03-10")] == [1]


def test_counter_items_live_under_their_tenant_with_a_ttl_timestamp(store: FirestoreStore, clock: FakeClock) -> None:
    fields = {"req|key_ab12": 1, "used@2026-09-21": 10, "odd.name[0]#": 2}
    assert store.try_add("rl|t1|123", fields, {"req|key_ab12": 1}, T0 + 59.25) == (True, fields)
    store.try_add("plain", {"n": 1}, {}, T0 + 60)
    raw = store.client.document("tenants/t1/counters/rl|t1|123").get().to_dict()
    assert raw["c"] == fields  # any field name: map keys, never field paths
    assert raw["x"] == T0 + 59.25
    assert raw["expires_at"].timestamp() == pytest.approx(T0 + 59.25)
    assert store.client.document("counters/plain").get().exists  # core names it without a tenant
    clock.now = T0 + 59.5  # expired, still there until the TTL policy deletes it: absent to every read
    assert store.client.document("tenants/t1/counters/rl|t1|123").get().exists
    assert store.read("rl|t1|123") == {}
    assert store.try_add("rl|t1|123", {"req|key_ab12": 1}, {"req|key_ab12": 1}, T0 + 120)[0] is True


def test_expired_documents_are_absent_until_the_ttl_policy_deletes_them(store: FirestoreStore) -> None:
    store.cache_put("t1", "k" * 64, b"v", T0 + 10.5)
    raw = store.client.document(f"tenants/t1/cache/{'k' * 64}").get().to_dict()
    assert raw["expires_at"].timestamp() == T0 + 11  # whole seconds, rounded up: never deleted early
    assert store.cache_get("t1", "k" * 64, T0 + 10.5) is None  # the exact expiry
