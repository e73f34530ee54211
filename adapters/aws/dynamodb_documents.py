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

from pynamodb.expressions.operand import Path

from adapters.aws.dynamodb_models import DocumentItem
from adapters.aws.dynamodb_table import ConditionFailed, DynamoDBTable, Item
from core.stores import StoredDocument


def _pk(collection: str, owner: str) -> str:
    """The partition of one owner's documents of a collection."""
    return f"T#{owner}#D#{collection}"


def _stored(item: Item) -> StoredDocument:
    d = DocumentItem.from_raw_data(item)
    return StoredDocument(d.id, d.body, int(d.version), float(d.updated_at))


class DynamoDBDocuments:
    """The DocumentStore primitives (policy in core.stores). Mixin of DynamoDBStore: ``self._table`` is the table."""

    _table: DynamoDBTable

    def _write_document(
        self, collection: str, owner: str, doc: StoredDocument, *, if_absent: bool, if_version: int | None
    ) -> int | None:
        pk = _pk(collection, owner)
        try:
            if if_absent or if_version is not None:
                # The new version is known: one PutItem of the whole document, conditioned.
                version = 1 if if_absent else int(if_version or 0) + 1
                condition = DocumentItem.pk.does_not_exist() if if_absent else DocumentItem.version == if_version
                item = DocumentItem(
                    pk=pk, sk=doc.id, id=doc.id, owner=owner, body=doc.body, version=version, updated_at=doc.updated_at
                )
                self._table.put(item.serialize(), condition)
                return version
            # Unconditional: the version is whatever was there plus one, so DynamoDB adds it.
            actions = [
                DocumentItem.id.set(doc.id),
                DocumentItem.owner.set(owner),
                DocumentItem.body.set(doc.body),
                DocumentItem.updated_at.set(doc.updated_at),
                DocumentItem.version.add(1),
            ]
            new = self._table.update(pk, doc.id, actions, return_values="UPDATED_NEW")
            return int(new["version"]["N"])
        except ConditionFailed:
            return None

    def _read_document(self, collection: str, owner: str, doc_id: str) -> StoredDocument | None:
        found = self._table.get(_pk(collection, owner), doc_id)
        return _stored(found) if found is not None else None

    def _list_documents(self, collection: str, owner: str, after: str | None, limit: int) -> list[StoredDocument]:
        span = Path(["sk"]) > after if after is not None else None
        return [_stored(item) for item in self._table.query(_pk(collection, owner), span, limit=limit)]

    def _delete_document(self, collection: str, owner: str, doc_id: str) -> bool:
        return self._table.delete(_pk(collection, owner), doc_id)
