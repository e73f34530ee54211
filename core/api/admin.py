"""Admin API (admin scope): tenants, keys, limits, models, usage across tenants, key rotation."""

from __future__ import annotations

from dataclasses import replace

from core.api.models import card
from core.api.usage import usage_report
from core.app import RequestContext
from core.auth import api_keys
from core.clock import new_id
from core.domain import ApiKeyRecord, Limits, ModelSpec, Scope, Tenant
from core.errors import Conflict, InvalidRequest, NotFound
from core.http import Response
from core.registry import ModelRegistry
from core.routes import Router
from core.schemas.admin import KeyCreate, KeyOut, LimitsIn, LimitsOut, ModelIn, ModelUpdate, TenantCreate, TenantOut
from core.schemas.openai import ModelCard

ADMIN = Scope.ADMIN


def tenant_out(t: Tenant) -> TenantOut:
    return TenantOut(
        id=t.id,
        name=t.name,
        created_at=t.created_at,
        limits=LimitsOut(**_limits_dict(t.limits)),
        suspended_at=t.suspended_at,
    )


def key_out(k: ApiKeyRecord, plaintext: str | None = None) -> KeyOut:
    return KeyOut(
        id=k.id,
        tenant_id=k.tenant_id,
        name=k.name,
        scopes=sorted(k.scopes),
        prefix=k.prefix,
        created_at=k.created_at,
        expires_at=k.expires_at,
        revoked_at=k.revoked_at,
        limits=LimitsOut(**_limits_dict(k.limits)),
        key=plaintext,
    )


def _limits_dict(limits: Limits) -> dict[str, object]:
    return {
        "requests_per_minute": limits.requests_per_minute,
        "tokens_per_minute": limits.tokens_per_minute,
        "token_quota": limits.token_quota,
        "quota_period": limits.quota_period,
    }


async def _tenant(ctx: RequestContext) -> Tenant:
    tenant = await ctx.offload(ctx.gateway.store.get_tenant, ctx.request.path_params["tenant_id"])
    if tenant is None:
        raise NotFound("no such tenant", param="tenant_id")
    return tenant


async def _key(ctx: RequestContext) -> ApiKeyRecord:
    key = await ctx.offload(ctx.gateway.store.get_key, ctx.request.path_params["key_id"])
    if key is None:
        raise NotFound("no such key", param="key_id")
    return key


def spec_from(body: ModelIn, created_at: float) -> ModelSpec:
    data = body.model_dump()
    data["fallbacks"] = tuple(data["fallbacks"])
    data["aliases"] = tuple(data["aliases"])
    return ModelSpec(created_at=created_at, **data)


def _check_and_put(registry: ModelRegistry, spec: ModelSpec) -> None:
    registry.check_names(spec)
    registry.put(spec)


