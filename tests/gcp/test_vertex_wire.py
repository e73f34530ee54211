"""Vertex AI wire mapping without a server: the bodies sent, the predictions read, the errors mapped, the route."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters.gcp.vertex_errors import error_for_status
from adapters.gcp.vertex_route import VertexRoute
from adapters.gcp.vertex_wire import (
    Reply,
    from_predict_response,
    render_chat,
    to_chat_payload,
    to_tgi_payload,
    to_vllm_payload,
)
from core.errors import BackendError
from core.inference import ChatMessage, GenerationParams, Prompt

pytestmark = pytest.mark.gcp

CHAT = Prompt(messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")))
ROUTE = {"type": "vertex", "project": "my-proj", "location": "europe-west4", "endpoint_id": "123", "api": "openai-chat"}


# -- requests ------------------------------------------------------------------------------------------------


def test_vllm_instance_asks_for_the_raw_output_with_the_sampling_parameters() -> None:
    params = GenerationParams(max_tokens=50, temperature=0.7, top_p=0.9, stop=("\n",), seed=3)
    assert to_vllm_payload("What is a car?", params) == {
        "instances": [
            {
                "prompt": "What is a car?",
                "max_tokens": 50,
                "temperature": 0.7,
                "raw_response": True,
                "top_p": 0.9,
                "stop": ["\n"],
                "seed": 3,
            }
        ]
    }


def test_tgi_text_instance_is_greedy_at_temperature_zero() -> None:
    payload = to_tgi_payload(Prompt(text="Deep learning is"), GenerationParams(max_tokens=20, temperature=0.0))
    (instance,) = payload["instances"]
    assert instance["inputs"] == "Deep learning is"
    parameters = instance["parameters"]
    assert (parameters["max_new_tokens"], parameters["do_sample"]) == (20, False)
    assert "temperature" not in parameters  # TGI refuses temperature 0


def test_tgi_chat_instance_carries_the_messages_for_the_containers_template() -> None:
    payload = to_tgi_payload(CHAT, GenerationParams(max_tokens=8, temperature=0.5, stop=("x",)))
    (instance,) = payload["instances"]
    assert instance["messages"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert (instance["max_tokens"], instance["temperature"], instance["stop"]) == (8, 0.5, ["x"])
    assert "inputs" not in instance


def test_chat_route_sends_a_text_prompt_as_one_user_message_and_streams_with_usage() -> None:
    payload = to_chat_payload(None, Prompt(text="hello"), GenerationParams(max_tokens=4), stream=True)
    assert payload["messages"] == [{"role": "user", "content": "hello"}]
    assert "model" not in payload  # vLLM serves its one model
    assert payload["stream_options"] == {"include_usage": True}
    assert to_chat_payload("gemma", CHAT, GenerationParams(max_tokens=4), stream=False)["model"] == "gemma"


def test_chat_templates_end_with_the_assistant_turn_opened() -> None:
    assert render_chat(CHAT.messages, "chatml") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    llama = render_chat(CHAT.messages, "llama3")
    assert llama.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert llama.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render_chat(CHAT.messages, "none") == "Be brief.\n\nHi"


# -- predictions ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param({"predictions": ["A car."], "deployedModelId": "1"}, Reply("A car."), id="string"),
        pytest.param({"predictions": [["A car."]]}, Reply("A car."), id="list-per-instance"),
        pytest.param(
            {"predictions": [{"text": "A car.", "finish_reason": "length"}]},
            Reply("A car.", "length"),
            id="vllm-choice",
        ),
        pytest.param(
            {
                "predictions": [{"text": "A car.", "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 3},
            },
            Reply("A car.", "stop", 5, 3),
            id="choice-with-usage",
        ),
        pytest.param(
            {
                "predictions": [
                    {
                        "generated_text": "A car.",
                        "details": {"finish_reason": "eos_token", "generated_tokens": 3, "prefill": [{}, {}]},
                    }
                ]
            },
            Reply("A car.", "stop", 2, 3),
            id="tgi-generate-response",
        ),
        pytest.param(
            {
                "predictions": [
                    {
                        "choices": [{"message": {"content": "A car."}, "finish_reason": "length"}],
                        "usage": {"prompt_tokens": 9, "completion_tokens": 4},
                    }
                ]
            },
            Reply("A car.", "length", 9, 4),
            id="chat-completion-object",
        ),
    ],
)
def test_every_prediction_shape_gives_its_text_reason_and_counts(body: dict[str, Any], expected: Reply) -> None:
    assert from_predict_response(body) == expected


def test_an_output_prefixed_with_its_prompt_is_given_without_it() -> None:
    body = {"predictions": ["Prompt:\nWhat is a car?\nOutput:\nA vehicle."]}
    assert from_predict_response(body, " What is a car? ").text == "A vehicle."
    # Only the exact prefix of this prompt is taken off: a model may well write "Prompt:" itself.
    assert from_predict_response(body, "Another prompt").text == body["predictions"][0]


@pytest.mark.parametrize(
    "body",
    [[{"generated_text": "x"}], {}, {"predictions": []}, {"predictions": [3]}, {"predictions": [{"score": 1}]}],
    ids=["not-an-object", "no-predictions", "empty", "a-number", "no-text"],
)
def test_a_malformed_prediction_is_a_bad_response(body: Any) -> None:
    with pytest.raises(BackendError) as failed:
        from_predict_response(body)
    assert (failed.value.status, failed.value.code, failed.value.retryable) == (502, "backend_bad_response", False)


def test_a_generation_that_failed_in_the_container_is_retryable() -> None:
    with pytest.raises(BackendError) as failed:
        from_predict_response({"predictions": [{"generated_text": "", "details": {"finish_reason": "error"}}]})
    assert (failed.value.status, failed.value.retryable) == (502, True)


# -- errors --------------------------------------------------------------------------------------------------


def _google(status: int, name: str, message: str = "m") -> bytes:
    return json.dumps({"error": {"code": status, "message": message, "status": name}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        pytest.param(
            429, _google(429, "RESOURCE_EXHAUSTED", "Quota exceeded"), (429, True, "backend_throttled"), id="quota"
        ),
        pytest.param(
            429,
            b'{"error":"Model is overloaded","error_type":"overloaded"}',
            (429, True, "backend_throttled"),
            id="tgi-overloaded",
        ),
        pytest.param(503, _google(503, "UNAVAILABLE"), (502, True, "backend_error"), id="unavailable"),
        pytest.param(500, b"<html>oops</html>", (502, True, "backend_error"), id="500-html"),
        pytest.param(
            424,
            b'{"error":"Request failed during generation","error_type":"generation"}',
            (502, True, "backend_error"),
            id="tgi-424",
        ),
        pytest.param(504, _google(504, "DEADLINE_EXCEEDED"), (504, True, "backend_timeout"), id="deadline"),
        pytest.param(401, _google(401, "UNAUTHENTICATED"), (502, True, "backend_misconfigured"), id="token-refused"),
        pytest.param(403, _google(403, "PERMISSION_DENIED"), (502, False, "backend_misconfigured"), id="denied"),
        pytest.param(404, _google(404, "NOT_FOUND"), (502, False, "backend_misconfigured"), id="no-endpoint"),
        pytest.param(
            400, _google(400, "FAILED_PRECONDITION"), (502, False, "backend_misconfigured"), id="nothing-deployed"
        ),
        pytest.param(400, _google(400, "INVALID_ARGUMENT"), (400, False, "backend_rejected"), id="invalid-argument"),
        pytest.param(
            422,
            b'{"error":"Input validation error","error_type":"validation"}',
            (400, False, "backend_rejected"),
            id="tgi-422",
        ),
    ],
)
def test_upstream_errors_map_to_the_gateways(status: int, body: bytes, expected: tuple[int, bool, str]) -> None:
    error = error_for_status(status, body)
    assert (error.status, error.retryable, error.code) == expected


def test_a_quota_refusal_says_why_and_passes_retry_after_on() -> None:
    body = [
        {
            "error": {
                "code": 429,
                "message": "Quota exceeded for online_prediction_requests",
                "status": "RESOURCE_EXHAUSTED",
            }
        }
    ]
    error = error_for_status(429, json.dumps(body).encode(), {"retry-after": "7"})
    assert error.type == "rate_limit_error"
    assert "Quota exceeded for online_prediction_requests (RESOURCE_EXHAUSTED)" in error.message
    assert error.headers == {"Retry-After": "7"}


# -- the route -----------------------------------------------------------------------------------------------


def test_the_route_calls_the_regional_host_or_the_url_it_names() -> None:
    chat = VertexRoute.parse(ROUTE)
    assert chat.endpoint_url + chat.path == (
        "https://europe-west4-aiplatform.googleapis.com/v1beta1/projects/my-proj/locations/europe-west4/endpoints/123"
        "/chat/completions"
    )
    predict = VertexRoute.parse(
        {**ROUTE, "api": "predict-vllm", "endpoint_url": "https://123.europe-west4-9.prediction.vertexai.goog/"}
    )
    assert predict.endpoint_url + predict.path == (
        "https://123.europe-west4-9.prediction.vertexai.goog/v1/projects/my-proj/locations/europe-west4/endpoints/123:predict"
    )
    assert VertexRoute.parse({**ROUTE, "location": "global"}).endpoint_url == "https://aiplatform.googleapis.com"
    assert VertexRoute.parse(ROUTE, "http://127.0.0.1:9").endpoint_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"api": None}, "needs api"),
        ({"project": None, "endpoint_id": ""}, "needs project, endpoint_id"),
        ({"api": "predict"}, "api in"),
        ({"endpoint_id": "123/../../other"}, "endpoint_id is not a valid identifier"),
        ({"location": "us-central1?x="}, "location is not a valid identifier"),
        ({"endpoint_url": "ftp://host"}, "endpoint_url"),
    ],
)
def test_a_route_that_cannot_be_called_is_misconfigured(change: dict[str, Any], says: str) -> None:
    with pytest.raises(BackendError) as failed:
        VertexRoute.parse({**ROUTE, **change})
    assert (failed.value.status, failed.value.code, failed.value.retryable) == (502, "backend_misconfigured", False)
    assert says in failed.value.message
