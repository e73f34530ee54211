"""Fault injection through the whole local server (issue 10): what a caller gets and what a tenant is charged.

The session's fake OpenAI server fails on purpose when the upstream model is ``fault:<mode>`` (see
bench/fake_openai_server.py); each fault gets a registry model of its own. Every test runs one tenant with a
token quota and checks three things: the answer (status, OpenAI error shape, SSE events), the charge as the
usage API reports it, and that the quota counter holds exactly that charge: the rest of the quota can be
reserved by one request, and one token more is refused with 429 ``insufficient_quota``.

- A non-streamed call that fails (or a stream that fails before any text) is a plain HTTP error and is
  charged nothing.
- A stream that fails after text: the text chunks, then ``data: {"error": ...}`` (never a ``finish_reason``),
  then ``data: [DONE]``; charged one completion token per delivered chunk and a prompt of more than 0 tokens,
  never above what the request reserved.
- A slow stream completes; a caller that leaves mid-stream is charged what was delivered.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from core.inference import ChatMessage, Prompt
from core.tokens import prompt_upper_bound
from tests.e2e._support import Server, error_code

pytestmark = pytest.mark.e2e

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
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@pytest.fixture(scope="module")
def models(server: Server) -> Server:
    assert server.fake_base_url is not None
    for model_id, (upstream, timeout_s, retries) in MODELS.items():
        body = {
            "id": model_id,
            "kind": "generation",
            "backend": {"type": "openai", "base_url": server.fake_base_url, "model": upstream},
            "context_length": CONTEXT_LENGTH,
            "max_output_tokens": MAX_OUTPUT_TOKENS,
            "timeout_s": timeout_s,
            "max_retries": retries,
        }
        response = server.admin.post("/admin/models", json=body)
        assert response.status_code in (201, 409), response.text
    return server


@dataclass
class Caller:
    """One tenant with a quota of ``QUOTA`` tokens and a client with its key."""

    server: Server
    tenant_id: str
    http: httpx.Client

    def call(self, kind: str, model: str, *, stream: bool = False) -> httpx.Response:
        return self.http.post(PATHS[kind], json=request_body(kind, model, stream=stream))

    def usage(self) -> dict[str, Any]:
        """The tenant's usage totals, as the tenant and the admin see them (they must agree)."""
        own = self.http.get("/v1/usage", params={"group_by": "none"})
        assert own.status_code == 200, own.text
        admin = self.server.admin.get("/admin/usage", params={"tenant": self.tenant_id, "group_by": "none"})
        assert admin.status_code == 200, admin.text
        totals: dict[str, Any] = own.json()["totals"]
        assert admin.json()["totals"] == totals
        return totals

    def spend(self, tokens: int) -> httpx.Response:
        """A request that reserves exactly ``tokens``: prompt "x" (a bound of 1 byte + 1) plus max_tokens."""
        assert prompt_upper_bound(Prompt(text="x"), CONTEXT_LENGTH) == 2
        return self.http.post("/v1/completions", json={"model": SPEND, "prompt": "x", "max_tokens": tokens - 2})

    def assert_the_rest_of_the_quota_is_exact(self) -> None:
        """The quota counter holds exactly what the usage records charged: the rest can be reserved, not more."""
        left = QUOTA - self.usage()["total_tokens"]
        assert left > 2
        over = self.spend(left + 1)
        assert over.status_code == 429, over.text
        assert error_code(over) == "insufficient_quota"
        exact = self.spend(left)
        assert exact.status_code == 200, exact.text


@pytest.fixture
def caller(models: Server, request: pytest.FixtureRequest) -> Iterator[Caller]:
    tenant = models.create_tenant(request.node.name[:100], limits={"token_quota": QUOTA})
    with models.client(tenant.key) as http:
        yield Caller(models, tenant.id, http)


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
    """The ``data:`` payloads of an SSE body, decoded (``[DONE]`` kept as the string)."""
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


# -- calls that fail before any text: plain HTTP errors, charged nothing ---------------------------------------

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
def test_a_call_that_fails_before_any_text_is_an_error_and_charged_nothing(
    caller: Caller, kind: str, model: str, stream: bool, status: int, code: str
) -> None:
    started = time.monotonic()
    response = caller.call(kind, model, stream=stream)
    took = time.monotonic() - started
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert error_code(response) == code
    assert_error_shape(response.json()["error"], code)
    if status == 504:
        assert HANG_TIMEOUT_S - 0.1 <= took < HANG_TIMEOUT_S + 2, took  # cut at the model's timeout
    usage = caller.usage()
    assert usage["requests"] == 1, usage  # the failure is recorded...
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (0, 0)  # ...with no tokens
    caller.assert_the_rest_of_the_quota_is_exact()


def backend_errors(server: Server, model: str) -> float:
    """``backend_errors_total`` of one model on the (single-worker) server."""
    metrics = httpx.get(server.base_url + "/metrics").text
    pattern = re.compile(rf'^textnlp_backend_errors_total\{{model="{re.escape(model)}",status="502"\}} (\S+)$', re.M)
    return sum(float(m) for m in pattern.findall(metrics))


