"""The admin API: tenants, keys, limits, models, usage across tenants; admin scope only."""

from __future__ import annotations

import re
from typing import Any

import pytest

from core.api import build_router
from core.auth import api_keys
from tests.fakes import Harness, error_of, json_of

MODEL: dict[str, Any] = {
    "id": "acme/gen-1",
    "kind": "generation",
    "backend": {"type": "local", "name": "gen"},
    "context_length": 1024,
    "max_output_tokens": 64,
    "price_per_1k_prompt_tokens": 0.5,
    "fallbacks": ["fake-gen"],
}


def admin(h: Harness, method: str, path: str, payload: Any = None, **kw: Any) -> Any:
    return h.call_json(method, path, payload, key=h.admin_key, **kw)


def ok(resp: Any, status: int = 200) -> Any:
    assert resp.status == status, resp.body
    return json_of(resp)


def admin_routes() -> list[tuple[str, str]]:
    return [(r.method, r.template) for r in build_router().routes if r.path.startswith("/admin")]


# -- access ------------------------------------------------------------------------------------------------


def test_the_admin_surface_is_what_we_test() -> None:
    assert sorted(admin_routes()) == sorted(
        [
            ("POST", "/admin/tenants"),
            ("GET", "/admin/tenants"),
            ("GET", "/admin/tenants/{tenant_id}"),
            ("PUT", "/admin/tenants/{tenant_id}/limits"),
            ("POST", "/admin/tenants/{tenant_id}/suspend"),
            ("POST", "/admin/tenants/{tenant_id}/resume"),
            ("POST", "/admin/tenants/{tenant_id}/keys"),
            ("GET", "/admin/tenants/{tenant_id}/keys"),
            ("DELETE", "/admin/keys/{key_id}"),
            ("PUT", "/admin/keys/{key_id}/limits"),
            ("GET", "/admin/usage"),
            ("POST", "/admin/models"),
            ("PUT", "/admin/models/{model_id}"),
            ("DELETE", "/admin/models/{model_id}"),
            ("POST", "/admin/signing-keys/rotate"),
        ]
    )


def concrete(h: Harness, path: str) -> str:
    values = {"tenant_id": h.tenant.id, "key_id": api_keys.parse_key(h.key), "model_id": "fake-gen"}
    return re.sub(r"\{([a-z_]+)\}", lambda m: values[m.group(1)], path)


BODIES: dict[str, Any] = {
    "/admin/tenants": {"name": "evil"},
    "/admin/tenants/{tenant_id}/limits": {"requests_per_minute": 1_000_000},
    "/admin/tenants/{tenant_id}/keys": {"name": "evil", "scopes": ["admin"]},
    "/admin/keys/{key_id}/limits": {},
    "/admin/models": MODEL,
    "/admin/models/{model_id}": MODEL,
}


@pytest.mark.parametrize(("method", "path"), admin_routes())
def test_a_non_admin_key_gets_403_on_every_admin_route(harness: Harness, method: str, path: str) -> None:
    _, other_key = harness.new_tenant("b", scopes=frozenset({"generate", "embed", "batch", "validate", "fine_tune"}))
    before = (harness.store.list_tenants(), harness.store.list_keys(harness.tenant.id), harness.store.list_models())
    for key in (harness.key, other_key):
        resp = harness.call_json(method, concrete(harness, path), BODIES.get(path), key=key)
        assert resp.status == 403, (method, path, resp.body)
        err = error_of(resp)
        assert err["type"] == "permission_error"
        assert "admin" in err["message"]
    after = (harness.store.list_tenants(), harness.store.list_keys(harness.tenant.id), harness.store.list_models())
    assert after == before
    assert harness.store.list_signing_keys() == []


@pytest.mark.parametrize(("method", "path"), admin_routes())
def test_admin_routes_need_credentials(harness: Harness, method: str, path: str) -> None:
    resp = harness.call_json(method, concrete(harness, path), BODIES.get(path), headers={"authorization": ""})
    assert resp.status == 401


