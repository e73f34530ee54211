"""The databases of the scale simulation (``bench.scale_sim``): per-partition rates and what a write costs.

A ``StoreModel`` says, per database: a partition's rate and burst, what one write of an item costs by its
size, the multiplier inside a transaction (``record_usage`` is one: the usage record, the daily aggregate and
the settlement), where an item is stored (``stored_item``) and in which partition (``partition_of``). Sizes
are estimated from the fields: the names, 8 bytes per number, the key (and, on DynamoDB, the adapter's
attribute names ``c_<slot>#<field>``), so today's counters item grows with its per-key fields. Models:

* ``dynamodb``: as ``adapters/aws`` writes it. A tenant's minute and month counters are slots of ONE item
  (``T#<tenant>``/``LIMITS``; a shard ``s`` of the sharded design is assumed to be item ``LIMITS#s``), a
  write costs ceil(size / 1 KB) WCU, twice inside TransactWriteItems; ``try_add_all`` over several items is
  one UpdateItem each (no transaction). A partition is one item: adaptive capacity's split for heat isolates a
  hot item, whose ceiling is then 1,000 WCU/s and 3,000 RCU/s (a read: ceil(size / 4 KB) RCU, strongly
  consistent); so this is the best case for a tenant's shared partition. The daily aggregate is spread over
  the adapter's 32 shards, each in a partition of its own (``T#<tenant>#A#<n>``, ``n`` from the request id).
  ``dynamodb-gsi`` also charges the gsi1 writes (1x): a usage record goes to its tenant and day's GSI partition
  ``U#<tenant>#<day>#<n>`` (one of 32; a time-ordered sort key: never split for heat), an aggregate write
  rewrites its entry in ``DAILY#<k>`` (``k`` from the tenant and ``n``: a tenant's 32 shards in 32 of them). A
  throttled GSI throttles the base table's write.
* ``firestore``: one document per counter item, aggregate shard and usage record; ~1 sustained write per
  second per document (a soft limit, modelled as a token bucket of 1/s holding a burst of 5), 1 unit per
  document write whatever its size; reads are not limited per document. As ``adapters/gcp`` writes it: a
  record's daily aggregate goes to one of its writing instance's own documents (``core.writer_shards``), and
  the record's entry in the ``(shard, created_at)`` index to one of the tenant's 32 index ranges, each taking
  500 writes a second (Firestore's limit for an index over ever-increasing values).
* ``cosmos-tenant``: Cosmos DB with today's partition key, the tenant: every item of the tenant (counters,
  aggregates, usage records) in one logical partition of 10,000 RU/s; a write costs 6 RU per started KB (the
  low end of 6-10 RU for ~1 KB with default indexing), a transactional batch the sum, a point read 1 RU per
  started KB from the same budget. ``cosmos-hier``: a hierarchical key (tenant, bucket): a counter item's
  shard, an aggregate's shard (32, as ``adapters/azure/cosmos_layout.py``), a usage record's own id.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

KB = 1024
NUMBER_BYTES = 8
ALONE = ""  # partition_of's answer for an item alone in its partition (a usage record): never contended
INDEX = "index:"  # a partition named so is an index range: ``StoreModel.index_rate``
COUNTER_KINDS = ("rl", "q")


def counter_parts(item: str) -> tuple[str, str, str, int] | None:
    """(kind, tenant, window, shard) of ``rl|<tenant>|<minute>[|<shard>]`` / ``q|<tenant>|<month>[|<shard>]``."""
    parts = item.split("|")
    if parts[0] not in COUNTER_KINDS or len(parts) not in (3, 4):
        return None
    shard = int(parts[3]) if len(parts) == 4 and parts[3].isdigit() else 0
    return parts[0], parts[1], parts[2], shard


def _stored_by_item(item: str) -> tuple[str, str]:
    """Firestore and Cosmos: one document per counter item (its only slot ``-``)."""
    return f"doc:{item}", "-"


def _stored_dynamodb(item: str) -> tuple[str, str]:
    """DynamoDB: the minute and month of a tenant are slots of its counters item (``dynamodb_slots.locate``)."""
    parts = counter_parts(item)
    if parts is None:
        return f"C#{item}", "-"
    kind, tenant, window, shard = parts
    return (f"T#{tenant}/LIMITS#{shard}" if shard else f"T#{tenant}/LIMITS"), f"{kind}|{window}"


def _by_item(stored: str, tenant: str) -> str:
    return ALONE if stored.startswith("usage:") else stored


def _by_dynamodb_partition(stored: str, tenant: str) -> str:
    """DynamoDB: an aggregate shard's partition holds the shard of every day and model of its tenant."""
    if stored.startswith("agg:"):
        return f"T#{tenant}#A#{stored.rsplit(':', 1)[1]}"
    return _by_item(stored, tenant)


