"""The counter changes of one reservation: what it adds to its windows' items, and what settles it.

``core.limits.LimitEnforcer`` decides when to write them; this module only says what they are: the minute
item's part (requests, tokens per minute, the revocation guard), the period item's (quota tokens, leased in
an epoch's slot: ``core.leases``), and a settlement's (the unused part back, or what was used, when the lease
was reclaimed).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.budget_shards import COUNT
from core.domain import ApiKeyRecord, CounterChange, Tenant
from core.leases import at_epoch, lease_field, leased, slot_of
from core.limit_refusals import MINUTE, TENANT_OFF, key_off, period_bounds


def minute_item(tenant_id: str, window: int) -> str:
    return f"rl|{tenant_id}|{window}"


def minute_expiry(window: int) -> float:
    return (window + 2) * MINUTE


@dataclass
class Reservation:
    """What a request holds until it settles. Field names are as written on the shard's items."""

    tokens: int
    minute_item: str | None
    period_item: str | None
    key_id: str
    minute_token_fields: tuple[str, ...] = ()
    minute_expires_at: float = 0.0
    period_expires_at: float = 0.0
    period_fields: tuple[str, ...] = ()
    lease_slot: int = 0
    lease_epoch: int = 0
    headers: dict[str, str] = field(default_factory=dict)
    settled: bool = False
    shard: int = 0
    minute_release: dict[str, int] = field(default_factory=dict)

    @property
    def sign(self) -> int:
        """+1 where a reservation adds to a limited field (shard 0), -1 where it spends a budget."""
        return -1 if self.shard else 1


def with_gift(change: CounterChange, gift: dict[str, int] | None) -> CounterChange:
    """A reservation's change with budget moved to its item in the same write."""
    if not gift:
        return change
    increments = dict(change.increments)
    for name, value in gift.items():
        increments[name] = increments.get(name, 0) + value
    return CounterChange(change.item, increments, change.limits, change.expires_at, change.floors, change.otherwise)


def quota_field(name: str, period: str, now: float) -> str:
    """A monthly counter keeps its name; a daily one is suffixed with its day (``used@2026-09-21``)."""
    return name if period == "month" else f"{name}@{period_bounds(now, period)[0]}"


def minute_change(
    tenant: Tenant, key: ApiKeyRecord, tokens: int, now: float, *, count: bool, requests: int = 1
) -> CounterChange:
    """The minute item's part of a reservation: always written (it counts the request and carries the
    revocation guard). ``count``: also count it in ``n`` (sharded counters estimate the rate from it).
    ``requests``: how many requests it reserves (a budget slice, ``core.budget_slices``, holds several)."""
    t, k = tenant.limits, key.limits
    window = int(now // MINUTE)
    kid = key.id
    limits = {
        name: value
        for name, value in (
            ("req", t.requests_per_minute),
            ("tok", t.tokens_per_minute),
            (f"req|{kid}", k.requests_per_minute),
            (f"tok|{kid}", k.tokens_per_minute),
        )
        if value is not None
    }
    # Tokens per minute are counted only where a limit needs them: a settlement then has nothing to
    # give back on this item, which saves a write for tenants without token rates.
    increments = {"req": requests, f"req|{kid}": requests} | {f: tokens for f in ("tok", f"tok|{kid}") if f in limits}
    if count:
        increments[COUNT] = requests  # this shard's requests this minute: how busy the tenant is
    limits |= {TENANT_OFF: 0, key_off(kid): 0}
    return CounterChange(minute_item(tenant.id, window), increments, limits, minute_expiry(window))


def period_change(tenant: Tenant, key: ApiKeyRecord, tokens: int, now: float) -> CounterChange | None:
    t, k = tenant.limits, key.limits
    if t.token_quota is None and k.token_quota is None:
        return None
    # A day lies within its month: the month's item holds every quota counter of the tenant and its
    # keys, each in its own period (a key's quota follows its own period, not the tenant's).
    month, ends = period_bounds(now, "month")
    tenant_field = quota_field("used", t.quota_period, now)
    key_field = quota_field(f"used|{key.id}", k.quota_period, now)
    limits = {}
    if t.token_quota is not None:
        limits[tenant_field] = t.token_quota
    if k.token_quota is not None:
        limits[key_field] = k.token_quota
    return CounterChange(f"q|{tenant.id}|{month}", {tenant_field: tokens, key_field: tokens}, limits, ends + 86_400)


def leased_change(change: CounterChange, epoch: int) -> CounterChange:
    """The period item's part of a reservation: its increments, leased in the epoch's slot."""
    slot = slot_of(epoch)
    same_epoch = at_epoch(slot, epoch)
    return CounterChange(
        change.item,
        leased(change.increments, slot),
        change.limits | same_epoch,
        change.expires_at,
        floors=change.floors | same_epoch,
    )


def lease_return(reservation: Reservation, delta: int, otherwise: int | None) -> CounterChange:
    """The period item's part of a settlement: ``delta`` to the quota fields (out of a shard's budget) and
    the whole reservation out of its lease slot, if the slot still holds its epoch; else (the lease was
    reclaimed and the whole reservation given back) ``otherwise`` tokens are charged, or nothing. A reservation
    charged outright (``lease_epoch`` -1) gets ``delta`` alone."""
    fields, slot, sign = reservation.period_fields, reservation.lease_slot, reservation.sign
    if reservation.lease_epoch < 0:  # charged outright (a budget slice's): no lease to settle
        return CounterChange(
            reservation.period_item or "", dict.fromkeys(fields, sign * delta), expires_at=reservation.period_expires_at
        )
    held_tokens = sign * reservation.tokens
    increments = dict.fromkeys(fields, sign * delta) | {lease_field(slot, f): -held_tokens for f in fields}
    same_epoch = at_epoch(slot, reservation.lease_epoch)
    return CounterChange(
        reservation.period_item or "",
        increments,
        same_epoch,
        reservation.period_expires_at,
        floors=same_epoch,
        otherwise=dict.fromkeys(fields, sign * otherwise) if otherwise else None,
    )
