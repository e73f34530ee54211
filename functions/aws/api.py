"""Lambda handler of the HTTP API: API Gateway event -> core Request -> Gateway -> API Gateway result.

Parse, call core, map: nothing else happens here. The gateway, its boto3 clients and an event loop are
built on the first invocation of a container and reused (``bootstrap.runtime``).
"""

from __future__ import annotations

from typing import Any

from aws_lambda_powertools import Logger, Tracer

from core.errors import InvalidRequest
from core.http import Response
from functions.aws.apigw import BadEvent, to_request, to_result
from functions.aws.bootstrap import runtime

logger = Logger(service="textnlp")
tracer = Tracer(service="textnlp")


@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    rt = runtime()
    try:
        request = to_request(event)
    except BadEvent as exc:
        return rt.loop.run_until_complete(to_result(Response.error(InvalidRequest(str(exc), code="bad_event"))))
    if "x-request-id" not in request.headers and (aws_id := _aws_request_id(event)):
        # API Gateway's id becomes the request id: logs, metrics and the response all carry the same one.
        request.headers = {**request.headers, "x-request-id": aws_id}
    logger.set_correlation_id(request.headers.get("x-request-id"))
    try:
        response = rt.loop.run_until_complete(rt.gateway.handle(request))
        return rt.loop.run_until_complete(to_result(response))
    finally:
        rt.metrics.flush()


def _aws_request_id(event: dict[str, Any]) -> str | None:
    context = event.get("requestContext")
    return context.get("requestId") if isinstance(context, dict) else None
