"""Rate limits and quotas by reserve-then-settle, one conditional write per counter item.

A request's counters live in two items per tenant: the current minute (requests and tokens of
the tenant and of each key) and the current month (quota tokens of the tenant and of each key; a
daily quota's field is named after its day, so tenant and key may count over different periods).
Reserving is ONE atomic conditional write over both items (``CounterStore.try_add_all``) that checks
every limit in them; settling is written together with the request's usage record. No interleaving
of concurrent requests can push a counter past its limit, because each check-and-add is atomic.

Revocation rides on the same write. Every reservation writes the tenant's minute item (it counts the
request) and its condition also asks that the guard fields ``off`` (the tenant is suspended) and
``off|<key>`` (the key is revoked) be absent or 0. Revoking a key or suspending a tenant sets those
fields in every minute item a reservation can name until each process's cached key and tenant
records have expired (``GUARD_SPAN_S``), so a revocation stops spending at once on every instance,
with no store call added to the hot path and no item that every request of every tenant writes.
"""

from __future__ import annotations

import calendar
import math
import time
from dataclasses import dataclass, field

from core.domain import ApiKeyRecord, CounterChange, Limits, Tenant
from core.errors import Forbidden, QuotaExceeded, RateLimited, ServiceUnavailable, Unauthorized
from core.leases import (
    LeaseClock,
    at_epoch,
    epoch_field,
    held,
    lease_field,
    leased,
    reclaim,
    slot_of,
    stale_slots,
)
from core.ports import Clock, CounterStore, Metrics

MINUTE = 60
# A reservation may have to turn its lease slot over, then reclaim stale slots: a few rounds are plenty.
_RESERVE_ROUNDS = 6
# The longest a process may trust a cached key or tenant record (settings are clamped to it).
MAX_RECORD_CACHE_S = 60.0
# How far a revocation's guard reaches each way from its time: the record caches' lifetime, plus a minute
# for clocks that disagree between instances (a reservation names its minute by its own clock).
GUARD_SPAN_S = MAX_RECORD_CACHE_S + MINUTE
TENANT_OFF = "off"


def key_off(key_id: str) -> str:
    """The guard field of one key: non-zero once the key is revoked."""
    return f"{TENANT_OFF}|{key_id}"


def minute_item(tenant_id: str, window: int) -> str:
    return f"rl|{tenant_id}|{window}"


def minute_expiry(window: int) -> float:
    return (window + 2) * MINUTE


