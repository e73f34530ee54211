"""Fault injection through the api Lambda (issue 10): the answer, the usage records and the quota on DynamoDB.

The same faults as tests/e2e/test_faults.py, from the fake OpenAI server in a thread (``fault:<mode>`` models,
see bench/fake_openai_server.py), through ``functions.aws.api.handle`` on a deployed moto stack. API Gateway
HTTP APIs cannot stream: a streamed answer is collected whole, so a stream's error event is inside the body.
Each test runs one tenant with a token quota and reads its usage records through the store: the status, how
the call ended and the tokens; the quota counter holds exactly the records' tokens (no lease slot still holds
a reservation), the rest of the quota can be reserved by one request, and one token more is refused.
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
from core.inference import ChatMessage, Generation, GenerationParams, Prompt
from core.leases import SLOTS, lease_field
from core.limits import period_bounds
from core.tokens import prompt_upper_bound
from functions.aws import api, bootstrap
from functions.aws.apigw import to_request
from tests.aws.handler_support import Admin, LambdaContext, Result, Stack, api_event, deployed

pytestmark = pytest.mark.aws

QUOTA = 2000
CONTEXT_LENGTH = 8192
MAX_OUTPUT_TOKENS = 4096
MAX_TOKENS = 32
WORDS = ["one", "two", "three", "four", "five", "six"]
PROMPT = " ".join(WORDS)  # the fake answers with these words: one stream chunk (one token) each
HANG_TIMEOUT_S = 1.5
SPEND = "fault-none"  # a healthy model, to spend what is left of the quota

# registry model -> (upstream model at the fake, timeout_s, max_retries)
MODELS: dict[str, tuple[str, float, int]] = {
    SPEND: ("fake-model", 10, 0),
    "fault-500": ("fault:500", 10, 0),
    "fault-500-retried": ("fault:500", 10, 2),
    "fault-hang": ("fault:hang", HANG_TIMEOUT_S, 0),
    "fault-cut-body": ("fault:cut-body", 10, 0),
    "fault-drop-2": ("fault:drop-after-2", 10, 0),
    "fault-eof-2": ("fault:eof-after-2", 10, 0),
    "fault-stall-1": ("fault:stall-after-1", HANG_TIMEOUT_S, 0),
    "fault-slow-100": ("fault:slow-100ms", 10, 0),
    "fault-slow-300": ("fault:slow-300ms", 10, 0),
}
EVENTS = {  # endpoint -> (events/aws template, path)
    "chat": ("apigw_http_chat_completions_ok", "/v1/chat/completions"),
    "completions": ("apigw_http_completions_ok", "/v1/completions"),
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
        name, path = EVENTS[kind]
        return api_event(name, key=self.key, path=path, body=request_body(kind, model, stream=stream))

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
        """A request that reserves exactly ``tokens``: prompt "x" (a bound of 1 byte + 1) plus max_tokens."""
        assert prompt_upper_bound(Prompt(text="x"), CONTEXT_LENGTH) == 2
        body = {"model": SPEND, "prompt": "x", "max_tokens": tokens - 2}
        event = api_event("apigw_http_completions_ok", key=self.key, body=body)
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


def request_body(kind: str, model: str, *, stream: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": MAX_TOKENS}
    if kind == "chat":
        body["messages"] = [{"role": "user", "content": PROMPT}]
    else:
        body["prompt"] = PROMPT
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


def reservation(kind: str) -> int:
    """What one request of ``request_body`` reserves: the prompt's bound plus max_tokens."""
    prompt = Prompt(messages=(ChatMessage("user", PROMPT),)) if kind == "chat" else Prompt(text=PROMPT)
    return prompt_upper_bound(prompt, CONTEXT_LENGTH) + MAX_TOKENS


def sse_events(text: str) -> list[Any]:
    """The ``data:`` payloads of a collected SSE body, decoded (``[DONE]`` kept as the string)."""
    lines = [line[len("data: ") :] for line in text.split("\n\n") if line.startswith("data: ")]
    return [line if line == "[DONE]" else json.loads(line) for line in lines]


def chunk_text(kind: str, event: dict[str, Any]) -> str:
    choice = event["choices"][0]
    return str(choice["delta"].get("content") or "") if kind == "chat" else str(choice["text"] or "")


def assert_error_shape(error: dict[str, Any], code: str) -> None:
    assert set(error) >= {"message", "type", "code", "param"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str), error
    assert error["message"], error


# -- calls that fail before any text: plain HTTP errors, recorded with 0 tokens, charged nothing ---------------

