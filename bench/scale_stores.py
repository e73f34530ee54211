"""A MemoryStore that throttles like a real database, for the scale simulation (``bench.scale_sim``).

``ThrottlingStore`` is the in-memory store (``adapters.local.memory_store``) whose write primitives
(``_try_add_counters``, ``_add_counter``, ``_record_usage``) and counter reads (``_read_counter``) first charge
what the write would cost in the modelled database to a token bucket per partition, on a SIMULATED clock (the
callable the store is given). A write that does not fit in every bucket it touches raises
``core.errors.StoreThrottled`` before anything is applied (all or nothing) and is counted as throttled; one
that fits is charged, then applied by the memory store, whose answer (refused by a limit or not) stays the
same: a refused conditional write costs its units all the same (DynamoDB charges it; so does Cosmos DB).

The models (DynamoDB, Firestore, Cosmos DB: rates, costs, where an item is stored and in which partition) are
in ``bench.scale_models``. Documents, cache entries, tenants and keys are not charged: no request of the
simulation writes them.
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields

from adapters.local.memory_store import MemoryStore
from bench.scale_models import ALONE, INDEX, MODELS, NUMBER_BYTES, StoreModel, counter_parts
from core.domain import CounterChange, UsageRecord
from core.errors import StoreThrottled
from core.writer_shards import WriterShards

DYNAMODB_DAILY_SHARDS = 32  # adapters.aws.dynamodb_models.DAILY_SHARDS: the all-tenant aggregates' gsi1 partitions


class _Bucket:
    __slots__ = ("at", "cap", "rate", "tokens")

    def __init__(self, rate: float, cap: float, now: float) -> None:
        self.rate, self.cap, self.tokens, self.at = rate, cap, cap, now

    def level(self, now: float) -> float:
        if now > self.at:
            self.tokens = min(self.cap, self.tokens + (now - self.at) * self.rate)
            self.at = now
        return self.tokens


def _per_second() -> defaultdict[int, float]:
    return defaultdict(float)  # units by whole simulated second (module-level: a run's stats are pickled)


@dataclass
class StoreStats:
    """What one run cost the store. Per-second figures are by whole simulated seconds since ``t0``."""

    t0: float
    calls: Counter[str] = field(default_factory=Counter)  # database API calls by primitive
    writes: int = 0
    throttled_writes: int = 0
    reads: int = 0
    throttled_reads: int = 0
    write_units: float = 0.0  # consumed (a throttled attempt consumes nothing)
    read_units: float = 0.0
    demand: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(_per_second))  # attempted
    served: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(_per_second))  # consumed

    limits: dict[str, float] = field(default_factory=dict)  # units per second of each partition seen

    def busiest(self) -> tuple[str, float, float, float]:
        """The partition with the most units attempted in one second against its limit: (name, attempted,
        consumed in its busiest second, limit), per second."""
        best = ("-", 0.0, 0.0, 1.0)
        for name, per_s in self.demand.items():
            peak = max(per_s.values(), default=0.0)
            if peak / self.limits[name] > best[1] / best[3]:
                best = (name, peak, max(self.served[name].values(), default=0.0), self.limits[name])
        return best


def _record_size(record: UsageRecord, overhead: int) -> int:
    size = overhead + len(record.tenant_id) + len(record.request_id) + 64  # key and index attributes
    for f in fields(record):
        value = getattr(record, f.name)
        size += len(f.name) + (len(value) if isinstance(value, str) else NUMBER_BYTES)
    return size


class ThrottlingStore(MemoryStore):
    """A MemoryStore whose counter and usage writes are charged to per-partition token buckets (single-threaded:
    the simulated clock is the caller's)."""

    def __init__(self, model: StoreModel, clock: Callable[[], float]) -> None:
        super().__init__(clock=clock)
        self.model = model
        self.stats = StoreStats(clock())
        self._buckets: dict[str, _Bucket] = {}
        self._read_buckets: dict[str, _Bucket] = {}
        self._members: dict[str, set[str]] = defaultdict(set)  # stored item -> counter items in it
        self._sizes: dict[str, int] = {}  # stored item -> bytes, as last written
        self._sizes_minute = -1
        # The writer of the next usage record: the simulated instance making the call (the simulation is
        # single-threaded), for a model whose aggregates go to the writer's own shards.
        self.writer: WriterShards | None = None

    # -- sizes ------------------------------------------------------------------------------------------

    def _full_size(self, stored: str) -> int:
        """Bytes of a stored counter item: its key and the live counter items' fields in it."""
        now = self._clock()
        size = len(stored) + self.model.doc_overhead
        for item in self._members[stored]:
            loaded = self._load_item(self._s, item, now)
            if loaded is not None and loaded[0]:
                size += self._fields_size(item, loaded[0], new_item=True)
        return size

    def _fields_size(self, item: str, names: Iterable[str], *, new_item: bool) -> int:
        """Bytes of these fields of a counter item (and of its expiry, when the item is new in its stored one)."""
        slot = self.model.stored_item(item)[1]
        slotted = self.model.slotted
        per_field = NUMBER_BYTES + (len(slot) + 3 if slotted else 0)  # DynamoDB: ``c_<slot>#<field>``
        names = list(names)
        size = sum(len(n) for n in names) + per_field * len(names)
        if new_item:
            size += (len(slot) + 2 if slotted else len("expires_at")) + NUMBER_BYTES
        return size

    def _item_size(self, stored: str, adding: Mapping[str, Iterable[str]] | None = None) -> int:
        """Bytes of a stored counter item after ``adding`` (counter item -> field names) is written. The size
        as stored is kept between writes (forgotten every simulated minute, when minute items expire)."""
        now = self._clock()
        if int(now // 60) != self._sizes_minute:
            self._sizes.clear()
            self._sizes_minute = int(now // 60)
        size = self._sizes.get(stored)
        if size is None:
            size = self._sizes[stored] = self._full_size(stored)
        for item, names in (adding or {}).items():
            loaded = self._load_item(self._s, item, now)
            have = loaded[0] if loaded is not None else {}
            new = [n for n in names if n not in have]
            if new:
                size += self._fields_size(item, new, new_item=not have)
        return size

    def _counter_charges(
        self, changes: Iterable[tuple[str, Iterable[str]]], multiplier: float
    ) -> tuple[list[tuple[str, float]], dict[str, int]]:
        """(partition, units) of writing these (counter item, field names), one write per stored item; and
        each stored item's size once written."""
        by_stored: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        for item, names in changes:
            by_stored[self.model.stored_item(item)[0]][item].update(names)
        sizes = {stored: self._item_size(stored, adding) for stored, adding in by_stored.items()}
        charges = [
            (self._partition(stored, _tenant(next(iter(adding)))), self.model.write_cost(sizes[stored]) * multiplier)
            for stored, adding in by_stored.items()
        ]
        return charges, sizes

    def _partition(self, stored: str, tenant: str) -> str:
        return self.model.partition_of(stored, tenant)

    # -- the buckets ------------------------------------------------------------------------------------

    def _charge(self, charges: Sequence[tuple[str, float]], *, read: bool = False) -> None:
        """Take every charge from its partition's bucket, or none of them and raise StoreThrottled."""
        now = self._clock()
        second = int(now - self.stats.t0)
        model = self.model
        shared = not read or model.read_rate is None
        rate = model.write_rate if shared else model.read_rate
        assert rate is not None
        buckets = self._buckets if shared else self._read_buckets
        totals: dict[str, float] = defaultdict(float)
        for partition, units in charges:
            totals[partition] += units
        ok = True
        label = "" if shared else " (reads)"
        for partition, units in totals.items():
            here = model.index_rate if partition.startswith(INDEX) else rate
            if partition == ALONE or math.isinf(here):
                continue
            bucket = buckets.get(partition)
            if bucket is None:
                cap = here if partition.startswith(INDEX) or not shared else model.burst
                bucket = buckets[partition] = _Bucket(here, cap, now)
                self.stats.limits[partition + label] = here
            self.stats.demand[partition + label][second] += units
            if bucket.level(now) < min(units, bucket.cap):
                ok = False
        if read:
            self.stats.reads += 1
        else:
            self.stats.writes += 1
        if not ok:
            if read:
                self.stats.throttled_reads += 1
            else:
                self.stats.throttled_writes += 1
            raise StoreThrottled()
        for partition, units in totals.items():
            if partition in buckets:
                buckets[partition].tokens -= units
                self.stats.served[partition + label][second] += units
            if read:
                self.stats.read_units += units
            else:
                self.stats.write_units += units

    def _note(self, items: Iterable[str]) -> None:
        for item in items:
            self._members[self.model.stored_item(item)[0]].add(item)

    def counter_items(self) -> list[str]:
        """Every counter item written so far (live or expired)."""
        return sorted(item for items in self._members.values() for item in items)

    def peek(self, item: str) -> dict[str, int]:
        """A counter item's live fields, not charged and not counted."""
        return MemoryStore._read_counter(self, item)

    # -- the primitives ---------------------------------------------------------------------------------

    def _try_add_counters(self, changes: Sequence[CounterChange]) -> tuple[bool, list[dict[str, int]]]:
        stored = {self.model.stored_item(c.item)[0] for c in changes}
        txn = self.model.counters_txn and len(stored) > 1
        self.stats.calls["try_add_all"] += 1 if txn or self.model.counters_txn else len(stored)
        multiplier = self.model.txn_multiplier if txn else 1.0
        charges, sizes = self._counter_charges(((c.item, c.increments) for c in changes), multiplier)
        self._charge(charges)
        self._note(c.item for c in changes)
        ok, values = super()._try_add_counters(changes)
        if ok:
            self._sizes.update(sizes)
        return ok, values

    def _add_counter(self, item: str, deltas: Mapping[str, int], expires_at: float | None) -> None:
        self.stats.calls["add"] += 1
        charges, sizes = self._counter_charges([(item, deltas)], 1.0)
        self._charge(charges)
        self._note([item])
        super()._add_counter(item, deltas, expires_at)
        self._sizes.update(sizes)

    def _read_counter(self, item: str) -> dict[str, int]:
        self.stats.calls["read"] += 1
        stored = self.model.stored_item(item)[0]
        cost = self.model.read_cost(self._item_size(stored))
        self._charge([(self._partition(stored, _tenant(item)), cost)], read=True)
        return super()._read_counter(item)

    def _read_counters(self, items: Sequence[str]) -> list[dict[str, int]]:
        """One batched read (BatchGetItem, BatchGetDocuments), each item's read units charged."""
        self.stats.calls["read"] += 1
        charges = []
        for item in items:
            stored = self.model.stored_item(item)[0]
            charges.append((self._partition(stored, _tenant(item)), self.model.read_cost(self._item_size(stored))))
        self._charge(charges, read=True)
        return super()._read_counters(items)

    def _record_usage(self, record: UsageRecord, day: str, settle: Sequence[CounterChange]) -> bool:
        self.stats.calls["record_usage"] += 1
        model, tenant, mult = self.model, record.tenant_id, self.model.txn_multiplier
        shard = zlib.crc32(record.request_id.encode()) % model.aggregate_shards
        writer_shard = self.writer.shard(tenant) if model.aggregate_per_writer and self.writer else str(shard)
        usage, aggregate = f"usage:{tenant}:{record.request_id}", f"agg:{tenant}:{day}:{record.model}:{writer_shard}"
        record_size = _record_size(record, model.doc_overhead)
        aggregate_size = model.doc_overhead + len(aggregate) + len(tenant) + len(day) + len(record.model) + 150
        settled, sizes = self._counter_charges(((c.item, c.increments) for c in settle), mult)
        charges = [
            (self._partition(usage, tenant), model.write_cost(record_size) * mult),
            (self._partition(aggregate, tenant), model.write_cost(aggregate_size) * mult),
            *settled,
        ]
        if model.index_shards:  # the record's entry in its index range (not in the transaction's multiplier)
            index_shard = zlib.crc32(record.request_id.encode()) % model.index_shards
            charges.append((f"{INDEX}{tenant}:usage:{index_shard}", 1.0))
        if model.gsi:  # the index entries (not doubled by the transaction), as dynamodb_usage keys them
            daily = (zlib.crc32(tenant.encode()) + shard) % DYNAMODB_DAILY_SHARDS
            charges.append((f"gsi1:U#{tenant}#{day}#{shard}", model.write_cost(record_size)))
            charges.append((f"gsi1:DAILY#{daily}", model.write_cost(aggregate_size)))
        self._charge(charges)
        self._note(c.item for c in settle)
        written = super()._record_usage(record, day, settle)
        if written:
            self._sizes.update(sizes)
        return written


def _tenant(item: str) -> str:
    parts = counter_parts(item)
    return parts[1] if parts is not None else item.split("|")[1] if "|" in item else item


__all__ = ["ALONE", "MODELS", "StoreModel", "StoreStats", "ThrottlingStore", "counter_parts"]
