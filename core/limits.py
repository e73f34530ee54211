"""Rate limits and quotas by reserve-then-settle, one conditional write per counter item.

A request's counters live in two items per tenant: the current minute (requests and tokens of
the tenant and of each key) and the current month (quota tokens of the tenant and of each key; a
daily quota's field is named after its day, so tenant and key may count over different periods).
Reserving is ONE atomic conditional write over both items (``CounterStore.try_add_all``) that checks
every limit in them; settling is written together with the request's usage record. No interleaving
of concurrent requests can push a counter past its limit, because each check-and-add is atomic.

A busy tenant's counters spread over several such items (``core.budget_shards``): a request writes one
shard, chosen at random among the tenant's shards, and a shard spends a budget it drew from the window's
own item. With one shard (a quiet tenant, or ``ShardPolicy(max_shards=1)``) this is the single item.

Revocation rides on the same write. Every reservation writes the tenant's minute item (it counts the
request) and its condition also asks that the guard fields ``off`` (the tenant is suspended) and
``off|<key>`` (the key is revoked) be absent or 0. Revoking a key or suspending a tenant sets those
fields in every minute item a reservation can name until each process's cached key and tenant
records have expired (``GUARD_SPAN_S``), so a revocation stops spending at once on every instance,
with no store call added to the hot path and no item that every request of every tenant writes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Protocol

from core.budget_shards import (
    COUNT,
    GUARD_VERSION,
    NO_MOVES,
    REGISTERED,
    Moves,
    ShardCounts,
    ShardPolicy,
    budget,
    guard_writes,
    marked,
    on_shard,
    registration,
)
from core.counters import admits
from core.domain import ApiKeyRecord, CounterChange, Tenant
from core.errors import ServiceUnavailable, StoreThrottled
from core.leases import LeaseClock, epoch_field, held, lease_field, reclaim, slot_of, stale_slots
from core.limit_changes import (
    Reservation,
    lease_return,
    leased_change,
    minute_change,
    minute_expiry,
    minute_item,
    period_change,
    with_gift,
)
from core.limit_refusals import (
    MINUTE,
    TENANT_OFF,
    key_off,
    period_bounds,
    quota_exceeded,
    rate_headers,
    rate_limited,
    refuse_guarded,
)
from core.ports import Clock, CounterStore, Metrics
from core.shard_choice import ShardChoice
from core.shard_room import ShardRoom
from core.static_split import StaticSplit

# A reservation may register its shard, draw, rebalance, turn its lease slot over and reclaim stale slots.
_RESERVE_ROUNDS = 16
_PARENT_THROTTLES = 2  # a reservation's tries that found a window's own item throttled, at most
# The longest a process may trust a cached key or tenant record (settings are clamped to it).
MAX_RECORD_CACHE_S = 60.0
# How far a revocation's guard reaches each way from its time: the record caches' lifetime, plus a minute
# for clocks that disagree between instances (a reservation names its minute by its own clock).
GUARD_SPAN_S = MAX_RECORD_CACHE_S + MINUTE

__all__ = [
    "GUARD_SPAN_S",
    "MAX_RECORD_CACHE_S",
    "MINUTE",
    "TENANT_OFF",
    "LimitEnforcer",
    "RequestLimits",
    "Reservation",
    "key_off",
    "minute_item",
    "period_bounds",
]


def guarded_windows(at: float) -> range:
    """The minute windows a guard set at ``at`` must be written to."""
    return range(int((at - GUARD_SPAN_S) // MINUTE), int((at + GUARD_SPAN_S) // MINUTE) + 1)


class RequestLimits(Protocol):
    """What the gateway asks of its limits: ``LimitEnforcer`` (a reservation per request), or
    ``core.budget_slices.SlicedLimits`` over it (slices of budget spent in memory by an instance)."""

    @property
    def leases(self) -> LeaseClock: ...

    def reserve(self, tenant: Tenant, key: ApiKeyRecord, tokens: int) -> Reservation: ...

    def settlement(self, reservation: Reservation, used_tokens: int) -> list[CounterChange]: ...

    def release(self, reservation: Reservation) -> None: ...

    def guard_key(self, tenant_id: str, key_id: str) -> None: ...

    def guard_tenant(self, tenant_id: str, suspended_at: float) -> None: ...

    def unguard_tenant(self, tenant_id: str, suspended_at: float) -> None: ...


class _OwnShardThrottled(Exception):
    """The reservation's own shard item was throttled (its cause is the store's error)."""

    def __init__(self, cause: StoreThrottled) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass
class _Attempt:
    """Where a reservation is being tried: its shard and lease epoch, whether stale slots were reclaimed, and
    budget a rebalance moves to it with its next try."""

    shard: int
    epoch: int
    leased: bool = True  # the quota part leased (else charged outright: a budget slice's)
    reclaimed: bool = False
    moves: Moves = NO_MOVES


class LimitEnforcer:
    def __init__(
        self,
        counters: CounterStore,
        clock: Clock,
        metrics: Metrics,
        leases: LeaseClock | None = None,
        shards: ShardPolicy | None = None,
        rng: random.Random | None = None,
        split: StaticSplit | None = None,
    ) -> None:
        self._counters = counters
        self._clock = clock
        self._metrics = metrics
        self.leases = leases or LeaseClock()
        self.shards = ShardCounts(shards or ShardPolicy(), rng)
        self._room = ShardRoom(counters, self.shards, self.leases, clock.now)
        #: Minute windows split statically over shards (``core.static_split``): none of their own items written.
        self.split = split
        self._choice = ShardChoice(counters, self.shards, self._room, split)

    def reserve(
        self, tenant: Tenant, key: ApiKeyRecord, tokens: int, requests: int = 1, *, leased: bool = True
    ) -> Reservation:
        """Reserve one request (or ``requests``) and ``tokens`` tokens against every limit in ONE atomic write,
        or raise.

        401 ``key_revoked`` or 403 ``tenant_suspended`` when a guard is set; 429 when a limit refuses. The
        quota part is leased (``core.leases``): a refusal because a lease slot must be turned over, or
        for quota while stale leases hold tokens, takes them back and tries again. ``leased=False`` charges
        it outright instead (a budget slice: what its requests use must stay charged if its holder dies, so
        a lease would be turned into a charge at once; one write less). On a shard, a refusal for budget
        draws from the window's own item, or rebalances (``core.shard_room``), and tries again.
        """
        now = self._clock.now()
        minute = minute_change(tenant, key, tokens, now, count=self.shards.policy.on, requests=requests)
        # A request that costs no tokens (a cache hit) counts against the request rate only.
        period = period_change(tenant, key, tokens, now) if tokens else None
        if period is not None and self._room.refused(period, now):
            self._metrics.incr("limit_refusals_total", tenant=tenant.id, limit="quota")
            raise quota_exceeded(period.limits, self._room.free_as_used(period), tokens, now, {})
        if self._room.refused(minute, now):
            self._metrics.incr("limit_refusals_total", limit="per_minute")
            raise rate_limited(minute.limits, minute.increments, self._room.free_as_used(minute), tokens, now)
        attempt = _Attempt(self._choice.first(tenant.id, minute, period, now), self.leases.epoch(now), leased)
        last_throttle: StoreThrottled | None = None
        parent_throttles = 0
        for _ in range(_RESERVE_ROUNDS):
            try:
                reservation = self._round(attempt, tenant, key, tokens, minute, period, now)
            except _OwnShardThrottled as throttled:
                # This shard's item is over its rate: spread wider, and go elsewhere.
                last_throttle = throttled.cause
                if not self._choice.spread(tenant.id, minute, now):
                    raise throttled.cause from None
                self._metrics.incr("counter_throttles_total")
                attempt.shard = self._choice.other(tenant.id, minute, attempt.shard)
                continue
            except StoreThrottled as throttled:
                # The window's own item, while drawing or registering: another shard may have budget and be
                # registered already. (Spreading wider would only make more shards draw from it.) Twice is
                # enough: a third try would most likely draw from the throttled item again, feeding its throttle.
                last_throttle = throttled
                self._metrics.incr("counter_throttles_total")
                parent_throttles += 1
                if parent_throttles >= _PARENT_THROTTLES:
                    raise
                attempt.shard, attempt.moves = self._choice.other(tenant.id, minute, attempt.shard), NO_MOVES
                continue
            if reservation is not None:
                return reservation
        if last_throttle is not None:
            raise last_throttle
        raise ServiceUnavailable("the quota counters are contended; retry shortly", code="store_unavailable")

    def _round(
        self,
        attempt: _Attempt,
        tenant: Tenant,
        key: ApiKeyRecord,
        tokens: int,
        minute: CounterChange,
        period: CounterChange | None,
        now: float,
    ) -> Reservation | None:
        """One try: the reservation, or None after making room for the next try (or raise the refusal).

        Budget a rebalance moves to this shard (``attempt.moves``) is written with the reservation itself."""
        shard, epoch, moves = attempt.shard, attempt.epoch, attempt.moves
        attempt.moves = NO_MOVES
        own = [self.split.on_shard(minute, shard) if self.split else on_shard(minute, shard, minute=True)]
        if period is not None:
            spending = on_shard(period, shard, minute=False)
            own.append(leased_change(spending, epoch) if attempt.leased else spending)
        written = [with_gift(change, moves.gift.get(change.item)) for change in own]
        try:
            ok, seen = self._counters.try_add_all([*moves.before, *written, *moves.after])
        except StoreThrottled as exc:
            raise _OwnShardThrottled(exc) from exc
        seen = seen[len(moves.before) : len(moves.before) + len(own)]
        minute_change, minute_values = own[0], seen[0]
        self._choice.written(tenant.id, minute, shard, minute_values)
        if ok:
            self.shards.observe(tenant.id, minute_values.get(COUNT, 0), now)
            lease = epoch if attempt.leased else None
            return self._reservation(tokens, key, minute, own, minute_values, shard, lease, now)
        refuse_guarded(minute_values, key.id)
        if moves is not NO_MOVES and all(admits(c, v) for c, v in zip(written, seen, strict=True)):
            return None  # a donor changed meanwhile: look again
        if self.split is None and shard and minute_values.get(REGISTERED, 0) < 1:
            self._register(minute, shard, minute_values)
            return None
        if not admits(minute_change, minute_values):
            made, parent_values, attempt.moves = self._room.make(
                minute, minute_change, shard, minute_values, now, split=self.split
            )
            if not made:
                self._metrics.incr("limit_refusals_total", limit="per_minute")
                raise rate_limited(minute.limits, minute.increments, parent_values, tokens, now)
            return None
        if period is None:
            raise RuntimeError("the counter store refused a reservation no limit refuses")
        item, values = own[-1].item, seen[-1]
        slot = slot_of(epoch)
        held_epoch = values.get(epoch_field(slot), 0)
        # The epoch's slot matters to a leased reservation only (one charged outright writes no slot).
        if attempt.leased and epoch < held_epoch <= epoch + 1:  # a clock running ahead turned it over: join it
            attempt.epoch = held_epoch
        elif attempt.leased and held_epoch != epoch:
            self._reclaim(item, values, slot, epoch, period.expires_at)
        elif not attempt.reclaimed and (stale := stale_slots(values, self.leases, now)):
            attempt.reclaimed = True
            for old in stale:
                self._reclaim(item, values, old, values.get(epoch_field(old), 0), period.expires_at)
        else:
            spent = on_shard(period, shard, minute=False)
            fill = self.split.max_shards if self.split else 0  # a static split's quota: fill every shard at once
            made, parent_values, attempt.moves = self._room.make(period, spent, shard, values, now, fill=fill)
            if not made:
                self._metrics.incr("limit_refusals_total", tenant=tenant.id, limit="quota")
                headers = self._headers(minute, minute_change, minute_values, shard, now)
                raise quota_exceeded(period.limits, parent_values, tokens, now, headers)
        return None

    def _register(self, minute: CounterChange, shard: int, shard_values: dict[str, int]) -> None:
        """Register a minute shard with its parent (see ``core.budget_shards``); refused when a guard moved
        meanwhile (the next round reads again)."""
        parent_values = self._counters.read(minute.item)
        expires_at = minute.expires_at or 0.0
        self._counters.try_add_all(registration(minute.item, shard, parent_values, shard_values, expires_at))

    def _headers(
        self, minute: CounterChange, change: CounterChange, values: dict[str, int], shard: int, now: float
    ) -> dict[str, str]:
        """The rate headers: exact on the window's own item; on a shard, from its budget and the parent's
        remainder as this process last saw it (an estimate)."""
        if not shard:
            return rate_headers(minute.limits, values, now)
        if self.split is not None:
            return rate_headers(minute.limits, self._room.split_used_estimate(minute, values, shard, self.split), now)
        return rate_headers(minute.limits, self._room.used_estimate(minute, values), now)

    def _reservation(
        self,
        tokens: int,
        key: ApiKeyRecord,
        minute: CounterChange,
        changes: list[CounterChange],
        minute_values: dict[str, int],
        shard: int,
        epoch: int | None,
        now: float,
    ) -> Reservation:
        """``epoch``: the lease's (None: the quota part was charged outright)."""
        minute_change = changes[0]
        reservation = Reservation(tokens, minute_change.item, None, key.id, shard=shard)
        token_fields = [f for f in minute.increments if f.startswith("tok")]
        reservation.minute_token_fields = tuple(budget(f, minute.limits[f]) if shard else f for f in token_fields)
        reservation.minute_expires_at = minute.expires_at or 0.0
        reservation.minute_release = {f: -v for f, v in minute_change.increments.items()}
        reservation.headers = self._headers(minute, minute_change, minute_values, shard, now)
        if len(changes) > 1:
            period = changes[1]
            reservation.period_item = period.item
            reservation.period_expires_at = period.expires_at or 0.0
            if epoch is None:
                reservation.period_fields = tuple(period.increments)
                reservation.lease_epoch = -1  # no lease to settle
            else:
                slot = slot_of(epoch)
                prefix = f"{lease_field(slot, '')}"
                reservation.period_fields = tuple(f for f in period.increments if not f.startswith(prefix))
                reservation.lease_slot, reservation.lease_epoch = slot, epoch
        return reservation

    def _reclaim(self, item: str, values: dict[str, int], slot: int, epoch: int, expires_at: float | None) -> None:
        """Give back what a lease slot holds, as seen; refused when the slot changed meanwhile (the caller's
        next round sees it as it is now)."""
        change = reclaim(item, values, slot, epoch, expires_at or 0.0)
        if change is not None and self._counters.try_add_all([change])[0]:
            leaked = max((abs(v) for v in held(values, slot).values()), default=0)
            if leaked:
                self._metrics.incr("reservations_reclaimed_tokens_total", leaked)

    def guard_key(self, tenant_id: str, key_id: str) -> None:
        """Refuse every reservation of a key from now on, on every instance (before its record says so)."""
        self._set_guard(tenant_id, key_off(key_id), +1, self._clock.now())

    def guard_tenant(self, tenant_id: str, suspended_at: float) -> None:
        """Refuse every reservation of a tenant's keys from ``suspended_at`` (now) on, on every instance."""
        self._set_guard(tenant_id, TENANT_OFF, +1, suspended_at)

    def unguard_tenant(self, tenant_id: str, suspended_at: float) -> None:
        """Take back exactly what ``guard_tenant(tenant_id, suspended_at)`` wrote (what is still live)."""
        self._set_guard(tenant_id, TENANT_OFF, -1, suspended_at)

    def _set_guard(self, tenant_id: str, name: str, delta: int, at: float) -> None:
        """The window's own item first (moving its guard version), then every shard it marks as registered."""
        now = self._clock.now()
        for window in guarded_windows(at):
            expires_at = minute_expiry(window)
            if expires_at <= now:
                continue
            parent = minute_item(tenant_id, window)
            self._counters.add(parent, {name: delta, GUARD_VERSION: 1}, expires_at)
            # A static split's shards do not register: every one a reservation could name is written.
            shards = range(1, self.split.max_shards + 1) if self.split else marked(self._counters.read(parent))
            for change in guard_writes(parent, shards, name, delta, expires_at):
                self._counters.add(change.item, change.increments, expires_at)

    def settlement(self, reservation: Reservation, used_tokens: int) -> list[CounterChange]:
        """The counter changes that return the unused part of a reservation (written with the usage record).

        A failed call settles with ``used_tokens=0``. A reservation settles once; later calls return nothing.
        """
        if reservation.settled:
            return []
        reservation.settled = True
        used_tokens = max(0, min(used_tokens, reservation.tokens))
        delta = used_tokens - reservation.tokens
        changes = []
        if reservation.minute_item is not None and reservation.minute_token_fields and delta:
            changes.append(
                CounterChange(
                    reservation.minute_item,
                    dict.fromkeys(reservation.minute_token_fields, reservation.sign * delta),
                    expires_at=reservation.minute_expires_at,
                )
            )
        if reservation.period_item is not None:
            changes.append(lease_return(reservation, delta, otherwise=used_tokens))
        return changes

    def release(self, reservation: Reservation) -> None:
        """Give back a whole reservation, the request included: it was charged under another attempt."""
        if reservation.minute_item is not None and reservation.minute_release:
            self._counters.add(reservation.minute_item, reservation.minute_release, reservation.minute_expires_at)
        if reservation.period_item is not None and reservation.tokens:
            # Refused when the lease was reclaimed: that gave the whole reservation back already.
            self._counters.try_add_all([lease_return(reservation, -reservation.tokens, otherwise=None)])
        reservation.settled = True
