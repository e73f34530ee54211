"""The gateway on DynamoDBStore (moto): how many DynamoDB calls one generation costs, and 503 on throttling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.aws.dynamodb import DynamoDBStore
from core.app import Gateway
from core.auth import api_keys
from core.clock import FixedClock
from core.domain import Limits, Tenant
from core.http import Request, Response
from tests.aws.test_dynamodb_store import dynamodb_store, dynamodb_url, record_calls
from tests.aws.test_dynamodb_throttling import throttle
from tests.fakes import GEN, FakeBackend, Resolver

pytestmark = pytest.mark.aws
__all__ = ["dynamodb_url"]  # fixtures used here, defined with the store tests
LIMITS = Limits(requests_per_minute=100, tokens_per_minute=100_000, token_quota=1_000_000)


@dataclass
class Setup:
    gateway: Gateway
    store: DynamoDBStore
    key: str
    tenant: Tenant

    def generate(self, prompt: str, **fields: Any) -> Response:
        body = json.dumps({"model": GEN.id, "prompt": prompt, "max_tokens": 16, **fields}).encode()
        headers = {"authorization": f"Bearer {self.key}"}
        return asyncio.run(self.gateway.handle(Request("POST", "/v1/generate", headers, {}, body)))


@pytest.fixture
def setup(dynamodb_url: str) -> Iterator[Setup]:
    clock = FixedClock()
    store = dynamodb_store(dynamodb_url, clock.now, max_attempts=5)
    store.put_model(GEN)
    tenant = Tenant("ten_a", "a", clock.now(), LIMITS)  # rpm + tpm + quota: both counter items
    store.put_tenant(tenant)
    key, record = api_keys.mint(tenant.id, "k", frozenset({"generate"}), clock.now(), limits=Limits(100, 50_000))
    store.put_key(record)
    backend = FakeBackend()
    gateway = Gateway(store, Resolver({"gen": backend}), clock=clock)
    yield Setup(gateway, store, key, tenant)
    store.close()


def test_a_cache_miss_generation_makes_two_limit_and_usage_calls_plus_the_cache(setup: Setup) -> None:
    """Measured with the key, tenant and model in the per-process caches (a warm container)."""
    assert setup.generate("warm the caches up", temperature=0).status == 200
    calls = record_calls(setup.store)
    response = setup.generate("a prompt nobody sent before", temperature=0)
    assert response.status == 200
    assert response.headers["x-ratelimit-remaining-requests"] == "98"
    ops = [op for op, _ in calls]
    assert ops == [
        "GetItem",  # the L2 response cache: a miss
        "UpdateItem",  # reserve: the tenant's counters item (minute and month slots), conditional
        "TransactWriteItems",  # usage record (create-only) + daily aggregate + settlement, all or nothing
        "PutItem",  # the L2 response cache: the new answer
    ]
    reserve, transaction = calls[1][1], calls[2][1]
    put, _aggregate, settle = (next(iter(item.values())) for item in transaction["TransactItems"])
    assert reserve["Key"]["pk"] == settle["Key"]["pk"] == {"S": "T#ten_a"}
    assert "ConditionExpression" in reserve
    assert "ConditionExpression" in settle  # the lease still holds its epoch; the slots are live
    assert "attribute_not_exists" in put["ConditionExpression"]
    assert len([op for op in ops if op not in ("GetItem", "PutItem")]) == 2


def test_a_sampled_generation_makes_exactly_two_calls(setup: Setup) -> None:
    """No response cache for a non-deterministic request: reserve, then the usage transaction that settles."""
    assert setup.generate("warm the caches up").status == 200
    calls = record_calls(setup.store)
    assert setup.generate("another prompt").status == 200
    assert [op for op, _ in calls] == ["UpdateItem", "TransactWriteItems"]


def test_every_tenant_item_has_a_partition_key_that_begins_with_the_tenant(setup: Setup) -> None:
    """Only what is read before the tenant is known (key index, signing keys) and the model catalog is global."""
    assert setup.generate("cache me", temperature=0).status == 200
    assert setup.generate("sampled").status == 200
    data = setup.store.connection.scan(setup.store.table_name)  # test-only: the store itself never scans
    pks = {item["pk"]["S"] for item in data["Items"]}
    global_items = {pk for pk in pks if pk.startswith("KEY#") or pk in ("MODELS", "SIGNING_KEYS")}
    assert {pk.split("#")[0] for pk in global_items} == {"KEY", "MODELS"}
    assert pks - global_items
    assert all(pk.startswith("T#ten_a") for pk in pks - global_items)
    kinds = {pk.removeprefix("T#ten_a").split("#")[1] if "#" in pk.removeprefix("T#ten_a") else "" for pk in pks}
    assert {"", "R", "A", "CACHE"} <= kinds  # tenant partition (tenant, keys, counters), records, aggregates, cache


def test_a_cache_hit_costs_the_request_rate_and_the_usage_record_only(setup: Setup) -> None:
    assert setup.generate("a question asked twice", temperature=0).status == 200
    calls = record_calls(setup.store)
    response = setup.generate("a question asked twice", temperature=0)
    assert json.loads(response.body)["cached"] is True
    # The L1 copy answers; no tokens, so no quota slot and nothing to settle.
    assert [op for op, _ in calls] == ["UpdateItem", "TransactWriteItems"]


def test_the_charge_is_settled_exactly_once(setup: Setup) -> None:
    response = setup.generate("one two three", max_tokens=16)
    assert response.status == 200
    [minute] = [i for i in _counter_items(setup.store) if i.startswith("rl|")]
    [month] = [i for i in _counter_items(setup.store) if i.startswith("q|")]
    usage = json.loads(response.body)["usage"]
    assert setup.store.read(minute)["tok"] == usage["total_tokens"]
    assert setup.store.read(month)["used"] == usage["total_tokens"]


def test_a_throttled_table_answers_503_and_charges_nothing(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    assert setup.generate("warm the caches up").status == 200
    before = {item: setup.store.read(item) for item in _counter_items(setup.store)}
    attempts = throttle(setup.store, monkeypatch, "UpdateItem")
    response = setup.generate("throttled")
    assert response.status == 503
    assert json.loads(response.body)["error"]["code"] == "store_unavailable"
    assert attempts == {"UpdateItem": 5}  # botocore's standard retries, then 503
    monkeypatch.undo()
    assert {item: setup.store.read(item) for item in before} == before


def _counter_items(store: DynamoDBStore) -> list[str]:
    """The counter items (slots of the tenant's counters item) core has written, by their core names."""
    raw = store._table.get("T#ten_a", "LIMITS") or {}
    slots = {name.removeprefix("x_") for name in raw if name.startswith("x_")}
    return sorted(f"{kind}|ten_a|{window}" for kind, window in (slot.split("|") for slot in slots))
