"""DynamoDBCounters: the CounterStore role, one conditional UpdateItem per counter item.

A counter item is ``pk = C#<item>``, ``sk = C``; each field is a top-level number ``c_<field>`` (``ADD``
only works on top-level attributes) and ``expires_at`` is the TTL. DynamoDB deletes expired items late
(hours, even days), so an item whose ``expires_at`` is past counts as absent, exactly like the SQLite and
memory stores: the first write that finds it expired replaces it whole, with a PutItem conditioned on it
still being expired (or gone), so that of two racing writers only one replaces it.

``try_add`` asks for ``ALL_OLD`` both ways: on success the values after are the old ones plus the
increments (the update is atomic), on refusal they are what the condition saw. ``try_add_all`` writes
its items one after the other and undoes the written ones when a later one refuses (which the port
allows): a TransactWriteItems could not say what the values became without another read, and would make
every reservation of a tenant conflict with the others on its hot minute item.

Expiry is compared in whole seconds (``expires_at`` is the TTL attribute, which DynamoDB wants in
whole epoch seconds, rounded up here). Core's counter windows end on whole seconds, so this is exact.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.operand import Path
from pynamodb.expressions.update import Action

from adapters.aws.dynamodb_models import COUNTER_PREFIX, TTL_ATTRIBUTE, ttl_seconds
from adapters.aws.dynamodb_table import ConditionFailed, DynamoDBTable, Item
from core.domain import CounterChange
from core.errors import ServiceUnavailable

SK = "C"
# Each extra round means another writer replaced an expired item in between: a handful is plenty.
_ROUNDS = 8


def counter_pk(item: str) -> str:
    return f"C#{item}"


def attribute_of(name: str) -> str:
    """The attribute holding a counter field: ``c_<name>``, with "%", "[" and "]" percent-encoded.

    pynamodb reads "[n]" in a path segment as a list index, so brackets cannot appear as they are;
    everything else (".", "|", "@", "#", ":") is sent verbatim through ``ExpressionAttributeNames``.
    """
    return COUNTER_PREFIX + name.replace("%", "%25").replace("[", "%5B").replace("]", "%5D")


def field_of(attribute: str) -> str:
    return attribute[len(COUNTER_PREFIX) :].replace("%5D", "]").replace("%5B", "[").replace("%25", "%")


def _field(name: str) -> Path:
    return Path([attribute_of(name)])  # a one-segment list: "." in the name is not a map dereference


def _adds(increments: Mapping[str, int]) -> list[Action]:
    return [_field(name).add(int(value)) for name, value in increments.items()]


def _expiry() -> Path:
    return Path([TTL_ATTRIBUTE])


def _live(now: float) -> Condition:
    """The item is absent, never expires, or has not expired (``expires_at >= now`` is still live)."""
    live: Condition = _expiry().does_not_exist() | (_expiry() >= now)
    return live


def exists_and_live(now: float) -> Condition:
    condition: Condition = Path(["pk"]).exists() & _live(now)
    return condition


def absent_or_expired(now: float) -> Condition:
    condition: Condition = Path(["pk"]).does_not_exist() | (_expiry() < now)
    return condition


def _within(increments: Mapping[str, int], limits: Mapping[str, int]) -> Condition | None:
    """``(attribute_not_exists(f) AND inc <= lim) OR f <= lim - inc`` for every limited field.

    ``inc <= lim`` is known here, so an absent field either passes (kept as ``attribute_not_exists``)
    or cannot (dropped: an absent field then fails ``f <= lim - inc``).
    """
    condition: Condition | None = None
    for name, limit in limits.items():
        inc = int(increments.get(name, 0))
        clause = _field(name) <= limit - inc
        if inc <= limit:
            clause = _field(name).does_not_exist() | clause
        condition = clause if condition is None else condition & clause
    return condition


def values_of(item: Item | None) -> dict[str, int]:
    """The counter fields of a raw item."""
    if not item:
        return {}
    return {field_of(name): int(Decimal(value["N"])) for name, value in item.items() if name.startswith(COUNTER_PREFIX)}


def expired(item: Item | None, now: float) -> bool:
    """Whether a raw item has an expiry and it is past (``expires_at < now``)."""
    if not item or TTL_ATTRIBUTE not in item:
        return False
    return Decimal(item[TTL_ATTRIBUTE]["N"]) < Decimal(repr(now))


def fresh_item(item: str, values: Mapping[str, int], expires_at: float | None) -> Item:
    """A whole counter item holding ``values`` (what replaces an absent or expired one)."""
    raw: Item = {"pk": {"S": counter_pk(item)}, "sk": {"S": SK}}
    raw.update({attribute_of(name): {"N": str(int(v))} for name, v in values.items()})
    if expires_at is not None:
        raw[TTL_ATTRIBUTE] = {"N": str(ttl_seconds(expires_at))}
    return raw


def settle_update(table: DynamoDBTable, change: CounterChange, now: float) -> dict[str, Any]:
    """A transaction's unconditional add to a live item (it keeps its expiry); refused if absent or expired."""
    return table.update_kwargs(counter_pk(change.item), SK, _adds(change.increments), exists_and_live(now))


