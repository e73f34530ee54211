"""SQLiteDocuments: the DocumentStore role on SQLite (a mixin of SQLiteStore).

A document's row is keyed by (owner, collection, id): the same id under two owners is two documents,
and every statement names the owner, so none reaches another owner's documents. Data directories made
before owners were part of the key keep their documents in ``documents``; the schema moves them into
``tenant_documents`` on start (a no-op once done).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from core.domain import Document

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


def _doc_from(row: sqlite3.Row) -> Document:
    return Document(row["id"], row["owner"], json.loads(row["body"]), row["version"], row["updated_at"])


class SQLiteDocuments:
    """One row per document; each conditional write is one statement, atomic on its row."""

    _clock: Callable[[], float]

    def _conn(self) -> sqlite3.Connection:
        raise NotImplementedError

    def put_document(
        self,
        collection: str,
        doc: Document,
        *,
        if_absent: bool = False,
        if_version: int | None = None,
    ) -> Document | None:
        body = json.dumps(doc.body, separators=(",", ":"), ensure_ascii=False)
        now = self._clock()
        conn = self._conn()
        if if_absent:
            if conn.execute(_INSERT, (doc.owner, collection, doc.id, body, now)).rowcount != 1:
                return None
            version = 1
        elif if_version is not None:
            params = (body, now, doc.owner, collection, doc.id, if_version)
            if conn.execute(_REPLACE, params).rowcount != 1:
                return None
            version = if_version + 1
        else:
            # fetchall steps the statement to its end, so no write lock outlives this call.
            version = int(conn.execute(_UPSERT, (doc.owner, collection, doc.id, body, now)).fetchall()[0][0])
        return Document(doc.id, doc.owner, json.loads(body), version, now)

    def get_document(self, collection: str, owner: str, doc_id: str) -> Document | None:
        row = self._conn().execute(_GET, (owner, collection, doc_id)).fetchone()
        return _doc_from(row) if row is not None else None

    def list_documents(self, collection: str, owner: str, after: str | None = None, limit: int = 100) -> list[Document]:
        """The owner's documents ordered by id, those with an id above ``after`` only."""
        sql = "SELECT * FROM tenant_documents WHERE owner = ? AND collection = ?"
        params: list[Any] = [owner, collection]
        if after is not None:
            sql += " AND id > ?"
            params.append(after)
        sql += " ORDER BY id LIMIT ?"
        params.append(max(limit, 0))
        return [_doc_from(r) for r in self._conn().execute(sql, params).fetchall()]

    def delete_document(self, collection: str, owner: str, doc_id: str) -> bool:
        cursor = self._conn().execute(_DELETE, (owner, collection, doc_id))
        return cursor.rowcount == 1
