"""DynamoDBStore on moto: the whole Store contract, plus what only DynamoDB has (TTL lag, item layout)."""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable
from typing import Any

import pytest
from pynamodb.connection import Connection

from adapters.aws import dynamodb_counters
from adapters.aws.dynamodb import DynamoDBStore
from adapters.aws.dynamodb_models import create_table
from adapters.aws.dynamodb_table import connect
from core.domain import ApiKeyRecord, CounterChange, UsageRecord
from core.ports import Store
from tests.aws.support import REGION

# The behavioural suite every Store passes, run here on DynamoDB (see ``tests/contract``).
from tests.contract import test_store_contract as contract
from tests.contract.test_store_contract import T0, FakeClock

pytestmark = pytest.mark.aws
TABLE = "textnlp-test"
# What only the SQLite store has (reopening a file, its transaction rollback) is not part of the contract.
CONTRACT = [
    getattr(contract, name)
    for name in sorted(dir(contract))
    if name.startswith("test_") and not name.startswith("test_sqlite_")
]


@pytest.fixture
def dynamodb_url(moto: str, atomic_moto_url: str) -> str:
    """The atomic server (``conftest.atomic_moto_url``), every table gone (``moto`` resets the state first)."""
    return atomic_moto_url


@pytest.fixture(scope="module")
def shared_connection(atomic_moto_url: str) -> Connection:
    """One client for the tests that add no event hooks to it (making a botocore client takes ~0.1 s)."""
    return connect(atomic_moto_url, REGION, max_attempts=2)


def dynamodb_store(where: str | Connection, clock: Callable[[], float], max_attempts: int = 2) -> DynamoDBStore:
    """A store on a new table, through ``where``: a Connection, or a moto URL for a client of its own."""
    connection = where if isinstance(where, Connection) else connect(where, REGION, max_attempts=max_attempts)
    create_table(connection, TABLE)
    return DynamoDBStore(TABLE, connection, clock=clock)


def as_store(store: DynamoDBStore) -> Store:
    """Never called: mypy checks here that DynamoDBStore has every role of the Store protocol."""
    return store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(dynamodb_url: str, shared_connection: Connection, clock: FakeClock) -> DynamoDBStore:
    return dynamodb_store(shared_connection, clock)


def record_calls(store: DynamoDBStore) -> list[tuple[str, dict[str, Any]]]:
    """Every DynamoDB API call the store makes from now on: (operation, parameters), once per call.

    ``before-parameter-build`` fires once per call (not per retry), before botocore serialises it.
    """
    calls: list[tuple[str, dict[str, Any]]] = []

    def seen(params: dict[str, Any], model: Any, **_: Any) -> None:
        calls.append((model.name, params))

    store.client.meta.events.register("before-parameter-build.dynamodb.*", seen)
    return calls


def call_contract(test: Callable[..., None], available: dict[str, Any]) -> None:
    """Call a contract test with the fixtures it names; one it names and we lack fails loudly."""
    wanted = inspect.signature(test).parameters
    missing = set(wanted) - set(available)
    assert not missing, f"{test.__name__} needs fixtures this file lacks: {sorted(missing)}"
    test(**{name: available[name] for name in wanted})


@pytest.mark.parametrize("contract_test", CONTRACT, ids=lambda f: f.__name__.removeprefix("test_"))
def test_store_contract(contract_test: Callable[..., None], store: DynamoDBStore, clock: FakeClock) -> None:
    call_contract(contract_test, {"store": store, "clock": clock})


def test_expired_slots_still_in_the_item_are_absent_to_every_call(store: DynamoDBStore, clock: FakeClock) -> None:
    """An expired slot stays in the item until a write clears it: until then it must not count."""
    store.try_add("w", {"a": 4, "b": 1}, {"a": 5}, T0 + 60)
    clock.now = T0 + 61
    raw = store._table.get("C#w", "LIMITS")
    assert raw is not None
    assert raw["c_-#a"] == {"N": "4"}
    assert store.read("w") == {}
    assert store.try_add("w", {"a": 5}, {"a": 5}, T0 + 120) == (True, {"a": 5})  # "b" went with the old slot
    assert store.read("w") == {"a": 5}
    clock.now = T0 + 121
    assert store.try_add("w", {"a": 6}, {"a": 5}, T0 + 180) == (False, {})  # refused on zeros, nothing written
    store.add("w", {"a": -1}, T0 + 180)
    assert store.read("w") == {"a": -1}


