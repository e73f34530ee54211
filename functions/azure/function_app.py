"""The Azure functions (Python v2 programming model): ``api`` (HTTP, every route) and ``batch`` (Event Grid).

Parse, call core, map. Both are async: the Python worker runs them on its one event loop, many invocations at
once, so nothing here blocks it (the runtime is built on a thread, store calls go to core's offload threads, and
blob writes of job messages too). ``api`` has one catch-all route (``{*path}``, every method; host.json sets the
route prefix to "" so paths are the other clouds'): ``Gateway.handle`` routes. Answers are whole HttpResponses: an
SSE stream is collected first (``azure_http``: the v2 model of azure-functions 1.26 cannot stream). ``batch`` takes
the Event Grid subscription's BlobCreated events for ``batch-input/`` (``batch_events``). Metrics (Application
Insights log lines) are flushed after each invocation.

Nothing is built at import: the worker indexes this module (``app``) before any invocation.
"""

from __future__ import annotations

import logging
import time

import azure.functions as func

from core.blob_jobs import collect_job_writes
from core.clock import new_id
from core.errors import APIError, PayloadTooLarge, ServiceUnavailable
from core.http import Request, Response, sane_request_id
from core.observability import LOGGER_NAME, log_event
from functions.azure import bootstrap
from functions.azure.azure_http import headers_of, path_of, to_http_response, to_request
from functions.azure.batch_events import handle_event

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")

log = logging.getLogger(LOGGER_NAME)

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.function_name("api")
@app.route(route="{*path}", methods=METHODS)
async def api(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    try:
        rt = await bootstrap.runtime_async()
    except bootstrap.StartupError as exc:
        log_event(log, "worker cannot start", logging.CRITICAL, error=str(exc))
        return _plain(ServiceUnavailable(str(exc), code="startup_failed"), req)
    return await serve(rt, req, getattr(context, "invocation_id", None))


@app.function_name("batch")
@app.event_grid_trigger(arg_name="event")
async def batch(event: func.EventGridEvent) -> None:
    rt = await bootstrap.runtime_async()
    try:
        outcome = await handle_event(rt, event)
    finally:
        rt.metrics.flush()
    log_event(log, "batch event handled", batch_id=outcome.batch_id, status=outcome.status)


async def serve(rt: bootstrap.Runtime, req: func.HttpRequest, invocation_id: str | None = None) -> func.HttpResponse:
    """One HTTP request on one runtime (a worker): what ``api`` does, callable with a runtime of one's own."""
    deadline = time.monotonic() + rt.settings.http_timeout_s
    request = to_request(req, rt.gateway.max_body_for)
    if request is None:
        limit = rt.gateway.max_body_for(req.method.upper(), path_of(req), headers_of(req))
        rt.metrics.incr("requests_total", route="unmatched", status="413")
        rt.metrics.flush()
        return _plain(PayloadTooLarge(f"request body above the limit of {limit} bytes"), req)
    if sane_request_id(request.headers.get("x-request-id")) is None:
        request.headers = {**request.headers, "x-request-id": sane_request_id(invocation_id) or new_id("req")}
    request.deadline = deadline
    try:
        response = await _handle(rt, request)
        return await to_http_response(response)
    finally:
        rt.metrics.flush()


async def _handle(rt: bootstrap.Runtime, request: Request) -> Response:
    collect_job_writes()  # this task's context: the job blobs the request writes are awaited below
    response = await rt.gateway.handle(request)
    if rt.jobs is not None:
        await rt.jobs.drain()
    return response


def _plain(err: APIError, req: func.HttpRequest) -> func.HttpResponse:
    response = Response.error(err)
    response.headers["x-request-id"] = sane_request_id(req.headers.get("x-request-id")) or new_id("req")
    return func.HttpResponse(
        response.body, status_code=response.status, headers=response.headers, mimetype="application/json"
    )


__all__ = ["app", "serve"]
