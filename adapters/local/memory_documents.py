"""MemoryDocuments: the DocumentStore primitives in memory (a mixin of MemoryStore; policy in core.stores).

Documents live in one sorted collection per (collection, owner): the same id under two owners is two
documents, and a call names the owner, so it never sees another owner's documents.
"""

from __future__ import annotations

import bisect
import threading

from core.stores import StoredDocument


class _Collection:
    """One owner's documents of a collection by id, their ids kept sorted so a page is a bisect plus a slice."""

    __slots__ = ("docs", "ids")

    def __init__(self) -> None:
        self.docs: dict[str, StoredDocument] = {}
        self.ids: list[str] = []


class MemoryDocuments:
    """Versioned documents (their bodies as JSON text, so nothing is shared with callers) behind one lock."""

    def __init__(self) -> None:
        self._doc_lock = threading.Lock()
        self._collections: dict[tuple[str, str], _Collection] = {}  # (collection, owner) -> its documents

    def _write_document(
        self, collection: str, owner: str, doc: StoredDocument, *, if_absent: bool, if_version: int | None
    ) -> int | None:
        with self._doc_lock:
            coll = self._collections.setdefault((collection, owner), _Collection())
            current = coll.docs.get(doc.id)
            if (if_absent and current is not None) or (
                if_version is not None and (current is None or current.version != if_version)
            ):
                return None
            if current is None:
                bisect.insort(coll.ids, doc.id)
            version = (current.version if current else 0) + 1
            coll.docs[doc.id] = doc._replace(version=version)
            return version

    def _read_document(self, collection: str, owner: str, doc_id: str) -> StoredDocument | None:
        with self._doc_lock:
            coll = self._collections.get((collection, owner))
            return coll.docs.get(doc_id) if coll is not None else None

    def _list_documents(self, collection: str, owner: str, after: str | None, limit: int) -> list[StoredDocument]:
        with self._doc_lock:
            coll = self._collections.get((collection, owner))
            if coll is None:
                return []
            start = bisect.bisect_right(coll.ids, after) if after is not None else 0
            return [coll.docs[doc_id] for doc_id in coll.ids[start : start + limit]]

    def _delete_document(self, collection: str, owner: str, doc_id: str) -> bool:
        with self._doc_lock:
            coll = self._collections.get((collection, owner))
            if coll is None or coll.docs.pop(doc_id, None) is None:
                return False
            del coll.ids[bisect.bisect_left(coll.ids, doc_id)]
            if not coll.docs:
                del self._collections[(collection, owner)]
            return True