def test_an_admin_keys_token_without_the_admin_scope_is_refused(harness: Harness) -> None:
    token = ok(harness.call_json("POST", "/auth/token", {"scopes": ["generate"]}, key=harness.admin_key))[
        "access_token"
    ]
    assert harness.call("GET", "/admin/tenants", key=token).status == 403
    full = ok(harness.call("POST", "/auth/token", key=harness.admin_key))["access_token"]
    assert harness.call("GET", "/admin/tenants", key=full).status == 200


# -- tenants -----------------------------------------------------------------------------------------------


def test_create_list_and_get_tenants(harness: Harness) -> None:
    created = ok(admin(harness, "POST", "/admin/tenants", {"name": "Acme"}), 201)
    assert created["name"] == "Acme"
    assert created["id"].startswith("ten_")
    assert created["created_at"] == harness.clock.now()
    assert created["limits"] == {
        "requests_per_minute": None,
        "tokens_per_minute": None,
        "token_quota": None,
        "quota_period": "month",
    }
    listed = ok(admin(harness, "GET", "/admin/tenants"))
    assert listed["object"] == "list"
    assert {t["id"] for t in listed["data"]} == {"ten_admin", "ten_a", created["id"]}
    assert ok(admin(harness, "GET", f"/admin/tenants/{created['id']}")) == created


def test_unknown_tenant_is_404(harness: Harness) -> None:
    for method, path, body in [
        ("GET", "/admin/tenants/ten_nope", None),
        ("PUT", "/admin/tenants/ten_nope/limits", {}),
        ("POST", "/admin/tenants/ten_nope/keys", {"name": "k"}),
        ("GET", "/admin/tenants/ten_nope/keys", None),
    ]:
        resp = admin(harness, method, path, body)
        assert resp.status == 404, (method, path)
        assert error_of(resp)["param"] == "tenant_id"


@pytest.mark.parametrize("body", [{}, {"name": ""}, {"name": "x" * 129}, {"name": "a", "limits": {}}, {"name": 5}])
def test_tenant_validation(harness: Harness, body: dict[str, Any]) -> None:
    resp = admin(harness, "POST", "/admin/tenants", body)
    assert resp.status == 400
    assert error_of(resp)["type"] == "invalid_request_error"
    assert len(harness.store.list_tenants()) == 2


def test_tenant_limits_apply_at_once(harness: Harness) -> None:
    limits = {"requests_per_minute": 1, "tokens_per_minute": None, "token_quota": 5000, "quota_period": "day"}
    updated = ok(admin(harness, "PUT", f"/admin/tenants/{harness.tenant.id}/limits", limits))
    assert updated["limits"] == limits
    assert ok(admin(harness, "GET", f"/admin/tenants/{harness.tenant.id}"))["limits"] == limits
    body = {"model": "fake-gen", "prompt": "a", "max_tokens": 1}
    assert harness.call_json("POST", "/v1/completions", body).status == 200
    assert harness.call_json("POST", "/v1/completions", body).status == 429
    # Clearing them lifts the limit straight away too.
    ok(admin(harness, "PUT", f"/admin/tenants/{harness.tenant.id}/limits", {}))
    assert harness.call_json("POST", "/v1/completions", body).status == 200


@pytest.mark.parametrize(
    "body", [{"requests_per_minute": -1}, {"quota_period": "week"}, {"rpm": 5}, {"token_quota": "lots"}]
)
def test_limit_validation(harness: Harness, body: dict[str, Any]) -> None:
    for path in (f"/admin/tenants/{harness.tenant.id}/limits", f"/admin/keys/{api_keys.parse_key(harness.key)}/limits"):
        resp = admin(harness, "PUT", path, body)
        assert resp.status == 400, path
    assert harness.store.get_tenant(harness.tenant.id) == harness.tenant


# -- keys --------------------------------------------------------------------------------------------------


