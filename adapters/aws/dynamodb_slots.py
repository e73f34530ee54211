"""Where core's counter items live in DynamoDB: slots of items, their attributes, and conditions on them.

core names a counter item ``<kind>|<tenant>|<window>`` (a shard: ``...|<shard>``). Each is a *slot*
``<kind>|<window>`` of a DynamoDB item (``locate``): a field is a top-level number ``c_<slot>#<field>``
(``ADD`` works on top-level attributes only), the slot's expiry ``x_<slot>``. This module only names, reads
and builds conditions; ``adapters.aws.dynamodb_counters`` writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import NamedTuple

from pynamodb.expressions.condition import Condition
from pynamodb.expressions.operand import Path

from adapters.aws.dynamodb_models import COUNTER_PREFIX
from adapters.aws.dynamodb_table import Item

EXPIRY_PREFIX = "x_"
SOLE_SLOT = "-"


class Slot(NamedTuple):
    """Where a counter item lives: the DynamoDB item (``pk``) and its slot in it."""

    pk: str
    name: str


def locate(item: str) -> Slot:
    """``<kind>|<tenant>|<window>`` is slot ``<kind>|<window>`` of ``T#<tenant>``; a shard of it
    (``<kind>|<tenant>|<window>|<shard>``, ``core.budget_shards``) the same slot of ``T#<tenant>#S#<shard>``,
    an item, and so a partition, of its own; any other name is alone."""
    parts = item.split("|")
    if len(parts) == 3 and all(parts):
        kind, tenant, window = parts
        return Slot(f"T#{tenant}", f"{kind}|{window}")
    if len(parts) == 4 and all(parts) and parts[3].isdigit():
        kind, tenant, window, shard = parts
        return Slot(f"T#{tenant}#S#{shard}", f"{kind}|{window}")
    return Slot(f"C#{item}", SOLE_SLOT)


def _encode(text: str) -> str:
    """Percent-encode what would be misread in an attribute name: "%", "#" (our separator), "[" and "]".

    pynamodb reads "[n]" in a path segment as a list index; everything else is sent verbatim through
    ``ExpressionAttributeNames``.
    """
    return text.replace("%", "%25").replace("#", "%23").replace("[", "%5B").replace("]", "%5D")


def _decode(text: str) -> str:
    return text.replace("%5D", "]").replace("%5B", "[").replace("%23", "#").replace("%25", "%")


def field_attribute(slot: str, name: str) -> str:
    return f"{COUNTER_PREFIX}{_encode(slot)}#{_encode(name)}"


def expiry_attribute(slot: str) -> str:
    return EXPIRY_PREFIX + _encode(slot)


def path_of(attribute: str) -> Path:
    return Path([attribute])  # a one-segment list: "." in the name is not a map dereference


def _parse(attribute: str) -> tuple[str, str] | None:
    """(slot, field) of a counter attribute, None for any other attribute."""
    if not attribute.startswith(COUNTER_PREFIX):
        return None
    slot, _, name = attribute[len(COUNTER_PREFIX) :].partition("#")
    return _decode(slot), _decode(name)


def values_of(item: Item | None, slot: str) -> dict[str, int]:
    """The fields of one slot of a raw item (whether or not it has expired)."""
    values: dict[str, int] = {}
    for attribute, value in (item or {}).items():
        parsed = _parse(attribute)
        if parsed is not None and parsed[0] == slot:
            values[parsed[1]] = int(Decimal(value["N"]))
    return values


def expiry_of(item: Item | None, slot: str) -> Decimal | None:
    """A slot's expiry; None when it has none (absent, or never expiring)."""
    value = (item or {}).get(expiry_attribute(slot))
    return Decimal(value["N"]) if value is not None else None


def is_expired(item: Item | None, slot: str, now: float) -> bool:
    expiry = expiry_of(item, slot)
    return expiry is not None and expiry < Decimal(repr(now))


def attributes_of(item: Item | None, slot: str) -> list[str]:
    """Every attribute of a slot in a raw item: its fields and its expiry."""
    names = [a for a in (item or {}) if (parsed := _parse(a)) is not None and parsed[0] == slot]
    if expiry_attribute(slot) in (item or {}):
        names.append(expiry_attribute(slot))
    return names


def slots_in(item: Item | None) -> set[str]:
    slots = {parsed[0] for a in (item or {}) if (parsed := _parse(a)) is not None}
    slots.update(_decode(a[len(EXPIRY_PREFIX) :]) for a in (item or {}) if a.startswith(EXPIRY_PREFIX))
    return slots


def live(slot: str, now: float) -> Condition:
    """The slot never expires (or is absent), or has not expired (``x >= now`` is still live)."""
    expiry = path_of(expiry_attribute(slot))
    live: Condition = expiry.does_not_exist() | (expiry >= now)
    return live


def within(
    slot: str, increments: Mapping[str, int], limits: Mapping[str, int], floors: Mapping[str, int] | None = None
) -> Condition | None:
    """``(attribute_not_exists(f) AND inc <= lim) OR f <= lim - inc`` for every limited field, and the same
    with ``>=`` for every floored one (``core.counters.admits``).

    Whether an absent field (0) passes is known here, so it is kept as ``attribute_not_exists`` or dropped
    (an absent field then fails the comparison).
    """
    condition: Condition | None = None
    for name, limit in limits.items():
        inc = int(increments.get(name, 0))
        field = path_of(field_attribute(slot, name))
        clause = field <= limit - inc
        if inc <= limit:
            clause = field.does_not_exist() | clause
        condition = clause if condition is None else condition & clause
    for name, floor in (floors or {}).items():
        inc = int(increments.get(name, 0))
        field = path_of(field_attribute(slot, name))
        clause = field >= floor - inc
        if inc >= floor:
            clause = field.does_not_exist() | clause
        condition = clause if condition is None else condition & clause
    return condition


def both(left: Condition | None, right: Condition | None) -> Condition | None:
    if left is None:
        return right
    return left if right is None else left & right


def plus(values: Mapping[str, int], increments: Mapping[str, int]) -> dict[str, int]:
    after = dict(values)
    for name, inc in increments.items():
        after[name] = after.get(name, 0) + int(inc)
    return after


def gone_or_expired(slot: str, now: float) -> Condition:
    """Nobody revived an expired slot meanwhile: it is still expired, or already removed."""
    expiry = path_of(expiry_attribute(slot))
    condition: Condition = expiry.does_not_exist() | (expiry < now)
    return condition
