"""Faults of an OpenAI-compatible server through both HTTP clients of OpenAICompatBackend.

The fault-injecting fake (``fault:<mode>`` model names, bench/fake_openai_server.py) covers failing, hanging,
slow, dropped, cut and stalled answers; raw socket servers cover what it cannot send (a TCP reset, a finish
reason without ``[DONE]``, ``[DONE]`` without a finish reason, an unterminated last line).
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.openai_compat.backend import OpenAICompatBackend, conservative_usage
from bench.fake_openai_server import start_in_thread
from core.errors import BackendError, BackendTimeout
from core.inference import ChatMessage, Generation, GenerationParams, Prompt, StreamEnd, StreamEvent, TextDelta

CHAT = Prompt(messages=(ChatMessage("user", "alpha beta gamma delta"),))
TEXT = Prompt(text="alpha beta gamma delta")
PARAMS = GenerationParams(max_tokens=10)
WORDS = [TextDelta("alpha"), TextDelta(" beta"), TextDelta(" gamma"), TextDelta(" delta")]


@dataclass
class Outcome:
    """What a call produced: the events (streams) or the answer, and the error it ended with."""

    events: list[StreamEvent]
    answer: Generation | None
    error: BackendError | None

    def failed(self, status: int, code: str | None, *, retryable: bool) -> BackendError:
        error = self.error
        assert error is not None, f"no error, events {self.events}, answer {self.answer}"
        assert (error.status, error.code, error.retryable) == (status, code, retryable), error.message
        assert not any(isinstance(event, StreamEnd) for event in self.events)
        return error


@pytest.fixture(scope="module")
def fake() -> Iterator[str]:
    base_url, stop = start_in_thread()
    yield base_url
    stop()


@pytest.fixture(params=["pool", "httpx"])
def client(request: pytest.FixtureRequest) -> str:
    """The built-in HTTP/1.1 pool (plain http) or httpx (https, proxies): both must fail the same way."""
    return str(request.param)


def route(base_url: str, model: str = "fake-model", timeout_s: float = 5.0) -> dict[str, Any]:
    return {"type": "openai", "base_url": base_url, "model": model, "timeout_s": timeout_s}


async def call(client: str, route: dict[str, Any], prompt: Prompt, *, stream: bool) -> Outcome:
    backend = OpenAICompatBackend(http_client="httpx" if client == "httpx" else "auto")
    outcome = Outcome([], None, None)
    try:
        if stream:
            async for event in backend.stream(route, prompt, PARAMS):
                outcome.events.append(event)
        else:
            outcome.answer = await backend.generate(route, prompt, PARAMS)
    except BackendError as exc:
        outcome.error = exc
    finally:
        assert (backend._owned is None) == (client == "pool"), "the call did not go through the client asked for"
        await backend.aclose()
    return outcome


def stream(client: str, base_url: str, model: str, prompt: Prompt = CHAT, timeout_s: float = 5.0) -> Outcome:
    return asyncio.run(call(client, route(base_url, model, timeout_s), prompt, stream=True))


def generate(client: str, base_url: str, model: str, prompt: Prompt = CHAT, timeout_s: float = 5.0) -> Outcome:
    return asyncio.run(call(client, route(base_url, model, timeout_s), prompt, stream=False))


# --- the fake's faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("prompt", [CHAT, TEXT], ids=["chat", "text"])
def test_a_whole_stream_ends_with_the_upstream_finish_reason_and_usage(client: str, fake: str, prompt: Prompt) -> None:
    outcome = stream(client, fake, "fake-model", prompt)
    assert outcome.error is None
    assert outcome.events == [*WORDS, StreamEnd("stop", 4, 4)]


@pytest.mark.parametrize(
    ("status", "expected", "code", "retryable"),
    [
        (500, 502, "backend_error", True),
        (503, 502, "backend_error", True),
        (429, 429, "backend_throttled", True),
        (400, 400, "backend_rejected", False),
    ],
)
@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "generate"])
def test_an_error_status_before_the_answer(
    client: str, fake: str, streamed: bool, status: int, expected: int, code: str, retryable: bool
) -> None:
    outcome = (stream if streamed else generate)(client, fake, f"fault:{status}")
    error = outcome.failed(expected, code, retryable=retryable)
    assert f"injected fault: {status}" in error.message
    assert outcome.events == []


@pytest.mark.parametrize("streamed", [True, False], ids=["stream", "generate"])
def test_a_server_that_never_answers_is_a_timeout(client: str, fake: str, streamed: bool) -> None:
    outcome = (stream if streamed else generate)(client, fake, "fault:hang", timeout_s=0.2)
    assert isinstance(outcome.error, BackendTimeout)
    outcome.failed(504, "backend_timeout", retryable=True)
    assert outcome.events == []


def test_a_dropped_stream_keeps_the_text_it_sent_and_is_interrupted(client: str, fake: str) -> None:
    outcome = stream(client, fake, "fault:drop-after-2")
    error = outcome.failed(502, "stream_interrupted", retryable=False)
    assert outcome.events == WORDS[:2]
    assert error.message == "the model's stream was interrupted before it finished: RemoteProtocolError"


@pytest.mark.parametrize("model", ["fault:drop-after-0", "fault:cut-body"])
def test_a_stream_dropped_before_any_text_may_be_retried(client: str, fake: str, model: str) -> None:
    outcome = stream(client, fake, model)
    outcome.failed(502, "stream_interrupted", retryable=True)
    assert outcome.events == []


@pytest.mark.parametrize("sent", [2, 4, 9])
def test_a_stream_that_ends_cleanly_without_a_finish_reason_is_truncated(client: str, fake: str, sent: int) -> None:
    # eof-after-9 sends every word: the text looks whole, but the server never said it finished.
    outcome = stream(client, fake, f"fault:eof-after-{sent}")
    error = outcome.failed(502, "stream_truncated", retryable=False)
    assert outcome.events == WORDS[:sent]
    assert error.message == "the model's stream ended before it finished: the body ended without a finish reason"


def test_an_empty_truncated_stream_may_be_retried(client: str, fake: str) -> None:
    outcome = stream(client, fake, "fault:eof-after-0", TEXT)
    outcome.failed(502, "stream_truncated", retryable=True)
    assert outcome.events == []


def test_a_stream_that_stalls_after_text_times_out_and_is_not_retryable(client: str, fake: str) -> None:
    outcome = stream(client, fake, "fault:stall-after-1", timeout_s=0.5)
    assert isinstance(outcome.error, BackendTimeout)
    outcome.failed(504, "backend_timeout", retryable=False)
    assert outcome.events == WORDS[:1]


def test_the_read_timeout_bounds_each_wait_not_the_whole_stream(client: str, fake: str) -> None:
    started = time.perf_counter()
    outcome = stream(client, fake, "fault:slow-60ms", timeout_s=1.0)
    assert outcome.error is None
    assert outcome.events == [*WORDS, StreamEnd("stop", 4, 4)]
    assert time.perf_counter() - started >= 7 * 0.06  # role, 4 words, finish, usage (and [DONE])
    late = stream(client, fake, "fault:slow-500ms", timeout_s=0.1)
    late.failed(504, "backend_timeout", retryable=True)


@pytest.mark.parametrize("model", ["fault:cut-body", "fault:drop-after-1"])
def test_a_body_cut_off_is_a_retryable_bad_response_never_partial_text(client: str, fake: str, model: str) -> None:
    outcome = generate(client, fake, model)
    error = outcome.failed(502, "backend_bad_response", retryable=True)
    assert error.message.startswith("the model backend sent a malformed response: the body was cut off")
    assert outcome.answer is None


def test_a_well_framed_body_holding_half_the_json_is_a_bad_response(client: str, fake: str) -> None:
    outcome = generate(client, fake, "fault:eof-after-1")
    error = outcome.failed(502, "backend_bad_response", retryable=False)
    assert error.message.endswith("the response is not JSON")


def test_a_body_that_stalls_halfway_is_a_timeout(client: str, fake: str) -> None:
    outcome = generate(client, fake, "fault:stall-after-1", timeout_s=0.5)
    assert isinstance(outcome.error, BackendTimeout)


def test_a_slow_answer_is_still_the_answer(client: str, fake: str) -> None:
    outcome = generate(client, fake, "fault:slow-20ms")
    assert outcome.answer == Generation("alpha beta gamma delta", "stop", 4, 4)


def test_an_unknown_fault_is_refused(client: str, fake: str) -> None:
    error = generate(client, fake, "fault:explode").failed(400, "backend_rejected", retryable=False)
    assert "unknown fault" in error.message


def test_faults_apply_to_embeddings(client: str, fake: str) -> None:
    async def embed() -> BackendError:
        backend = OpenAICompatBackend(http_client="httpx" if client == "httpx" else "auto")
        try:
            with pytest.raises(BackendError) as caught:
                await backend.embed(route(fake, "fault:cut-body"), ["a b"])
            return caught.value
        finally:
            await backend.aclose()

    error = asyncio.run(embed())
    assert (error.status, error.code, error.retryable) == (502, "backend_bad_response", True)


# --- raw servers: what the fake cannot send -------------------------------------------------------

SSE_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"
Script = Callable[[asyncio.StreamWriter], Awaitable[None]]


def sse(*events: dict[str, Any] | str) -> bytes:
    return b"".join(f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events)


def delta(text: str | None, finish: str | None = None) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"content": text} if text else {}, "finish_reason": finish}]}


USAGE = {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 1}}


def reset(writer: asyncio.StreamWriter) -> None:
    """A TCP reset (RST), not a clean close (FIN)."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


