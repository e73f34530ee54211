"""What a refused reservation tells the caller: the error, its message and the x-ratelimit headers."""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Mapping

from core.errors import Forbidden, QuotaExceeded, RateLimited, Unauthorized

MINUTE = 60
TENANT_OFF = "off"


def key_off(key_id: str) -> str:
    """The guard field of one key: non-zero once the key is revoked."""
    return f"{TENANT_OFF}|{key_id}"


def period_bounds(now: float, period: str) -> tuple[str, float]:
    """The id of the quota period containing ``now`` and the time it ends (UTC)."""
    t = time.gmtime(now)
    if period == "day":
        start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        return time.strftime("%Y-%m-%d", t), start + 86_400
    days = calendar.monthrange(t.tm_year, t.tm_mon)[1]
    start = calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0))
    return time.strftime("%Y-%m", t), start + days * 86_400


def refuse_guarded(values: Mapping[str, int], key_id: str) -> None:
    """401 ``key_revoked`` or 403 ``tenant_suspended`` when a minute item's guard is set."""
    if values.get(key_off(key_id), 0) > 0:
        raise Unauthorized("API key revoked or expired", code="key_revoked")
    if values.get(TENANT_OFF, 0) > 0:
        raise Forbidden("the tenant of this credential is suspended", code="tenant_suspended")


def _seconds_to_next_minute(now: float) -> int:
    return max(0, math.ceil((int(now // MINUTE) + 1) * MINUTE - now))


def rate_headers(limits: Mapping[str, int], used: Mapping[str, int], now: float) -> dict[str, str]:
    """``x-ratelimit-*`` of the tightest request and token limits, from what each limited field has used."""
    reset = f"{_seconds_to_next_minute(now)}s"
    headers: dict[str, str] = {}
    for what, prefix in (("requests", "req"), ("tokens", "tok")):
        pairs = [(lim, lim - used.get(f, 0)) for f, lim in limits.items() if f.startswith(prefix)]
        if not pairs:
            continue
        limit, remaining = min(pairs, key=lambda p: p[1])
        headers[f"x-ratelimit-limit-{what}"] = str(limit)
        headers[f"x-ratelimit-remaining-{what}"] = str(max(0, remaining))
        headers[f"x-ratelimit-reset-{what}"] = reset
    return headers


def rate_limited(
    limits: Mapping[str, int], increments: Mapping[str, int], used: Mapping[str, int], tokens: int, now: float
) -> RateLimited:
    """429 for a per-minute limit: which one, whose, and when to retry."""
    reset = max(1, _seconds_to_next_minute(now))
    headers = rate_headers(limits, used, now)
    headers["retry-after"] = str(reset)
    over = [f for f, lim in limits.items() if used.get(f, 0) + increments.get(f, 0) > lim]
    what = "requests" if over and over[0].startswith("req") else "tokens"
    whose = "this key" if over and "|" in over[0] else "this tenant"
    limit = limits[over[0]] if over else 0
    if what == "tokens" and tokens > limit:
        msg = (
            f"this request needs up to {tokens} tokens, more than the {limit} tokens per minute "
            f"allowed for {whose}; lower max_tokens or shorten the prompt"
        )
    else:
        msg = f"rate limit of {limit} {what} per minute reached for {whose}; retry after {reset} s"
    return RateLimited(msg, headers=headers)


def quota_exceeded(
    limits: Mapping[str, int], used: Mapping[str, int], tokens: int, now: float, headers: Mapping[str, str]
) -> QuotaExceeded:
    """429 ``quota_exceeded``: by how much, and when the period that refused ends."""
    over_by = max(used.get(f, 0) - lim for f, lim in limits.items())
    over = [f for f, lim in limits.items() if used.get(f, 0) + tokens > lim]
    resets = max(period_bounds(now, "day" if "@" in f else "month")[1] for f in over or limits)
    return QuotaExceeded(
        f"token quota exhausted for this period: this request needs up to {tokens} tokens "
        f"and the quota would be exceeded by {over_by + tokens}; lower max_tokens or wait for "
        "the next period",
        headers={**headers, "retry-after": str(max(1, math.ceil(resets - now)))},
    )
