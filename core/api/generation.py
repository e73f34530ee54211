"""Text generation: native ``/v1/generate``, ``/v1/completions`` and ``/v1/chat/completions`` (+ SSE)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from core.app import RequestContext
from core.domain import Scope
from core.errors import APIError, InvalidRequest
from core.generation_service import CallContext, Streamed
from core.http import Response
from core.inference import ChatMessage, GenerationParams, Prompt, StreamEnd, TextDelta
from core.routes import Router
from core.schemas.common import SamplingFields, Usage
from core.schemas.native import GenerateRequest, GenerateResponse, GenerateResult
from core.schemas.openai import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessageOut,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
)


async def _params(ctx: RequestContext, body: SamplingFields, max_tokens: int | None) -> tuple[Any, GenerationParams]:
    spec = await ctx.model(body.model, kind="generation")
    service = ctx.gateway.generation
    params = GenerationParams(
        max_tokens=service.max_tokens(spec, max_tokens),
        temperature=body.temperature,
        top_p=body.top_p,
        stop=body.stop_tuple(),
        seed=body.seed,
    )
    return spec, params


def _call(ctx: RequestContext, endpoint: str) -> CallContext:
    return CallContext(ctx.caller, ctx.request.request_id, endpoint)


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, total_tokens=prompt_tokens + completion_tokens
    )


def _with_headers(response: Response, headers: dict[str, str], cached: bool | None = None) -> Response:
    response.headers.update(headers)
    if cached is not None:
        response.headers["x-textnlp-cache"] = "hit" if cached else "miss"
    return response


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


async def _sse_events(streamed: Streamed, chunk: Any, include_usage: bool) -> AsyncIterator[bytes]:
    """Server-sent events; an error after the first byte becomes an error event, then the stream ends."""
    try:
        async for event in streamed.events:
            if isinstance(event, TextDelta):
                if event.text:
                    yield _sse(chunk(event.text, None))
            elif isinstance(event, StreamEnd):
                yield _sse(chunk("", event.finish_reason))
                if include_usage:
                    final = chunk(None, None)
                    final["choices"] = []
                    final["usage"] = _usage(event.prompt_tokens, event.completion_tokens).model_dump()
                    yield _sse(final)
    except APIError as exc:
        yield _sse(exc.body())
    finally:
        # A client that goes away closes this generator; settle now rather than whenever it is collected.
        closer = getattr(streamed.events, "aclose", None)
        if closer is not None:
            await closer()
    yield b"data: [DONE]\n\n"


def register(router: Router) -> None:
    @router.route(
        "POST",
        "/v1/generate",
        scope=Scope.GENERATE,
        summary="Generate text for one or more prompts (native)",
        body=GenerateRequest,
        response=GenerateResponse,
        tags=("generation",),
    )
    async def generate(ctx: RequestContext) -> Response:
        body = ctx.body(GenerateRequest)
        if body.stream:
            raise InvalidRequest(
                "/v1/generate does not stream; use /v1/completions or /v1/chat/completions", param="stream"
            )
        spec, params = await _params(ctx, body, body.max_tokens)
        prompts = body.prompts()
        done = await ctx.gateway.generation.complete(
            _call(ctx, "generate"), spec, [Prompt(text=p) for p in prompts], params, body.n
        )
        results = [
            GenerateResult(index=i, prompt_index=i // body.n, text=g.text, finish_reason=g.finish_reason)
            for i, g in enumerate(done.generations)
        ]
        out = GenerateResponse(
            id=f"gen-{ctx.request.request_id}",
            created=int(ctx.gateway.clock.now()),
            model=done.model.id,
            text=results[0].text if isinstance(body.prompt, str) else None,
            results=results,
            usage=_usage(done.prompt_tokens, done.completion_tokens),
            cached=done.cached,
        )
        return _with_headers(Response.json(out.to_json()), done.headers, done.cached)

    @router.route(
        "POST",
        "/v1/completions",
        scope=Scope.GENERATE,
        summary="OpenAI-compatible text completion",
        body=CompletionRequest,
        response=CompletionResponse,
        tags=("generation",),
    )
    async def completions(ctx: RequestContext) -> Response:
        body = ctx.body(CompletionRequest)
        spec, params = await _params(ctx, body, body.max_tokens)
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        rid = f"cmpl-{ctx.request.request_id}"
        created = int(ctx.gateway.clock.now())
        if body.stream:
            if len(prompts) != 1 or body.n != 1:
                raise InvalidRequest("streaming supports one prompt and n=1", param="stream")
            streamed = await ctx.gateway.generation.stream(
                _call(ctx, "completions"), spec, Prompt(text=prompts[0]), params
            )

            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                return {
                    "id": rid,
                    "object": "text_completion",
                    "created": created,
                    "model": spec.id,
                    "choices": [{"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}],
                }

            include = bool(body.stream_options and body.stream_options.include_usage)
            return _with_headers(Response.sse(_sse_events(streamed, chunk, include)), streamed.headers)
        done = await ctx.gateway.generation.complete(
            _call(ctx, "completions"), spec, [Prompt(text=p) for p in prompts], params, body.n
        )
        choices = [
            CompletionChoice(
                index=i, text=(prompts[i // body.n] if body.echo else "") + g.text, finish_reason=g.finish_reason
            )
            for i, g in enumerate(done.generations)
        ]
        out = CompletionResponse(
            id=rid,
            created=created,
            model=done.model.id,
            choices=choices,
            usage=_usage(done.prompt_tokens, done.completion_tokens),
            cached=done.cached,
        )
        return _with_headers(Response.json(out), done.headers, done.cached)

    @router.route(
        "POST",
        "/v1/chat/completions",
        scope=Scope.GENERATE,
        summary="OpenAI-compatible chat completion (stream: true for SSE)",
        body=ChatCompletionRequest,
        response=ChatCompletionResponse,
        tags=("generation",),
    )
    async def chat(ctx: RequestContext) -> Response:
        body = ctx.body(ChatCompletionRequest)
        spec, params = await _params(ctx, body, body.effective_max_tokens())
        prompt = Prompt(messages=tuple(ChatMessage(m.role, m.text()) for m in body.messages))
        rid = f"chatcmpl-{ctx.request.request_id}"
        created = int(ctx.gateway.clock.now())
        if body.stream:
            if body.n != 1:
                raise InvalidRequest("streaming supports n=1", param="n")
            streamed = await ctx.gateway.generation.stream(_call(ctx, "chat.completions"), spec, prompt, params)
            first = [True]

            def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
                delta: dict[str, Any] = {} if finish else {"content": text or ""}
                if first[0] and not finish:
                    delta["role"] = "assistant"
                    first[0] = False
                return {
                    "id": rid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": spec.id,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
                }

            include = bool(body.stream_options and body.stream_options.include_usage)
            return _with_headers(Response.sse(_sse_events(streamed, chunk, include)), streamed.headers)
        done = await ctx.gateway.generation.complete(_call(ctx, "chat.completions"), spec, [prompt], params, body.n)
        choices = [
            ChatChoice(index=i, message=ChatMessageOut(content=g.text), finish_reason=g.finish_reason)
            for i, g in enumerate(done.generations)
        ]
        out = ChatCompletionResponse(
            id=rid,
            created=created,
            model=done.model.id,
            choices=choices,
            usage=_usage(done.prompt_tokens, done.completion_tokens),
            cached=done.cached,
        )
        return _with_headers(Response.json(out), done.headers, done.cached)
