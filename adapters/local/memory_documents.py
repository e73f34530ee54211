"""MemoryDocuments: the DocumentStore role in memory (a mixin of MemoryStore).

Documents live in one sorted collection per (collection, owner): the same id under two owners is two
documents, and a call names the owner, so it never sees another owner's documents.
"""

from __future__ import annotations

import bisect
import json
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from core.domain import Document


def _copy(body: dict[str, Any]) -> dict[str, Any]:
    """A deep copy through JSON: what a document database would store (tuples become lists)."""
    copied: dict[str, Any] = json.loads(json.dumps(body))
    return copied


class _Collection:
    """One owner's documents of a collection by id, their ids kept sorted so a page is a bisect plus a slice."""

    __slots__ = ("docs", "ids")

    def __init__(self) -> None:
        self.docs: dict[str, Document] = {}
        self.ids: list[str] = []


class MemoryDocuments:
    """Versioned documents behind one lock; bodies are copied in and out, as JSON."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._doc_clock = clock
        self._doc_lock = threading.Lock()
        self._collections: dict[tuple[str, str], _Collection] = {}  # (collection, owner) -> its documents

    def put_document(
        self,
        collection: str,
        doc: Document,
        *,
        if_absent: bool = False,
        if_version: int | None = None,
    ) -> Document | None:
        body = _copy(doc.body)
        with self._doc_lock:
            coll = self._collections.setdefault((collection, doc.owner), _Collection())
            current = coll.docs.get(doc.id)
            if if_absent and current is not None:
                return None
            if if_version is not None and (current is None or current.version != if_version):
                return None
            stored = Document(doc.id, doc.owner, body, (current.version if current else 0) + 1, self._doc_clock())
            if current is None:
                bisect.insort(coll.ids, doc.id)
            coll.docs[doc.id] = stored
        return replace(stored, body=_copy(body))

    def get_document(self, collection: str, owner: str, doc_id: str) -> Document | None:
        with self._doc_lock:
            coll = self._collections.get((collection, owner))
            found = coll.docs.get(doc_id) if coll is not None else None
        return replace(found, body=_copy(found.body)) if found is not None else None

    def list_documents(self, collection: str, owner: str, after: str | None = None, limit: int = 100) -> list[Document]:
        """The owner's documents ordered by id, those with an id above ``after`` only."""
        with self._doc_lock:
            coll = self._collections.get((collection, owner))
            if coll is None or limit <= 0:
                return []
            start = bisect.bisect_right(coll.ids, after) if after is not None else 0
            found = [coll.docs[doc_id] for doc_id in coll.ids[start : start + limit]]
        return [replace(d, body=_copy(d.body)) for d in found]

    def delete_document(self, collection: str, owner: str, doc_id: str) -> bool:
        with self._doc_lock:
            coll = self._collections.get((collection, owner))
            if coll is None or coll.docs.pop(doc_id, None) is None:
                return False
            del coll.ids[bisect.bisect_left(coll.ids, doc_id)]
            if not coll.docs:
                del self._collections[(collection, owner)]
            return True
