"""Fault injection through the api Lambda (issue 10): the answer, the usage records and the quota on DynamoDB.

The same faults as tests/e2e/test_faults.py, from the fake OpenAI server in a thread (``fault:<mode>`` models,
see bench/fake_openai_server.py), through ``functions.aws.api.handle`` on a deployed moto stack. API Gateway
HTTP APIs cannot stream: a streamed answer is collected whole, so a stream's error event is inside the body.
Each test runs one tenant with a token quota and reads its usage records through the store: the status, how
the call ended and the tokens; the quota counter holds exactly the records' tokens (no lease slot still holds
a reservation), the rest of the quota can be reserved by one request, and one token more is refused.

The models, requests, case tables and answer checks are shared with the local server's suite
(tests/fault_cases.py); this file has how the handler is called and how the records and the counter are read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest

from bench.fake_openai_server import start_in_thread
from core.domain import UsageRecord
from core.inference import Generation, GenerationParams, Prompt
from core.leases import SLOTS, lease_field
from core.limits import period_bounds
from functions.aws import api, bootstrap
from functions.aws.apigw import to_request
from tests.aws.handler_support import Admin, LambdaContext, Result, Stack, api_event, deployed
from tests.fault_cases import (
    BROKEN_STREAMS,
    CONTEXT_LENGTH,
    FAILED_CALLS,
    KINDS,
    MAX_OUTPUT_TOKENS,
    MODELS,
    PATHS,
    QUOTA,
    WORDS,
    assert_a_broken_stream,
    assert_a_whole_stream,
    assert_cut_at_the_timeout,
    assert_error_shape,
    chunk_text,
    request_body,
    reservation,
    spend_body,
)

pytestmark = pytest.mark.aws

TEMPLATES = {"chat": "apigw_http_chat_completions_ok", "completions": "apigw_http_completions_ok"}  # events/aws
# code of a broken stream's error event -> (status, ended) of its usage record
RECORDED = {
    "stream_interrupted": (502, "truncated"),
    "stream_truncated": (502, "truncated"),
    "backend_timeout": (504, "timeout"),
}


@pytest.fixture(scope="module")
def stack(moto_url: str, atomic_moto_url: str) -> Iterator[Stack]:
    base_url, stop = start_in_thread()
    try:
        with deployed(moto_url, atomic_moto_url) as deployed_stack:
            admin = Admin()
            for model_id, (upstream, timeout_s, retries) in MODELS.items():
                admin.model(
                    model_id,
                    {"type": "openai", "base_url": base_url, "model": upstream},
                    context_length=CONTEXT_LENGTH,
                    max_output_tokens=MAX_OUTPUT_TOKENS,
                    timeout_s=timeout_s,
                    max_retries=retries,
                )
            yield deployed_stack
    finally:
        stop()


@dataclass
class Caller:
    """One tenant with a quota of ``QUOTA`` tokens, its key, and the deployed stack to look at its records."""

    stack: Stack
    tenant_id: str
    key: str

    def event(self, kind: str, model: str, *, stream: bool = False) -> dict[str, Any]:
        body = request_body(kind, model, stream=stream)
        return api_event(TEMPLATES[kind], key=self.key, path=PATHS[kind], body=body)

    def call(self, kind: str, model: str, *, stream: bool = False) -> Result:
        """The api handler on the container's runtime, as Lambda calls it (15 minutes left)."""
        raw = api.handle(bootstrap.runtime(), self.event(kind, model, stream=stream), LambdaContext())
        return Result.of(raw)

    def records(self) -> list[UsageRecord]:
        return self.stack.store().list_usage(self.tenant_id, 0, time.time() + 60)

    def record(self) -> UsageRecord:
        """The one usage record of the call under test."""
        [record] = self.records()
        return record

    def spend(self, tokens: int) -> Result:
        """A request that reserves exactly ``tokens``."""
        event = api_event(TEMPLATES["completions"], key=self.key, body=spend_body(tokens))
        return Result.of(api.handle(bootstrap.runtime(), event, LambdaContext()))

    def assert_the_quota_counter_is_the_records(self) -> int:
        """The tenant's quota counter holds exactly the tokens of its usage records; returns them."""
        charged = sum(r.total_tokens for r in self.records())
        month = period_bounds(time.time(), "month")[0]
        counters = self.stack.store().read(f"q|{self.tenant_id}|{month}")
        assert counters.get("used", 0) == charged, (counters, self.records())
        held = {f: v for f, v in counters.items() if any(f.startswith(lease_field(s, "")) for s in range(SLOTS))}
        assert not any(held.values()), counters  # no reservation is still held
        return charged

    def assert_the_rest_of_the_quota_is_exact(self) -> None:
        left = QUOTA - self.assert_the_quota_counter_is_the_records()
        assert left > 2
        over = self.spend(left + 1)
        assert over.error(429)["code"] == "insufficient_quota"
        exact = self.spend(left)
        assert exact.status == 200, exact.text
        self.assert_the_quota_counter_is_the_records()


@pytest.fixture
def caller(stack: Stack, request: pytest.FixtureRequest) -> Caller:
    admin = Admin()
    tenant = admin.tenant(request.node.name[:100], {"token_quota": QUOTA})
    return Caller(stack, tenant, admin.key(tenant))


