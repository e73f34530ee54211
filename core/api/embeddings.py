"""``POST /v1/embeddings`` in OpenAI's shape (float or base64)."""

from __future__ import annotations

import base64
import struct

from core.app import RequestContext
from core.domain import Scope
from core.generation_service import CallContext
from core.http import Response
from core.routes import Router
from core.schemas.common import Usage
from core.schemas.openai import EmbeddingItem, EmbeddingRequest, EmbeddingResponse


def _base64(vector: list[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def register(router: Router) -> None:
    @router.route(
        "POST",
        "/v1/embeddings",
        scope=Scope.EMBED,
        summary="Embed one or more texts",
        body=EmbeddingRequest,
        response=EmbeddingResponse,
        tags=("embeddings",),
    )
    async def embeddings(ctx: RequestContext) -> Response:
        body = ctx.body(EmbeddingRequest)
        spec = await ctx.model(body.model, kind="embedding")
        call = CallContext(ctx.caller, ctx.request.request_id, "embeddings")
        done = await ctx.gateway.generation.embed(call, spec, body.inputs())
        encode = _base64 if body.encoding_format == "base64" else list
        out = EmbeddingResponse(
            data=[EmbeddingItem(index=i, embedding=encode(v)) for i, v in enumerate(done.embeddings.vectors)],
            model=spec.id,
            usage=Usage(prompt_tokens=done.embeddings.prompt_tokens, total_tokens=done.embeddings.prompt_tokens),
            cached=done.cached,
        )
        response = Response.json(out)
        response.headers.update(done.headers)
        response.headers["x-textnlp-cache"] = "hit" if done.cached else "miss"
        return response
