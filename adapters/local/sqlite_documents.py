"""SQLiteDocuments: the DocumentStore role on SQLite (a mixin of SQLiteStore)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from typing import Any

from core.domain import Document

DOCUMENT_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS documents (collection TEXT NOT NULL, id TEXT NOT NULL, owner TEXT NOT NULL,"
    " body TEXT NOT NULL, version INTEGER NOT NULL, updated_at REAL NOT NULL, PRIMARY KEY (collection, id))"
    " WITHOUT ROWID",
    "CREATE INDEX IF NOT EXISTS documents_owner ON documents (collection, owner, id)",
)

_INSERT = (
    "INSERT INTO documents (collection, id, owner, body, version, updated_at) VALUES (?, ?, ?, ?, 1, ?)"
    " ON CONFLICT (collection, id) DO NOTHING"
)
_UPSERT = (
    "INSERT INTO documents (collection, id, owner, body, version, updated_at) VALUES (?, ?, ?, ?, 1, ?)"
    " ON CONFLICT (collection, id) DO UPDATE SET owner = excluded.owner, body = excluded.body,"
    " version = version + 1, updated_at = excluded.updated_at RETURNING version"
)
_REPLACE = (
    "UPDATE documents SET owner = ?, body = ?, version = version + 1, updated_at = ?"
    " WHERE collection = ? AND id = ? AND version = ?"
)


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
            if conn.execute(_INSERT, (collection, doc.id, doc.owner, body, now)).rowcount != 1:
                return None
            version = 1
        elif if_version is not None:
            params = (doc.owner, body, now, collection, doc.id, if_version)
            if conn.execute(_REPLACE, params).rowcount != 1:
                return None
            version = if_version + 1
        else:
            # fetchall steps the statement to its end, so no write lock outlives this call.
            version = int(conn.execute(_UPSERT, (collection, doc.id, doc.owner, body, now)).fetchall()[0][0])
        return Document(doc.id, doc.owner, json.loads(body), version, now)

    def get_document(self, collection: str, doc_id: str) -> Document | None:
        row = (
            self._conn()
            .execute("SELECT * FROM documents WHERE collection = ? AND id = ?", (collection, doc_id))
            .fetchone()
        )
        return _doc_from(row) if row is not None else None

    def list_documents(
        self, collection: str, owner: str | None = None, after: str | None = None, limit: int = 100
    ) -> list[Document]:
        """Documents ordered by id, those with an id above ``after`` only, of ``owner`` if given."""
        sql = "SELECT * FROM documents WHERE collection = ?"
        params: list[Any] = [collection]
        if owner is not None:
            sql += " AND owner = ?"
            params.append(owner)
        if after is not None:
            sql += " AND id > ?"
            params.append(after)
        sql += " ORDER BY id LIMIT ?"
        params.append(max(limit, 0))
        return [_doc_from(r) for r in self._conn().execute(sql, params).fetchall()]

    def delete_document(self, collection: str, doc_id: str) -> bool:
        cursor = self._conn().execute("DELETE FROM documents WHERE collection = ? AND id = ?", (collection, doc_id))
        return cursor.rowcount == 1
