"""FirestoreStore's documents on the Firestore emulator: the DocumentStore contract, paths that begin with the
tenant, and each write being one commit of one document."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from adapters.gcp.firestore import FirestoreStore
from core.domain import Document

# The behavioural suite every DocumentStore passes, run here on Firestore (see ``tests/contract``).
from tests.contract import test_document_store_contract as contract
from tests.contract.test_document_store_contract import T0
from tests.gcp.firestore_emulator import FirestoreEmulator
from tests.gcp.test_firestore_store import call_contract, firestore_store
from tests.gcp.test_firestore_trips import recorded

pytestmark = pytest.mark.gcp
CONTRACT = [
    getattr(contract, name)
    for name in sorted(dir(contract))
    if name.startswith("test_") and not name.startswith("test_sqlite_")
]


@pytest.fixture
def store(firestore_emulator_host: FirestoreEmulator) -> Iterator[FirestoreStore]:
    s = firestore_store(lambda: T0)
    yield s
    s.close()


@pytest.mark.parametrize("contract_test", CONTRACT, ids=lambda f: f.__name__.removeprefix("test_"))
def test_document_store_contract(contract_test: Callable[..., None], store: FirestoreStore) -> None:
    call_contract(contract_test, {"store": store})


def test_a_document_lives_under_its_owner_and_keeps_its_body_as_json(store: FirestoreStore) -> None:
    first = store.put_document("files", Document("f/1", "t1", {"big": 2**70, "f": 0.1, "none": None}))
    assert first is not None
    assert first.version == 1
    got = store.get_document("files", "t1", "f/1")
    assert got == first
    assert got is not None
    assert got.body["big"] == 2**70  # JSON text: no number goes through Firestore's int64
    raw = store.client.document("tenants/t1/documents/files/items/f%2F1").get()
    assert raw.exists
    assert raw.to_dict()["body"] == '{"big":1180591620717411303424,"f":0.1,"none":null}'


def test_each_write_is_one_commit_and_a_versioned_one_a_read_and_a_commit(store: FirestoreStore) -> None:
    calls = recorded(store)
    store.put_document("c", Document("d", "t1", {"v": 1}), if_absent=True)
    assert calls == ["Commit"]
    calls.clear()
    assert store.put_document("c", Document("d", "t1", {"v": 2})) is not None  # the version: a server transform
    assert calls == ["Commit"]
    calls.clear()
    written = store.put_document("c", Document("d", "t1", {"v": 3}), if_version=2)
    assert written is not None
    assert written.version == 3
    assert calls == ["BatchGetDocuments", "Commit"]
    calls.clear()
    assert store.delete_document("c", "t1", "d") is True
    assert store.delete_document("c", "t1", "d") is False
    assert calls == ["Commit", "Commit"]
