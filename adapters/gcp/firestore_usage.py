"""FirestoreUsage: the UsageStore role. A record, its daily aggregate and its settlement: ONE transaction.

A record is ``tenants/{tenant}/usage/{request id}``, written with a create precondition: a second record of the
same request id fails the whole commit, so nothing of it is written and nothing settled (the same request id
twice charges once). In the same commit, its (tenant, day, model) aggregate gets the record's sums added by
server-side increments (no read, no lock held before the commit) to one of the writer's aggregate documents
(``tenants/{tenant}/daily/{day}|{writer shard}|{model}``), and the settlement of the counters
(``FirestoreCounters``) rides along. A record holds its index shard (a stable hash of the request id, for the
listing's index: below), its UTC ``day`` and the writing call's token ``w``.

The aggregate document a record adds to is one of the WRITING PROCESS's own (``core.writer_shards``: as many per
tenant as its own rate needs to keep each under half a write a second, taken in turn), so no aggregate document
is written by every request of a busy tenant, whatever its rate.

Reads: ``daily_usage`` of a tenant is one query of its ``daily`` documents by ``day``, the shards added up per
(day, model); of every tenant, a collection-group query. ``list_usage`` is one query per index shard (``shard
== n``, by ``created_at``, ascending, a share of the limit each; run at once on ``adapters.query_threads``),
then, only where the shares did not settle it, the full shards' first ``limit`` and the records tied with
their last one (``_list_usage``). Why shards: Firestore takes at most 500 writes a second into an index over a
field whose values only increase (``created_at``); with the field's single-field index exempted (Terraform)
and a composite index (``shard``, ``created_at``), a tenant's records go to 32 ranges of that index, so about
16,000 records a second before any of them reaches it, for a tenant or for all of them (the collection-group
index).
"""

from __future__ import annotations

import zlib

from adapters.gcp.firestore_counters import FirestoreTx
from adapters.gcp.firestore_layout import DAILY, USAGE, daily_path, tenant_path, usage_path
from adapters.gcp.firestore_rpc import Fields, FirestoreRpc, ordered, where
from adapters.query_threads import each
from core.domain import UsageAggregate, UsageRecord
from core.stores.aggregates import aggregate_of, record_sums, summed
from core.writer_shards import WriterShards

USAGE_SHARDS = 32  # index shards of a tenant's usage records
MIN_SHARE = 10  # records a listing asks of an index shard at first, at least


def usage_shard(request_id: str, shards: int = USAGE_SHARDS) -> int:
    """A stable hash of the request id (not Python's salted one)."""
    return zlib.crc32(request_id.encode()) % shards


def _record_fields(r: UsageRecord, day: str, shard: int, token: str) -> Fields:
    return {
        "request_id": r.request_id,
        "tenant_id": r.tenant_id,
        "key_id": r.key_id,
        "model": r.model,
        "endpoint": r.endpoint,
        "prompt_tokens": r.prompt_tokens,
        "completion_tokens": r.completion_tokens,
        "cached": r.cached,
        "latency_ms": float(r.latency_ms),
        "status": r.status,
        "created_at": float(r.created_at),
        "cost": float(r.cost),
        "ended": r.ended,
        "day": day,
        "shard": shard,
        "w": token,
    }


def _record_from(d: Fields) -> UsageRecord:
    return UsageRecord(
        request_id=d["request_id"],
        tenant_id=d["tenant_id"],
        key_id=d["key_id"],
        model=d["model"],
        endpoint=d["endpoint"],
        prompt_tokens=int(d["prompt_tokens"]),
        completion_tokens=int(d["completion_tokens"]),
        cached=bool(d["cached"]),
        latency_ms=float(d["latency_ms"]),
        status=int(d["status"]),
        created_at=float(d["created_at"]),
        cost=float(d["cost"]),
        ended=d.get("ended") or "completed",
    )


