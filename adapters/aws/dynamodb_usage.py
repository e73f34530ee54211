"""DynamoDBUsage: the UsageStore role. A record, its daily aggregate and its settlement: ONE transaction.

``record_usage`` is one TransactWriteItems: a Put of the record (``pk = T#<tenant>#R#<request id>``,
conditioned on ``attribute_not_exists(pk)``), an Update (``ADD``) of one shard of the (tenant, day, model)
aggregate, and the settlement: an Update of the tenant's counters item (the minute and the month slots), its
lease part conditioned on the lease still holding its epoch (``core.leases``). All happen or none does, so:
a retry of the same request id finds the record (False, nothing written, nothing settled twice); the
transaction's ClientRequestToken makes botocore's own retry of an attempt whose answer was lost (a timeout)
apply nothing twice; and a process that dies leaves either all of it or a reservation that its lease gives
back, never a record whose reservation is given back whole. If the settlement is refused (its minute slot
expired with its window, or its lease was reclaimed because the request outlived ``max_request_s``), the
item is read once and the transaction sent again without the expired slot, or with the change's
``otherwise`` (``DynamoDBCounters.settlement_refused``). The aggregate is spread over ``AGGREGATE_SHARDS``
items (by request id): two transactions on one item conflict, and a busy tenant's would all meet on one.

The price of the settlement inside the transaction: while a transaction holds the tenant's counters item
(milliseconds), a reservation of that tenant meeting it is refused with TransactionConflict and retried
with jitter (``DynamoDBTable._call``); a very busy tenant pays it on many requests. Spreading a tenant's
counters over several items is the design for that (the quotas-at-scale issue).

Reads: ``get_usage`` is a GetItem; ``daily_usage`` of one tenant is a Query of its partition
(``T#<tenant>``, ``sk`` between ``A#<start>`` and ``A#<end>$``), of all tenants a Query of each
``DAILY#<n>`` gsi1 shard; the aggregate's shards are summed. ``list_usage`` finds the (tenant, day) pairs
with usage from the aggregates, then queries each pair's gsi1 partition ``U#<tenant>#<day>`` over
``[start, end)``. No Scan anywhere.
"""

from __future__ import annotations

import logging
import uuid
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from itertools import groupby
from typing import Any

from pynamodb.expressions.operand import Path
from pynamodb.expressions.update import Action

from adapters.aws.dynamodb_counters import SettleWrite
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
from core.stores import utc_day

USAGE_SK = "USAGE"
AGGREGATE_SHARDS = 8
_log = logging.getLogger(__name__)


def usage_pk(tenant_id: str, request_id: str) -> str:
    return f"T#{tenant_id}#R#{request_id}"


def aggregate_sk(day: str, model: str, request_id: str) -> str:
    """The aggregate shard a record adds to (a stable hash of its id, not Python's salted one)."""
    return f"A#{day}#{model}#{zlib.crc32(request_id.encode()) % AGGREGATE_SHARDS}"


def _usage_item(r: UsageRecord, day: str) -> UsageItem:
    return UsageItem(
        pk=usage_pk(r.tenant_id, r.request_id),
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
        ended=r.ended,
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
        ended=u.ended or "completed",
    )


def _summed(rows: Iterable[UsageAggregate]) -> list[UsageAggregate]:
    """The shards of each (tenant, day, model) aggregate added up."""
    totals: dict[tuple[str, str, str], UsageAggregate] = {}
    for row in rows:
        key = (row.day, row.tenant_id, row.model)
        known = totals.get(key)
        totals[key] = (
            row
            if known is None
            else replace(
                known,
                requests=known.requests + row.requests,
                prompt_tokens=known.prompt_tokens + row.prompt_tokens,
                completion_tokens=known.completion_tokens + row.completion_tokens,
                cached_requests=known.cached_requests + row.cached_requests,
                cost=known.cost + row.cost,
            )
        )
    return [totals[key] for key in sorted(totals)]


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


