"""CosmosDocuments: the DocumentStore role. Each write is ONE conditional operation on one item.

A document is the item ``d|<owner>|<collection>|<id>`` in the logical partition ``[owner, "d|<collection>"]`` of the
``documents`` container (fields: doc_id, owner, collection, body as JSON text, version, updated_at): the same id
under two owners is two items, and no call reaches another owner's. ``if_absent`` is a ``create_item`` (409:
refused), version 1. ``if_version`` is a patch (``set`` body and updated_at, ``incr`` version) whose filter
predicate is ``c.version = <n>`` (412 or 404: refused): one round trip. An unconditional write is the same patch
without a predicate, or, when there is no document yet (404), a ``create_item`` (409: created meanwhile, patch
again). Listing is one query of the owner's collection (its full partition key, and owner and part named in the
WHERE clause), ``doc_id > after`` ordered by ``doc_id``, ``TOP limit``.
"""

from __future__ import annotations

from typing import Any

from azure.cosmos import exceptions as cex

from adapters.azure.cosmos_layout import document_key, documents_part, placed
from adapters.azure.cosmos_retry import (
    CONFLICT,
    NOT_FOUND,
    PRECONDITION_FAILED,
    CosmosCalls,
    Doc,
    delete_item,
    query,
    read_item,
)
from core.errors import StoreThrottled
from core.stores import StoredDocument


def _stored(d: Doc) -> StoredDocument:
    return StoredDocument(d["doc_id"], d["body"], int(d["version"]), float(d["updated_at"]))


class CosmosDocuments:
    """The DocumentStore primitives (policy in core.stores). Mixin of CosmosStore: ``self._documents``,
    ``self._calls``."""

    _documents: Any
    _calls: CosmosCalls

    def _write_document(
        self, collection: str, owner: str, doc: StoredDocument, *, if_absent: bool, if_version: int | None
    ) -> int | None:
        key = document_key(collection, owner, doc.id)
        item_id, partition_key = key
        fields = {"k": "d", "doc_id": doc.id, "owner": owner, "collection": collection}
        ops = [
            {"op": "set", "path": "/body", "value": doc.body},
            {"op": "set", "path": "/updated_at", "value": float(doc.updated_at)},
            {"op": "incr", "path": "/version", "value": 1},
        ]

        def create() -> int | None:
            body = placed(key, {**fields, "body": doc.body, "updated_at": float(doc.updated_at), "version": 1})
            try:
                self._calls.write(lambda: self._documents.create_item(body))
            except cex.CosmosHttpResponseError as exc:
                if exc.status_code == CONFLICT:
                    return None
                raise
            return 1

        def patch(condition: str | None) -> int | None:
            try:
                written: Doc = self._calls.write(
                    lambda: self._documents.patch_item(
                        item_id, partition_key=partition_key, patch_operations=ops, filter_predicate=condition
                    )
                )
            except cex.CosmosHttpResponseError as exc:
                if exc.status_code in (NOT_FOUND, PRECONDITION_FAILED):
                    return None
                raise
            return int(written["version"])

        if if_absent:
            return create()
        if if_version is not None:
            return patch(f"FROM c WHERE c.version = {int(if_version)}")
        for _ in range(self._calls.rounds):
            version = patch(None) or create()
            if version is not None:
                return version
        raise StoreThrottled("a document is contended; retry shortly")

    def _read_document(self, collection: str, owner: str, doc_id: str) -> StoredDocument | None:
        found = read_item(self._calls, self._documents, *document_key(collection, owner, doc_id))
        return _stored(found) if found is not None else None

    def _list_documents(self, collection: str, owner: str, after: str | None, limit: int) -> list[StoredDocument]:
        where = "c.tenant = @owner AND c.part = @part AND c.k = 'd'"
        params: dict[str, Any] = {"@owner": owner, "@part": documents_part(collection), "@n": limit}
        if after is not None:
            where, params["@after"] = f"{where} AND c.doc_id > @after", after
        sql = f"SELECT TOP @n * FROM c WHERE {where} ORDER BY c.doc_id"  # noqa: S608  # nosec B608
        found = query(self._calls, self._documents, sql, params, [owner, documents_part(collection)])
        return [_stored(d) for d in found]

    def _delete_document(self, collection: str, owner: str, doc_id: str) -> bool:
        return delete_item(self._calls, self._documents, *document_key(collection, owner, doc_id))
