"""InferenceBackend contract: generate, stream, embed, usage, and every failure as the same BackendError.

What the gateway relies on (``core.model_router``, ``core.generation_service``): answers carry a finish reason
and token counts within ``max_tokens``; a stream is text deltas then exactly one ``StreamEnd``, the same answer
as ``generate`` for a deterministic request; a caller may close a stream early; a failure is a ``BackendError``
(5xx and throttling retryable, a bad request not); a call that hangs gives way to ``asyncio.timeout`` (the
router maps the ``TimeoutError`` to 504 ``backend_timeout``) or is a 504 itself; a stream cut before its end is
502 ``stream_truncated`` / ``stream_interrupted`` after the deltas that came, never a made-up ``StreamEnd``.

Every adapter is one entry of ``ADAPTERS``: how to build it, the calls that drive it into each case, and the
cases it cannot be driven into (skipped, with the reason).
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from core.errors import BackendError
from core.inference import ChatMessage, GenerationParams, Prompt, StreamEnd, StreamEvent, TextDelta
from core.ports import InferenceBackend

T = TypeVar("T")

WORDS = Prompt(text="one two three four five six seven eight")
CHAT = Prompt(messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "alpha beta gamma delta")))
GREEDY = GenerationParams(max_tokens=16, temperature=0.0)

# The cases an adapter may be unable to produce; each maps to the Call that produces it.
FAILURES = ("server_error", "bad_request", "throttled", "hang", "stream_eof", "stream_drop", "stream_stall")


@dataclass(frozen=True)
class Call:
    route: dict[str, Any]
    prompt: Prompt = WORDS
    params: GenerationParams = GREEDY


@dataclass
class Subject:
    """One adapter under test.

    ``calls`` holds ``"ok"`` (a plain generation), ``"embed"`` (an embedding route) and a Call per failure it
    can produce; ``skips`` the reason for each case it cannot. ``xfails`` names cases it is known to get wrong
    (strict: fixing the adapter turns them into failures to remove). ``hang_timeout_s`` is the
    ``asyncio.timeout`` the hang and stall cases run under.
    """

    name: str
    backend: InferenceBackend
    calls: dict[str, Call]
    skips: dict[str, str] = field(default_factory=dict)
    xfails: dict[str, str] = field(default_factory=dict)
    deterministic: bool = True
    hang_timeout_s: float = 1.0

    def call(self, case: str) -> Call:
        if case in self.skips:
            pytest.skip(f"{self.name}: {self.skips[case]}")
        return self.calls[case]

    def run(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` on a fresh event loop (as each request may), then close what the backend opened on it."""

        async def main() -> T:
            try:
                return await make()
            finally:
                closer = getattr(self.backend, "aclose", None)
                if closer is not None:
                    await closer()

        return asyncio.run(main())


# -- the adapters -------------------------------------------------------------------------------------------


@contextmanager
def _openai(http_client: str) -> Iterator[Subject]:
    from adapters.openai_compat.backend import OpenAICompatBackend
    from bench.fake_openai_server import start_in_thread

    base_url, stop = start_in_thread()

    def route(model: str = "fake-model") -> dict[str, Any]:
        return {"type": "openai", "base_url": base_url, "model": model}

    calls = {
        "ok": Call(route()),
        "embed": Call(route()),
        "server_error": Call(route("fault:500")),
        "bad_request": Call(route("fault:400")),
        "throttled": Call(route("fault:429")),
        "hang": Call(route("fault:hang")),
        "stream_eof": Call(route("fault:eof-after-2")),
        "stream_drop": Call(route("fault:drop-after-2")),
        "stream_stall": Call(route("fault:stall-after-2")),
    }
    try:
        yield Subject(f"openai[{http_client}]", OpenAICompatBackend(http_client=http_client), calls, hang_timeout_s=0.5)
    finally:
        stop()


