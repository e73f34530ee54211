"""DynamoDBStore's usage on moto: a tenant's usage writes spread over partitions (issue 12), the usage API answering
as before, and what the former layout wrote still read after an upgrade."""

from __future__ import annotations

import dataclasses
import random
import zlib
from typing import Any

import pytest
from pynamodb.connection import Connection

from adapters.aws import dynamodb_usage
from adapters.aws.dynamodb import DynamoDBStore
from adapters.aws.dynamodb_models import DAILY_SHARDS, DailyItem, UsageItem, sortable
from adapters.aws.dynamodb_usage import AGGREGATE_SHARDS, usage_shard
from adapters.local.memory_store import MemoryStore
from core.domain import UsageRecord
from core.stores import utc_day
from tests.aws.test_dynamodb_store import dynamodb_store, dynamodb_url, record_calls, shared_connection
from tests.contract.test_store_contract import DAY, T0

pytestmark = pytest.mark.aws
__all__ = ["dynamodb_url", "shared_connection"]  # fixtures used here, defined with the store tests
TODAY = utc_day(T0)


@pytest.fixture
def store(dynamodb_url: str, shared_connection: Connection) -> DynamoDBStore:
    return dynamodb_store(shared_connection, lambda: T0)


def usage(
    request_id: str, tenant: str = "t1", at: float = T0, model: str = "m", cost: float = 0.5, **more: Any
) -> UsageRecord:
    return dataclasses.replace(
        UsageRecord(request_id, tenant, "k1", model, "/v1/generate", 3, 4, False, 1.0, 200, at, cost), **more
    )


def one_id_per_shard(prefix: str) -> list[str]:
    """Request ids whose shards are 0, 1, ... AGGREGATE_SHARDS - 1, in that order."""
    by_shard: dict[int, str] = {}
    n = 0
    while len(by_shard) < AGGREGATE_SHARDS:
        by_shard.setdefault(usage_shard(f"{prefix}{n}"), f"{prefix}{n}")
        n += 1
    return [by_shard[shard] for shard in range(AGGREGATE_SHARDS)]


def scanned(store: DynamoDBStore) -> list[dict[str, dict[str, str]]]:
    items: list[dict[str, dict[str, str]]] = store.connection.scan(store.table_name)["Items"]  # test-only
    return items


def test_a_tenants_usage_writes_spread_over_as_many_partitions_as_shards(store: DynamoDBStore) -> None:
    """Each shard's aggregate is an item in a partition of its own, with its gsi1 entry in a partition of its own;
    each shard's records have a gsi1 partition of their own; all of it begins with the tenant but the gsi1 keys."""
    ids = one_id_per_shard("r")
    for request_id in ids:
        assert store.record_usage(usage(request_id)) is True
    items = scanned(store)
    records = [item for item in items if item["sk"]["S"] == "USAGE"]
    aggregates = [item for item in items if "day" in item]
    assert len(records) == len(aggregates) == AGGREGATE_SHARDS
    assert {item["gsi1pk"]["S"] for item in records} == {f"U#t1#{TODAY}#{n}" for n in range(AGGREGATE_SHARDS)}
    assert {(item["pk"]["S"], item["sk"]["S"]) for item in aggregates} == {
        (f"T#t1#A#{n}", f"{TODAY}#m") for n in range(AGGREGATE_SHARDS)
    }
    assert {item["gsi1pk"]["S"] for item in aggregates} == {f"DAILY#{k}" for k in range(DAILY_SHARDS)}
    assert all(item["pk"]["S"].startswith("T#t1#") for item in items)

    [aggregate] = store.daily_usage("t1", TODAY, TODAY)
    assert (aggregate.requests, aggregate.prompt_tokens, aggregate.completion_tokens) == (32, 96, 128)
    assert aggregate.cost == 16.0
    assert store.daily_usage(None, TODAY, TODAY) == [aggregate]
    assert [r.request_id for r in store.list_usage("t1", T0, T0 + 1)] == sorted(ids)
    assert [r.request_id for r in store.list_usage(None, T0, T0 + 1, limit=5)] == sorted(ids)[:5]


