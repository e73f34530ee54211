"""The Google Cloud functions (functions-framework): ``api`` (HTTP) and ``batch`` (CloudEvent).

Parse, call core, map. Each instance builds its runtime on its first request (``bootstrap.runtime``): the
gateway and ONE event loop in a thread of its own (``event_loop.LoopThread``). functions-framework runs each
HTTP request on a gunicorn worker thread; the thread hands ``Gateway.handle`` to the loop and waits, so one
instance serves many requests at once (``max_instance_request_concurrency``) on one loop, with nothing shared
per request between threads, and Firestore calls on core's offload threads. Metrics are flushed (Cloud Logging
JSON lines) when each answer is complete.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import flask
import functions_framework

from core.blob_jobs import collect_job_writes
from core.clock import new_id
from core.errors import APIError, PayloadTooLarge, ServiceUnavailable
from core.http import Request, Response, sane_request_id
from core.observability import LOGGER_NAME, log_event
from functions.gcp import bootstrap
from functions.gcp.batch_events import Outcome, handle_event
from functions.gcp.flask_http import to_flask, to_request

#: The request's own time beyond its deadline after which its thread stops waiting for the loop.
WAIT_SLACK_S = 5.0
EXECUTION_ID = "function-execution-id"  # functions-framework's header (LOG_EXECUTION_ID)

log = logging.getLogger(LOGGER_NAME)


@functions_framework.http
def api(request: flask.Request) -> flask.Response:
    try:
        rt = bootstrap.runtime()
    except bootstrap.StartupError as exc:
        log_event(log, "instance cannot start", logging.CRITICAL, error=str(exc))
        return _plain(ServiceUnavailable(str(exc), code="startup_failed"), request)
    return serve(rt, request)


@functions_framework.cloud_event
def batch(event: Any) -> None:
    rt = bootstrap.runtime()
    try:
        outcome = handle_event(rt, event)
    finally:
        rt.metrics.flush()
    log_event(log, "batch event handled", batch_id=outcome.batch_id, status=outcome.status)


def serve(rt: bootstrap.Runtime, req: flask.Request) -> flask.Response:
    """One HTTP request on one runtime (an instance): what ``api`` does, callable with a runtime of one's own."""
    deadline = time.monotonic() + rt.settings.timeout_s
    request = to_request(req, rt.gateway.max_body_for)
    if request is None:
        limit = rt.gateway.max_body_for(req.method.upper(), req.path, dict(req.headers))
        rt.metrics.incr("requests_total", route="unmatched", status="413")
        rt.metrics.flush()
        return _plain(PayloadTooLarge(f"request body above the limit of {limit} bytes"), req)
    if sane_request_id(request.headers.get("x-request-id")) is None:
        platform_id = sane_request_id(request.headers.get(EXECUTION_ID))
        request.headers = {**request.headers, "x-request-id": platform_id or new_id("req")}
    request.deadline = deadline
    try:
        response = rt.loop.run(_handle(rt, request), rt.settings.timeout_s + WAIT_SLACK_S)
    except TimeoutError:
        response = Response.error(APIError("the request ran past the function's timeout", status=504, code="timeout"))
        response.headers["x-request-id"] = request.headers["x-request-id"]
    return to_flask(response, rt.loop, deadline, rt.metrics.flush)


async def _handle(rt: bootstrap.Runtime, request: Request) -> Response:
    collect_job_writes()  # this task's context: the job objects the request writes are awaited below
    response = await rt.gateway.handle(request)
    if rt.jobs is not None:
        await rt.jobs.drain()
    return response


def _plain(err: APIError, req: flask.Request) -> flask.Response:
    response = Response.error(err)
    response.headers["x-request-id"] = sane_request_id(req.headers.get("x-request-id")) or new_id("req")
    return flask.Response(response.body, status=response.status, headers=list(response.headers.items()))


__all__ = ["Outcome", "api", "batch", "serve"]
