"""Lambda handler of the HTTP API: API Gateway event -> core Request -> Gateway -> API Gateway result.

Parse, call core, map: nothing else happens here. The gateway, its botocore clients and an event loop are
built on the first invocation of a container and reused (``bootstrap.runtime``).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger

from adapters.aws.tracing import make_tracer
from core.clock import new_id
from core.errors import InvalidRequest
from core.http import Response, sane_request_id
from functions.aws.apigw import BadEvent, deadline_of, request_id_of, to_request, to_result
from functions.aws.bootstrap import Runtime, runtime

logger = Logger(service="textnlp")
# Powertools' Tracer; the X-Ray SDK is imported only where tracing is on (Lambda, tracing Active), and
# patches botocore (every AWS call) and httpx on its import, not every library it knows (adapters.aws.tracing).
tracer = make_tracer("textnlp")


@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    return handle(runtime(), event, context)


def handle(rt: Runtime, event: Any, context: Any = None) -> dict[str, Any]:
    """One event on one runtime (a container): what ``handler`` does, callable with a runtime of one's own.

    ``context`` (Lambda's) gives the time left: calls to models end before it, and before API Gateway's own
    integration timeout, so the caller gets the gateway's 504 instead of the platform's bare 503.
    """
    try:
        request = to_request(event)
    except BadEvent as exc:
        # Not an HTTP API event (a misrouted trigger, a hand-made test event): the caller's mistake, not ours.
        response = Response.error(InvalidRequest(str(exc), code="bad_event"))
        response.headers["x-request-id"] = request_id_of(event) or new_id("req")
        return rt.loop.run_until_complete(to_result(response))
    if sane_request_id(request.headers.get("x-request-id")) is None:
        # No usable id from the caller: API Gateway's becomes the request id, so its access log, our request
        # log (core logs through the Powertools logger, "textnlp"), metrics and the response share one.
        request.headers = {**request.headers, "x-request-id": request_id_of(event) or new_id("req")}
    logger.set_correlation_id(request.headers["x-request-id"])
    request.deadline = deadline_of(event, context)
    try:
        response = rt.loop.run_until_complete(rt.gateway.handle(request))
        return rt.loop.run_until_complete(to_result(response))
    finally:
        rt.metrics.flush()
