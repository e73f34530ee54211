"""Rate limits and quotas by reserve-then-settle, one conditional write per counter item.

A request's counters live in two items per tenant: the current minute (requests and tokens of
the tenant and of each key) and the current month (quota tokens of the tenant and of each key; a
daily quota's field is named after its day, so tenant and key may count over different periods).
Reserving writes the minute item, then the period item, each with one conditional add that checks
every limit in it; if the period item refuses, the minute reservation is undone. No interleaving
of concurrent requests can push a counter past its limit, because each check-and-add is atomic.
"""

from __future__ import annotations

import calendar
import math
import time
from dataclasses import dataclass, field

from core.domain import ApiKeyRecord, Limits, Tenant
from core.errors import QuotaExceeded, RateLimited
from core.ports import Clock, CounterStore, Metrics

MINUTE = 60


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
    minute_expires_at: float = 0.0
    period_expires_at: float = 0.0
    period_fields: tuple[str, ...] = ()
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
    def __init__(self, counters: CounterStore, clock: Clock, metrics: Metrics) -> None:
        self._counters = counters
        self._clock = clock
        self._metrics = metrics

    def _minute_plan(self, tenant: Tenant, key: ApiKeyRecord, tokens: int, now: float) -> _Plan | None:
        t, k = tenant.limits, key.limits
        if all(
            v is None for v in (t.requests_per_minute, t.tokens_per_minute, k.requests_per_minute, k.tokens_per_minute)
        ):
            return None
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
        increments = {"req": 1, "tok": tokens, f"req|{kid}": 1, f"tok|{kid}": tokens}
        return _Plan(f"rl|{tenant.id}|{window}", increments, limits, (window + 2) * MINUTE)

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
        """Reserve one request and ``tokens`` tokens against every limit, or raise 429."""
        now = self._clock.now()
        minute = self._minute_plan(tenant, key, tokens, now)
        period = self._period_plan(tenant, key, tokens, now)
        reservation = Reservation(tokens, None, None, key.id)
        minute_values: dict[str, int] = {}
        if minute is not None:
            ok, minute_values = self._counters.try_add(minute.item, minute.increments, minute.limits, minute.expires_at)
            if not ok:
                self._refuse_rate(minute, minute_values, tokens, now, tenant.limits, key.limits)
            reservation.minute_item = minute.item
            reservation.minute_expires_at = minute.expires_at
            reservation.headers = self._rate_headers(minute, minute_values, now)
        if period is not None:
            ok, values = self._counters.try_add(period.item, period.increments, period.limits, period.expires_at)
            if not ok:
                if minute is not None:
                    undo = {f: -v for f, v in minute.increments.items()}
                    self._counters.add(minute.item, undo, minute.expires_at)
                    # The refusal reports the minute as the undo left it.
                    after = {f: v + undo.get(f, 0) for f, v in minute_values.items()}
                    reservation.headers = self._rate_headers(minute, after, now)
                self._metrics.incr("limit_refusals_total", tenant=tenant.id, limit="quota")
                used = max(values.get(f, 0) - lim for f, lim in period.limits.items())
                over = [f for f, lim in period.limits.items() if values.get(f, 0) + tokens > lim]
                resets = max(period_bounds(now, "day" if "@" in f else "month")[1] for f in over or period.limits)
                raise QuotaExceeded(
                    f"token quota exhausted for this period: this request needs up to {tokens} tokens "
                    f"and the quota would be exceeded by {used + tokens}; lower max_tokens or wait for "
                    "the next period",
                    headers={**reservation.headers, "retry-after": str(max(1, math.ceil(resets - now)))},
                )
            reservation.period_item = period.item
            reservation.period_expires_at = period.expires_at
            reservation.period_fields = tuple(period.increments)
        return reservation

    def settle(self, reservation: Reservation, used_tokens: int, *, refund_request: bool = False) -> None:
        """Return the unused part of the reservation. A failed call settles with ``used_tokens=0``."""
        if reservation.settled:
            return
        reservation.settled = True
        used_tokens = max(0, min(used_tokens, reservation.tokens))
        delta = used_tokens - reservation.tokens
        kid = reservation.key_id
        if reservation.minute_item is not None and (delta or refund_request):
            deltas = {"tok": delta, f"tok|{kid}": delta}
            if refund_request:
                deltas.update({"req": -1, f"req|{kid}": -1})
            self._counters.add(reservation.minute_item, deltas, reservation.minute_expires_at)
        if reservation.period_item is not None and delta:
            self._counters.add(
                reservation.period_item, dict.fromkeys(reservation.period_fields, delta), reservation.period_expires_at
            )

    def _refuse_rate(
        self, plan: _Plan, values: dict[str, int], tokens: int, now: float, tenant: Limits, key: Limits
    ) -> None:
        reset = max(1, math.ceil((int(now // MINUTE) + 1) * MINUTE - now))
        headers = self._rate_headers(plan, values, now)
        headers["retry-after"] = str(reset)
        over = [f for f, lim in plan.limits.items() if values.get(f, 0) + plan.increments[f] > lim]
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