def test_a_tenants_counters_are_slots_of_one_item_named_after_the_tenant(store: DynamoDBStore) -> None:
    """Field names with "|", "@", "." and brackets are attributes of their own; expiries are exact."""
    fields = {"req|key_ab12": 1, "used@2026-09-21": 10, "odd.name[0]#": 2}
    assert store.try_add("rl|t1|123", fields, {"req|key_ab12": 1}, T0 + 59.25) == (True, fields)
    assert store.try_add("q|t1|2024-03", {"used": 7}, {"used": 10}, T0 + 86_400) == (True, {"used": 7})
    raw = store._table.get("T#t1", "LIMITS")
    assert raw is not None
    assert "expires_at" not in raw  # no TTL on the item: the month's slot outlives the minutes
    assert float(raw["x_rl|123"]["N"]) == T0 + 59.25
    assert {name for name in raw if name.startswith("c_")} == {
        "c_rl|123#req|key_ab12",
        "c_rl|123#used@2026-09-21",
        "c_rl|123#odd.name%5B0%5D%23",
        "c_q|2024-03#used",
    }
    assert store.read("rl|t1|123") == fields
    assert store.read("q|t1|2024-03") == {"used": 7}


def test_expired_slots_are_removed_by_the_next_write(store: DynamoDBStore, clock: FakeClock) -> None:
    """Old minutes do not pile up in a tenant's item: the write after one that saw them removes them."""
    store.try_add("q|t1|2024-03", {"used": 1}, {}, T0 + 86_400)
    for minute in range(6):
        clock.now = T0 + 60 * minute
        store.try_add(f"rl|t1|{minute}", {"req": 1}, {"req": 5}, T0 + 60 * minute + 120)
    raw = store._table.get("T#t1", "LIMITS")
    assert raw is not None
    slots = {name.split("#")[0] for name in raw if name.startswith("c_")}
    # A slot lives 2 minutes: the last write saw minute 2 expired (the next one removes it); 0 and 1 are gone.
    assert slots == {"c_q|2024-03", "c_rl|2", "c_rl|3", "c_rl|4", "c_rl|5"}
    assert store.read("q|t1|2024-03") == {"used": 1}


def test_a_reservation_over_a_tenants_minute_and_month_is_one_update(store: DynamoDBStore) -> None:
    calls: list[str] = []
    store.client.meta.events.register("before-call.dynamodb", lambda model, **_: calls.append(model.name))
    changes = [
        CounterChange("rl|t1|9", {"req": 1, "tok": 50}, {"req": 2, "tok": 100}, T0 + 120),
        CounterChange("q|t1|2024-03", {"used": 50}, {"used": 1000}, T0 + 86_400),
    ]
    assert store.try_add_all(changes) == (True, [{"req": 1, "tok": 50}, {"used": 50}])
    assert calls == ["UpdateItem"]
    calls.clear()
    assert store.try_add_all(changes) == (True, [{"req": 2, "tok": 100}, {"used": 100}])
    ok, seen = store.try_add_all(changes)  # the minute refuses: the month is not touched either
    assert (ok, seen) == (False, [{"req": 2, "tok": 100}, {"used": 100}])
    assert calls == ["UpdateItem", "UpdateItem"]
    assert store.read("q|t1|2024-03") == {"used": 100}


def test_api_keys_live_under_their_tenant_behind_an_index_entry(store: DynamoDBStore) -> None:
    """A key's own expiry must not make DynamoDB's TTL delete its record; its index names the tenant only."""
    store.put_key(ApiKeyRecord("k1", "t1", "n", "h", frozenset({"generate"}), T0, expires_at=T0 - 10))
    raw = store._table.get("T#t1", "KEY#k1")
    assert raw is not None
    assert "expires_at" not in raw
    assert float(raw["key_expires_at"]["N"]) == T0 - 10
    index = store._table.get("KEY#k1", "KEY")
    assert index is not None
    assert set(index) == {"pk", "sk", "tenant_id"}
    assert store.get_key("k1") is not None


def test_a_key_imported_again_for_another_tenant_moves_there(store: DynamoDBStore) -> None:
    first = ApiKeyRecord("k1", "t1", "n", "h", frozenset({"generate"}), T0)
    store.put_key(first)
    other = DynamoDBStore(store.table_name, store.connection, clock=lambda: T0)  # another container
    assert other.get_key("k1") == first  # and it remembers the tenant
    store.put_key(dataclasses.replace(first, tenant_id="t2"))
    assert store.list_keys("t1") == []
    assert [k.tenant_id for k in store.list_keys("t2")] == ["t2"]
    got = other.get_key("k1")  # its remembered tenant no longer holds the key: it reads the index again
    assert got is not None
    assert got.tenant_id == "t2"


def test_settling_an_expired_or_absent_counter_item_recreates_it(store: DynamoDBStore, clock: FakeClock) -> None:
    """Inside the usage transaction, a settled item that expired (or is gone) counts as absent, as in ``add``."""
    store.try_add("m", {"tok": 500, "req": 1}, {}, T0 + 60)
    clock.now = T0 + 61
    usage = UsageRecord("r1", "t1", "k1", "m", "/v1/generate", 1, 1, False, 1.0, 200, T0, 0.0)
    settle = [
        CounterChange("m", {"tok": -400}, expires_at=T0 + 120),
        CounterChange("new", {"x": 2}, expires_at=T0 + 90),
    ]
    assert store.record_usage(usage, settle) is True
    assert store.read("m") == {"tok": -400}
    assert store.read("new") == {"x": 2}
    assert store.record_usage(usage, settle) is False
    assert store.read("m") == {"tok": -400}


