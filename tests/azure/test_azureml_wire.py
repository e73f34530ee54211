"""Azure ML scoring formats: the body each model family's scoring script reads, and the replies it answers."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.azure.azureml_errors import error_for_status, retry_after
from adapters.azure.azureml_route import DEFAULT_TIMEOUT_S, AzureMLRoute
from adapters.azure.azureml_wire import (
    FORMATTERS,
    Malformed,
    Reply,
    cut_at_stop,
    render_chat,
    to_chat_payload,
    to_hf_payload,
    to_openai_request,
    to_text_payload,
)
from core.errors import BackendError
from core.inference import ChatMessage, GenerationParams, Prompt

pytestmark = pytest.mark.azure

TEXT = Prompt(text="Tell me a story")
CHAT = Prompt(messages=(ChatMessage("system", "Be brief."), ChatMessage("user", "Hi")))
GREEDY = GenerationParams(max_tokens=32, temperature=0.0)
SAMPLED = GenerationParams(max_tokens=96, temperature=0.6, top_p=0.9, stop=("\n",), seed=3)


def test_hf_sends_inputs_and_pipeline_parameters_without_the_prompt_echoed() -> None:
    assert to_hf_payload(TEXT, SAMPLED) == {
        "inputs": ["Tell me a story"],
        "parameters": {
            "max_new_tokens": 96,
            "do_sample": True,
            "temperature": 0.6,
            "top_p": 0.9,
            "return_full_text": False,
        },
    }


def test_greedy_requests_do_not_sample_and_send_no_temperature() -> None:
    parameters = to_text_payload(TEXT, GREEDY)["input_data"]["parameters"]
    assert parameters == {"max_new_tokens": 32, "do_sample": False, "return_full_text": False}


def test_curated_text_models_take_input_data_input_string() -> None:
    payload = to_text_payload(TEXT, SAMPLED)
    assert payload["input_data"]["input_string"] == ["Tell me a story"]
    assert payload["input_data"]["parameters"]["max_new_tokens"] == 96


def test_a_chat_on_a_text_family_is_rendered_with_the_routes_template() -> None:
    assert to_hf_payload(CHAT, GREEDY, "chatml")["inputs"] == [
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    ]
    llama = render_chat(CHAT.messages, "llama3")
    assert llama.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert llama.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert render_chat(CHAT.messages, "none") == "Be brief.\n\nHi"


def test_chat_models_take_the_messages_and_a_text_prompt_as_one_user_message() -> None:
    assert to_chat_payload(CHAT, GREEDY)["input_data"]["input_string"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    text = to_chat_payload(TEXT, GREEDY)["input_data"]
    assert text["input_string"] == [{"role": "user", "content": "Tell me a story"}]
    assert "return_full_text" not in text["parameters"]


def test_openai_deployments_get_chat_or_completions_with_usage_in_streams() -> None:
    path, payload = to_openai_request(None, CHAT, GREEDY, stream=True)
    assert path == "/chat/completions"
    assert "model" not in payload  # the deployment serves its one model
    assert payload["stream_options"] == {"include_usage": True}
    path, payload = to_openai_request("Llama-3-8B", TEXT, SAMPLED, stream=False)
    assert (path, payload["model"], payload["prompt"], payload["stop"]) == (
        "/completions",
        "Llama-3-8B",
        "Tell me a story",
        ["\n"],
    )


@pytest.mark.parametrize(
    ("family", "body", "text"),
    [
        ("hf", [{"0": {"generated_text": "Once"}}], "Once"),
        ("hf", [{"generated_text": "Once"}], "Once"),
        ("hf", [[{"generated_text": "Once"}]], "Once"),
        ("hf", [{"0": "Once"}], "Once"),
        ("text", [{"0": "Once"}], "Once"),
        ("text", ["Once"], "Once"),  # Dolly
        ("chat", {"output": "Once"}, "Once"),
        ("chat", [{"0": "Once"}], "Once"),
    ],
)
def test_every_documented_answer_shape_is_read(family: str, body: Any, text: str) -> None:
    assert FORMATTERS[family].response(body) == Reply(text)


def test_counts_and_a_finish_reason_are_taken_where_the_answer_has_them() -> None:
    body = [{"0": {"generated_text": "Once", "details": {"finish_reason": "length", "generated_tokens": 4}}}]
    assert FORMATTERS["hf"].response(body) == Reply("Once", "length", None, 4)
    usage = {"output": "Once", "usage": {"prompt_tokens": 5, "completion_tokens": 2}}
    assert FORMATTERS["chat"].response(usage) == Reply("Once", None, 5, 2)


@pytest.mark.parametrize("body", [{}, [], [{"0": 3}], {"result": "x"}, "text", [{"0": {"text": "x"}}]])
def test_an_answer_without_generated_text_is_malformed(body: Any) -> None:
    for family in ("hf", "text", "chat"):
        with pytest.raises(Malformed):
            FORMATTERS[family].response(body)


def test_the_text_is_cut_before_the_first_stop_sequence_and_then_counted_by_the_gateway() -> None:
    assert cut_at_stop(Reply("a b\nc. d", None, 3, 4), ("\n", ".")) == Reply("a b", "stop", 3, None)
    assert cut_at_stop(Reply("a b", None, 3, 4), ("\n",)) == Reply("a b", None, 3, 4)


# -- routes ------------------------------------------------------------------------------------------------------


def test_a_route_defaults_to_key_auth_and_a_timeout_above_the_sdks_five_seconds() -> None:
    cfg = AzureMLRoute.parse({"scoring_uri": "https://ep.eastus.inference.ml.azure.com/score/", "format": "hf"})
    assert (cfg.scoring_uri, cfg.auth, cfg.deployment, cfg.timeout_s) == (
        "https://ep.eastus.inference.ml.azure.com/score",
        "key",
        None,
        DEFAULT_TIMEOUT_S,
    )
    assert DEFAULT_TIMEOUT_S == 90.0
    pinned = AzureMLRoute.parse(
        {"scoring_uri": "https://h/score", "format": "text", "deployment": "blue", "timeout_s": 30}
    )
    assert (pinned.where, pinned.timeout_s) == ("h (deployment blue)", 30.0)


@pytest.mark.parametrize(
    "route",
    [
        {"format": "hf"},
        {"scoring_uri": "https://h/score"},
        {"scoring_uri": "ftp://h/score", "format": "hf"},
        {"scoring_uri": "https://h/score", "format": "tgi"},
        {"scoring_uri": "https://h/score", "format": "hf", "auth": "sas"},
        {"scoring_uri": "https://h/score", "format": "hf", "deployment": "blue\r\nX-Evil: 1"},
        {"scoring_uri": "https://h/score", "format": "hf", "key_env": "NOT A NAME"},
    ],
)
def test_a_bad_route_is_a_502_misconfiguration(route: dict[str, Any]) -> None:
    with pytest.raises(BackendError) as failed:
        AzureMLRoute.parse(route)
    assert (failed.value.status, failed.value.code, failed.value.retryable) == (502, "backend_misconfigured", False)


# -- errors ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (429, (429, True, "backend_throttled")),
        (408, (504, True, "backend_timeout")),
        (504, (504, True, "backend_timeout")),
        (424, (502, True, "backend_error")),
        (500, (502, True, "backend_error")),
        (503, (502, True, "backend_error")),
        (401, (502, False, "backend_misconfigured")),
        (403, (502, False, "backend_misconfigured")),
        (404, (502, False, "backend_misconfigured")),
        (400, (400, False, "backend_rejected")),
        (413, (400, False, "backend_rejected")),
    ],
)
def test_statuses_map_to_the_gateways_errors(status: int, expected: tuple[int, bool, str]) -> None:
    error = error_for_status(status, b'{"message": "nope"}', {}, "ep.eastus")
    assert (error.status, error.retryable, error.code) == expected
    assert "nope" in error.message
    assert "ep.eastus" in error.message


def test_retry_after_is_passed_on_in_seconds() -> None:
    assert retry_after({"retry-after": "7"}) == "7"
    assert retry_after({"retry-after-ms": "1500"}) == "2"
    assert retry_after({"x-ms-retry-after-ms": "20"}) == "1"
    assert retry_after({}) is None
    error = error_for_status(429, b"Too many requests", {"retry-after-ms": "2500"}, "ep")
    assert error.headers == {"Retry-After": "3"}


def test_error_messages_are_read_from_every_shape_and_truncated() -> None:
    openai = error_for_status(400, b'{"error": {"code": "x", "message": "bad temperature"}}', {}, "ep")
    assert "bad temperature" in openai.message
    text = error_for_status(500, b"upstream connect error " * 100, {}, "ep")
    assert len(text.message) < 600