def _daily(r: UsageRecord, day: str, shard: str) -> list[Action]:
    """The aggregate's update: its key fields, and ``ADD`` of the record's sums (no read needed)."""
    return [
        DailyItem.tenant_id.set(r.tenant_id),
        DailyItem.day.set(day),
        DailyItem.model.set(r.model),
        DailyItem.gsi1pk.set(daily_shard(r.tenant_id)),
        DailyItem.gsi1sk.set(f"{day}#{r.tenant_id}#{r.model}#{shard}"),
        DailyItem.requests.add(1),
        DailyItem.prompt_tokens.add(r.prompt_tokens),
        DailyItem.completion_tokens.add(r.completion_tokens),
        DailyItem.cached_requests.add(int(r.cached)),
        DailyItem.cost.add(r.cost),
    ]


class DynamoDBUsage:
    """The UsageStore primitives (policy in core.stores).

    Mixin of DynamoDBStore: ``self._table`` is the table, ``self._clock`` gives "now".
    """

    _table: DynamoDBTable
    _clock: Callable[[], float]
    # DynamoDBCounters' (DynamoDBStore mixes both in)
    settlement_writes: Callable[[Sequence[CounterChange]], list[SettleWrite]]
    settlement_updates: Callable[[Sequence[SettleWrite]], list[dict[str, Any]]]
    settlement_refused: Callable[[Sequence[SettleWrite]], list[SettleWrite]]

    def _record_usage(self, record: UsageRecord, day: str, settle: Sequence[CounterChange]) -> bool:
        """Write the record, its daily aggregate and its settlement in ONE transaction.

        False, and nothing written, if the tenant already has a record with this request id.
        """
        sk = aggregate_sk(day, record.model, record.request_id)
        put = self._table.put_kwargs(_usage_item(record, day).serialize(), UsageItem.pk.does_not_exist())
        shard = sk.rsplit("#", 1)[1]
        aggregate = self._table.update_kwargs(f"T#{record.tenant_id}", sk, _daily(record, day, shard))
        writes = self.settlement_writes(settle)
        for round_ in range(CONFLICT_ROUNDS):
            updates = [aggregate, *self.settlement_updates(writes)]
            try:
                self._table.transact([put], updates, uuid.uuid4().hex)  # new each round, kept by retries
                return True
            except ConditionFailed as refused:
                if refused.reasons[:1] == ["ConditionalCheckFailed"]:
                    return False  # the record exists: this request was charged before
                if "ConditionalCheckFailed" in refused.reasons[2:]:
                    writes = self.settlement_refused(writes)  # an expired slot, or a reclaimed lease
                else:
                    conflict_pause(round_)  # TransactionConflict: a concurrent transaction holds an item
        raise unavailable()

    def _load_usage(self, tenant_id: str, request_id: str) -> UsageRecord | None:
        found = self._table.get(usage_pk(tenant_id, request_id), USAGE_SK)
        return _record_from(found) if found is not None else None

    def _daily_usage(self, tenant_id: str | None, start_day: str, end_day: str) -> list[UsageAggregate]:
        """The aggregates' shards added up (``start_day <= end_day``: core checked)."""
        if tenant_id is not None:
            span = Path(["sk"]).between(f"A#{start_day}", f"A#{end_day}$")
            items: Iterable[Item] = self._table.query(f"T#{tenant_id}", span)
        else:
            span = Path(["gsi1sk"]).between(start_day, f"{end_day}$")  # "$" sorts right after "#"
            items = (item for shard in daily_shards() for item in self._table.query(shard, span, index=True))
        return _summed(_aggregate_from(item) for item in items)

    def _list_usage(self, tenant_id: str | None, start: float, end: float, limit: int) -> list[UsageRecord]:
        """The first ``limit`` records, day by day (``limit > 0`` and ``end > start``: core checked)."""
        pairs = sorted({(a.day, a.tenant_id) for a in self._daily_usage(tenant_id, utc_day(start), utc_day(end))})
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
