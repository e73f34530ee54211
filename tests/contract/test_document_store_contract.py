"""DocumentStore contract: versioned, conditional, paged documents on every Store implementation."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters.local.memory_store import MemoryStore
from adapters.local.sqlite_store import SQLiteStore
from core.domain import Document
from core.ports import Store

T0 = 1_700_000_000.0


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    now = [T0]
    if request.param == "memory":
        s: MemoryStore | SQLiteStore = MemoryStore(clock=lambda: now[0])
    else:
        s = SQLiteStore(tmp_path / "docs.db", clock=lambda: now[0])
    yield s
    s.close()


def _doc(doc_id: str, owner: str = "t1", **body: object) -> Document:
    return Document(doc_id, owner, dict(body))


def test_put_get_round_trip_versions_from_one(store: Store) -> None:
    body = {"n": 1, "f": 0.5, "s": "é ✓", "none": None, "list": [1, "a", {"x": [True]}], "nested": {"a": {"b": 2}}}
    written = store.put_document("files", Document("d1", "t1", body, version=42))
    assert written is not None
    assert (written.id, written.owner, written.body, written.version) == ("d1", "t1", body, 1)
    assert written.updated_at == T0
    got = store.get_document("files", "d1")
    assert got == written
    assert store.get_document("files", "missing") is None
    assert store.get_document("other", "d1") is None


def test_unconditional_put_replaces_and_bumps_the_version(store: Store) -> None:
    store.put_document("c", _doc("d", state="a"))
    second = store.put_document("c", _doc("d", "t2", state="b"))
    assert second is not None
    assert second.version == 2
    got = store.get_document("c", "d")
    assert got is not None
    assert (got.owner, got.body, got.version) == ("t2", {"state": "b"}, 2)


def test_if_absent_creates_only_once(store: Store) -> None:
    assert store.put_document("c", _doc("d", v=1), if_absent=True) is not None
    assert store.put_document("c", _doc("d", v=2), if_absent=True) is None
    got = store.get_document("c", "d")
    assert got is not None
    assert (got.body, got.version) == ({"v": 1}, 1)


def test_if_version_replaces_only_the_version_read(store: Store) -> None:
    first = store.put_document("c", _doc("d", v=1))
    assert first is not None
    updated = store.put_document("c", _doc("d", v=2), if_version=first.version)
    assert updated is not None
    assert updated.version == 2
    assert store.put_document("c", _doc("d", v=3), if_version=first.version) is None  # stale
    assert store.put_document("c", _doc("nope", v=3), if_version=1) is None  # absent
    got = store.get_document("c", "d")
    assert got is not None
    assert (got.body, got.version) == ({"v": 2}, 2)
    assert store.get_document("c", "nope") is None


def test_stored_body_is_not_aliased(store: Store) -> None:
    body: dict[str, object] = {"items": [1]}
    store.put_document("c", Document("d", "t", body))
    body["items"] = [2]
    got = store.get_document("c", "d")
    assert got is not None
    got.body["items"].append(3)
    again = store.get_document("c", "d")
    assert again is not None
    assert again.body == {"items": [1]}


def test_list_orders_by_id_filters_owner_and_pages_with_after(store: Store) -> None:
    for i in (5, 1, 9, 3, 7, 2):
        store.put_document("c", _doc(f"{i:04d}", "t1" if i % 2 else "t2", i=i))
    store.put_document("other", _doc("0000", "t1"))
    assert [d.id for d in store.list_documents("c")] == ["0001", "0002", "0003", "0005", "0007", "0009"]
    assert [d.id for d in store.list_documents("c", owner="t2")] == ["0002"]
    assert [d.id for d in store.list_documents("c", owner="t1", limit=2)] == ["0001", "0003"]
    assert [d.id for d in store.list_documents("c", owner="t1", after="0003", limit=2)] == ["0005", "0007"]
    assert [d.id for d in store.list_documents("c", after="0004")] == ["0005", "0007", "0009"]
    assert store.list_documents("c", after="0009") == []
    assert store.list_documents("c", limit=0) == []
    assert store.list_documents("empty") == []
    assert store.list_documents("c")[0].body == {"i": 1}


def test_paging_through_many_documents_sees_each_once(store: Store) -> None:
    for i in range(1234):
        store.put_document("lines", _doc(f"{i:010d}", n=i), if_absent=True)
    seen: list[int] = []
    after = None
    while page := store.list_documents("lines", owner="t1", after=after, limit=100):
        seen.extend(d.body["n"] for d in page)
        after = page[-1].id
    assert seen == list(range(1234))


def test_delete(store: Store) -> None:
    store.put_document("c", _doc("a"))
    store.put_document("c", _doc("b"))
    assert store.delete_document("c", "a") is True
    assert store.delete_document("c", "a") is False
    assert store.delete_document("missing", "a") is False
    assert store.get_document("c", "a") is None
    assert [d.id for d in store.list_documents("c")] == ["b"]
    recreated = store.put_document("c", _doc("a"), if_absent=True)
    assert recreated is not None
    assert recreated.version == 1


def test_concurrent_if_absent_has_exactly_one_winner(store: Store) -> None:
    wins: list[int] = []
    barrier = threading.Barrier(8)

    def claim(n: int) -> None:
        barrier.wait()
        if store.put_document("claims", _doc("line-1", n=n), if_absent=True) is not None:
            wins.append(n)

    threads = [threading.Thread(target=claim, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1
    got = store.get_document("claims", "line-1")
    assert got is not None
    assert got.body == {"n": wins[0]}


def test_concurrent_if_version_updates_lose_nothing(store: Store) -> None:
    store.put_document("c", _doc("counter", n=0))

    def bump() -> None:
        for _ in range(25):
            while True:
                doc = store.get_document("c", "counter")
                assert doc is not None
                if store.put_document("c", _doc("counter", n=doc.body["n"] + 1), if_version=doc.version):
                    break

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.get_document("c", "counter")
    assert final is not None
    assert final.body == {"n": 100}
    assert final.version == 101


def test_sqlite_documents_survive_reopening(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "s.db")
    first.put_document("batches", _doc("b1", state="in_progress"))
    first.close()
    second = SQLiteStore(tmp_path / "s.db")
    got = second.get_document("batches", "b1")
    assert got is not None
    assert got.body == {"state": "in_progress"}
    second.close()
