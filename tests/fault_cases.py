"""The fault cases both fault suites run (issue 10), and the checks of the answers they get.

tests/e2e/test_faults.py runs them through the whole local server, tests/aws/test_api_faults.py through the api
Lambda on a moto stack. The faults come from the fake OpenAI server (``fault:<mode>`` upstream models, see
bench/fake_openai_server.py), and the gateway core answers them the same way on both runtimes: the same
status, OpenAI error shape and SSE events, the same tokens charged. So the registry models, the requests, the
case tables and the checks of an answer are here, once, and a case added here runs on both. Each suite keeps
only what belongs to its runtime: how it registers the models and makes a call, and how it reads the charge
(usage API totals on the local server, the usage records and the quota counter on DynamoDB).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from core.inference import ChatMessage, Prompt
from core.token_counts import prompt_upper_bound

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
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}  # endpoint -> path
KINDS = list(PATHS)


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


def spend_body(tokens: int) -> dict[str, Any]:
    """A completions request that reserves exactly ``tokens``: prompt "x" (a bound of 1 byte + 1) plus max_tokens."""
    assert prompt_upper_bound(Prompt(text="x"), CONTEXT_LENGTH) == 2
    return {"model": SPEND, "prompt": "x", "max_tokens": tokens - 2}


def sse_events(text: str) -> list[Any]:
    """The ``data:`` payloads of a (whole or collected) SSE body, decoded (``[DONE]`` kept as the string)."""
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


def assert_cut_at_the_timeout(took: float) -> None:
    """A call to a model that hangs or stalls is cut at the model's timeout."""
    assert HANG_TIMEOUT_S - 0.1 <= took < HANG_TIMEOUT_S + 2, took


# -- calls that fail before any text: plain HTTP errors, charged nothing ---------------------------------------

FAILED_CALLS = [
    pytest.param(kind, model, stream, status, code, id=f"{kind}-{model}-{'stream' if stream else 'whole'}")
    for kind, model, stream, status, code in [
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
]


# -- streams that fail after text: the text, an error event, [DONE]; charged what was delivered ---------------

BROKEN_STREAMS = [
    pytest.param(kind, model, delivered, code, id=f"{kind}-{model}")
    for kind, model, delivered, code in [
        # (endpoint, model, text chunks delivered, code of the error event)
        ("chat", "fault-drop-2", 2, "stream_interrupted"),
        ("chat", "fault-eof-2", 2, "stream_truncated"),
        ("chat", "fault-stall-1", 1, "backend_timeout"),
        ("completions", "fault-drop-2", 2, "stream_interrupted"),
        ("completions", "fault-eof-2", 2, "stream_truncated"),
        ("completions", "fault-stall-1", 1, "backend_timeout"),
    ]
]


def assert_a_broken_stream(kind: str, content_type: str, body: str, *, delivered: int, code: str) -> None:
    """The answer of a stream that failed after text: the text chunks, an error event, ``[DONE]``."""
    assert content_type.startswith("text/event-stream")
    events = sse_events(body)
    *chunks, error_event, done = events
    assert done == "[DONE]"
    assert set(error_event) == {"error"}, error_event
    assert_error_shape(error_event["error"], code)
    assert len(chunks) == delivered, events
    assert "".join(chunk_text(kind, c) for c in chunks) == " ".join(WORDS[:delivered])
    for chunk in chunks:  # never a finish reason (the answer is not whole), never a usage chunk
        assert chunk["choices"][0]["finish_reason"] is None, chunk
        assert chunk.get("usage") is None, chunk


# -- streams that succeed slowly -------------------------------------------------------------------------------


def assert_a_whole_stream(kind: str, body: str) -> dict[str, Any]:
    """The answer of a stream that completed: all the text, the ``stop`` reason, the usage chunk, ``[DONE]``.

    Returns the usage the stream reported, for the suite to compare with what it charged.
    """
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    assert not any("error" in e for e in events[:-1]), events
    usage_event = events[-2]
    assert usage_event["choices"] == []
    finish = [e["choices"][0]["finish_reason"] for e in events[:-2] if e["choices"][0]["finish_reason"]]
    assert finish == ["stop"]
    assert "".join(chunk_text(kind, e) for e in events[:-2]) == PROMPT
    reported: dict[str, Any] = usage_event["usage"]
    assert reported["completion_tokens"] == len(WORDS)
    return reported