@contextmanager
def _sagemaker() -> Iterator[Subject]:
    from adapters.aws.sagemaker import SageMakerBackend
    from tests.contract._backends import ECHO, TEI, ScriptedContainer, boto_client

    container = ScriptedContainer().start()
    client = boto_client("sagemaker-runtime", container.url, read_timeout=0.75, connect_timeout=1)

    def route(endpoint: str, container_kind: str = "tgi") -> dict[str, Any]:
        return {"type": "sagemaker", "endpoint_name": endpoint, "container": container_kind}

    ok = {**route(ECHO), "decoder_input_details": True}
    calls = {
        "ok": Call(ok),
        "embed": Call(route(TEI, "tei")),
        "server_error": Call(route("fault-500")),
        "bad_request": Call(route("fault-400")),
        "throttled": Call(route("fault-429")),
        "hang": Call(route("fault-hang")),
        "stream_eof": Call(route("fault-eof-after-2")),
        "stream_drop": Call(route("fault-drop-after-2")),
        "stream_stall": Call(route("fault-stall-after-2")),
    }
    skips = {"unsupported": "which operations a route serves depends on its container (tgi, lmi, tei)"}
    backend = SageMakerBackend(client)
    try:
        yield Subject("sagemaker", backend, calls, skips=skips, hang_timeout_s=2.0)
    finally:
        container.stop()


@contextmanager
def _vertex(api: str, http_client: str = "auto") -> Iterator[Subject]:
    from adapters.gcp.vertex import VertexBackend
    from tests.gcp.vertex_server import StaticCredentials, VertexServer

    server = VertexServer().start()
    name = f"vertex-{api}"

    def route(endpoint_id: str) -> dict[str, Any]:
        return {"type": name, "project": "p", "location": "us-central1", "endpoint_id": endpoint_id, "api": api}

    calls = {case: Call(route(f"fault-{mode}")) for case, mode in _VERTEX_FAULTS.items()}
    calls["ok"] = Call(route("echo"))
    skips = {"embed": "a text generation route: embed is the unsupported case"}
    if api != "openai-chat":
        cannot = ":predict answers whole (a stream is one delta): it cannot be cut mid-stream"
        skips |= dict.fromkeys(("stream_eof", "stream_drop", "stream_stall"), cannot)
    backend = VertexBackend(StaticCredentials(), endpoint_url=server.url, http_client=http_client)
    try:
        yield Subject(name, backend, calls, skips=skips, hang_timeout_s=0.25)
    finally:
        server.stop()


_VERTEX_FAULTS = {
    "server_error": "500",
    "bad_request": "400",
    "throttled": "429",
    "hang": "hang",
    "stream_eof": "eof-after-2",
    "stream_drop": "drop-after-2",
    "stream_stall": "stall-after-2",
}


@contextmanager
def _azureml(fmt: str, http_client: str = "auto") -> Iterator[Subject]:
    from adapters.azure.azureml import AzureMLBackend
    from tests.azure.azureml_server import KEY, AzureMLServer

    server = AzureMLServer().start()
    name = f"azureml-{fmt}"

    def route(endpoint: str) -> dict[str, Any]:
        uri = server.openai_url(endpoint) if fmt == "openai" else server.scoring_uri(endpoint)
        return {"type": name, "scoring_uri": uri, "format": fmt}

    calls = {case: Call(route(f"fault-{mode}")) for case, mode in _VERTEX_FAULTS.items()}
    calls["ok"] = Call(route("echo"))
    skips = {"embed": "a text generation route: embed is the unsupported case"}
    if fmt != "openai":
        cannot = "a scoring script answers whole (a stream is one delta): it cannot be cut mid-stream"
        skips |= dict.fromkeys(("stream_eof", "stream_drop", "stream_stall"), cannot)
    backend = AzureMLBackend(KEY, http_client=http_client)
    try:
        yield Subject(name, backend, calls, skips=skips, hang_timeout_s=0.25)
    finally:
        server.stop()


@contextmanager
def _llama() -> Iterator[Subject]:
    from adapters.local.llama_backend import LlamaCppBackend

    backend = LlamaCppBackend()
    route = {"type": "llama"}
    cannot = "a local model cannot be made to fail like a remote server"
    calls = {
        "ok": Call(route, Prompt(text="Once upon a time")),
        "bad_request": Call(route, Prompt(text="")),
        # A long greedy generation (512 tokens, ~5 s) stands in for a slow backend: the caller's timeout cuts it.
        "hang": Call(route, Prompt(text="Once upon a time"), GenerationParams(max_tokens=512, temperature=0.0)),
    }
    skips = {
        "embed": "a generation model: embed is the unsupported case",
        "server_error": cannot,
        "throttled": cannot,
        "stream_eof": cannot,
        "stream_drop": cannot,
        "stream_stall": cannot,
    }
    try:
        yield Subject("llama", backend, calls, skips=skips, hang_timeout_s=0.05)
    finally:
        backend.close()