def test_a_500_is_retried_then_answered_502_and_charged_nothing(caller: Caller) -> None:
    before = backend_errors(caller.server, "fault-500-retried")
    response = caller.call("chat", "fault-500-retried")
    assert response.status_code == 502, response.text
    assert error_code(response) == "backend_error"
    assert backend_errors(caller.server, "fault-500-retried") - before == 3  # the call and its 2 retries
    usage = caller.usage()
    assert (usage["requests"], usage["total_tokens"]) == (1, 0)
    caller.assert_the_rest_of_the_quota_is_exact()


# -- streams that fail after text: the text, an error event, [DONE]; charged what was delivered ---------------

BROKEN_STREAMS = [
    # (endpoint, model, text chunks delivered, code of the error event)
    ("chat", "fault-drop-2", 2, "stream_interrupted"),
    ("chat", "fault-eof-2", 2, "stream_truncated"),
    ("chat", "fault-stall-1", 1, "backend_timeout"),
    ("completions", "fault-drop-2", 2, "stream_interrupted"),
    ("completions", "fault-eof-2", 2, "stream_truncated"),
    ("completions", "fault-stall-1", 1, "backend_timeout"),
]


@pytest.mark.parametrize(
    ("kind", "model", "delivered", "code"), BROKEN_STREAMS, ids=[f"{k}-{m}" for k, m, _, _ in BROKEN_STREAMS]
)
def test_a_stream_that_fails_after_text_ends_in_an_error_event_and_is_charged_what_was_delivered(
    caller: Caller, kind: str, model: str, delivered: int, code: str
) -> None:
    started = time.monotonic()
    response = caller.call(kind, model, stream=True)
    took = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response.text)
    *chunks, error_event, done = events
    assert done == "[DONE]"
    assert set(error_event) == {"error"}, error_event
    assert_error_shape(error_event["error"], code)
    assert len(chunks) == delivered, events
    assert "".join(chunk_text(kind, c) for c in chunks) == " ".join(WORDS[:delivered])
    for chunk in chunks:  # never a finish reason (the answer is not whole), never a usage chunk
        assert chunk["choices"][0]["finish_reason"] is None, chunk
        assert chunk.get("usage") is None, chunk
    if code == "backend_timeout":
        assert HANG_TIMEOUT_S - 0.1 <= took < HANG_TIMEOUT_S + 2, took

    usage = caller.usage()
    assert usage["requests"] == 1, usage
    assert usage["completion_tokens"] == delivered  # the gateway's count: one token per delta
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] <= reservation(kind)
    caller.assert_the_rest_of_the_quota_is_exact()


# -- streams that succeed slowly, and callers that leave -------------------------------------------------------


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_a_slow_stream_completes_with_its_finish_reason_and_usage(caller: Caller, kind: str) -> None:
    response = caller.call(kind, "fault-slow-100", stream=True)
    assert response.status_code == 200, response.text
    events = sse_events(response.text)
    assert events[-1] == "[DONE]"
    assert not any("error" in e for e in events[:-1]), events
    usage_event = events[-2]
    assert usage_event["choices"] == []
    finish = [e["choices"][0]["finish_reason"] for e in events[:-2] if e["choices"][0]["finish_reason"]]
    assert finish == ["stop"]
    assert "".join(chunk_text(kind, e) for e in events[:-2]) == PROMPT
    reported = usage_event["usage"]
    assert reported["completion_tokens"] == len(WORDS)
    usage = caller.usage()
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (
        1,
        reported["prompt_tokens"],
        reported["completion_tokens"],
    )
    caller.assert_the_rest_of_the_quota_is_exact()


def wait_for_a_record(caller: Caller, timeout_s: float = 10) -> dict[str, Any]:
    """The usage totals once the request's record is written (the gateway settles after the caller left)."""
    deadline = time.monotonic() + timeout_s
    while caller.http.get("/v1/usage", params={"group_by": "none"}).json()["totals"]["requests"] == 0:
        assert time.monotonic() < deadline, "no usage record"
        time.sleep(0.05)
    return caller.usage()


@pytest.mark.parametrize("kind", ["chat", "completions"])
def test_a_caller_that_leaves_mid_stream_is_charged_what_was_delivered(caller: Caller, kind: str) -> None:
    """A chunk every 300 ms: the caller reads two, then closes the connection; the gateway stops at once."""
    texts: list[str] = []
    with caller.http.stream("POST", PATHS[kind], json=request_body(kind, "fault-slow-300", stream=True)) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                text = chunk_text(kind, json.loads(line[len("data: ") :]))
                if text:
                    texts.append(text)
            if len(texts) == 2:
                break
    assert "".join(texts) == " ".join(WORDS[:2])
    usage = wait_for_a_record(caller)
    assert usage["requests"] == 1, usage
    # What the gateway sent before it saw the connection close: the two read, or one more on a slow machine
    # (a chunk every 300 ms); never nothing, never the whole answer.
    assert 2 <= usage["completion_tokens"] <= 3
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] <= reservation(kind)
    caller.assert_the_rest_of_the_quota_is_exact()
