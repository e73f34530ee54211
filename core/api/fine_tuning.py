"""OpenAI fine-tuning jobs: create, list, retrieve, events, cancel, each scoped to the caller's tenant."""

from __future__ import annotations

import asyncio

from core.api.files import load_file, page_limit
from core.app import RequestContext
from core.domain import Scope
from core.errors import NotFound
from core.fine_tuning.job import JOBS, FineTuneJob
from core.fine_tuning.records import list_events, load_job
from core.fine_tuning.training_files import check_purpose
from core.http import Response
from core.routes import Router
from core.schemas.fine_tuning import (
    FineTuneCreateRequest,
    FineTuningJobEventList,
    FineTuningJobList,
    FineTuningJobObject,
)

TAGS = ("fine-tuning",)


def _out(job: FineTuneJob) -> FineTuningJobObject:
    return FineTuningJobObject.model_validate(job.to_api())


async def _load(ctx: RequestContext) -> FineTuneJob:
    """The caller's job; another tenant's job is as absent as one that never existed."""
    job_id = ctx.request.path_params["job_id"]
    job = await ctx.offload(load_job, ctx.gateway.store, ctx.caller.tenant_id, job_id)
    if job is None:
        raise NotFound(
            f"no such fine-tuning job: {job_id}", param="fine_tuning_job_id", code="fine_tuning_job_not_found"
        )
    return job


def register(router: Router) -> None:
    @router.route(
        "POST",
        "/v1/fine_tuning/jobs",
        scope=Scope.FINE_TUNE,
        summary="Fine-tune a generation model on an uploaded fine-tune file",
        body=FineTuneCreateRequest,
        response=FineTuningJobObject,
        tags=TAGS,
    )
    async def create(ctx: RequestContext) -> Response:
        body = ctx.body(FineTuneCreateRequest)
        service = ctx.gateway.fine_tuning
        service.require_tuner()
        base = await ctx.model(body.model, kind="generation")
        training = await load_file(ctx, body.training_file, param="training_file")
        check_purpose(training, "training_file")
        validation = None
        if body.validation_file is not None:
            validation = await load_file(ctx, body.validation_file, param="validation_file")
            check_purpose(validation, "validation_file")
        job = await service.create(
            ctx.caller,
            base,
            training,
            validation,
            ctx.gateway.require_blobs(),
            hyperparameters=body.chosen_hyperparameters().model_dump(),
            suffix=body.suffix,
            seed=body.seed,
            metadata=body.metadata,
        )
        return Response.json(_out(job))

    @router.route(
        "GET",
        "/v1/fine_tuning/jobs",
        scope=Scope.FINE_TUNE,
        summary="The tenant's fine-tuning jobs, newest first",
        response=FineTuningJobList,
        tags=TAGS,
        query={"limit": "1-100 (20)", "after": "a fine-tuning job id"},
    )
    async def list_jobs(ctx: RequestContext) -> Response:
        limit = page_limit(ctx, 20, 100)
        after = ctx.request.query.get("after") or None
        docs = await ctx.offload(ctx.gateway.store.list_documents, JOBS, ctx.caller.tenant_id, after, limit + 1)
        service = ctx.gateway.fine_tuning
        jobs = await asyncio.gather(*(service.refresh(FineTuneJob.from_document(d)) for d in docs[:limit]))
        return Response.json(FineTuningJobList(data=[_out(j) for j in jobs], has_more=len(docs) > limit))

    @router.route(
        "GET",
        "/v1/fine_tuning/jobs/{job_id}",
        scope=Scope.FINE_TUNE,
        summary="A fine-tuning job, its status brought up to date from its backend",
        response=FineTuningJobObject,
        tags=TAGS,
    )
    async def retrieve(ctx: RequestContext) -> Response:
        return Response.json(_out(await ctx.gateway.fine_tuning.refresh(await _load(ctx))))

    @router.route(
        "GET",
        "/v1/fine_tuning/jobs/{job_id}/events",
        scope=Scope.FINE_TUNE,
        summary="A fine-tuning job's events, newest first",
        response=FineTuningJobEventList,
        tags=TAGS,
        query={"limit": "1-100 (20)", "after": "an event id"},
    )
    async def events(ctx: RequestContext) -> Response:
        limit = page_limit(ctx, 20, 100)
        job = await ctx.gateway.fine_tuning.refresh(await _load(ctx))
        after = ctx.request.query.get("after") or None
        data, has_more = await ctx.offload(list_events, ctx.gateway.store, job, after, limit)
        return Response.json(FineTuningJobEventList.model_validate({"data": data, "has_more": has_more}))

    @router.route(
        "POST",
        "/v1/fine_tuning/jobs/{job_id}/cancel",
        scope=Scope.FINE_TUNE,
        summary="Cancel a fine-tuning job: its training is stopped and no model is registered",
        response=FineTuningJobObject,
        tags=TAGS,
    )
    async def cancel(ctx: RequestContext) -> Response:
        return Response.json(_out(await ctx.gateway.fine_tuning.cancel(await _load(ctx))))