@contextmanager
def _onnx() -> Iterator[Subject]:
    from adapters.local.onnx_embeddings import OnnxMiniLMBackend

    generation = "an embedding model: generate and stream are the unsupported case"
    skips = dict.fromkeys(("ok", *FAILURES), generation)
    yield Subject("onnx", OnnxMiniLMBackend(), {"embed": Call({"type": "onnx"})}, skips=skips)


#: Every InferenceBackend adapter: add one entry (and its factory above) and the whole suite runs on it.
ADAPTERS: list[Any] = [
    pytest.param(lambda: _openai("auto"), id="openai-http11"),
    pytest.param(lambda: _openai("httpx"), id="openai-httpx"),
    pytest.param(_sagemaker, id="sagemaker", marks=pytest.mark.aws),
    pytest.param(lambda: _vertex("openai-chat", "httpx"), id="vertex-chat", marks=pytest.mark.gcp),
    pytest.param(lambda: _vertex("openai-chat", "auto"), id="vertex-chat-http11", marks=pytest.mark.gcp),
    pytest.param(lambda: _vertex("predict-vllm"), id="vertex-vllm", marks=pytest.mark.gcp),
    pytest.param(lambda: _vertex("predict-tgi"), id="vertex-tgi", marks=pytest.mark.gcp),
    pytest.param(lambda: _azureml("openai", "httpx"), id="azureml-openai", marks=pytest.mark.azure),
    pytest.param(lambda: _azureml("openai", "auto"), id="azureml-openai-http11", marks=pytest.mark.azure),
    pytest.param(lambda: _azureml("hf"), id="azureml-hf", marks=pytest.mark.azure),
    pytest.param(lambda: _azureml("text"), id="azureml-text", marks=pytest.mark.azure),
    pytest.param(lambda: _azureml("chat"), id="azureml-chat", marks=pytest.mark.azure),
    pytest.param(_llama, id="llama", marks=pytest.mark.model),
    pytest.param(_onnx, id="onnx", marks=pytest.mark.model),
]

#: Where an adapter cannot do an operation at all, the operation it is asked for and the error it owes.
UNSUPPORTED = (
    {"llama": "embed", "onnx": "generate"}
    | {f"vertex-{api}": "embed" for api in ("openai-chat", "predict-vllm", "predict-tgi")}
    | {f"azureml-{fmt}": "embed" for fmt in ("openai", "hf", "text", "chat")}
)


@pytest.fixture(scope="module", params=ADAPTERS)
def subject(request: pytest.FixtureRequest) -> Iterator[Subject]:
    factory: Callable[[], AbstractContextManager[Subject]] = request.param
    with factory() as made:
        yield made


# -- helpers ------------------------------------------------------------------------------------------------


async def _collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [event async for event in events]


async def _until_error(
    events: AsyncIterator[StreamEvent], per_event_s: float | None = None
) -> tuple[list[StreamEvent], BaseException]:
    """Events until the stream raises; each awaited at most ``per_event_s`` (as the router's ``_next``)."""
    seen: list[StreamEvent] = []
    try:
        while True:
            async with asyncio.timeout(per_event_s):
                event = await anext(events)
            seen.append(event)
    except StopAsyncIteration:
        pytest.fail(f"the stream ended without an error after {seen}")
    except (BackendError, TimeoutError) as exc:
        return seen, exc
    finally:
        closer = getattr(events, "aclose", None)
        if closer is not None:
            await closer()


def _check_stream_shape(events: list[StreamEvent]) -> tuple[str, StreamEnd]:
    assert events, "a stream yields at least its StreamEnd"
    *deltas, end = events
    assert isinstance(end, StreamEnd), f"the last event is the StreamEnd, got {end!r}"
    assert all(isinstance(e, TextDelta) for e in deltas), "only TextDeltas come before the StreamEnd"
    return "".join(e.text for e in deltas if isinstance(e, TextDelta)), end


def _is_timeout(exc: BaseException) -> bool:
    return isinstance(exc, TimeoutError) or (isinstance(exc, BackendError) and exc.status == 504 and exc.retryable)


def _assert_generation_ok(subject: Subject) -> None:
    """The backend still serves a plain call (after a failure, a timeout or an early close)."""
    call = subject.calls["ok"]
    result = subject.run(lambda: subject.backend.generate(call.route, call.prompt, call.params))
    assert result.completion_tokens > 0


