"""SQLiteDocuments: the DocumentStore primitives on SQLite (a mixin of SQLiteStore; policy in core.stores).

A document's row is keyed by (owner, collection, id): the same id under two owners is two documents,
and every statement names the owner, so none reaches another owner's documents. Data directories made
before owners were part of the key keep their documents in ``documents``; the schema moves them into
``tenant_documents`` on start (a no-op once done).
"""

from __future__ import annotations

import sqlite3
from typing import Any

from core.stores import StoredDocument

DOCUMENT_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS tenant_documents (owner TEXT NOT NULL, collection TEXT NOT NULL, id TEXT NOT NULL,"
    " body TEXT NOT NULL, version INTEGER NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (owner, collection, id))"
    " WITHOUT ROWID",
    # The table of older data directories (empty here when there was none), moved over and dropped.
    "CREATE TABLE IF NOT EXISTS documents (collection TEXT NOT NULL, id TEXT NOT NULL, owner TEXT NOT NULL,"
    " body TEXT NOT NULL, version INTEGER NOT NULL, updated_at REAL NOT NULL)",
    "INSERT OR IGNORE INTO tenant_documents (owner, collection, id, body, version, updated_at)"
    " SELECT owner, collection, id, body, version, updated_at FROM documents",
    "DROP TABLE documents",
)

_INSERT = (
    "INSERT INTO tenant_documents (owner, collection, id, body, version, updated_at) VALUES (?, ?, ?, ?, 1, ?)"
    " ON CONFLICT (owner, collection, id) DO NOTHING"
)
_UPSERT = (
    "INSERT INTO tenant_documents (owner, collection, id, body, version, updated_at) VALUES (?, ?, ?, ?, 1, ?)"
    " ON CONFLICT (owner, collection, id) DO UPDATE SET body = excluded.body,"
    " version = version + 1, updated_at = excluded.updated_at RETURNING version"
)
_REPLACE = (
    "UPDATE tenant_documents SET body = ?, version = version + 1, updated_at = ?"
    " WHERE owner = ? AND collection = ? AND id = ? AND version = ?"
)
_GET = "SELECT * FROM tenant_documents WHERE owner = ? AND collection = ? AND id = ?"
_DELETE = "DELETE FROM tenant_documents WHERE owner = ? AND collection = ? AND id = ?"


def _stored(row: sqlite3.Row) -> StoredDocument:
    return StoredDocument(row["id"], row["body"], row["version"], row["updated_at"])


class SQLiteDocuments:
    """The DocumentStore primitives: one row per document, each conditional write one statement on its row."""

    def _conn(self) -> sqlite3.Connection:
        raise NotImplementedError

    def _write_document(
        self, collection: str, owner: str, doc: StoredDocument, *, if_absent: bool, if_version: int | None
    ) -> int | None:
        conn = self._conn()
        if if_absent:
            inserted = conn.execute(_INSERT, (owner, collection, doc.id, doc.body, doc.updated_at)).rowcount
            return 1 if inserted == 1 else None
        if if_version is not None:
            params = (doc.body, doc.updated_at, owner, collection, doc.id, if_version)
            return if_version + 1 if conn.execute(_REPLACE, params).rowcount == 1 else None
        # fetchall steps the statement to its end, so no write lock outlives this call.
        return int(conn.execute(_UPSERT, (owner, collection, doc.id, doc.body, doc.updated_at)).fetchall()[0][0])

    def _read_document(self, collection: str, owner: str, doc_id: str) -> StoredDocument | None:
        row = self._conn().execute(_GET, (owner, collection, doc_id)).fetchone()
        return _stored(row) if row is not None else None

    def _list_documents(self, collection: str, owner: str, after: str | None, limit: int) -> list[StoredDocument]:
        sql = "SELECT * FROM tenant_documents WHERE owner = ? AND collection = ?"
        params: list[Any] = [owner, collection]
        if after is not None:
            sql += " AND id > ?"
            params.append(after)
        sql += " ORDER BY id LIMIT ?"
        params.append(limit)
        return [_stored(r) for r in self._conn().execute(sql, params).fetchall()]

    def _delete_document(self, collection: str, owner: str, doc_id: str) -> bool:
        return self._conn().execute(_DELETE, (owner, collection, doc_id)).rowcount == 1
