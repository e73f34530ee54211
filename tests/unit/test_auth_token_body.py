"""POST /auth/token with the API key in the body (``{"api_key": ...}``), as the seed's client sends it.

Every bad input is a 400 or 401 in the OpenAI error shape, never a 500; the header path is unchanged.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest

from core.auth import api_keys
from tests.fakes import Harness, error_of, json_of

NO_HEADER = {"authorization": ""}


def token_call(h: Harness, body: Any, headers: dict[str, str] | None = None) -> Any:
    raw = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
    return h.call("POST", "/auth/token", raw, headers=NO_HEADER if headers is None else headers)


def claims(token: str) -> dict[str, Any]:
    out: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return out


def test_the_key_in_the_body_buys_a_token_that_works(harness: Harness) -> None:
    resp = token_call(harness, {"api_key": harness.key})
    assert resp.status == 200, resp.body
    data = json_of(resp)
    assert set(data) == {"access_token", "token", "token_type", "expires_in"}
    assert data["token"] == data["access_token"]
    assert data["token_type"] == "Bearer"
    assert claims(data["token"])["tid"] == harness.tenant.id
    assert claims(data["token"])["sub"] == api_keys.parse_key(harness.key)
    models = harness.call("GET", "/v1/models", key=data["token"])
    assert models.status == 200
    gen = harness.call_json(
        "POST", "/v1/generate", {"model": "fake-gen", "prompt": "a b", "max_tokens": 2}, key=data["token"]
    )
    assert gen.status == 200, gen.body


def test_the_body_key_may_narrow_scopes(harness: Harness) -> None:
    data = json_of(token_call(harness, {"api_key": harness.key, "scopes": ["embed"]}))
    assert claims(data["token"])["scope"] == "embed"
    wider = token_call(harness, {"api_key": harness.key, "scopes": ["admin"]})
    assert wider.status == 403
    assert error_of(wider)["code"] == "insufficient_scope"


def test_the_header_still_works_and_answers_token_too(harness: Harness) -> None:
    resp = harness.call("POST", "/auth/token")
    assert resp.status == 200
    data = json_of(resp)
    assert data["token"] == data["access_token"]
    with_header_key = token_call(harness, {}, headers={"x-api-key": harness.key})
    assert with_header_key.status == 200


@pytest.mark.parametrize("body", [None, "", "{}", {"api_key": None}, {"api_key": ""}, {"api_key": "   "}])
def test_no_credential_anywhere_is_401_missing_credentials(harness: Harness, body: Any) -> None:
    """An empty api_key counts as none, like an empty Authorization header: the same 401."""
    resp = token_call(harness, body)
    assert resp.status == 401
    assert error_of(resp)["code"] == "missing_credentials"
    assert error_of(resp)["type"] == "authentication_error"


def test_an_empty_body_key_beside_a_header_key_is_no_conflict(harness: Harness) -> None:
    assert harness.call_json("POST", "/auth/token", {"api_key": ""}).status == 200


@pytest.mark.parametrize("raw", ["not json", "{", '{"api_key": "x"', b"\xff\xfe", "api_key=tnlp_key_1_2"])
def test_a_body_that_is_not_json_is_400_invalid_json(harness: Harness, raw: str | bytes) -> None:
    resp = token_call(harness, raw)
    assert resp.status == 400
    assert error_of(resp)["code"] == "invalid_json"


@pytest.mark.parametrize("body", ["[]", '"tnlp"', "42", '{"api_key": 42}', '{"api_key": ["k"]}', '{"scopes": "x"}'])
def test_a_body_of_the_wrong_shape_is_400(harness: Harness, body: str) -> None:
    resp = token_call(harness, body)
    assert resp.status == 400
    assert error_of(resp)["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "key",
    [
        "not-a-key",
        "tnlp_key_",
        "tnlp_key_zz_yy_xx",
        "Bearer tnlp_key_abc_def",
        "a.b.c",  # looks like a JWT: a body key is always taken as an API key
        "x" * 5000,
        "tnlp_key_\u00e9\u0000_s",
    ],
)
def test_a_malformed_key_is_401_invalid_api_key(harness: Harness, key: str) -> None:
    resp = token_call(harness, {"api_key": key})
    assert resp.status == 401
    assert error_of(resp)["code"] == "invalid_api_key"


def test_an_unknown_key_is_401(harness: Harness) -> None:
    unknown, _ = api_keys.mint(harness.tenant.id, "never stored", frozenset({"generate"}), harness.clock.now())
    wrong_secret = harness.key[: harness.key.rindex("_") + 1] + "x" * 43
    for key in (unknown, wrong_secret):
        resp = token_call(harness, {"api_key": key})
        assert resp.status == 401
        assert error_of(resp)["code"] == "invalid_api_key"


def test_a_revoked_key_is_401_key_revoked(harness: Harness) -> None:
    key_id = api_keys.parse_key(harness.key)
    assert harness.call("DELETE", f"/admin/keys/{key_id}", key=harness.admin_key).status == 200
    resp = token_call(harness, {"api_key": harness.key})
    assert resp.status == 401
    assert error_of(resp)["code"] == "key_revoked"


def test_an_expired_key_is_401_key_revoked(harness: Harness) -> None:
    created = harness.call_json(
        "POST",
        f"/admin/tenants/{harness.tenant.id}/keys",
        {"name": "short", "expires_at": harness.clock.now() + 10},
        key=harness.admin_key,
    )
    harness.clock.advance(11)
    resp = token_call(harness, {"api_key": json_of(created)["key"]})
    assert resp.status == 401
    assert error_of(resp)["code"] == "key_revoked"


@pytest.mark.parametrize("header", ["authorization", "x-api-key"])
def test_a_body_key_and_a_different_header_key_are_400(harness: Harness, header: str) -> None:
    value = f"Bearer {harness.admin_key}" if header == "authorization" else harness.admin_key
    resp = token_call(harness, {"api_key": harness.key}, headers={header: value})
    assert resp.status == 400
    error = error_of(resp)
    assert error["code"] == "conflicting_credentials"
    assert error["param"] == "api_key"
    assert "two different credentials" in error["message"]


def test_a_body_key_and_a_bad_header_key_are_400_too(harness: Harness) -> None:
    """The conflict is answered before either credential is looked up."""
    resp = token_call(harness, {"api_key": harness.key}, headers={"authorization": "Bearer tnlp_key_nope_nope"})
    assert resp.status == 400
    assert error_of(resp)["code"] == "conflicting_credentials"


def test_a_body_key_beside_an_access_token_is_400(harness: Harness) -> None:
    token = json_of(harness.call("POST", "/auth/token"))["token"]
    resp = token_call(harness, {"api_key": harness.key}, headers={"authorization": f"Bearer {token}"})
    assert resp.status == 400
    assert error_of(resp)["code"] == "conflicting_credentials"


def test_the_same_key_in_body_and_header_is_fine(harness: Harness) -> None:
    resp = harness.call_json("POST", "/auth/token", {"api_key": harness.key})
    assert resp.status == 200
    both = token_call(
        harness,
        {"api_key": f" {harness.key} "},
        headers={"authorization": f"Bearer {harness.key}", "x-api-key": harness.key},
    )
    assert both.status == 200


def test_an_access_token_cannot_buy_a_token(harness: Harness) -> None:
    token = json_of(harness.call("POST", "/auth/token"))["token"]
    resp = harness.call("POST", "/auth/token", key=token)
    assert resp.status == 403
    assert error_of(resp)["code"] == "api_key_required"


def test_body_key_failures_are_counted_as_auth_failures(harness: Harness) -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    class Spy:
        def incr(self, name: str, value: float = 1.0, **dims: str) -> None:
            seen.append((name, dims))

        def observe(self, name: str, value: float, **dims: str) -> None:
            pass

    harness.gateway.metrics = Spy()
    token_call(harness, {"api_key": "not-a-key"})
    assert ("auth_failures_total", {"code": "invalid_api_key"}) in seen


def test_the_openapi_document_describes_api_key_and_token(harness: Harness) -> None:
    doc = json_of(harness.call("GET", "/openapi.json"))
    schemas = doc["components"]["schemas"]
    assert "api_key" in schemas["TokenRequest"]["properties"]
    assert {"access_token", "token"} <= set(schemas["TokenResponse"]["required"])