# -- generate -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["text", "chat"])
def test_generate_returns_text_a_finish_reason_and_usage_within_max_tokens(subject: Subject, kind: str) -> None:
    call = subject.call("ok")
    prompt = call.prompt if kind == "text" else CHAT
    result = subject.run(lambda: subject.backend.generate(call.route, prompt, call.params))
    assert isinstance(result.text, str)
    assert result.text.strip()
    assert result.finish_reason in ("stop", "length")
    assert result.prompt_tokens > 0
    assert 0 < result.completion_tokens <= call.params.max_tokens


def test_a_small_max_tokens_ends_with_length(subject: Subject) -> None:
    call = subject.call("ok")
    params = dataclasses.replace(call.params, max_tokens=2)
    result = subject.run(lambda: subject.backend.generate(call.route, call.prompt, params))
    assert result.finish_reason == "length"
    assert 0 < result.completion_tokens <= 2


# -- stream -------------------------------------------------------------------------------------------------


def test_stream_is_deltas_then_one_stream_end_equal_to_generate(subject: Subject) -> None:
    call = subject.call("ok")

    async def both() -> tuple[list[StreamEvent], Any]:
        events = await _collect(subject.backend.stream(call.route, call.prompt, call.params))
        return events, await subject.backend.generate(call.route, call.prompt, call.params)

    events, generated = subject.run(both)
    text, end = _check_stream_shape(events)
    assert len(events) >= 2, "a non-empty answer streams at least one delta"
    assert end.finish_reason in ("stop", "length")
    assert end.prompt_tokens > 0
    assert 0 < end.completion_tokens <= call.params.max_tokens
    if subject.deterministic:  # greedy: the same answer and usage, streamed or not
        assert text == generated.text
        assert (end.finish_reason, end.prompt_tokens, end.completion_tokens) == (
            generated.finish_reason,
            generated.prompt_tokens,
            generated.completion_tokens,
        )


def test_a_stream_with_a_small_max_tokens_ends_with_length(subject: Subject) -> None:
    call = subject.call("ok")
    params = dataclasses.replace(call.params, max_tokens=2)
    events = subject.run(lambda: _collect(subject.backend.stream(call.route, call.prompt, params)))
    _, end = _check_stream_shape(events)
    assert end.finish_reason == "length"
    assert 0 < end.completion_tokens <= 2


def test_a_stream_closed_early_stops_quietly_and_the_backend_serves_on(subject: Subject) -> None:
    call = subject.call("ok")

    async def first_then_close() -> StreamEvent:
        events = subject.backend.stream(call.route, call.prompt, call.params)
        first = await anext(events)
        await events.aclose()  # type: ignore[attr-defined]
        return first

    assert isinstance(subject.run(first_then_close), TextDelta)
    _assert_generation_ok(subject)


# -- failures -----------------------------------------------------------------------------------------------


def _generate_error(subject: Subject, call: Call) -> BackendError:
    with pytest.raises(BackendError) as failed:
        subject.run(lambda: subject.backend.generate(call.route, call.prompt, call.params))
    return failed.value


def _stream_error(subject: Subject, call: Call) -> tuple[list[StreamEvent], BaseException]:
    return subject.run(lambda: _until_error(subject.backend.stream(call.route, call.prompt, call.params)))


def test_an_upstream_5xx_is_a_retryable_backend_error(subject: Subject) -> None:
    call = subject.call("server_error")
    delivered, streamed = _stream_error(subject, call)
    assert delivered == []  # failed before anything was delivered
    for error in (_generate_error(subject, call), streamed):
        assert isinstance(error, BackendError)
        assert (error.status, error.retryable) == (502, True)


def test_a_bad_request_is_a_400_that_is_not_retried(subject: Subject) -> None:
    call = subject.call("bad_request")
    for error in (_generate_error(subject, call), _stream_error(subject, call)[1]):
        assert isinstance(error, BackendError)
        assert (error.status, error.retryable, error.type) == (400, False, "invalid_request_error")
        assert error.message
    _assert_generation_ok(subject)


def test_throttling_is_a_retryable_429(subject: Subject) -> None:
    call = subject.call("throttled")
    for error in (_generate_error(subject, call), _stream_error(subject, call)[1]):
        assert isinstance(error, BackendError)
        assert (error.status, error.retryable, error.code) == (429, True, "backend_throttled")


