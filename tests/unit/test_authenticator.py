"""Turning a request's credential into a Principal: where the key may come from, scopes, caching."""

from __future__ import annotations

from dataclasses import replace

import pytest

from core.auth import api_keys
from core.auth.authenticator import require
from core.domain import Principal
from core.errors import Forbidden, Unauthorized
from core.http import Request
from tests.fakes import Harness, error_of

GEN_BODY = {"model": "fake-gen", "prompt": "a b", "max_tokens": 2}


def request(headers: dict[str, str]) -> Request:
    return Request("GET", "/v1/models", headers)


def test_bearer_api_key_resolves_to_its_tenant_and_key(harness: Harness) -> None:
    principal = harness.gateway.auth.authenticate(request({"authorization": f"Bearer {harness.key}"}))
    assert principal == Principal(
        tenant_id=harness.tenant.id,
        key_id=api_keys.parse_key(harness.key),
        scopes=frozenset({"generate", "embed"}),
        via="api_key",
    )


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_bearer_scheme_is_case_insensitive(harness: Harness, scheme: str) -> None:
    principal = harness.gateway.auth.authenticate(request({"authorization": f"{scheme} {harness.key}"}))
    assert principal.tenant_id == harness.tenant.id


def test_x_api_key_header_works_too(harness: Harness) -> None:
    principal = harness.gateway.auth.authenticate(request({"x-api-key": harness.key}))
    assert principal.tenant_id == harness.tenant.id
    resp = harness.call("GET", "/v1/models", headers={"authorization": "", "x-api-key": harness.key})
    assert resp.status == 200


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": ""},
        {"authorization": "Bearer "},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"x-api-key": " "},
    ],
    ids=["none", "empty", "bearer-without-credential", "basic", "blank-x-api-key"],
)
def test_missing_credentials_are_401(harness: Harness, headers: dict[str, str]) -> None:
    with pytest.raises(Unauthorized) as info:
        harness.gateway.auth.authenticate(request(headers))
    assert info.value.code == "missing_credentials"


def test_missing_credentials_over_http(harness: Harness) -> None:
    resp = harness.call("GET", "/v1/models", headers={"authorization": ""})
    assert resp.status == 401
    err = error_of(resp)
    assert err["type"] == "authentication_error"
    assert err["code"] == "missing_credentials"


def test_missing_scope_is_403(harness: Harness) -> None:
    _, embed_only = harness.new_tenant("e", scopes=frozenset({"embed"}))
    resp = harness.call_json("POST", "/v1/generate", GEN_BODY, key=embed_only)
    assert resp.status == 403
    err = error_of(resp)
    assert err["type"] == "permission_error"
    assert err["code"] == "insufficient_scope"
    assert "generate" in err["message"]
    assert harness.backend.calls == 0
    assert harness.usage() == []


def test_admin_scope_implies_every_other_scope() -> None:
    admin = Principal("t", "k", frozenset({"admin"}))
    for scope in ("generate", "embed", "batch", "fine_tune", "validate"):
        require(admin, scope)
    with pytest.raises(Forbidden):
        require(Principal("t", "k", frozenset({"embed"})), "generate")


def test_revocation_in_another_process_applies_within_the_key_cache_ttl(harness: Harness) -> None:
    assert harness.call("GET", "/v1/models").status == 200  # caches the record
    record = harness.store.get_key(api_keys.parse_key(harness.key))
    assert record is not None
    harness.store.put_key(api_keys.revoked(record, harness.clock.now()))  # as another instance would
    ttl = harness.gateway.settings.key_cache_ttl_s
    harness.clock.advance(ttl)
    resp = harness.call("GET", "/v1/models")
    assert resp.status == 401
    assert error_of(resp)["code"] == "key_revoked"


def test_expiry_is_checked_against_the_clock_even_when_cached(harness: Harness) -> None:
    record = harness.store.get_key(api_keys.parse_key(harness.key))
    assert record is not None
    harness.store.put_key(replace(record, expires_at=harness.clock.now() + 2))
    assert harness.call("GET", "/v1/models").status == 200
    harness.clock.advance(2)
    assert harness.call("GET", "/v1/models").status == 401


def test_key_of_a_deleted_tenant_cannot_generate(harness: Harness) -> None:
    tenant, key = harness.new_tenant("gone")
    del harness.store._s.tenants[tenant.id]  # no delete API: simulate the record vanishing
    resp = harness.call_json("POST", "/v1/generate", GEN_BODY, key=key)
    assert resp.status == 401
    assert error_of(resp)["code"] == "unknown_tenant"
    assert harness.backend.calls == 0


def test_auth_failures_are_counted_in_metrics(harness: Harness) -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    class Spy:
        def incr(self, name: str, value: float = 1.0, **dims: str) -> None:
            seen.append((name, dims))

        def observe(self, name: str, value: float, **dims: str) -> None:
            return None

    harness.gateway.metrics = Spy()
    harness.call("GET", "/v1/models", key="tnlp_key_0000000000000000_bad")
    assert ("auth_failures_total", {"code": "invalid_api_key"}) in seen