@asynccontextmanager
async def raw_server(script: Script) -> AsyncIterator[str]:
    """Reads one request, runs ``script`` on the connection, then closes it cleanly unless it was reset."""

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(int(line[15:]) for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))
        await reader.readexactly(length)
        await script(writer)
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    finally:
        server.close()


def against(client: str, script: Script, *, streamed: bool = True) -> Outcome:
    async def body() -> Outcome:
        async with raw_server(script) as base_url:
            return await call(client, route(base_url, "m"), CHAT, stream=streamed)

    return asyncio.run(body())


def sends(data: bytes, *, then_reset: bool = False) -> Script:
    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if then_reset:
            await asyncio.sleep(0.05)  # let the data arrive before the reset
            reset(writer)

    return script


def test_a_connection_reset_mid_stream_is_interrupted_after_the_text_so_far(client: str) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    frame = sse(delta("alpha"))
    outcome = against(client, sends(chunked + f"{len(frame):x}\r\n".encode() + frame + b"\r\n", then_reset=True))
    error = outcome.failed(502, "stream_interrupted", retryable=False)
    assert error.message.endswith("ReadError")
    assert outcome.events == [TextDelta("alpha")]


def test_a_connection_reset_mid_stream_delimited_by_the_close_is_not_a_clean_end(client: str) -> None:
    outcome = against(client, sends(SSE_HEAD + sse(delta("alpha")), then_reset=True))
    outcome.failed(502, "stream_interrupted", retryable=False)
    assert outcome.events == [TextDelta("alpha")]