def test_a_hanging_call_gives_way_to_the_callers_timeout(subject: Subject) -> None:
    """The router wraps every call in ``asyncio.timeout``: a hanging call either ends as 504 itself or is
    cancelled there promptly (no thread or socket holding the loop), and the backend serves the next call."""
    call = subject.call("hang")
    limit = subject.hang_timeout_s

    async def generate() -> BaseException:
        try:
            async with asyncio.timeout(limit):
                await subject.backend.generate(call.route, call.prompt, call.params)
        except (TimeoutError, BackendError) as exc:
            return exc
        pytest.fail("the hanging call answered")

    started = time.monotonic()
    error = subject.run(generate)
    assert _is_timeout(error), repr(error)
    assert time.monotonic() - started < limit + 2.0

    async def stream() -> BaseException:
        events = subject.backend.stream(call.route, call.prompt, call.params)
        try:
            async with asyncio.timeout(limit):  # the request's deadline, whichever event it falls on
                await _collect(events)
        except (TimeoutError, BackendError) as exc:
            return exc
        finally:
            await events.aclose()  # type: ignore[attr-defined]
        pytest.fail("the hanging stream ended")

    started = time.monotonic()
    streamed = subject.run(stream)
    assert _is_timeout(streamed), repr(streamed)
    assert time.monotonic() - started < limit + 2.0
    _assert_generation_ok(subject)


@pytest.mark.parametrize("case", ["stream_eof", "stream_drop"])
def test_a_cut_stream_fails_after_its_deltas_without_a_stream_end(
    subject: Subject, case: str, request: pytest.FixtureRequest
) -> None:
    call = subject.call(case)
    if case in subject.xfails:
        request.applymarker(pytest.mark.xfail(reason=subject.xfails[case], strict=True))
    events, error = _stream_error(subject, call)
    assert events == [TextDelta("one"), TextDelta(" two")]  # what came is passed on; no StreamEnd follows
    assert isinstance(error, BackendError), repr(error)
    assert error.status == 502
    assert error.code in ("stream_truncated", "stream_interrupted"), error.code


def test_a_stream_that_stalls_gives_way_to_the_per_event_timeout(subject: Subject) -> None:
    call = subject.call("stream_stall")
    started = time.monotonic()
    events, error = subject.run(
        lambda: _until_error(subject.backend.stream(call.route, call.prompt, call.params), subject.hang_timeout_s)
    )
    assert events == [TextDelta("one"), TextDelta(" two")]
    assert _is_timeout(error), repr(error)
    assert time.monotonic() - started < subject.hang_timeout_s + 2.0


# -- embed --------------------------------------------------------------------------------------------------


def test_embed_returns_one_vector_per_input_in_order_with_usage(subject: Subject) -> None:
    call = subject.call("embed")
    texts = ["the cat sat on the mat", "stock markets fell sharply today", "a third sentence"]

    async def both() -> tuple[Any, Any]:
        forward = await subject.backend.embed(call.route, texts)
        backward = await subject.backend.embed(call.route, texts[::-1])
        return forward, backward

    forward, backward = subject.run(both)
    assert len(forward.vectors) == len(texts)
    assert forward.dimensions > 0
    assert all(len(vector) == forward.dimensions for vector in forward.vectors)
    assert all(math.isfinite(x) for vector in forward.vectors for x in vector)
    assert forward.prompt_tokens > 0
    assert forward.vectors[0] != forward.vectors[1]
    for a, b in zip(forward.vectors, backward.vectors[::-1], strict=True):  # vector i belongs to input i
        assert _cosine(a, b) > 0.999


def _cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)) or 1.0)


def test_an_operation_the_model_cannot_do_is_a_400_model_not_supported(subject: Subject) -> None:
    if subject.name not in UNSUPPORTED:
        pytest.skip(f"{subject.name}: {subject.skips.get('unsupported', 'serves every operation')}")
    call = Call({"type": subject.name})
    calls: list[Callable[[], Awaitable[Any]]] = []
    if UNSUPPORTED[subject.name] == "embed":
        calls.append(lambda: subject.backend.embed(call.route, ["x"]))
    else:
        calls.append(lambda: subject.backend.generate(call.route, call.prompt, call.params))
        calls.append(lambda: _collect(subject.backend.stream(call.route, call.prompt, call.params)))
    for make in calls:
        with pytest.raises(BackendError) as failed:
            subject.run(make)
        assert (failed.value.status, failed.value.code, failed.value.retryable) == (400, "model_not_supported", False)