def register(router: Router) -> None:
    @router.route(
        "POST",
        "/admin/tenants",
        scope=ADMIN,
        summary="Create a tenant",
        body=TenantCreate,
        response=TenantOut,
        tags=("admin",),
    )
    async def create_tenant(ctx: RequestContext) -> Response:
        body = ctx.body(TenantCreate)
        tenant = Tenant(id=new_id("ten", 8), name=body.name, created_at=ctx.gateway.clock.now())
        await ctx.offload(ctx.gateway.store.put_tenant, tenant)
        return Response.json(tenant_out(tenant), status=201)

    @router.route("GET", "/admin/tenants", scope=ADMIN, summary="List tenants", tags=("admin",))
    async def list_tenants(ctx: RequestContext) -> Response:
        tenants = sorted(await ctx.offload(ctx.gateway.store.list_tenants), key=lambda t: t.created_at)
        return Response.json({"object": "list", "data": [tenant_out(t).model_dump() for t in tenants]})

    @router.route(
        "GET",
        "/admin/tenants/{tenant_id}",
        scope=ADMIN,
        summary="Describe a tenant",
        response=TenantOut,
        tags=("admin",),
    )
    async def get_tenant(ctx: RequestContext) -> Response:
        return Response.json(tenant_out(await _tenant(ctx)))

    @router.route(
        "PUT",
        "/admin/tenants/{tenant_id}/limits",
        scope=ADMIN,
        summary="Set a tenant's limits",
        body=LimitsIn,
        response=TenantOut,
        tags=("admin",),
    )
    async def tenant_limits(ctx: RequestContext) -> Response:
        tenant = replace(await _tenant(ctx), limits=Limits(**ctx.body(LimitsIn).model_dump()))
        await ctx.offload(ctx.gateway.store.put_tenant, tenant)
        ctx.gateway.tenants.forget(tenant.id)
        return Response.json(tenant_out(tenant))

    @router.route(
        "POST",
        "/admin/tenants/{tenant_id}/keys",
        scope=ADMIN,
        summary="Create an API key (shown once)",
        body=KeyCreate,
        response=KeyOut,
        tags=("admin",),
    )
    async def create_key(ctx: RequestContext) -> Response:
        tenant = await _tenant(ctx)
        body = ctx.body(KeyCreate)
        now = ctx.gateway.clock.now()
        if body.expires_at is not None and body.expires_at <= now:
            raise InvalidRequest("expires_at is in the past", param="expires_at")
        plaintext, record = api_keys.mint(tenant.id, body.name, frozenset(body.scopes), now, body.expires_at)
        await ctx.offload(ctx.gateway.store.put_key, record)
        return Response.json(key_out(record, plaintext), status=201)

    @router.route(
        "GET",
        "/admin/tenants/{tenant_id}/keys",
        scope=ADMIN,
        summary="List a tenant's keys (never the secrets)",
        tags=("admin",),
    )
    async def list_keys(ctx: RequestContext) -> Response:
        tenant = await _tenant(ctx)
        keys = sorted(await ctx.offload(ctx.gateway.store.list_keys, tenant.id), key=lambda k: k.created_at)
        return Response.json({"object": "list", "data": [key_out(k).model_dump() for k in keys]})

    @router.route(
        "DELETE", "/admin/keys/{key_id}", scope=ADMIN, summary="Revoke a key", response=KeyOut, tags=("admin",)
    )
    async def revoke_key(ctx: RequestContext) -> Response:
        """Refused at once on every instance for every route that spends tokens (core.auth.revocation)."""
        return Response.json(key_out(await ctx.offload(ctx.gateway.revocations.revoke_key, await _key(ctx))))

    @router.route(
        "POST",
        "/admin/tenants/{tenant_id}/suspend",
        scope=ADMIN,
        summary="Suspend a tenant: its keys and tokens are refused until it is resumed",
        response=TenantOut,
        tags=("admin",),
    )
    async def suspend_tenant(ctx: RequestContext) -> Response:
        tenant = await _tenant(ctx)
        if tenant.id == ctx.caller.tenant_id:
            raise InvalidRequest("a key cannot suspend its own tenant", param="tenant_id")
        return Response.json(tenant_out(await ctx.offload(ctx.gateway.revocations.suspend, tenant)))

    @router.route(
        "POST",
        "/admin/tenants/{tenant_id}/resume",
        scope=ADMIN,
        summary="Lift a tenant's suspension",
        response=TenantOut,
        tags=("admin",),
    )
    async def resume_tenant(ctx: RequestContext) -> Response:
        return Response.json(tenant_out(await ctx.offload(ctx.gateway.revocations.resume, await _tenant(ctx))))

    @router.route(
        "PUT",
        "/admin/keys/{key_id}/limits",
        scope=ADMIN,
        summary="Set a key's limits",
        body=LimitsIn,
        response=KeyOut,
        tags=("admin",),
    )
    async def key_limits(ctx: RequestContext) -> Response:
        key = replace(await _key(ctx), limits=Limits(**ctx.body(LimitsIn).model_dump()))
        await ctx.offload(ctx.gateway.store.put_key, key)
        ctx.gateway.auth.forget(key.id)
        return Response.json(key_out(key))

    @router.route(
        "GET",
        "/admin/usage",
        scope=ADMIN,
        summary="Usage across tenants",
        tags=("admin",),
        query={
            "tenant": "tenant id",
            "start": "YYYY-MM-DD",
            "end": "YYYY-MM-DD",
            "group_by": "day|model|day,model|none",
        },
    )
    async def all_usage(ctx: RequestContext) -> Response:
        tenant = ctx.request.query.get("tenant") or None
        return Response.json(await ctx.offload(usage_report, ctx, tenant))

    @router.route(
        "POST",
        "/admin/models",
        scope=ADMIN,
        summary="Register a model",
        body=ModelIn,
        response=ModelCard,
        tags=("admin",),
    )
    async def create_model(ctx: RequestContext) -> Response:
        body = ctx.body(ModelIn)
        ctx.gateway.backends.check_route(body.backend)
        registry = ctx.gateway.registry
        if await ctx.offload(registry.by_id, body.id) is not None:
            raise Conflict(f"the model '{body.id}' exists; use PUT /admin/models/{body.id}", param="id")
        spec = spec_from(body, ctx.gateway.clock.now())
        await ctx.offload(_check_and_put, registry, spec)
        return Response.json(card(spec), status=201)

    @router.route(
        "PUT",
        "/admin/models/{model_id:path}",
        scope=ADMIN,
        summary="Replace a model's entry",
        body=ModelUpdate,
        response=ModelCard,
        tags=("admin",),
    )
    async def update_model(ctx: RequestContext) -> Response:
        model_id = ctx.request.path_params["model_id"]
        body = ctx.body(ModelUpdate)
        if body.id not in (None, model_id):
            raise InvalidRequest("the id in the body differs from the path", param="id")
        body.id = model_id
        ctx.gateway.backends.check_route(body.backend)
        if model_id in body.aliases:  # the body's validator could not check this: the id came from the path
            raise InvalidRequest("a model's id cannot also be its alias", param="aliases")
        if model_id in body.fallbacks:
            raise InvalidRequest("a model cannot be its own fallback", param="fallbacks")
        existing = await ctx.offload(ctx.gateway.registry.by_id, model_id)
        spec = spec_from(body, existing.created_at if existing else ctx.gateway.clock.now())
        await ctx.offload(_check_and_put, ctx.gateway.registry, spec)
        return Response.json(card(spec))

    @router.route("DELETE", "/admin/models/{model_id:path}", scope=ADMIN, summary="Remove a model", tags=("admin",))
    async def delete_model(ctx: RequestContext) -> Response:
        model_id = ctx.request.path_params["model_id"]
        if not await ctx.offload(ctx.gateway.registry.delete, model_id):
            raise NotFound(f"the model '{model_id}' does not exist", param="model_id", code="model_not_found")
        return Response.json({"id": model_id, "object": "model", "deleted": True})

    @router.route(
        "POST", "/admin/signing-keys/rotate", scope=ADMIN, summary="Rotate the token signing key", tags=("admin",)
    )
    async def rotate(ctx: RequestContext) -> Response:
        key = await ctx.offload(ctx.gateway.tokens.rotate)
        return Response.json({"kid": key.kid, "created_at": key.created_at})
