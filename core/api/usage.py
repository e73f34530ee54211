"""Usage reports: ``GET /v1/usage`` for the caller's own tenant (admins use /admin/usage)."""

from __future__ import annotations

import calendar
import re
import time
from collections import defaultdict
from typing import Any

from core.app import RequestContext
from core.errors import InvalidRequest
from core.http import Response
from core.routes import Router

_DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")
GROUPINGS = ("day", "model", "day,model", "none")


def _day_param(ctx: RequestContext, name: str, default: str) -> str:
    value = ctx.request.query.get(name) or default
    if not _DAY.match(value):
        raise InvalidRequest(f"{name} must be a date as YYYY-MM-DD", param=name)
    try:
        time.strptime(value, "%Y-%m-%d")
    except ValueError:
        raise InvalidRequest(f"{name} is not a valid date", param=name) from None
    return value


def usage_report(ctx: RequestContext, tenant_id: str | None) -> dict[str, Any]:
    now = time.gmtime(ctx.gateway.clock.now())
    month_start = time.strftime("%Y-%m-01", now)
    month_end = time.strftime(f"%Y-%m-{calendar.monthrange(now.tm_year, now.tm_mon)[1]:02d}", now)
    start = _day_param(ctx, "start", month_start)
    end = _day_param(ctx, "end", month_end)
    if end < start:
        raise InvalidRequest("end is before start", param="end")
    group_by = ctx.request.query.get("group_by", "day,model")
    if group_by not in GROUPINGS:
        raise InvalidRequest(f"group_by must be one of {', '.join(GROUPINGS)}", param="group_by")
    fields = [] if group_by == "none" else group_by.split(",")
    groups: dict[tuple[str, ...], dict[str, Any]] = defaultdict(
        lambda: {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_requests": 0, "cost": 0.0}
    )
    totals = {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cached_requests": 0, "cost": 0.0}
    for agg in ctx.gateway.store.daily_usage(tenant_id, start, end):
        key_values = {"day": agg.day, "model": agg.model, "tenant_id": agg.tenant_id}
        group_fields = fields + (["tenant_id"] if tenant_id is None else [])
        group = groups[tuple(key_values[f] for f in group_fields)]
        for f in group_fields:
            group[f] = key_values[f]
        for target in (group, totals):
            target["requests"] += agg.requests
            target["prompt_tokens"] += agg.prompt_tokens
            target["completion_tokens"] += agg.completion_tokens
            target["cached_requests"] += agg.cached_requests
            target["cost"] = round(target["cost"] + agg.cost, 8)
    data = []
    for _, row in sorted(groups.items()):
        row["total_tokens"] = row["prompt_tokens"] + row["completion_tokens"]
        data.append(row)
    totals["total_tokens"] = totals["prompt_tokens"] + totals["completion_tokens"]
    return {
        "object": "usage",
        "tenant_id": tenant_id,
        "start": start,
        "end": end,
        "group_by": group_by,
        "data": data,
        "totals": totals,
    }


def register(router: Router) -> None:
    @router.route(
        "GET",
        "/v1/usage",
        scope=None,
        summary="Usage of the caller's own tenant",
        tags=("usage",),
        query={"start": "YYYY-MM-DD", "end": "YYYY-MM-DD", "group_by": "day|model|day,model|none"},
    )
    async def own_usage(ctx: RequestContext) -> Response:
        return Response.json(await ctx.offload(usage_report, ctx, ctx.caller.tenant_id))
