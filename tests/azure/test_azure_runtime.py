"""A worker's runtime at exit: what its budget slices hold goes back to the tenant's counters."""

from __future__ import annotations

import time

import pytest

from adapters.local.memory_store import MemoryStore
from core.auth import api_keys
from core.budget_slices import SlicedLimits
from core.domain import Limits, Tenant, UsageRecord
from core.limits import period_bounds
from core.settings import GatewaySettings
from functions.azure.bootstrap import AzureSettings, build_runtime

pytestmark = pytest.mark.azure


def test_a_worker_gives_back_what_its_slices_hold_at_exit() -> None:
    store = MemoryStore()
    rt = build_runtime(AzureSettings(gateway=GatewaySettings(counter_slice_requests=64)), store=store)
    limits = rt.gateway.limits
    assert isinstance(limits, SlicedLimits)
    tenant = Tenant("ten_a", "a", time.time(), Limits(token_quota=100_000))
    _, key = api_keys.mint(tenant.id, "app", frozenset({"generate"}), time.time())
    share = limits.reserve(tenant, key, 100)
    record = UsageRecord("r1", tenant.id, key.id, "m", "/v1/completions", 10, 30, False, 0.0, 200, time.time())
    assert store.record_usage(record, limits.settlement(share, 40))
    quota_item = f"q|{tenant.id}|{period_bounds(time.time(), 'month')[0]}"
    assert store.read(quota_item)["used"] > 40  # the slice holds more than the request used

    rt.give_back()  # what atexit calls: on this thread, no event loop running

    assert store.read(quota_item)["used"] == 40