def test_create_list_and_revoke_keys(harness: Harness) -> None:
    tid = harness.tenant.id
    harness.clock.advance(1)
    created = ok(admin(harness, "POST", f"/admin/tenants/{tid}/keys", {"name": "ci"}), 201)
    assert created["object"] == "api_key"
    assert created["tenant_id"] == tid
    assert created["scopes"] == ["embed", "generate"]
    assert created["revoked_at"] is None
    assert isinstance(created["key"], str)
    listed = ok(admin(harness, "GET", f"/admin/tenants/{tid}/keys"))["data"]
    assert [k["name"] for k in listed] == ["k", "ci"]
    assert all(k["key"] is None for k in listed)

    revoked = ok(admin(harness, "DELETE", f"/admin/keys/{created['id']}"))
    assert revoked["revoked_at"] == harness.clock.now()
    assert revoked["key"] is None
    assert harness.call("GET", "/v1/models", key=created["key"]).status == 401
    harness.clock.advance(10)
    again = ok(admin(harness, "DELETE", f"/admin/keys/{created['id']}"))
    assert again["revoked_at"] == revoked["revoked_at"]  # revoking twice keeps the first time
    assert [k["revoked_at"] is not None for k in ok(admin(harness, "GET", f"/admin/tenants/{tid}/keys"))["data"]] == [
        False,
        True,
    ]


def test_keys_of_another_tenant_are_not_listed(harness: Harness) -> None:
    other, _ = harness.new_tenant("b")
    listed = ok(admin(harness, "GET", f"/admin/tenants/{harness.tenant.id}/keys"))["data"]
    assert {k["tenant_id"] for k in listed} == {harness.tenant.id}
    assert other.id not in str(listed)


def test_unknown_key_is_404(harness: Harness) -> None:
    cases: list[tuple[str, str, Any]] = [
        ("DELETE", "/admin/keys/key_nope", None),
        ("PUT", "/admin/keys/key_nope/limits", {}),
    ]
    for method, path, body in cases:
        resp = admin(harness, method, path, body)
        assert resp.status == 404
        assert error_of(resp)["param"] == "key_id"


def test_key_limits_apply_at_once(harness: Harness) -> None:
    kid = api_keys.parse_key(harness.key)
    body = {"model": "fake-gen", "prompt": "a", "max_tokens": 1}
    assert harness.call_json("POST", "/v1/completions", body).status == 200  # key record now cached
    out = ok(admin(harness, "PUT", f"/admin/keys/{kid}/limits", {"requests_per_minute": 1}))
    assert out["limits"]["requests_per_minute"] == 1
    assert out["key"] is None
    # Every request is counted in its minute, limited or not: the one made before the limit counts too.
    assert harness.call_json("POST", "/v1/completions", body).status == 429
    harness.clock.advance(60)
    assert harness.call_json("POST", "/v1/completions", body).status == 200
    assert harness.call_json("POST", "/v1/completions", body).status == 429


def test_a_key_can_be_minted_with_an_expiry_and_scopes(harness: Harness) -> None:
    exp = harness.clock.now() + 100
    body = {"name": "batch", "scopes": ["batch", "embed"], "expires_at": exp}
    created = ok(admin(harness, "POST", f"/admin/tenants/{harness.tenant.id}/keys", body), 201)
    assert created["expires_at"] == exp
    assert created["scopes"] == ["batch", "embed"]
    resp = harness.call_json("POST", "/v1/completions", {"model": "fake-gen", "prompt": "a"}, key=created["key"])
    assert resp.status == 403


# -- models ------------------------------------------------------------------------------------------------


def test_register_a_model_and_use_it(harness: Harness) -> None:
    card = ok(admin(harness, "POST", "/admin/models", MODEL), 201)
    assert card["id"] == MODEL["id"]
    assert card["object"] == "model"
    assert card["context_length"] == 1024
    assert card["fallbacks"] == ["fake-gen"]
    assert card["created"] == int(harness.clock.now())
    assert "backend" not in card  # where a model runs is not the callers' business
    assert MODEL["id"] in {m["id"] for m in ok(harness.call("GET", "/v1/models"))["data"]}
    assert ok(harness.call("GET", f"/v1/models/{MODEL['id']}"))["max_output_tokens"] == 64
    gen = harness.call_json("POST", "/v1/completions", {"model": MODEL["id"], "prompt": "a b", "max_tokens": 2})
    assert ok(gen)["model"] == MODEL["id"]


