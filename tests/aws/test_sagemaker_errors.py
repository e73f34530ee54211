"""SageMakerBackend error mapping, through boto3 against a local server speaking the runtime protocol."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

from adapters.aws.sagemaker import SageMakerBackend
from core.errors import BackendError, BackendTimeout
from core.inference import StreamEvent, TextDelta
from tests.aws.runtime_server import Reply, RuntimeServer, error, stream, stream_exception
from tests.aws.support import PARAMS, TEXT, TGI, collect, run

if TYPE_CHECKING:
    from mypy_boto3_sagemaker_runtime.client import SageMakerRuntimeClient

pytestmark = pytest.mark.aws


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("ModelStreamError", {"Message": "connection reset", "ErrorCode": "StreamBroken"}),
        ("InternalStreamFailure", {"Message": "internal"}),
    ],
)
def test_stream_error_events_fail_the_stream(
    runtime: RuntimeServer, local_client: SageMakerRuntimeClient, kind: str, body: dict[str, str]
) -> None:
    first = "data:" + json.dumps({"token": {"text": "Hi", "special": False}})
    runtime.replies["textgen"] = stream(first, tail=[stream_exception(kind, body)])
    received: list[StreamEvent] = []

    async def consume() -> None:
        async for event in SageMakerBackend(local_client).stream(TGI, TEXT, PARAMS):
            received.append(event)

    with pytest.raises(BackendError) as failed:
        run(consume())
    assert received == [TextDelta("Hi")]
    assert (failed.value.status, failed.value.retryable) == (502, True)
    assert body["Message"] in failed.value.message


@pytest.mark.parametrize(
    ("reply", "status", "retryable", "code"),
    [
        (error(400, "ThrottlingException", message="Rate exceeded"), 429, True, "backend_throttled"),
        (error(429, "ModelNotReadyException", message="loading"), 429, True, "backend_throttled"),
        (error(400, "ValidationError", message="Endpoint textgen not found."), 502, False, "backend_misconfigured"),
        (error(503, "ServiceUnavailable", message="unavailable"), 502, True, "backend_error"),
        (error(500, "InternalFailure", message="oops"), 502, True, "backend_error"),
        (error(403, "AccessDeniedException", message="no"), 502, False, "backend_misconfigured"),
    ],
)
def test_service_errors_map_to_gateway_errors(
    runtime: RuntimeServer,
    local_client: SageMakerRuntimeClient,
    reply: Reply,
    status: int,
    retryable: bool,
    code: str,
) -> None:
    runtime.replies["textgen"] = reply
    backend = SageMakerBackend(local_client)
    with pytest.raises(BackendError) as generate:
        run(backend.generate(TGI, TEXT, PARAMS))
    with pytest.raises(BackendError) as streamed:
        run(collect(backend.stream(TGI, TEXT, PARAMS)))
    for failed in (generate, streamed):
        assert (failed.value.status, failed.value.retryable, failed.value.code) == (status, retryable, code)


def test_an_unknown_endpoint_is_a_misconfiguration(local_client: SageMakerRuntimeClient) -> None:
    with pytest.raises(BackendError) as failed:
        run(SageMakerBackend(local_client).generate({**TGI, "endpoint_name": "nope"}, TEXT, PARAMS))
    assert (failed.value.status, failed.value.code) == (502, "backend_misconfigured")
    assert "nope" in failed.value.message


def _model_error(original: int, body: str) -> Reply:
    message = f'Received client error ({original}) from primary with message "{body}".'
    return error(424, "ModelError", Message=message, OriginalStatusCode=original, OriginalMessage=body)


@pytest.mark.parametrize(
    ("reply", "status", "retryable", "text"),
    [
        (_model_error(422, '{"error":"Input validation error: too long","error_type":"validation"}'), 400, False,
         "Input validation error: too long"),
        (_model_error(424, '{"error":"max_new_tokens must be < 2048","code":424}'), 400, False,
         "max_new_tokens must be < 2048"),
        (_model_error(424, '{"error":"CUDA error","error_type":"generation"}'), 502, True, "CUDA error"),
        (_model_error(429, '{"error":"Model is overloaded","error_type":"overloaded"}'), 429, True, "overloaded"),
        (_model_error(500, '{"error":"boom"}'), 502, True, "boom"),
    ],
)  # fmt: skip
def test_model_errors_keep_the_containers_message(
    runtime: RuntimeServer, local_client: SageMakerRuntimeClient, reply: Reply, status: int, retryable: bool, text: str
) -> None:
    runtime.replies["textgen"] = reply
    with pytest.raises(BackendError) as failed:
        run(SageMakerBackend(local_client).generate(TGI, TEXT, PARAMS))
    assert (failed.value.status, failed.value.retryable) == (status, retryable)
    assert text in failed.value.message
    if status == 400:
        assert failed.value.message == text  # the caller sees the container's own words


def test_a_slow_endpoint_is_a_timeout(runtime: RuntimeServer, local_client: SageMakerRuntimeClient) -> None:
    runtime.replies["textgen"] = Reply(body=b'[{"generated_text": "late"}]', delay_s=1.5)
    with pytest.raises(BackendTimeout):
        run(SageMakerBackend(local_client).generate(TGI, TEXT, PARAMS))


def test_a_stalled_stream_is_a_timeout(runtime: RuntimeServer, local_client: SageMakerRuntimeClient) -> None:
    runtime.replies["textgen"] = stream("data:" + json.dumps({"token": {"text": "a"}}), stall_s=1.5)
    with pytest.raises(BackendTimeout):
        run(collect(SageMakerBackend(local_client).stream(TGI, TEXT, PARAMS)))
