"""AzureMLBackend against a local server speaking Azure ML's scoring formats: what is sent, auth, usage, errors."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest

from adapters.azure.azureml import AzureMLBackend
from adapters.azure.backend_types import azureml_type
from core.backend_types import BackendCatalog
from core.errors import BackendError, InvalidRequest
from core.inference import ChatMessage, GenerationParams, Prompt, StreamEnd, StreamEvent, TextDelta
from tests.azure.azureml_server import KEY, AzureMLServer, Reply

pytestmark = pytest.mark.azure

T = TypeVar("T")
TEXT = Prompt(text="one two three")
CHAT = Prompt(messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "alpha beta")))
PARAMS = GenerationParams(max_tokens=16, temperature=0.0)
KEY_ENV = "TEXTNLP_TEST_AZUREML_KEY"


@pytest.fixture(scope="module")
def server() -> Iterator[AzureMLServer]:
    started = AzureMLServer().start()
    yield started
    started.stop()


@pytest.fixture(autouse=True)
def _fresh(server: AzureMLServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.replies.clear()
    server.requests.clear()
    server.accepted = {KEY}
    monkeypatch.setenv(KEY_ENV, KEY)


def route(server: AzureMLServer, fmt: str, endpoint: str = "echo", **extra: Any) -> dict[str, Any]:
    uri = server.openai_url(endpoint) if fmt == "openai" else server.scoring_uri(endpoint)
    return {"type": "azureml", "scoring_uri": uri, "format": fmt, "key_env": KEY_ENV} | extra


def run(subject: AzureMLBackend, make: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await make()
        finally:
            await subject.aclose()

    return asyncio.run(main())


async def collect(events: Any) -> list[StreamEvent]:
    return [event async for event in events]


def failure(subject: AzureMLBackend, make: Callable[[], Awaitable[Any]]) -> BackendError:
    with pytest.raises(BackendError) as failed:
        run(subject, make)
    return failed.value


@dataclass
class Token:
    token: str
    expires_on: int


class FakeCredential:
    """An azure-identity credential stand-in: hands out ``issued-N`` tokens, counting calls and scopes."""

    def __init__(self, server: AzureMLServer, lifetime_s: int = 3600) -> None:
        self.server, self.lifetime_s = server, lifetime_s
        self.scopes: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str) -> Token:
        self.scopes.append(scopes)
        token = f"issued-{len(self.scopes)}"
        self.server.accepted.add(token)
        return Token(token, int(time.time()) + self.lifetime_s)


# -- the dedicated formats -------------------------------------------------------------------------------------


def test_hf_posts_to_the_scoring_uri_with_the_key_and_the_gateway_counts_the_tokens(server: AzureMLServer) -> None:
    counted: list[tuple[Prompt, str]] = []

    def fallback(prompt: Prompt, text: str) -> tuple[int, int]:
        counted.append((prompt, text))
        return 7, 3

    subject = AzureMLBackend(usage_fallback=fallback)
    result = run(subject, lambda: subject.generate(route(server, "hf"), TEXT, PARAMS))
    assert (result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens) == (
        "one two three",
        "stop",
        7,
        3,
    )
    assert counted == [(TEXT, "one two three")]
    [sent] = server.requests
    assert sent.path == "/echo/score"
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert "azureml-model-deployment" not in sent.headers
    assert sent.body == {
        "inputs": ["one two three"],
        "parameters": {"max_new_tokens": 16, "do_sample": False, "return_full_text": False},
    }


def test_a_pinned_deployment_is_sent_in_the_azureml_model_deployment_header(server: AzureMLServer) -> None:
    subject = AzureMLBackend()
    run(subject, lambda: subject.generate(route(server, "text", deployment="llama-blue"), TEXT, PARAMS))
    assert server.requests[0].headers["azureml-model-deployment"] == "llama-blue"


def test_the_chat_family_sends_messages_and_reads_output(server: AzureMLServer) -> None:
    subject = AzureMLBackend()
    result = run(subject, lambda: subject.generate(route(server, "chat"), CHAT, PARAMS))
    assert result.text == "Be brief. alpha beta"
    assert server.requests[0].body["input_data"]["input_string"][1] == {"role": "user", "content": "alpha beta"}


def test_an_answer_at_max_tokens_is_length_and_its_count_never_exceeds_it(server: AzureMLServer) -> None:
    subject = AzureMLBackend()
    params = GenerationParams(max_tokens=2, temperature=0.0)
    result = run(subject, lambda: subject.generate(route(server, "text"), Prompt(text="aaaa bbbb cccc"), params))
    assert (result.text, result.finish_reason, result.completion_tokens) == ("aaaa bbbb", "length", 2)


def test_stop_sequences_the_scoring_script_ignores_are_applied_by_the_gateway(server: AzureMLServer) -> None:
    subject = AzureMLBackend()
    params = GenerationParams(max_tokens=16, temperature=0.0, stop=("three",))
    result = run(subject, lambda: subject.generate(route(server, "hf"), TEXT, params))
    assert (result.text, result.finish_reason) == ("one two ", "stop")


def test_a_stream_on_a_scoring_uri_is_the_whole_answer_then_its_end(server: AzureMLServer) -> None:
    subject = AzureMLBackend()
    events = run(subject, lambda: collect(subject.stream(route(server, "hf"), TEXT, PARAMS)))
    assert events == [TextDelta("one two three"), StreamEnd("stop", 13, 13)]


# -- OpenAI-compatible deployments -----------------------------------------------------------------------------


def test_openai_deployments_report_usage_and_stream_token_by_token(server: AzureMLServer) -> None:
    subject = AzureMLBackend()
    r = route(server, "openai", model="Meta-Llama-3-8B-Instruct")
    result = run(subject, lambda: subject.generate(r, CHAT, PARAMS))
    assert (result.text, result.prompt_tokens, result.completion_tokens) == ("Be brief. alpha beta", 4, 4)
    events = run(subject, lambda: collect(subject.stream(r, TEXT, PARAMS)))
    assert events == [TextDelta("one"), TextDelta(" two"), TextDelta(" three"), StreamEnd("stop", 3, 3)]
    assert [req.path for req in server.requests] == ["/echo/v1/chat/completions", "/echo/v1/completions"]
    assert server.requests[0].body["model"] == "Meta-Llama-3-8B-Instruct"
    assert server.requests[1].body["stream"] is True


def test_https_goes_through_httpx_with_the_default_90_second_timeout() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[{"0": "hello"}])

    async def call() -> str:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            subject = AzureMLBackend(KEY, client=client)
            r = {"scoring_uri": "https://ep.eastus.inference.ml.azure.com/score", "format": "text", "deployment": "d1"}
            return (await subject.generate(r, TEXT, PARAMS)).text

    assert asyncio.run(call()) == "hello"
    [request] = seen
    assert str(request.url) == "https://ep.eastus.inference.ml.azure.com/score"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["azureml-model-deployment"] == "d1"
    assert request.extensions["timeout"]["read"] == 90.0


# -- keys and Entra tokens ---------------------------------------------------------------------------------------


def test_a_wrong_key_is_a_502_that_names_the_endpoint_and_the_variable_never_the_key(
    server: AzureMLServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "wrong-secret-value")
    subject = AzureMLBackend()
    error = failure(subject, lambda: subject.generate(route(server, "hf"), TEXT, PARAMS))
    assert (error.status, error.code, error.retryable) == (502, "backend_misconfigured", False)
    assert KEY_ENV in error.message
    assert "127.0.0.1" in error.message
    assert "wrong-secret-value" not in json.dumps(error.body())


def test_a_missing_key_fails_before_any_call(server: AzureMLServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    subject = AzureMLBackend()
    error = failure(subject, lambda: subject.generate(route(server, "hf"), TEXT, PARAMS))
    assert (error.status, error.code) == (502, "backend_misconfigured")
    assert KEY_ENV in error.message
    no_env = {k: v for k, v in route(server, "hf").items() if k != "key_env"}
    assert "no key_env" in failure(subject, lambda: subject.generate(no_env, TEXT, PARAMS)).message
    assert server.requests == []


def test_the_configured_key_serves_routes_that_name_no_variable(server: AzureMLServer) -> None:
    subject = AzureMLBackend(KEY)
    no_env = {k: v for k, v in route(server, "hf").items() if k != "key_env"}
    assert run(subject, lambda: subject.generate(no_env, TEXT, PARAMS)).text == "one two three"


def test_entra_tokens_are_cached_and_a_refused_one_is_dropped_for_a_retry(server: AzureMLServer) -> None:
    credential = FakeCredential(server)
    subject = AzureMLBackend(credential=credential)
    r = route(server, "hf", auth="entra")

    async def twice() -> None:
        await subject.generate(r, TEXT, PARAMS)
        await subject.generate(r, TEXT, PARAMS)

    run(subject, twice)
    assert credential.scopes == [("https://ml.azure.com/.default",)]
    assert {req.headers["authorization"] for req in server.requests} == {"Bearer issued-1"}
    server.accepted.discard("issued-1")  # revoked
    error = failure(subject, lambda: subject.generate(r, TEXT, PARAMS))
    assert (error.status, error.retryable) == (502, True)
    assert "Entra token" in error.message
    run(subject, lambda: subject.generate(r, TEXT, PARAMS))
    assert server.requests[-1].headers["authorization"] == "Bearer issued-2"


def test_an_expiring_entra_token_is_renewed_and_async_credentials_work(server: AzureMLServer) -> None:
    class AsyncCredential(FakeCredential):
        async def get_token(self, *scopes: str) -> Token:  # type: ignore[override]
            return FakeCredential.get_token(self, *scopes)

    credential = AsyncCredential(server, lifetime_s=60)  # inside the refresh margin: renewed on every call
    subject = AzureMLBackend(credential=credential)
    r = route(server, "openai", auth="entra")
    run(subject, lambda: subject.generate(r, TEXT, PARAMS))
    run(subject, lambda: subject.generate(r, TEXT, PARAMS))
    assert len(credential.scopes) == 2


def test_a_credential_that_fails_is_a_retryable_502_and_nothing_is_sent(server: AzureMLServer) -> None:
    class Unavailable(FakeCredential):
        def get_token(self, *scopes: str) -> Token:
            raise ConnectionError("IMDS unreachable")

    subject = AzureMLBackend(credential=Unavailable(server))
    error = failure(subject, lambda: subject.generate(route(server, "chat", auth="entra"), TEXT, PARAMS))
    assert (error.status, error.retryable, error.code) == (502, True, "backend_misconfigured")
    assert "ConnectionError" in error.message
    assert server.requests == []


def test_entra_auth_without_azure_identity_is_a_clear_502(server: AzureMLServer) -> None:
    if importlib.util.find_spec("azure") and importlib.util.find_spec("azure.identity"):
        pytest.skip("azure-identity is installed here")
    subject = AzureMLBackend()
    error = failure(subject, lambda: subject.generate(route(server, "hf", auth="entra"), TEXT, PARAMS))
    assert (error.status, error.code) == (502, "backend_misconfigured")
    assert "azure-identity" in error.message


def test_importing_the_backend_imports_no_azure_sdk_nor_httpx() -> None:
    code = "import sys, adapters.azure.azureml as a; print(sorted({m.split('.')[0] for m in sys.modules}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout.replace("'", '"')))
    assert not loaded & {"azure", "httpx"}


# -- errors ------------------------------------------------------------------------------------------------------


def test_a_429_passes_retry_after_on_as_a_retryable_throttle(server: AzureMLServer) -> None:
    subject = AzureMLBackend()
    error = failure(subject, lambda: subject.generate(route(server, "text", "fault-429"), TEXT, PARAMS))
    assert (error.status, error.retryable, error.code, error.headers) == (
        429,
        True,
        "backend_throttled",
        {"Retry-After": "7"},
    )
    server.replies["ms"] = Reply(429, {"message": "slow down"}, headers={"retry-after-ms": "1200"})
    error = failure(subject, lambda: subject.generate(route(server, "openai", "ms"), TEXT, PARAMS))
    assert error.headers == {"Retry-After": "2"}


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("fault-424", (502, True, "backend_error")),
        ("fault-503", (502, True, "backend_error")),
        ("fault-408", (504, True, "backend_timeout")),
        ("fault-not-json", (502, False, "backend_bad_response")),
        ("nowhere", (502, False, "backend_misconfigured")),
    ],
)
def test_failures_map_to_the_gateways_errors(server: AzureMLServer, endpoint: str, expected: Any) -> None:
    subject = AzureMLBackend()
    error = failure(subject, lambda: subject.generate(route(server, "hf", endpoint), TEXT, PARAMS))
    assert (error.status, error.retryable, error.code) == expected


def test_a_body_that_is_not_the_familys_shape_is_a_502_bad_response(server: AzureMLServer) -> None:
    server.replies["odd"] = Reply(200, {"predictions": ["x"]})
    subject = AzureMLBackend()
    error = failure(subject, lambda: subject.generate(route(server, "hf", "odd"), TEXT, PARAMS))
    assert (error.status, error.code) == (502, "backend_bad_response")
    assert "127.0.0.1" in error.message


def test_the_routes_timeout_bounds_a_slow_endpoint_as_a_504(server: AzureMLServer) -> None:
    subject = AzureMLBackend()
    started = time.monotonic()
    error = failure(subject, lambda: subject.generate(route(server, "hf", "fault-hang", timeout_s=0.2), TEXT, PARAMS))
    assert (error.status, error.retryable, error.code) == (504, True, "backend_timeout")
    assert time.monotonic() - started < 1.0


# -- the backend type --------------------------------------------------------------------------------------------


def test_the_catalog_checks_azureml_routes_and_builds_one_backend_with_the_settings_key(
    server: AzureMLServer,
) -> None:
    catalog = BackendCatalog((azureml_type(api_key=lambda: KEY),), "Azure")
    r = {"type": "azureml", "scoring_uri": server.scoring_uri("echo"), "format": "text"}
    catalog.check_route(r)
    for bad in ({"type": "azureml", "format": "text"}, r | {"format": "tgi"}, r | {"auth": "sas"}):
        with pytest.raises(InvalidRequest):
            catalog.check_route(bad)
    backend = catalog.backend_for(r)
    assert isinstance(backend, AzureMLBackend)
    assert catalog.backend_for(r) is backend
    assert run(backend, lambda: backend.generate(r, TEXT, PARAMS)).text == "one two three"
