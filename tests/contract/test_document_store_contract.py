"""DocumentStore contract: versioned, conditional, paged documents of one owner on every Store implementation."""

from __future__ import annotations

import sqlite3
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
    got = store.get_document("files", "t1", "d1")
    assert got == written
    assert store.get_document("files", "t1", "missing") is None
    assert store.get_document("other", "t1", "d1") is None


def test_unconditional_put_replaces_and_bumps_the_version(store: Store) -> None:
    store.put_document("c", _doc("d", state="a"))
    second = store.put_document("c", _doc("d", state="b"))
    assert second is not None
    assert second.version == 2
    got = store.get_document("c", "t1", "d")
    assert got is not None
    assert (got.owner, got.body, got.version) == ("t1", {"state": "b"}, 2)


def test_if_absent_creates_only_once(store: Store) -> None:
    assert store.put_document("c", _doc("d", v=1), if_absent=True) is not None
    assert store.put_document("c", _doc("d", v=2), if_absent=True) is None
    got = store.get_document("c", "t1", "d")
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
    got = store.get_document("c", "t1", "d")
    assert got is not None
    assert (got.body, got.version) == ({"v": 2}, 2)
    assert store.get_document("c", "t1", "nope") is None


def test_stored_body_is_not_aliased(store: Store) -> None:
    body: dict[str, object] = {"items": [1]}
    store.put_document("c", Document("d", "t", body))
    body["items"] = [2]
    got = store.get_document("c", "t", "d")
    assert got is not None
    got.body["items"].append(3)
    again = store.get_document("c", "t", "d")
    assert again is not None
    assert again.body == {"items": [1]}


def test_list_orders_by_id_keeps_to_the_owner_and_pages_with_after(store: Store) -> None:
    for i in (5, 1, 9, 3, 7, 2):
        store.put_document("c", _doc(f"{i:04d}", "t1" if i % 2 else "t2", i=i))
    store.put_document("other", _doc("0000", "t1"))
    assert [d.id for d in store.list_documents("c", "t1")] == ["0001", "0003", "0005", "0007", "0009"]
    assert [d.id for d in store.list_documents("c", "t2")] == ["0002"]
    assert [d.id for d in store.list_documents("c", "t1", limit=2)] == ["0001", "0003"]
    assert [d.id for d in store.list_documents("c", "t1", after="0003", limit=2)] == ["0005", "0007"]
    assert [d.id for d in store.list_documents("c", "t1", after="0004")] == ["0005", "0007", "0009"]
    assert store.list_documents("c", "t1", after="0009") == []
    assert store.list_documents("c", "t1", limit=0) == []
    assert store.list_documents("empty", "t1") == []
    assert store.list_documents("c", "t3") == []
    assert store.list_documents("c", "t1")[0].body == {"i": 1}


def test_paging_through_many_documents_sees_each_once(store: Store) -> None:
    for i in range(1234):
        store.put_document("lines", _doc(f"{i:010d}", n=i), if_absent=True)
    seen: list[int] = []
    after = None
    while page := store.list_documents("lines", "t1", after=after, limit=100):
        seen.extend(d.body["n"] for d in page)
        after = page[-1].id
    assert seen == list(range(1234))


def test_delete(store: Store) -> None:
    store.put_document("c", _doc("a"))
    store.put_document("c", _doc("b"))
    assert store.delete_document("c", "t1", "a") is True
    assert store.delete_document("c", "t1", "a") is False
    assert store.delete_document("missing", "t1", "a") is False
    assert store.get_document("c", "t1", "a") is None
    assert [d.id for d in store.list_documents("c", "t1")] == ["b"]
    recreated = store.put_document("c", _doc("a"), if_absent=True)
    assert recreated is not None
    assert recreated.version == 1


# -- owners: every call names one, and no call reaches another owner's documents ---------------------------


def test_bad_arguments_are_refused_before_anything_is_written(store: Store) -> None:
    """Core's checks (``core.stores``), the same on every store: names are non-empty, conditions exclusive."""
    for collection, doc in (("", _doc("a")), ("files", _doc("")), ("files", _doc("a", owner=""))):
        with pytest.raises(ValueError, match="non-empty"):
            store.put_document(collection, doc)
    with pytest.raises(ValueError, match="exclude each other"):
        store.put_document("files", _doc("a"), if_absent=True, if_version=1)
    with pytest.raises(ValueError, match="owner"):
        store.list_documents("files", "")
    with pytest.raises(ValueError, match="id"):
        store.get_document("files", "t1", "")
    assert store.list_documents("files", "t1") == []
    assert store.list_documents("files", "t1", limit=0) == []