class FirestoreUsage:
    """The UsageStore primitives (policy in core.stores). Mixin of FirestoreStore: ``self._rpc``."""

    _rpc: FirestoreRpc
    _usage_shards: int = USAGE_SHARDS
    _writer_shards: WriterShards

    def _save_usage(self, tx: FirestoreTx, record: UsageRecord, day: str) -> bool:
        """In ``tx``: the record's create (the commit fails if it exists) and its aggregate shard's increments."""
        shard = usage_shard(record.request_id, self._usage_shards)
        path = usage_path(record.tenant_id, record.request_id)
        tx.write(path, self._rpc.put(path, _record_fields(record, day, shard, tx.token), exists=False))
        writer = self._writer_shards.shard(record.tenant_id)
        aggregate = daily_path(record.tenant_id, day, writer, record.model)
        keys = {"tenant_id": record.tenant_id, "day": day, "model": record.model, "shard": writer}
        tx.write(aggregate, self._rpc.merge(aggregate, keys, record_sums(record)))
        return True

    def _usage_token(self, record: UsageRecord) -> str | None:
        """The token the request id's record was written with (None: there is none)."""
        path = usage_path(record.tenant_id, record.request_id)
        found, _ = self._rpc.get([path])
        doc = found.get(path)
        return doc.get("w") if doc is not None else None

    def _load_usage(self, tenant_id: str, request_id: str) -> UsageRecord | None:
        path = usage_path(tenant_id, request_id)
        found, _ = self._rpc.retried(lambda _, __: self._rpc.get([path]))
        doc = found.get(path)
        return _record_from(doc) if doc is not None else None

    def _query(self, tenant_id: str | None, collection: str, structured: dict[str, object]) -> list[Fields]:
        parent = tenant_path(tenant_id) if tenant_id is not None else ""
        return self._rpc.retried(
            lambda _, __: self._rpc.query(parent, collection, structured, all_descendants=tenant_id is None)
        )

    def _list_usage(self, tenant_id: str | None, start: float, end: float, limit: int) -> list[UsageRecord]:
        """The first ``limit`` records by (created_at, request id), among others (core sorts and cuts).

        Each index shard is asked a share first (twice its part of ``limit``, at least ``MIN_SHARE``), all at
        once: a shard that gave less has given all it holds; one that gave its whole share holds everything up
        to its last ``created_at``. When ``limit`` records lie below the lowest such point, they are the answer
        (a read costs per document: about ``2 * limit`` read, not ``32 * limit``). Otherwise the full shards are
        asked their first ``limit`` and the records tied with their last one."""
        shards = range(self._usage_shards)
        share = max(MIN_SHARE, -(-2 * limit // self._usage_shards))
        pages = each(lambda shard: self._first_of_shard(tenant_id, shard, start, end, share, ties=False), shards)
        found = {d["request_id"]: d for page in pages for d in page}
        full = [shard for shard, page in zip(shards, pages, strict=True) if len(page) == share]
        if full:
            bound = min(float(pages[shard][-1]["created_at"]) for shard in full)
            if sum(float(d["created_at"]) < bound for d in found.values()) < limit:
                for page in each(lambda shard: self._first_of_shard(tenant_id, shard, start, end, limit), full):
                    found.update((d["request_id"], d) for d in page)
        return [_record_from(d) for d in found.values() if d["tenant_id"] == tenant_id or tenant_id is None]

    def _first_of_shard(
        self, tenant_id: str | None, shard: int, start: float, end: float, limit: int, *, ties: bool = True
    ) -> list[Fields]:
        """A shard's first ``limit`` records by ``created_at`` (``ties``: and every one tied with the last)."""
        in_shard = ("shard", "EQUAL", shard)
        span = where(
            in_shard, ("created_at", "GREATER_THAN_OR_EQUAL", float(start)), ("created_at", "LESS_THAN", float(end))
        )
        first = self._query(tenant_id, USAGE, {**span, **ordered("created_at"), "limit": limit})
        if len(first) < limit or not ties:
            return first
        last = float(first[-1]["created_at"])  # records tied with the last one: any of them may come first
        return first + self._query(tenant_id, USAGE, where(in_shard, ("created_at", "EQUAL", last)))

    def _daily_usage(self, tenant_id: str | None, start_day: str, end_day: str) -> list[UsageAggregate]:
        span = where(("day", "GREATER_THAN_OR_EQUAL", start_day), ("day", "LESS_THAN_OR_EQUAL", end_day))
        return summed(aggregate_of(d) for d in self._query(tenant_id, DAILY, span))