def _by_tenant(stored: str, tenant: str) -> str:
    return f"tenant:{tenant}"


def _by_tenant_bucket(stored: str, tenant: str) -> str:
    """Hierarchical (tenant, bucket): a counter item's shard, an aggregate's shard, a record alone."""
    if stored.startswith("usage:"):
        return ALONE
    if stored.startswith("agg:"):
        return f"{tenant}/agg{stored.rsplit(':', 1)[1]}"
    parts = counter_parts(stored.removeprefix("doc:"))
    return f"{tenant}/shard{parts[3] if parts else 0}"


def _wcu(size: int) -> float:
    return float(math.ceil(size / KB))


def _rcu(size: int) -> float:
    return float(math.ceil(size / (4 * KB)))


def _one(size: int) -> float:
    return 1.0


def _ru_write(size: int) -> float:
    return 6.0 * math.ceil(size / KB)


def _ru_read(size: int) -> float:
    return float(math.ceil(size / KB))


@dataclass(frozen=True)
class StoreModel:
    """One database's per-partition ceiling and costs (see the module docstring)."""

    name: str
    unit: str
    write_rate: float  # units per second per partition
    burst: float  # units a partition's bucket holds
    write_cost: Callable[[int], float]  # units of one write of an item of this many bytes
    txn_multiplier: float  # per item inside a transaction (``record_usage``)
    partition_of: Callable[[str, str], str]  # (stored item, tenant) -> partition; ALONE: its own
    stored_item: Callable[[str], tuple[str, str]]  # counter item -> (stored item, slot in it)
    read_rate: float | None  # units per second per partition; None: reads share the write bucket
    read_cost: Callable[[int], float]
    slotted: bool = False  # DynamoDB's layout: fields ``c_<slot>#<field>`` and an expiry ``x_<slot>`` per slot
    counters_txn: bool = True  # try_add_all over several stored items is one transaction (else one write each)
    gsi: bool = False  # DynamoDB's gsi1 writes are charged too
    aggregate_shards: int = 8
    aggregate_per_writer: bool = False  # the daily aggregate goes to the writing instance's own shards
    index_shards: int = 0  # ranges of the records' time index per tenant (0: not modelled)
    index_rate: float = math.inf  # index entries per second one range takes
    doc_overhead: int = 0  # bytes every stored item carries besides its fields (Cosmos' system properties)
    counter_write_units: float = 1.0  # a counter write's typical cost (reserve 1x, settle in a transaction)

    def item_writes_per_s(self, headroom: float = 0.5) -> float:
        """The counter writes one item takes per second, with ``headroom`` (the sharded design's budget)."""
        return self.write_rate / self.counter_write_units * headroom


MODELS: dict[str, StoreModel] = {
    m.name: m
    for m in (
        StoreModel(
            "dynamodb", "WCU", 1000.0, 1000.0, _wcu, 2.0, _by_dynamodb_partition, _stored_dynamodb, 3000.0, _rcu,
            slotted=True, counters_txn=False, aggregate_shards=32, counter_write_units=4.5,
        ),
        StoreModel(
            "dynamodb-gsi", "WCU", 1000.0, 1000.0, _wcu, 2.0, _by_dynamodb_partition, _stored_dynamodb, 3000.0, _rcu,
            slotted=True, counters_txn=False, gsi=True, aggregate_shards=32, counter_write_units=4.5,
        ),
        StoreModel(
            "firestore", "writes", 1.0, 5.0, _one, 1.0, _by_item, _stored_by_item, math.inf, _one,
            doc_overhead=32, counter_write_units=1.0, aggregate_per_writer=True, index_shards=32, index_rate=500.0,
        ),
        StoreModel(
            "cosmos-tenant", "RU", 10_000.0, 10_000.0, _ru_write, 1.0, _by_tenant, _stored_by_item, None, _ru_read,
            aggregate_shards=32, doc_overhead=200, counter_write_units=15.0,
        ),
        StoreModel(
            "cosmos-hier", "RU", 10_000.0, 10_000.0, _ru_write, 1.0, _by_tenant_bucket, _stored_by_item, None,
            _ru_read, aggregate_shards=32, doc_overhead=200, counter_write_units=15.0,
        ),
    )
}  # fmt: skip


__all__ = ["ALONE", "INDEX", "KB", "MODELS", "NUMBER_BYTES", "StoreModel", "counter_parts"]
