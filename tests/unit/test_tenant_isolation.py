"""Tenants are walled off: the tenant comes only from the credential, never from what a caller says."""

from __future__ import annotations

from typing import Any

import pytest

from core.auth import api_keys
from core.domain import Limits
from tests.fakes import Harness, error_of, json_of, make_harness

GEN = {"model": "fake-gen", "prompt": "alpha beta gamma", "max_tokens": 2, "temperature": 0}
SPOOF = {
    "x-tenant-id": "ten_b",
    "x-textnlp-tenant": "ten_b",
    "x-amz-tenant": "ten_b",
    "tenant": "ten_b",
    "x-api-key": "ignored-when-a-bearer-is-present",
}


@pytest.fixture
def h() -> Harness:
    return make_harness(limits=Limits(requests_per_minute=2))


@pytest.fixture
def b_key(h: Harness) -> str:
    _, key = h.new_tenant("b", limits=Limits(requests_per_minute=2))
    return key


def own_usage(h: Harness, key: str, **query: str) -> dict[str, Any]:
    resp = h.call("GET", "/v1/usage", key=key, query=query)
    assert resp.status == 200
    out: dict[str, Any] = json_of(resp)
    return out


def test_usage_of_a_never_shows_up_for_b(h: Harness, b_key: str) -> None:
    assert h.call_json("POST", "/v1/completions", GEN).status == 200
    for query in ({}, {"tenant": "ten_a"}, {"tenant_id": "ten_a"}, {"group_by": "none"}):
        out = own_usage(h, b_key, **query)
        assert out["tenant_id"] == "ten_b"
        assert out["totals"]["requests"] == 0
        assert out["data"] == []
    spoofed = h.call("GET", "/v1/usage", key=b_key, headers={"x-tenant-id": "ten_a"})
    assert json_of(spoofed)["totals"]["requests"] == 0
    assert own_usage(h, h.key)["totals"]["requests"] == 1


def test_tenant_headers_are_ignored_for_metering_and_limits(h: Harness, b_key: str) -> None:
    for _ in range(2):
        assert h.call_json("POST", "/v1/completions", {**GEN, "temperature": 1}, headers=SPOOF).status == 200
    assert {r.tenant_id for r in h.usage()} == {"ten_a"}
    # A's minute is spent; spoofing B's id does not borrow B's allowance...
    refused = h.call_json("POST", "/v1/completions", GEN, headers=SPOOF)
    assert refused.status == 429
    # ...and B's own allowance is untouched.
    assert h.call_json("POST", "/v1/completions", GEN, key=b_key).headers["x-ratelimit-remaining-requests"] == "1"


def test_a_tenant_named_in_the_body_is_ignored(h: Harness, b_key: str) -> None:
    body = {**GEN, "tenant": "ten_b", "tenant_id": "ten_b", "user": "ten_b"}
    assert h.call_json("POST", "/v1/completions", body).status == 200
    emb = {"model": "fake-emb", "input": "x", "user": "ten_b", "tenant_id": "ten_b"}
    assert h.call_json("POST", "/v1/embeddings", emb).status == 200
    assert {r.tenant_id for r in h.usage()} == {"ten_a"}


def test_cache_entries_are_never_shared(h: Harness, b_key: str) -> None:
    a = h.call_json("POST", "/v1/completions", GEN)
    assert json_of(a)["cached"] is False
    b = h.call_json("POST", "/v1/completions", GEN, key=b_key, headers={"x-tenant-id": "ten_a"})
    assert json_of(b)["cached"] is False
    assert h.backend.calls == 2
    emb = {"model": "fake-emb", "input": "shared text"}
    h.call_json("POST", "/v1/embeddings", emb)
    assert json_of(h.call_json("POST", "/v1/embeddings", emb, key=b_key))["cached"] is False
    assert h.backend.calls == 4
    hits = [r for r in h.usage() if r.cached]
    assert hits == []


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin/usage"),
        ("GET", "/admin/tenants"),
        ("GET", "/admin/tenants/ten_a"),
        ("GET", "/admin/tenants/ten_a/keys"),
        ("POST", "/admin/tenants/ten_a/keys"),
        ("PUT", "/admin/tenants/ten_a/limits"),
    ],
)
def test_b_cannot_reach_a_through_admin_routes(h: Harness, b_key: str, method: str, path: str) -> None:
    h.call_json("POST", "/v1/completions", GEN)
    resp = h.call_json(method, path, {"name": "x"} if method == "POST" else {}, key=b_key, query={"tenant": "ten_a"})
    assert resp.status == 403
    assert "ten_a" not in str(error_of(resp))
    assert "alpha" not in resp.body.decode()


def test_a_revoked_key_of_b_does_not_touch_a(h: Harness, b_key: str) -> None:
    assert h.call("DELETE", f"/admin/keys/{api_keys.parse_key(b_key)}", key=h.admin_key).status == 200
    assert h.call("GET", "/v1/models", key=b_key).status == 401
    assert h.call("GET", "/v1/models").status == 200


def test_an_access_token_carries_its_tenant_whatever_the_headers_say(h: Harness, b_key: str) -> None:
    token = json_of(h.call("POST", "/auth/token"))["access_token"]
    assert h.call_json("POST", "/v1/completions", GEN, key=token, headers=SPOOF).status == 200
    (record,) = h.usage()
    assert record.tenant_id == "ten_a"
    assert own_usage(h, b_key)["totals"]["requests"] == 0


def test_admin_usage_for_one_tenant_contains_only_that_tenant(h: Harness, b_key: str) -> None:
    h.call_json("POST", "/v1/completions", GEN)
    h.call_json("POST", "/v1/completions", GEN, key=b_key)
    out = json_of(h.call("GET", "/admin/usage", key=h.admin_key, query={"tenant": "ten_b", "group_by": "model"}))
    assert out["tenant_id"] == "ten_b"
    assert out["totals"]["requests"] == 1
    assert [r["requests"] for r in out["data"]] == [1]
