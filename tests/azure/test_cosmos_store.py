"""CosmosStore on the Cosmos DB emulator: the whole Store contract, the SigningKeyStore contract, and what only
Cosmos has (its layout: hierarchical partition keys that begin with the tenant, ids unique per tenant, ``ttl``
and the exact expiry that reads compare while the emulator never deletes)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from adapters.azure.cosmos import CosmosStore, open_cosmos_store
from adapters.azure.cosmos_layout import field_name
from core.domain import CounterChange, Tenant
from core.ports import Store
from tests.azure.cosmos_server import KEY, CosmosServer, cosmos_store, new_database

# The behavioural suites every Store and SigningKeyStore passes, run here on Cosmos (see ``tests/contract``).
from tests.contract import test_signing_key_store_contract as signing
from tests.contract import test_store_contract as contract
from tests.contract.test_signing_key_store_contract import Subject
from tests.contract.test_store_contract import T0, FakeClock

pytestmark = pytest.mark.azure
CONTRACT = [
    getattr(contract, name) for name in sorted(dir(contract)) if name.startswith("test_") and "sqlite" not in name
]
SIGNING = [getattr(signing, name) for name in sorted(dir(signing)) if name.startswith("test_")]


def as_store(store: CosmosStore) -> Store:
    """Never called: mypy checks here that CosmosStore has every role of the Store protocol."""
    return store


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(cosmos_emulator: CosmosServer, clock: FakeClock) -> Iterator[CosmosStore]:
    s = cosmos_store(clock)
    yield s
    s.close()


def call_contract(test: Callable[..., None], available: dict[str, Any]) -> None:
    """Call a contract test with the fixtures it names; one it names and we lack fails loudly."""
    wanted = inspect.signature(test).parameters
    missing = set(wanted) - set(available)
    assert not missing, f"{test.__name__} needs fixtures this file lacks: {sorted(missing)}"
    test(**{name: available[name] for name in wanted})


@pytest.mark.parametrize("contract_test", CONTRACT, ids=lambda f: f.__name__.removeprefix("test_"))
def test_store_contract(contract_test: Callable[..., None], store: CosmosStore, clock: FakeClock) -> None:
    call_contract(contract_test, {"store": store, "clock": clock})


@contextmanager
def _cosmos_keys(tmp: Path) -> Iterator[Subject]:
    """Two stores (two function instances) on one database: the keys every instance shares."""
    first = cosmos_store()
    opened = [first]

    def peer() -> CosmosStore:
        other = CosmosStore(first.client, database=first.database.id)
        opened.append(other)
        return other

    try:
        yield Subject(first, peer)
    finally:
        first.close()


@pytest.mark.parametrize("signing_test", SIGNING, ids=lambda f: f.__name__.removeprefix("test_"))
def test_signing_key_store_contract(
    signing_test: Callable[..., None], cosmos_emulator: CosmosServer, tmp_path: Path
) -> None:
    with _cosmos_keys(tmp_path) as subject:
        call_contract(signing_test, {"subject": subject})


def _raw(store: CosmosStore, container: str) -> list[dict[str, Any]]:
    items = store.database.get_container_client(container).query_items(
        "SELECT * FROM c", enable_cross_partition_query=True
    )
    return list(items)


def test_every_item_is_under_its_tenant_and_counters_carry_ttl_and_the_exact_expiry(
    store: CosmosStore, clock: FakeClock
) -> None:
    fields = {"req|key_AB12": 1, "used@2026-09-21": 10, "Odd.name[0]#/~": 2}
    assert store.try_add("rl|t1|123|4", fields, {"req|key_AB12": 1}, T0 + 59.25) == (True, fields)
    store.add("plain", {"n": 1})
    [minute] = [i for i in _raw(store, "counters") if i["item"] == "rl|t1|123|4"]
    assert (minute["tenant"], minute["part"]) == ("t1", "rl|4")
    assert minute["v"] == {field_name(n): v for n, v in fields.items()}
    assert minute["v"][field_name("req|key_AB12")] == 1
    assert field_name("req|key_AB12") == "req|key_%41%4212"  # lowercase-invariant: the emulator lowercases predicates
    assert minute["x"] == T0 + 59.25
    assert minute["ttl"] == 60 + 300  # whole seconds, rounded up, plus the slack for clock skew
    [plain] = [i for i in _raw(store, "counters") if i["item"] == "plain"]
    assert (plain["tenant"], plain["ttl"]) == ("~", -1)  # no tenant in its name; never expires
    clock.now = T0 + 59.5  # expired, still there (the emulator enforces no TTL): absent to every read
    assert store.read("rl|t1|123|4") == {}
    assert len([i for i in _raw(store, "counters") if i["item"] == "rl|t1|123|4"]) == 1
    assert store.try_add("rl|t1|123|4", {"req|key_AB12": 1}, {"req|key_AB12": 1}, T0 + 120)[0] is True
    assert store.read("rl|t1|123|4") == {"req|key_AB12": 1}  # the expired fields are gone, not added to


def test_a_change_with_more_fields_than_one_patch_takes_is_a_conditional_replace(store: CosmosStore) -> None:
    many = {f"f{i}": 1 for i in range(12)}
    assert store.try_add("q|t1|2024-03", many, {"f0": 2}, T0 + 60) == (True, many)
    assert store.try_add("q|t1|2024-03", many, {"f0": 2}, T0 + 60)[0] is True
    assert store.try_add("q|t1|2024-03", many, {"f0": 2}, T0 + 60) == (False, {f"f{i}": 2 for i in range(12)})
    store.add("q|t1|2024-03", {f"f{i}": -1 for i in range(12)})
    assert store.read("q|t1|2024-03") == many


def test_items_of_two_tenants_with_the_same_names_are_apart(store: CosmosStore) -> None:
    store.cache_put("t1", "k", b"one", T0 + 60)
    store.cache_put("t2", "k", b"two", T0 + 60)
    assert (store.cache_get("t1", "k", T0), store.cache_get("t2", "k", T0)) == (b"one", b"two")
    [cached] = [i for i in _raw(store, "cache") if i["tenant"] == "t1"]
    assert cached["ttl"] == 60 + 300
    settle = [CounterChange("q|t1|2024-03", {"used": 5}, expires_at=T0 + 60)]
    assert store.record_usage(contract._usage("r1"), settle)
    assert store.record_usage(contract._usage("r1", tenant_id="t2"))  # the same request id: another tenant's
    assert {(i["tenant"], i["part"][:2]) for i in _raw(store, "usage")} >= {("t1", "r|"), ("t1", "a|"), ("t2", "r|")}


def test_open_cosmos_store_creates_the_layout_once_and_opens_it_after(cosmos_emulator: CosmosServer) -> None:
    """What the function app and the local server call: ``create`` makes the database and its four containers
    (hierarchical keys, default TTL on counters and cache); without it, nothing is created (Terraform has)."""
    database = new_database()
    first = open_cosmos_store(cosmos_emulator.endpoint, key=KEY, database=database, create=True, clock=lambda: T0)
    first.put_tenant(Tenant("ten_a", "a", T0))
    containers = {c["id"]: c for c in first.database.list_containers()}
    assert set(containers) == {"counters", "usage", "documents", "cache"}
    for name, container in containers.items():
        assert container["partitionKey"]["paths"] == ["/tenant", "/part"]
        assert container["partitionKey"]["kind"] == "MultiHash"
        assert container.get("defaultTtl") == (-1 if name in ("counters", "cache") else None)
    again = open_cosmos_store(cosmos_emulator.endpoint, key=KEY, database=database)
    assert again.get_tenant("ten_a") == Tenant("ten_a", "a", T0)
    first.close()
    again.close()


def test_a_windows_shards_are_read_in_one_query_of_the_tenants_partitions(cosmos_emulator: CosmosServer) -> None:
    """What a refusal reads (every shard of a window) is one round trip, and the same as a point read of each."""
    from tests.azure.cosmos_server import CosmosTransport

    transport = CosmosTransport()
    store = cosmos_store(lambda: T0, transport=transport)
    shards = [f"rl|t1|5|{s}" for s in range(1, 9)]
    for s, item in enumerate(shards[:5], start=1):
        store.try_add(item, {"b|req#64": -s, "n": s}, {}, T0 + 60)
    store.try_add("rl|t2|5|1", {"b|req#64": -9}, {}, T0 + 60)  # another tenant's shard of the same name
    one_by_one = [store.read(item) for item in shards]
    assert store.read_many(shards) == one_by_one  # the first query also reads the container's partition ranges
    transport.trips.clear()
    assert store.read_many(shards) == one_by_one
    assert [t.kind for t in transport.trips] == ["query"]
    assert one_by_one[0] == {"b|req#64": -1, "n": 1}
    assert one_by_one[5:] == [{}, {}, {}]
