"""Line results: what is stored per line, and the output and error JSONL lines written from them."""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Iterator
from typing import Any

from core.batch.lines import LineError
from core.batch.records import FILES, BatchJob, FileRecord, derived_file_id, iter_documents, lines_collection
from core.errors import APIError
from core.offload import Offload
from core.ports import BlobStore, DocumentStore


def ok_result(request_id: str, custom_id: str | None, body: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, "status": 200, "request_id": request_id, "custom_id": custom_id, "body": body, "error": None}


def api_error_result(
    request_id: str, custom_id: str | None, exc: APIError, *, retry: bool = False, message: str | None = None
) -> dict[str, Any]:
    """A line the gateway refused or could not serve: its HTTP answer and the error, as the API gives it."""
    result = {
        "ok": False,
        "status": exc.status,
        "request_id": request_id,
        "custom_id": custom_id,
        "body": exc.body(),
        "error": {"code": exc.code or exc.type, "message": message or exc.message},
    }
    if retry:
        result["retry"] = True  # not final: a later run of the batch tries this line again
    return result


def line_error_result(error: LineError) -> dict[str, Any]:
    """A line that was never a request (malformed, too long, not UTF-8, invalid fields)."""
    return {
        "ok": False,
        "status": None,
        "request_id": None,
        "custom_id": error.custom_id,
        "body": None,
        "error": {"code": error.code, "message": error.message},
    }


def output_line(batch_id: str, line_no: int, result: dict[str, Any]) -> bytes:
    """OpenAI's batch output line, plus the input line number: ``{"id", "custom_id", "line", "response", "error"}``."""
    response = None
    if result.get("status") is not None:
        response = {"status_code": result["status"], "request_id": result["request_id"], "body": result["body"]}
    error = result.get("error")
    line = {
        "id": f"batch_req_{batch_id.removeprefix('batch_')}_{line_no}",
        "custom_id": result.get("custom_id"),
        "line": line_no,
        "response": response,
        "error": None if error is None else {**error, "line": line_no},
    }
    return json.dumps(line, separators=(",", ":"), ensure_ascii=False).encode()


def result_lines(store: DocumentStore, job: BatchJob, *, errors_only: bool, page: int = 500) -> Iterator[bytes]:
    """The output (every line with a result) or error lines of a batch, streamed in line order."""
    for doc in iter_documents(store, lines_collection(job.id), job.tenant_id, page):
        if errors_only and doc.body.get("ok"):
            continue
        yield output_line(job.id, int(doc.id), doc.body)


def write_outputs(
    store: DocumentStore,
    blobs: BlobStore,
    job: BatchJob,
    *,
    with_output: bool = True,
    with_errors: bool = True,
    page: int = 500,
) -> tuple[int, int]:
    """Write the output and error objects; returns their sizes. Memory does not grow with the batch."""
    out = err = 0
    if with_output:
        out = blobs.write_lines(job.output_key, result_lines(store, job, errors_only=False, page=page))
    if with_errors:
        err = blobs.write_lines(job.error_key, result_lines(store, job, errors_only=True, page=page))
    return out, err


async def finish(
    store: DocumentStore,
    blobs: BlobStore,
    job: BatchJob,
    now: float,
    page: int = 500,
    *,
    offload: Offload | None = None,
) -> tuple[str | None, str | None]:
    """Write a batch's output and error objects (in a thread: they are streamed from the store).

    A batch started through the API registers them as files of its tenant (through ``offload``: the store
    blocks) and returns their ids; one without output (or without errors) gets no such file, as with OpenAI.
    """
    offload = offload or Offload(0)
    publish = job.publish_files
    with_output = not publish or job.completed + job.failed > 0
    with_errors = not publish or job.failed > 0
    write = functools.partial(write_outputs, with_output=with_output, with_errors=with_errors, page=page)
    out_size, err_size = await asyncio.to_thread(write, store, blobs, job)
    if not publish:
        return None, None
    ids: list[str | None] = []
    for role, key, size, wanted in (
        ("output", job.output_key, out_size, with_output),
        ("error", job.error_key, err_size, with_errors),
    ):
        if not wanted:
            ids.append(None)
            continue
        file_id = derived_file_id(job.id, role)
        record = FileRecord(file_id, job.tenant_id, f"{job.id}_{role}.jsonl", f"batch_{role}", size, now, key)
        await offload.call(store.put_document, FILES, record.to_document())
        ids.append(file_id)
    return ids[0], ids[1]
