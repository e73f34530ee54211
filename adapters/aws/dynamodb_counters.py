"""DynamoDBCounters: the CounterStore role, with a tenant's counters in ONE item (one more per busy shard).

core/limits.py names its counter items ``<kind>|<tenant>|<window>``: ``rl|acme|29384567`` (the minute) and
``q|acme|2026-11`` (the month). Each is a *slot* ``<kind>|<window>`` of the tenant's counters item, ``pk =
T#<tenant>``, ``sk = LIMITS``, so a reservation over the minute and the month is ONE conditional UpdateItem. A
busy tenant's shards (``<kind>|<tenant>|<window>|<shard>``) are slots of ``pk = T#<tenant>#S#<shard>``: one
item per shard, so each takes its own partition's write units, and a reservation on a shard is again ONE
UpdateItem. A slot keeps each field in a top-level number ``c_<slot>#<field>`` (``ADD`` works on top-level
attributes only) and its expiry in ``x_<slot>`` (a float, compared exactly). An item named otherwise is the
only slot ``-`` of an item of its own, ``pk = C#<item>``.

A slot whose expiry is past counts as absent, exactly like the SQLite and memory stores' expired rows. Core
never writes a window after it ended (windows are named after the time), so an expired slot is only ever
read, then removed: each UpdateItem returns the item as it was (``ALL_OLD``, on refusal too), and the slots
it shows expired are removed (``REMOVE``, conditioned on being still expired) by the next write this process
makes to that item. A tenant's item so holds the current minute or two and the month. It has no TTL: the
month's slot outlives many minutes, and one item per tenant costs nothing to keep.

``try_add_all`` over several DynamoDB items (items of different tenants, or not named by core) writes them
one after the other and undoes the written ones when a later one refuses, as the port allows. ``add`` (a
settlement, an undo) is one UpdateItem too. Whether a slot is live is the UpdateItem's own condition; an
expired slot found there is cleared (a conditional REMOVE) before writing again.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action

from adapters.aws.dynamodb_slots import (
    attributes_of,
    both,
    expiry_attribute,
    expiry_of,
    field_attribute,
    gone_or_expired,
    is_expired,
    live,
    locate,
    path_of,
    plus,
    slots_in,
    values_of,
    within,
)
from adapters.aws.dynamodb_table import ConditionFailed, DynamoDBTable, Item
from core.counters import admits
from core.domain import CounterChange
from core.errors import ServiceUnavailable

SK = "LIMITS"
# Each extra round means an expired slot was cleared, or a removal raced another writer: a few are plenty.
_ROUNDS = 8
_STALE_MEMORY = 10_000  # items whose expired slots this process remembers, at most
# Expired slots with at most this many attributes go inside the reservation's own UpdateItem; bigger ones (a
# minute in which a tenant used hundreds of keys) in separate writes of at most _REMOVALS_PER_WRITE names, so
# that no UpdateExpression nears DynamoDB's 4 KB.
_INLINE_REMOVALS = 32
_REMOVALS_PER_WRITE = 50  # moto's expression parser fails somewhere below 100 names; DynamoDB takes more
_log = logging.getLogger(__name__)


def _contended(pk: str) -> ServiceUnavailable:
    return ServiceUnavailable(
        f"the counters of {pk!r} are contended; retry shortly", code="store_unavailable", headers={"retry-after": "1"}
    )


def _by_pk(writes: Sequence[SettleWrite]) -> dict[str, list[SettleWrite]]:
    groups: dict[str, list[SettleWrite]] = {}
    for w in writes:
        groups.setdefault(w.pk, []).append(w)
    return groups


def _past(group: Sequence[SettleWrite], slot: str, now: float) -> bool:
    """The writes to ``slot`` would create it already expired: its window is over, there is nothing to settle."""
    return any(w.write.slot == slot and w.write.expires_at is not None and w.write.expires_at < now for w in group)


class _Write(NamedTuple):
    """One slot's part of an UpdateItem: what to add, under which limits, and its expiry."""

    slot: str
    increments: Mapping[str, int]
    limits: Mapping[str, int]
    expires_at: float | None
    floors: Mapping[str, int] = {}


