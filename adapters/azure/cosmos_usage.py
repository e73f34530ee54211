"""CosmosUsage: the UsageStore role. A record (create-only), its settlement, then its daily aggregate shard.

Cosmos DB has no transaction across logical partitions, so ``record_usage`` is three kinds of single-item write,
in this order:

1. the record, ``create_item`` (id ``r|<request id>`` under the tenant): 409 means the request id was recorded
   before, so nothing more is written and the answer is False. The same request id never settles twice: only the
   caller whose create succeeded goes on.
2. each settlement change (``CosmosCounters._settle``: a filter-predicate patch of its increments, else its
   ``otherwise``: ``core.counters.settled_increments``);
3. the (tenant, day, model) aggregate: ``incr`` of the record's sums on one of ``AGGREGATE_SHARDS`` items (the
   shard a stable hash of the request id), created on first use. ``daily_usage`` adds the shards up.

Failures after the record: the other writes are still made, then the first failure is raised (503).

The one window: a process that dies (or a write whose answer is lost) after the record and before the last write.
The record is there, so the request is billed and a retry of it writes nothing (False; core then releases that
attempt's own reservation). What is missing: (a) the settlement: the reservation stays held, counting more than
was used (an overcount, the safe side) until its lease is reclaimed (``core.leases``: at most ``bucket_s +
max_request_s + clock_skew_s``, about 21 minutes), which gives the whole reservation back, so the tokens that
request used are then not counted against the quota: at most one reservation's used tokens per such crash, never
more; the minute window's items simply expire. (b) the aggregate, if not yet written: ``daily_usage`` misses
that one request (the record still has it). The settlement goes before the aggregate because the quota is the
hard limit. The other order (settle, then record) would settle a retried request id twice.

Reads: ``get_usage`` is a point read; ``list_usage`` one query of the tenant's records by ``created_at`` (a
prefix partition key query: the tenant's partitions only; ``TOP``, then the records tied with the last one);
``daily_usage`` one query of the aggregates. Every query names the tenant in its WHERE clause as well (the
emulator does not scope a partition-key query).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from azure.cosmos import exceptions as cex

from adapters.azure.cosmos_layout import aggregate_key, placed, record_key
from adapters.azure.cosmos_retry import CONFLICT, NOT_FOUND, CosmosCalls, Doc, query, read_item
from core.domain import CounterChange, UsageAggregate, UsageRecord
from core.errors import ServiceUnavailable, StoreThrottled
from core.stores.aggregates import aggregate_of, record_sums, summed

_RECORD_FIELDS = (
    "request_id",
    "tenant_id",
    "key_id",
    "model",
    "endpoint",
    "prompt_tokens",
    "completion_tokens",
    "cached",
    "latency_ms",
    "status",
    "created_at",
    "cost",
    "ended",
)


def _record_from(d: Doc) -> UsageRecord:
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


class CosmosUsage:
    """The UsageStore primitives (policy in core.stores). Mixin of CosmosStore: ``self._usage`` (the container),
    ``self._calls``, ``self._clock`` and CosmosCounters' ``_settle``."""

    _usage: Any
    _calls: CosmosCalls
    _clock: Callable[[], float]
    _settle: Callable[[CounterChange, float], None]

    def _record_usage(self, record: UsageRecord, day: str, settle: Sequence[CounterChange]) -> bool:
        now = self._clock()
        fields: dict[str, object] = {name: getattr(record, name) for name in _RECORD_FIELDS}
        body = placed(record_key(record.tenant_id, record.request_id), {"k": "r", **fields, "day": day})
        try:
            self._calls.write(lambda: self._usage.create_item(body))
        except cex.CosmosHttpResponseError as exc:
            if exc.status_code == CONFLICT:
                return False  # recorded before: nothing more is written, nothing settled twice
            raise
        failed: ServiceUnavailable | None = None
        for change in settle:
            try:
                self._settle(change, now)
            except ServiceUnavailable as exc:
                failed = failed or exc
        try:
            self._add_to_aggregate(record, day)
        except ServiceUnavailable as exc:
            failed = failed or exc
        if failed is not None:
            raise failed
        return True

    def _add_to_aggregate(self, record: UsageRecord, day: str) -> None:
        """``incr`` of the record's sums on its aggregate shard; the shard is created on first use."""
        item_id, partition_key = key = aggregate_key(record.tenant_id, day, record.model, record.request_id)
        sums = record_sums(record)
        ops = [{"op": "incr", "path": f"/{name}", "value": value} for name, value in sums.items()]
        fields = {"k": "a", "tenant_id": record.tenant_id, "day": day, "model": record.model}
        for _ in range(self._calls.rounds):
            try:
                self._calls.write(
                    lambda: self._usage.patch_item(item_id, partition_key=partition_key, patch_operations=ops)
                )
                return
            except cex.CosmosHttpResponseError as exc:
                if exc.status_code != NOT_FOUND:
                    raise
            try:
                self._calls.write(lambda: self._usage.create_item(placed(key, {**fields, **sums})))
                return
            except cex.CosmosHttpResponseError as exc:
                if exc.status_code != CONFLICT:  # created meanwhile by another record: add to it
                    raise
        raise StoreThrottled("a usage aggregate is contended; retry shortly")

    def _load_usage(self, tenant_id: str, request_id: str) -> UsageRecord | None:
        found = read_item(self._calls, self._usage, *record_key(tenant_id, request_id))
        return _record_from(found) if found is not None else None

    def _usage_query(self, tenant_id: str | None, where: str, params: dict[str, Any], head: str = "*") -> list[Doc]:
        if tenant_id is not None:
            where, params = f"c.tenant = @tenant AND {where}", {**params, "@tenant": tenant_id}
        sql = f"SELECT {head} FROM c WHERE {where}"  # noqa: S608  # nosec B608
        return query(self._calls, self._usage, sql, params, [tenant_id] if tenant_id is not None else None)

    def _list_usage(self, tenant_id: str | None, start: float, end: float, limit: int) -> list[UsageRecord]:
        span = "c.k = 'r' AND c.created_at >= @start AND c.created_at < @end"
        params: dict[str, Any] = {"@start": float(start), "@end": float(end)}
        first = self._usage_query(tenant_id, f"{span} ORDER BY c.created_at", {**params, "@n": limit}, "TOP @n *")
        if len(first) < limit:
            return [_record_from(d) for d in first]
        last = float(first[-1]["created_at"])  # records tied with the last one: any of them may come first
        ties = self._usage_query(tenant_id, "c.k = 'r' AND c.created_at = @last", {"@last": last})
        found = {(d["tenant_id"], d["request_id"]): d for d in (*first, *ties)}
        return [_record_from(d) for d in found.values()]

    def _daily_usage(self, tenant_id: str | None, start_day: str, end_day: str) -> list[UsageAggregate]:
        span = "c.k = 'a' AND c.day >= @start AND c.day <= @end"
        return summed(
            aggregate_of(d) for d in self._usage_query(tenant_id, span, {"@start": start_day, "@end": end_day})
        )
