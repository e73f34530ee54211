"""DynamoDBStore's documents on moto: the DocumentStore contract, keys that begin with the tenant, and an owner's
listing being a consistent Query of its own partition."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pynamodb.connection import Connection

from adapters.aws.dynamodb import DynamoDBStore
from core.domain import Document

# The behavioural suite every DocumentStore passes, run here on DynamoDB (see ``tests/contract``).
from tests.aws.test_dynamodb_store import (
    call_contract,
    dynamodb_store,
    dynamodb_url,
    record_calls,
    shared_connection,
)
from tests.contract import test_document_store_contract as contract
from tests.contract.test_document_store_contract import T0

pytestmark = pytest.mark.aws
__all__ = ["dynamodb_url", "shared_connection"]  # fixtures used here, defined with the store tests
CONTRACT = [
    getattr(contract, name)
    for name in sorted(dir(contract))
    if name.startswith("test_") and not name.startswith("test_sqlite_")
]


@pytest.fixture
def store(dynamodb_url: str, shared_connection: Connection) -> DynamoDBStore:
    return dynamodb_store(shared_connection, lambda: T0)


@pytest.mark.parametrize("contract_test", CONTRACT, ids=lambda f: f.__name__.removeprefix("test_"))
def test_document_store_contract(contract_test: Callable[..., None], store: DynamoDBStore) -> None:
    call_contract(contract_test, {"store": store})


def test_an_owners_listing_is_one_consistent_query_of_its_partition(dynamodb_url: str) -> None:
    store = dynamodb_store(dynamodb_url, lambda: T0)  # a client of its own: the test hooks into it
    for i in range(6):
        store.put_document("c", Document(f"d{i}", "t1" if i % 2 else "t2", {"i": i}))
    calls = record_calls(store)
    assert [d.id for d in store.list_documents("c", "t1", after="d1", limit=2)] == ["d3", "d5"]
    assert [d.id for d in store.list_documents("c", "t2")] == ["d0", "d2", "d4"]
    queries = [(op, p.get("IndexName"), p.get("ConsistentRead"), p.get("Limit")) for op, p in calls]
    assert queries == [("Query", None, True, 2), ("Query", None, True, 100)]
    assert [p["ExpressionAttributeValues"][":0"] for _, p in calls] == [{"S": "T#t1#D#c"}, {"S": "T#t2#D#c"}]


def test_a_write_returns_the_new_version_and_keeps_the_body_as_json(store: DynamoDBStore) -> None:
    first = store.put_document("c", Document("d", "t1", {"big": 2**70, "f": 0.1, "none": None}))
    assert first is not None
    assert first.version == 1
    got = store.get_document("c", "t1", "d")
    assert got == first
    assert got is not None
    assert got.body["big"] == 2**70  # JSON text: no number is rounded through DynamoDB's Number type
    raw = store._table.get("T#t1#D#c", "d")  # the partition key begins with the tenant
    assert raw is not None
    assert "gsi1pk" not in raw
    assert "gsi1sk" not in raw
    assert raw["body"] == {"S": '{"big":1180591620717411303424,"f":0.1,"none":null}'}


def test_every_write_keeps_the_document_in_its_owners_partition(store: DynamoDBStore) -> None:
    store.put_document("files", Document("f", "t1", {"v": 1}), if_absent=True)
    store.put_document("files", Document("f", "t1", {"v": 2}), if_version=1)
    store.put_document("files", Document("f", "t2", {"v": 1}))  # unconditional: an UpdateItem
    assert store._table.get("D#files", "f") is None  # nothing under the former, tenant-less key
    for owner, version in (("t1", 2), ("t2", 1)):
        raw = store._table.get(f"T#{owner}#D#files", "f")
        assert raw is not None
        assert (raw["owner"], raw["version"], "gsi1pk" in raw) == ({"S": owner}, {"N": str(version)}, False)