class SettleWrite(NamedTuple):
    """One change of a settlement: the item, its slot write, and what to add instead if its conditions fail."""

    pk: str
    write: _Write
    otherwise: Mapping[str, int] | None


class DynamoDBCounters:
    """Mixin of DynamoDBStore: ``self._table`` is the table, ``self._clock`` gives "now"."""

    _table: DynamoDBTable
    _clock: Callable[[], float]
    _stale_lock: threading.Lock
    _stale_slots: dict[str, dict[str, list[str]]]  # pk -> {expired slot: its attributes}, as last seen here

    def _init_counters(self) -> None:
        self._stale_lock = threading.Lock()
        self._stale_slots = {}

    def _note_stale(self, pk: str, item: Item | None, now: float, written: Iterable[str]) -> None:
        expired = {s: attributes_of(item, s) for s in slots_in(item) - set(written) if is_expired(item, s, now)}
        with self._stale_lock:
            stale = self._stale_slots
            if expired:
                if len(stale) >= _STALE_MEMORY:
                    stale.clear()
                stale[pk] = expired
            else:
                stale.pop(pk, None)

    def _take_stale(self, pk: str, keep: Iterable[str]) -> dict[str, list[str]]:
        with self._stale_lock:
            found = self._stale_slots.pop(pk, {})
        return {slot: names for slot, names in found.items() if slot not in set(keep)}

    # -- the conditional write ------------------------------------------------------------------------

    def _write(self, pk: str, writes: Sequence[_Write]) -> tuple[bool, list[dict[str, int]]]:
        """ONE UpdateItem adding every slot's increments if every slot is live and within its limits.

        Returns (applied, each slot's values before the write or as seen when refused). An expired slot it
        finds is cleared and the write tried again; a refusal by the limits is final.
        """
        for _ in range(_ROUNDS):
            now = self._clock()
            actions: list[Action] = []
            condition: Condition | None = None
            for w in writes:
                actions += [path_of(field_attribute(w.slot, n)).add(int(v)) for n, v in w.increments.items()]
                expiry = path_of(expiry_attribute(w.slot))
                actions.append(expiry.set(w.expires_at) if w.expires_at is not None else expiry.remove())
                condition = both(condition, both(live(w.slot, now), within(w.slot, w.increments, w.limits, w.floors)))
            stale = self._take_stale(pk, (w.slot for w in writes))
            inline = stale if sum(map(len, stale.values())) <= _INLINE_REMOVALS else {}
            for slot, names in inline.items():
                actions += [path_of(name).remove() for name in names]
                condition = both(condition, gone_or_expired(slot, now))
            try:
                old = self._table.update(pk, SK, actions, condition, return_values="ALL_OLD", old_on_failure=True)
            except ConditionFailed as refused:
                seen = refused.item
                expired = [w.slot for w in writes if is_expired(seen, w.slot, now)]
                if expired:
                    self._clear(pk, seen, expired)
                    continue
                if inline:
                    continue  # perhaps refused for a removal only: try once more without it
                return False, [values_of(seen, w.slot) for w in writes]
            if stale and not inline:
                self._remove_stale(pk, stale, now)
            self._note_stale(pk, old, now, (w.slot for w in writes))
            return True, [values_of(old, w.slot) for w in writes]
        raise _contended(pk)

    def _remove_stale(self, pk: str, stale: Mapping[str, Sequence[str]], now: float) -> None:
        """Remove big expired slots in writes of their own; best effort (what stays is removed another time)."""
        for slot, names in stale.items():
            for start in range(0, len(names), _REMOVALS_PER_WRITE):
                actions = [path_of(name).remove() for name in names[start : start + _REMOVALS_PER_WRITE]]
                try:
                    self._table.update(pk, SK, actions, gone_or_expired(slot, now))
                except ConditionFailed:
                    return  # revived meanwhile: not ours to remove
                except Exception:  # housekeeping must never fail the reservation it follows
                    _log.warning("could not remove an expired counter slot; it is tried again later", exc_info=True)
                    return

    def _clear(self, pk: str, seen: Item | None, slots: Sequence[str]) -> None:
        """Remove expired slots as they were seen; if one changed meanwhile, the caller reads it again."""
        if not slots:
            return
        actions: list[Action] = []
        condition: Condition | None = None
        for slot in slots:
            actions += [path_of(name).remove() for name in attributes_of(seen, slot)]
            expiry, seen_expiry = path_of(expiry_attribute(slot)), expiry_of(seen, slot)
            same: Condition = expiry.does_not_exist() if seen_expiry is None else expiry == float(seen_expiry)
            condition = both(condition, same)
        with contextlib.suppress(ConditionFailed):
            self._table.update(pk, SK, actions, condition)

    # -- CounterStore primitives (policy in core.stores) ------------------------------------------------

    def _try_add_counters(self, changes: Sequence[CounterChange]) -> tuple[bool, list[dict[str, int]]]:
        """All changes or none: ONE UpdateItem when they are slots of one item (a tenant's minute and month).

        Changes on several items are written item by item; when one refuses, the ones written before it are
        undone. A concurrent reservation may then see increments about to be undone (and be refused for
        them), but no interleaving can push a counter past its limit: each item's check-and-add is atomic.
        """
        groups: dict[str, list[tuple[int, _Write]]] = {}
        for index, change in enumerate(changes):
            slot = locate(change.item)
            write = _Write(slot.name, change.increments, change.limits, change.expires_at, change.floors)
            groups.setdefault(slot.pk, []).append((index, write))
        before: dict[int, dict[str, int]] = {}
        done: list[tuple[str, list[_Write]]] = []
        for pk, entries in groups.items():
            writes = [w for _, w in entries]
            try:
                ok, seen = self._write(pk, writes)
            except BaseException:
                with contextlib.suppress(Exception):  # best effort: the error that stopped us is the news
                    self._undo(done)
                raise
            before.update({index: values for (index, _), values in zip(entries, seen, strict=True)})
            if not ok:
                self._undo(done)
                return False, [before[i] if i in before else self._read_counter(c.item) for i, c in enumerate(changes)]
            done.append((pk, writes))
        return True, [plus(before[i], c.increments) for i, c in enumerate(changes)]

    def _undo(self, done: Sequence[tuple[str, Sequence[_Write]]]) -> None:
        for pk, writes in done:
            self._add(pk, [w._replace(increments={n: -int(v) for n, v in w.increments.items()}) for w in writes])

    def _add_counter(self, item: str, deltas: Mapping[str, int], expires_at: float | None) -> None:
        """A live item keeps its own expiry. One UpdateItem; two more when the slot had expired (cleared first)."""
        slot = locate(item)
        self._add(slot.pk, [_Write(slot.name, deltas, {}, expires_at)])

    # -- a settlement, written in the usage record's transaction ----------------------------------------

    def settlement_writes(self, changes: Sequence[CounterChange]) -> list[SettleWrite]:
        """A settlement's changes as slot writes (``core.counters.settled_increments`` decides ``otherwise``)."""
        writes = []
        for change in changes:
            slot = locate(change.item)
            write = _Write(slot.name, change.increments, change.limits, change.expires_at, change.floors)
            writes.append(SettleWrite(slot.pk, write, change.otherwise))
        return writes

    def settlement_updates(self, writes: Sequence[SettleWrite]) -> list[dict[str, Any]]:
        """The Updates of a transaction that apply ``writes``: one per DynamoDB item, each conditioned on its slots
        being live and on the conditional writes' limits and floors. A slot keeps its expiry (if_not_exists)."""
        now = self._clock()
        updates = []
        for pk, group in _by_pk(writes).items():
            actions: list[Action] = []
            condition: Condition | None = None
            for w in (settle.write for settle in group):
                actions += [path_of(field_attribute(w.slot, n)).add(int(v)) for n, v in w.increments.items() if v]
                if w.expires_at is not None:
                    expiry = path_of(expiry_attribute(w.slot))
                    actions.append(expiry.set(expiry | w.expires_at))
                condition = both(condition, both(live(w.slot, now), within(w.slot, w.increments, w.limits, w.floors)))
            if actions:
                updates.append(self._table.update_kwargs(pk, SK, actions, condition))
        return updates

    def settlement_refused(self, writes: Sequence[SettleWrite]) -> list[SettleWrite]:
        """``writes`` after the transaction refused one of them: reads each item once and drops a write to a slot
        that expired with its window (nothing left to settle), clears a slot expired but still to be written, and
        turns a conditional write whose conditions fail (its lease was reclaimed) into its ``otherwise``."""
        now = self._clock()
        kept: list[SettleWrite] = []
        for pk, group in _by_pk(writes).items():
            item = self._table.get(pk, SK)
            expired = [w.write.slot for w in group if is_expired(item, w.write.slot, now)]
            self._clear(pk, item, [s for s in expired if not _past(group, s, now)])
            for w in group:
                if w.write.slot in expired and _past([w], w.write.slot, now):
                    continue
                values = {} if w.write.slot in expired else values_of(item, w.write.slot)
                change = CounterChange("", dict(w.write.increments), dict(w.write.limits), floors=dict(w.write.floors))
                if admits(change, values):
                    kept.append(w)
                elif w.otherwise:
                    kept.append(SettleWrite(pk, w.write._replace(increments=w.otherwise, limits={}, floors={}), None))
        return kept

    def _add(self, pk: str, writes: Sequence[_Write]) -> None:
        """ADD to each live or absent slot; an expired slot is cleared first, or skipped when ``expires_at``
        is past too (the item it would create counts as absent already)."""
        pending = list(writes)
        for _ in range(_ROUNDS):
            if not pending:
                return
            now = self._clock()
            actions: list[Action] = []
            condition: Condition | None = None
            for w in pending:
                actions += [path_of(field_attribute(w.slot, n)).add(int(v)) for n, v in w.increments.items()]
                if w.expires_at is not None:
                    expiry = path_of(expiry_attribute(w.slot))
                    actions.append(expiry.set(expiry | w.expires_at))  # a live slot keeps its own expiry
                condition = both(condition, live(w.slot, now))
            try:
                self._table.update(pk, SK, actions, condition, old_on_failure=True)
                return
            except ConditionFailed as refused:
                seen = refused.item
            expired = [w for w in pending if is_expired(seen, w.slot, now)]
            past = [w for w in expired if w.expires_at is not None and w.expires_at < now]
            pending = [w for w in pending if w not in past]
            self._clear(pk, seen, [w.slot for w in expired if w not in past])  # nothing when all were past
        raise _contended(pk)

    def _read_counter(self, item: str) -> dict[str, int]:
        slot = locate(item)
        found = self._table.get(slot.pk, SK)
        if found is None or is_expired(found, slot.name, self._clock()):
            return {}
        return values_of(found, slot.name)

    def _read_counters(self, items: Sequence[str]) -> list[dict[str, int]]:
        """Every item in one BatchGetItem (a window's shards are items of their own partitions)."""
        slots = [locate(item) for item in items]
        found = self._table.get_many([(slot.pk, SK) for slot in slots])
        now = self._clock()
        values = []
        for slot in slots:
            record = found.get((slot.pk, SK))
            values.append({} if record is None or is_expired(record, slot.name, now) else values_of(record, slot.name))
        return values
