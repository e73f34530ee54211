"""Tests of the OpenAI-compatible backend: wire mapping, a real local server, error mapping."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from adapters.openai_compat.backend import (
    CHAT_TOKENS_PER_MESSAGE,
    CHAT_TOKENS_PER_REPLY,
    DEFAULT_TIMEOUT_S,
    OpenAICompatBackend,
    OpenAIRoute,
    conservative_usage,
    error_for_status,
    finish_reason,
    from_chat_response,
    from_completion_response,
    from_embeddings_response,
    from_stream_chunk,
    parse_usage,
    sse_data,
    sse_lines,
    to_chat_payload,
    to_completion_payload,
    to_embeddings_payload,
    upstream_message,
)
from bench.fake_openai_server import embedding, start_in_thread
from core.errors import BackendError, BackendTimeout
from core.inference import ChatMessage, GenerationParams, Prompt, StreamEnd, StreamEvent, TextDelta
from core.ports import InferenceBackend
from core.schemas.admin import ModelIn

TEXT = Prompt(text="one two three four")
CHAT = Prompt(messages=(ChatMessage("system", "be brief"), ChatMessage("user", "alpha beta gamma")))
PARAMS = GenerationParams(max_tokens=3, temperature=0.0)
ROUTE = {"type": "openai", "base_url": "http://upstream.test/v1", "model": "m"}


def run(coro: Any) -> Any:
    return asyncio.run(coro)


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in events]


def split(events: list[StreamEvent]) -> tuple[str, StreamEnd]:
    deltas = [e for e in events[:-1] if isinstance(e, TextDelta)]
    assert len(deltas) == len(events) - 1
    assert all(d.text for d in deltas)
    end = events[-1]
    assert isinstance(end, StreamEnd)
    return "".join(d.text for d in deltas), end


# --- wire mapping ------------------------------------------------------------------------------


def test_chat_payload_maps_messages_and_params() -> None:
    params = GenerationParams(max_tokens=5, temperature=0.5, top_p=0.9, stop=("\n",), seed=7)
    assert to_chat_payload("m", CHAT, params) == {
        "model": "m",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "alpha beta gamma"},
        ],
        "max_tokens": 5,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": ["\n"],
        "seed": 7,
    }


def test_completion_payload_omits_unset_stop_and_seed_and_asks_for_stream_usage() -> None:
    payload = to_completion_payload("m", TEXT, PARAMS, stream=True)
    assert payload == {
        "model": "m",
        "prompt": "one two three four",
        "max_tokens": 3,
        "temperature": 0.0,
        "top_p": 1.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_responses_map_text_finish_reason_and_usage() -> None:
    usage = {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    chat = {"choices": [{"message": {"role": "assistant", "content": "hi"}, "finish_reason": "length"}]}
    reply = from_chat_response({**chat, "usage": usage})
    assert (reply.text, reply.finish_reason, reply.usage) == ("hi", "length", (4, 2))
    text = from_completion_response({"choices": [{"text": "yo", "finish_reason": "eos"}]})
    assert (text.text, text.finish_reason, text.usage) == ("yo", "stop", None)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("stop", "stop"),
        ("length", "length"),
        ("content_filter", "content_filter"),
        ("tool_calls", "stop"),
        (None, "stop"),
    ],
)
def test_finish_reason_keeps_three_values(value: object, expected: str) -> None:
    assert finish_reason(value) == expected


def test_parse_usage_needs_both_counts() -> None:
    assert parse_usage({"usage": {"prompt_tokens": 1, "completion_tokens": 0}}) == (1, 0)
    assert parse_usage({"usage": {"prompt_tokens": 1}}) is None
    assert parse_usage({"usage": {"prompt_tokens": True, "completion_tokens": 1}}) is None
    assert parse_usage({"usage": None}) is None


def test_stream_chunks_chat_text_usage_and_error() -> None:
    chat = from_stream_chunk({"choices": [{"delta": {"content": "a"}, "finish_reason": None}], "usage": None})
    assert (chat.text, chat.finish_reason, chat.usage) == ("a", None, None)
    text = from_stream_chunk({"choices": [{"text": "b", "finish_reason": "length"}]})
    assert (text.text, text.finish_reason) == ("b", "length")
    usage = from_stream_chunk({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    assert (usage.text, usage.usage) == ("", (3, 2))
    with pytest.raises(BackendError, match="out of memory"):
        from_stream_chunk({"error": {"message": "out of memory"}})


def test_sse_data() -> None:
    assert sse_data('data: {"a":1}') == '{"a":1}'
    assert sse_data("data:[DONE]") == "[DONE]"
    assert sse_data("") is None
    assert sse_data(": keep-alive") is None
    assert sse_data("event: message") is None


@pytest.mark.parametrize(
    ("chunks", "lines"),
    [
        ([b"data: a\n\nda", b"ta: b\r\n", b"\r\n"], ["data: a", "", "data: b", ""]),
        ([b"data: a\n", b'data: {"cut'], ["data: a"]),  # the body ended in the middle of a line
        ([b"data: \xc3", b"\xa9\n"], ["data: \u00e9"]),  # a character split across chunks
    ],
)
def test_sse_lines_yields_complete_lines_only(chunks: list[bytes], lines: list[str]) -> None:
    async def pieces() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def body() -> list[str]:
        return [line async for line in sse_lines(pieces())]

    assert run(body()) == lines


def test_embeddings_mapping_orders_by_index() -> None:
    assert to_embeddings_payload("e", ["x"]) == {"model": "e", "input": ["x"], "encoding_format": "float"}
    body = {"data": [{"index": 1, "embedding": [0, 1]}, {"index": 0, "embedding": [1, 0]}]}
    assert from_embeddings_response(body, 2) == ([[1.0, 0.0], [0.0, 1.0]], None)
    assert from_embeddings_response({**body, "usage": {"prompt_tokens": 5}}, 2)[1] == 5
    with pytest.raises(BackendError, match="expected 3"):
        from_embeddings_response(body, 3)


def test_conservative_usage_counts_bytes_and_chat_markup() -> None:
    assert conservative_usage(Prompt(text="héllo"), "ça") == (6, 3)
    chat_bytes = len("systembe briefuseralpha beta gamma")
    assert conservative_usage(CHAT, "") == (
        chat_bytes + 2 * CHAT_TOKENS_PER_MESSAGE + CHAT_TOKENS_PER_REPLY,
        0,
    )


def test_route_parsing() -> None:
    route = OpenAIRoute.parse({"base_url": "http://h:1/v1/", "model": "m", "timeout_s": 5, "api_key_env": "K"})
    assert route == OpenAIRoute("http://h:1/v1", "m", "K", 5.0)
    with pytest.raises(BackendError) as caught:
        OpenAIRoute.parse({"base_url": "http://h/v1"})
    assert (caught.value.code, caught.value.retryable) == ("backend_misconfigured", False)


def test_without_a_route_timeout_the_models_timeout_fires_first() -> None:
    # core/model_router.py bounds a call by the model's timeout_s; the adapter's read timeout must not cut earlier.
    assert OpenAIRoute.parse({"base_url": "http://h/v1", "model": "m"}).timeout_s == DEFAULT_TIMEOUT_S
    longest_model_timeout = ModelIn.model_json_schema()["properties"]["timeout_s"]["maximum"]
    assert longest_model_timeout <= DEFAULT_TIMEOUT_S


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"error": {"message": "too long", "type": "invalid_request_error"}}', "too long"),
        (b'{"error": "model not loaded"}', "model not loaded"),
        (b'{"object": "error", "message": "bad seed"}', "bad seed"),
        (b'{"detail": "nope"}', "nope"),
        (b"<html>gateway</html>", "<html>gateway</html>"),
        (b"", "no message"),
    ],
)
def test_upstream_message_shapes(body: bytes, message: str) -> None:
    assert upstream_message(body) == message


def test_error_for_status_auth_failures_are_the_gateways_problem() -> None:
    error = error_for_status(401, b'{"error": {"message": "bad key"}}')
    assert (error.status, error.retryable, error.code) == (502, False, "backend_misconfigured")


# --- against the fake OpenAI server ------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    base_url, stop = start_in_thread()
    yield base_url
    stop()


@pytest.fixture(scope="module")
def silent_server() -> Iterator[str]:
    base_url, stop = start_in_thread(report_usage=False)
    yield base_url
    stop()


def route_to(base_url: str) -> dict[str, Any]:
    return {"type": "openai", "base_url": base_url, "model": "fake-model", "timeout_s": 5}


def with_backend(call: Callable[[OpenAICompatBackend], Any], backend: OpenAICompatBackend | None = None) -> Any:
    async def body() -> Any:
        used = backend or OpenAICompatBackend()
        try:
            return await call(used)
        finally:
            await used.aclose()

    return run(body())


def test_backend_is_an_inference_backend() -> None:
    assert isinstance(OpenAICompatBackend(), InferenceBackend)


def test_generate_text(server: str) -> None:
    result = with_backend(lambda b: b.generate(route_to(server), TEXT, PARAMS))
    assert (result.text, result.finish_reason) == ("one two three", "length")
    assert (result.prompt_tokens, result.completion_tokens) == (4, 3)


def test_generate_chat_reuses_one_client(server: str) -> None:
    async def twice(backend: OpenAICompatBackend) -> Any:
        first = await backend.generate(route_to(server), CHAT, GenerationParams(max_tokens=10))
        client = backend._http()
        second = await backend.generate(route_to(server), CHAT, GenerationParams(max_tokens=10))
        assert backend._http() is client
        assert second == first
        return first

    result = with_backend(twice)
    assert (result.text, result.finish_reason) == ("alpha beta gamma", "stop")
    assert (result.prompt_tokens, result.completion_tokens) == (5, 3)


@pytest.mark.parametrize("prompt", [TEXT, CHAT], ids=["text", "chat"])
def test_stream_with_usage(server: str, prompt: Prompt) -> None:
    events = with_backend(lambda b: collect(b.stream(route_to(server), prompt, PARAMS)))
    text, end = split(events)
    assert text == ("one two three" if prompt is TEXT else "alpha beta gamma")
    assert len(events) == 4
    assert (end.finish_reason, end.completion_tokens) == ("length" if prompt is TEXT else "stop", 3)
    assert end.prompt_tokens == (4 if prompt is TEXT else 5)


def test_stream_without_usage_counts_conservatively(silent_server: str) -> None:
    params = GenerationParams(max_tokens=100)
    events = with_backend(lambda b: collect(b.stream(route_to(silent_server), CHAT, params)))
    text, end = split(events)
    assert text == "alpha beta gamma"
    assert (end.prompt_tokens, end.completion_tokens) == conservative_usage(CHAT, text)
    assert end.completion_tokens == len(text.encode()) > 3


def test_fallback_never_counts_past_max_tokens(silent_server: str) -> None:
    result = with_backend(lambda b: b.generate(route_to(silent_server), TEXT, PARAMS))
    assert result.text == "one two three"
    assert (result.prompt_tokens, result.completion_tokens) == (len(TEXT.text or ""), PARAMS.max_tokens)


def test_custom_usage_fallback(silent_server: str) -> None:
    backend = OpenAICompatBackend(usage_fallback=lambda prompt, text: (11, len(text.split())))
    events = with_backend(lambda b: collect(b.stream(route_to(silent_server), TEXT, PARAMS)), backend)
    _, end = split(events)
    assert (end.prompt_tokens, end.completion_tokens) == (11, 3)


def test_embeddings(server: str, silent_server: str) -> None:
    inputs = ["first text", "second one here"]
    result = with_backend(lambda b: b.embed(route_to(server), inputs))
    assert result.vectors == [embedding(t) for t in inputs]
    assert (result.prompt_tokens, result.dimensions) == (5, 8)
    silent = with_backend(lambda b: b.embed(route_to(silent_server), inputs))
    assert silent.prompt_tokens == sum(len(t.encode()) for t in inputs)


def test_connection_refused_is_retryable_502() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    route = route_to(f"http://127.0.0.1:{port}/v1")
    with pytest.raises(BackendError) as caught:
        with_backend(lambda b: b.generate(route, TEXT, PARAMS))
    assert (caught.value.status, caught.value.retryable) == (502, True)


# --- error mapping through httpx.MockTransport -------------------------------------------------


def mocked(handler: Callable[[httpx.Request], httpx.Response], **kw: Any) -> OpenAICompatBackend:
    return OpenAICompatBackend(client=httpx.AsyncClient(transport=httpx.MockTransport(handler)), **kw)


def failing(status: int, body: object, headers: dict[str, str] | None = None) -> OpenAICompatBackend:
    return mocked(lambda request: httpx.Response(status, json=body, headers=headers))


def generate_error(backend: OpenAICompatBackend, prompt: Prompt = TEXT) -> BackendError:
    with pytest.raises(BackendError) as caught:
        run(backend.generate(ROUTE, prompt, PARAMS))
    return caught.value


def stream_error(backend: OpenAICompatBackend) -> BackendError:
    with pytest.raises(BackendError) as caught:
        run(collect(backend.stream(ROUTE, CHAT, PARAMS)))
    return caught.value


@pytest.mark.parametrize("call", [generate_error, stream_error], ids=["generate", "stream"])
def test_5xx_is_retryable_502(call: Callable[[OpenAICompatBackend], BackendError]) -> None:
    error = call(failing(500, {"error": {"message": "CUDA out of memory"}}))
    assert (error.status, error.retryable, error.code) == (502, True, "backend_error")


def test_429_is_throttled_and_keeps_retry_after() -> None:
    error = generate_error(failing(429, {"error": {"message": "slow down"}}, {"Retry-After": "3"}))
    assert (error.status, error.retryable, error.code) == (429, True, "backend_throttled")
    assert error.headers == {"Retry-After": "3"}


@pytest.mark.parametrize("call", [generate_error, stream_error], ids=["generate", "stream"])
def test_400_carries_the_upstream_message(call: Callable[[OpenAICompatBackend], BackendError]) -> None:
    upstream = "This model's maximum context length is 2048 tokens. However, you requested 4096 tokens."
    error = call(failing(400, {"error": {"message": upstream, "type": "BadRequestError"}}))
    assert (error.status, error.retryable, error.type, error.code) == (
        400,
        False,
        "invalid_request_error",
        "backend_rejected",
    )
    assert error.message == upstream


@pytest.mark.parametrize("call", [generate_error, stream_error], ids=["generate", "stream"])
def test_timeout_is_backend_timeout(call: Callable[[OpenAICompatBackend], BackendError]) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    error = call(mocked(slow))
    assert isinstance(error, BackendTimeout)
    assert (error.status, error.retryable) == (504, True)


def test_connect_error_is_retryable_502() -> None:
    def refused(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    error = generate_error(mocked(refused))
    assert (error.status, error.retryable) == (502, True)


def test_malformed_response_is_a_backend_error() -> None:
    backend = mocked(lambda request: httpx.Response(200, content=b"not json"))
    assert generate_error(backend).code == "backend_bad_response"
    assert generate_error(failing(200, {"choices": []}), CHAT).code == "backend_bad_response"


def test_error_mid_stream_is_raised_after_the_text_so_far() -> None:
    chunk = {"choices": [{"delta": {"content": "partial"}, "finish_reason": None}]}
    sse = f"data: {json.dumps(chunk)}\n\ndata: {json.dumps({'error': {'message': 'engine died'}})}\n\n"
    backend = mocked(lambda request: httpx.Response(200, content=sse.encode()))
    seen: list[StreamEvent] = []

    async def consume() -> None:
        async for event in backend.stream(ROUTE, CHAT, PARAMS):
            seen.append(event)

    with pytest.raises(BackendError, match="engine died"):
        run(consume())
    assert seen == [TextDelta("partial")]


def sse_body(*events: dict[str, Any] | str) -> bytes:
    return "".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n" for e in events).encode()


def streamed(body: bytes) -> tuple[list[StreamEvent], BackendError | None]:
    """The events a stream of ``body`` yields, and the error it ends with."""
    backend = mocked(lambda request: httpx.Response(200, content=body))
    seen: list[StreamEvent] = []

    async def consume() -> None:
        async for event in backend.stream(ROUTE, CHAT, PARAMS):
            seen.append(event)

    try:
        run(consume())
    except BackendError as exc:
        return seen, exc
    return seen, None


PIECE = {"choices": [{"delta": {"content": "partial"}, "finish_reason": None}]}
FINISH = {"choices": [{"delta": {}, "finish_reason": "length"}]}
USAGE = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}


def test_a_stream_ends_with_the_upstream_finish_reason_and_usage() -> None:
    events, error = streamed(sse_body(PIECE, FINISH, USAGE, "[DONE]"))
    assert error is None
    assert events == [TextDelta("partial"), StreamEnd("length", 4, 3)]


@pytest.mark.parametrize(
    ("body", "ending"),
    [
        (sse_body(PIECE), "the body ended"),
        (sse_body(PIECE, USAGE), "the body ended"),
        (sse_body(PIECE, USAGE, "[DONE]"), "data: [DONE] came"),
    ],
    ids=["eof", "usage-then-eof", "done"],
)
def test_a_stream_without_a_finish_reason_is_truncated_never_stop(body: bytes, ending: str) -> None:
    events, error = streamed(body)
    assert events == [TextDelta("partial")]
    assert error is not None
    assert (error.status, error.code, error.retryable) == (502, "stream_truncated", False)
    assert error.message == f"the model's stream ended before it finished: {ending} without a finish reason"


def test_an_empty_stream_is_truncated_and_may_be_retried() -> None:
    events, error = streamed(b"")
    assert events == []
    assert error is not None
    assert (error.code, error.retryable) == ("stream_truncated", True)


def test_api_key_from_the_route_env_or_the_constructor(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[httpx.Request] = []

    def ok(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"text": "x", "finish_reason": "stop"}]})

    monkeypatch.setenv("UPSTREAM_KEY", "from-env")
    run(mocked(ok, api_key="default").generate({**ROUTE, "api_key_env": "UPSTREAM_KEY"}, TEXT, PARAMS))
    run(mocked(ok, api_key="default").generate(ROUTE, TEXT, PARAMS))
    run(mocked(ok).generate(ROUTE, TEXT, PARAMS))
    assert [r.headers.get("authorization") for r in seen] == ["Bearer from-env", "Bearer default", None]
    assert json.loads(seen[0].content)["prompt"] == TEXT.text
    assert str(seen[0].url) == "http://upstream.test/v1/completions"
    monkeypatch.delenv("UPSTREAM_KEY")
    with pytest.raises(BackendError, match="UPSTREAM_KEY"):
        run(mocked(ok).generate({**ROUTE, "api_key_env": "UPSTREAM_KEY"}, TEXT, PARAMS))