def settle_put(table: DynamoDBTable, change: CounterChange, now: float) -> dict[str, Any]:
    """A transaction's replacement of an absent or expired item by one holding just the deltas."""
    return table.put_kwargs(fresh_item(change.item, change.increments, change.expires_at), absent_or_expired(now))


def _plus(values: Mapping[str, int], increments: Mapping[str, int]) -> dict[str, int]:
    after = dict(values)
    for name, inc in increments.items():
        after[name] = after.get(name, 0) + int(inc)
    return after


def _contended(item: str) -> ServiceUnavailable:
    return ServiceUnavailable(f"the counter item {item!r} is contended; retry shortly", code="store_unavailable")


class DynamoDBCounters:
    """Mixin of DynamoDBStore: ``self._table`` is the table, ``self._clock`` gives "now"."""

    _table: DynamoDBTable
    _clock: Callable[[], float]

    def try_add(
        self,
        item: str,
        increments: Mapping[str, int],
        limits: Mapping[str, int],
        expires_at: float,
    ) -> tuple[bool, dict[str, int]]:
        """Add every increment if every limited field stays <= its limit; else write nothing.

        One UpdateItem: ``ADD`` of every increment, ``SET expires_at``, conditioned on the item being live
        and on every limit. Only when the item it finds has expired does a second call (a conditional
        PutItem) replace it.
        """
        ok, _, values = self._try_add(CounterChange(item, dict(increments), dict(limits), expires_at))
        return ok, values

    def _try_add(self, change: CounterChange) -> tuple[bool, dict[str, int], dict[str, int]]:
        """(applied, values before, values after); a refusal's before and after are the values it saw."""
        pk, increments, limits = counter_pk(change.item), change.increments, change.limits
        expiry = _expiry().set(ttl_seconds(change.expires_at)) if change.expires_at is not None else _expiry().remove()
        for _ in range(_ROUNDS):
            now = self._clock()
            condition = _live(now)
            within = _within(increments, limits)
            if within is not None:
                condition &= within
            try:
                old = self._table.update(
                    pk, SK, [*_adds(increments), expiry], condition, return_values="ALL_OLD", old_on_failure=True
                )
                before = values_of(old)
                return True, before, _plus(before, increments)
            except ConditionFailed as refused:
                if not expired(refused.item, now):
                    seen = values_of(refused.item)
                    return False, seen, seen
            # The item has expired, so it counts as absent: the increments alone must fit.
            if any(int(increments.get(name, 0)) > limit for name, limit in limits.items()):
                return False, {}, {}
            try:
                self._table.put(fresh_item(change.item, increments, change.expires_at), absent_or_expired(now))
                return True, {}, _plus({}, increments)
            except ConditionFailed:
                continue  # another writer replaced (or refreshed) it first: start again
        raise _contended(change.item)

    def try_add_all(self, changes: Sequence[CounterChange]) -> tuple[bool, list[dict[str, int]]]:
        """``try_add`` of each item in turn; when one refuses, the ones written before it are undone.

        One UpdateItem per item on the way in. A concurrent reservation may see the increments of one
        about to be undone (and be refused for them), but no interleaving can push a counter past its
        limit: every item's check-and-add is atomic. Refused, it reports each item as it was before.
        """
        before: list[dict[str, int]] = []
        after: list[dict[str, int]] = []
        for index, change in enumerate(changes):
            try:
                ok, old, new = self._try_add(change)
            except BaseException:
                with contextlib.suppress(Exception):  # best effort: the error that stopped us is the news
                    self._undo(changes[:index])
                raise
            before.append(old)
            after.append(new)
            if not ok:
                self._undo(changes[:index])
                return False, before + [self.read(later.item) for later in changes[index + 1 :]]
        return True, after

    def _undo(self, done: Sequence[CounterChange]) -> None:
        for change in done:
            self.add(change.item, {name: -int(inc) for name, inc in change.increments.items()}, change.expires_at)

    def add(self, item: str, deltas: Mapping[str, int], expires_at: float | None = None) -> None:
        """Unconditional add. An absent (or expired) item is created, expiring at ``expires_at``.

        A live item keeps its own expiry. One UpdateItem when the item is live (settling, undoing);
        a PutItem after it when the item is absent or expired.
        """
        if not deltas:
            return
        pk = counter_pk(item)
        for _ in range(_ROUNDS):
            now = self._clock()
            try:
                self._table.update(pk, SK, _adds(deltas), exists_and_live(now))
                return
            except ConditionFailed:
                pass
            try:
                self._table.put(fresh_item(item, deltas, expires_at), absent_or_expired(now))
                return
            except ConditionFailed:
                continue
        raise _contended(item)

    def read(self, item: str) -> dict[str, int]:
        found = self._table.get(counter_pk(item), SK)
        if found is None or expired(found, self._clock()):
            return {}
        return values_of(found)
