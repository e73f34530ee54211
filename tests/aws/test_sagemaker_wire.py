"""The SageMaker wire mapping as pure functions: payloads, responses, stream lines, chat templates."""

from __future__ import annotations

import json

import pytest

from adapters.aws.sagemaker_wire import (
    Reply,
    StreamChunk,
    container_error_type,
    from_lmi_response,
    from_messages_response,
    from_tei_response,
    from_tgi_response,
    parse_stream_line,
    prompt_text,
    render_chat,
    to_lmi_payload,
    to_messages_payload,
    to_tei_payload,
    to_tgi_payload,
)
from adapters.openai_compat.backend import upstream_message
from core.errors import BackendError
from core.inference import ChatMessage, GenerationParams, Prompt

pytestmark = pytest.mark.aws

CHAT = (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"))


def test_tgi_payload_samples_with_temperature_and_asks_for_details() -> None:
    params = GenerationParams(max_tokens=20, temperature=0.7, top_p=0.9, stop=("\n\n",), seed=7)
    assert to_tgi_payload("Hello", params) == {
        "inputs": "Hello",
        "parameters": {
            "max_new_tokens": 20,
            "do_sample": True,
            "temperature": 0.7,
            "top_p": 0.9,
            "seed": 7,
            "return_full_text": False,
            "details": True,
            "stop": ["\n\n"],
            "decoder_input_details": False,
        },
        "stream": False,
    }


def test_temperature_zero_is_greedy_and_top_p_one_is_left_out() -> None:
    # TGI refuses temperature 0 and top_p outside (0, 1): greedy decoding says it with do_sample.
    parameters = to_tgi_payload("x", GenerationParams(max_tokens=5, temperature=0.0, top_p=0.5))["parameters"]
    assert parameters["do_sample"] is False
    assert "temperature" not in parameters
    assert "top_p" not in parameters
    assert "top_p" not in to_tgi_payload("x", GenerationParams(max_tokens=5, top_p=1.0))["parameters"]


def test_lmi_payload_names_stop_sequences_and_streams() -> None:
    payload = to_lmi_payload(
        "x", GenerationParams(max_tokens=9, stop=("END",)), stream=True, decoder_input_details=True
    )
    assert payload["stream"] is True
    assert payload["parameters"]["stop_sequences"] == ["END"]
    assert "stop" not in payload["parameters"]
    assert payload["parameters"]["details"] is True
    assert payload["parameters"]["decoder_input_details"] is False  # never with a stream
    assert to_lmi_payload("x", GenerationParams(max_tokens=1), decoder_input_details=True)["parameters"][
        "decoder_input_details"
    ]


def test_tgi_response_is_a_list_with_details() -> None:
    body = [
        {
            "generated_text": " world",
            "details": {"finish_reason": "length", "generated_tokens": 2, "seed": None, "prefill": [], "tokens": []},
        }
    ]
    assert from_tgi_response(body) == Reply(" world", "length", None, 2)  # an empty prefill is no count


def test_tgi_prefill_gives_the_prompt_tokens_and_eos_is_stop() -> None:
    prefill = [{"id": i, "text": "t", "logprob": None} for i in range(5)]
    body = [
        {"generated_text": "ok", "details": {"finish_reason": "eos_token", "generated_tokens": 1, "prefill": prefill}}
    ]
    assert from_tgi_response(body) == Reply("ok", "stop", 5, 1)
    single = {"generated_text": "ok", "details": {"finish_reason": "stop_sequence", "generated_tokens": 3}}
    assert from_tgi_response(single) == Reply("ok", "stop", None, 3)  # a single object is accepted too


def test_lmi_response_is_an_object_and_tolerates_finish_reason_with_a_space() -> None:
    body = {
        "generated_text": "Deep Learning is a really cool field",
        "details": {"finish reason": "length", "generated_tokens": 8, "inputs": "What is Deep Learning?"},
    }
    assert from_lmi_response(body) == Reply("Deep Learning is a really cool field", "length", None, 8)
    assert from_lmi_response([{"generated_text": "a"}]) == Reply("a", None, None, None)  # TGI_COMPAT, no details


def test_generation_errors_and_malformed_bodies() -> None:
    with pytest.raises(BackendError) as failed:
        from_lmi_response({"generated_text": "", "details": {"finish_reason": "error", "generated_tokens": 0}})
    assert failed.value.status == 502
    assert failed.value.retryable
    for body in ({"text": "no"}, [], "text", [{"generated_text": 3}]):
        with pytest.raises(BackendError) as bad:
            from_tgi_response(body)
        assert bad.value.code == "backend_bad_response"


def test_messages_schema_round_trip() -> None:
    params = GenerationParams(max_tokens=10, temperature=0.0, seed=1)
    payload = to_messages_payload(CHAT, params, stream=True)
    assert payload == {
        "model": "tgi",
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        "max_tokens": 10,
        "temperature": 0.0,
        "seed": 1,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello!"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
    }
    assert from_messages_response(body) == Reply("Hello!", "stop", 12, 3)


def test_chat_templates() -> None:
    assert render_chat(CHAT) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_chat(CHAT, "llama3") == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert render_chat(CHAT, "none") == "Be brief.\n\nHi"
    assert prompt_text(Prompt(text="plain"), "llama3") == "plain"
    with pytest.raises(ValueError, match="unknown chat template"):
        render_chat(CHAT, "vicuna")  # type: ignore[arg-type]


def test_tgi_sse_stream_lines() -> None:
    token = {"index": 1, "token": {"id": 5, "text": "He", "logprob": -0.1, "special": False}}
    assert parse_stream_line("data:" + json.dumps({**token, "generated_text": None, "details": None})) == StreamChunk(
        "He"
    )
    eos = {"id": 2, "text": "</s>", "logprob": 0.0, "special": True}
    last = {
        "token": eos,
        "generated_text": "Hello",
        "details": {"finish_reason": "eos_token", "generated_tokens": 3, "input_length": 7},
    }
    assert parse_stream_line(b"data: " + json.dumps(last).encode()) == StreamChunk("", "stop", 7, 3)
    for ignored in ("", "   ", ": keep-alive", "event: message", "retry: 5"):
        assert parse_stream_line(ignored) is None
    assert parse_stream_line("data: [DONE]") == StreamChunk(done=True)


def test_lmi_jsonlines_stream_lines() -> None:
    assert parse_stream_line('{"token": {"id": 304, "text": "Deep ", "log_prob": -0.05}}') == StreamChunk("Deep ")
    last = {
        "token": {"id": 5972, "text": " field.", "log_prob": -0.69},
        "generated_text": "Deep field.",
        "details": {"finish_reason": "length", "generated_tokens": 2, "inputs": "What?"},
    }
    assert parse_stream_line(json.dumps(last)) == StreamChunk(" field.", "length", None, 2)


def test_stream_errors() -> None:
    with pytest.raises(BackendError) as tgi:
        parse_stream_line('data:{"error":"Request failed during generation","error_type":"generation"}')
    assert "Request failed during generation" in tgi.value.message
    with pytest.raises(BackendError):
        parse_stream_line('{"token": {"text": ""}, "details": {"finish_reason": "error", "generated_tokens": 1}}')
    with pytest.raises(BackendError) as garbled:
        parse_stream_line("data: {not json")
    assert garbled.value.code == "backend_bad_response"


def test_messages_stream_lines() -> None:
    delta = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}]}
    assert parse_stream_line("data: " + json.dumps(delta), "messages") == StreamChunk("Hi")
    end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    assert parse_stream_line("data: " + json.dumps(end), "messages") == StreamChunk("", "length")
    usage = {"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 4}}
    assert parse_stream_line("data: " + json.dumps(usage), "messages") == StreamChunk("", None, 9, 4)


def test_tei_embeddings() -> None:
    assert to_tei_payload(["a", "b"]) == {"inputs": ["a", "b"]}
    assert from_tei_response([[0.1, 0.2], [0, 1]], 2) == [[0.1, 0.2], [0.0, 1.0]]
    assert from_tei_response({"embeddings": [[1.0]]}, 1) == [[1.0]]
    with pytest.raises(BackendError):
        from_tei_response([[0.1]], 2)
    with pytest.raises(BackendError):
        from_tei_response([[[0.1], [0.2]]], 1)  # token-level (unpooled) output


def test_container_error_bodies() -> None:
    tgi = '{"error":"Input validation error: `inputs` must have less than 4096 tokens","error_type":"validation"}'
    assert upstream_message(tgi).startswith("Input validation error")
    assert container_error_type(tgi) == "validation"
    assert upstream_message('{"error": "bad parameter", "code": 424}') == "bad parameter"
    assert upstream_message(b"plain text failure") == "plain text failure"
    assert container_error_type("not json") is None
    assert upstream_message("") == "no message"
