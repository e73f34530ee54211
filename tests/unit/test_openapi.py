"""GET /openapi.json: every route, a valid-looking OpenAPI 3.1 document; /health is public."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from core.api import build_router
from core.routes import Route
from tests.fakes import Harness, json_of

METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
ROUTES = build_router().routes
# Public to the gateway, but its handler authenticates the caller (the API key may be in the body).
SELF_AUTHENTICATED = {"/auth/token"}


@pytest.fixture
def doc(harness: Harness) -> dict[str, Any]:
    resp = harness.call("GET", "/openapi.json", headers={"authorization": ""})
    assert resp.status == 200
    assert resp.headers["content-type"] == "application/json"
    out: dict[str, Any] = json_of(resp)
    return out


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from refs(v)


def test_document_header(doc: dict[str, Any]) -> None:
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"]
    assert doc["info"]["version"]
    assert set(doc) >= {"openapi", "info", "paths", "components"}
    assert doc["components"]["securitySchemes"]["bearer"] == {
        "type": "http", "scheme": "bearer", "description": "API key or access token",
    }  # fmt: skip


def test_every_route_is_documented(doc: dict[str, Any]) -> None:
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(r.method, r.template) for r in ROUTES}
    for must in [
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/generate"),
        ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"),
        ("GET", "/v1/models/{model_id}"),
        ("GET", "/v1/usage"),
        ("POST", "/auth/token"),
        ("GET", "/.well-known/jwks.json"),
        ("GET", "/health"),
        ("GET", "/openapi.json"),
        ("POST", "/admin/tenants"),
        ("GET", "/admin/usage"),
    ]:
        assert must in documented


def test_paths_and_operations_are_well_formed(doc: dict[str, Any]) -> None:
    op_ids: list[str] = []
    for path, ops in doc["paths"].items():
        assert path.startswith("/")
        assert ":" not in path  # router converters never leak into the document
        names = re.findall(r"\{([a-z_]+)\}", path)
        for method, op in ops.items():
            assert method in METHODS
            op_ids.append(op["operationId"])
            assert op["summary"]
            assert "200" in op["responses"]
            assert op["responses"]["default"]["content"]["application/json"]["schema"] == {
                "$ref": "#/components/schemas/Error"
            }
            path_params = [p["name"] for p in op.get("parameters", []) if p["in"] == "path"]
            assert path_params == names
            assert all(p["required"] for p in op.get("parameters", []) if p["in"] == "path")
    assert len(op_ids) == len(set(op_ids))


def test_every_ref_resolves(doc: dict[str, Any]) -> None:
    schemas = doc["components"]["schemas"]
    found = list(refs(doc))
    assert found
    for ref in found:
        assert ref.startswith("#/components/schemas/")
        assert ref.rsplit("/", 1)[1] in schemas
    assert "$defs" not in str(doc["paths"])


def test_request_and_response_bodies(doc: dict[str, Any]) -> None:
    chat = doc["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]
    assert body["required"] is True
    ref = body["content"]["application/json"]["schema"]["$ref"]
    schema = doc["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"model", "messages"} <= set(schema["required"])
    assert "temperature" in schema["properties"]
    ok = chat["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    assert ok.endswith("ChatCompletionResponse")
    error = doc["components"]["schemas"]["Error"]
    assert error["properties"]["error"]["required"] == ["message", "type", "code", "param"]
    for route in ROUTES:
        op = doc["paths"][route.template][route.method.lower()]
        assert ("requestBody" in op) == (route.body is not None), route.path


def test_security_and_scopes(doc: dict[str, Any]) -> None:
    for route in ROUTES:
        op = doc["paths"][route.template][route.method.lower()]
        if route.public:
            assert "security" not in op
        else:
            assert op["security"] == [{"bearer": []}]
        if route.path.startswith("/admin"):
            assert op["x-required-scope"] == "admin"
    assert doc["paths"]["/v1/embeddings"]["post"]["x-required-scope"] == "embed"
    assert doc["paths"]["/v1/completions"]["post"]["x-required-scope"] == "generate"


def test_query_parameters_are_documented(doc: dict[str, Any]) -> None:
    params = {p["name"] for p in doc["paths"]["/v1/usage"]["get"]["parameters"] if p["in"] == "query"}
    assert params == {"start", "end", "group_by"}
    admin = {p["name"] for p in doc["paths"]["/admin/usage"]["get"]["parameters"] if p["in"] == "query"}
    assert admin == {"tenant", "start", "end", "group_by"}


def test_health_is_public(harness: Harness) -> None:
    resp = harness.call("GET", "/health", headers={"authorization": ""})
    assert resp.status == 200
    assert json_of(resp) == {"status": "ok"}


def concrete(route: Route) -> str:
    return re.sub(r"\{[^}]+\}", "x", route.path)


@pytest.mark.parametrize(
    "route", [r for r in ROUTES if not r.public or r.path in SELF_AUTHENTICATED], ids=lambda r: f"{r.method} {r.path}"
)
def test_every_non_public_route_needs_credentials(harness: Harness, route: Route) -> None:
    resp = harness.call(route.method, concrete(route), "{}", headers={"authorization": ""})
    assert resp.status == 401


@pytest.mark.parametrize(
    "route", [r for r in ROUTES if r.public and r.path not in SELF_AUTHENTICATED], ids=lambda r: f"{r.method} {r.path}"
)
def test_public_routes_answer_without_credentials(harness: Harness, route: Route) -> None:
    resp = harness.call(route.method, concrete(route), headers={"authorization": ""})
    assert resp.status == 200
    public = {r.path for r in ROUTES if r.public}
    assert public == {"/health", "/openapi.json", "/.well-known/jwks.json", *SELF_AUTHENTICATED}
