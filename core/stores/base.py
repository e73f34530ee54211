"""StorePolicy: the Store port's policy, implemented once on a few storage primitives (abstract methods).

The shape of Powertools' ``BasePersistenceLayer``: the base owns what every database decides alike (argument
checks, the UTC-day bucketing of usage, cache expiry, the JSON copy of documents, ordering and paging), and an
adapter only saves and loads. A store class that lacks a primitive cannot be instantiated: Python names the
missing one (``Can't instantiate abstract class X with abstract method _load_cache_entry``).

What stays in the primitives is what must be atomic in the database itself: a conditional counter write
(``core.counters.admits`` says what the condition is), the usage record with its aggregate and settlement,
and a document write under its condition (absent, or at a version).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import ClassVar, NamedTuple

from core.domain import (
    ApiKeyRecord,
    CounterChange,
    Document,
    ModelSpec,
    SigningKey,
    Tenant,
    UsageAggregate,
    UsageRecord,
)

_LAST_SECOND = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the last day ``utc_day`` can name


def utc_day(timestamp: float) -> str:
    """The UTC calendar day of a Unix timestamp as ``YYYY-MM-DD`` (the day a usage record is aggregated under)."""
    clamped = min(max(timestamp, 0.0), _LAST_SECOND)
    return datetime.fromtimestamp(clamped, tz=UTC).strftime("%Y-%m-%d")


class CacheEntry(NamedTuple):
    """A cache entry as stored: its bytes and its exact expiry (expired when ``expires_at <= now``)."""

    value: bytes
    expires_at: float


class StoredDocument(NamedTuple):
    """A document as stored: its body as JSON text, its version (from 1) and when it was written."""

    id: str
    body: str
    version: int
    updated_at: float


def _check_name(what: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"a document's {what} must be a non-empty string, not {value!r}")


def _document(owner: str, stored: StoredDocument) -> Document:
    return Document(stored.id, owner, json.loads(stored.body), stored.version, stored.updated_at)


class StorePolicy(ABC):
    """Every Store role's policy; subclasses implement the abstract primitives below and set ``_clock``.

    Put it LAST among a store's bases, after the mixins that implement the primitives.
    """

    _clock: Callable[[], float]
    #: The largest cache value the database can hold (bytes); a bigger one is not kept: a cache may forget.
    cache_value_limit: ClassVar[int | None] = None

    # -- counters: primitives -------------------------------------------------------------------------

    @abstractmethod
    def _try_add_counters(self, changes: Sequence[CounterChange]) -> tuple[bool, list[dict[str, int]]]:
        """ONE atomic write: every change applies if each is ``core.counters.admits`` on its live item, else
        nothing is written. Returns each item's values after the write, or as seen when refused. An expired
        item (``expires_at < now``) counts as absent; an applied change sets its item's expiry."""

    @abstractmethod
    def _add_counter(self, item: str, deltas: Mapping[str, int], expires_at: float | None) -> None:
        """Unconditional add to a live item (which keeps its expiry), or to a new one expiring at ``expires_at``."""

    @abstractmethod
    def _read_counter(self, item: str) -> dict[str, int]:
        """The live item's fields; ``{}`` when absent or expired."""

    # -- counters: policy -------------------------------------------------------------------------------

    def try_add(
        self,
        item: str,
        increments: Mapping[str, int],
        limits: Mapping[str, int],
        expires_at: float,
    ) -> tuple[bool, dict[str, int]]:
        """Add every increment if every limited field stays <= its limit; else write nothing."""
        ok, values = self.try_add_all([CounterChange(item, dict(increments), dict(limits), expires_at)])
        return ok, values[0]

    def try_add_all(self, changes: Sequence[CounterChange]) -> tuple[bool, list[dict[str, int]]]:
        """``try_add`` over several items as ONE atomic write: all apply or none does."""
        if not changes:
            return True, []
        return self._try_add_counters(list(changes))

    def add(self, item: str, deltas: Mapping[str, int], expires_at: float | None = None) -> None:
        """Unconditional add; an absent or expired item is created expiring at ``expires_at``."""
        if deltas:
            self._add_counter(item, dict(deltas), expires_at)

    def read(self, item: str) -> dict[str, int]:
        return self._read_counter(item)

    def _read_counters(self, items: Sequence[str]) -> list[dict[str, int]]:
        """Several live items' fields in order: one read each, unless the store overrides this with one call."""
        return [self._read_counter(item) for item in items]

    def read_many(self, items: Sequence[str]) -> list[dict[str, int]]:
        return self._read_counters(list(items)) if items else []

    # -- usage: primitives ------------------------------------------------------------------------------

    @abstractmethod
    def _record_usage(self, record: UsageRecord, day: str, settle: Sequence[CounterChange]) -> bool:
        """ONE atomic write: the record (unless its request id exists: then False and nothing written), an add
        to the (tenant, ``day``, model) aggregate, and ``settle``, each change adding its
        ``core.counters.settled_increments`` on the item's live values."""

    @abstractmethod
    def _load_usage(self, tenant_id: str, request_id: str) -> UsageRecord | None: ...

    @abstractmethod
    def _list_usage(self, tenant_id: str | None, start: float, end: float, limit: int) -> list[UsageRecord]:
        """Records with ``start <= created_at < end`` (of every tenant when None): at least the first ``limit``
        by (created_at, request_id), in any order. Called with ``limit > 0`` and ``end > start`` only."""

    @abstractmethod
    def _daily_usage(self, tenant_id: str | None, start_day: str, end_day: str) -> list[UsageAggregate]:
        """One aggregate per (tenant, day, model) with ``start_day <= day <= end_day``, in any order."""

    # -- usage: policy ----------------------------------------------------------------------------------

    def record_usage(self, record: UsageRecord, settle: Sequence[CounterChange] = ()) -> bool:
        """Write the record, add it to its UTC day's aggregate and apply ``settle``, in one atomic write; False,
        and nothing written, if the request id exists."""
        return self._record_usage(record, utc_day(record.created_at), tuple(settle))

    def get_usage(self, tenant_id: str, request_id: str) -> UsageRecord | None:
        """The tenant's record of one request; another tenant's record with that id is not found."""
        record = self._load_usage(tenant_id, request_id)
        return record if record is not None and record.tenant_id == tenant_id else None

    def list_usage(self, tenant_id: str | None, start: float, end: float, limit: int = 1000) -> list[UsageRecord]:
        """Records with ``start <= created_at < end`` (all tenants when ``tenant_id`` is None), oldest first."""
        if limit <= 0 or end <= start:
            return []
        found = self._list_usage(tenant_id, start, end, limit)
        return sorted(found, key=lambda r: (r.created_at, r.request_id))[:limit]

    def daily_usage(self, tenant_id: str | None, start_day: str, end_day: str) -> list[UsageAggregate]:
        """Aggregates per tenant, day and model, days given as ``YYYY-MM-DD`` (inclusive)."""
        if end_day < start_day:
            return []
        rows = self._daily_usage(tenant_id, start_day, end_day)
        return sorted(rows, key=lambda a: (a.day, a.tenant_id, a.model))

    # -- cache: primitives ------------------------------------------------------------------------------

    @abstractmethod
    def _save_cache_entry(self, tenant_id: str, key: str, entry: CacheEntry) -> None:
        """Keep ``entry`` under (tenant, key), replacing any; the database may delete it once expired."""

    @abstractmethod
    def _load_cache_entry(self, tenant_id: str, key: str) -> CacheEntry | None:
        """The entry under (tenant, key) as saved, expired or not; None when there is none."""

    # -- cache: policy ----------------------------------------------------------------------------------

    def cache_get(self, tenant_id: str, key: str, now: float) -> bytes | None:
        """The tenant's entry unless it expired (at ``expires_at``, whatever the database's sweeper did)."""
        entry = self._load_cache_entry(tenant_id, key)
        return entry.value if entry is not None and entry.expires_at > now else None

    def cache_put(self, tenant_id: str, key: str, value: bytes, expires_at: float) -> None:
        """Keep an entry; one over ``cache_value_limit`` is not kept."""
        if self.cache_value_limit is not None and len(value) > self.cache_value_limit:
            return
        self._save_cache_entry(tenant_id, key, CacheEntry(bytes(value), expires_at))

    # -- documents: primitives --------------------------------------------------------------------------

    @abstractmethod
    def _write_document(
        self, collection: str, owner: str, doc: StoredDocument, *, if_absent: bool, if_version: int | None
    ) -> int | None:
        """ONE atomic write of ``doc`` (its ``version`` is ignored): create only (``if_absent``), replace only
        ``if_version``, or else create or replace. Returns the new version (1 when created, the previous + 1
        otherwise), or None when the condition failed and nothing was written."""

    @abstractmethod
    def _read_document(self, collection: str, owner: str, doc_id: str) -> StoredDocument | None: ...

    @abstractmethod
    def _list_documents(self, collection: str, owner: str, after: str | None, limit: int) -> list[StoredDocument]:
        """The first ``limit`` documents by id of the owner's collection with an id above ``after`` (all when
        None). Called with ``limit > 0`` only."""

    @abstractmethod
    def _delete_document(self, collection: str, owner: str, doc_id: str) -> bool:
        """Delete the document; whether it existed."""

    # -- documents: policy ------------------------------------------------------------------------------

    def put_document(
        self,
        collection: str,
        doc: Document,
        *,
        if_absent: bool = False,
        if_version: int | None = None,
    ) -> Document | None:
        """Write ``doc`` under ``doc.owner`` (its version is ignored) and return it with its new version,
        or None if a condition failed. The body is stored as JSON: what comes back is a copy through JSON."""
        for what, value in (("collection", collection), ("owner", doc.owner), ("id", doc.id)):
            _check_name(what, value)
        if if_absent and if_version is not None:
            raise ValueError("if_absent and if_version exclude each other")
        body = json.dumps(doc.body, separators=(",", ":"), ensure_ascii=False)
        stored = StoredDocument(doc.id, body, 0, self._clock())
        version = self._write_document(collection, doc.owner, stored, if_absent=if_absent, if_version=if_version)
        return _document(doc.owner, stored._replace(version=version)) if version is not None else None

    def get_document(self, collection: str, owner: str, doc_id: str) -> Document | None:
        for what, value in (("collection", collection), ("owner", owner), ("id", doc_id)):
            _check_name(what, value)
        stored = self._read_document(collection, owner, doc_id)
        return _document(owner, stored) if stored is not None else None

    def list_documents(self, collection: str, owner: str, after: str | None = None, limit: int = 100) -> list[Document]:
        """The owner's documents of ``collection`` ordered by id, those with an id above ``after`` only."""
        _check_name("collection", collection)
        _check_name("owner", owner)
        if limit <= 0:
            return []
        found = self._list_documents(collection, owner, after, limit)
        kept = sorted((d for d in found if after is None or d.id > after), key=lambda d: d.id)
        return [_document(owner, d) for d in kept[:limit]]

    def delete_document(self, collection: str, owner: str, doc_id: str) -> bool:
        for what, value in (("collection", collection), ("owner", owner), ("id", doc_id)):
            _check_name(what, value)
        return self._delete_document(collection, owner, doc_id)

    # -- listings: primitives ---------------------------------------------------------------------------

    @abstractmethod
    def _load_tenants(self) -> Iterable[Tenant]:
        """Every tenant, in any order."""

    @abstractmethod
    def _load_keys(self, tenant_id: str) -> Iterable[ApiKeyRecord]:
        """The tenant's API key records (revoked ones too), in any order."""

    @abstractmethod
    def _load_models(self) -> Iterable[ModelSpec]:
        """Every registered model, in any order."""

    @abstractmethod
    def _load_signing_keys(self) -> Iterable[SigningKey]:
        """Every JWT signing key (retired ones too), in any order."""

    # -- listings: policy (one order on every store) ----------------------------------------------------

    def list_tenants(self) -> list[Tenant]:
        """Oldest first, then by id."""
        return sorted(self._load_tenants(), key=lambda t: (t.created_at, t.id))

    def list_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        """The tenant's keys, oldest first, then by id."""
        return sorted(self._load_keys(tenant_id), key=lambda k: (k.created_at, k.id))

    def list_models(self) -> list[ModelSpec]:
        """By id."""
        return sorted(self._load_models(), key=lambda m: m.id)

    def list_signing_keys(self) -> list[SigningKey]:
        """Oldest first, then by key id."""
        return sorted(self._load_signing_keys(), key=lambda k: (k.created_at, k.kid))
