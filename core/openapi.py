"""The OpenAPI 3.1 document, generated from the routes and their pydantic models."""

from __future__ import annotations

import re
from typing import Any

from pydantic.json_schema import JsonSchemaMode, models_json_schema

from core.routes import Router

_ERROR_SCHEMA = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "code": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
            },
            "required": ["message", "type", "code", "param"],
        }
    },
    "required": ["error"],
}


def build_openapi(router: Router) -> dict[str, Any]:
    models = {m for r in router.routes for m in (r.body, r.response) if m is not None}
    ordered = sorted(models, key=lambda m: m.__name__)
    refs, schema = models_json_schema(
        [(m, "validation" if any(r.body is m for r in router.routes) else "serialization") for m in ordered],
        ref_template="#/components/schemas/{model}",
    )
    paths: dict[str, dict[str, Any]] = {}
    for route in router.routes:
        op: dict[str, Any] = {
            "summary": route.summary,
            "operationId": re.sub(r"[^a-zA-Z0-9]+", "_", f"{route.method}_{route.template}").strip("_").lower(),
            "tags": list(route.tags),
            "responses": {
                "default": {
                    "description": "Error",
                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
                }
            },
        }
        ok: dict[str, Any] = {"description": "OK"}
        if route.response is not None:
            mode: JsonSchemaMode = (
                "validation" if any(r.body is route.response for r in router.routes) else "serialization"
            )
            ok["content"] = {"application/json": {"schema": refs[(route.response, mode)]}}
        op["responses"]["200"] = ok
        if route.body is not None:
            op["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(route.body, "validation")]}},
            }
        params = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"\{([a-z_]+)\}", route.template)
        ] + [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": doc}
            for name, doc in route.query.items()
        ]
        if params:
            op["parameters"] = params
        if not route.public:
            op["security"] = [{"bearer": []}]
            if route.scope:
                op["x-required-scope"] = str(route.scope)
        paths.setdefault(route.template, {})[route.method.lower()] = op
    components = dict(schema.get("$defs", {}))
    components["Error"] = _ERROR_SCHEMA
    return {
        "openapi": "3.1.0",
        "info": {"title": "TextNLP", "version": "0.1.0", "description": "Serverless gateway for text generation"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "API key or access token"}
            },
        },
    }