def test_registering_an_existing_model_is_409(harness: Harness) -> None:
    ok(admin(harness, "POST", "/admin/models", MODEL), 201)
    resp = admin(harness, "POST", "/admin/models", {**MODEL, "context_length": 4096})
    assert resp.status == 409
    err = error_of(resp)
    assert (err["code"], err["param"]) == ("conflict", "id")
    assert ok(harness.call("GET", f"/v1/models/{MODEL['id']}"))["context_length"] == 1024
    assert admin(harness, "POST", "/admin/models", {**MODEL, "id": "fake-gen", "fallbacks": []}).status == 409


@pytest.mark.parametrize(
    "change",
    [
        {"backend": {}},
        {"backend": {"type": "ftp"}},
        {"backend": {"type": "openai", "base_url": "http://x/v1"}},
        {"backend": {"type": "openai", "model": "m"}},
        {"backend": {"type": "sagemaker"}},
        {"backend": {"type": "sagemaker", "endpoint_name": ""}},
        {"backend": {"type": "local", "engine": "tensorrt"}},
        {"backend": {"type": "vertex", "endpoint": "projects/p/locations/l/endpoints/e"}},
        {"backend": "local"},
        {"kind": "image"},
        {"id": "bad id with spaces"},
        {"id": ""},
        {"fallbacks": ["acme/gen-1"]},
        {"max_output_tokens": 1024},
        {"context_length": 8},
        {"timeout_s": 0},
        {"timeout_s": 901},
        {"max_retries": 11},
        {"price_per_1k_prompt_tokens": -1},
        {"unknown_field": 1},
    ],
)
def test_model_validation(harness: Harness, change: dict[str, Any]) -> None:
    resp = admin(harness, "POST", "/admin/models", {**MODEL, **change})
    assert resp.status == 400, change
    assert error_of(resp)["type"] == "invalid_request_error"
    assert harness.store.get_model(str(change.get("id", MODEL["id"]))) is None


@pytest.mark.parametrize(
    "backend",
    [
        {"type": "openai", "base_url": "http://vllm:8000/v1", "model": "m"},
        {"type": "sagemaker", "endpoint_name": "ep"},
        {"type": "local", "engine": "onnx"},
    ],
)
def test_every_backend_type_with_its_fields_is_accepted(harness: Harness, backend: dict[str, Any]) -> None:
    ok(admin(harness, "POST", "/admin/models", {**MODEL, "backend": backend}), 201)
    stored = harness.store.get_model(MODEL["id"])
    assert stored is not None
    assert stored.backend == backend


def test_replace_a_model(harness: Harness) -> None:
    ok(admin(harness, "POST", "/admin/models", MODEL), 201)
    created = harness.clock.now()
    harness.clock.advance(100)
    body = {**MODEL, "max_output_tokens": 4}
    body.pop("id")
    card = ok(admin(harness, "PUT", f"/admin/models/{MODEL['id']}", body))
    assert card["max_output_tokens"] == 4
    assert card["created"] == int(created)
    # At once: the registry cache was refreshed.
    resp = harness.call_json("POST", "/v1/completions", {"model": MODEL["id"], "prompt": "a", "max_tokens": 5})
    assert resp.status == 400
    assert error_of(resp)["code"] == "max_tokens_exceeded"


def test_put_creates_a_missing_model_and_refuses_a_different_id(harness: Harness) -> None:
    card = ok(admin(harness, "PUT", "/admin/models/new-model", {**MODEL, "id": "new-model"}))
    assert card["id"] == "new-model"
    resp = admin(harness, "PUT", "/admin/models/new-model", {**MODEL, "id": "other"})
    assert resp.status == 400
    assert error_of(resp)["param"] == "id"
    assert harness.store.get_model("other") is None
    assert admin(harness, "PUT", "/admin/models/new-model", {**MODEL, "backend": {"type": "ftp"}}).status == 400


