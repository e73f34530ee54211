"""The api function answers before Lambda stops it: model calls end at the invocation's deadline less a margin.

A SageMaker endpoint that hangs (the local runtime server answering late) with the model's default 60 s timeout,
retries and a fallback, on an invocation with 3 s left: the caller gets 504 ``backend_timeout`` in the error
shape before the 3 s are up (never Lambda's timeout, which API Gateway turns into a bare 503), the usage record
says 504 with 0 tokens, and the reservation is given back (a quota of exactly one call's tokens still serves it).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from core.inference import GenerationParams, Prompt, StreamEnd, StreamEvent, TextDelta
from core.token_counts import prompt_upper_bound
from functions.aws import bootstrap
from functions.aws.apigw import INTEGRATION_TIMEOUT_S, deadline_of
from functions.aws.bootstrap import AwsBackends
from tests.aws.handler_support import Admin, LambdaContext, Result, Stack, api_event, deployed
from tests.aws.runtime_server import Reply, RuntimeServer, stream
from tests.aws.support import REGION

pytestmark = pytest.mark.aws
HANGS = {"type": "sagemaker", "endpoint_name": "hanging", "container": "tgi"}
HANGS_TOO = {**HANGS, "endpoint_name": "hanging-too"}
LEFT_MS = 3000  # what the invocation has left; the gateway keeps 1 s of it to settle and answer
HANG_S = 4.0
PROMPT = "Write a haiku about autumn rain:"
MAX_TOKENS = 16
CONTEXT_LENGTH = 4096  # Admin.model's


@dataclass
class World:
    stack: Stack
    admin: Admin


@pytest.fixture(scope="module")
def world(moto_url: str, atomic_moto_url: str) -> Iterator[World]:
    with deployed(moto_url, atomic_moto_url) as stack:
        admin = Admin()
        # The model's defaults: a 60 s timeout and 2 retries (the admin API's), and a fallback that hangs too.
        admin.model("hangs-too", HANGS_TOO)
        admin.model("hangs", HANGS, fallbacks=["hangs-too"])
        yield World(stack, admin)


@pytest.fixture
def endpoints(world: World, runtime: RuntimeServer, monkeypatch: pytest.MonkeyPatch) -> RuntimeServer:
    """The container's SageMaker calls go to the local runtime server, whose endpoints hang."""
    router = bootstrap.runtime().gateway.model_router
    monkeypatch.setattr(router, "_backends", AwsBackends(REGION, runtime.url))
    late = json.dumps([{"generated_text": " too late", "details": {"finish_reason": "length", "generated_tokens": 2}}])
    runtime.replies["hanging"] = Reply(body=late.encode(), delay_s=HANG_S)
    runtime.replies["hanging-too"] = Reply(body=late.encode(), delay_s=HANG_S)
    return runtime


def invoke(event: dict[str, Any], left_ms: int = LEFT_MS) -> tuple[Result, float]:
    """The api handler as Lambda calls it with ``left_ms`` before the function's timeout; and how long it took."""
    from functions.aws import api

    started = time.monotonic()
    raw = api.handler(event, LambdaContext(remaining_ms=left_ms))
    return Result.of(raw), time.monotonic() - started


