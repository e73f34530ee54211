"""What every counter store decides the same way: whether a change's conditions hold, what a settlement adds.

A store adapter only reads and writes values; it asks these functions what to write (DynamoDB, which
decides on the server, turns the same rules into a ConditionExpression).
"""

from __future__ import annotations

from collections.abc import Mapping

from core.domain import CounterChange


def admits(change: CounterChange, values: Mapping[str, int]) -> bool:
    """Every limited field stays <= its limit and every floored field >= its floor after the increments."""

    def after(name: str) -> int:
        return values.get(name, 0) + change.increments.get(name, 0)

    return all(after(n) <= limit for n, limit in change.limits.items()) and all(
        after(n) >= floor for n, floor in change.floors.items()
    )


def settled_increments(change: CounterChange, values: Mapping[str, int]) -> Mapping[str, int]:
    """What a settlement adds to an item holding ``values``: its increments if admitted, else ``otherwise``."""
    if admits(change, values):
        return change.increments
    return change.otherwise or {}
