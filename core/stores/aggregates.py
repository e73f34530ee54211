"""Daily usage aggregates kept in shards: what one record adds to its shard, and the shards added up.

A store that spreads a tenant's (day, model) aggregate over several items (DynamoDB's and Cosmos DB's request-id
shards, Firestore's writer shards) adds ``record_sums`` to one of them per record, and answers ``daily_usage``
with ``summed`` over the shards it reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from core.domain import UsageAggregate, UsageRecord


def record_sums(record: UsageRecord) -> dict[str, int | float]:
    """What one usage record adds to its day's aggregate, by the aggregate's field names."""
    return {
        "requests": 1,
        "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens,
        "cached_requests": int(record.cached),
        "cost": float(record.cost),
    }


def aggregate_of(fields: Mapping[str, Any]) -> UsageAggregate:
    """A shard stored as a document of those fields (plus ``tenant_id``, ``day``, ``model``); absent sums are 0."""
    return UsageAggregate(
        tenant_id=fields["tenant_id"],
        day=fields["day"],
        model=fields["model"],
        requests=int(fields.get("requests", 0)),
        prompt_tokens=int(fields.get("prompt_tokens", 0)),
        completion_tokens=int(fields.get("completion_tokens", 0)),
        cached_requests=int(fields.get("cached_requests", 0)),
        cost=float(fields.get("cost", 0.0)),
    )


def summed(shards: Iterable[UsageAggregate]) -> list[UsageAggregate]:
    """The shards of each (tenant, day, model) added up, in (day, tenant, model) order."""
    totals: dict[tuple[str, str, str], list[int | float]] = {}
    for s in shards:
        row = totals.setdefault((s.day, s.tenant_id, s.model), [0, 0, 0, 0, 0.0])
        for i, value in enumerate((s.requests, s.prompt_tokens, s.completion_tokens, s.cached_requests, s.cost)):
            row[i] += value
    return [
        UsageAggregate(tenant, day, model, int(r), int(p), int(c), int(k), float(cost))
        for (day, tenant, model), (r, p, c, k, cost) in sorted(totals.items())
    ]
