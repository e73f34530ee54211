"""DynamoDBDocuments: the DocumentStore role. Each write is one conditional UpdateItem on one document.

A document is ``pk = T#<owner>#D#<collection>``, ``sk = <doc id>``: every key begins with its tenant, the
same id under two owners is two items, and no call reaches another owner's document. Listing one owner's
documents in id order is a strongly consistent Query of that partition (``sk > after``); documents use no
GSI. The body is kept as JSON text and ``version`` as a number. ``if_absent`` is a PutItem (version 1)
conditioned on ``attribute_not_exists(pk)``, ``if_version`` a PutItem (version v + 1) conditioned on
``version = :v``; an unconditional write is an UpdateItem that ``ADD``s 1 to the version (whatever it was).

Documents written under the former key (``pk = D#<collection>``, with gsi1 ``D#<collection>#<owner>``)
are not read any more.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from pynamodb.expressions.operand import Path

from adapters.aws.dynamodb_models import DocumentItem
from adapters.aws.dynamodb_table import ConditionFailed, DynamoDBTable, Item
from core.domain import Document


def _pk(collection: str, owner: str) -> str:
    """The partition of one owner's documents of a collection."""
    return f"T#{owner}#D#{collection}"


def _document_from(item: Item) -> Document:
    d = DocumentItem.from_raw_data(item)
    body: dict[str, Any] = json.loads(d.body)
    return Document(d.id, d.owner, body, int(d.version), float(d.updated_at))


class DynamoDBDocuments:
    """Mixin of DynamoDBStore: ``self._table`` is the table, ``self._clock`` gives "now"."""

    _table: DynamoDBTable
    _clock: Callable[[], float]

    def put_document(
        self,
        collection: str,
        doc: Document,
        *,
        if_absent: bool = False,
        if_version: int | None = None,
    ) -> Document | None:
        """Write ``doc`` (its version is ignored) and return it with its new version, or None if a
        condition failed."""
        body = json.dumps(doc.body, separators=(",", ":"), ensure_ascii=False)
        now = self._clock()
        pk = _pk(collection, doc.owner)
        try:
            if if_absent or if_version is not None:
                # The new version is known: one PutItem of the whole document, conditioned.
                version = 1 if if_absent else int(if_version or 0) + 1
                condition = DocumentItem.pk.does_not_exist() if if_absent else DocumentItem.version == if_version
                item = DocumentItem(
                    pk=pk,
                    sk=doc.id,
                    id=doc.id,
                    owner=doc.owner,
                    body=body,
                    version=version,
                    updated_at=now,
                )
                self._table.put(item.serialize(), condition)
            else:
                # Unconditional: the version is whatever was there plus one, so DynamoDB adds it.
                actions = [
                    DocumentItem.id.set(doc.id),
                    DocumentItem.owner.set(doc.owner),
                    DocumentItem.body.set(body),
                    DocumentItem.updated_at.set(now),
                    DocumentItem.version.add(1),
                ]
                new = self._table.update(pk, doc.id, actions, return_values="UPDATED_NEW")
                version = int(new["version"]["N"])
        except ConditionFailed:
            return None
        return Document(doc.id, doc.owner, json.loads(body), version, now)

    def get_document(self, collection: str, owner: str, doc_id: str) -> Document | None:
        found = self._table.get(_pk(collection, owner), doc_id)
        return _document_from(found) if found is not None else None

    def list_documents(self, collection: str, owner: str, after: str | None = None, limit: int = 100) -> list[Document]:
        """The owner's documents ordered by id, those with an id above ``after`` only."""
        if limit <= 0:
            return []
        span = Path(["sk"]) > after if after is not None else None
        return [_document_from(item) for item in self._table.query(_pk(collection, owner), span, limit=limit)]

    def delete_document(self, collection: str, owner: str, doc_id: str) -> bool:
        return self._table.delete(_pk(collection, owner), doc_id)
