"""FirestoreStore on the Firestore emulator: the whole Store contract, plus what only Firestore has (its layout,
TTL fields, contention and unavailability retried then 503, a lost commit answer charged once)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
from google.api_core import exceptions as gexc

from adapters.gcp.firestore import FirestoreStore
from adapters.gcp.firestore_layout import DAILY, USAGE, tenant_path
from core.clock import FixedClock
from core.domain import CounterChange, UsageRecord
from core.errors import ServiceUnavailable, StoreThrottled
from core.ports import Store
from core.writer_shards import WriterShards

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


def test_a_busy_process_adds_usage_to_aggregate_documents_of_its_own_none_written_above_its_share(
    firestore_emulator_host: FirestoreEmulator, clock: FakeClock
) -> None:
    """Each process writes the daily aggregates to documents of its own, as many as its rate needs (at most one
    write in 2 s each here); the usage API adds them all up."""
    busy_clock = FixedClock()
    busy = firestore_store(clock, writer_shards=WriterShards("busy", clock=busy_clock.now))
    quiet_clock = FixedClock()
    quiet = FirestoreStore(busy.client, clock=clock, writer_shards=WriterShards("quiet", clock=quiet_clock.now))
    for n in range(40):  # 20 records a second for 2 s
        assert busy.record_usage(_usage(f"r{n}"), [])
        busy_clock.t += 0.05
    for n in range(3):  # one every 5 s
        assert quiet.record_usage(_usage(f"q{n}"), [])
        quiet_clock.t += 5.0
    docs = busy.rpc.query(tenant_path("t1"), DAILY, {})
    per_doc = {d["shard"]: d["requests"] for d in docs}
    assert sum(per_doc.values()) == 43
    assert per_doc["quiet0"] == 3  # a quiet process: one document
    busy_docs = [n for shard, n in per_doc.items() if shard.startswith("busy")]
    assert len(busy_docs) >= 20
    assert max(busy_docs) <= 1
    [day] = busy.daily_usage("t1", "2024-03-10", "2024-03-10")
    assert (day.requests, day.prompt_tokens, day.completion_tokens) == (43, 430, 215)
    busy.close()


def test_usage_is_listed_across_index_shards_in_order(store: FirestoreStore) -> None:
    """Records of one tenant spread over the index shards (``shard``) come back as one list in order, the first
    ``limit`` across all shards, ties at the cut included."""
    for n in range(30):
        store.record_usage(replace(_usage(f"r{n:02d}"), created_at=T0 + n // 3), [])
    shards = {d["shard"] for d in store.rpc.query(tenant_path("t1"), USAGE, {})}
    assert len(shards) > 5
    listed = store.list_usage("t1", T0, T0 + 100, limit=7)
    assert [r.request_id for r in listed] == [f"r{n:02d}" for n in range(7)]
    assert [r.request_id for r in store.list_usage(None, T0 + 3, T0 + 5)] == [f"r{n:02d}" for n in range(9, 15)]


def test_a_listing_reads_a_share_of_its_limit_per_index_shard_not_the_whole_limit(store: FirestoreStore) -> None:
    """Each document a query returns is billed: a listing of 40 asks each of the 32 shards for 10 first, and
    stops there when 40 records are known below every full shard's last one (asking each for 40 read all 800)."""
    for n in range(800):
        store.record_usage(replace(_usage(f"r{n:03d}"), created_at=T0 + n), [])
    read: list[int] = []
    query = store.rpc.query

    def counted(*args: Any, **kwargs: Any) -> list[dict[str, Any]]:
        docs = query(*args, **kwargs)
        read.append(len(docs))
        return docs

    store.rpc.query = counted  # type: ignore[method-assign]
    listed = store.list_usage("t1", T0, T0 + 1000, limit=40)
    assert [r.request_id for r in listed] == [f"r{n:03d}" for n in range(40)]
    assert sum(read) <= 32 * 10