def test_a_usage_record_is_still_one_transaction_its_aggregate_in_its_shards_partition(dynamodb_url: str) -> None:
    store = dynamodb_store(dynamodb_url, lambda: T0)  # a client of its own: the test hooks into it
    calls = record_calls(store)
    assert store.record_usage(usage("r1")) is True
    assert store.record_usage(usage("r1")) is False  # the same request id again: nothing written
    assert [op for op, _ in calls] == ["TransactWriteItems", "TransactWriteItems"]
    put, aggregate = (next(iter(item.values())) for item in calls[0][1]["TransactItems"])
    assert put["Item"]["gsi1pk"] == {"S": f"U#t1#{TODAY}#{usage_shard('r1')}"}
    assert aggregate["Key"] == {"pk": {"S": f"T#t1#A#{usage_shard('r1')}"}, "sk": {"S": f"{TODAY}#m"}}
    [row] = store.daily_usage("t1", TODAY, TODAY)
    assert row.requests == 1


def test_a_listing_reads_the_partitions_its_aggregates_name_and_no_other(dynamodb_url: str) -> None:
    store = dynamodb_store(dynamodb_url, lambda: T0)
    ids = one_id_per_shard("r")[3:5]
    for request_id in ids:
        store.record_usage(usage(request_id))
    store.record_usage(usage("other", tenant="t2"))
    calls = record_calls(store)

    assert [r.request_id for r in store.list_usage("t1", T0 - 60, T0 + 60)] == sorted(ids)
    partitions = [(p.get("IndexName"), p["ExpressionAttributeValues"][":0"]["S"]) for _, p in calls]
    table = sorted(pk for index, pk in partitions if index is None)  # the aggregates, both layouts
    assert table == sorted([f"T#t1#A#{n}" for n in range(AGGREGATE_SHARDS)] + ["T#t1"])
    index = sorted(pk for name, pk in partitions if name == "gsi1")  # no former U#t1#<day>: none was written
    assert index == [f"U#t1#{TODAY}#3", f"U#t1#{TODAY}#4"]

    calls.clear()
    assert {r.request_id for r in store.list_usage(None, T0 - 60, T0 + 60)} == {*ids, "other"}
    index = sorted(p["ExpressionAttributeValues"][":0"]["S"] for _, p in calls if p.get("IndexName") == "gsi1")
    daily = sorted(f"DAILY#{k}" for k in range(DAILY_SHARDS))
    assert index == sorted([*daily, f"U#t1#{TODAY}#3", f"U#t1#{TODAY}#4", f"U#t2#{TODAY}#{usage_shard('other')}"])


def write_former_layout(store: DynamoDBStore, r: UsageRecord) -> None:
    """What the store wrote before the aggregate shards had partitions of their own: the record with its gsi1 entry
    in ``U#<tenant>#<day>``, and ``ADD`` to one of 8 aggregate shards ``A#<day>#<model>#<n>`` in the tenant's
    partition, whose gsi1 entries were in ``DAILY#<0..3>``."""
    day = utc_day(r.created_at)
    fields = dataclasses.asdict(r)
    if r.ended == "completed":
        del fields["ended"]  # records written before ``ended`` existed have none
    record = UsageItem(
        pk=f"T#{r.tenant_id}#R#{r.request_id}",
        sk="USAGE",
        gsi1pk=f"U#{r.tenant_id}#{day}",
        gsi1sk=f"{sortable(r.created_at)}#{r.request_id}",
        **fields,
    )
    store._table.put(record.serialize())
    shard = zlib.crc32(r.request_id.encode()) % 8
    store._table.update(
        f"T#{r.tenant_id}",
        f"A#{day}#{r.model}#{shard}",
        [
            DailyItem.tenant_id.set(r.tenant_id),
            DailyItem.day.set(day),
            DailyItem.model.set(r.model),
            DailyItem.gsi1pk.set(f"DAILY#{zlib.crc32(r.tenant_id.encode()) % 4}"),
            DailyItem.gsi1sk.set(f"{day}#{r.tenant_id}#{r.model}#{shard}"),
            DailyItem.requests.add(1),
            DailyItem.prompt_tokens.add(r.prompt_tokens),
            DailyItem.completion_tokens.add(r.completion_tokens),
            DailyItem.cached_requests.add(int(r.cached)),
            DailyItem.cost.add(r.cost),
        ],
    )


