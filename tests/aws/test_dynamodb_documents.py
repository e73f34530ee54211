"""DynamoDBStore's documents on moto: the DocumentStore contract, and the owner listing being a GSI query."""

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


def test_listing_is_one_query_per_page_and_owner_listing_reads_the_index(dynamodb_url: str) -> None:
    store = dynamodb_store(dynamodb_url, lambda: T0)  # a client of its own: the test hooks into it
    for i in range(5):
        store.put_document("c", Document(f"d{i}", "t1" if i % 2 else "t2", {"i": i}))
    calls = record_calls(store)
    assert [d.id for d in store.list_documents("c", after="d0", limit=2)] == ["d1", "d2"]
    assert [d.id for d in store.list_documents("c", owner="t1")] == ["d1", "d3"]
    assert [(op, p.get("IndexName"), p.get("Limit")) for op, p in calls] == [
        ("Query", None, 2),
        ("Query", "gsi1", 100),
    ]


def test_a_write_returns_the_new_version_and_keeps_the_body_as_json(store: DynamoDBStore) -> None:
    first = store.put_document("c", Document("d", "t1", {"big": 2**70, "f": 0.1, "none": None}))
    assert first is not None
    assert first.version == 1
    got = store.get_document("c", "d")
    assert got == first
    assert got is not None
    assert got.body["big"] == 2**70  # JSON text: no number is rounded through DynamoDB's Number type
    raw = store._table.get("D#c", "d")
    assert raw is not None
    assert raw["gsi1pk"] == {"S": "D#c#t1"}
    assert raw["body"] == {"S": '{"big":1180591620717411303424,"f":0.1,"none":null}'}