def guarded_windows(at: float) -> range:
    """The minute windows a guard set at ``at`` must be written to."""
    return range(int((at - GUARD_SPAN_S) // MINUTE), int((at + GUARD_SPAN_S) // MINUTE) + 1)


def period_bounds(now: float, period: str) -> tuple[str, float]:
    """The id of the quota period containing ``now`` and the time it ends (UTC)."""
    t = time.gmtime(now)
    if period == "day":
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        return time.strftime("%Y-%m-%d", t), start + 86_400
    days = calendar.monthrange(t.tm_year, t.tm_mon)[1]
    start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    return time.strftime("%Y-%m", t), start + days * 86_400


@dataclass
class Reservation:
    """What a request holds until it settles."""

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


@dataclass(frozen=True, slots=True)
class _Plan:
    item: str
    increments: dict[str, int]
    limits: dict[str, int]
    expires_at: float


def _quota_field(name: str, period: str, now: float) -> str:
    """A monthly counter keeps its name; a daily one is suffixed with its day (``used@2026-09-21``)."""
    return name if period == "month" else f"{name}@{period_bounds(now, period)[0]}"


class LimitEnforcer:
    def __init__(
        self, counters: CounterStore, clock: Clock, metrics: Metrics, leases: LeaseClock | None = None
    ) -> None:
        self._counters = counters
        self._clock = clock
        self._metrics = metrics
        self.leases = leases or LeaseClock()

    def _minute_plan(self, tenant: Tenant, key: ApiKeyRecord, tokens: int, now: float) -> _Plan:
        """The minute item: always written (it counts the request and carries the revocation guard)."""
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
        increments = {"req": 1, f"req|{kid}": 1} | {f: tokens for f in ("tok", f"tok|{kid}") if f in limits}
        limits |= {TENANT_OFF: 0, key_off(kid): 0}
        return _Plan(minute_item(tenant.id, window), increments, limits, minute_expiry(window))

    def _period_plan(self, tenant: Tenant, key: ApiKeyRecord, tokens: int, now: float) -> _Plan | None:
        t, k = tenant.limits, key.limits
        if t.token_quota is None and k.token_quota is None:
            return None
        # A day lies within its month: the month's item holds every quota counter of the tenant and its
        # keys, each in its own period (a key's quota follows its own period, not the tenant's).
        month, ends = period_bounds(now, "month")
        tenant_field = _quota_field("used", t.quota_period, now)
        key_field = _quota_field(f"used|{key.id}", k.quota_period, now)
        limits = {}
        if t.token_quota is not None:
            limits[tenant_field] = t.token_quota
        if k.token_quota is not None:
            limits[key_field] = k.token_quota
        return _Plan(f"q|{tenant.id}|{month}", {tenant_field: tokens, key_field: tokens}, limits, ends + 86_400)

    def reserve(self, tenant: Tenant, key: ApiKeyRecord, tokens: int) -> Reservation:
        """Reserve one request and ``tokens`` tokens against every limit in ONE atomic write, or raise.

        401 ``key_revoked`` or 403 ``tenant_suspended`` when a guard is set; 429 when a limit refuses. The
        quota part is leased (``core.leases``): a refusal because a lease slot must be turned over, or
        for quota while stale leases hold tokens, takes them back and tries again.
        """
        now = self._clock.now()
        minute = self._minute_plan(tenant, key, tokens, now)
        # A request that costs no tokens (a cache hit) counts against the request rate only.
        period = self._period_plan(tenant, key, tokens, now) if tokens else None
        epoch = self.leases.epoch(now)
        reclaimed = False
        for _ in range(_RESERVE_ROUNDS):
            changes = [CounterChange(minute.item, minute.increments, minute.limits, minute.expires_at)]
            if period is not None:
                changes.append(_leased_change(period, epoch))
            ok, seen = self._counters.try_add_all(changes)
            minute_values = seen[0]
            if ok:
                return self._reservation(tokens, key, minute, minute_values, period, epoch, now)
            _refuse_guarded(minute_values, key.id)
            if _violates(minute, minute_values):
                self._refuse_rate(minute, minute_values, tokens, now, tenant.limits, key.limits)
            if period is None:
                raise RuntimeError("the counter store refused a reservation no limit refuses")
            values = seen[-1]
            slot = slot_of(epoch)
            held_epoch = values.get(epoch_field(slot), 0)
            if epoch < held_epoch <= epoch + 1:  # an instance whose clock runs ahead turned it over: join it
                epoch = held_epoch
            elif held_epoch != epoch:
                self._reclaim(period, values, slot, epoch)
            elif not reclaimed and (stale := stale_slots(values, self.leases, now)):
                reclaimed = True
                for old in stale:
                    self._reclaim(period, values, old, values.get(epoch_field(old), 0))
            else:
                self._refuse_quota(period, values, tokens, now, tenant, minute, minute_values)
        raise ServiceUnavailable("the quota counters are contended; retry shortly", code="store_unavailable")

    def _reservation(
        self,
        tokens: int,
        key: ApiKeyRecord,
        minute: _Plan,
        minute_values: dict[str, int],
        period: _Plan | None,
        epoch: int,
        now: float,
    ) -> Reservation:
        reservation = Reservation(tokens, minute.item, None, key.id)
        reservation.minute_token_fields = tuple(f for f in minute.increments if f.startswith("tok"))
        reservation.minute_expires_at = minute.expires_at
        reservation.headers = self._rate_headers(minute, minute_values, now)
        if period is not None:
            reservation.period_item = period.item
            reservation.period_expires_at = period.expires_at
            reservation.period_fields = tuple(period.increments)
            reservation.lease_slot, reservation.lease_epoch = slot_of(epoch), epoch
        return reservation

    def _reclaim(self, period: _Plan, values: dict[str, int], slot: int, epoch: int) -> None:
        """Give back what a lease slot holds, as seen; refused when the slot changed meanwhile (the caller's
        next round sees it as it is now)."""
        change = reclaim(period.item, values, slot, epoch, period.expires_at)
        if change is not None and self._counters.try_add_all([change])[0]:
            leaked = max(held(values, slot).values(), default=0)
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
        now = self._clock.now()
        for window in guarded_windows(at):
            if minute_expiry(window) > now:
                self._counters.add(minute_item(tenant_id, window), {name: delta}, minute_expiry(window))

    def _refuse_quota(
        self,
        period: _Plan,
        values: dict[str, int],
        tokens: int,
        now: float,
        tenant: Tenant,
        minute: _Plan | None,
        minute_values: dict[str, int],
    ) -> None:
        self._metrics.incr("limit_refusals_total", tenant=tenant.id, limit="quota")
        headers = self._rate_headers(minute, minute_values, now) if minute is not None else {}
        used = max(values.get(f, 0) - lim for f, lim in period.limits.items())
        over = [f for f, lim in period.limits.items() if values.get(f, 0) + tokens > lim]
        resets = max(period_bounds(now, "day" if "@" in f else "month")[1] for f in over or period.limits)
        raise QuotaExceeded(
            f"token quota exhausted for this period: this request needs up to {tokens} tokens "
            f"and the quota would be exceeded by {used + tokens}; lower max_tokens or wait for "
            "the next period",
            headers={**headers, "retry-after": str(max(1, math.ceil(resets - now)))},
        )

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
                    dict.fromkeys(reservation.minute_token_fields, delta),
                    expires_at=reservation.minute_expires_at,
                )
            )
        if reservation.period_item is not None:
            changes.append(self._lease_return(reservation, delta, otherwise=used_tokens))
        return changes

    @staticmethod
    def _lease_return(reservation: Reservation, delta: int, otherwise: int | None) -> CounterChange:
        """The period item's part of a settlement: ``delta`` to the quota fields and the whole reservation out
        of its lease slot, if the slot still holds its epoch; else (the lease was reclaimed and the whole
        reservation given back) ``otherwise`` tokens are charged, or nothing."""
        fields, slot, tokens = reservation.period_fields, reservation.lease_slot, reservation.tokens
        increments = dict.fromkeys(fields, delta) | {lease_field(slot, f): -tokens for f in fields}
        same_epoch = at_epoch(slot, reservation.lease_epoch)
        return CounterChange(
            reservation.period_item or "",
            increments,
            same_epoch,
            reservation.period_expires_at,
            floors=same_epoch,
            otherwise=dict.fromkeys(fields, otherwise) if otherwise else None,
        )

    def release(self, reservation: Reservation) -> None:
        """Give back a whole reservation, the request included: it was charged under another attempt."""
        kid = reservation.key_id
        tokens = reservation.tokens
        if reservation.minute_item is not None:
            self._counters.add(
                reservation.minute_item,
                {"req": -1, f"req|{kid}": -1} | dict.fromkeys(reservation.minute_token_fields, -tokens),
                reservation.minute_expires_at,
            )
        if reservation.period_item is not None and tokens:
            # Refused when the lease was reclaimed: that gave the whole reservation back already.
            self._counters.try_add_all([self._lease_return(reservation, -tokens, otherwise=None)])
        reservation.settled = True

    def _refuse_rate(
        self, plan: _Plan, values: dict[str, int], tokens: int, now: float, tenant: Limits, key: Limits
    ) -> None:
        reset = max(1, math.ceil((int(now // MINUTE) + 1) * MINUTE - now))
        headers = self._rate_headers(plan, values, now)
        headers["retry-after"] = str(reset)
        over = [f for f, lim in plan.limits.items() if values.get(f, 0) + plan.increments.get(f, 0) > lim]
        what = "requests" if over and over[0].startswith("req") else "tokens"
        whose = "this key" if over and "|" in over[0] else "this tenant"
        limit = plan.limits[over[0]] if over else 0
        self._metrics.incr("limit_refusals_total", limit=f"{what}_per_minute")
        if what == "tokens" and tokens > limit:
            msg = (
                f"this request needs up to {tokens} tokens, more than the {limit} tokens per minute "
                f"allowed for {whose}; lower max_tokens or shorten the prompt"
            )
        else:
            msg = f"rate limit of {limit} {what} per minute reached for {whose}; retry after {reset} s"
        raise RateLimited(msg, headers=headers)

    @staticmethod
    def _rate_headers(plan: _Plan, values: dict[str, int], now: float) -> dict[str, str]:
        reset = f"{max(0, math.ceil((int(now // MINUTE) + 1) * MINUTE - now))}s"
        headers: dict[str, str] = {}
        for what, prefix in (("requests", "req"), ("tokens", "tok")):
            pairs = [(lim, lim - values.get(f, 0)) for f, lim in plan.limits.items() if f.startswith(prefix)]
            if not pairs:
                continue
            limit, remaining = min(pairs, key=lambda p: p[1])
            headers[f"x-ratelimit-limit-{what}"] = str(limit)
            headers[f"x-ratelimit-remaining-{what}"] = str(max(0, remaining))
            headers[f"x-ratelimit-reset-{what}"] = reset
        return headers


def _leased_change(period: _Plan, epoch: int) -> CounterChange:
    """The period item's part of a reservation: the quota increments, leased in the epoch's slot."""
    slot = slot_of(epoch)
    same_epoch = at_epoch(slot, epoch)
    limits = period.limits | same_epoch
    return CounterChange(period.item, leased(period.increments, slot), limits, period.expires_at, floors=same_epoch)


def _refuse_guarded(values: dict[str, int], key_id: str) -> None:
    if values.get(key_off(key_id), 0) > 0:
        raise Unauthorized("API key revoked or expired", code="key_revoked")
    if values.get(TENANT_OFF, 0) > 0:
        raise Forbidden("the tenant of this credential is suspended", code="tenant_suspended")


def _violates(plan: _Plan, values: dict[str, int]) -> bool:
    return any(values.get(f, 0) + plan.increments.get(f, 0) > lim for f, lim in plan.limits.items())
