"""``POST /auth/token`` (API key -> short-lived JWT) and the JWKS that verifies those tokens."""

from __future__ import annotations

from core.app import RequestContext
from core.domain import Principal
from core.errors import Forbidden, InvalidRequest
from core.http import Response
from core.routes import Router
from core.schemas.admin import TokenRequest, TokenResponse


async def _principal(ctx: RequestContext, body_key: str | None) -> Principal:
    """Who asks for a token: the caller of the headers, as on any route, or else the key in the body.

    A key in both places must be the same key: two different credentials in one request are a client bug
    (which one did it mean?), answered 400 before either is looked up.
    """
    if body_key is None:
        return await ctx.gateway.authenticate(ctx.request)  # no credential anywhere: 401 missing_credentials
    if set(ctx.gateway.auth.presented(ctx.request)) - {body_key}:
        raise InvalidRequest(
            "the request carries two different credentials: the api_key in the body and the one in the "
            "Authorization or x-api-key header; send one of them",
            param="api_key",
            code="conflicting_credentials",
        )
    return await ctx.offload(ctx.gateway.auth.from_api_key, body_key)


def register(router: Router) -> None:
    # Public as far as the gateway goes: the key may be in the body, which the gateway does not read, so the
    # handler authenticates the caller itself (headers first, as elsewhere) and fails with the same 401s.
    @router.route(
        "POST",
        "/auth/token",
        scope=None,
        summary="Exchange an API key (Authorization header or api_key in the body) for a short-lived access token",
        body=TokenRequest,
        response=TokenResponse,
        public=True,
        tags=("auth",),
    )
    async def token(ctx: RequestContext) -> Response:
        body = ctx.body(TokenRequest) if ctx.request.body.strip() else TokenRequest()
        # An empty api_key counts as none, as an empty header does: no header either -> 401 missing_credentials.
        body_key = (body.api_key or "").strip() or None
        principal = await _principal(ctx, body_key)
        if principal.via != "api_key":
            raise Forbidden("access tokens are issued for API keys only", code="api_key_required")
        scopes = principal.scopes
        if body.scopes is not None:
            extra = set(body.scopes) - principal.scopes
            if extra:
                raise Forbidden(f"the key does not have the scopes {sorted(extra)}")
            scopes = frozenset(body.scopes)
        jwt, ttl = await ctx.offload(ctx.gateway.tokens.issue, principal, scopes)
        return Response.json(TokenResponse(access_token=jwt, token=jwt, expires_in=ttl))

    @router.route(
        "GET",
        "/.well-known/jwks.json",
        scope=None,
        summary="Public keys of the access tokens",
        public=True,
        tags=("auth",),
    )
    async def jwks(ctx: RequestContext) -> Response:
        response = Response.json(await ctx.offload(ctx.gateway.tokens.jwks))
        response.headers["cache-control"] = "public, max-age=300"
        return response
