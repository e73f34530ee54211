"""``GET /v1/models`` and ``GET /v1/models/{id}`` in OpenAI's shape, plus the registry's fields.

An alias is a field of its model (``aliases``), not an entry of its own: the list holds the models that
actually serve, under the ids that answers and usage reports carry. ``/v1/models/{alias}`` answers its model.
"""

from __future__ import annotations

from core.app import RequestContext
from core.domain import ModelSpec
from core.http import Response
from core.routes import Router
from core.schemas.openai import ModelCard, ModelList


def card(spec: ModelSpec) -> ModelCard:
    return ModelCard(
        id=spec.id,
        created=int(spec.created_at),
        owned_by=spec.owned_by,
        kind=spec.kind,
        version=spec.version,
        context_length=spec.context_length,
        max_output_tokens=spec.max_output_tokens,
        price_per_1k_prompt_tokens=spec.price_per_1k_prompt_tokens,
        price_per_1k_completion_tokens=spec.price_per_1k_completion_tokens,
        fallbacks=list(spec.fallbacks),
        metadata=spec.metadata,
        aliases=list(spec.aliases),
    )


def register(router: Router) -> None:
    @router.route("GET", "/v1/models", scope=None, summary="List models", response=ModelList, tags=("models",))
    async def list_models(ctx: RequestContext) -> Response:
        models = await ctx.offload(ctx.gateway.registry.all, ctx.caller.tenant_id)
        return Response.json(ModelList(data=[card(m) for m in models]))

    @router.route(
        "GET",
        "/v1/models/{model_id:path}",
        scope=None,
        summary="Describe a model, named by its id or an alias",
        response=ModelCard,
        tags=("models",),
    )
    async def get_model(ctx: RequestContext) -> Response:
        spec = await ctx.model(ctx.request.path_params["model_id"])
        return Response.json(card(spec))