def test_a_cache_entry_too_big_for_an_item_is_not_kept(store: DynamoDBStore) -> None:
    store.cache_put("t1", "big", b"x" * 400_000, T0 + 60)
    assert store.cache_get("t1", "big", T0) is None
    store.cache_put("t1", "fits", b"x" * 390_000, T0 + 60)
    assert store.cache_get("t1", "fits", T0) == b"x" * 390_000


def test_settling_after_the_minute_ended_settles_the_month_only(store: DynamoDBStore, clock: FakeClock) -> None:
    """A long stream settles after its minute slot expired: the month gets its tokens back, nothing fails."""
    minute, month = "rl|t1|100", "q|t1|2024-03"
    reserved = [
        CounterChange(minute, {"req": 1, "tok": 500}, {"tok": 1000}, T0 + 120),
        CounterChange(month, {"used": 500}, {"used": 10_000}, T0 + 86_400),
    ]
    assert store.try_add_all(reserved)[0] is True
    clock.now = T0 + 200  # the minute slot expired at T0 + 120
    usage = UsageRecord("r-late", "t1", "k1", "m", "/v1/generate", 1, 1, False, 1.0, 200, T0, 0.0)
    settle = [
        CounterChange(minute, {"tok": -400}, expires_at=T0 + 120),
        CounterChange(month, {"used": -400}, expires_at=T0 + 86_400),
    ]
    assert store.record_usage(usage, settle) is True
    assert store.read(month) == {"used": 100}
    assert store.read(minute) == {}
    store.add(minute, {"req": -1}, T0 + 120)  # a late release of an ended window: nothing to do, no error
    assert store.read(minute) == {}


def test_a_big_expired_slot_is_removed_in_writes_of_its_own(store: DynamoDBStore, clock: FakeClock) -> None:
    """A minute in which a tenant used hundreds of keys: removing it must not overflow the reservation's
    UpdateExpression (4 KB), so it goes in separate, chunked writes after the reservation."""
    for n in range(150):  # one request per key: 2 + 2 x 150 fields in the minute's slot
        store.try_add("rl|t1|1", {"req": 1, "tok": 5, f"req|key_{n:04d}": 1, f"tok|key_{n:04d}": 5}, {}, T0 + 120)
    clock.now = T0 + 130
    store.try_add("rl|t1|2", {"req": 1}, {"req": 10}, T0 + 240)  # sees minute 1 expired
    calls = record_calls(store)
    clock.now = T0 + 150
    assert store.try_add("rl|t1|2", {"req": 1}, {"req": 10}, T0 + 240) == (True, {"req": 2})
    removals = math.ceil((2 + 2 * 150 + 1) / dynamodb_counters._REMOVALS_PER_WRITE)  # fields and the expiry
    assert [op for op, _ in calls] == ["UpdateItem"] * (1 + removals)  # the reservation, then the removals
    assert all(len(kwargs["UpdateExpression"]) < 4096 for _, kwargs in calls)
    raw = store._table.get("T#t1", "LIMITS")
    assert raw is not None
    assert not [name for name in raw if name.startswith(("c_rl|1#", "x_rl|1"))]


def test_a_key_update_racing_a_move_reads_the_index_again(
    store: DynamoDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = ApiKeyRecord("k1", "t1", "n", "h", frozenset({"generate"}), T0)
    store.put_key(key)
    store.put_key(dataclasses.replace(key, tenant_id="t2"))  # another admin moved it
    reads = iter(["t1"])  # our read of the index happened before that move
    real = store._indexed_tenant
    monkeypatch.setattr(store, "_indexed_tenant", lambda key_id: next(reads, None) or real(key_id))
    store.put_key(dataclasses.replace(key, revoked_at=T0 + 1))  # refused once (the index moved), then redone
    assert [k.revoked_at for k in store.list_keys("t1")] == [T0 + 1]
    assert store.list_keys("t2") == []  # last writer wins, and no tenant is left holding a stale copy
    got = store.get_key("k1")
    assert got is not None
    assert (got.tenant_id, got.revoked_at) == ("t1", T0 + 1)


def test_a_windows_shards_are_read_in_one_batch_get(dynamodb_url: str, clock: FakeClock) -> None:
    """What a refusal reads (every shard of a window, each its own partition) is one BatchGetItem."""
    store = dynamodb_store(dynamodb_url, clock)  # a client of its own: the call recorder hooks into it
    shards = [f"rl|t1|5|{s}" for s in range(1, 9)]
    for s, item in enumerate(shards[:5], start=1):
        store.try_add(item, {"b|req#64": -s, "n": s}, {}, T0 + 60)
    one_by_one = [store.read(item) for item in shards]
    calls = record_calls(store)
    assert store.read_many(shards) == one_by_one
    assert [name for name, _ in calls] == ["BatchGetItem"]
    assert one_by_one[0] == {"b|req#64": -1, "n": 1}
    assert one_by_one[5:] == [{}, {}, {}]