def completion(key: str, max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    body = {"model": "hangs", "prompt": PROMPT, "max_tokens": max_tokens}
    return api_event("apigw_http_completions_ok", key=key, body=body)


def test_a_hanging_endpoint_is_504_before_lambda_stops_it_recorded_and_the_quota_given_back(
    world: World, endpoints: RuntimeServer
) -> None:
    quota = prompt_upper_bound(Prompt(text=PROMPT), CONTEXT_LENGTH) + MAX_TOKENS  # what one call reserves
    tenant = world.admin.tenant("deadline-co", {"token_quota": quota})
    key = world.admin.key(tenant)
    over, _ = invoke(completion(key, MAX_TOKENS + 1))
    assert over.error(429)["code"] == "insufficient_quota"  # the quota is exactly one call's reservation
    result, took = invoke(completion(key))
    error = result.error(504)
    assert (error["code"], error["type"]) == ("backend_timeout", "api_error")
    assert result.headers["x-request-id"]
    assert 1.8 <= took < LEFT_MS / 1000 - 0.4  # at the deadline less the margin, well before Lambda's end
    assert len(endpoints.requests) == 1  # neither a retry nor the fallback started without time to finish
    [record] = world.stack.store().list_usage(tenant, 0, time.time() + 60)
    assert (record.status, record.prompt_tokens, record.completion_tokens) == (504, 0, 0)
    answer = [{"generated_text": " Rain on the roof", "details": {"finish_reason": "length", "generated_tokens": 4}}]
    endpoints.replies["hanging"] = Reply(body=json.dumps(answer).encode())
    served, _ = invoke(completion(key))  # reserves the whole quota: nothing of the failed call is left in it
    assert served.ok()["choices"][0]["text"] == " Rain on the roof"


class Stalling:
    """A backend (resolver and all) whose streams send two words, then stall: cancellable, unlike a thread."""

    def backend_for(self, route: Mapping[str, Any]) -> Stalling:
        return self

    async def stream(
        self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        yield TextDelta("Rain")
        yield TextDelta(" on")
        await asyncio.sleep(HANG_S)
        yield StreamEnd("stop", 1, 3)


def stalled_stream(world: World, key_tenant: str) -> tuple[Result, float, str]:
    key = world.admin.key(key_tenant)
    body = {"model": "hangs", "messages": [{"role": "user", "content": "Rain?"}], "stream": True}
    result, took = invoke(api_event("apigw_http_chat_completions_stream", key=key, body=body))
    return result, took, key


def test_a_stream_that_stalls_is_cut_before_lambda_stops_it(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    """HTTP APIs cannot stream: the body is collected after the gateway returned, and still ends in time."""
    monkeypatch.setattr(bootstrap.runtime().gateway.model_router, "_backends", Stalling())
    tenant = world.admin.tenant("stall-co")
    result, took, _ = stalled_stream(world, tenant)
    assert result.status == 200, result.text
    events = [line.removeprefix("data: ") for line in result.text.split("\n\n") if line.startswith("data: ")]
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-2])
    assert text == "Rain on"
    assert json.loads(events[-2])["error"]["code"] == "backend_timeout"
    assert events[-1] == "[DONE]"
    assert 1.8 <= took < LEFT_MS / 1000 - 0.4
    [record] = world.stack.store().list_usage(tenant, 0, time.time() + 60)
    assert record.status == 504


def test_a_sagemaker_stream_that_stalls_is_cut_before_lambda_stops_it(world: World, endpoints: RuntimeServer) -> None:
    tokens = [
        "data:" + json.dumps({"index": i, "token": {"id": i, "text": t, "special": False}, "details": None})
        for i, t in enumerate(["Rain", " on"])
    ]
    endpoints.replies["hanging"] = stream(*tokens, stall_s=HANG_S)  # no final details: it stalls instead
    result, took, _ = stalled_stream(world, world.admin.tenant("stall-sm"))
    assert result.status == 200, result.text
    assert "backend_timeout" in result.text
    assert took < LEFT_MS / 1000 - 0.4


def test_a_bad_timeout_header_is_400(world: World) -> None:
    key = world.admin.key(world.admin.tenant("impatient"))
    event = completion(key)
    event["headers"]["x-textnlp-timeout"] = "-3"
    result, _ = invoke(event)
    error = result.error(400)
    assert (error["code"], error["param"]) == ("invalid_timeout", "x-textnlp-timeout")


# -- the deadline of an invocation --------------------------------------------------------------------------


def event_at(epoch_s: float | None) -> dict[str, Any]:
    event = api_event("apigw_http_models_list_ok")
    if epoch_s is None:
        del event["requestContext"]["timeEpoch"]
    else:
        event["requestContext"]["timeEpoch"] = int(epoch_s * 1000)
    return event


def test_the_deadline_is_lambdas_end_or_api_gateways_integration_timeout_whichever_is_sooner() -> None:
    now, wall = 100.0, 1_700_000_000.0
    context = LambdaContext(remaining_ms=900_000)
    assert deadline_of(event_at(None), None, now=now, wall=wall) is None
    assert deadline_of(event_at(None), LambdaContext(remaining_ms=5000), now=now, wall=wall) == pytest.approx(
        105, abs=0.05
    )
    # API Gateway received it 4 s ago (a cold start): its 30 s end first.
    assert deadline_of(event_at(wall - 4), context, now=now, wall=wall) == now + INTEGRATION_TIMEOUT_S - 4
    assert deadline_of(event_at(wall - 4), LambdaContext(remaining_ms=2000), now=now, wall=wall) == pytest.approx(
        102, abs=0.05
    )
    # A little ahead of this clock: taken as now. Far ahead, or older than the integration timeout (a stored
    # event replayed): not API Gateway's clock, ignored.
    assert deadline_of(event_at(wall + 0.5), context, now=now, wall=wall) == now + INTEGRATION_TIMEOUT_S
    assert deadline_of(event_at(wall + 60), context, now=now, wall=wall) == pytest.approx(1000, abs=0.05)
    assert deadline_of(event_at(wall - 3600), None, now=now, wall=wall) is None
