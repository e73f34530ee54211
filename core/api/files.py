"""OpenAI Files: upload (multipart), list, retrieve, content and delete, each scoped to the caller's tenant."""

from __future__ import annotations

import asyncio
import functools
import posixpath

from core.app import RequestContext
from core.auth.authenticator import require
from core.batch.lines import LineError, fine_tune_line_error, is_blank, parse_line
from core.batch.records import FILES, FileRecord, file_key, new_file_id
from core.domain import Principal, Scope
from core.errors import Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from core.http import Response
from core.multipart import form_fields, parse_multipart
from core.routes import Router
from core.schemas.files import FileDeleted, FileList, FileObject

FILE_MAX_BYTES = 100 * 1024 * 1024
UPLOAD_MAX_BODY = FILE_MAX_BYTES + 64 * 1024  # the file plus its multipart envelope
PURPOSES = {"batch": Scope.BATCH, "fine-tune": Scope.FINE_TUNE}


def require_files_scope(principal: Principal) -> None:
    if not (principal.has(Scope.BATCH) or principal.has(Scope.FINE_TUNE)):
        raise Forbidden("this credential lacks the 'batch' or 'fine_tune' scope that files need")


async def load_file(ctx: RequestContext, file_id: str, param: str = "file_id") -> FileRecord:
    """The caller's file; another tenant's file is as absent as one that never existed."""
    doc = await ctx.offload(ctx.gateway.store.get_document, FILES, ctx.caller.tenant_id, file_id)
    if doc is None:
        raise NotFound(f"no such file: {file_id}", param=param, code="file_not_found")
    return FileRecord.from_document(doc)


def check_jsonl(data: bytes, purpose: str) -> int:
    """The number of lines of a valid file; else a 400 naming the first bad line."""
    start = line_no = count = 0
    custom_ids: set[str] = set()
    while start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        raw = data[start:end].removesuffix(b"\r")
        start, line_no = end + 1, line_no + 1
        if is_blank(raw):
            continue
        count += 1
        if purpose == "batch":
            call = parse_line(raw, line_no)
            problem = call.message if isinstance(call, LineError) else None
            if problem is None and call.custom_id is not None:
                if call.custom_id in custom_ids:
                    problem = f"custom_id {call.custom_id!r} is used twice"
                custom_ids.add(call.custom_id)
        else:
            problem = fine_tune_line_error(raw, line_no)
        if problem is not None:
            raise InvalidRequest(f"line {line_no}: {problem}", param="file", code="invalid_file")
    if count == 0:
        raise InvalidRequest("the file has no lines", param="file", code="invalid_file")
    return count


def _file_out(record: FileRecord) -> FileObject:
    return FileObject.model_validate(record.to_api())


def register(router: Router) -> None:
    @router.route(
        "POST",
        "/v1/files",
        scope=None,
        summary="Upload a JSONL file (multipart/form-data: file, purpose = batch | fine-tune)",
        response=FileObject,
        tags=("files",),
        max_body_bytes=UPLOAD_MAX_BODY,
    )
    async def upload(ctx: RequestContext) -> Response:
        require_files_scope(ctx.caller)
        blobs = ctx.gateway.require_blobs()
        fields = form_fields(parse_multipart(ctx.request.body, ctx.request.headers.get("content-type")))
        if "purpose" not in fields:
            raise InvalidRequest("the form needs a 'purpose' field (batch or fine-tune)", param="purpose")
        purpose = fields["purpose"].text().strip()
        if purpose not in PURPOSES:
            raise InvalidRequest(f"purpose must be one of {', '.join(PURPOSES)}", param="purpose")
        require(ctx.caller, PURPOSES[purpose])
        upload = fields.get("file")
        if upload is None:
            raise InvalidRequest("the form needs a 'file' field with the JSONL content", param="file")
        if len(upload.data) > FILE_MAX_BYTES:
            raise PayloadTooLarge(f"the file is above the limit of {FILE_MAX_BYTES} bytes", param="file")
        lines = await asyncio.to_thread(check_jsonl, upload.data, purpose)
        now = ctx.gateway.clock.now()
        tenant = ctx.caller.tenant_id
        file_id = new_file_id(now)
        key = file_key(tenant, file_id)
        await asyncio.to_thread(blobs.write_object, key, upload.data)
        version = await asyncio.to_thread(blobs.object_version, key)
        name = posixpath.basename((upload.filename or "upload.jsonl").replace("\\", "/"))[:255] or "upload.jsonl"
        record = FileRecord(file_id, tenant, name, purpose, len(upload.data), now, key, version, lines)
        await ctx.offload(
            functools.partial(ctx.gateway.store.put_document, if_absent=True), FILES, record.to_document()
        )
        return Response.json(_file_out(record))

    @router.route(
        "GET",
        "/v1/files",
        scope=None,
        summary="List the tenant's files",
        response=FileList,
        tags=("files",),
        query={"purpose": "only files of this purpose", "limit": "1-1000 (100)", "after": "a file id"},
    )
    async def list_files(ctx: RequestContext) -> Response:
        require_files_scope(ctx.caller)
        limit = page_limit(ctx, 100, 1000)
        purpose = ctx.request.query.get("purpose")
        after = ctx.request.query.get("after") or None
        found: list[FileRecord] = []
        while len(found) <= limit:
            docs = await ctx.offload(ctx.gateway.store.list_documents, FILES, ctx.caller.tenant_id, after, limit + 1)
            found += [r for r in map(FileRecord.from_document, docs) if purpose in (None, r.purpose)]
            if len(docs) <= limit:
                break
            after = docs[-1].id
        data = [_file_out(r) for r in found[:limit]]
        out = FileList(
            data=data,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
            has_more=len(found) > limit,
        )
        return Response.json(out)

    @router.route(
        "GET", "/v1/files/{file_id}", scope=None, summary="A file's metadata", response=FileObject, tags=("files",)
    )
    async def get_file(ctx: RequestContext) -> Response:
        require_files_scope(ctx.caller)
        return Response.json(_file_out(await load_file(ctx, ctx.request.path_params["file_id"])))

    @router.route("GET", "/v1/files/{file_id}/content", scope=None, summary="A file's content", tags=("files",))
    async def file_content(ctx: RequestContext) -> Response:
        require_files_scope(ctx.caller)
        record = await load_file(ctx, ctx.request.path_params["file_id"])
        try:
            data = await asyncio.to_thread(ctx.gateway.require_blobs().read_object, record.blob_key)
        except FileNotFoundError:
            raise NotFound("the file's content is gone", code="file_not_found") from None
        return Response(200, {"content-type": "application/octet-stream"}, data)

    @router.route(
        "DELETE", "/v1/files/{file_id}", scope=None, summary="Delete a file", response=FileDeleted, tags=("files",)
    )
    async def delete_file(ctx: RequestContext) -> Response:
        require_files_scope(ctx.caller)
        record = await load_file(ctx, ctx.request.path_params["file_id"])
        await asyncio.to_thread(ctx.gateway.require_blobs().delete_object, record.blob_key)
        await ctx.offload(ctx.gateway.store.delete_document, FILES, record.tenant_id, record.id)
        return Response.json(FileDeleted(id=record.id, deleted=True))


def page_limit(ctx: RequestContext, default: int, maximum: int) -> int:
    raw = ctx.request.query.get("limit")
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise InvalidRequest(f"limit must be an integer from 1 to {maximum}", param="limit")
    return int(raw)
