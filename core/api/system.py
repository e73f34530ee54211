"""Health and the OpenAPI document."""

from __future__ import annotations

from core.app import RequestContext
from core.http import Response
from core.routes import Router


def register(router: Router) -> None:
    @router.route("GET", "/health", scope=None, summary="Liveness", public=True, tags=("system",))
    async def health(ctx: RequestContext) -> Response:
        return Response.json({"status": "ok"})

    @router.route(
        "GET", "/openapi.json", scope=None, summary="This API's OpenAPI 3.1 document", public=True, tags=("system",)
    )
    async def openapi(ctx: RequestContext) -> Response:
        from core.openapi import build_openapi

        return Response.json(build_openapi(ctx.gateway.router))
