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
``otherwise`` (``DynamoDBCounters.settlement_refused``).

No partition takes every usage write of a tenant (a partition takes 1,000 WCU/s; so does a GSI partition, and
a throttled GSI throttles the table's writes). A record's shard ``n`` (``usage_shard``: a stable hash of its
request id over ``AGGREGATE_SHARDS``) says where its writes go: the aggregate's shard ``n``, an item in a
partition of its own (``T#<tenant>#A#<n>`` / ``<day>#<model>``, whose gsi1 entry is in ``DAILY#<k>``, ``k``
from the tenant and ``n``: a tenant's shards are in as many gsi1 partitions), and the record's gsi1 entry
(``U#<tenant>#<day>#<n>``). At 10,000 requests/s of one tenant each takes ~1/32 of them. Two transactions
on one item also conflict, which the shards make rare.

Reads: ``get_usage`` is a GetItem; ``daily_usage`` of one tenant is a Query of each of its aggregate
partitions (``sk`` between ``<start>`` and ``<end>$``), of all tenants a Query of each ``DAILY#<k>`` gsi1
partition; the shards are summed per (tenant, day, model). ``list_usage`` finds the (tenant, day, shard)
triples with usage from the aggregates (a record and its aggregate shard are written together), then reads
those gsi1 partitions day by day over ``[start, end)``, merging them: each partition a share of what is
asked at a time (``_first_records``), so that a busy tenant's 32 partitions are not each read for the whole
``limit``. The queries of one step run on a small thread pool. No Scan anywhere.

The layout before the shards (aggregates ``A#<day>#<model>#<n>`` in the tenant's partition ``T#<tenant>``,
8 of them, their gsi1 entries in ``DAILY#<0..3>``; records' gsi1 entries in ``U#<tenant>#<day>``) is still
read, so that nothing written before an upgrade is lost: one tenant's aggregates add the Query of
``T#<tenant>`` (``sk`` between ``A#<start>`` and ``A#<end>$``), all tenants' are found in the ``DAILY#<k>``
partitions already read (``DAILY#0..3`` are among them), and a (tenant, day) with an aggregate of that
layout has its records' ``U#<tenant>#<day>`` read too. An old aggregate's ``sk`` starts with ``A#``, a new
one's with its day.
"""

from __future__ import annotations

import logging
import uuid
import zlib
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from pynamodb.expressions.condition import Condition
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
from adapters.query_threads import each
from core.domain import CounterChange, UsageAggregate, UsageRecord
from core.stores import utc_day
from core.stores.aggregates import summed

USAGE_SK = "USAGE"
AGGREGATE_SHARDS = 32  # a record's aggregate shard and its gsi1 partition of the day (``usage_shard``)
LEGACY_AGGREGATE_PREFIX = "A#"  # the ``sk`` of an aggregate written before the shards had partitions
MIN_SHARE = 10  # records asked of a gsi1 partition at a time, at least (a read unit holds ~10 of them)
_log = logging.getLogger(__name__)


def usage_pk(tenant_id: str, request_id: str) -> str:
    return f"T#{tenant_id}#R#{request_id}"


def usage_shard(request_id: str) -> int:
    """The shard of a record's aggregate and of its gsi1 partition (a stable hash, not Python's salted one)."""
    return zlib.crc32(request_id.encode()) % AGGREGATE_SHARDS


def aggregate_pk(tenant_id: str, shard: int) -> str:
    return f"T#{tenant_id}#A#{shard}"


def aggregate_sk(day: str, model: str) -> str:
    return f"{day}#{model}"


def records_index_pk(tenant_id: str, day: str, shard: int | None) -> str:
    """The gsi1 partition of a tenant's records of a day in a shard; ``None``: the one of the former layout."""
    return f"U#{tenant_id}#{day}" if shard is None else f"U#{tenant_id}#{day}#{shard}"


def _usage_item(r: UsageRecord, day: str) -> UsageItem:
    return UsageItem(
        pk=usage_pk(r.tenant_id, r.request_id),
        sk=USAGE_SK,
        gsi1pk=records_index_pk(r.tenant_id, day, usage_shard(r.request_id)),
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


def _records_partition(item: Item) -> tuple[str, str]:
    """(day, gsi1 partition) of the records an aggregate shard item counts: its shard's, or the former one."""
    tenant, day = item["tenant_id"]["S"], item["day"]["S"]
    if item["sk"]["S"].startswith(LEGACY_AGGREGATE_PREFIX):
        return day, records_index_pk(tenant, day, None)
    return day, records_index_pk(tenant, day, int(item["pk"]["S"].rsplit("#", 1)[1]))


def _daily(r: UsageRecord, day: str, shard: int) -> list[Action]:
    """The aggregate's update: its key fields, and ``ADD`` of the record's sums (no read needed)."""
    return [
        DailyItem.tenant_id.set(r.tenant_id),
        DailyItem.day.set(day),
        DailyItem.model.set(r.model),
        DailyItem.gsi1pk.set(daily_shard(r.tenant_id, shard)),
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
        shard = usage_shard(record.request_id)
        put = self._table.put_kwargs(_usage_item(record, day).serialize(), UsageItem.pk.does_not_exist())
        aggregate = self._table.update_kwargs(
            aggregate_pk(record.tenant_id, shard), aggregate_sk(day, record.model), _daily(record, day, shard)
        )
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

    def _queried(self, queries: Sequence[tuple[str, Condition, bool, int | None]]) -> list[list[Item]]:
        """Each (partition, sort key condition, of gsi1, limit) read whole, at once on the query pool."""
        return each(lambda q: list(self._table.query(q[0], q[1], index=q[2], limit=q[3])), queries)

    def _aggregate_items(self, tenant_id: str | None, start_day: str, end_day: str) -> list[Item]:
        """Every aggregate shard item of the days, of both layouts (``start_day <= end_day``)."""
        if tenant_id is not None:
            span = Path(["sk"]).between(start_day, f"{end_day}$")  # "$" sorts right after "#"
            former = Path(["sk"]).between(
                f"{LEGACY_AGGREGATE_PREFIX}{start_day}", f"{LEGACY_AGGREGATE_PREFIX}{end_day}$"
            )
            queries = [(aggregate_pk(tenant_id, n), span, False, None) for n in range(AGGREGATE_SHARDS)]
            queries.append((f"T#{tenant_id}", former, False, None))
        else:
            span = Path(["gsi1sk"]).between(start_day, f"{end_day}$")
            queries = [(partition, span, True, None) for partition in daily_shards()]  # the former ones among them
        return [item for items in self._queried(queries) for item in items]

    def _daily_usage(self, tenant_id: str | None, start_day: str, end_day: str) -> list[UsageAggregate]:
        """The aggregates' shards added up (``start_day <= end_day``: core checked)."""
        return summed(_aggregate_from(item) for item in self._aggregate_items(tenant_id, start_day, end_day))

    def _list_usage(self, tenant_id: str | None, start: float, end: float, limit: int) -> list[UsageRecord]:
        """The first ``limit`` records, day by day (``limit > 0`` and ``end > start``: core checked)."""
        partitions: defaultdict[str, set[str]] = defaultdict(set)  # day -> gsi1 partitions holding its records
        for item in self._aggregate_items(tenant_id, utc_day(start), utc_day(end)):
            day, partition = _records_partition(item)
            partitions[day].add(partition)
        found: list[UsageRecord] = []
        for day in sorted(partitions):
            found.extend(self._first_records(sorted(partitions[day]), start, end, limit - len(found)))
            if len(found) >= limit:
                break
        return found[:limit]

    def _first_records(self, partitions: Sequence[str], start: float, end: float, want: int) -> list[UsageRecord]:
        """The first ``want`` records of these gsi1 partitions with ``start <= created_at < end``, in order.

        Each partition is asked a share of ``want`` at a time (twice its part, at least ``MIN_SHARE``), from
        where it stopped. A partition that gave all it was asked may hold more: the records up to the lowest
        key such a partition stopped at are all known, and once ``want`` of them are, they are the answer.
        Sort keys are ``<sortable(created_at)>#<request id>``, unique in a partition, in (created_at, id)
        order; ``between`` includes the key a partition stopped at, which is read twice and kept once.
        """
        top = sortable(end)  # "<end>#id" sorts above "<end>": a record at ``end`` is out
        after = dict.fromkeys(partitions, sortable(start))
        known: list[Item] = []
        unread = list(partitions)
        while unread:
            share = max(MIN_SHARE, -(-2 * want // len(unread)))
            queries = [(p, Path(["gsi1sk"]).between(after[p], top), True, share) for p in unread]
            reading, unread = unread, []
            for partition, items in zip(reading, self._queried(queries), strict=True):
                known.extend(item for item in items if item["gsi1sk"]["S"] != after[partition])
                if len(items) == share:  # maybe more
                    after[partition] = items[-1]["gsi1sk"]["S"]
                    unread.append(partition)
            if unread:
                bound = min(after[p] for p in unread)
                if sum(item["gsi1sk"]["S"] <= bound for item in known) >= want:
                    break
        known.sort(key=lambda item: item["gsi1sk"]["S"])
        records = (_record_from(item) for item in known)
        return [record for record in records if start <= record.created_at < end][:want]