# -- calls that fail before any text: plain HTTP errors, recorded with 0 tokens, charged nothing ---------------


@pytest.mark.parametrize(("kind", "model", "stream", "status", "code"), FAILED_CALLS)
def test_a_call_that_fails_before_any_text_is_an_error_recorded_and_charged_nothing(
    caller: Caller, kind: str, model: str, stream: bool, status: int, code: str
) -> None:
    started = time.monotonic()
    result = caller.call(kind, model, stream=stream)
    took = time.monotonic() - started
    assert_error_shape(result.error(status), code)
    assert result.headers["x-request-id"]
    if status == 504:
        assert_cut_at_the_timeout(took)
    record = caller.record()
    ended = "timeout" if status == 504 else "failed"
    assert (record.status, record.ended, record.prompt_tokens, record.completion_tokens) == (status, ended, 0, 0)
    assert record.model == model
    caller.assert_the_rest_of_the_quota_is_exact()


class CountingBackends:
    """The runtime's backend resolver, counting the generate calls that reach a backend."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def backend_for(self, route: Mapping[str, Any]) -> CountingBackends:
        return self

    async def generate(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> Generation:
        self.calls += 1
        generation: Generation = await self.inner.backend_for(route).generate(route, prompt, params)
        return generation


def test_a_500_is_retried_then_answered_502_recorded_and_charged_nothing(
    caller: Caller, monkeypatch: pytest.MonkeyPatch
) -> None:
    router = bootstrap.runtime().gateway.model_router
    counting = CountingBackends(router._backends)
    monkeypatch.setattr(router, "_backends", counting)
    result = caller.call("chat", "fault-500-retried")
    assert_error_shape(result.error(502), "backend_error")
    assert counting.calls == 3  # the call and its 2 retries
    record = caller.record()
    assert (record.status, record.ended, record.total_tokens) == (502, "failed", 0)
    monkeypatch.undo()
    caller.assert_the_rest_of_the_quota_is_exact()


# -- streams that fail after text: the text, an error event, [DONE]; charged what was delivered ---------------


@pytest.mark.parametrize(("kind", "model", "delivered", "code"), BROKEN_STREAMS)
def test_a_stream_that_fails_after_text_ends_in_an_error_event_and_is_charged_what_was_delivered(
    caller: Caller, kind: str, model: str, delivered: int, code: str
) -> None:
    status, ended = RECORDED[code]
    started = time.monotonic()
    result = caller.call(kind, model, stream=True)
    took = time.monotonic() - started
    assert result.status == 200, result.text
    assert_a_broken_stream(kind, result.headers["content-type"], result.text, delivered=delivered, code=code)
    if status == 504:
        assert_cut_at_the_timeout(took)

    record = caller.record()
    assert (record.status, record.ended, record.model) == (status, ended, model)
    assert record.completion_tokens == delivered  # the gateway's count: one token per delta
    assert record.prompt_tokens > 0
    assert record.total_tokens <= reservation(kind)
    caller.assert_the_rest_of_the_quota_is_exact()


# -- streams that succeed slowly, and callers that leave -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_slow_stream_completes_with_its_finish_reason_and_usage(caller: Caller, kind: str) -> None:
    result = caller.call(kind, "fault-slow-100", stream=True)
    assert result.status == 200, result.text
    reported = assert_a_whole_stream(kind, result.text)
    record = caller.record()
    assert (record.status, record.ended) == (200, "completed")
    assert record.prompt_tokens == reported["prompt_tokens"]
    assert record.completion_tokens == reported["completion_tokens"]
    caller.assert_the_rest_of_the_quota_is_exact()


async def read_two_chunks_then_leave(kind: str, event: dict[str, Any]) -> list[str]:
    """The gateway's side of a caller that goes away after two chunks of text (the body is closed)."""
    request = to_request(event)
    response = await bootstrap.runtime().gateway.handle(request)
    assert response.status == 200
    assert response.stream is not None
    stream: Any = response.stream
    texts: list[str] = []
    try:
        async for raw in stream:
            for line in raw.decode().split("\n\n"):
                if line.startswith("data: {"):
                    text = chunk_text(kind, json.loads(line[len("data: ") :]))
                    if text:
                        texts.append(text)
            if len(texts) == 2:
                break
    finally:
        await stream.aclose()
    return texts


@pytest.mark.parametrize("kind", KINDS)
def test_a_caller_that_leaves_mid_stream_is_recorded_499_and_charged_what_was_delivered(
    caller: Caller, kind: str
) -> None:
    """API Gateway never shows a Lambda that the caller left; the gateway closing the body early is that case."""
    event = caller.event(kind, "fault-slow-300", stream=True)
    texts = bootstrap.runtime().loop.run_until_complete(read_two_chunks_then_leave(kind, event))
    assert "".join(texts) == " ".join(WORDS[:2])
    record = caller.record()
    assert record.status == 499
    assert record.ended in ("client_gone", "cancelled")
    assert record.completion_tokens == 2
    assert record.prompt_tokens > 0
    assert record.total_tokens <= reservation(kind)
    caller.assert_the_rest_of_the_quota_is_exact()
