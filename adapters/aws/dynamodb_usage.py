"""DynamoDBUsage: the UsageStore role. A record, its daily aggregate and its settlement: one transaction.

``record_usage`` is one TransactWriteItems: a Put of the record (``pk = R#<request id>``, conditioned on
``attribute_not_exists(pk)``), an Update of the (tenant, day, model) aggregate (``ADD`` of its sums) and
an Update (``ADD``) of each counter item the request settles. All happen or none does, so a crash or a
timeout between "record written" and "aggregate added" or "reservation settled" cannot exist; a retry of
the same request id either finds the record (False, nothing written) or writes everything. A settled
counter item found absent or expired is written whole instead, in the next round. When an item is held by a
concurrent transaction DynamoDB cancels with ``TransactionConflict``; the call is tried again with jitter,
then answered 503.

Reads: ``get_usage`` is a GetItem; ``daily_usage`` of one tenant is a Query of its partition
(``T#<tenant>``, ``sk`` between ``A#<start>`` and ``A#<end>$``), of all tenants a Query of each
``DAILY#<n>`` gsi1 shard. ``list_usage`` finds the (tenant, day) pairs with usage from the aggregates,
then queries each pair's gsi1 partition ``U#<tenant>#<day>`` over ``[start, end)``. No Scan anywhere.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from itertools import groupby

from pynamodb.expressions.operand import Path
from pynamodb.expressions.update import Action

from adapters.aws.dynamodb_counters import settle_put, settle_update
from adapters.aws.dynamodb_models import DailyItem, UsageItem, daily_shard, daily_shards, sortable
from adapters.aws.dynamodb_table import (
    CONFLICT_ROUNDS,
    ConditionFailed,
    DynamoDBTable,
    Item,
    conflict_pause,
    unavailable,
)
from core.domain import CounterChange, UsageAggregate, UsageRecord

USAGE_SK = "USAGE"
_LAST_SECOND = 253_402_300_799.0  # 9999-12-31T23:59:59Z: the last day ``utc_day`` can name


def utc_day(timestamp: float) -> str:
    """The UTC calendar day of a Unix timestamp as ``YYYY-MM-DD``."""
    clamped = min(max(timestamp, 0.0), _LAST_SECOND)
    return datetime.fromtimestamp(clamped, tz=UTC).strftime("%Y-%m-%d")


def _usage_item(r: UsageRecord, day: str) -> UsageItem:
    return UsageItem(
        pk=f"R#{r.request_id}",
        sk=USAGE_SK,
        gsi1pk=f"U#{r.tenant_id}#{day}",
        gsi1sk=f"{sortable(r.created_at)}#{r.request_id}",
        request_id=r.request_id,
        tenant_id=r.tenant_id,
        key_id=r.key_id,
        model=r.model,
        endpoint=r.endpoint,
        prompt_tokens=r.prompt_tokens,
        completion_tokens=r.completion_tokens,
        cached=r.cached,
        latency_ms=r.latency_ms,
        status=r.status,
        created_at=r.created_at,
        cost=r.cost,
    )


def _record_from(item: Item) -> UsageRecord:
    u = UsageItem.from_raw_data(item)
    return UsageRecord(
        request_id=u.request_id,
        tenant_id=u.tenant_id,
        key_id=u.key_id,
        model=u.model,
        endpoint=u.endpoint,
        prompt_tokens=int(u.prompt_tokens),
        completion_tokens=int(u.completion_tokens),
        cached=bool(u.cached),
        latency_ms=float(u.latency_ms),
        status=int(u.status),
        created_at=float(u.created_at),
        cost=float(u.cost),
    )


def _aggregate_from(item: Item) -> UsageAggregate:
    d = DailyItem.from_raw_data(item)
    return UsageAggregate(
        tenant_id=d.tenant_id,
        day=d.day,
        model=d.model,
        requests=int(d.requests),
        prompt_tokens=int(d.prompt_tokens),
        completion_tokens=int(d.completion_tokens),
        cached_requests=int(d.cached_requests),
        cost=float(d.cost),
    )


def _daily(r: UsageRecord, day: str) -> list[Action]:
    """The aggregate's update: its key fields, and ``ADD`` of the record's sums (no read needed)."""
    return [
        DailyItem.tenant_id.set(r.tenant_id),
        DailyItem.day.set(day),
        DailyItem.model.set(r.model),
        DailyItem.gsi1pk.set(daily_shard(r.tenant_id)),
        DailyItem.gsi1sk.set(f"{day}#{r.tenant_id}#{r.model}"),
        DailyItem.requests.add(1),
        DailyItem.prompt_tokens.add(r.prompt_tokens),
        DailyItem.completion_tokens.add(r.completion_tokens),
        DailyItem.cached_requests.add(int(r.cached)),
        DailyItem.cost.add(r.cost),
    ]


def _merged(changes: Sequence[CounterChange]) -> list[CounterChange]:
    """One change per item (a transaction may name an item once), deltas summed, first expiry kept."""
    merged: dict[str, CounterChange] = {}
    for change in changes:
        known = merged.get(change.item)
        if known is None:
            merged[change.item] = CounterChange(change.item, dict(change.increments), expires_at=change.expires_at)
        else:
            for name, delta in change.increments.items():
                known.increments[name] = known.increments.get(name, 0) + delta
    return list(merged.values())


class DynamoDBUsage:
    """Mixin of DynamoDBStore: ``self._table`` is the table, ``self._clock`` gives "now"."""

    _table: DynamoDBTable
    _clock: Callable[[], float]

    def record_usage(self, record: UsageRecord, settle: Sequence[CounterChange] = ()) -> bool:
        """Write the record, add it to its daily aggregate and apply ``settle``, in ONE transaction.

        False, and nothing written, if the request id exists. A settled counter item that is absent or
        expired is replaced (a Put conditioned on that) rather than added to, like ``add`` does.
        """
        day = utc_day(record.created_at)
        put = self._table.put_kwargs(_usage_item(record, day).serialize(), UsageItem.pk.does_not_exist())
        aggregate = self._table.update_kwargs(f"T#{record.tenant_id}", f"A#{day}#{record.model}", _daily(record, day))
        changes = _merged(settle)
        replace: set[str] = set()  # counter items found absent or expired: written whole
        for round_ in range(CONFLICT_ROUNDS):
            now = self._clock()
            replaced = [c for c in changes if c.item in replace]
            added = [c for c in changes if c.item not in replace]
            puts = [put] + [settle_put(self._table, c, now) for c in replaced]
            updates = [aggregate] + [settle_update(self._table, c, now) for c in added]
            try:
                self._table.transact(puts, updates, uuid.uuid4().hex)  # new each round, kept by botocore's retries
                return True
            except ConditionFailed as refused:
                reasons = refused.reasons
            if reasons[:1] == ["ConditionalCheckFailed"]:
                return False  # the record exists: this request was charged before
            # pynamodb sends the puts, then the updates: the reasons come in that order.
            order = [None, *(c.item for c in replaced), None, *(c.item for c in added)]
            failed = {
                item for item, why in zip(order, reasons, strict=False) if item and why == "ConditionalCheckFailed"
            }
            # An added item refused: absent or expired counts as absent, so it is written whole; a
            # replacement refused: someone re-created it meanwhile, so it is added to again.
            replace ^= failed
            if not failed:
                conflict_pause(round_)  # TransactionConflict: a concurrent transaction holds an item
        raise unavailable()

    def get_usage(self, tenant_id: str, request_id: str) -> UsageRecord | None:
        found = self._table.get(f"R#{request_id}", USAGE_SK)
        record = _record_from(found) if found is not None else None
        return record if record is not None and record.tenant_id == tenant_id else None

    def daily_usage(self, tenant_id: str | None, start_day: str, end_day: str) -> list[UsageAggregate]:
        """Aggregates per tenant, day and model, days given as ``YYYY-MM-DD`` (inclusive)."""
        if end_day < start_day:
            return []
        if tenant_id is not None:
            span = Path(["sk"]).between(f"A#{start_day}", f"A#{end_day}$")
            items: Iterable[Item] = self._table.query(f"T#{tenant_id}", span)
        else:
            span = Path(["gsi1sk"]).between(start_day, f"{end_day}$")  # "$" sorts right after "#"
            items = (item for shard in daily_shards() for item in self._table.query(shard, span, index=True))
        rows = [_aggregate_from(item) for item in items]
        rows.sort(key=lambda a: (a.day, a.tenant_id, a.model))
        return rows

    def list_usage(self, tenant_id: str | None, start: float, end: float, limit: int = 1000) -> list[UsageRecord]:
        """Records with ``start <= created_at < end`` (all tenants when ``tenant_id`` is None), oldest first."""
        if limit <= 0 or end <= start:
            return []
        pairs = sorted({(a.day, a.tenant_id) for a in self.daily_usage(tenant_id, utc_day(start), utc_day(end))})
        span = Path(["gsi1sk"]).between(sortable(start), sortable(end))  # "<end>#id" sorts above "<end>"
        found: list[UsageRecord] = []
        for day, group in groupby(pairs, key=lambda pair: pair[0]):
            records = [
                record
                for _, tenant in group
                for record in map(
                    _record_from, self._table.query(f"U#{tenant}#{day}", span, index=True, limit=limit - len(found))
                )
                if start <= record.created_at < end
            ]
            found.extend(sorted(records, key=lambda r: (r.created_at, r.request_id)))
            if len(found) >= limit:
                break
        return found[:limit]
