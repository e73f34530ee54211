"""SQLiteStore: the embedded default Store, safe with several worker processes and threads (policy in core.stores)."""

from __future__ import annotations

import dataclasses
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adapters.local.sqlite_documents import DOCUMENT_SCHEMA, SQLiteDocuments
from core.domain import (
    ApiKeyRecord,
    Limits,
    ModelSpec,
    SigningKey,
    Tenant,
    UsageAggregate,
    UsageRecord,
)
from core.stores import CacheEntry, Loaded, StorePolicy, TransactionalCounters

_BUSY_TIMEOUT_S = 30.0
_PURGE_EVERY = 256

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tenants (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at REAL NOT NULL, limits TEXT NOT NULL, suspended_at REAL);
CREATE TABLE IF NOT EXISTS api_keys (
    id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, name TEXT NOT NULL, key_hash TEXT NOT NULL,
    scopes TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL, revoked_at REAL,
    limits TEXT NOT NULL, prefix TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant_id);
CREATE TABLE IF NOT EXISTS counters (
    item TEXT NOT NULL, field TEXT NOT NULL, value INTEGER NOT NULL, expires_at REAL,
    PRIMARY KEY (item, field)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS counters_expiry ON counters (expires_at);
CREATE TABLE IF NOT EXISTS usage (
    request_id TEXT PRIMARY KEY, tenant_id TEXT NOT NULL, key_id TEXT NOT NULL, model TEXT NOT NULL,
    endpoint TEXT NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cached INTEGER NOT NULL, latency_ms REAL NOT NULL, status INTEGER NOT NULL,
    created_at REAL NOT NULL, cost REAL NOT NULL, ended TEXT NOT NULL DEFAULT 'completed');
CREATE INDEX IF NOT EXISTS usage_created ON usage (created_at);
CREATE INDEX IF NOT EXISTS usage_tenant_created ON usage (tenant_id, created_at);
CREATE TABLE IF NOT EXISTS usage_daily (
    tenant_id TEXT NOT NULL, day TEXT NOT NULL, model TEXT NOT NULL, requests INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL,
    cached_requests INTEGER NOT NULL, cost REAL NOT NULL,
    PRIMARY KEY (tenant_id, day, model));
CREATE INDEX IF NOT EXISTS usage_daily_day ON usage_daily (day);
CREATE TABLE IF NOT EXISTS cache (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires_at REAL NOT NULL);
CREATE INDEX IF NOT EXISTS cache_expiry ON cache (expires_at);
CREATE TABLE IF NOT EXISTS models (id TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid TEXT PRIMARY KEY, private_pem BLOB NOT NULL, public_pem BLOB NOT NULL,
    created_at REAL NOT NULL, retired_at REAL);
"""
_ADDED_COLUMNS = (
    ("tenants", "suspended_at", "REAL"),
    ("usage", "ended", "TEXT NOT NULL DEFAULT 'completed'"),
)
_SCHEMA_STATEMENTS = (*(s.strip() for s in _SCHEMA.split(";") if s.strip()), *DOCUMENT_SCHEMA)

_PUT_KEY = (
    "INSERT OR REPLACE INTO api_keys (id, tenant_id, name, key_hash, scopes, created_at, expires_at,"
    " revoked_at, limits, prefix) VALUES (:id, :tenant_id, :name, :key_hash, :scopes, :created_at,"
    " :expires_at, :revoked_at, :limits, :prefix)"
)
_PUT_USAGE = (
    "INSERT OR IGNORE INTO usage (request_id, tenant_id, key_id, model, endpoint, prompt_tokens,"
    " completion_tokens, cached, latency_ms, status, created_at, cost, ended) VALUES (:request_id,"
    " :tenant_id, :key_id, :model, :endpoint, :prompt_tokens, :completion_tokens, :cached, :latency_ms,"
    " :status, :created_at, :cost, :ended)"
)
_ADD_DAILY = (
    "INSERT INTO usage_daily (tenant_id, day, model, requests, prompt_tokens, completion_tokens,"
    " cached_requests, cost) VALUES (?, ?, ?, 1, ?, ?, ?, ?) ON CONFLICT (tenant_id, day, model)"
    " DO UPDATE SET requests = requests + 1, prompt_tokens = prompt_tokens + excluded.prompt_tokens,"
    " completion_tokens = completion_tokens + excluded.completion_tokens,"
    " cached_requests = cached_requests + excluded.cached_requests, cost = cost + excluded.cost"
)
_MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelSpec))


def _limits_json(limits: Limits) -> str:
    return json.dumps(dataclasses.asdict(limits), sort_keys=True)


def _tenant_from(row: sqlite3.Row) -> Tenant:
    return Tenant(**{**dict(row), "limits": Limits(**json.loads(row["limits"]))})


def _key_from(row: sqlite3.Row) -> ApiKeyRecord:
    scopes = frozenset(json.loads(row["scopes"]))
    return ApiKeyRecord(**{**dict(row), "scopes": scopes, "limits": Limits(**json.loads(row["limits"]))})


def _usage_row(r: UsageRecord) -> dict[str, Any]:
    return {
        "request_id": r.request_id,
        "tenant_id": r.tenant_id,
        "key_id": r.key_id,
        "model": r.model,
        "endpoint": r.endpoint,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "cached": int(r.cached),
        "latency_ms": r.latency_ms,
        "status": r.status,
        "created_at": r.created_at,
        "cost": r.cost,
        "ended": r.ended,
    }


def _usage_from(row: sqlite3.Row) -> UsageRecord:
    return UsageRecord(**{**dict(row), "cached": bool(row["cached"])})


def _model_from(row: sqlite3.Row) -> ModelSpec:
    data: dict[str, Any] = {k: v for k, v in json.loads(row["spec"]).items() if k in _MODEL_FIELDS}
    data["fallbacks"] = tuple(data.get("fallbacks", ()))
    data["aliases"] = tuple(data.get("aliases", ()))  # JSON has lists; entries written before aliases have none
    return ModelSpec(**data)


def _cache_row_key(tenant_id: str, key: str) -> str:
    """Tenant ids never contain NUL, so no two (tenant, key) pairs share a row."""
    return f"{tenant_id}\x00{key}"


class SQLiteStore(SQLiteDocuments, TransactionalCounters[sqlite3.Connection], StorePolicy):
    """Every Store role in one SQLite file (WAL), one connection per thread and process.

    Each read-modify-write runs in a ``BEGIN IMMEDIATE`` transaction, which serialises writers
    across threads and processes. Counter items expire when ``expires_at < now`` (``now`` from
    ``clock``); cache entries when ``expires_at <= now``. Expired rows are purged now and then.
    """

    def __init__(self, path: str | Path, clock: Callable[[], float] = time.time) -> None:
        self._path = str(path)
        self._clock = clock
        self._local = threading.local()
        self._all: list[tuple[int, sqlite3.Connection]] = []
        self._all_lock = threading.Lock()
        self._writes = 0
        self._init_schema()

    # -- connections and transactions ---------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        pid = os.getpid()
        if conn is not None and self._local.pid == pid:
            return conn
        # First use in this thread, or in a forked child (never reuse a parent's connection).
        conn = sqlite3.connect(self._path, timeout=_BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        self._set_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.row_factory = sqlite3.Row
        self._local.conn, self._local.pid = conn, pid
        with self._all_lock:
            self._all.append((pid, conn))
        return conn

    @staticmethod
    def _set_wal(conn: sqlite3.Connection) -> None:
        # Switching to WAL takes an exclusive lock and can report "locked" without waiting for the
        # busy timeout when another process is doing the same; retry for a while.
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        while True:
            try:
                conn.execute("PRAGMA journal_mode = WAL").fetchone()
                return
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database's write lock from its first statement."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _one(self, sql: str, *params: Any) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn().execute(sql, params).fetchone()
        return row

    def _all_rows(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        return self._conn().execute(sql, params).fetchall()

    def _init_schema(self) -> None:
        with self._tx() as conn:
            for statement in _SCHEMA_STATEMENTS:
                conn.execute(statement)
            # Columns added since a data directory may have been created.
            for table, column, declaration in _ADDED_COLUMNS:
                if column not in {row["name"] for row in conn.execute(f"PRAGMA table_info({table})")}:
                    conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def _wrote(self) -> None:
        self._writes += 1
        if self._writes % _PURGE_EVERY == 0:
            self.purge_expired()

    def purge_expired(self) -> None:
        """Delete expired counters and cache entries (reads ignore them anyway)."""
        now = self._clock()
        with self._tx() as conn:
            conn.execute("DELETE FROM counters WHERE expires_at < ?", (now,))
            conn.execute("DELETE FROM cache WHERE expires_at <= ?", (now,))

    def close(self) -> None:
        """Close every connection this process opened (any thread's)."""
        pid = os.getpid()
        with self._all_lock:
            conns, self._all = self._all, []
        for owner, conn in conns:
            if owner == pid:
                conn.close()
        self._local = threading.local()

    # -- tenants and keys ---------------------------------------------------------------------------

    def put_tenant(self, tenant: Tenant) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO tenants (id, name, created_at, limits, suspended_at) VALUES (?, ?, ?, ?, ?)",
            (tenant.id, tenant.name, tenant.created_at, _limits_json(tenant.limits), tenant.suspended_at),
        )

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        row = self._one("SELECT * FROM tenants WHERE id = ?", tenant_id)
        return _tenant_from(row) if row is not None else None

    def _load_tenants(self) -> list[Tenant]:
        return [_tenant_from(r) for r in self._all_rows("SELECT * FROM tenants")]

    def put_key(self, key: ApiKeyRecord) -> None:
        params = dataclasses.asdict(key)
        params.update(scopes=json.dumps(sorted(key.scopes)), limits=_limits_json(key.limits))
        self._conn().execute(_PUT_KEY, params)

    def get_key(self, key_id: str) -> ApiKeyRecord | None:
        row = self._one("SELECT * FROM api_keys WHERE id = ?", key_id)
        return _key_from(row) if row is not None else None

    def _load_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        return [_key_from(r) for r in self._all_rows("SELECT * FROM api_keys WHERE tenant_id = ?", tenant_id)]

    # -- counters and usage writes (core.stores.TransactionalCounters) -------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._tx() as conn:
            yield conn
        self._wrote()

    def _load_item(self, tx: sqlite3.Connection, item: str, now: float) -> Loaded:
        rows = tx.execute("SELECT field, value, expires_at FROM counters WHERE item = ?", (item,)).fetchall()
        if not rows or any(r[2] is not None and r[2] < now for r in rows):
            return None
        return {r[0]: r[1] for r in rows}, rows[0][2]  # every field's row carries the item's expiry

    def _save_item(
        self, tx: sqlite3.Connection, item: str, fields: Mapping[str, int], expires_at: float | None, *, replace: bool
    ) -> None:
        if replace:
            tx.execute("DELETE FROM counters WHERE item = ?", (item,))
        tx.executemany(
            "INSERT OR REPLACE INTO counters (item, field, value, expires_at) VALUES (?, ?, ?, ?)",
            [(item, name, value, expires_at) for name, value in fields.items()],
        )

    def _save_usage(self, tx: sqlite3.Connection, record: UsageRecord, day: str) -> bool:
        if tx.execute(_PUT_USAGE, _usage_row(record)).rowcount != 1:
            return False
        r = record
        tx.execute(_ADD_DAILY, (r.tenant_id, day, r.model, r.prompt_tokens, r.completion_tokens, int(r.cached), r.cost))
        return True

    # -- usage reads --------------------------------------------------------------------------------

    def _load_usage(self, tenant_id: str, request_id: str) -> UsageRecord | None:
        row = self._one("SELECT * FROM usage WHERE request_id = ? AND tenant_id = ?", request_id, tenant_id)
        return _usage_from(row) if row is not None else None

    def _list_usage(self, tenant_id: str | None, start: float, end: float, limit: int) -> list[UsageRecord]:
        rows = self._all_rows(
            "SELECT * FROM usage WHERE created_at >= ? AND created_at < ? AND (? IS NULL OR tenant_id = ?)"
            " ORDER BY created_at, request_id LIMIT ?",
            *(start, end, tenant_id, tenant_id, limit),
        )
        return [_usage_from(r) for r in rows]

    def _daily_usage(self, tenant_id: str | None, start_day: str, end_day: str) -> list[UsageAggregate]:
        rows = self._all_rows(
            "SELECT * FROM usage_daily WHERE day >= ? AND day <= ? AND (? IS NULL OR tenant_id = ?)",
            *(start_day, end_day, tenant_id, tenant_id),
        )
        return [UsageAggregate(**dict(r)) for r in rows]

    # -- cache --------------------------------------------------------------------------------------

    def _load_cache_entry(self, tenant_id: str, key: str) -> CacheEntry | None:
        row = self._one("SELECT value, expires_at FROM cache WHERE key = ?", _cache_row_key(tenant_id, key))
        return CacheEntry(bytes(row[0]), row[1]) if row is not None else None

    def _save_cache_entry(self, tenant_id: str, key: str, entry: CacheEntry) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO cache (key, value, expires_at) VALUES (?, ?, ?)",
            (_cache_row_key(tenant_id, key), entry.value, entry.expires_at),
        )
        self._wrote()

    # -- models and signing keys --------------------------------------------------------------------

    def put_model(self, spec: ModelSpec) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO models (id, spec) VALUES (?, ?)",
            (spec.id, json.dumps(dataclasses.asdict(spec), sort_keys=True)),
        )

    def get_model(self, model_id: str) -> ModelSpec | None:
        row = self._one("SELECT spec FROM models WHERE id = ?", model_id)
        return _model_from(row) if row is not None else None

    def _load_models(self) -> list[ModelSpec]:
        return [_model_from(r) for r in self._all_rows("SELECT spec FROM models")]

    def delete_model(self, model_id: str) -> bool:
        return self._conn().execute("DELETE FROM models WHERE id = ?", (model_id,)).rowcount == 1

    def put_signing_key(self, key: SigningKey) -> None:
        self._conn().execute(
            "INSERT OR REPLACE INTO signing_keys (kid, private_pem, public_pem, created_at, retired_at)"
            " VALUES (:kid, :private_pem, :public_pem, :created_at, :retired_at)",
            dataclasses.asdict(key),
        )

    def _load_signing_keys(self) -> list[SigningKey]:
        return [SigningKey(**dict(r)) for r in self._all_rows("SELECT * FROM signing_keys")]
