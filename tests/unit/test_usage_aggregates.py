"""core.stores.aggregates: a record's sums, and a day's aggregate shards added up per (tenant, day, model)."""

from __future__ import annotations

from core.domain import UsageAggregate, UsageRecord
from core.stores.aggregates import aggregate_of, record_sums, summed


def test_the_shards_of_each_day_and_model_add_up_and_come_in_order() -> None:
    record = UsageRecord("r1", "t1", "k1", "m1", "/v1/generate", 10, 5, True, 1.0, 200, 0.0, 0.25)
    shard = {"tenant_id": "t1", "day": "2026-12-06", "model": "m1", **record_sums(record)}
    other_model = {"tenant_id": "t1", "day": "2026-12-06", "model": "m0", "requests": 2, "prompt_tokens": 3}
    earlier = {"tenant_id": "t1", "day": "2026-12-05", "model": "m1", "cost": 1.5}
    rows = summed(aggregate_of(d) for d in (shard, other_model, shard, earlier))
    assert rows == [
        UsageAggregate("t1", "2026-12-05", "m1", 0, 0, 0, 0, 1.5),
        UsageAggregate("t1", "2026-12-06", "m0", 2, 3, 0, 0, 0.0),
        UsageAggregate("t1", "2026-12-06", "m1", 2, 20, 10, 2, 0.5),
    ]
