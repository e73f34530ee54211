"""Every Store is core's policy (``core.stores.StorePolicy``) on a few primitives: a store lacking one fails by name.

A store with transactions (memory, SQLite) gets the counter and usage-write primitives from
``core.stores.TransactionalCounters`` and implements that mixin's smaller primitives instead, with the same rule."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from adapters.local.memory_store import MemoryStore
from adapters.local.sqlite_store import SQLiteStore
from core.stores import StorePolicy, TransactionalCounters

#: What a new store adapter (Firestore, Cosmos) implements; the rest of the Store port is core's.
PRIMITIVES = {
    "_try_add_counters",
    "_add_counter",
    "_read_counter",
    "_record_usage",
    "_load_usage",
    "_list_usage",
    "_daily_usage",
    "_save_cache_entry",
    "_load_cache_entry",
    "_write_document",
    "_read_document",
    "_list_documents",
    "_delete_document",
    "_load_tenants",
    "_load_keys",
    "_load_models",
    "_load_signing_keys",
}

#: Primitives core gives a default for (one call each), which a store may replace with one call for all.
OPTIONAL = {"_read_counters"}

#: What a store with transactions implements instead of the four primitives ``TransactionalCounters`` provides.
TRANSACTIONAL = {"_transaction", "_load_item", "_save_item", "_save_usage"}
PROVIDED = {"_try_add_counters", "_add_counter", "_read_counter", "_record_usage"}


def _stores() -> list[type]:
    stores: list[type] = [MemoryStore, SQLiteStore]
    try:
        from adapters.aws.dynamodb import DynamoDBStore
    except ImportError:  # pragma: no cover - the aws extra is not installed
        pass
    else:
        stores.append(DynamoDBStore)
    try:
        from adapters.gcp.firestore import FirestoreStore
    except ImportError:  # pragma: no cover - the gcp extra is not installed
        pass
    else:
        stores.append(FirestoreStore)
    try:
        from adapters.azure.cosmos import CosmosStore
    except ImportError:  # pragma: no cover - the azure extra is not installed
        pass
    else:
        stores.append(CosmosStore)
    return stores


def test_the_firestore_store_is_a_transactional_store_whose_calls_only_retry_the_mixins() -> None:
    """Firestore transactions may abort: its four provided primitives wrap the mixin's (retries, one read)."""
    firestore = pytest.importorskip("adapters.gcp.firestore")
    mro = firestore.FirestoreStore.__mro__
    assert mro.index(TransactionalCounters) < mro.index(StorePolicy)
    for name in PROVIDED:
        source = inspect.getsource(getattr(firestore.FirestoreStore, name))
        assert f"super().{name}" in source, f"{name} must call TransactionalCounters' own"


def test_the_primitives_are_the_abstract_methods_of_the_policy() -> None:
    assert StorePolicy.__abstractmethods__ == PRIMITIVES


@pytest.mark.parametrize("store_class", _stores(), ids=lambda c: c.__name__)
def test_every_store_implements_every_primitive_and_no_policy(store_class: type) -> None:
    assert issubclass(store_class, StorePolicy)
    assert not inspect.isabstract(store_class), store_class.__abstractmethods__
    policy = {
        name for name, value in vars(StorePolicy).items() if callable(value) and name not in PRIMITIVES | OPTIONAL
    }
    for cls in store_class.__mro__[: store_class.__mro__.index(StorePolicy)]:
        overridden = policy.intersection(vars(cls)) - {"__init__", "__init_subclass__"}
        assert not overridden, f"{cls.__name__} re-implements core's policy: {sorted(overridden)}"


@pytest.mark.parametrize("missing", sorted(PRIMITIVES))
def test_a_store_lacking_a_primitive_cannot_be_made_and_the_error_names_it(missing: str) -> None:
    def primitive(self: Any, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("never called")

    methods = dict.fromkeys(PRIMITIVES - {missing}, primitive)
    incomplete = type("IncompleteStore", (StorePolicy,), methods)
    with pytest.raises(TypeError, match=f"abstract method.*{missing}"):
        incomplete()


def test_the_transactional_mixin_provides_four_primitives_on_four_smaller_ones() -> None:
    assert TransactionalCounters.__abstractmethods__ == TRANSACTIONAL
    assert PROVIDED <= PRIMITIVES
    assert {name for name in PRIMITIVES if name in vars(TransactionalCounters)} == PROVIDED
    store: Any = type("TransactionalStore", (TransactionalCounters, StorePolicy), {})
    assert store.__abstractmethods__ == (PRIMITIVES - PROVIDED) | TRANSACTIONAL


@pytest.mark.parametrize("store_class", [MemoryStore, SQLiteStore], ids=lambda c: c.__name__)
def test_the_local_stores_are_transactional_stores(store_class: type) -> None:
    assert issubclass(store_class, TransactionalCounters)
    mro = store_class.__mro__
    assert mro.index(TransactionalCounters) < mro.index(StorePolicy)
    for cls in mro[: mro.index(TransactionalCounters)]:
        assert not PROVIDED.intersection(vars(cls)), f"{cls.__name__} re-implements the mixin's primitives"


@pytest.mark.parametrize("missing", sorted((PRIMITIVES - PROVIDED) | TRANSACTIONAL))
def test_a_transactional_store_lacking_a_primitive_cannot_be_made_and_the_error_names_it(missing: str) -> None:
    def primitive(self: Any, *args: Any, **kwargs: Any) -> None:
        raise AssertionError("never called")

    methods = dict.fromkeys(((PRIMITIVES - PROVIDED) | TRANSACTIONAL) - {missing}, primitive)
    incomplete = type("IncompleteStore", (TransactionalCounters, StorePolicy), methods)
    with pytest.raises(TypeError, match=f"abstract method.*{missing}"):
        incomplete()