def test_delete_a_model(harness: Harness) -> None:
    ok(admin(harness, "POST", "/admin/models", MODEL), 201)
    body = {"model": MODEL["id"], "prompt": "a", "max_tokens": 1}
    assert harness.call_json("POST", "/v1/completions", body).status == 200  # registry entry now cached
    assert ok(admin(harness, "DELETE", f"/admin/models/{MODEL['id']}")) == {
        "id": MODEL["id"],
        "object": "model",
        "deleted": True,
    }
    assert harness.call_json("POST", "/v1/completions", body).status == 404
    resp = admin(harness, "DELETE", f"/admin/models/{MODEL['id']}")
    assert resp.status == 404
    assert error_of(resp)["code"] == "model_not_found"
    # And it can be registered again.
    ok(admin(harness, "POST", "/admin/models", MODEL), 201)


# -- usage across tenants ----------------------------------------------------------------------------------


def make_usage(h: Harness) -> str:
    _, b_key = h.new_tenant("b")
    body = {"model": "fake-gen", "prompt": "a b c", "max_tokens": 2}
    assert h.call_json("POST", "/v1/completions", body).status == 200  # 3 + 2
    assert h.call_json("POST", "/v1/embeddings", {"model": "fake-emb", "input": "x y"}).status == 200  # 2
    assert h.call_json("POST", "/v1/completions", body, key=b_key).status == 200  # 3 + 2
    h.clock.advance(86_400)
    assert h.call_json("POST", "/v1/completions", {**body, "max_tokens": 1}, key=b_key).status == 200  # 3 + 1
    return b_key


def test_admin_usage_covers_every_tenant(harness: Harness) -> None:
    make_usage(harness)
    out = ok(admin(harness, "GET", "/admin/usage", query={"group_by": "none"}))
    assert out["tenant_id"] is None
    assert {r["tenant_id"] for r in out["data"]} == {"ten_a", "ten_b"}
    assert out["totals"]["requests"] == 4
    assert out["totals"]["prompt_tokens"] == 3 + 2 + 3 + 3
    assert out["totals"]["completion_tokens"] == 2 + 2 + 1
    assert out["totals"]["total_tokens"] == 16
    by_tenant = {r["tenant_id"]: r for r in out["data"]}
    assert by_tenant["ten_a"]["requests"] == 2
    assert by_tenant["ten_b"]["total_tokens"] == 9


@pytest.mark.parametrize(
    ("group_by", "keys"),
    [
        ("day", {"day", "tenant_id"}),
        ("model", {"model", "tenant_id"}),
        ("day,model", {"day", "model", "tenant_id"}),
        ("none", {"tenant_id"}),
    ],
)
def test_admin_usage_group_by(harness: Harness, group_by: str, keys: set[str]) -> None:
    make_usage(harness)
    out = ok(admin(harness, "GET", "/admin/usage", query={"group_by": group_by}))
    assert out["group_by"] == group_by
    numbers = {"requests", "prompt_tokens", "completion_tokens", "total_tokens", "cached_requests", "cost"}
    for row in out["data"]:
        assert set(row) == keys | numbers
    assert sum(r["requests"] for r in out["data"]) == 4
    expected_rows = {"day": 3, "model": 3, "day,model": 4, "none": 2}[group_by]
    assert len(out["data"]) == expected_rows


def test_admin_usage_filters_by_tenant_and_dates(harness: Harness) -> None:
    make_usage(harness)
    only_b = ok(admin(harness, "GET", "/admin/usage", query={"tenant": "ten_b", "group_by": "day"}))
    assert only_b["tenant_id"] == "ten_b"
    assert [r["requests"] for r in only_b["data"]] == [1, 1]
    first_day = only_b["data"][0]["day"]
    one_day = ok(admin(harness, "GET", "/admin/usage", query={"start": first_day, "end": first_day}))
    assert one_day["totals"]["requests"] == 3
    assert admin(harness, "GET", "/admin/usage", query={"group_by": "tenant"}).status == 400
