"""CosmosStore's documents on the Cosmos DB emulator: the DocumentStore contract, items under the owner's
partition, and each write being one request on one item."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from adapters.azure.cosmos import CosmosStore
from core.domain import Document
from tests.azure.cosmos_server import CosmosServer, CosmosTransport, cosmos_store
from tests.azure.test_cosmos_store import call_contract

# The behavioural suite every DocumentStore passes, run here on Cosmos (see ``tests/contract``).
from tests.contract import test_document_store_contract as contract
from tests.contract.test_document_store_contract import T0

pytestmark = pytest.mark.azure
CONTRACT = [
    getattr(contract, name) for name in sorted(dir(contract)) if name.startswith("test_") and "sqlite" not in name
]


@pytest.fixture
def store(cosmos_emulator: CosmosServer) -> Iterator[CosmosStore]:
    s = cosmos_store(lambda: T0)
    yield s
    s.close()


@pytest.mark.parametrize("contract_test", CONTRACT, ids=lambda f: f.__name__.removeprefix("test_"))
def test_document_store_contract(contract_test: Callable[..., None], store: CosmosStore) -> None:
    call_contract(contract_test, {"store": store})


def test_a_document_lives_under_its_owner_and_each_write_is_one_request(cosmos_emulator: CosmosServer) -> None:
    transport = CosmosTransport()
    store = cosmos_store(lambda: T0, transport=transport)
    store.put_document("files", Document("warm/up", "t1", {}))  # the SDK reads the container's definition once
    transport.trips.clear()
    first = store.put_document("files", Document("f/1", "t1", {"big": 2**70, "none": None}), if_absent=True)
    assert first is not None
    assert store.get_document("files", "t1", "f/1") == first
    assert store.put_document("files", Document("f/1", "t1", {"v": 2})) is not None  # the version: a server incr
    written = store.put_document("files", Document("f/1", "t1", {"v": 3}), if_version=2)
    assert written is not None
    assert written.version == 3
    assert store.put_document("files", Document("f/1", "t1", {"v": 4}), if_version=2) is None
    assert store.delete_document("files", "t1", "f/1") is True
    assert [t.kind for t in transport.trips] == ["create", "read", "patch", "patch", "patch", "delete"]
    store.put_document("files", Document("f/1", "t1", {"big": 2**70}))
    raw = store.database.get_container_client("documents").read_item(
        "d|t1|files|f~2f1", partition_key=["t1", "d|files"]
    )
    assert raw["body"] == '{"big":1180591620717411303424}'  # JSON text: no number goes through a double
    store.close()