def test_the_same_id_under_two_owners_is_two_documents(store: Store) -> None:
    mine = store.put_document("files", _doc("file-1", "t1", who="t1"), if_absent=True)
    theirs = store.put_document("files", _doc("file-1", "t2", who="t2"), if_absent=True)  # not a conflict
    assert mine is not None
    assert theirs is not None
    assert (mine.version, theirs.version) == (1, 1)
    again = store.put_document("files", _doc("file-1", "t2", who="t2 again"))  # replaces t2's only
    assert again is not None
    assert again.version == 2
    assert store.put_document("files", _doc("file-1", "t1", v=9), if_version=2) is None  # t1's is at version 1
    got_mine, got_theirs = store.get_document("files", "t1", "file-1"), store.get_document("files", "t2", "file-1")
    assert got_mine is not None
    assert got_theirs is not None
    assert (got_mine.owner, got_mine.body, got_mine.version) == ("t1", {"who": "t1"}, 1)
    assert (got_theirs.owner, got_theirs.body, got_theirs.version) == ("t2", {"who": "t2 again"}, 2)
    assert store.delete_document("files", "t2", "file-1") is True
    assert store.get_document("files", "t1", "file-1") == got_mine  # deleting theirs left mine
    assert [d.owner for d in store.list_documents("files", "t1")] == ["t1"]


def test_another_owners_document_is_invisible(store: Store) -> None:
    store.put_document("batches", _doc("batch_a", "t1", state="running"))
    assert store.get_document("batches", "t2", "batch_a") is None
    assert store.list_documents("batches", "t2") == []
    assert store.delete_document("batches", "t2", "batch_a") is False
    assert store.put_document("batches", _doc("batch_a", "t2", state="hijack"), if_version=1) is None
    got = store.get_document("batches", "t1", "batch_a")  # untouched by all of the above
    assert got is not None
    assert (got.owner, got.body, got.version) == ("t1", {"state": "running"}, 1)
    assert [d.id for d in store.list_documents("batches", "t1")] == ["batch_a"]


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
    got = store.get_document("claims", "t1", "line-1")
    assert got is not None
    assert got.body == {"n": wins[0]}


def test_concurrent_if_version_updates_lose_nothing(store: Store) -> None:
    store.put_document("c", _doc("counter", n=0))

    def bump() -> None:
        for _ in range(25):
            while True:
                doc = store.get_document("c", "t1", "counter")
                assert doc is not None
                if store.put_document("c", _doc("counter", n=doc.body["n"] + 1), if_version=doc.version):
                    break

    threads = [threading.Thread(target=bump) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = store.get_document("c", "t1", "counter")
    assert final is not None
    assert final.body == {"n": 100}
    assert final.version == 101


def test_sqlite_documents_survive_reopening(tmp_path: Path) -> None:
    first = SQLiteStore(tmp_path / "s.db")
    first.put_document("batches", _doc("b1", state="in_progress"))
    first.close()
    second = SQLiteStore(tmp_path / "s.db")
    got = second.get_document("batches", "t1", "b1")
    assert got is not None
    assert got.body == {"state": "in_progress"}
    second.close()


def test_sqlite_documents_of_an_older_data_dir_are_kept_under_their_owner(tmp_path: Path) -> None:
    """A data directory from before owners were part of the key: its ``documents`` rows are moved over."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE documents (collection TEXT NOT NULL, id TEXT NOT NULL, owner TEXT NOT NULL,"
            " body TEXT NOT NULL, version INTEGER NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (collection, id))"
            " WITHOUT ROWID"
        )
        conn.execute("INSERT INTO documents VALUES ('files', 'file-1', 't1', '{\"n\":1}', 3, 5.0)")
    conn.close()
    store = SQLiteStore(path)
    assert store.get_document("files", "t1", "file-1") == Document("file-1", "t1", {"n": 1}, 3, 5.0)
    assert store.get_document("files", "t2", "file-1") is None
    store.close()
    reopened = SQLiteStore(path)  # moving over is done once: reopening changes nothing
    assert [d.version for d in reopened.list_documents("files", "t1")] == [3]
    reopened.close()
