"""FirestoreDocuments: the DocumentStore role. Each write is ONE commit of one document, under a precondition.

A document is ``tenants/{owner}/documents/{collection}/items/{id}`` (fields id, owner, body as JSON text,
version, updated_at): every path begins with its tenant, the same id under two owners is two documents, and no
call reaches another owner's. ``if_absent`` is a create (precondition: does not exist), version 1. ``if_version``
reads the document and writes it back under the precondition that its update time is the one read (whatever
changed it in between changed its version): two round trips, no lock. An unconditional write sets the fields and
increments ``version`` server-side, the commit's transform result being the new version: one round trip.
Listing is one query of the owner's collection, ``id > after`` ordered by ``id`` (a single-field index).
"""

from __future__ import annotations

from google.cloud.firestore_v1.types import common, write

from adapters.gcp.firestore_layout import document_path, documents_parent
from adapters.gcp.firestore_rpc import Fields, FirestoreRpc, Refused, Retry, ordered, where
from core.stores import StoredDocument

_VERSION_ROUNDS = 4  # an if_version write whose document was rewritten to the same version meanwhile: read again


def _stored(d: Fields) -> StoredDocument:
    return StoredDocument(d["id"], d["body"], int(d["version"]), float(d["updated_at"]))


class FirestoreDocuments:
    """The DocumentStore primitives (policy in core.stores). Mixin of FirestoreStore: ``self._rpc``."""

    _rpc: FirestoreRpc

    def _write_document(
        self, collection: str, owner: str, doc: StoredDocument, *, if_absent: bool, if_version: int | None
    ) -> int | None:
        path = document_path(collection, owner, doc.id)
        fields: Fields = {"id": doc.id, "owner": owner, "body": doc.body, "updated_at": float(doc.updated_at)}
        rpc = self._rpc
        if if_absent:
            return self._committed(rpc.put(path, {**fields, "version": 1}, exists=False), 1)
        if if_version is not None:
            for _ in range(_VERSION_ROUNDS):
                current, update_time = self._read_with_time(path)
                if current is None or int(current["version"]) != if_version:
                    return None
                pb = rpc.put(path, {**fields, "version": if_version + 1})
                pb.current_document = common.Precondition(update_time=update_time)
                if self._committed(pb, if_version + 1) is not None:
                    return if_version + 1
            return None
        results = rpc.retried(lambda _, __: rpc.commit([rpc.merge(path, fields, {"version": 1})]))
        return int(results[0].transform_results[0].integer_value)

    def _committed(self, pb: write.Write, version: int) -> int | None:
        """Commit one conditional write: ``version`` if applied, None if its precondition failed."""
        rpc = self._rpc

        def attempt(_: int, failed: Retry | None) -> int | None:
            try:
                rpc.commit([pb])
            except Refused:
                # A lost answer of an earlier attempt that applied fails its own precondition now; the version
                # written then is the one asked for, as if this attempt had written it.
                return version if failed is not None and failed.ambiguous else None
            return version

        return rpc.retried(attempt)

    def _read_with_time(self, path: str) -> tuple[Fields | None, object]:
        return self._rpc.retried(lambda _, __: self._rpc.get_with_time(path))

    def _read_document(self, collection: str, owner: str, doc_id: str) -> StoredDocument | None:
        path = document_path(collection, owner, doc_id)
        found, _ = self._rpc.retried(lambda _, __: self._rpc.get([path]))
        doc = found.get(path)
        return _stored(doc) if doc is not None else None

    def _list_documents(self, collection: str, owner: str, after: str | None, limit: int) -> list[StoredDocument]:
        structured: dict[str, object] = {**ordered("id"), "limit": limit}
        if after is not None:
            structured.update(where(("id", "GREATER_THAN", after)))
        parent = documents_parent(collection, owner)
        return [_stored(d) for d in self._rpc.retried(lambda _, __: self._rpc.query(parent, "items", structured))]

    def _delete_document(self, collection: str, owner: str, doc_id: str) -> bool:
        rpc = self._rpc
        pb = rpc.delete(document_path(collection, owner, doc_id), exists=True)
        return self._committed(pb, 1) is not None
