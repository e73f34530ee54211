"""Reservation leases: a reservation that is never settled is given back after a bounded time.

A process that dies between reserving and settling (killed, frozen and reaped, a lost node) would leave its
reservation in the quota counter for the rest of the period. So a reservation adds its tokens to the quota
fields of the period item (``used``, ``used|<key>``) and, in the same write, to the same fields of one of
``SLOTS`` lease slots of that item (``lease<i>|used``, ...): the slot of the epoch it was made in (epoch
``e = floor(now / bucket_s)``, slot ``e % SLOTS``), on the condition that the slot's ``epoch<i>`` is ``e``.
Settling takes the tokens out of the slot again, on the same condition.

Every reservation of epoch ``e`` has settled, or never will, by ``(e + 1) * bucket_s + max_request_s`` (plus
``CLOCK_SKEW_S`` between instances), and ``(SLOTS - 1) * bucket_s`` covers that wait: when epoch
``e + SLOTS`` comes round to the same slot, what the slot still holds is leaked. The first reservation of
the new epoch *turns the slot over*: one conditional write gives the leaked tokens back to the quota fields,
empties the slot and moves its epoch on. A reservation refused for quota first reclaims every other slot
that is stale the same way, then tries once more, so after ``bound_s`` a tenant's whole remaining quota is
spendable again. A settlement that arrives after its slot was turned over (a process that outlived
``max_request_s``) charges what it used and gives nothing back: the turnover already did.

No scan and no timer: only the tenant's own writes, on the item they write anyway; each step is one
conditional write, so a reclaim races nothing (a settlement that lands first makes it retry).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from core.domain import CounterChange

SLOTS = 4
CLOCK_SKEW_S = 60.0
EPOCH = "epoch"
LEASE = "lease"


@dataclass(frozen=True, slots=True)
class LeaseClock:
    """The epochs of one deployment: ``max_request_s`` is the longest a request may hold a reservation."""

    max_request_s: float = 900.0
    clock_skew_s: float = CLOCK_SKEW_S

    @property
    def bucket_s(self) -> float:
        return (self.max_request_s + self.clock_skew_s) / (SLOTS - 1)

    @property
    def bound_s(self) -> float:
        """The longest a leaked reservation can stay counted after it was made."""
        return self.bucket_s + self.max_request_s + self.clock_skew_s

    def epoch(self, now: float) -> int:
        return int(now // self.bucket_s)

    def stale(self, epoch: int, now: float) -> bool:
        """Every reservation made in ``epoch`` has settled by now, or never will."""
        return (epoch + 1) * self.bucket_s + self.max_request_s + self.clock_skew_s <= now


def slot_of(epoch: int) -> int:
    return epoch % SLOTS


def epoch_field(slot: int) -> str:
    return f"{EPOCH}{slot}"


def lease_field(slot: int, name: str) -> str:
    return f"{LEASE}{slot}|{name}"


def at_epoch(slot: int, epoch: int) -> dict[str, int]:
    """The condition that slot ``slot`` holds ``epoch`` (as a limit and a floor: an equality)."""
    return {epoch_field(slot): epoch}


def leased(increments: Mapping[str, int], slot: int) -> dict[str, int]:
    """The quota increments and the same amounts in the slot's lease fields."""
    return {**increments, **{lease_field(slot, name): value for name, value in increments.items()}}


def held(values: Mapping[str, int], slot: int) -> dict[str, int]:
    """What slot ``slot`` holds, by quota field, in an item's ``values``."""
    prefix = f"{LEASE}{slot}|"
    return {name[len(prefix) :]: value for name, value in values.items() if name.startswith(prefix)}


def reclaim(item: str, values: Mapping[str, int], slot: int, epoch: int, expires_at: float) -> CounterChange | None:
    """The one conditional write that gives back what slot ``slot`` holds (as seen in ``values``) and sets its
    epoch to ``epoch``; None when there is nothing to do. Refused if the slot changed since it was seen."""
    pending = held(values, slot)
    seen_epoch = values.get(epoch_field(slot), 0)
    increments: dict[str, int] = {}
    for name, value in pending.items():
        if value:
            increments[name] = increments.get(name, 0) - value
            increments[lease_field(slot, name)] = -value
    if epoch != seen_epoch:
        increments[epoch_field(slot)] = epoch - seen_epoch
    if not increments:
        return None
    exact = {lease_field(slot, name): 0 for name in pending} | at_epoch(slot, epoch)
    return CounterChange(item, increments, exact, expires_at, floors=exact)


def stale_slots(values: Mapping[str, int], clock: LeaseClock, now: float) -> list[int]:
    """Slots whose epoch is over and that still hold tokens: leaked reservations."""
    return [
        slot
        for slot in range(SLOTS)
        if any(held(values, slot).values()) and clock.stale(values.get(epoch_field(slot), 0), now)
    ]