def test_usage_written_in_the_former_layout_is_read_with_the_new_and_never_charged_twice(
    store: DynamoDBStore,
) -> None:
    """An upgrade in the middle of a day: records and aggregates of both layouts, summed and merged, answer as one
    store that wrote them all; a request recorded before the upgrade is not recorded again after it."""
    former = [
        usage("o1", at=T0),
        usage("o2", at=T0 + 2, cost=0.25, ended="timeout"),
        usage("o3", tenant="t2", at=T0 + 1, model="n"),
        usage("o4", at=T0 - DAY, cost=1.0),
        *(usage(f"o-many-{n}", at=T0 + 10 + n, model="n") for n in range(12)),
    ]
    new = [
        usage("n1", at=T0 + 1),
        usage("n2", at=T0 + 3, cached=True),
        usage("n3", tenant="t2", at=T0 + 4, model="n"),
        usage("n4", at=T0 + DAY),
        *(usage(f"n-many-{n}", at=T0 + 10.5 + n, model="n") for n in range(12)),
    ]
    memory = MemoryStore(clock=lambda: T0)  # every record through today's code: what the answers must be
    for r in former:
        write_former_layout(store, r)
        assert memory.record_usage(r) is True
    for r in new:
        assert store.record_usage(r) is True
        assert memory.record_usage(r) is True

    assert store.get_usage("t1", "o2") == memory.get_usage("t1", "o2")
    assert store.get_usage("t1", "o1") == usage("o1")  # no ``ended`` stored: "completed"
    assert store.record_usage(usage("o1")) is False  # its retry after the upgrade: nothing written, nothing added
    first, last = utc_day(T0 - DAY), utc_day(T0 + DAY)
    for tenant in ("t1", "t2", None):
        assert store.daily_usage(tenant, first, last) == memory.daily_usage(tenant, first, last)
        assert store.daily_usage(tenant, TODAY, TODAY) == memory.daily_usage(tenant, TODAY, TODAY)
        for start, end in ((T0 - DAY, T0 + 2 * DAY), (T0 + 1, T0 + 15), (T0 + DAY, T0 + 2 * DAY)):
            for limit in (1, 9, 1000):
                assert store.list_usage(tenant, start, end, limit) == memory.list_usage(tenant, start, end, limit)
    [today] = [a for a in store.daily_usage("t1", TODAY, TODAY) if a.model == "m"]
    assert (today.requests, today.cached_requests, today.cost) == (4, 1, 1.75)  # o1, o2, n1, n2


def test_listing_a_busy_tenants_partitions_a_share_at_a_time_answers_as_the_memory_store(
    store: DynamoDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Records in 4 shards, ~10 in a partition, and small shares (2 records a partition at least) make the merge
    read partitions several times, stopping at different records."""
    monkeypatch.setattr(dynamodb_usage, "MIN_SHARE", 2)
    rng = random.Random(12)
    memory = MemoryStore(clock=lambda: T0)
    ids = [f"r{n}" for n in range(1000) if usage_shard(f"r{n}") < 4][:120]
    for n, request_id in enumerate(ids):
        at = round(T0 - DAY / 2 + rng.random() * DAY, 3)
        r = usage(request_id, rng.choice(("t1", "t1", "t2")), at, rng.choice("mn"), cost=0.25 * (n % 4))
        assert store.record_usage(r) is True
        assert memory.record_usage(r) is True
    every = memory.list_usage(None, 0, T0 + DAY)
    middle = every[len(every) // 3].created_at
    for tenant in ("t1", "t2", None):
        days = (utc_day(T0 - DAY), utc_day(T0 + DAY))
        assert store.daily_usage(tenant, *days) == memory.daily_usage(tenant, *days)
        for start, end in ((0, T0 + DAY), (middle, T0 + DAY / 3)):
            for limit in (1, 5, 17, 1000):
                assert store.list_usage(tenant, start, end, limit) == memory.list_usage(tenant, start, end, limit)
