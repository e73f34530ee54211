"""``POST /v1/validate``: quality and safety of generated text; model-backed metrics are limited and metered."""

from __future__ import annotations

import asyncio
import time

from core import deadlines
from core.app import RequestContext
from core.domain import ModelSpec, Scope
from core.errors import APIError, BackendTimeout, InvalidRequest, Unauthorized
from core.generation_service import CallContext
from core.http import Response
from core.limits import Reservation
from core.ports import LogProbScorer
from core.routes import Router
from core.schemas.common import Usage
from core.schemas.validate import ValidateRequest, ValidateResponse
from core.validation.fluency import fluency
from core.validation.report import (
    Inputs,
    MetricSelectionError,
    check_limits,
    evaluate,
    headline,
    select_metrics,
)
from core.validation.result import MetricResult
from core.validation.semantic import embedding_similarity

ENDPOINT = "validate"


async def _embedding_similarity(
    ctx: RequestContext, model: str, inputs: Inputs, headers: dict[str, str]
) -> tuple[MetricResult, int]:
    spec = await ctx.model(model, kind="embedding")
    references = inputs.refs()
    texts = list(dict.fromkeys([*inputs.candidates, *(r for refs in references for r in refs)]))
    call = CallContext(ctx.caller, f"{ctx.request.request_id}:embed", ENDPOINT)
    done = await ctx.gateway.generation.embed(call, spec, texts)
    headers.update(done.headers)
    vectors = dict(zip(texts, done.embeddings.vectors, strict=True))
    result = embedding_similarity(
        [vectors[c] for c in inputs.candidates], [[vectors[r] for r in refs] for refs in references]
    )
    return result, 0 if done.cached else done.embeddings.prompt_tokens


async def _scorer(ctx: RequestContext, model: str) -> tuple[ModelSpec, LogProbScorer]:
    spec = await ctx.model(model, kind="generation")
    backend = ctx.gateway.model_router.backend(spec)
    if not isinstance(backend, LogProbScorer):
        raise InvalidRequest(
            f"fluency is unavailable for '{spec.id}': its backend cannot give token log-probabilities",
            param="fluency_model",
            code="metric_unavailable",
        )
    return spec, backend


async def _fluency(
    ctx: RequestContext, model: str, inputs: Inputs, headers: dict[str, str]
) -> tuple[MetricResult, int]:
    """Perplexity of each candidate, reserved, settled and metered like a generation.

    ``GenerationService`` has no public way to reserve for a call that is neither a generation nor an
    embedding (and core/generation.py is not this module's to change), so this does its three steps
    with the same gateway parts: reserve the texts' upper bound with ``LimitEnforcer`` (UTF-8 bytes + 1
    each: the scorer reads whole texts, in windows, plus one conditioning token), settle to the tokens
    actually scored (zero on failure), and write one usage record under ``<request id>:fluency``.
    Embedding similarity needs none of this: it goes through ``GenerationService.embed``.
    """
    spec, scorer = await _scorer(ctx, model)
    gateway, principal = ctx.gateway, ctx.caller
    bounds = [len(t.encode()) + 1 if t else 0 for t in inputs.candidates]

    def reserve() -> Reservation:
        key = gateway.auth.key_record(principal.key_id)
        if key is None:
            raise Unauthorized("unknown API key")
        return gateway.limits.reserve(gateway.tenants.get(principal.tenant_id), key, sum(bounds))

    reservation = await ctx.offload(reserve)
    headers.update(reservation.headers)
    started = time.perf_counter()
    used, status = 0, 200
    logprobs: list[list[float]] = []
    try:
        for text, bound in zip(inputs.candidates, bounds, strict=True):
            timeout = deadlines.bounded(spec.timeout_s, deadlines.current())
            scored = await asyncio.wait_for(scorer.token_logprobs(spec.backend, text), timeout) if text else []
            logprobs.append(scored)
            used += min(len(scored) + 1, bound) if scored else 0
    except TimeoutError:
        status = 504
        raise BackendTimeout() from None
    except APIError as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499
        raise
    except BaseException:
        status = 500
        raise
    finally:
        charged = used if status == 200 else 0
        latency_ms = round((time.perf_counter() - started) * 1000, 3)

        def settle() -> None:
            recorded = gateway.meter.record(
                settle=gateway.limits.settlement(reservation, charged),
                request_id=f"{ctx.request.request_id}:fluency",
                principal=principal,
                model=spec,
                endpoint=ENDPOINT,
                prompt_tokens=charged,
                completion_tokens=0,
                cached=False,
                latency_ms=latency_ms,
                status=status,
            )
            if not recorded:
                gateway.limits.release(reservation)

        await ctx.offload(settle)
    return fluency(logprobs), used


def register(router: Router) -> None:
    @router.route(
        "POST",
        "/v1/validate",
        scope=Scope.VALIDATE,
        summary="Score generated text: against references, on its own, for fluency and for privacy",
        body=ValidateRequest,
        response=ValidateResponse,
        tags=("validation",),
    )
    async def validate(ctx: RequestContext) -> Response:
        body = ctx.body(ValidateRequest)
        inputs = body.inputs()
        try:
            names = select_metrics(
                body.metrics,
                has_references=inputs.references is not None,
                has_training=inputs.training is not None,
                has_fluency_model=body.fluency_model is not None,
            )
            check_limits(names, inputs)
        except MetricSelectionError as exc:
            raise InvalidRequest(str(exc), param=exc.param, code=exc.code) from None
        computed: dict[str, MetricResult] = {}
        headers: dict[str, str] = {}
        tokens = 0
        if "fluency" in names and body.fluency_model is not None:
            await _scorer(ctx, body.fluency_model)  # refuse an unusable model before spending anything
        if "embedding_similarity" in names:
            computed["embedding_similarity"], spent = await _embedding_similarity(
                ctx, body.embedding_model, inputs, headers
            )
            tokens += spent
        if "fluency" in names and body.fluency_model is not None:
            computed["fluency"], spent = await _fluency(ctx, body.fluency_model, inputs, headers)
            tokens += spent
        # The CPU-bound metrics run off the event loop, so other requests keep being served meanwhile.
        report = await asyncio.to_thread(evaluate, names, inputs, computed)
        for name, result in report.metrics.items():
            value = headline(name, result)
            if value is not None:
                ctx.gateway.metrics.observe("validation_score", value, metric=name)
        usage = (
            Usage(prompt_tokens=tokens, total_tokens=tokens)
            if {"embedding_similarity", "fluency"} & set(names)
            else None
        )
        response = Response.json(ValidateResponse.from_report(report, inputs, usage))
        response.headers.update(headers)
        return response
