"""A revoked key, its access tokens and a suspended tenant's keys stop spending at once on every instance.

Two gateways over one store stand for two instances (workers, Lambda containers). Instance B has the
key and tenant records in its caches when instance A revokes: B must refuse every route that spends
tokens at once, from the guard the revocation writes into the counter items B's reservation touches.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from core.app import Gateway
from core.auth import api_keys
from core.domain import Limits
from core.http import Request, Response
from core.limits import GUARD_SPAN_S, MAX_RECORD_CACHE_S, MINUTE
from core.settings import GatewaySettings
from tests.fakes import Harness, error_of, json_of, make_harness

COMPLETION = {"model": "fake-gen", "prompt": "a b c", "max_tokens": 5}


def another_instance(h: Harness, **settings: Any) -> Gateway:
    assert h.resolver is not None
    gateway = Gateway(h.store, h.resolver, clock=h.clock, settings=GatewaySettings(**settings))

    async def no_sleep(_: float) -> None:
        return None

    gateway.model_router._sleep = no_sleep
    return gateway


def call(gateway: Gateway, method: str, path: str, credential: str, body: Any = None) -> Response:
    raw = json.dumps(body).encode() if body is not None else b""
    request = Request(method, path, {"authorization": f"Bearer {credential}"}, {}, raw)
    return asyncio.run(gateway.handle(request))


def spend(gateway: Gateway, credential: str) -> Response:
    return call(gateway, "POST", "/v1/completions", credential, COMPLETION)


def usage_records(h: Harness) -> int:
    return len(h.store.list_usage(h.tenant.id, 0, h.clock.now() + 1))


@pytest.mark.parametrize("limits", [Limits(), Limits(requests_per_minute=1000, token_quota=10**6)], ids=["none", "set"])
def test_a_revoked_key_and_its_tokens_stop_spending_at_once_on_another_instance(limits: Limits) -> None:
    h = make_harness(limits=limits)
    b = another_instance(h)
    token = json_of(call(b, "POST", "/auth/token", h.key))["access_token"]
    assert spend(b, h.key).status == 200  # B now holds the active key record in its cache
    assert spend(b, token).status == 200
    records = usage_records(h)

    kid = api_keys.parse_key(h.key)
    assert h.call("DELETE", f"/admin/keys/{kid}", key=h.admin_key).status == 200

    for credential in (h.key, token):
        refused = spend(b, credential)
        assert refused.status == 401
        assert error_of(refused)["code"] == "key_revoked"
    assert usage_records(h) == records, "a refusal is not a charge"
    # A route that spends nothing may use B's cached record until it expires (documented), then refuses.
    assert call(b, "GET", "/v1/models", h.key).status == 200
    h.clock.advance(5.01)
    assert call(b, "GET", "/v1/models", h.key).status == 401


def test_the_guard_outlives_the_longest_record_cache_across_minutes() -> None:
    """B trusts its cached record for the longest allowed time; the guard must refuse all that time."""
    h = make_harness()
    b = another_instance(h, key_cache_ttl_s=MAX_RECORD_CACHE_S)
    h.clock.advance(MINUTE - h.clock.now() % MINUTE - 1)  # a second before a minute ends
    assert spend(b, h.key).status == 200
    h.call("DELETE", f"/admin/keys/{api_keys.parse_key(h.key)}", key=h.admin_key)
    for _ in range(int(MAX_RECORD_CACHE_S) // 10):
        h.clock.advance(9.9)
        assert spend(b, h.key).status == 401
    assert GUARD_SPAN_S > MAX_RECORD_CACHE_S


def test_record_caches_cannot_outlive_the_guard() -> None:
    with pytest.raises(ValueError, match="key_cache_ttl_s"):
        GatewaySettings(key_cache_ttl_s=MAX_RECORD_CACHE_S + 1)
    with pytest.raises(ValueError, match="tenant_cache_ttl_s"):
        GatewaySettings(tenant_cache_ttl_s=-1)


def test_a_suspended_tenant_is_refused_at_once_and_resumed() -> None:
    h = make_harness()
    b = another_instance(h)
    second, record = api_keys.mint(h.tenant.id, "second", frozenset({"generate"}), h.clock.now())
    h.store.put_key(record)
    assert spend(b, h.key).status == 200
    assert spend(b, second).status == 200

    suspended = h.call("POST", f"/admin/tenants/{h.tenant.id}/suspend", key=h.admin_key)
    assert suspended.status == 200
    assert json_of(suspended)["suspended_at"] == h.clock.now()
    for key in (h.key, second):
        refused = spend(b, key)
        assert refused.status == 403
        assert error_of(refused)["code"] == "tenant_suspended"
    assert spend(h.gateway, h.key).status == 403  # and on the instance that suspended it
    assert call(h.gateway, "GET", "/v1/models", h.key).status == 403

    assert h.call("POST", f"/admin/tenants/{h.tenant.id}/resume", key=h.admin_key).status == 200
    assert spend(h.gateway, h.key).status == 200  # at once where it was resumed
    h.clock.advance(5.01)  # elsewhere once the cached tenant record expires
    assert spend(b, second).status == 200

    # Suspended again in the same minutes: the guard it wrote before was taken back exactly, so it holds.
    h.call("POST", f"/admin/tenants/{h.tenant.id}/suspend", key=h.admin_key)
    assert spend(b, second).status == 403


def test_suspending_is_idempotent_and_an_admin_cannot_suspend_its_own_tenant() -> None:
    h = make_harness()
    first = json_of(h.call("POST", f"/admin/tenants/{h.tenant.id}/suspend", key=h.admin_key))
    h.clock.advance(3)
    again = json_of(h.call("POST", f"/admin/tenants/{h.tenant.id}/suspend", key=h.admin_key))
    assert first["suspended_at"] == again["suspended_at"]
    own = h.call("POST", "/admin/tenants/ten_admin/suspend", key=h.admin_key)
    assert own.status == 400
    assert h.call("POST", "/admin/tenants/ten_nope/suspend", key=h.admin_key).status == 404
    resumed = json_of(h.call("POST", f"/admin/tenants/{h.tenant.id}/resume", key=h.admin_key))
    assert resumed["suspended_at"] is None
    assert h.call("POST", f"/admin/tenants/{h.tenant.id}/resume", key=h.admin_key).status == 200


def test_a_data_directory_from_before_suspension_gains_the_column(tmp_path: Any) -> None:
    import sqlite3

    from adapters.local.sqlite_store import SQLiteStore
    from core.domain import Tenant

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE tenants (id TEXT PRIMARY KEY, name TEXT NOT NULL, created_at REAL NOT NULL,"
            " limits TEXT NOT NULL)"
        )
        conn.execute("""INSERT INTO tenants VALUES ('t1', 'old', 1.0, '{}')""")
    store = SQLiteStore(str(path))
    assert store.get_tenant("t1") == Tenant(id="t1", name="old", created_at=1.0)
    store.put_tenant(Tenant(id="t1", name="old", created_at=1.0, suspended_at=2.0))
    assert store.get_tenant("t1") == Tenant(id="t1", name="old", created_at=1.0, suspended_at=2.0)


def test_an_instance_spending_budget_slices_refuses_a_revoked_key_within_its_guard_read() -> None:
    """An instance that serves from a slice of budget held in memory (core.budget_slices) writes nothing per
    request: it sees the revocation by its guard read of the minute item, shared by its requests for 0.1 s."""
    h = make_harness(limits=Limits(token_quota=10**6))
    b = another_instance(h, counter_slice_requests=16)
    assert [spend(b, h.key).status for _ in range(3)] == [200] * 3  # a slice is out, in B's memory
    kid = api_keys.parse_key(h.key)
    assert h.call("DELETE", f"/admin/keys/{kid}", key=h.admin_key).status == 200
    h.clock.advance(0.11)
    refused = spend(b, h.key)
    assert refused.status == 401
    assert error_of(refused)["code"] == "key_revoked"
