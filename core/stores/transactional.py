"""TransactionalCounters: StorePolicy's counter and usage-write primitives, for a store that has transactions.

A store that can read items and write them back under one lock or transaction (the memory store, SQLite;
Firestore and Cosmos transactions could too) need not write the read-check-write of a conditional counter
change or the settlement of a usage record itself: this mixin implements ``_try_add_counters``,
``_add_counter``, ``_read_counter`` and ``_record_usage`` on four smaller primitives, deciding with
``core.counters`` (``admits``, ``settled_increments``). Put it before ``StorePolicy`` among a store's bases;
a store lacking one of its primitives cannot be instantiated, and Python's error names it.

DynamoDB, which decides on the server in one conditional write, implements StorePolicy's primitives itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Generic, TypeVar

from core.counters import admits, settled_increments
from core.domain import CounterChange, UsageRecord

Tx = TypeVar("Tx")
#: An item as loaded: its fields and its expiry (None: never expires); None when absent or expired.
Loaded = tuple[Mapping[str, int], float | None] | None


def _values(loaded: Loaded) -> dict[str, int]:
    return dict(loaded[0]) if loaded is not None else {}


class TransactionalCounters(ABC, Generic[Tx]):
    """Counters and the settlement of usage records on ``_transaction``, ``_load_item``, ``_save_item`` and
    ``_save_usage``. ``now`` is read from ``_clock`` once per call, before the transaction starts."""

    _clock: Callable[[], float]

    # -- primitives --------------------------------------------------------------------------------------

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Tx]:
        """One atomic unit, serialised with every other on the same items (a lock, ``BEGIN IMMEDIATE``): what
        is saved in it is all written when it exits normally, none of it if it raises."""

    @abstractmethod
    def _load_item(self, tx: Tx, item: str, now: float) -> Loaded:
        """The item's fields and expiry as ``tx`` sees them (its own saves included); None when it is absent or
        expired (``expires_at < now``). Reads only; the mapping is not modified by the caller."""

    @abstractmethod
    def _save_item(
        self, tx: Tx, item: str, fields: Mapping[str, int], expires_at: float | None, *, replace: bool
    ) -> None:
        """With ``replace``, the item becomes exactly ``fields`` expiring at ``expires_at`` (whatever was stored
        under it, an expired item's fields included, is gone). Otherwise the item is live with expiry
        ``expires_at`` and only ``fields`` are set; its other fields keep their values."""

    @abstractmethod
    def _save_usage(self, tx: Tx, record: UsageRecord, day: str) -> bool:
        """In ``tx``: the record, unless its request id exists (then False and nothing written), and its add to
        the (tenant, ``day``, model) aggregate."""

    # -- StorePolicy's primitives, on the ones above -----------------------------------------------------

    def _try_add_counters(self, changes: Sequence[CounterChange]) -> tuple[bool, list[dict[str, int]]]:
        """Every change in one transaction: all apply (each item then expires at its change's ``expires_at``),
        or nothing is written. Each item's values after the write, or as seen when refused."""
        now = self._clock()
        with self._transaction() as tx:
            live = {change.item: self._load_item(tx, change.item, now) for change in changes}
            seen = [_values(live[change.item]) for change in changes]
            if not all(admits(change, values) for change, values in zip(changes, seen, strict=True)):
                return False, seen
            after = []
            for change in changes:
                live[change.item] = self._add(tx, change.item, live[change.item], change.increments, change.expires_at)
                after.append(_values(live[change.item]))
            return True, after

    def _add_counter(self, item: str, deltas: Mapping[str, int], expires_at: float | None) -> None:
        now = self._clock()
        with self._transaction() as tx:
            loaded = self._load_item(tx, item, now)
            self._add(tx, item, loaded, deltas, expires_at if loaded is None else loaded[1])

    def _read_counter(self, item: str) -> dict[str, int]:
        now = self._clock()
        with self._transaction() as tx:
            return _values(self._load_item(tx, item, now))

    def _read_counters(self, items: Sequence[str]) -> list[dict[str, int]]:
        """Several items read in ONE transaction (one lock, one ``BEGIN``, one Firestore batch get)."""
        now = self._clock()
        with self._transaction() as tx:
            return [_values(self._load_item(tx, item, now)) for item in items]

    def _record_usage(self, record: UsageRecord, day: str, settle: Sequence[CounterChange]) -> bool:
        """The record, its aggregate and each settlement's ``settled_increments`` (a live item keeps its
        expiry; an absent one is created expiring at the change's) in one transaction."""
        now = self._clock()
        with self._transaction() as tx:
            if not self._save_usage(tx, record, day):
                return False
            for change in settle:
                loaded = self._load_item(tx, change.item, now)
                increments = settled_increments(change, loaded[0] if loaded is not None else {})
                self._add(tx, change.item, loaded, increments, change.expires_at if loaded is None else loaded[1])
            return True

    def _add(
        self, tx: Tx, item: str, loaded: Loaded, increments: Mapping[str, int], expires_at: float | None
    ) -> Loaded:
        """Save ``increments`` added to the item as loaded, expiring at ``expires_at``: only the changed fields
        unless the item is new or its expiry moves. The item as it is now (None: still absent)."""
        values = _values(loaded)
        for name, increment in increments.items():
            values[name] = values.get(name, 0) + increment
        if loaded is None and not values:
            return None  # nothing to create
        if loaded is None or loaded[1] != expires_at:
            self._save_item(tx, item, values, expires_at, replace=True)
        elif increments:
            self._save_item(tx, item, {name: values[name] for name in increments}, expires_at, replace=False)
        return values, expires_at


__all__ = ["Loaded", "TransactionalCounters"]
