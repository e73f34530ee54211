"""``POST /auth/token`` (API key -> short-lived JWT) and the JWKS that verifies those tokens."""

from __future__ import annotations

from core.app import RequestContext
from core.errors import Forbidden
from core.http import Response
from core.router import Router
from core.schemas.admin import TokenRequest, TokenResponse


def register(router: Router) -> None:
    @router.route(
        "POST",
        "/auth/token",
        scope=None,
        summary="Exchange an API key for a short-lived RS256 access token",
        body=TokenRequest,
        response=TokenResponse,
        tags=("auth",),
    )
    async def token(ctx: RequestContext) -> Response:
        principal = ctx.caller
        if principal.via != "api_key":
            raise Forbidden("access tokens are issued for API keys only", code="api_key_required")
        scopes = principal.scopes
        if ctx.request.body.strip():
            wanted = ctx.body(TokenRequest).scopes
            if wanted is not None:
                extra = set(wanted) - principal.scopes
                if extra:
                    raise Forbidden(f"the key does not have the scopes {sorted(extra)}")
                scopes = frozenset(wanted)
        jwt, ttl = ctx.gateway.tokens.issue(principal, scopes)
        return Response.json(TokenResponse(access_token=jwt, expires_in=ttl))

    @router.route(
        "GET",
        "/.well-known/jwks.json",
        scope=None,
        summary="Public keys of the access tokens",
        public=True,
        tags=("auth",),
    )
    async def jwks(ctx: RequestContext) -> Response:
        response = Response.json(ctx.gateway.tokens.jwks())
        response.headers["cache-control"] = "public, max-age=300"
        return response
