"""OpenAI Batches: create from an uploaded file, retrieve, list and cancel, each scoped to the caller's tenant."""

from __future__ import annotations

import functools

from core.api.files import load_file, page_limit
from core.app import RequestContext
from core.batch.records import (
    BATCHES,
    BatchJob,
    derived_file_id,
    file_key,
    load_batch,
    new_batch_id,
    update_batch,
)
from core.domain import Scope
from core.errors import Conflict, InvalidRequest, NotFound
from core.http import Response
from core.routes import Router
from core.schemas.files import BatchCreateRequest, BatchList, BatchObject


class _NotCancellable(Exception):
    def __init__(self, status: str) -> None:
        self.status = status


def _batch_out(job: BatchJob) -> BatchObject:
    return BatchObject.model_validate(job.to_api())


async def _load(ctx: RequestContext) -> BatchJob:
    batch_id = ctx.request.path_params["batch_id"]
    job = await ctx.offload(load_batch, ctx.gateway.store, ctx.caller.tenant_id, batch_id)
    if job is None:
        raise NotFound(f"no such batch: {batch_id}", param="batch_id", code="batch_not_found")
    return job


def register(router: Router) -> None:
    @router.route(
        "POST",
        "/v1/batches",
        scope=Scope.BATCH,
        summary="Run every line of an uploaded batch file",
        body=BatchCreateRequest,
        response=BatchObject,
        tags=("batches",),
    )
    async def create(ctx: RequestContext) -> Response:
        body = ctx.body(BatchCreateRequest)
        ctx.gateway.require_blobs()
        source = await load_file(ctx, body.input_file_id, param="input_file_id")
        if source.purpose != "batch":
            raise InvalidRequest(
                f"the input file's purpose is '{source.purpose}'; a batch needs a file uploaded with purpose 'batch'",
                param="input_file_id",
            )
        now = ctx.gateway.clock.now()
        tenant = ctx.caller.tenant_id
        batch_id = new_batch_id(now)
        job = BatchJob(
            id=batch_id,
            tenant_id=tenant,
            input_key=source.blob_key,
            output_key=file_key(tenant, derived_file_id(batch_id, "output")),
            error_key=file_key(tenant, derived_file_id(batch_id, "error")),
            created_at=now,
            key_id=ctx.caller.key_id,
            scopes=sorted(ctx.caller.scopes),
            endpoint=body.endpoint,
            input_version=source.version,
            input_file_id=source.id,
            publish_files=True,
            completion_window=body.completion_window,
            metadata=body.metadata,
            total=source.lines,
        )
        put = functools.partial(ctx.gateway.store.put_document, if_absent=True)
        written = await ctx.offload(put, BATCHES, job.to_document())
        if written is None:
            raise Conflict("a batch with this id exists; retry")
        job.version = written.version
        ctx.gateway.jobs.submit("batch", tenant, batch_id)
        return Response.json(_batch_out(job))

    @router.route(
        "GET", "/v1/batches/{batch_id}", scope=Scope.BATCH, summary="A batch", response=BatchObject, tags=("batches",)
    )
    async def get(ctx: RequestContext) -> Response:
        return Response.json(_batch_out(await _load(ctx)))

    @router.route(
        "GET",
        "/v1/batches",
        scope=Scope.BATCH,
        summary="The tenant's batches, newest first",
        response=BatchList,
        tags=("batches",),
        query={"limit": "1-100 (20)", "after": "a batch id"},
    )
    async def list_batches(ctx: RequestContext) -> Response:
        limit = page_limit(ctx, 20, 100)
        after = ctx.request.query.get("after") or None
        docs = await ctx.offload(ctx.gateway.store.list_documents, BATCHES, ctx.caller.tenant_id, after, limit + 1)
        data = [_batch_out(BatchJob.from_document(d)) for d in docs[:limit]]
        out = BatchList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=len(docs) > limit,
        )
        return Response.json(out)

    @router.route(
        "POST",
        "/v1/batches/{batch_id}/cancel",
        scope=Scope.BATCH,
        summary="Cancel a batch: lines in flight finish, the rest are not run, the partial output is kept",
        response=BatchObject,
        tags=("batches",),
    )
    async def cancel(ctx: RequestContext) -> Response:
        job = await _load(ctx)
        now = ctx.gateway.clock.now()

        def cancelling(j: BatchJob) -> None:
            if j.status in ("cancelling", "cancelled"):
                return
            if j.terminal:
                raise _NotCancellable(j.status)
            j.status, j.cancelling_at = "cancelling", now

        try:
            job = await ctx.offload(update_batch, ctx.gateway.store, job, cancelling)
        except _NotCancellable as exc:
            raise Conflict(f"a {exc.status} batch cannot be cancelled", code="batch_not_cancellable") from None
        if job.status == "cancelling" and (job.lease_owner is None or job.lease_until <= now):
            # Nobody is running it: a runner writes what exists and stops.
            ctx.gateway.jobs.submit("batch", job.tenant_id, job.id)
        return Response.json(_batch_out(job))
