"""VertexBackend against a local server speaking Vertex AI's REST formats: what is sent, usage, tokens, errors."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import pytest

from adapters.gcp.backend_types import vertex_type
from adapters.gcp.vertex import VertexBackend
from core.backend_types import BackendCatalog
from core.errors import BackendError, InvalidRequest
from core.inference import ChatMessage, GenerationParams, Prompt, StreamEnd, StreamEvent, TextDelta
from tests.gcp.vertex_server import TOKEN, Reply, StaticCredentials, VertexServer

pytestmark = pytest.mark.gcp

T = TypeVar("T")
TEXT = Prompt(text="one two three")
CHAT = Prompt(messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "alpha beta")))
PARAMS = GenerationParams(max_tokens=16, temperature=0.0)


@pytest.fixture(scope="module")
def server() -> Iterator[VertexServer]:
    started = VertexServer().start()
    yield started
    started.stop()


@pytest.fixture(autouse=True)
def _fresh(server: VertexServer) -> None:
    server.replies.clear()
    server.requests.clear()
    server.accepted = {TOKEN}
    server.token_lifetime_s = 3600


def route(api: str, endpoint_id: str = "echo", **extra: Any) -> dict[str, Any]:
    return {"type": "vertex", "project": "p", "location": "us-central1", "endpoint_id": endpoint_id, "api": api} | extra


def backend(server: VertexServer, credentials: Any = None, **kw: Any) -> VertexBackend:
    return VertexBackend(credentials or StaticCredentials(), endpoint_url=server.url, **kw)


def run(subject: VertexBackend, make: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await make()
        finally:
            await subject.aclose()

    return asyncio.run(main())


async def collect(events: Any) -> list[StreamEvent]:
    return [event async for event in events]


# -- :predict ------------------------------------------------------------------------------------------------


def test_vllm_predict_sends_a_raw_prompt_with_the_token_and_counts_what_the_container_does_not(
    server: VertexServer,
) -> None:
    counted: list[tuple[Prompt, str]] = []

    def fallback(prompt: Prompt, text: str) -> tuple[int, int]:
        counted.append((prompt, text))
        return 11, 2

    subject = backend(server, usage_fallback=fallback)
    result = run(subject, lambda: subject.generate(route("predict-vllm"), TEXT, PARAMS))
    assert (result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens) == (
        "one two three",
        "stop",
        11,
        2,
    )
    assert counted == [(TEXT, "one two three")]
    sent = server.requests[-1]
    assert sent.path == "/v1/projects/p/locations/us-central1/endpoints/echo:predict"
    assert sent.headers["Authorization"] == f"Bearer {TOKEN}"
    assert sent.body["instances"][0] | {"prompt": "?"} == {
        "prompt": "?",
        "max_tokens": 16,
        "temperature": 0.0,
        "top_p": 1.0,
        "raw_response": True,
    }


def test_without_counts_an_answer_reaching_max_tokens_is_length_never_stop(server: VertexServer) -> None:
    """The default count (UTF-8 bytes) is an upper bound: an answer cut at max_tokens is never called complete."""
    subject = backend(server)
    cut = run(subject, lambda: subject.generate(route("predict-vllm"), TEXT, GenerationParams(max_tokens=2)))
    assert (cut.text, cut.finish_reason, cut.completion_tokens) == ("one two", "length", 2)
    whole = run(subject, lambda: subject.generate(route("predict-vllm"), Prompt(text="hi"), PARAMS))
    assert (whole.finish_reason, whole.prompt_tokens, whole.completion_tokens) == ("stop", 2, 2)


def test_vllm_renders_a_chat_with_the_routes_template(server: VertexServer) -> None:
    subject = backend(server)
    run(subject, lambda: subject.generate(route("predict-vllm", chat_template="llama3"), CHAT, PARAMS))
    prompt = server.requests[-1].body["instances"][0]["prompt"]
    assert prompt.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")


def test_tgi_predict_sends_a_chat_as_messages_and_text_as_inputs(server: VertexServer) -> None:
    subject = backend(server)
    chat = run(subject, lambda: subject.generate(route("predict-tgi"), CHAT, PARAMS))
    assert chat.text == "Be brief. alpha beta"
    assert server.requests[-1].body["instances"][0]["messages"][1] == {"role": "user", "content": "alpha beta"}
    run(subject, lambda: subject.generate(route("predict-tgi"), TEXT, PARAMS))
    assert server.requests[-1].body["instances"][0]["inputs"] == "one two three"


def test_a_predict_stream_is_the_whole_answer_as_one_delta(server: VertexServer) -> None:
    subject = backend(server)
    events = run(subject, lambda: collect(subject.stream(route("predict-vllm"), TEXT, PARAMS)))
    assert events == [TextDelta("one two three"), StreamEnd("stop", 13, 13)]


def test_counts_the_container_reports_are_used(server: VertexServer) -> None:
    details = {"finish_reason": "length", "generated_tokens": 16, "prefill": [{}] * 5}
    server.replies["echo"] = Reply(body={"predictions": [{"generated_text": "x y", "details": details}]})
    subject = backend(server, usage_fallback=lambda prompt, text: pytest.fail("nothing to count"))
    result = run(subject, lambda: subject.generate(route("predict-tgi"), TEXT, PARAMS))
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("length", 5, 16)


# -- the OpenAI chat route -----------------------------------------------------------------------------------


def test_chat_route_takes_usage_from_the_response(server: VertexServer) -> None:
    subject = backend(server)
    result = run(subject, lambda: subject.generate(route("openai-chat", model="gemma"), CHAT, PARAMS))
    assert (result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens) == (
        "Be brief. alpha beta",
        "stop",
        4,
        4,
    )
    sent = server.requests[-1]
    assert sent.path == "/v1beta1/projects/p/locations/us-central1/endpoints/echo/chat/completions"
    assert sent.body["model"] == "gemma"


def test_chat_stream_yields_deltas_then_the_reported_usage(server: VertexServer) -> None:
    subject = backend(server)
    events = run(subject, lambda: collect(subject.stream(route("openai-chat"), TEXT, GenerationParams(max_tokens=2))))
    assert events == [TextDelta("one"), TextDelta(" two"), StreamEnd("length", 3, 2)]
    assert server.requests[-1].body["messages"] == [{"role": "user", "content": "one two three"}]


def test_a_chat_stream_without_a_usage_chunk_is_counted_by_the_gateway(server: VertexServer) -> None:
    chunk = '{"choices":[{"index":0,"delta":{"content":"%s"},"finish_reason":%s}]}'
    lines = ["data: " + chunk % ("Hello", "null"), "data: " + chunk % ("", '"stop"'), "data: [DONE]"]
    server.replies["echo"] = Reply(lines=lines)
    subject = backend(server, http_client="httpx", usage_fallback=lambda prompt, text: (7, len(text)))
    events = run(subject, lambda: collect(subject.stream(route("openai-chat"), TEXT, PARAMS)))
    assert events == [TextDelta("Hello"), StreamEnd("stop", 7, 5)]


# -- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("api", ["predict-vllm", "openai-chat"])
def test_quota_exhaustion_is_a_retryable_429_with_retry_after(server: VertexServer, api: str) -> None:
    server.replies["echo"] = Reply(
        429,
        {"error": {"code": 429, "message": "Quota exceeded", "status": "RESOURCE_EXHAUSTED"}},
        headers={"Retry-After": "3"},
    )
    subject = backend(server)
    with pytest.raises(BackendError) as failed:
        run(subject, lambda: collect(subject.stream(route(api), TEXT, PARAMS)))
    assert (failed.value.status, failed.value.retryable, failed.value.code) == (429, True, "backend_throttled")
    assert failed.value.headers == {"Retry-After": "3"}


@pytest.mark.parametrize("api", ["predict-vllm", "openai-chat"])
def test_a_body_that_is_not_json_is_a_bad_response(server: VertexServer, api: str) -> None:
    subject = backend(server)
    with pytest.raises(BackendError) as failed:
        run(subject, lambda: subject.generate(route(api, "fault-not-json"), TEXT, PARAMS))
    assert (failed.value.status, failed.value.code) == (502, "backend_bad_response")


def test_an_unknown_endpoint_is_misconfigured_not_retried(server: VertexServer) -> None:
    subject = backend(server)
    with pytest.raises(BackendError) as failed:
        run(subject, lambda: subject.generate(route("predict-vllm", "404404"), TEXT, PARAMS))
    assert (failed.value.status, failed.value.code, failed.value.retryable) == (502, "backend_misconfigured", False)
    assert "404404" in failed.value.message


def test_unreachable_vertex_is_a_retryable_502(server: VertexServer) -> None:
    subject = VertexBackend(StaticCredentials(), endpoint_url="http://127.0.0.1:9")
    with pytest.raises(BackendError) as failed:
        run(subject, lambda: subject.generate(route("predict-vllm"), TEXT, PARAMS))
    assert (failed.value.status, failed.value.retryable) == (502, True)


# -- access tokens -------------------------------------------------------------------------------------------


def test_a_token_is_reused_until_near_its_expiry_and_refreshed_once_for_many_callers(server: VertexServer) -> None:
    fresh = StaticCredentials()
    subject = backend(server, fresh)
    for _ in range(3):
        run(subject, lambda: subject.generate(route("predict-vllm"), TEXT, PARAMS))
    assert fresh.refreshes == 0

    stale = StaticCredentials(lifetime=timedelta(minutes=2))  # within the refresh margin
    subject = backend(server, stale)

    async def many() -> None:
        await asyncio.gather(*(subject.generate(route("predict-vllm"), TEXT, PARAMS) for _ in range(8)))

    run(subject, many)
    assert stale.refreshes == 1


def test_a_refused_token_is_dropped_and_the_next_call_refreshes(server: VertexServer) -> None:
    revoked = StaticCredentials(token="revoked")  # not expired, but the server no longer takes it
    subject = backend(server, revoked)
    with pytest.raises(BackendError) as failed:
        run(subject, lambda: subject.generate(route("openai-chat"), TEXT, PARAMS))
    assert (failed.value.status, failed.value.retryable) == (502, True)  # the router retries with a new token
    assert revoked.refreshes == 0
    run(subject, lambda: subject.generate(route("openai-chat"), TEXT, PARAMS))
    assert revoked.refreshes == 1


def test_google_auth_refreshes_against_the_token_endpoint_off_the_event_loop(server: VertexServer) -> None:
    from google.oauth2.credentials import Credentials

    def user_credentials() -> Credentials:
        return Credentials(
            token=None,
            refresh_token="r",
            token_uri=server.url + "/token",
            client_id="c",
            client_secret="s",
            quota_project_id="billed-project",
        )

    subject = backend(server, user_credentials())
    for _ in range(3):
        run(subject, lambda: subject.generate(route("predict-vllm"), TEXT, PARAMS))
    assert [r.path for r in server.requests].count("/token") == 1
    assert server.requests[-1].headers["x-goog-user-project"] == "billed-project"

    server.token_lifetime_s = 60  # each token comes within the refresh margin: every call refreshes
    subject = backend(server, user_credentials())
    for _ in range(2):
        run(subject, lambda: subject.generate(route("predict-vllm"), TEXT, PARAMS))
    assert [r.path for r in server.requests].count("/token") == 3


def test_credentials_that_cannot_be_loaded_are_a_clear_error(
    server: VertexServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    subject = VertexBackend(endpoint_url=server.url)
    with pytest.raises(BackendError) as failed:
        run(subject, lambda: subject.generate(route("predict-vllm"), TEXT, PARAMS))
    assert failed.value.code == "backend_misconfigured"
    assert "Google credentials cannot be loaded" in failed.value.message
    assert server.requests == []


# -- the backend type ----------------------------------------------------------------------------------------


def test_the_vertex_type_checks_routes_and_builds_one_backend_for_them(server: VertexServer) -> None:
    catalog = BackendCatalog((vertex_type(StaticCredentials, endpoint_url=server.url),), "GCP")
    with pytest.raises(InvalidRequest, match="needs api"):
        catalog.check_route({k: v for k, v in route("openai-chat").items() if k != "api"})
    with pytest.raises(InvalidRequest, match=r"backend\.api"):
        catalog.check_route(route("chat"))
    catalog.check_route(route("predict-tgi"))
    built = catalog.backend_for(route("predict-tgi"))
    assert built is catalog.backend_for(route("openai-chat"))
    assert isinstance(built, VertexBackend)
    result = asyncio.run(built.generate(route("predict-tgi"), TEXT, PARAMS))
    assert result.text == "one two three"


def test_importing_the_adapter_loads_no_google_sdk_and_no_http_client() -> None:
    code = (
        "import sys, adapters.gcp.vertex, adapters.gcp.backend_types\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'httpx', 'requests')"
        " or m.startswith(('google.cloud.', 'google.auth', 'google.api_core'))]\n"
        "print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "[]"