FAILED_CALLS = [
    # (endpoint, model, stream, status, code)
    ("chat", "fault-500", False, 502, "backend_error"),
    ("chat", "fault-hang", False, 504, "backend_timeout"),
    ("chat", "fault-cut-body", False, 502, "backend_bad_response"),
    ("chat", "fault-drop-2", False, 502, "backend_bad_response"),
    ("chat", "fault-eof-2", False, 502, "backend_bad_response"),
    ("chat", "fault-stall-1", False, 504, "backend_timeout"),
    ("completions", "fault-500", False, 502, "backend_error"),
    ("completions", "fault-hang", False, 504, "backend_timeout"),
    ("completions", "fault-cut-body", False, 502, "backend_bad_response"),
    ("chat", "fault-500", True, 502, "backend_error"),
    ("chat", "fault-hang", True, 504, "backend_timeout"),
    ("chat", "fault-cut-body", True, 502, "stream_interrupted"),
    ("completions", "fault-cut-body", True, 502, "stream_interrupted"),
]


@pytest.mark.parametrize(
    ("kind", "model", "stream", "status", "code"),
    FAILED_CALLS,
    ids=[f"{k}-{m}-{'stream' if s else 'whole'}" for k, m, s, _, _ in FAILED_CALLS],
)
def test_a_call_that_fails_before_any_text_is_an_error_recorded_and_charged_nothing(
    caller: Caller, kind: str, model: str, stream: bool, status: int, code: str
) -> None:
    started = time.monotonic()
    result = caller.call(kind, model, stream=stream)
    took = time.monotonic() - started
    assert_error_shape(result.error(status), code)
    assert result.headers["x-request-id"]
    if status == 504:
        assert HANG_TIMEOUT_S - 0.1 <= took < HANG_TIMEOUT_S + 2, took  # cut at the model's timeout
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

BROKEN_STREAMS = [
    # (endpoint, model, text chunks delivered, code of the error event, record status, record ended)
    ("chat", "fault-drop-2", 2, "stream_interrupted", 502, "truncated"),
    ("chat", "fault-eof-2", 2, "stream_truncated", 502, "truncated"),
    ("chat", "fault-stall-1", 1, "backend_timeout", 504, "timeout"),
    ("completions", "fault-drop-2", 2, "stream_interrupted", 502, "truncated"),
    ("completions", "fault-eof-2", 2, "stream_truncated", 502, "truncated"),
    ("completions", "fault-stall-1", 1, "backend_timeout", 504, "timeout"),
]


@pytest.mark.parametrize(
    ("kind", "model", "delivered", "code", "status", "ended"),
    BROKEN_STREAMS,
    ids=[f"{c[0]}-{c[1]}" for c in BROKEN_STREAMS],
)
def test_a_stream_that_fails_after_text_ends_in_an_error_event_and_is_charged_what_was_delivered(
    caller: Caller, kind: str, model: str, delivered: int, code: str, status: int, ended: str
) -> None:
    started = time.monotonic()
    result = caller.call(kind, model, stream=True)
    took = time.monotonic() - started
    assert result.status == 200, result.text
    assert result.headers["content-type"].startswith("text/event-stream")
    events = sse_events(result.text)
    *chunks, error_event, done = events
    assert done == "[DONE]"
    assert set(error_event) == {"error"}, error_event
    assert_error_shape(error_event["error"], code)
    assert len(chunks) == delivered, events
    assert "".join(chunk_text(kind, c) for c in chunks) == " ".join(WORDS[:delivered])
    for chunk in chunks:  # never a finish reason (the answer is not whole), never a usage chunk
        assert chunk["choices"][0]["finish_reason"] is None, chunk
        assert chunk.get("usage") is None, chunk
    if status == 504:
        assert HANG_TIMEOUT_S - 0.1 <= took < HANG_TIMEOUT_S + 2, took

    record = caller.record()
    assert (record.status, record.ended, record.model) == (status, ended, model)
    assert record.completion_tokens == delivered  # the gateway's count: one token per delta
    assert record.prompt_tokens > 0
    assert record.total_tokens <= reservation(kind)
    caller.assert_the_rest_of_the_quota_is_exact()


# -- streams that succeed slowly, and callers that leave -------------------------------------------------------


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_a_slow_stream_completes_with_its_finish_reason_and_usage(caller: Caller, kind: str) -> None:
    result = caller.call(kind, "fault-slow-100", stream=True)
    assert result.status == 200, result.text
    events = sse_events(result.text)
    assert events[-1] == "[DONE]"
    assert not any("error" in e for e in events[:-1]), events
    usage_event = events[-2]
    assert usage_event["choices"] == []
    finish = [e["choices"][0]["finish_reason"] for e in events[:-2] if e["choices"][0]["finish_reason"]]
    assert finish == ["stop"]
    assert "".join(chunk_text(kind, e) for e in events[:-2]) == PROMPT
    reported = usage_event["usage"]
    assert reported["completion_tokens"] == len(WORDS)
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


@pytest.mark.parametrize("kind", ["chat", "completions"])
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
