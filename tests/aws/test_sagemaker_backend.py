"""SageMakerBackend through boto3: moto with seeded results; streams via a local runtime-protocol server."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from adapters.aws.sagemaker import SageMakerBackend
from core.errors import BackendError
from core.inference import GenerationParams, Prompt, StreamEnd, StreamEvent, TextDelta
from tests.aws.runtime_server import Reply, RuntimeServer, stream
from tests.aws.support import CHAT, LMI, PARAMS, TEXT, TGI, collect, run, seed_sagemaker_results

if TYPE_CHECKING:
    from mypy_boto3_sagemaker_runtime.client import SageMakerRuntimeClient

pytestmark = pytest.mark.aws


# -- moto, seeded with container answers -----------------------------------------------------------------


def test_tgi_text_generation_with_exact_usage(moto: str, sagemaker_runtime: SageMakerRuntimeClient) -> None:
    prefill = [{"id": i, "text": "t", "logprob": None} for i in range(6)]
    details = {"finish_reason": "length", "generated_tokens": 16, "prefill": prefill, "tokens": []}
    seed_sagemaker_results(moto, [[{"generated_text": " there was a fox", "details": details}]])
    backend = SageMakerBackend(sagemaker_runtime)
    route = {**TGI, "decoder_input_details": True}
    result = run(backend.generate(route, TEXT, PARAMS))
    assert (result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens) == (
        " there was a fox",
        "length",
        6,
        16,
    )


def test_lmi_chat_generation_from_an_object(moto: str, sagemaker_runtime: SageMakerRuntimeClient) -> None:
    body = {"generated_text": "Hello!", "details": {"finish_reason": "eos_token", "generated_tokens": 3, "inputs": "x"}}
    seed_sagemaker_results(moto, [body])
    calls: list[tuple[Prompt, str]] = []

    def fallback(prompt: Prompt, text: str) -> tuple[int, int]:
        calls.append((prompt, text))
        return 21, 99

    backend = SageMakerBackend(sagemaker_runtime, usage_fallback=fallback)
    result = run(backend.generate(LMI, CHAT, PARAMS))
    assert (result.text, result.finish_reason) == ("Hello!", "stop")
    # generated_tokens is exact; LMI reports no prompt count, so the fallback counts the prompt only.
    assert (result.prompt_tokens, result.completion_tokens) == (21, 3)
    assert calls == [(CHAT, "Hello!")]


def test_messages_schema_usage_comes_from_the_response(moto: str, sagemaker_runtime: SageMakerRuntimeClient) -> None:
    body = {
        "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hey."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 14, "completion_tokens": 2, "total_tokens": 16},
    }
    seed_sagemaker_results(moto, [body])
    result = run(SageMakerBackend(sagemaker_runtime).generate({**TGI, "schema": "messages"}, CHAT, PARAMS))
    assert (result.text, result.finish_reason, result.prompt_tokens, result.completion_tokens) == (
        "Hey.",
        "stop",
        14,
        2,
    )


def test_without_reported_counts_the_default_fallback_is_bytes(
    moto: str, sagemaker_runtime: SageMakerRuntimeClient
) -> None:
    seed_sagemaker_results(moto, [[{"generated_text": "four"}]])
    result = run(SageMakerBackend(sagemaker_runtime).generate(TGI, TEXT, PARAMS))
    assert (result.finish_reason, result.prompt_tokens, result.completion_tokens) == ("stop", 16, 4)


def test_a_non_json_answer_is_a_bad_response(moto: str, sagemaker_runtime: SageMakerRuntimeClient) -> None:
    with pytest.raises(BackendError) as failed:
        run(SageMakerBackend(sagemaker_runtime).generate(TGI, TEXT, PARAMS))  # moto's unseeded b"body"
    assert failed.value.code == "backend_bad_response"


# -- the local runtime server: what is sent, streams ----------------------------------------------


def test_the_request_carries_the_rendered_chat_variant_and_component(
    runtime: RuntimeServer, local_client: SageMakerRuntimeClient
) -> None:
    runtime.replies["textgen"] = Reply(body=b'[{"generated_text": "ok"}]')
    route = {**TGI, "chat_template": "llama3", "variant": "blue", "inference_component": "ic-1"}
    run(SageMakerBackend(local_client).generate(route, CHAT, GenerationParams(max_tokens=4, stop=("\n",))))
    sent = runtime.requests[-1]
    assert sent.path == "/endpoints/textgen/invocations"
    assert sent.headers["X-Amzn-SageMaker-Target-Variant"] == "blue"
    assert sent.headers["X-Amzn-SageMaker-Inference-Component"] == "ic-1"
    assert sent.headers["Content-Type"] == "application/json"
    payload = sent.json()
    assert payload["inputs"].startswith("<|begin_of_text|><|start_header_id|>system")
    assert payload["parameters"]["stop"] == ["\n"]
    assert payload["parameters"]["max_new_tokens"] == 4


def test_tgi_stream_through_real_event_stream_frames(
    runtime: RuntimeServer, local_client: SageMakerRuntimeClient
) -> None:
    tokens = ["Once", " upon", " a"]
    lines: list[str] = [
        "data:" + json.dumps({"index": i, "token": {"id": i, "text": t, "special": False}, "details": None})
        for i, t in enumerate(tokens)
    ]
    details = {"finish_reason": "eos_token", "generated_tokens": 4, "input_length": 9}
    lines.append("data:" + json.dumps({"token": {"id": 2, "text": "</s>", "special": True}, "details": details}))
    runtime.replies["textgen"] = stream(*lines, "")
    events = run(collect(SageMakerBackend(local_client).stream(TGI, TEXT, PARAMS)))
    assert events == [TextDelta("Once"), TextDelta(" upon"), TextDelta(" a"), StreamEnd("stop", 9, 4)]
    sent = runtime.requests[-1]
    assert sent.path == "/endpoints/textgen/invocations-response-stream"
    assert sent.json()["stream"] is True


def test_a_stream_without_its_final_details_is_truncated_not_stopped(
    runtime: RuntimeServer, local_client: SageMakerRuntimeClient
) -> None:
    lines = ["data:" + json.dumps({"token": {"id": i, "text": t, "special": False}}) for i, t in enumerate("ab")]
    runtime.replies["textgen"] = stream(*lines, "")
    events: list[Any] = []

    async def read() -> None:
        async for event in SageMakerBackend(local_client).stream(TGI, TEXT, PARAMS):
            events.append(event)

    with pytest.raises(BackendError) as caught:
        run(read())
    assert (caught.value.status, caught.value.code) == (502, "stream_truncated")
    assert events == [TextDelta("a"), TextDelta("b")]  # what came is passed on; no StreamEnd follows


def test_lmi_jsonlines_stream_with_a_fallback_prompt_count(
    runtime: RuntimeServer, local_client: SageMakerRuntimeClient
) -> None:
    last = {"token": {"text": " field."}, "details": {"finish_reason": "length", "generated_tokens": 2, "inputs": "?"}}
    runtime.replies["textgen-lmi"] = stream(json.dumps({"token": {"text": "Deep"}}), json.dumps(last), slice_bytes=3)
    backend = SageMakerBackend(local_client, usage_fallback=lambda prompt, text: (5, 50))
    events = run(collect(backend.stream(LMI, TEXT, PARAMS)))
    assert events == [TextDelta("Deep"), TextDelta(" field."), StreamEnd("length", 5, 2)]


def test_messages_stream_ends_at_done_with_the_usage_chunk(
    runtime: RuntimeServer, local_client: SageMakerRuntimeClient
) -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "Hel"}, "finish_reason": None}]},
        {"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 2}},
    ]
    runtime.replies["textgen"] = stream(*("data: " + json.dumps(c) for c in chunks), "data: [DONE]")
    events = run(collect(SageMakerBackend(local_client).stream({**TGI, "schema": "messages"}, CHAT, PARAMS)))
    assert events == [TextDelta("Hel"), TextDelta("lo"), StreamEnd("stop", 11, 2)]
    assert runtime.requests[-1].json()["stream_options"] == {"include_usage": True}


def test_a_consumer_can_stop_a_stream_early(runtime: RuntimeServer, local_client: SageMakerRuntimeClient) -> None:
    lines = ["data:" + json.dumps({"token": {"text": f"t{i}", "special": False}}) for i in range(50)]
    runtime.replies["textgen"] = stream(*lines)

    async def first_two() -> list[StreamEvent]:
        events = SageMakerBackend(local_client).stream(TGI, TEXT, PARAMS)
        taken = [await anext(events), await anext(events)]
        await events.aclose()  # type: ignore[attr-defined]
        return taken

    assert run(first_two()) == [TextDelta("t0"), TextDelta("t1")]


def test_text_prompts_use_the_native_schema_on_a_messages_route(
    runtime: RuntimeServer, local_client: SageMakerRuntimeClient
) -> None:
    runtime.replies["textgen"] = Reply(body=b'[{"generated_text": "ok"}]')
    run(SageMakerBackend(local_client).generate({**TGI, "schema": "messages"}, TEXT, PARAMS))
    assert runtime.requests[-1].json()["inputs"] == "Once upon a time"


def test_tei_embeddings_with_fallback_token_counts(
    runtime: RuntimeServer, local_client: SageMakerRuntimeClient
) -> None:
    runtime.replies["embed"] = Reply(body=b"[[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]")
    route = {"type": "sagemaker", "endpoint_name": "embed", "container": "tei"}
    result = run(SageMakerBackend(local_client).embed(route, ["ab", "cde"]))
    assert result.vectors == [[0.1, 0.2, 0.3], [0.4, 0.5, 0.6]]
    assert (result.prompt_tokens, result.dimensions) == (5, 3)
    assert runtime.requests[-1].json() == {"inputs": ["ab", "cde"]}


@pytest.mark.parametrize(
    "route",
    [
        {"type": "sagemaker"},
        {**TGI, "container": "vllm"},
        {**TGI, "schema": "openai"},
        {**TGI, "chat_template": "vicuna"},
        {**TGI, "container": "tei"},
    ],
)
def test_bad_routes_are_misconfigurations(route: dict[str, Any]) -> None:
    with pytest.raises(BackendError) as failed:
        run(SageMakerBackend(client=object()).generate(route, TEXT, PARAMS))  # type: ignore[arg-type]
    assert (failed.value.code, failed.value.retryable) == ("backend_misconfigured", False)


def test_embed_needs_a_tei_route() -> None:
    with pytest.raises(BackendError) as failed:
        run(SageMakerBackend(client=object()).embed(TGI, ["x"]))  # type: ignore[arg-type]
    assert failed.value.code == "backend_misconfigured"


def test_clients_are_created_once_per_region(aws_env: None) -> None:
    backend = SageMakerBackend()
    first = backend.client("eu-west-1")
    assert backend.client("eu-west-1") is first
    assert backend.client("us-west-2") is not first
    assert first.meta.region_name == "eu-west-1"
    assert first.meta.config.read_timeout == 70.0  # type: ignore[attr-defined]