def test_a_connection_reset_mid_body_is_a_cut_body(client: str) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n"
    outcome = against(client, sends(head + b'{"choices": [{"message"', then_reset=True), streamed=False)
    error = outcome.failed(502, "backend_bad_response", retryable=True)
    assert error.message.endswith("the body was cut off (ReadError)")


@pytest.mark.parametrize("then_reset", [False, True], ids=["closed", "reset"])
def test_after_the_finish_reason_a_missing_done_still_ends_the_stream(client: str, then_reset: bool) -> None:
    # Usage and [DONE] are missing: the answer is whole, its usage is counted conservatively.
    outcome = against(client, sends(SSE_HEAD + sse(delta("alpha"), delta(None, "length")), then_reset=then_reset))
    assert outcome.error is None
    assert outcome.events == [TextDelta("alpha"), StreamEnd("length", *conservative_usage(CHAT, "alpha"))]


def test_the_usage_chunk_after_the_finish_reason_is_used_without_done(client: str) -> None:
    outcome = against(client, sends(SSE_HEAD + sse(delta("alpha"), delta(None, "stop"), USAGE)))
    assert outcome.events == [TextDelta("alpha"), StreamEnd("stop", 4, 1)]


def test_done_without_a_finish_reason_is_truncated(client: str) -> None:
    outcome = against(client, sends(SSE_HEAD + sse(delta("alpha"), USAGE, "[DONE]")))
    error = outcome.failed(502, "stream_truncated", retryable=False)
    assert error.message == "the model's stream ended before it finished: data: [DONE] came without a finish reason"
    assert outcome.events == [TextDelta("alpha")]


def test_an_unterminated_last_line_is_dropped_and_the_stream_truncated(client: str) -> None:
    partial = sse(delta(" beta", "stop"))[:-2]  # the whole finish chunk, but its event never ended
    outcome = against(client, sends(SSE_HEAD + sse(delta("alpha")) + partial[:-5]))
    outcome.failed(502, "stream_truncated", retryable=False)
    assert outcome.events == [TextDelta("alpha")]
